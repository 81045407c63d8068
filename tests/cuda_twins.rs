//! The CPU twins of the CUDA kernels, and the operations built on them, against the
//! crate's CPU paths and hand-computed values. With the `cuda` feature, ignored tests
//! compare the kernels with the twins, and the model on a GPU with the model on the CPU
//! (`cargo test --features cuda --test cuda_twins -- --ignored`).

use candle_core::{Device, Tensor, Var};
use ulmfit::kernels::cuda::{ops, twins};
use ulmfit::kernels::lstm::lstm_sequence;
use ulmfit::model::dropout::embed;
use ulmfit::rng::Rng;

const BATCH: usize = 3;
const HIDDEN: usize = 5;

/// Largest absolute difference divided by the largest absolute reference value.
fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}

/// `h W^T` for `h` `[rows, inner]` and `w` `[cols, inner]`, in plain loops.
fn matmul_t(h: &[f32], w: &[f32], rows: usize, inner: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = (0..inner)
                .map(|k| h[r * inner + k] * w[c * inner + k])
                .sum();
        }
    }
    out
}

/// Random LSTM step inputs: projected `[B, 4H]`, W_hh `[4H, H]`, h0 and c0 `[B, H]`.
fn step_inputs(seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::seed(seed);
    (
        rng.uniform(BATCH * 4 * HIDDEN, -2.0, 2.0),
        rng.uniform(4 * HIDDEN * HIDDEN, -0.5, 0.5),
        rng.uniform(BATCH * HIDDEN, -1.0, 1.0),
        rng.uniform(BATCH * HIDDEN, -1.0, 1.0),
    )
}

fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).expect("tensor from slice")
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("tensor values")
}

#[test]
fn cell_forward_matches_cpu_lstm() {
    let (projected, w_hh, h0, c0) = step_inputs(11);
    let recurrent = matmul_t(&h0, &w_hh, BATCH, HIDDEN, 4 * HIDDEN);
    let twin = twins::lstm_cell_forward(&projected, &recurrent, &c0, BATCH, HIDDEN).unwrap();
    let cpu = lstm_sequence(
        &tensor(&projected, &[1, BATCH, 4 * HIDDEN]),
        &tensor(&w_hh, &[4 * HIDDEN, HIDDEN]),
        &tensor(&h0, &[BATCH, HIDDEN]),
        &tensor(&c0, &[BATCH, HIDDEN]),
    )
    .unwrap();
    assert!(relative_error(&twin.h, &values(&cpu.h_last)) < 1e-6);
    assert!(relative_error(&twin.c, &values(&cpu.c_last)) < 1e-6);
}

