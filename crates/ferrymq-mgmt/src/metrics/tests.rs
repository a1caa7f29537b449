//! The exposition read back line by line, against an in-memory broker.

use super::*;
use ferrymq_core::message::{Message, Properties};
use ferrymq_core::queue::QueueOptions;
use ferrymq_core::{Broker, BrokerConfig};

fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn publish(s: &ferrymq_core::Session, queue: &str, n: usize) {
    for _ in 0..n {
        let m = Message::from_properties("", queue, &Properties::default(), "m".into()).unwrap();
        s.publish("", Arc::new(m)).unwrap();
    }
}

fn setup() -> (Arc<Broker>, Arc<Api>) {
    let b = Broker::new(BrokerConfig::default());
    let api = Api::new(b.clone(), vec![]);
    (b, api)
}

#[test]
fn queue_depths_are_summed_or_listed_per_queue() {
    let (b, api) = setup();
    let s = b.api_session("guest", "/").unwrap();
    for q in ["a", "b"] {
        s.declare_queue(q, QueueOptions::default(), false).unwrap();
    }
    publish(&s, "a", 3);
    publish(&s, "b", 2);
    let agg = render(api.clone(), Scope::aggregated());
    assert!(agg.ends_with("# EOF\n"));
    assert_eq!(sample(&agg, "rabbitmq_queue_messages_ready"), Some(5.0));
    assert_eq!(sample(&agg, "rabbitmq_queues"), Some(2.0));
    assert_eq!(sample(&agg, "rabbitmq_queues_created_total"), Some(2.0));
    let per = render(
        api,
        Scope {
            per_object: true,
            ..Scope::aggregated()
        },
    );
    assert_eq!(
        sample(
            &per,
            r#"rabbitmq_queue_messages_ready{vhost="/",queue="a"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &per,
            r#"rabbitmq_queue_messages_ready{vhost="/",queue="b"}"#
        ),
        Some(2.0)
    );
}

#[test]
fn delivery_counters_keep_deleted_queues_and_vhosts() {
    let (b, api) = setup();
    b.add_vhost("v").unwrap();
    b.set_permissions("guest", "v", ferrymq_core::access::Permission::all())
        .unwrap();
    let sv = b.api_session("guest", "v").unwrap();
    sv.declare_queue("q", QueueOptions::default(), false)
        .unwrap();
    publish(&sv, "q", 4);
    for _ in 0..4 {
        sv.get("q", false).unwrap();
    }
    let key = r#"rabbitmq_global_messages_delivered_get_auto_ack_total{protocol="amqp091",queue_type="rabbit_classic_queue"}"#;
    let read = || sample(&render(api.clone(), Scope::aggregated()), key);
    assert_eq!(read(), Some(4.0));
    sv.delete_queue("q", false, false).unwrap();
    assert_eq!(read(), Some(4.0));
    sv.declare_queue("q", QueueOptions::default(), false)
        .unwrap();
    publish(&sv, "q", 1);
    sv.get("q", false).unwrap();
    drop(sv);
    b.delete_vhost("v").unwrap();
    assert_eq!(read(), Some(5.0));
    let agg = render(api, Scope::aggregated());
    assert_eq!(sample(&agg, "rabbitmq_queues_deleted_total"), Some(2.0));
}

