//! Hot-path codec costs: decoding publish + header + body, encoding a delivery.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ferrymq_amqp::codec::frame::{
    body_frames, decode_frame, encode_deliver, encode_header, encode_header_properties,
    encode_method, FRAME_END,
};
use ferrymq_amqp::codec::methods::BasicPublish;
use ferrymq_core::{Message, Properties};

fn publish_frames(n: usize, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let props = Properties {
        delivery_mode: Some(1),
        ..Default::default()
    };
    for _ in 0..n {
        encode_method(
            &mut out,
            1,
            &BasicPublish {
                routing_key: "perf-0".into(),
                ..Default::default()
            }
            .into(),
        );
        encode_header_properties(&mut out, 1, body.len() as u64, &props);
        body_frames(1, body.len(), 131_072, |h, r| {
            out.extend_from_slice(&h);
            out.extend_from_slice(&body[r]);
            out.extend_from_slice(&[FRAME_END]);
        });
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode publish+header+body");
    for size in [16usize, 1024] {
        let wire = publish_frames(1000, &vec![7u8; size]);
        g.throughput(Throughput::Elements(1000));
        g.bench_function(format!("{size} B x1000"), |b| {
            b.iter(|| {
                let mut buf = wire.clone();
                let mut n = 0;
                while let Ok(Some(f)) = decode_frame(&mut buf, 131_072) {
                    n += 1;
                    black_box(f);
                }
                assert_eq!(n, 3000);
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let props = Properties {
        delivery_mode: Some(1),
        ..Default::default()
    };
    let msg = Message::from_properties("", "perf-0", &props, Bytes::from(vec![7u8; 16]))
        .expect("valid message");
    let mut g = c.benchmark_group("encode deliver+header+body");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("16 B x1000", |b| {
        let mut out = BytesMut::with_capacity(1 << 20);
        b.iter(|| {
            out.clear();
            for tag in 0..1000u64 {
                encode_deliver(
                    &mut out,
                    1,
                    "amq.ctag-abcdefghijklmnopqrstuv",
                    tag,
                    false,
                    msg.exchange(),
                    msg.routing_key(),
                );
                let body = msg.body();
                encode_header(&mut out, 1, body.len() as u64, msg.raw_properties());
                body_frames(1, body.len(), 131_072, |h, r| {
                    out.extend_from_slice(&h);
                    out.extend_from_slice(&body[r]);
                    out.extend_from_slice(&[FRAME_END]);
                });
            }
            black_box(out.len());
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
