//! Tests of the fused CPU kernels against finite differences, stock Candle autograd and
//! hand-computed values, and of the model's fused training loss against its reference.

use candle_core::{DType, Device, Tensor, Var};
use ulmfit::kernels::decoder::{decoder_cross_entropy, decoder_cross_entropy_autograd, CHUNK_ROWS};
use ulmfit::model::{AwdLstmConfig, LanguageModel};
use ulmfit::rng::Rng;

/// Positions spanning two chunks, so the chunk boundary is exercised.
const ROWS: usize = CHUNK_ROWS + 4;
const FEATURES: usize = 3;
const CLASSES: usize = 7;

fn random(rng: &mut Rng, count: usize, bound: f64) -> Vec<f64> {
    (0..count)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) * bound)
        .collect()
}

fn values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Hidden `[ROWS, FEATURES]`, weight `[CLASSES, FEATURES]`, bias `[CLASSES]` values and
/// the targets.
struct Problem {
    hidden: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    targets: Vec<u32>,
}

fn problem() -> Problem {
    let mut rng = Rng::seed(31);
    Problem {
        hidden: random(&mut rng, ROWS * FEATURES, 2.0),
        weight: random(&mut rng, CLASSES * FEATURES, 1.0),
        bias: random(&mut rng, CLASSES, 0.5),
        targets: (0..ROWS)
            .map(|_| rng.below(CLASSES as u64) as u32)
            .collect(),
    }
}

/// Returns the loss and the gradients of hidden, weight and bias, in `dtype`.
fn loss_and_grads(problem: &Problem, dtype: DType, fused: bool) -> (f64, [Vec<f64>; 3]) {
    let device = Device::Cpu;
    let var = |data: &[f64], shape: &[usize]| {
        let tensor = Tensor::from_vec(data.to_vec(), shape, &device)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        Var::from_tensor(&tensor).unwrap()
    };
    let hidden = var(&problem.hidden, &[ROWS, FEATURES]);
    let weight = var(&problem.weight, &[CLASSES, FEATURES]);
    let bias = var(&problem.bias, &[CLASSES]);
    let targets = Tensor::new(problem.targets.as_slice(), &device).unwrap();
    let loss = if fused {
        decoder_cross_entropy(&hidden, &weight, Some(&bias), &targets).unwrap()
    } else {
        decoder_cross_entropy_autograd(&hidden, &weight, Some(&bias), &targets).unwrap()
    };
    let grads = loss.backward().unwrap();
    let grad = |var: &Var| values(grads.get(var.as_tensor()).unwrap());
    (
        loss.to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        [grad(&hidden), grad(&weight), grad(&bias)],
    )
}

#[test]
fn fused_decoder_gradients_match_finite_differences_in_f64() {
    let base = problem();
    let (_, grads) = loss_and_grads(&base, DType::F64, true);
    let epsilon = 1e-6;
    // Every weight and bias entry, and the hidden rows on both sides of the chunk edge.
    let hidden_indices: Vec<usize> = (0..2 * FEATURES)
        .chain((CHUNK_ROWS - 1) * FEATURES..(CHUNK_ROWS + 1) * FEATURES)
        .collect();
    let weight_indices: Vec<usize> = (0..CLASSES * FEATURES).collect();
    let bias_indices: Vec<usize> = (0..CLASSES).collect();
    let checks = [
        ("hidden", 0, hidden_indices),
        ("weight", 1, weight_indices),
        ("bias", 2, bias_indices),
    ];
    for (name, input, indices) in checks {
        for index in indices {
            let shifted = |delta: f64| {
                let mut p = problem();
                match input {
                    0 => p.hidden[index] += delta,
                    1 => p.weight[index] += delta,
                    _ => p.bias[index] += delta,
                }
                loss_and_grads(&p, DType::F64, true).0
            };
            let numeric = (shifted(epsilon) - shifted(-epsilon)) / (2.0 * epsilon);
            let exact = grads[input][index];
            assert!(
                (numeric - exact).abs() < 1e-8,
                "{name}[{index}]: finite difference {numeric}, backward {exact}"
            );
        }
    }
}

#[test]
fn fused_decoder_matches_autograd_in_f32() {
    let base = problem();
    let (loss_fused, grads_fused) = loss_and_grads(&base, DType::F32, true);
    let (loss_reference, grads_reference) = loss_and_grads(&base, DType::F32, false);
    assert!(
        (loss_fused - loss_reference).abs() < 1e-5,
        "loss {loss_fused} vs {loss_reference}"
    );
    for (name, (fused, reference)) in ["hidden", "weight", "bias"]
        .iter()
        .zip(grads_fused.iter().zip(&grads_reference))
    {
        let diff = max_abs_diff(fused, reference);
        assert!(diff < 1e-5, "{name} gradients differ by {diff}");
    }
}

