//! Queue enqueue / dequeue / ack without consumers (basic.get path).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ferrymq_core::{Message, Properties, Queue, QueueOptions};
use std::sync::Arc;

fn queue(c: &mut Criterion) {
    let msg = Arc::new(
        Message::from_properties(
            "",
            "q",
            &Properties::default(),
            Bytes::from_static(b"0123456789abcdef"),
        )
        .expect("valid message"),
    );
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("enqueue+dequeue+ack x10k", |b| {
        let q = Arc::new(Queue::new("q", "/", QueueOptions::default(), None));
        b.iter(|| {
            for _ in 0..10_000 {
                q.publish(msg.clone());
            }
            let mut seqs = Vec::with_capacity(10_000);
            while let Some((m, _)) = q.get(true) {
                seqs.push(m.seq());
            }
            q.ack(black_box(&seqs));
        })
    });
    g.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
