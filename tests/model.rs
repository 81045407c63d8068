//! Tests of the AWD-LSTM language model: fastai's reference numbers, weight dropout,
//! dropout masks, gradients and memory over many batches.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{Optimizer, SGD};
use ulmfit::model::dropout::{apply_mask, embed, embedding_row_mask, locked_dropout_mask};
use ulmfit::model::{AwdLstmConfig, DropoutConfig, LanguageModel, ModelError};
use ulmfit::rng::Rng;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fastai-weights")
        .join(name)
}

/// A small model: vocabulary 12, embedding 4, hidden 5, three layers.
fn tiny_config() -> AwdLstmConfig {
    AwdLstmConfig {
        embedding_size: 4,
        hidden_size: 5,
        ..AwdLstmConfig::language_model(12)
    }
}

fn no_dropout() -> DropoutConfig {
    DropoutConfig {
        output: 0.0,
        hidden: 0.0,
        input: 0.0,
        embedding: 0.0,
        weight: 0.0,
    }
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

fn token_batch(rows: &[&[u32]]) -> Tensor {
    let width = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|row| row.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu).unwrap()
}

/// Maps fastai 2.x language-model keys to the model's canonical names; `None` for the
/// duplicate views of the embedding that tying and embedding dropout create.
fn canonical_name(fastai_key: &str) -> Option<String> {
    if fastai_key == "0.encoder.weight" {
        return Some("encoder.weight".into());
    }
    if fastai_key == "1.decoder.bias" {
        return Some("decoder.bias".into());
    }
    let rest = fastai_key.strip_prefix("0.rnns.")?;
    let (layer, name) = rest.split_once('.')?;
    let name = match name {
        "weight_hh_l0_raw" => "weight_hh",
        "module.weight_ih_l0" => "weight_ih",
        "module.bias_ih_l0" => "bias_ih",
        "module.bias_hh_l0" => "bias_hh",
        _ => return None,
    };
    Some(format!("rnns.{layer}.{name}"))
}

fn load_fastai_tiny_lm() -> LanguageModel {
    let raw = candle_core::pickle::read_all(fixture("tiny_lm.pth")).unwrap();
    let tensors: Vec<(String, Tensor)> = raw
        .into_iter()
        .filter_map(|(key, tensor)| canonical_name(&key).map(|name| (name, tensor)))
        .collect();
    let config = AwdLstmConfig {
        embedding_size: 8,
        hidden_size: 12,
        ..AwdLstmConfig::language_model(40)
    };
    LanguageModel::from_named_tensors(config, tensors).unwrap()
}

#[test]
fn fastai_tiny_lm_logits_match() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_lm_logits.json")).unwrap())
            .unwrap();
    let mut model = load_fastai_tiny_lm();
    let mut rng = Rng::seed(0);
    model.reset();

    let chunks = reference["input_ids"].as_array().unwrap();
    assert_eq!(chunks.len(), 2);
    for (index, chunk) in chunks.iter().enumerate() {
        let rows: Vec<Vec<u32>> = serde_json::from_value(chunk.clone()).unwrap();
        let row_refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let output = model
            .forward(&token_batch(&row_refs), false, &mut rng)
            .unwrap();
        assert_eq!(output.logits.dims(), &[2, 6, 40]);

        let expected: Vec<Vec<Vec<f64>>> =
            serde_json::from_value(reference["logits"][index].clone()).unwrap();
        let expected: Vec<f64> = expected.into_iter().flatten().flatten().collect();
        let diff = max_abs_diff(&values(&output.logits), &expected);
        assert!(diff < 1e-6, "chunk {index}: logits differ by {diff}");
    }

    let hidden = model.hidden_state().unwrap();
    let expected_hidden = reference["final_hidden"].as_array().unwrap();
    assert_eq!(hidden.len(), expected_hidden.len());
    for (layer, ((h, c), expected)) in hidden.iter().zip(expected_hidden).enumerate() {
        for (name, actual) in [("h", h), ("c", c)] {
            let expected: Vec<Vec<f64>> = serde_json::from_value(expected[name].clone()).unwrap();
            let expected: Vec<f64> = expected.into_iter().flatten().collect();
            let diff = max_abs_diff(&values(actual), &expected);
            assert!(diff < 1e-6, "layer {layer} {name} differs by {diff}");
        }
    }
}