#[test]
fn fused_decoder_loss_matches_hand_computed_value() {
    // One position, two classes with logits 1 and -1 (h = 1, W = [1, -1], no bias),
    // target 0: loss = ln(1 + e^-2) = 0.126928...; d loss / d h = -2 e^-2 / (1 + e^-2).
    let device = Device::Cpu;
    let hidden = Var::from_tensor(&Tensor::new(&[[1.0f64]], &device).unwrap()).unwrap();
    let weight = Tensor::new(&[[1.0f64], [-1.0]], &device).unwrap();
    let targets = Tensor::new(&[0u32], &device).unwrap();
    let loss = decoder_cross_entropy(&hidden, &weight, None, &targets).unwrap();
    let expected = (1.0 + (-2.0f64).exp()).ln();
    let value = loss.to_scalar::<f64>().unwrap();
    assert!(
        (value - expected).abs() < 1e-15,
        "loss {value} vs {expected}"
    );
    let grads = loss.backward().unwrap();
    let grad = values(grads.get(hidden.as_tensor()).unwrap())[0];
    let expected_grad = -2.0 * (-2.0f64).exp() / (1.0 + (-2.0f64).exp());
    assert!(
        (grad - expected_grad).abs() < 1e-15,
        "gradient {grad} vs {expected_grad}"
    );
}

#[test]
fn fused_decoder_rejects_out_of_range_target() {
    let device = Device::Cpu;
    let hidden = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
    let weight = Tensor::zeros((4, 3), DType::F32, &device).unwrap();
    let targets = Tensor::new(&[1u32, 4], &device).unwrap();
    let error = decoder_cross_entropy(&hidden, &weight, None, &targets).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("target 4 is outside the 4 classes"),
        "{error}"
    );
}

#[test]
fn model_fused_loss_matches_reference_loss_and_gradients() {
    let config = AwdLstmConfig {
        embedding_size: 4,
        hidden_size: 5,
        ..AwdLstmConfig::language_model(12)
    };
    let ids: Vec<u32> = vec![2, 5, 7, 11, 3, 0, 9, 4, 6, 8, 10, 2, 1, 7];
    let input = Tensor::from_vec(ids[..12].to_vec(), (2, 6), &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(ids[2..].to_vec(), (2, 6), &Device::Cpu).unwrap();
    let run = |fused: bool| {
        let mut model =
            LanguageModel::new(config.clone(), &mut Rng::seed(8), &Device::Cpu).unwrap();
        model.set_fused_loss(fused);
        let mut rng = Rng::seed(9);
        let loss = model
            .forward_loss(&input, &targets, true, &mut rng, 2.0, 1.0)
            .unwrap();
        let grads = loss.total.backward().unwrap();
        let grads: Vec<Vec<f64>> = model
            .vars()
            .iter()
            .map(|var| values(grads.get(var.as_tensor()).unwrap()))
            .collect();
        (
            values(&loss.total)[0],
            values(&loss.cross_entropy)[0],
            grads,
        )
    };
    let (total_fused, ce_fused, grads_fused) = run(true);
    let (total_reference, ce_reference, grads_reference) = run(false);
    assert!(
        (ce_fused - ce_reference).abs() < 1e-6,
        "{ce_fused} vs {ce_reference}"
    );
    assert!(
        (total_fused - total_reference).abs() < 1e-6,
        "{total_fused} vs {total_reference}"
    );
    for (index, (fused, reference)) in grads_fused.iter().zip(&grads_reference).enumerate() {
        let diff = max_abs_diff(fused, reference);
        assert!(diff < 1e-6, "parameter {index}: gradients differ by {diff}");
    }
}

#[test]
fn fused_lstm_matches_autograd_at_model_like_width() {
    // 40 units and 8 sequences: several of gemm's register blocks per product, where the
    // unit tests inside the kernel module use 3 units and 2 sequences.
    use ulmfit::kernels::lstm::{lstm_sequence, lstm_sequence_autograd};
    let (time, batch, hidden) = (5, 8, 40);
    let mut rng = Rng::seed(41);
    let mut var = |shape: &[usize], bound: f64| {
        let count = shape.iter().product();
        let tensor = Tensor::from_vec(random(&mut rng, count, bound), shape, &Device::Cpu).unwrap();
        Var::from_tensor(&tensor).unwrap()
    };
    let vars = [
        var(&[time, batch, 4 * hidden], 1.0),
        var(&[4 * hidden, hidden], 0.3),
        var(&[batch, hidden], 0.5),
        var(&[batch, hidden], 0.5),
    ];

    let run = |fused: bool| {
        let [projected, w_hh, h0, c0] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
        let output = if fused {
            lstm_sequence(projected, w_hh, h0, c0).unwrap()
        } else {
            lstm_sequence_autograd(projected, w_hh, h0, c0).unwrap()
        };
        let weights = Tensor::arange(0.0, (time * batch * hidden) as f64, &Device::Cpu)
            .unwrap()
            .affine(1e-3, -0.5)
            .unwrap()
            .reshape((time, batch, hidden))
            .unwrap();
        let loss = output
            .outputs
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&output.c_last.sum_all().unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        let grads: Vec<Vec<f64>> = vars
            .iter()
            .map(|v| values(grads.get(v.as_tensor()).unwrap()))
            .collect();
        (values(&output.outputs), grads)
    };

    let (outputs_fused, grads_fused) = run(true);
    let (outputs_reference, grads_reference) = run(false);
    let diff = max_abs_diff(&outputs_fused, &outputs_reference);
    assert!(diff < 1e-12, "outputs differ by {diff}");
    for (name, (fused, reference)) in ["projected", "W_hh", "h0", "c0"]
        .iter()
        .zip(grads_fused.iter().zip(&grads_reference))
    {
        let diff = max_abs_diff(fused, reference);
        assert!(diff < 1e-11, "{name} gradients differ by {diff}");
    }
}
