//! Kernel benchmarks at the `small` preset's sizes: the fused decoder cross-entropy
//! against full logits with stock operations, and the fused LSTM layer, each forward
//! and backward.
//!
//! Run with `cargo bench --bench lm`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use ulmfit::kernels::decoder::{decoder_cross_entropy, decoder_cross_entropy_autograd};
use ulmfit::kernels::lstm::lstm_sequence;
use ulmfit::rng::Rng;

fn var(rng: &mut Rng, shape: &[usize], bound: f32) -> Var {
    let count = shape.iter().product();
    let tensor = Tensor::from_vec(rng.uniform(count, -bound, bound), shape, &Device::Cpu)
        .expect("shape matches the data");
    Var::from_tensor(&tensor).expect("a CPU tensor makes a variable")
}

fn decoder(c: &mut Criterion) {
    // 512 positions of a batch, embedding 200, vocabulary 16,000.
    let (rows, features, classes) = (512, 200, 16_000);
    let mut rng = Rng::seed(1);
    let hidden = var(&mut rng, &[rows, features], 1.0);
    let weight = var(&mut rng, &[classes, features], 0.1);
    let bias = var(&mut rng, &[classes], 0.1);
    let ids: Vec<u32> = (0..rows)
        .map(|_| rng.below(classes as u64) as u32)
        .collect();
    let targets = Tensor::from_vec(ids, rows, &Device::Cpu).expect("targets");
    let mut group = c.benchmark_group("decoder_cross_entropy_512x16000");
    group.sample_size(10);
    group.bench_function("fused", |b| {
        b.iter(|| {
            let loss =
                decoder_cross_entropy(&hidden, &weight, Some(&bias), &targets).expect("fused loss");
            loss.backward().expect("backward")
        })
    });
    group.bench_function("autograd", |b| {
        b.iter(|| {
            let loss = decoder_cross_entropy_autograd(&hidden, &weight, Some(&bias), &targets)
                .expect("reference loss");
            loss.backward().expect("backward")
        })
    });
    group.finish();
}

fn lstm(c: &mut Criterion) {
    // One 600-unit layer over 70 steps of 32 sequences.
    let (time, batch, hidden) = (70, 32, 600);
    let mut rng = Rng::seed(2);
    let projected = var(&mut rng, &[time, batch, 4 * hidden], 1.0);
    let w_hh = var(&mut rng, &[4 * hidden, hidden], 0.04);
    let h0 = var(&mut rng, &[batch, hidden], 0.5);
    let c0 = var(&mut rng, &[batch, hidden], 0.5);
    let mut group = c.benchmark_group("lstm_sequence_70x32x600");
    group.sample_size(10);
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let output = lstm_sequence(&projected, &w_hh, &h0, &c0).expect("forward");
            output
                .outputs
                .sum_all()
                .expect("sum")
                .backward()
                .expect("backward")
        })
    });
    group.finish();
}

criterion_group!(benches, decoder, lstm);
criterion_main!(benches);