#[test]
fn cell_backward_matches_cpu_gradients() {
    let (projected, w_hh, h0, c0) = step_inputs(12);
    let mut rng = Rng::seed(13);
    // The objective sum(h * dh) + sum(c * dc_next) has exactly these output gradients.
    let dh = rng.uniform(BATCH * HIDDEN, -1.0, 1.0);
    let dc_next = rng.uniform(BATCH * HIDDEN, -1.0, 1.0);

    let projected_var = Var::from_tensor(&tensor(&projected, &[1, BATCH, 4 * HIDDEN])).unwrap();
    let c0_var = Var::from_tensor(&tensor(&c0, &[BATCH, HIDDEN])).unwrap();
    let out = lstm_sequence(
        projected_var.as_tensor(),
        &tensor(&w_hh, &[4 * HIDDEN, HIDDEN]),
        &tensor(&h0, &[BATCH, HIDDEN]),
        c0_var.as_tensor(),
    )
    .unwrap();
    let objective = (out
        .h_last
        .mul(&tensor(&dh, &[BATCH, HIDDEN]))
        .unwrap()
        .sum_all()
        .unwrap()
        + out
            .c_last
            .mul(&tensor(&dc_next, &[BATCH, HIDDEN]))
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let grads = objective.backward().unwrap();
    let cpu_dpre = values(grads.get(projected_var.as_tensor()).unwrap());
    let cpu_dc0 = values(grads.get(c0_var.as_tensor()).unwrap());

    let recurrent = matmul_t(&h0, &w_hh, BATCH, HIDDEN, 4 * HIDDEN);
    let forward = twins::lstm_cell_forward(&projected, &recurrent, &c0, BATCH, HIDDEN).unwrap();
    let twin = twins::lstm_cell_backward(
        &forward.gates,
        &c0,
        &forward.c,
        &dh,
        &dc_next,
        BATCH,
        HIDDEN,
    )
    .unwrap();
    assert!(relative_error(&twin.dpre, &cpu_dpre) < 1e-6);
    assert!(relative_error(&twin.dc_prev, &cpu_dc0) < 1e-6);
}

#[test]
fn cell_forward_matches_hand_computed() {
    // One unit, zero recurrent term and zero state: c = sigmoid(i) tanh(g),
    // h = sigmoid(o) tanh(c).
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let out = twins::lstm_cell_forward(&[0.5, -1.0, 0.25, 2.0], &[0.0; 4], &[0.0], 1, 1).unwrap();
    let c = sigmoid(0.5) * 0.25f32.tanh();
    assert_eq!(out.c, vec![c]);
    assert_eq!(out.h, vec![sigmoid(2.0) * c.tanh()]);
    assert_eq!(out.gates[1], sigmoid(-1.0));
}

#[test]
fn weight_dropout_scales_kept_weights() {
    let out = twins::weight_dropout(&[1.0, 2.0, -3.0, 4.0], &[1, 0, 1, 0], 2.0).unwrap();
    assert_eq!(out, vec![2.0, 0.0, -6.0, 0.0]);
}

#[test]
fn weight_dropout_rejects_short_mask() {
    let error = twins::weight_dropout(&[1.0, 2.0], &[1], 2.0).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("keep has 1 elements, expected 2"),
        "{error}"
    );
}

#[test]
fn embedding_dropout_matches_embed() {
    let (vocab, features) = (6, 4);
    let mut rng = Rng::seed(21);
    let weight = rng.uniform(vocab * features, -1.0, 1.0);
    let row_scale = rng.dropout_mask(vocab, 0.5);
    let ids = [3u32, 0, 5, 3, 1];
    let twin = twins::embedding_dropout(&weight, &ids, &row_scale, features).unwrap();
    let cpu = embed(
        &tensor(&weight, &[vocab, features]),
        &Tensor::from_slice(&ids, ids.len(), &Device::Cpu).unwrap(),
        Some(&tensor(&row_scale, &[vocab, 1])),
        None,
    )
    .unwrap();
    assert_eq!(twin, values(&cpu));
}

#[test]
fn embedding_dropout_rejects_unknown_id() {
    let error = twins::embedding_dropout(&[1.0, 2.0], &[0, 2], &[1.0, 1.0], 1).unwrap_err();
    assert!(error.to_string().contains("id 2 at position 1"), "{error}");
}

#[test]
fn concat_pool_matches_hand_computed() {
    // Two rows, time 3, two features; the second row has one real position.
    let outputs = [
        1.0, -2.0, 4.0, 0.0, -1.0, 5.0, // row 0: positions 0, 1, 2
        7.0, 8.0, 99.0, 99.0, 99.0, 99.0, // row 1: position 0, then padding
    ];
    let pooled = twins::concat_pool(&outputs, &[3, 1], 3, 2).unwrap();
    assert_eq!(
        pooled,
        vec![
            -1.0,
            5.0,
            4.0,
            5.0,
            4.0 / 3.0,
            1.0, // row 0: last, max, mean
            7.0,
            8.0,
            7.0,
            8.0,
            7.0,
            8.0, // row 1
        ]
    );
}

#[test]
fn concat_pool_rejects_empty_row() {
    let error = twins::concat_pool(&[0.0; 4], &[2, 0], 2, 1).unwrap_err();
    assert!(error.to_string().contains("row 1 has length 0"), "{error}");
}