#[test]
fn from_tensors_lists_every_problem() {
    let model = LanguageModel::new(tiny_config(), &mut Rng::seed(1), &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = model.tensors().into_iter().collect();
    tensors.remove("rnns.1.bias_hh");
    tensors.insert(
        "decoder.weight".into(),
        Tensor::zeros((12, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "rnns.2.weight_hh".into(),
        Tensor::zeros((16, 5), DType::F32, &Device::Cpu).unwrap(),
    );

    let error = LanguageModel::from_tensors(tiny_config(), &tensors).unwrap_err();
    let ModelError::ParameterMismatch {
        missing,
        unexpected,
        wrong_shapes,
    } = error
    else {
        panic!("expected a parameter mismatch, got {error}");
    };
    assert_eq!(missing, vec!["rnns.1.bias_hh".to_string()]);
    assert_eq!(unexpected, vec!["decoder.weight".to_string()]);
    assert_eq!(
        wrong_shapes,
        vec!["rnns.2.weight_hh: got [16, 5], expected [16, 4]".to_string()]
    );
}

#[test]
fn safetensors_round_trip_keeps_outputs() {
    let mut model = LanguageModel::new(tiny_config(), &mut Rng::seed(2), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lm.safetensors");
    model.save(&path).unwrap();
    let mut loaded = LanguageModel::load(tiny_config(), &path, &Device::Cpu).unwrap();

    let input = token_batch(&[&[2, 5, 7, 1], &[3, 3, 11, 0]]);
    let mut rng = Rng::seed(0);
    let expected = values(&model.forward(&input, false, &mut rng).unwrap().logits);
    let actual = values(&loaded.forward(&input, false, &mut rng).unwrap().logits);
    assert_eq!(actual, expected);
}

#[test]
fn layer_groups_follow_fastai() {
    let model = LanguageModel::new(tiny_config(), &mut Rng::seed(3), &Device::Cpu).unwrap();
    let groups = model.layer_groups();
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![4, 4, 4, 2]);
    assert_eq!(groups[3][0].dims(), &[12, 4]);
    assert_eq!(groups[3][1].dims(), &[12]);
    assert_eq!(groups[2][1].dims(), &[16, 4]);
}

#[test]
fn weight_drop_gradient_reaches_raw_weight() {
    let mut config = tiny_config();
    config.dropout = DropoutConfig {
        weight: 0.5,
        ..no_dropout()
    };
    let mut model = LanguageModel::new(config, &mut Rng::seed(4), &Device::Cpu).unwrap();
    let raw = model.layers()[1].weight_hh.clone();
    let before = values(raw.as_tensor());

    let mut rng = Rng::seed(5);
    let input = token_batch(&[&[2, 5, 7, 1, 9], &[3, 3, 11, 0, 4]]);
    let targets = token_batch(&[&[5, 7, 1, 9, 2], &[3, 11, 0, 4, 6]]);
    let output = model.forward(&input, true, &mut rng).unwrap();
    let loss = output.loss(&targets, 2.0, 1.0).unwrap().total;
    let grads = loss.backward().unwrap();

    let grad = values(
        grads
            .get(raw.as_tensor())
            .expect("raw weight_hh has no gradient"),
    );
    let nonzero = grad.iter().filter(|g| **g != 0.0).count();
    assert!(nonzero > 0, "gradient of raw weight_hh is all zero");
    // Weight dropout with p = 0.5 zeroes about half of the entries' gradients.
    assert!(nonzero < grad.len(), "no entry of the gradient was dropped");

    let mut sgd = SGD::new(model.vars(), 0.1).unwrap();
    sgd.step(&grads).unwrap();
    let after = values(raw.as_tensor());
    assert_ne!(after, before);
}

#[test]
fn weight_drop_never_changes_raw_weights() {
    let mut config = tiny_config();
    config.dropout = DropoutConfig {
        weight: 0.5,
        ..DropoutConfig::LANGUAGE_MODEL
    };
    let mut model = LanguageModel::new(config, &mut Rng::seed(6), &Device::Cpu).unwrap();
    let before: Vec<Vec<f64>> = model.tensors().iter().map(|(_, t)| values(t)).collect();
    let mut rng = Rng::seed(7);
    let input = token_batch(&[&[2, 5, 7, 1, 9], &[3, 3, 11, 0, 4]]);
    for _ in 0..50 {
        model.forward(&input, true, &mut rng).unwrap();
    }
    let after: Vec<Vec<f64>> = model.tensors().iter().map(|(_, t)| values(t)).collect();
    assert_eq!(after, before);
}

#[test]
fn training_outputs_vary_eval_outputs_repeat() {
    let mut model = LanguageModel::new(tiny_config(), &mut Rng::seed(8), &Device::Cpu).unwrap();
    let mut rng = Rng::seed(9);
    let input = token_batch(&[&[2, 5, 7, 1, 9], &[3, 3, 11, 0, 4]]);
    let mut run = |train: bool, model: &mut LanguageModel| {
        model.reset();
        values(&model.forward(&input, train, &mut rng).unwrap().logits)
    };
    let train_first = run(true, &mut model);
    let train_second = run(true, &mut model);
    assert_ne!(train_first, train_second);
    let eval_first = run(false, &mut model);
    let eval_second = run(false, &mut model);
    assert_eq!(eval_first, eval_second);
}

#[test]
fn hidden_state_carries_and_resets() {
    let mut model = LanguageModel::new(tiny_config(), &mut Rng::seed(10), &Device::Cpu).unwrap();
    let mut rng = Rng::seed(0);
    let input = token_batch(&[&[2, 5, 7], &[3, 3, 11]]);
    let first = values(&model.forward(&input, false, &mut rng).unwrap().logits);
    let carried = values(&model.forward(&input, false, &mut rng).unwrap().logits);
    assert_ne!(first, carried);
    model.reset();
    assert!(model.hidden_state().is_none());
    let after_reset = values(&model.forward(&input, false, &mut rng).unwrap().logits);
    assert_eq!(after_reset, first);

    let smaller = token_batch(&[&[2, 5, 7]]);
    model.forward(&smaller, false, &mut rng).unwrap();
    let (h, _) = &model.hidden_state().unwrap()[2];
    assert_eq!(h.dims(), &[1, 4]);
}

#[test]
fn out_of_vocabulary_id_is_rejected() {
    let mut model = LanguageModel::new(tiny_config(), &mut Rng::seed(11), &Device::Cpu).unwrap();
    let error = model
        .forward(&token_batch(&[&[2, 12]]), false, &mut Rng::seed(0))
        .unwrap_err();
    assert!(error.to_string().contains("token id 12"), "{error}");
}

#[test]
fn embedding_dropout_zeroes_whole_rows() {
    let device = Device::Cpu;
    let weight_values = Rng::seed(12).uniform(20 * 6, -1.0, 1.0);
    let weight = Tensor::from_vec(weight_values.clone(), (20, 6), &device).unwrap();
    let mask = embedding_row_mask(&mut Rng::seed(13), 20, 0.5, DType::F32, &device)
        .unwrap()
        .unwrap();
    let mask_values = values(&mask);
    let ids: Vec<u32> = (0..20).chain(0..20).collect();
    let ids = Tensor::from_vec(ids.clone(), 40, &device).unwrap();
    let rows = embed(&weight, &ids, Some(&mask), None).unwrap();
    let rows = rows.to_vec2::<f32>().unwrap();

    let dropped = mask_values.iter().filter(|m| **m == 0.0).count();
    assert!(dropped > 0 && dropped < 20, "{dropped} of 20 rows dropped");
    for (position, row) in rows.iter().enumerate() {
        let word = position % 20;
        for (feature, value) in row.iter().enumerate() {
            let expected = weight_values[word * 6 + feature] * mask_values[word] as f32;
            assert_eq!(*value, expected, "word {word} feature {feature}");
        }
    }
}

#[test]
fn locked_dropout_mask_shared_over_time() {
    let device = Device::Cpu;
    let mask = locked_dropout_mask(&mut Rng::seed(14), 3, 40, 0.5, DType::F32, &device)
        .unwrap()
        .unwrap();
    let ones = Tensor::ones((7, 3, 40), DType::F32, &device).unwrap();
    let dropped = apply_mask(&ones, Some(&mask)).unwrap();
    let steps = dropped.to_vec3::<f32>().unwrap();
    for step in &steps[1..] {
        assert_eq!(step, &steps[0]);
    }
    // Each sequence in the batch has its own mask.
    assert_ne!(steps[0][0], steps[0][1]);
}

#[test]
fn dropout_masks_reproducible_from_seed() {
    let model_a = LanguageModel::new(tiny_config(), &mut Rng::seed(15), &Device::Cpu);
    let model_b = LanguageModel::new(tiny_config(), &mut Rng::seed(15), &Device::Cpu);
    let (mut model_a, mut model_b) = (model_a.unwrap(), model_b.unwrap());
    let input = token_batch(&[&[2, 5, 7, 1, 9], &[3, 3, 11, 0, 4]]);
    let a = values(
        &model_a
            .forward(&input, true, &mut Rng::seed(16))
            .unwrap()
            .logits,
    );
    let b = values(
        &model_b
            .forward(&input, true, &mut Rng::seed(16))
            .unwrap()
            .logits,
    );
    assert_eq!(a, b);
    model_b.reset();
    let c = values(
        &model_b
            .forward(&input, true, &mut Rng::seed(17))
            .unwrap()
            .logits,
    );
    assert_ne!(a, c);
}

/// Rebuilds `model` in f64 with one entry of one parameter shifted by `delta`.
fn shifted_model(
    tensors: &[(String, Tensor)],
    name: &str,
    index: usize,
    delta: f64,
) -> LanguageModel {
    let mut map = HashMap::new();
    for (key, tensor) in tensors {
        let mut data = values(tensor);
        if key == name {
            data[index] += delta;
        }
        let shifted = Tensor::from_vec(data, tensor.dims(), &Device::Cpu).unwrap();
        map.insert(key.clone(), shifted);
    }
    LanguageModel::from_tensors(tiny_config(), &map).unwrap()
}

#[test]
fn model_loss_gradient_matches_finite_differences() {
    let base = LanguageModel::new(tiny_config(), &mut Rng::seed(18), &Device::Cpu).unwrap();
    let tensors = base.tensors();
    let input = token_batch(&[&[2, 5, 7, 1, 9, 1], &[3, 3, 11, 0, 4, 6]]);
    let targets = token_batch(&[&[5, 7, 1, 9, 2, 8], &[3, 11, 0, 4, 6, 10]]);
    let loss_of = |model: &mut LanguageModel| {
        model.reset();
        let output = model.forward(&input, false, &mut Rng::seed(0)).unwrap();
        output.loss(&targets, 2.0, 1.0).unwrap().total
    };

    let mut model = shifted_model(&tensors, "", 0, 0.0);
    let loss = loss_of(&mut model);
    let grads = loss.backward().unwrap();
    let analytic: HashMap<String, Vec<f64>> = model
        .tensors()
        .into_iter()
        .map(|(name, tensor)| (name, values(grads.get(&tensor).unwrap())))
        .collect();

    let checks = [
        ("encoder.weight", 3 * 4 + 1),
        // Row 1 is the padding row, which takes gradient only through the tied decoder.
        ("encoder.weight", 2 * 4 + 3),
        ("rnns.0.weight_ih", 7),
        ("rnns.0.weight_hh", 2 * 5 + 1),
        ("rnns.1.bias_hh", 7),
        ("rnns.2.weight_hh", 13),
        ("rnns.2.weight_ih", 5 * 5 + 3),
        ("decoder.bias", 4),
    ];
    let epsilon = 1e-6;
    for (name, index) in checks {
        let plus = loss_of(&mut shifted_model(&tensors, name, index, epsilon));
        let minus = loss_of(&mut shifted_model(&tensors, name, index, -epsilon));
        let plus = plus.to_scalar::<f64>().unwrap();
        let minus = minus.to_scalar::<f64>().unwrap();
        let numeric = (plus - minus) / (2.0 * epsilon);
        let exact = analytic[name][index];
        assert!(
            (numeric - exact).abs() < 1e-7 * (1.0 + exact.abs()),
            "{name}[{index}]: finite difference {numeric}, backward {exact}"
        );
    }
}

/// Reads peak resident memory (VmHWM) of this process in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Trains on 100 batches and prints the peak RSS after batches 10 and 100. Run alone in
/// a child process by `training_memory_stays_flat`, so other tests do not move the peak.
#[test]
#[ignore = "run by training_memory_stays_flat in a child process"]
fn training_memory_child() {
    let config = AwdLstmConfig {
        embedding_size: 8,
        hidden_size: 16,
        ..AwdLstmConfig::language_model(200)
    };
    let mut rng = Rng::seed(19);
    let mut model = LanguageModel::new(config, &mut rng, &Device::Cpu).unwrap();
    let mut sgd = SGD::new(model.vars(), 0.01).unwrap();
    let (batch, bptt) = (8, 70);
    let stream: Vec<u32> = (0..10_000).map(|_| rng.below(200) as u32).collect();
    let row_length = stream.len() / batch;
    let chunks = (row_length - 1) / bptt;
    let slice = |start: usize| -> Tensor {
        let mut flat = Vec::with_capacity(batch * bptt);
        for row in 0..batch {
            let offset = row * row_length + start;
            flat.extend_from_slice(&stream[offset..offset + bptt]);
        }
        Tensor::from_vec(flat, (batch, bptt), &Device::Cpu).unwrap()
    };

    let mut peak_after_10 = 0;
    for step in 1..=100 {
        let start = ((step - 1) % chunks) * bptt;
        let output = model.forward(&slice(start), true, &mut rng).unwrap();
        let loss = output.loss(&slice(start + 1), 2.0, 1.0).unwrap().total;
        sgd.backward_step(&loss).unwrap();
        if step == 10 {
            peak_after_10 = peak_rss_kib();
        }
    }
    println!("PEAK_RSS {peak_after_10} {}", peak_rss_kib());
}

#[test]
fn training_memory_stays_flat() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "training_memory_child",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("PEAK_RSS ").map(|(_, peaks)| peaks))
        .unwrap_or_else(|| panic!("child printed no PEAK_RSS line: {stdout}"));
    let peaks: Vec<f64> = line.split(' ').map(|v| v.parse().unwrap()).collect();
    let (after_10, after_100) = (peaks[0], peaks[1]);
    assert!(
        after_100 <= after_10 * 1.05,
        "peak RSS grew from {after_10} KiB after batch 10 to {after_100} KiB after batch 100"
    );
}

#[test]
fn vars_share_storage_with_tensors() {
    let model = LanguageModel::new(tiny_config(), &mut Rng::seed(20), &Device::Cpu).unwrap();
    let encoder: &Var = model.encoder();
    encoder
        .set(&Tensor::zeros((12, 4), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let (_, tensor) = &model.tensors()[0];
    assert!(values(tensor).iter().all(|v| *v == 0.0));
}

/// Prints training and inference tokens per second of the small preset (vocabulary
/// 16,000, embedding 200, hidden 600, three layers, batch 32, bptt 70). Run with
/// `cargo test --release --test model -- --ignored --nocapture small_preset_throughput`.
#[test]
#[ignore = "timing run; start it by hand in release mode"]
fn small_preset_throughput() {
    let config = AwdLstmConfig {
        embedding_size: 200,
        hidden_size: 600,
        ..AwdLstmConfig::language_model(16_000)
    };
    let mut rng = Rng::seed(23);
    let mut model = LanguageModel::new(config, &mut rng, &Device::Cpu).unwrap();
    let mut sgd = SGD::new(model.vars(), 0.001).unwrap();
    let (batch, bptt, batches) = (32, 70, 4);
    let tokens: Vec<u32> = (0..batch * (bptt + 1))
        .map(|_| rng.below(16_000) as u32)
        .collect();
    let all = Tensor::from_vec(tokens, (batch, bptt + 1), &Device::Cpu).unwrap();
    let input = all.narrow(1, 0, bptt).unwrap().contiguous().unwrap();
    let targets = all.narrow(1, 1, bptt).unwrap().contiguous().unwrap();

    let start = std::time::Instant::now();
    for _ in 0..batches {
        let output = model.forward(&input, true, &mut rng).unwrap();
        let loss = output.loss(&targets, 2.0, 1.0).unwrap().total;
        sgd.backward_step(&loss).unwrap();
    }
    let train_rate = (batches * batch * bptt) as f64 / start.elapsed().as_secs_f64();

    model.set_track_gradients(false);
    let start = std::time::Instant::now();
    for _ in 0..batches {
        model.forward(&input, false, &mut rng).unwrap();
    }
    let eval_rate = (batches * batch * bptt) as f64 / start.elapsed().as_secs_f64();
    println!("small preset: training {train_rate:.0} tokens/s, inference {eval_rate:.0} tokens/s");
}
