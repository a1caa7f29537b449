//! Bindings: duplicates, removal by key and arguments, removal of a destination, and routing
//! that stays right through many binds and unbinds.

use super::*;
use crate::message::Properties;
use crate::queue::QueueOptions;
use bytes::Bytes;

fn queue(name: &str) -> Arc<Queue> {
    Arc::new(Queue::new(name, "/", QueueOptions::default(), None))
}

fn routed(x: &Exchange, key: &str, headers: Option<FieldTable>) -> Vec<String> {
    let props = Properties {
        headers,
        ..Default::default()
    };
    let m = Message::from_properties(&x.name, key, &props, Bytes::new()).unwrap();
    let mut out = Vec::new();
    x.route_into(key, &LazyHeaders::of(&m), &mut out);
    let mut names: Vec<String> = out.iter().map(|d| d.name().to_string()).collect();
    names.sort();
    names
}

fn args(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert(*k, FieldValue::string(*v));
    }
    t
}

#[test]
fn binding_twice_is_one_binding_and_arguments_tell_bindings_apart() {
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Topic,
        ExchangeKind::Fanout,
        ExchangeKind::Headers,
    ] {
        let x = Exchange::new("x", kind, ExchangeOptions::default());
        let q = Destination::Queue(queue("q"));
        x.bind(q.clone(), "k", args(&[("a", "1")]));
        x.bind(q.clone(), "k", args(&[("a", "1")]));
        x.bind(q.clone(), "k", args(&[("a", "2")]));
        assert_eq!(x.bindings().len(), 2, "{kind:?}");
        assert!(x.unbind(&q, "k", &args(&[("a", "2")])));
        assert!(
            !x.unbind(&q, "k", &args(&[("a", "2")])),
            "{kind:?}: gone once"
        );
        assert!(!x.unbind(&q, "other", &args(&[("a", "1")])));
        assert!(x.has_binding(&q, "k", &args(&[("a", "1")])));
        assert!(x.has_bindings_to(&q));
        assert_eq!(x.unbind_destination(&q), 1);
        assert!(!x.has_bindings() && !x.has_bindings_to(&q), "{kind:?}");
        assert!(routed(&x, "k", Some(args(&[("a", "1")]))).is_empty());
    }
}

#[test]
fn routing_follows_many_binds_and_unbinds() {
    let direct = Exchange::new("d", ExchangeKind::Direct, ExchangeOptions::default());
    let topic = Exchange::new("t", ExchangeKind::Topic, ExchangeOptions::default());
    let queues: Vec<Arc<Queue>> = (0..2000).map(|i| queue(&format!("q{i}"))).collect();
    for (i, q) in queues.iter().enumerate() {
        let d = Destination::Queue(q.clone());
        direct.bind(d.clone(), &format!("k{}", i % 10), FieldTable::new());
        topic.bind(d.clone(), &format!("a.{}.#", i % 10), FieldTable::new());
        topic.bind(d, &format!("b.q{i}"), FieldTable::new());
    }
    // Every odd queue goes: the even ones must still route, the odd ones not at all.
    for q in queues.iter().skip(1).step_by(2) {
        let d = Destination::Queue(q.clone());
        assert_eq!(direct.unbind_destination(&d), 1);
        assert_eq!(topic.unbind_destination(&d), 2);
    }
    let want: Vec<String> = (0..2000)
        .filter(|i| i % 10 == 4)
        .map(|i| format!("q{i}"))
        .collect();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(routed(&direct, "k4", None), sorted);
    assert_eq!(routed(&topic, "a.4.z", None), sorted);
    assert!(routed(&direct, "k3", None).is_empty());
    assert_eq!(routed(&topic, "b.q8", None), vec!["q8".to_string()]);
    assert!(routed(&topic, "b.q9", None).is_empty());
    assert_eq!(direct.bindings().len(), 1000);
    assert_eq!(topic.bindings().len(), 2000);
}