/// Gradients of `objective` with respect to each of `vars`, as flat vectors.
fn gradients(objective: &Tensor, vars: &[&Var]) -> Vec<Vec<f32>> {
    let grads = objective.backward().expect("backward pass");
    vars.iter()
        .map(|var| values(grads.get(var.as_tensor()).expect("gradient of a variable")))
        .collect()
}

/// `sum(tensor * weights)` with fixed random weights of the tensor's shape.
fn weighted_sum(tensor: &Tensor, seed: u64) -> Tensor {
    let mut rng = Rng::seed(seed);
    let count = tensor.dims().iter().product::<usize>();
    let weights = self::tensor(&rng.uniform(count, -1.0, 1.0), tensor.dims());
    tensor
        .mul(&weights)
        .and_then(|t| t.sum_all())
        .expect("weighted sum")
}

#[test]
fn stepwise_lstm_matches_fused_cpu_lstm() {
    let time = 4;
    let mut rng = Rng::seed(41);
    let inputs = [
        (
            rng.uniform(time * BATCH * 4 * HIDDEN, -2.0, 2.0),
            vec![time, BATCH, 4 * HIDDEN],
        ),
        (
            rng.uniform(4 * HIDDEN * HIDDEN, -0.5, 0.5),
            vec![4 * HIDDEN, HIDDEN],
        ),
        (rng.uniform(BATCH * HIDDEN, -1.0, 1.0), vec![BATCH, HIDDEN]),
        (rng.uniform(BATCH * HIDDEN, -1.0, 1.0), vec![BATCH, HIDDEN]),
    ];
    let run = |stepwise: bool| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(data, shape)| Var::from_tensor(&tensor(data, shape)).unwrap())
            .collect();
        let [projected, w_hh, h0, c0] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
        let out = if stepwise {
            ops::lstm_sequence_stepwise(projected, w_hh, h0, c0).unwrap()
        } else {
            lstm_sequence(projected, w_hh, h0, c0).unwrap()
        };
        let objective = (weighted_sum(&out.outputs, 42)
            + weighted_sum(&out.h_last, 43)
            + weighted_sum(&out.c_last, 44))
        .unwrap();
        let refs: Vec<&Var> = vars.iter().collect();
        (
            values(&out.outputs),
            values(&out.c_last),
            gradients(&objective, &refs),
        )
    };
    let (outputs, c_last, grads) = run(true);
    let (fused_outputs, fused_c_last, fused_grads) = run(false);
    assert!(relative_error(&outputs, &fused_outputs) < 1e-6);
    assert!(relative_error(&c_last, &fused_c_last) < 1e-6);
    for (name, (grad, fused)) in ["projected", "W_hh", "h0", "c0"]
        .iter()
        .zip(grads.iter().zip(&fused_grads))
    {
        let error = relative_error(grad, fused);
        assert!(error < 1e-5, "gradient of {name}: relative error {error}");
    }
}

#[test]
fn lstm_cell_op_rejects_f64() {
    let zeros =
        |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F64, &Device::Cpu).unwrap();
    let error = ops::lstm_cell(&zeros(&[1, 4]), &zeros(&[1, 4]), &zeros(&[1, 1])).unwrap_err();
    assert!(error.to_string().contains("f32 only"), "{error}");
}

