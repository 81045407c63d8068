//! Tests of the activation penalties (AR and TAR) in classifier training.

use candle_core::{Device, Tensor};
use ulmfit::model::{Classifier, ClassifierConfig};
use ulmfit::pipeline::classify::{activation_penalty, ClassifierTask, LabelledDocuments};
use ulmfit::rng::Rng;
use ulmfit::train::TrainTask;

const VOCAB: usize = 30;

fn tiny_classifier() -> Classifier {
    let mut config = ClassifierConfig::new(VOCAB, 3);
    config.encoder.embedding_size = 6;
    config.encoder.hidden_size = 10;
    config.bptt = 8;
    config.max_len = 16;
    Classifier::new(config, &mut Rng::seed(31), &Device::Cpu).unwrap()
}

/// Three documents of 21, 5 and 9 tokens: the first pools only its last chunks.
fn documents() -> Vec<Vec<u32>> {
    let mut rng = Rng::seed(32);
    [21usize, 5, 9]
        .iter()
        .map(|&len| {
            (0..len)
                .map(|_| 2 + rng.below(VOCAB as u64 - 2) as u32)
                .collect()
        })
        .collect()
}

fn task(ar_alpha: f64, tar_beta: f64) -> ClassifierTask {
    let train = LabelledDocuments {
        ids: documents(),
        labels: vec![0, 1, 2],
        label_sets: Vec::new(),
    };
    ClassifierTask::new(
        tiny_classifier(),
        train,
        LabelledDocuments::default(),
        3,
        None,
    )
    .unwrap()
    .with_activation_regularization(ar_alpha, tar_beta)
}

fn scalar(tensor: &Tensor) -> f64 {
    tensor
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Outputs `[[1, 2], [3, 4]]` and `[[0, 1]]`: 6 values with squares summing to 31, and
/// one change `[2, 2]` with squares summing to 8 over 2 values.
#[test]
fn penalty_of_small_outputs_by_hand() {
    let first = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let second = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
    let outputs = [first, second];
    let ar = activation_penalty(&outputs, 2.0, 0.0).unwrap().unwrap();
    assert!(
        (scalar(&ar) - 2.0 * 31.0 / 6.0).abs() < 1e-6,
        "AR {}",
        scalar(&ar)
    );
    let tar = activation_penalty(&outputs, 0.0, 1.0).unwrap().unwrap();
    assert!((scalar(&tar) - 4.0).abs() < 1e-6, "TAR {}", scalar(&tar));
    let both = activation_penalty(&outputs, 2.0, 1.0).unwrap().unwrap();
    assert!((scalar(&both) - (31.0 / 3.0 + 4.0)).abs() < 1e-6);
    assert!(activation_penalty(&outputs, 0.0, 0.0).unwrap().is_none());
}

/// The training loss with fastai's factors (AR 2, TAR 1) exceeds the loss without them
/// by the penalties computed by hand from the same forward pass.
#[test]
fn training_loss_adds_ar_and_tar() {
    let batch = vec![0, 1, 2];
    let plain = scalar(
        &task(0.0, 0.0)
            .train_step(batch.clone(), &mut Rng::seed(33))
            .unwrap(),
    );
    let regularized = scalar(
        &task(2.0, 1.0)
            .train_step(batch, &mut Rng::seed(33))
            .unwrap(),
    );

    let mut model = tiny_classifier();
    let documents = documents();
    let refs: Vec<&[u32]> = documents.iter().map(Vec::as_slice).collect();
    let groups = model.layer_groups().len();
    let output = model
        .forward_train(&refs, &vec![false; groups], &mut Rng::seed(33))
        .unwrap();
    let (mut squares, mut values, mut changes, mut steps) = (0.0f64, 0usize, 0.0f64, 0usize);
    for document in &output.outputs {
        let rows = document.to_vec2::<f32>().unwrap();
        for (position, row) in rows.iter().enumerate() {
            for (column, &value) in row.iter().enumerate() {
                squares += f64::from(value).powi(2);
                values += 1;
                if position > 0 {
                    let change = f64::from(value - rows[position - 1][column]);
                    changes += change * change;
                    steps += 1;
                }
            }
        }
    }
    // 21 tokens with max_len 16 pool the chunks starting at 8 and 16 (13 positions),
    // then 5 and 9 positions, each 6 wide.
    assert_eq!(values, (13 + 5 + 9) * 6);
    assert_eq!(steps, (12 + 4 + 8) * 6);
    let expected = 2.0 * squares / values as f64 + changes / steps as f64;
    assert!(expected > 0.0);
    let added = regularized - plain;
    assert!(
        (added - expected).abs() < 1e-5,
        "loss grew by {added}, expected {expected}"
    );
}