/// Bindings that share a destination (an MQTT-style session queue with many
/// subscriptions), headers bindings that share destination and key (every headers binding
/// has the key ""), and many queues under one key: each is built and torn down entry by
/// entry, and routing stays right throughout (the cost is in docs/benchmarks.md).
#[test]
fn many_bindings_sharing_a_destination_or_key_bind_and_unbind_one_by_one() {
    const N: usize = 20_000;
    let x = Exchange::new("t", ExchangeKind::Topic, ExchangeOptions::default());
    let q = Destination::Queue(queue("session"));
    let other = Destination::Queue(queue("other"));
    for i in 0..N {
        x.bind(q.clone(), &format!("devices.{i}.#"), FieldTable::new());
        x.bind(q.clone(), "all.#", args(&[("n", &i.to_string())]));
    }
    x.bind(other.clone(), "devices.7.#", FieldTable::new());
    assert_eq!(routed(&x, "devices.7.temp", None), vec!["other", "session"]);
    for i in (0..N).step_by(2) {
        assert!(x.unbind(&q, &format!("devices.{i}.#"), &FieldTable::new()));
        assert!(x.unbind(&q, "all.#", &args(&[("n", &i.to_string())])));
    }
    assert!(routed(&x, "devices.8.temp", None).is_empty());
    let mut all = routed(&x, "all.x", None);
    assert_eq!(all.len(), N / 2, "the odd all.# bindings are left");
    all.dedup();
    assert_eq!(all, vec!["session"]);
    assert_eq!(x.unbind_destination(&q), N);
    assert_eq!(routed(&x, "devices.7.temp", None), vec!["other"]);
    assert!(routed(&x, "all.x", None).is_empty());

    let h = Exchange::new("h", ExchangeKind::Headers, ExchangeOptions::default());
    for i in 0..N {
        let a = args(&[("x-match", "all"), ("device", &i.to_string())]);
        h.bind(q.clone(), "", a.clone());
        h.bind(q.clone(), "", a);
    }
    assert_eq!(h.bindings().len(), N, "binding twice is one binding");
    let want = args(&[("device", "4242")]);
    assert_eq!(routed(&h, "", Some(want)), vec!["session"]);
    assert!(h.unbind(&q, "", &args(&[("device", "4242"), ("x-match", "all")])));
    assert!(routed(&h, "", Some(args(&[("device", "4242")]))).is_empty());

    let d = Exchange::new("d", ExchangeKind::Direct, ExchangeOptions::default());
    let qs: Vec<Destination> = (0..N)
        .map(|i| Destination::Queue(queue(&format!("q{i}"))))
        .collect();
    for q in &qs {
        d.bind(q.clone(), "all", FieldTable::new());
    }
    for q in qs.iter().skip(1) {
        assert_eq!(d.unbind_destination(q), 1);
    }
    assert_eq!(routed(&d, "all", None), vec!["q0"]);
}

/// The argument index must agree with [`FieldTable::equivalent`], which decides whether two
/// bindings are the same: tables it calls equivalent must land in the same bucket, or a
/// binding is found by the old linear scan's rule but not by the index (bound twice,
/// unbinding leaves it routing). 0.0 and -0.0 are equal floats (and one term to RabbitMQ 3.10
/// on OTP 25), but their `Debug` texts differ.
#[test]
fn bindings_whose_arguments_are_equivalent_are_one_binding_whatever_their_float_zero_sign() {
    let x = Exchange::new("h", ExchangeKind::Headers, ExchangeOptions::default());
    let q = Destination::Queue(queue("q"));
    let with = |v: f64| {
        let mut t = FieldTable::new();
        t.insert("x-match", FieldValue::string("any"));
        t.insert("weight", FieldValue::F64(v));
        t
    };
    assert!(
        with(0.0).equivalent(&with(-0.0)),
        "the tables are equivalent"
    );
    x.bind(q.clone(), "", with(0.0));
    assert!(
        x.has_binding(&q, "", &with(-0.0)),
        "found by an equivalent table"
    );
    x.bind(q.clone(), "", with(-0.0));
    assert_eq!(x.bindings().len(), 1, "binding twice is one binding");
    assert!(x.unbind(&q, "", &with(-0.0)));
    assert!(!x.has_bindings());
}
