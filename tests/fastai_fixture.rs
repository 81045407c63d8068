//! Every fastai fixture file, imported through the real importer, reproduces fastai's
//! logits and final hidden states. The reference values in `tiny_lm_logits.json` were
//! computed by fastai 2.8.12 on PyTorch 2.15 in eval mode, with the hidden state zeroed
//! before the first chunk and carried into the second.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ulmfit::pipeline::fastai_import::import_fastai_lm;
use ulmfit::pipeline::model_folder::ModelKind;
use ulmfit::rng::Rng;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fastai-weights")
        .join(name)
}

fn flatten(value: &serde_json::Value) -> Vec<f64> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        serde_json::Value::Number(number) => vec![number.as_f64().expect("a float")],
        other => panic!("unexpected JSON value {other}"),
    }
}

fn tensor_values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor values")
}

fn max_abs_diff(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// Imports `weights`, runs both reference chunks and compares, returning the kind of
/// model the file was recognised as.
fn check_file(weights: &str) -> ModelKind {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny_lm_logits.json")).expect("reference file"),
    )
    .expect("reference JSON");
    let imported = import_fastai_lm(&fixture(weights), &fixture("tiny_itos.pkl"))
        .unwrap_or_else(|error| panic!("{weights}: {error}"));
    let kind = imported.kind;
    let check_logits = kind == ModelKind::LanguageModel;
    let mut model = imported.model;
    let mut rng = Rng::seed(0);
    model.reset();

    let chunks = reference["input_ids"].as_array().expect("input chunks");
    for (index, chunk) in chunks.iter().enumerate() {
        let rows: Vec<Vec<u32>> = serde_json::from_value(chunk.clone()).expect("token rows");
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let input = Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu)
            .expect("input tensor");
        let output = model.forward(&input, false, &mut rng).expect("forward");
        if check_logits {
            let diff = max_abs_diff(
                &tensor_values(&output.logits),
                &flatten(&reference["logits"][index]),
            );
            assert!(
                diff < 1e-5,
                "{weights} chunk {index}: logits differ by {diff}"
            );
        }
    }

    let hidden = model.hidden_state().expect("hidden state after two chunks");
    let expected = reference["final_hidden"].as_array().expect("final hidden");
    assert_eq!(hidden.len(), expected.len(), "{weights}: layer count");
    for (layer, ((h, c), expected)) in hidden.iter().zip(expected).enumerate() {
        let h_diff = max_abs_diff(&tensor_values(h), &flatten(&expected["h"]));
        assert!(
            h_diff < 1e-5,
            "{weights} layer {layer}: h differs by {h_diff}"
        );
        let c_diff = max_abs_diff(&tensor_values(c), &flatten(&expected["c"]));
        assert!(
            c_diff < 1e-5,
            "{weights} layer {layer}: c differs by {c_diff}"
        );
    }
    kind
}

#[test]
fn zip_state_dict_matches_fastai() {
    assert_eq!(check_file("tiny_lm.pth"), ModelKind::LanguageModel);
}

#[test]
fn legacy_state_dict_matches_fastai() {
    assert_eq!(check_file("tiny_lm_legacy.pth"), ModelKind::LanguageModel);
}

#[test]
fn fastai1_layout_matches_fastai() {
    assert_eq!(check_file("tiny_lm_v1layout.pth"), ModelKind::LanguageModel);
}

#[test]
fn learner_with_optimizer_matches_fastai() {
    assert_eq!(check_file("tiny_lm_learner.pth"), ModelKind::LanguageModel);
}

#[test]
fn encoder_only_hidden_states_match_fastai() {
    assert_eq!(check_file("tiny_enc.pth"), ModelKind::Encoder);
}
