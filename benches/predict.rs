//! Classifier scoring latency in each precision: one review, and a batch of 64 reviews.
//!
//! The classifier has fastai's default sizes (embedding 400, hidden 1152, 3 layers,
//! bptt 72), random weights and a 16,000-token vocabulary. Each review is 300 random
//! token ids, about the mean length of an IMDb train review under fastai's rules
//! (7,515,171 tokens over 25,000 reviews). Tokenization is not timed. Run with
//! `cargo bench --bench predict`.

use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion};
use ulmfit::kernels::precision::Precision;
use ulmfit::model::{Classifier, ClassifierConfig};
use ulmfit::pipeline::predict::score_documents;
use ulmfit::rng::Rng;

const VOCAB: usize = 16_000;
const REVIEW_TOKENS: usize = 300;

fn reviews(rng: &mut Rng, count: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|_| {
            (0..REVIEW_TOKENS)
                .map(|_| 8 + rng.below(VOCAB as u64 - 8) as u32)
                .collect()
        })
        .collect()
}

fn latency(c: &mut Criterion) {
    let mut rng = Rng::seed(1);
    let mut model = Classifier::new(ClassifierConfig::new(VOCAB, 2), &mut rng, &Device::Cpu)
        .expect("a classifier with default sizes");
    let one = reviews(&mut rng, 1);
    let batch = reviews(&mut rng, 64);
    for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
        model.set_precision(precision);
        model
            .pack_for_inference()
            .expect("packing the LSTM weights");
        let mut group = c.benchmark_group(format!("predict_{precision}"));
        group.sample_size(10);
        group.bench_function("one_review", |b| {
            b.iter(|| score_documents(&model, &one, 64).expect("scoring one review"))
        });
        group.bench_function("batch_of_64", |b| {
            b.iter(|| score_documents(&model, &batch, 64).expect("scoring 64 reviews"))
        });
        group.finish();
    }
}

criterion_group!(benches, latency);
criterion_main!(benches);
