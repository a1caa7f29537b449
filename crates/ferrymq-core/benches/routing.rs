//! Topic routing against 10,000 bindings.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ferrymq_core::connections::ConnectionMeta;
use ferrymq_core::{Broker, BrokerConfig, FieldTable, LazyHeaders, QueueOptions};

fn topic(c: &mut Criterion) {
    let b = Broker::new(BrokerConfig::default());
    let meta = ConnectionMeta {
        peer: None,
        protocol: "bench",
        ..Default::default()
    };
    let s = b.open_session("guest", "/", meta).unwrap();
    s.declare_queue("q", QueueOptions::default(), false)
        .unwrap();
    // 10,000 distinct patterns shaped like real ones: region.service.level with wildcards.
    for i in 0..10_000 {
        let p = match i % 4 {
            0 => format!("r{}.s{}.*", i % 50, i),
            1 => format!("r{}.#.l{}", i % 50, i),
            2 => format!("*.s{}.l{}", i, i % 7),
            _ => format!("r{}.s{}.l{}", i % 50, i, i % 7),
        };
        s.bind_queue("q", "amq.topic", &p, FieldTable::new())
            .unwrap();
    }
    let v = s.vhost();
    let x = v.exchange("amq.topic").unwrap();
    c.bench_function("topic route, 10k bindings", |b| {
        b.iter(|| {
            black_box(
                v.route(&x, black_box("r7.s4007.l3"), &LazyHeaders::none())
                    .len(),
            )
        })
    });
}

criterion_group!(benches, topic);
criterion_main!(benches);