#[test]
fn weight_dropout_op_matches_mask_product() {
    let (rows, cols) = (8, 5);
    let mut rng = Rng::seed(51);
    let weight = rng.uniform(rows * cols, -1.0, 1.0);
    let mask = rng.dropout_mask(rows * cols, 0.4);
    let keep: Vec<u8> = mask.iter().map(|&m| u8::from(m != 0.0)).collect();
    let scale = 1.0 / (1.0 - 0.4f32);
    let keep = Tensor::from_vec(keep, (rows, cols), &Device::Cpu).unwrap();

    let var = Var::from_tensor(&tensor(&weight, &[rows, cols])).unwrap();
    let dropped = ops::weight_dropout(var.as_tensor(), &keep, scale).unwrap();
    let op_grad = gradients(&weighted_sum(&dropped, 52), &[&var]);

    let reference_var = Var::from_tensor(&tensor(&weight, &[rows, cols])).unwrap();
    let reference = reference_var
        .as_tensor()
        .mul(&tensor(&mask, &[rows, cols]))
        .unwrap();
    let reference_grad = gradients(&weighted_sum(&reference, 52), &[&reference_var]);

    assert_eq!(values(&dropped), values(&reference));
    assert_eq!(op_grad, reference_grad);
}

#[test]
fn embedding_dropout_op_matches_embed_gradients() {
    let (vocab, features, pad) = (7, 3, 1u32);
    let mut rng = Rng::seed(61);
    let weight = rng.uniform(vocab * features, -1.0, 1.0);
    let row_scale = rng.dropout_mask(vocab, 0.3);
    let ids = [4u32, 1, 0, 4, 6, 1, 2];
    let ids_tensor = Tensor::from_slice(&ids, ids.len(), &Device::Cpu).unwrap();

    let var = Var::from_tensor(&tensor(&weight, &[vocab, features])).unwrap();
    let rows = ops::embedding_dropout(
        var.as_tensor(),
        &ids_tensor,
        &tensor(&row_scale, &[vocab]),
        Some(pad),
    )
    .unwrap();
    let op_grad = gradients(&weighted_sum(&rows, 62), &[&var]);

    let reference_var = Var::from_tensor(&tensor(&weight, &[vocab, features])).unwrap();
    let reference = embed(
        reference_var.as_tensor(),
        &ids_tensor,
        Some(&tensor(&row_scale, &[vocab, 1])),
        Some(pad),
    )
    .unwrap();
    let reference_grad = gradients(&weighted_sum(&reference, 62), &[&reference_var]);

    assert_eq!(values(&rows), values(&reference));
    assert!(relative_error(&op_grad[0], &reference_grad[0]) < 1e-6);
    let pad_row = pad as usize * features..(pad as usize + 1) * features;
    assert!(op_grad[0][pad_row].iter().all(|&g| g == 0.0));
}

#[test]
fn concat_pool_op_matches_stock_pooling() {
    let (batch, time, features) = (3, 5, 4);
    let lengths = [5u32, 2, 4];
    let mut rng = Rng::seed(71);
    let mut data = rng.uniform(batch * time * features, -1.0, 1.0);
    // A tie for the maximum in row 0, feature 1, positions 1 and 3.
    data[features + 1] = 3.0;
    data[3 * features + 1] = 3.0;

    let var = Var::from_tensor(&tensor(&data, &[batch, time, features])).unwrap();
    let pooled = ops::concat_pool(var.as_tensor(), &lengths).unwrap();
    let op_grad = gradients(&weighted_sum(&pooled, 72), &[&var]);

    let reference_var = Var::from_tensor(&tensor(&data, &[batch, time, features])).unwrap();
    let mut rows = Vec::new();
    for (b, &length) in lengths.iter().enumerate() {
        let real = reference_var
            .as_tensor()
            .get(b)
            .unwrap()
            .narrow(0, 0, length as usize)
            .unwrap();
        let last = real.get(length as usize - 1).unwrap();
        let max = real.max(0).unwrap();
        let mean = real.mean(0).unwrap();
        rows.push(Tensor::cat(&[&last, &max, &mean], 0).unwrap());
    }
    let reference = Tensor::stack(&rows, 0).unwrap();
    let reference_grad = gradients(&weighted_sum(&reference, 72), &[&reference_var]);

    assert!(relative_error(&values(&pooled), &values(&reference)) < 1e-6);
    assert!(relative_error(&op_grad[0], &reference_grad[0]) < 1e-6);
    // Row 1 is real at positions 0 and 1; its padding (positions 2 to 4) takes no gradient.
    let padding = time * features + 2 * features..2 * time * features;
    assert!(op_grad[0][padding].iter().all(|&g| g == 0.0));
}

