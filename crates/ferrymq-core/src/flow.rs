//! Publisher flow control. A publish is done by the publishing connection itself (routing,
//! enqueueing, writing to the queue's log), so no queue mailbox can grow behind a fast
//! publisher and memory is bounded by each queue's RAM budget (the rest is paged to disk).
//! What can still fall behind is the disk: a publisher without confirms can write
//! persistent messages far faster than fsync makes them durable. Each connection therefore
//! gets a credit of bytes written but not yet synced; once it is spent the connection stops
//! being read until the group commit catches up, as RabbitMQ's credit flow holds a
//! publisher whose queues fall behind. Protocols report the state through
//! [`ConnectionInfo::set_state`](crate::connections::ConnectionInfo::set_state).

/// Bytes of persistent messages a connection may have written and not yet synced before it
/// is held. Large enough that a confirm window of ordinary size never reaches it.
pub const FLOW_CREDIT_BYTES: u64 = 16 * 1024 * 1024;

/// Unsynced writes of one connection, against its credit.
#[derive(Debug, Default, Clone)]
pub struct FlowCredit {
    unsynced: u64,
    last_ticket: u64,
}

impl FlowCredit {
    /// Records a publish whose copies were written under group-commit `ticket`. When it
    /// would take the connection over its credit, `synced` (the last durable ticket, a lock
    /// to read, so only then) tells what became durable meanwhile and no longer counts: the
    /// hot path asks [`FlowCredit::throttled`] only once the credit looks spent.
    pub fn written(&mut self, synced: impl FnOnce() -> u64, ticket: u64, bytes: u64) {
        if self.unsynced.saturating_add(bytes) > FLOW_CREDIT_BYTES && synced() >= self.last_ticket {
            self.unsynced = 0;
        }
        self.unsynced = self.unsynced.saturating_add(bytes);
        self.last_ticket = self.last_ticket.max(ticket);
    }

    /// Whether more than the credit was written since it was last given back: only then
    /// can [`FlowCredit::throttled`] hold the connection, so callers ask this first and read
    /// the durable ticket (a lock) only when it is true.
    pub fn over_credit(&self) -> bool {
        self.unsynced > FLOW_CREDIT_BYTES
    }

    /// Whether the connection must stop being read, given the last durable ticket; gives
    /// the credit back once everything written is durable.
    pub fn throttled(&mut self, synced: u64) -> bool {
        if synced >= self.last_ticket {
            self.unsynced = 0;
            return false;
        }
        self.unsynced > FLOW_CREDIT_BYTES
    }
}

/// What a connection is doing, as RabbitMQ's management API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum ConnectionState {
    /// Being read normally.
    #[default]
    Running = 0,
    /// Held by flow control until the disk catches up.
    Flow = 1,
    /// Held by a resource alarm.
    Blocked = 2,
}

impl ConnectionState {
    /// The name RabbitMQ uses.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConnectionState::Running => "running",
            ConnectionState::Flow => "flow",
            ConnectionState::Blocked => "blocked",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => ConnectionState::Flow,
            2 => ConnectionState::Blocked,
            _ => ConnectionState::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_spent_by_unsynced_writes_and_given_back_by_the_sync() {
        let mut f = FlowCredit::default();
        assert!(!f.throttled(0));
        f.written(|| 0, 3, FLOW_CREDIT_BYTES);
        assert!(!f.throttled(2), "exactly the credit is allowed");
        f.written(|| 2, 3, 1);
        assert!(f.throttled(2));
        assert!(!f.throttled(3), "durable up to the last write: credit back");
        f.written(|| 3, 4, 10);
        assert!(!f.throttled(3));
    }

    /// The connection asks `over_credit() && throttled(synced)` (connection.rs), so
    /// `throttled` only runs once the credit looks spent; `written` is told the durable
    /// ticket. Writes that became durable while the connection stayed under its credit must
    /// not count against the next ones: a publisher whose unsynced bytes never exceed the
    /// credit must never be held.
    #[test]
    fn writes_already_durable_do_not_count_against_the_credit_as_the_connection_asks() {
        let held = |f: &mut FlowCredit, synced: u64| f.over_credit() && f.throttled(synced);
        let mut f = FlowCredit::default();
        f.written(|| 0, 1, FLOW_CREDIT_BYTES - 1024);
        assert!(!held(&mut f, 0));
        // Group commit catches up: nothing is unsynced any more.
        assert!(!held(&mut f, 1));
        // 2 MiB more, not synced yet: far under the 16 MiB credit.
        f.written(|| 1, 2, 2 * 1024 * 1024);
        assert!(
            !held(&mut f, 1),
            "held with only 2 MiB unsynced: bytes synced before still counted"
        );
    }
}