#[test]
fn detailed_filters_by_family_and_vhost() {
    let (b, api) = setup();
    let s = b.api_session("guest", "/").unwrap();
    s.declare_queue("a", QueueOptions::default(), false)
        .unwrap();
    let scope = |vhost: &str| Scope {
        prefix: "rabbitmq_detailed_",
        per_object: true,
        families: Some([Family::QueueConsumerCount].into_iter().collect()),
        vhosts: Some([vhost.to_string()].into_iter().collect()),
    };
    let out = render(api.clone(), scope("/"));
    assert_eq!(
        sample(
            &out,
            r#"rabbitmq_detailed_queue_consumers{vhost="/",queue="a"}"#
        ),
        Some(0.0)
    );
    assert!(!out.contains("rabbitmq_detailed_queue_messages_ready"));
    assert!(!out.contains("rabbitmq_global_"));
    let other = render(api, scope("elsewhere"));
    assert!(!other.contains(r#"queue="a""#));
}

#[test]
fn label_values_are_escaped() {
    let (b, api) = setup();
    let s = b.api_session("guest", "/").unwrap();
    s.declare_queue("we\"ird\\name\nx", QueueOptions::default(), false)
        .unwrap();
    let per = render(
        api,
        Scope {
            per_object: true,
            ..Scope::aggregated()
        },
    );
    assert!(
        per.contains(r#"queue="we\"ird\\name\nx""#),
        "{}",
        per.lines().find(|l| l.contains("ird")).unwrap_or("")
    );
}

#[test]
fn global_counters_never_go_back_while_queues_and_vhosts_are_deleted() {
    // Scrapes racing deletions: a queue counted live and then (retired) again in the same
    // scrape, or in neither, would make the next scrape lower.
    let (b, api) = setup();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let v = format!("v{}", i % 2);
                let _ = b.add_vhost(&v);
                b.set_permissions("guest", &v, ferrymq_core::access::Permission::all())
                    .unwrap();
                for vh in ["/", v.as_str()] {
                    let s = b.api_session("guest", vh).unwrap();
                    s.declare_queue("q", QueueOptions::default(), false)
                        .unwrap();
                    publish(&s, "q", 2);
                    for _ in 0..2 {
                        s.get("q", false).unwrap();
                    }
                    s.delete_queue("q", false, false).unwrap();
                    s.declare_queue("q", QueueOptions::default(), false)
                        .unwrap();
                    publish(&s, "q", 1);
                    s.get("q", false).unwrap();
                }
                b.delete_vhost(&v).unwrap();
            }
        })
    };
    let key = r#"rabbitmq_global_messages_delivered_get_auto_ack_total{protocol="amqp091",queue_type="rabbit_classic_queue"}"#;
    let keys = [
        key,
        "rabbitmq_queues_deleted_total",
        "rabbitmq_queues_created_total",
    ];
    let mut last = [0.0; 3];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut backwards = Vec::new();
    while std::time::Instant::now() < deadline && backwards.len() < 5 {
        let text = render(api.clone(), Scope::aggregated());
        for (k, l) in keys.iter().zip(last.iter_mut()) {
            let v = sample(&text, k).unwrap();
            if v < *l {
                backwards.push(format!("{k}: {l} -> {v}"));
            }
            *l = v;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    assert!(backwards.is_empty(), "{backwards:#?}");
}

#[test]
fn exchange_families_are_cluster_wide_names() {
    // rabbitmq_prometheus 3.10 names them rabbitmq_cluster_exchange_*, also on /metrics/detailed.
    let (_b, api) = setup();
    let scope = Scope {
        prefix: "rabbitmq_detailed_",
        per_object: true,
        families: Some(
            [Family::ExchangeNames, Family::ExchangeBindings]
                .into_iter()
                .collect(),
        ),
        vhosts: None,
    };
    let out = render(api, scope);
    let key = r#"rabbitmq_cluster_exchange_name{vhost="/",exchange="amq.direct",type="direct"}"#;
    assert_eq!(sample(&out, key), Some(1.0), "{out}");
    assert!(out.contains("rabbitmq_cluster_exchange_bindings{"), "{out}");
    assert!(!out.contains("rabbitmq_detailed_exchange"), "{out}");
}

#[test]
fn scrapes_beyond_the_bound_wait_for_a_permit() {
    // Unauthenticated and each held whole: concurrent scrapes must not pile up unbounded.
    let (_b, api) = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let held = SCRAPES
            .acquire_many(MAX_CONCURRENT_SCRAPES as u32)
            .await
            .unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            serve(api.clone(), Scope::aggregated()),
        )
        .await;
        assert!(waiting.is_err(), "a scrape ran beyond the bound");
        drop(held);
        let r = serve(api, Scope::aggregated()).await;
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn node_figures_ignore_the_vhost_filter() {
    // process_open_tcp_sockets is the node's: /metrics/detailed?vhost= must not shrink it.
    let (b, api) = setup();
    let meta = ferrymq_core::connections::ConnectionMeta::default();
    let _c = b.open_session("guest", "/", meta).unwrap();
    let scope = |v: &str| Scope {
        prefix: "rabbitmq_detailed_",
        per_object: true,
        families: Some([Family::NodeCoarse].into_iter().collect()),
        vhosts: Some([v.to_string()].into_iter().collect()),
    };
    let key = "rabbitmq_detailed_process_open_tcp_sockets";
    assert_eq!(sample(&render(api.clone(), scope("/")), key), Some(1.0));
    assert_eq!(sample(&render(api, scope("elsewhere")), key), Some(1.0));
}
