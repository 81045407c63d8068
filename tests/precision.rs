//! Reduced-precision products end to end: a tiny language model trained in f32 and in
//! bf16, and a random classifier scored in f32, bf16 and int8.

use candle_core::{Device, Tensor};
use ulmfit::api::SentimentModel;
use ulmfit::kernels::precision::Precision;
use ulmfit::model::{AwdLstmConfig, LanguageModel};
use ulmfit::pipeline::predict::{write_random_classifier, LoadedClassifier};
use ulmfit::rng::Rng;
use ulmfit::train::optimizer::{AdamConfig, AdamW};
use ulmfit::train::{Param, ParamGroup};

const VOCAB: usize = 40;
const BATCH: usize = 8;
const BPTT: usize = 12;

/// Token ids that follow a noisy cycle, so a model can learn to predict them.
fn stream(rng: &mut Rng, length: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(length);
    let mut current = 8u32;
    for _ in 0..length {
        current = if rng.below(5) == 0 {
            8 + rng.below((VOCAB - 8) as u64) as u32
        } else {
            8 + (current - 8 + 3) % (VOCAB as u32 - 8)
        };
        ids.push(current);
    }
    ids
}

/// Returns `(input, targets)`, each `[BATCH, BPTT]`, from a stream of ids.
fn batch(ids: &[u32]) -> (Tensor, Tensor) {
    let mut input = Vec::with_capacity(BATCH * BPTT);
    let mut targets = Vec::with_capacity(BATCH * BPTT);
    for row in 0..BATCH {
        let start = row * (BPTT + 1);
        input.extend_from_slice(&ids[start..start + BPTT]);
        targets.extend_from_slice(&ids[start + 1..start + BPTT + 1]);
    }
    let device = Device::Cpu;
    (
        Tensor::from_vec(input, (BATCH, BPTT), &device).unwrap(),
        Tensor::from_vec(targets, (BATCH, BPTT), &device).unwrap(),
    )
}

/// Trains a 2-layer model for 40 AdamW steps in `precision` from fixed seeds and
/// returns `(first training loss, validation loss after training)`.
fn train_tiny_model(precision: Precision) -> (f32, f32) {
    let config = AwdLstmConfig {
        embedding_size: 16,
        hidden_size: 48,
        layers: 2,
        dropout_multiplier: 0.2,
        ..AwdLstmConfig::language_model(VOCAB)
    };
    let mut rng = Rng::seed(7);
    let mut model = LanguageModel::new(config, &mut rng, &Device::Cpu).unwrap();
    model.set_precision(precision);
    let groups = model
        .layer_groups()
        .into_iter()
        .enumerate()
        .map(|(g, vars)| {
            let params = vars
                .into_iter()
                .enumerate()
                .map(|(p, var)| Param::new(format!("g{g}.p{p}"), var))
                .collect();
            ParamGroup::new(format!("g{g}"), params)
        })
        .collect::<Vec<_>>();
    let lrs = vec![2e-2; groups.len()];
    let mut optimizer = AdamW::new(groups, AdamConfig::default()).unwrap();
    let mut data = Rng::seed(8);
    let mut first = None;
    for _ in 0..40 {
        let (input, targets) = batch(&stream(&mut data, BATCH * (BPTT + 1)));
        let loss = model
            .forward_loss(&input, &targets, true, &mut rng, 2.0, 1.0)
            .unwrap();
        first.get_or_insert(loss.cross_entropy.to_scalar::<f32>().unwrap());
        let store = loss.total.backward().unwrap();
        let grads = optimizer.collect_grads(&store);
        optimizer.step(&grads, &lrs, 0.9).unwrap();
    }
    model.reset();
    model.set_track_gradients(false);
    let mut valid = Rng::seed(9);
    let mut total = 0.0;
    for _ in 0..4 {
        let (input, targets) = batch(&stream(&mut valid, BATCH * (BPTT + 1)));
        let loss = model
            .forward_loss(&input, &targets, false, &mut rng, 0.0, 0.0)
            .unwrap();
        total += loss.cross_entropy.to_scalar::<f32>().unwrap() / 4.0;
    }
    (first.unwrap(), total)
}

#[test]
fn bf16_training_tracks_f32() {
    let (first_f32, valid_f32) = train_tiny_model(Precision::F32);
    let (first_bf16, valid_bf16) = train_tiny_model(Precision::Bf16);
    // Training must have learned something for the comparison to mean anything.
    assert!(
        valid_f32 < 0.8 * first_f32,
        "f32 validation loss {valid_f32} is not well below the first loss {first_f32}"
    );
    assert!(
        (first_bf16 - first_f32).abs() < 0.01 * first_f32,
        "first losses: bf16 {first_bf16}, f32 {first_f32}"
    );
    assert!(
        (valid_bf16 - valid_f32).abs() < 0.01 * valid_f32,
        "validation losses: bf16 {valid_bf16}, f32 {valid_f32}"
    );
}

#[test]
fn int8_training_is_rejected() {
    let config = AwdLstmConfig {
        embedding_size: 8,
        hidden_size: 12,
        layers: 2,
        ..AwdLstmConfig::language_model(VOCAB)
    };
    let mut rng = Rng::seed(1);
    let mut model = LanguageModel::new(config, &mut rng, &Device::Cpu).unwrap();
    model.set_precision(Precision::Int8);
    let (input, targets) = batch(&stream(&mut rng, BATCH * (BPTT + 1)));
    let error = model
        .forward_loss(&input, &targets, true, &mut rng, 0.0, 0.0)
        .unwrap_err();
    assert!(error.to_string().contains("inference only"), "{error}");
}

const WORDS: [&str; 12] = [
    "good", "bad", "movie", "great", "awful", "plot", "acting", "boring", "fun", "the", "a", "was",
];

fn texts() -> Vec<String> {
    let mut rng = Rng::seed(3);
    let mut texts = vec![String::new(), "good".to_string()];
    for length in [3, 9, 20, 70, 150] {
        let words: Vec<&str> = (0..length)
            .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
            .collect();
        texts.push(words.join(" "));
    }
    texts
}

#[test]
fn reduced_precision_probabilities_match_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_random_classifier(dir.path(), &WORDS, &["neg", "pos", "neutral"], 5).unwrap();
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let reference = LoadedClassifier::load(dir.path())
        .unwrap()
        .probabilities(&refs, 4)
        .unwrap();
    for precision in [Precision::Bf16, Precision::Int8] {
        let mut model = LoadedClassifier::load(dir.path()).unwrap();
        model.set_precision(precision).unwrap();
        let scored = model.probabilities(&refs, 4).unwrap();
        for (text, (got, want)) in scored.iter().zip(&reference).enumerate() {
            for (class, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() < 0.01,
                    "{precision} text {text} class {class}: {g}, f32 {w}"
                );
            }
        }
        let api = SentimentModel::load_with_precision(dir.path(), precision).unwrap();
        let predictions = api.score(&refs).unwrap();
        for (text, (prediction, want)) in predictions.iter().zip(&reference).enumerate() {
            let got = prediction.probabilities["pos"];
            assert!(
                (got - want[1]).abs() < 0.01,
                "{precision} API text {text}: pos {got}, f32 {}",
                want[1]
            );
        }
    }
}
