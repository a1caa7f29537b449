//! Priority queues (`x-max-priority`): one store per priority level, highest served first,
//! FIFO within a level.

use crate::message::QueuedMessage;
use crate::store::MessageStore;
use ferrymq_store::StoreError;

/// A store per priority level 0..=max. A message's level is its `priority` property, capped
/// at the queue's maximum (absent = 0), as in RabbitMQ.
pub struct PriorityStore {
    levels: Vec<Box<dyn MessageStore>>,
}

impl PriorityStore {
    /// A store over one sub-store per level, lowest level first.
    pub fn new(levels: Vec<Box<dyn MessageStore>>) -> Self {
        PriorityStore { levels }
    }

    fn level(&self, m: &QueuedMessage) -> usize {
        let top = self.levels.len().saturating_sub(1);
        usize::from(m.message.priority().unwrap_or(0)).min(top)
    }
}

impl MessageStore for PriorityStore {
    fn push(
        &mut self,
        msg: QueuedMessage,
        deadline: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let l = self.level(&msg);
        match self.levels.get_mut(l) {
            Some(s) => s.push(msg, deadline),
            None => Ok(None),
        }
    }

    fn shift(&mut self) -> Option<QueuedMessage> {
        self.levels.iter_mut().rev().find_map(|s| s.shift())
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        let l = self.level(&msg);
        if let Some(s) = self.levels.get_mut(l) {
            s.requeue(msg);
        }
    }

    fn delivered(&mut self, msg: &QueuedMessage) {
        let l = self.level(msg);
        if let Some(s) = self.levels.get_mut(l) {
            s.delivered(msg);
        }
    }

    fn paged_out(&self) -> (usize, usize) {
        self.levels.iter().fold((0, 0), |(n, b), s| {
            let (n2, b2) = s.paged_out();
            (n + n2, b + b2)
        })
    }

    fn flush(&mut self) {
        for s in &mut self.levels {
            s.flush();
        }
    }

    fn unflushed(&self) -> bool {
        self.levels.iter().any(|s| s.unflushed())
    }

    fn ack(&mut self, seq: u64) {
        // Sequence numbers are unique across levels; only the level holding it reacts.
        for s in &mut self.levels {
            s.ack(seq);
        }
    }

    fn remove(&mut self, seq: u64) -> Option<QueuedMessage> {
        self.levels.iter_mut().find_map(|s| s.remove(seq))
    }

    fn discard(&mut self, seq: u64) -> bool {
        self.levels.iter_mut().any(|s| s.discard(seq))
    }

    fn purge(&mut self, purged: &mut dyn FnMut(u64)) -> usize {
        self.levels.iter_mut().map(|s| s.purge(purged)).sum()
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|s| s.len()).sum()
    }

    fn bytes(&self) -> usize {
        self.levels.iter().map(|s| s.bytes()).sum()
    }

    fn destroy(&mut self) {
        for s in &mut self.levels {
            s.destroy();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, Properties};
    use crate::store::MemoryStore;
    use bytes::Bytes;
    use std::sync::Arc;

    fn msg(seq: u64, priority: Option<u8>) -> QueuedMessage {
        let props = Properties {
            priority,
            ..Default::default()
        };
        let m = Message::from_properties("", "q", &props, Bytes::new()).unwrap();
        QueuedMessage::new(seq, Arc::new(m))
    }

    #[test]
    fn highest_first_fifo_within_a_level_and_capped_at_the_maximum() {
        let levels: Vec<Box<dyn MessageStore>> = (0..=5)
            .map(|_| Box::new(MemoryStore::default()) as Box<dyn MessageStore>)
            .collect();
        let mut s = PriorityStore::new(levels);
        for (seq, p) in [
            (1, None),
            (2, Some(3)),
            (3, Some(9)),
            (4, Some(3)),
            (5, Some(0)),
        ] {
            s.push(msg(seq, p), None).unwrap();
        }
        let first = s.shift().unwrap();
        assert_eq!(
            first.seq(),
            3,
            "priority 9 is capped at 5 and still comes first"
        );
        s.requeue(first);
        let order: Vec<u64> = std::iter::from_fn(|| s.shift()).map(|m| m.seq()).collect();
        assert_eq!(order, vec![3, 2, 4, 1, 5]);
    }
}
