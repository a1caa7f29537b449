//! Unit tests of routing and topology.
use super::*;
use crate::exchange::ExchangeOptions;
use crate::message::{Message, Properties};
use crate::queue::QueueOptions;
use crate::value::FieldTable;
use bytes::Bytes;

fn publish(v: &VHost, x: &str, m: Arc<Message>) -> PublishOutcome {
    v.publish(&v.exchange(x).unwrap(), m).unwrap()
}

fn msg(key: &str) -> Arc<Message> {
    Arc::new(
        Message::from_properties("amq.fanout", key, &Properties::default(), Bytes::new()).unwrap(),
    )
}

#[test]
fn a_queue_that_went_away_refuses_and_is_reported() {
    let v = VHost::new("/");
    let (a, _, _) = v
        .declare_queue("a", QueueOptions::default(), false, 1, None)
        .unwrap();
    let (b, _, _) = v
        .declare_queue("b", QueueOptions::default(), false, 1, None)
        .unwrap();
    v.bind_queue("a", "amq.fanout", "", FieldTable::new(), 1)
        .unwrap();
    v.bind_queue("b", "amq.fanout", "", FieldTable::new(), 1)
        .unwrap();
    let out = publish(&v, "amq.fanout", msg("k"));
    assert_eq!(
        (out.routed, out.refused, out.pending.is_empty()),
        (2, 0, true)
    );
    // Deleted between routing and enqueue: the binding is still there, the queue is not.
    b.mark_deleted(None);
    let out = publish(&v, "amq.fanout", msg("k"));
    assert_eq!(
        (out.routed, out.refused, out.pending.is_empty()),
        (1, 1, true)
    );
    assert_eq!(a.counts().messages, 2);
}

#[test]
fn exchange_to_exchange_cycles_terminate_and_queues_get_one_copy() {
    let v = VHost::new("/");
    v.declare_exchange("x1", "fanout", ExchangeOptions::default(), false)
        .unwrap();
    v.declare_exchange("x2", "fanout", ExchangeOptions::default(), false)
        .unwrap();
    v.bind_exchange("x2", "x1", "", FieldTable::new()).unwrap();
    v.bind_exchange("x1", "x2", "", FieldTable::new()).unwrap();
    let (q, _, _) = v
        .declare_queue("q", QueueOptions::default(), false, 1, None)
        .unwrap();
    v.bind_queue("q", "x1", "", FieldTable::new(), 1).unwrap();
    v.bind_queue("q", "x2", "", FieldTable::new(), 1).unwrap();
    assert_eq!(publish(&v, "x1", msg("k")).routed, 1);
    assert_eq!(q.counts().messages, 1);
}

#[test]
fn auto_delete_exchange_goes_with_its_last_binding() {
    let v = VHost::new("/");
    let opts = ExchangeOptions {
        auto_delete: true,
        ..Default::default()
    };
    v.declare_exchange("ad", "direct", opts, false).unwrap();
    v.declare_queue("q", QueueOptions::default(), false, 1, None)
        .unwrap();
    v.bind_queue("q", "ad", "k1", FieldTable::new(), 1).unwrap();
    v.bind_queue("q", "ad", "k2", FieldTable::new(), 1).unwrap();
    v.unbind_queue("q", "ad", "k1", &FieldTable::new(), 1)
        .unwrap();
    assert!(v.exchange("ad").is_ok());
    v.unbind_queue("q", "ad", "k2", &FieldTable::new(), 1)
        .unwrap();
    assert!(v.exchange("ad").is_err());
}