#[test]
fn concat_pool_op_rejects_long_length() {
    let outputs = Tensor::zeros((2, 3, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let error = ops::concat_pool(&outputs, &[3, 4]).unwrap_err();
    assert!(error.to_string().contains("row 1 has length 4"), "{error}");
}

#[cfg(feature = "cuda")]
mod gpu {
    //! The kernels against their twins on random inputs (needs a CUDA GPU).

    use super::{relative_error, BATCH};
    use candle_core::{DType, Device, Tensor};
    use ulmfit::kernels::cuda::{gpu, twins};
    use ulmfit::rng::Rng;

    /// Largest relative error accepted between a kernel and its twin.
    const TOLERANCE: f32 = 1e-5;

    fn device() -> Device {
        Device::new_cuda(0).expect("a CUDA device")
    }

    fn on(device: &Device, values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(values, shape, device).expect("copy to the GPU")
    }

    fn back(tensor: &Tensor) -> Vec<f32> {
        tensor
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("copy from the GPU")
    }

    fn report(kernel: &str, error: f32) {
        println!("kernel {kernel}: relative error {error:.3e}");
        assert!(
            error <= TOLERANCE,
            "{kernel}: relative error {error} above {TOLERANCE}"
        );
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_lstm_cell_matches_twin() {
        let device = device();
        let (batch, hidden) = (BATCH * 21, 1152);
        let mut rng = Rng::seed(31);
        let projected = rng.uniform(batch * 4 * hidden, -3.0, 3.0);
        let recurrent = rng.uniform(batch * 4 * hidden, -3.0, 3.0);
        let c_prev = rng.uniform(batch * hidden, -2.0, 2.0);
        let dh = rng.uniform(batch * hidden, -1.0, 1.0);
        let dc_next = rng.uniform(batch * hidden, -1.0, 1.0);
        let twin =
            twins::lstm_cell_forward(&projected, &recurrent, &c_prev, batch, hidden).unwrap();
        let (gates, c, h) = gpu::lstm_cell_forward(
            &on(&device, &projected, &[batch, 4 * hidden]),
            &on(&device, &recurrent, &[batch, 4 * hidden]),
            &on(&device, &c_prev, &[batch, hidden]),
        )
        .unwrap();
        report(
            "lstm_cell_forward gates",
            relative_error(&back(&gates), &twin.gates),
        );
        report("lstm_cell_forward c", relative_error(&back(&c), &twin.c));
        report("lstm_cell_forward h", relative_error(&back(&h), &twin.h));

        let twin_back =
            twins::lstm_cell_backward(&twin.gates, &c_prev, &twin.c, &dh, &dc_next, batch, hidden)
                .unwrap();
        let (dpre, dc_prev) = gpu::lstm_cell_backward(
            &on(&device, &twin.gates, &[batch, 4 * hidden]),
            &on(&device, &c_prev, &[batch, hidden]),
            &on(&device, &twin.c, &[batch, hidden]),
            &on(&device, &dh, &[batch, hidden]),
            &on(&device, &dc_next, &[batch, hidden]),
        )
        .unwrap();
        report(
            "lstm_cell_backward dpre",
            relative_error(&back(&dpre), &twin_back.dpre),
        );
        report(
            "lstm_cell_backward dc_prev",
            relative_error(&back(&dc_prev), &twin_back.dc_prev),
        );
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_dropouts_match_twins() {
        let device = device();
        let mut rng = Rng::seed(32);
        let (rows, cols) = (4 * 1152, 1152);
        let weight = rng.uniform(rows * cols, -1.0, 1.0);
        let keep: Vec<u8> = rng
            .uniform(rows * cols, 0.0, 1.0)
            .iter()
            .map(|&u| u8::from(u >= 0.5))
            .collect();
        let twin = twins::weight_dropout(&weight, &keep, 2.0).unwrap();
        let keep_gpu = Tensor::from_slice(&keep, (rows, cols), &device).unwrap();
        let out =
            gpu::weight_dropout(&on(&device, &weight, &[rows, cols]), &keep_gpu, 2.0).unwrap();
        report("weight_dropout", relative_error(&back(&out), &twin));

        let (vocab, features) = (60_000, 400);
        let table = rng.uniform(vocab * features, -1.0, 1.0);
        let row_scale = rng.dropout_mask(vocab, 0.1);
        let ids: Vec<u32> = (0..64 * 70)
            .map(|_| rng.below(vocab as u64) as u32)
            .collect();
        let twin = twins::embedding_dropout(&table, &ids, &row_scale, features).unwrap();
        let out = gpu::embedding_dropout(
            &on(&device, &table, &[vocab, features]),
            &Tensor::from_slice(&ids, ids.len(), &device).unwrap(),
            &on(&device, &row_scale, &[vocab]),
        )
        .unwrap();
        report("embedding_dropout", relative_error(&back(&out), &twin));
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_concat_pool_matches_twin() {
        let device = device();
        let mut rng = Rng::seed(33);
        let (batch, time, features) = (48, 140, 400);
        let outputs = rng.uniform(batch * time * features, -2.0, 2.0);
        let lengths: Vec<u32> = (0..batch)
            .map(|_| 1 + rng.below(time as u64) as u32)
            .collect();
        let twin = twins::concat_pool(&outputs, &lengths, time, features).unwrap();
        let out = gpu::concat_pool(
            &on(&device, &outputs, &[batch, time, features]),
            &Tensor::from_slice(&lengths, batch, &device).unwrap(),
        )
        .unwrap();
        report("concat_pool", relative_error(&back(&out), &twin));
    }

    /// Largest relative error accepted between the model on the GPU and on the CPU, whose
    /// matrix products sum in different orders.
    const MODEL_TOLERANCE: f32 = 1e-4;

    fn report_model(name: &str, error: f32) {
        println!("model {name}: relative error {error:.3e}");
        assert!(
            error <= MODEL_TOLERANCE,
            "{name}: relative error {error} above {MODEL_TOLERANCE}"
        );
    }

    /// Returns the gradient of `loss` for each variable, as flat vectors.
    fn gradients_of(loss: &Tensor, vars: &[candle_core::Var]) -> Vec<Vec<f32>> {
        let grads = loss.backward().expect("backward pass");
        vars.iter()
            .map(|var| back(grads.get(var.as_tensor()).expect("gradient of a variable")))
            .collect()
    }

    /// Compares a training step of a small language model (dropout, AR and TAR on) on the
    /// GPU with the same step on the CPU: the loss and every parameter's gradient.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_language_model_matches_cpu() {
        use std::collections::HashMap;
        use ulmfit::model::{AwdLstmConfig, LanguageModel};

        let gpu = device();
        let mut config = AwdLstmConfig::language_model(300);
        config.embedding_size = 32;
        config.hidden_size = 48;
        let mut cpu_model =
            LanguageModel::new(config.clone(), &mut Rng::seed(81), &Device::Cpu).unwrap();
        let on_gpu: HashMap<String, Tensor> = cpu_model
            .tensors()
            .into_iter()
            .map(|(name, tensor)| (name, tensor.to_device(&gpu).unwrap()))
            .collect();
        let mut gpu_model = LanguageModel::from_tensors(config, &on_gpu).unwrap();

        let mut rng = Rng::seed(82);
        let ids: Vec<u32> = (0..6 * 13).map(|_| rng.below(300) as u32).collect();
        let all = Tensor::from_vec(ids, (6, 13), &Device::Cpu).unwrap();
        let input = all.narrow(1, 0, 12).unwrap().contiguous().unwrap();
        let targets = all.narrow(1, 1, 12).unwrap().contiguous().unwrap();
        let step = |model: &mut LanguageModel, device: &Device| {
            let loss = model
                .forward_loss(
                    &input.to_device(device).unwrap(),
                    &targets.to_device(device).unwrap(),
                    true,
                    &mut Rng::seed(83),
                    2.0,
                    1.0,
                )
                .unwrap();
            let value = loss.total.to_scalar::<f32>().unwrap();
            (value, gradients_of(&loss.total, &model.vars()))
        };
        let (cpu_loss, cpu_grads) = step(&mut cpu_model, &Device::Cpu);
        let (gpu_loss, gpu_grads) = step(&mut gpu_model, &gpu);
        report_model(
            "language model loss",
            relative_error(&[gpu_loss], &[cpu_loss]),
        );
        let names: Vec<String> = cpu_model
            .tensors()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for ((name, gpu_grad), cpu_grad) in names.iter().zip(&gpu_grads).zip(&cpu_grads) {
            report_model(
                &format!("language model gradient {name}"),
                relative_error(gpu_grad, cpu_grad),
            );
        }
    }

    /// Compares a training pass of a small classifier (dropout on, documents of several
    /// lengths over several chunks) on the GPU with the CPU: the logits and every
    /// parameter's gradient.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gpu_classifier_matches_cpu() {
        use std::collections::HashMap;
        use ulmfit::model::{Classifier, ClassifierConfig};

        let gpu = device();
        let mut config = ClassifierConfig::new(200, 3);
        config.encoder.embedding_size = 16;
        config.encoder.hidden_size = 24;
        config.bptt = 5;
        let mut cpu_model =
            Classifier::new(config.clone(), &mut Rng::seed(91), &Device::Cpu).unwrap();
        let on_gpu: HashMap<String, Tensor> = cpu_model
            .tensors()
            .into_iter()
            .map(|(name, tensor)| (name, tensor.to_device(&gpu).unwrap()))
            .collect();
        let mut gpu_model = Classifier::from_tensors(config, &on_gpu).unwrap();

        let mut rng = Rng::seed(92);
        let documents: Vec<Vec<u32>> = [17usize, 3, 9, 12, 1]
            .iter()
            .map(|&length| (0..length).map(|_| 2 + rng.below(198) as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = documents.iter().map(Vec::as_slice).collect();
        let run = |model: &mut Classifier| {
            let output = model
                .forward_train(&refs, &[false; 5], &mut Rng::seed(93))
                .unwrap();
            let weights = Tensor::from_vec(
                Rng::seed(94).uniform(refs.len() * 3, -1.0, 1.0),
                (refs.len(), 3),
                output.logits.device(),
            )
            .unwrap();
            let loss = output.logits.mul(&weights).unwrap().sum_all().unwrap();
            let vars: Vec<candle_core::Var> = model
                .layer_groups()
                .into_iter()
                .flatten()
                .map(|(_, var)| var)
                .collect();
            (back(&output.logits), gradients_of(&loss, &vars))
        };
        let (cpu_logits, cpu_grads) = run(&mut cpu_model);
        let (gpu_logits, gpu_grads) = run(&mut gpu_model);
        report_model(
            "classifier logits",
            relative_error(&gpu_logits, &cpu_logits),
        );
        let names: Vec<String> = cpu_model
            .layer_groups()
            .into_iter()
            .flatten()
            .map(|(name, _)| name)
            .collect();
        for ((name, gpu_grad), cpu_grad) in names.iter().zip(&gpu_grads).zip(&cpu_grads) {
            report_model(
                &format!("classifier gradient {name}"),
                relative_error(gpu_grad, cpu_grad),
            );
        }
    }

    /// Times a 3-layer LSTM stack of the `wt103` preset's sizes (batch 64, bptt 70,
    /// 400 -> 1152 -> 1152 -> 400) built from cuBLAS products and the cell kernels:
    /// forward alone, then forward plus backward through time. Prints tokens/s.
    #[test]
    #[ignore = "needs a CUDA GPU; a timing, not a check"]
    fn gpu_lstm_stack_tokens_per_second() {
        let device = device();
        let (batch, time) = (64usize, 70usize);
        let sizes = [(400usize, 1152usize), (1152, 1152), (1152, 400)];
        let mut rng = Rng::seed(34);
        let mut weights = Vec::new();
        for &(input, hidden) in &sizes {
            let w_ih = on(
                &device,
                &rng.uniform(4 * hidden * input, -0.05, 0.05),
                &[4 * hidden, input],
            );
            let w_hh = on(
                &device,
                &rng.uniform(4 * hidden * hidden, -0.05, 0.05),
                &[4 * hidden, hidden],
            );
            weights.push((w_ih, w_hh, hidden));
        }
        let x = on(
            &device,
            &rng.uniform(time * batch * 400, -1.0, 1.0),
            &[time * batch, 400],
        );

        let run = |backward: bool| -> f64 {
            let start = std::time::Instant::now();
            let mut input = x.clone();
            let mut saved = Vec::new();
            for (w_ih, w_hh, hidden) in &weights {
                let hidden = *hidden;
                let projected = input.matmul(&w_ih.t().unwrap()).unwrap();
                let w_hh_t = w_hh.t().unwrap();
                let mut h = Tensor::zeros((batch, hidden), DType::F32, &device).unwrap();
                let mut c = h.clone();
                let mut steps = Vec::with_capacity(time);
                for t in 0..time {
                    let recurrent = h.matmul(&w_hh_t).unwrap();
                    let p = projected.narrow(0, t * batch, batch).unwrap();
                    let (gates, c_new, h_new) = gpu::lstm_cell_forward(&p, &recurrent, &c).unwrap();
                    steps.push((gates, c.clone(), c_new.clone(), h.clone()));
                    h = h_new;
                    c = c_new;
                }
                let hs: Vec<Tensor> = steps
                    .iter()
                    .skip(1)
                    .map(|s| s.3.clone())
                    .chain([h.clone()])
                    .collect();
                input = Tensor::cat(&hs, 0).unwrap();
                saved.push((steps, w_hh.clone(), hidden));
            }
            if backward {
                for (steps, w_hh, hidden) in saved.iter().rev() {
                    let mut dh_next = Tensor::zeros((batch, *hidden), DType::F32, &device).unwrap();
                    let mut dc = dh_next.clone();
                    let mut dpres = Vec::with_capacity(time);
                    for (gates, c_prev, c, _) in steps.iter().rev() {
                        let dh = dh_next.affine(1.0, 0.01).unwrap();
                        let (dpre, dc_prev) =
                            gpu::lstm_cell_backward(gates, c_prev, c, &dh, &dc).unwrap();
                        dh_next = dpre.matmul(w_hh).unwrap();
                        dc = dc_prev;
                        dpres.push(dpre);
                    }
                    let dpre_all = Tensor::cat(&dpres, 0).unwrap();
                    let h_prev: Vec<Tensor> = steps.iter().rev().map(|s| s.3.clone()).collect();
                    let _dw_hh = dpre_all
                        .t()
                        .unwrap()
                        .matmul(&Tensor::cat(&h_prev, 0).unwrap())
                        .unwrap();
                }
            }
            device.synchronize().unwrap();
            start.elapsed().as_secs_f64()
        };
        run(true);
        let repeats = 5;
        let forward: f64 = (0..repeats).map(|_| run(false)).sum::<f64>() / repeats as f64;
        let both: f64 = (0..repeats).map(|_| run(true)).sum::<f64>() / repeats as f64;
        let tokens = (batch * time) as f64;
        println!("lstm stack forward: {:.0} tokens/s", tokens / forward);
        println!("lstm stack forward+backward: {:.0} tokens/s", tokens / both);
    }
}
