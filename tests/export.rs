//! Tests of `ulmfit export`: model folders stored at half precision load as f32 and
//! score as the original folders do.

use std::path::Path;

use candle_core::Device;
use ulmfit::model::{AwdLstmConfig, LanguageModel};
use ulmfit::pipeline::evaluate::evaluate_language_model;
use ulmfit::pipeline::export::{export_model_folder, WeightDtype};
use ulmfit::pipeline::model_folder::{self, ModelFolderConfig, ModelKind};
use ulmfit::pipeline::predict::{write_random_classifier, LoadedClassifier};
use ulmfit::rng::Rng;
use ulmfit::text::vocab::Vocab;

const WORDS: &[&str] = &[
    "the", "movie", "was", "great", "awful", "plot", "and", "actors", "film", "boring",
];

fn ulmfit(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(["--quiet", "--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn texts() -> Vec<&'static str> {
    vec![
        "The movie was great.",
        "Awful plot and boring actors, the film was awful awful awful.",
        "film",
        "",
        "The actors were great and the plot was great, a great great movie and film.",
    ]
}

#[test]
fn exported_classifier_matches_f32_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("f32");
    let half = dir.path().join("f16");
    write_random_classifier(&original, WORDS, &["neg", "pos", "mixed"], 5).unwrap();
    let output = ulmfit(&[
        "export",
        "--model",
        original.to_str().unwrap(),
        "--out",
        half.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let full = LoadedClassifier::load(&original).unwrap();
    let exported = LoadedClassifier::load(&half).unwrap();
    let expected = full.probabilities(&texts(), 4).unwrap();
    let got = exported.probabilities(&texts(), 4).unwrap();
    for (row, (a, b)) in expected.iter().zip(&got).enumerate() {
        for (class, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() < 1e-3,
                "text {row}, class {class}: f32 {p} vs f16 {q}"
            );
        }
    }
    assert_eq!(exported.config, full.config);
}

#[test]
fn exported_weight_file_is_half_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("f32");
    let half = dir.path().join("bf16");
    write_random_classifier(&original, WORDS, &["neg", "pos"], 6).unwrap();
    let summary = export_model_folder(&original, &half, WeightDtype::Bf16).unwrap();
    let before = size(&original.join("model.safetensors"));
    let after = size(&half.join("model.safetensors"));
    let ratio = after as f64 / before as f64;
    assert!(
        (0.45..0.6).contains(&ratio),
        "{after} / {before} bytes = {ratio}"
    );
    assert_eq!(summary.cast, summary.tensors);
    assert_eq!(summary.copied, ["config.json", "vocab.json", "vocab.txt"]);
}

#[test]
fn export_back_to_f32_restores_f32_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("f32");
    write_random_classifier(&original, WORDS, &["neg", "pos"], 7).unwrap();
    let half = dir.path().join("f16");
    let wide = dir.path().join("wide");
    export_model_folder(&original, &half, WeightDtype::F16).unwrap();
    export_model_folder(&half, &wide, WeightDtype::F32).unwrap();
    let tensors =
        candle_core::safetensors::load(wide.join("model.safetensors"), &Device::Cpu).unwrap();
    let dtypes: Vec<_> = tensors.values().map(|t| t.dtype()).collect();
    assert!(
        dtypes.iter().all(|&d| d == candle_core::DType::F32),
        "{dtypes:?}"
    );
    assert_eq!(
        size(&wide.join("model.safetensors")),
        size(&original.join("model.safetensors"))
    );
}

/// Writes a language-model folder with random weights and returns a few documents.
fn random_language_model(dir: &Path) -> Vec<Vec<u32>> {
    let mut tokens: Vec<String> = ulmfit::text::SPECIAL_TOKENS
        .iter()
        .map(|t| t.to_string())
        .collect();
    tokens.extend(WORDS.iter().map(|w| w.to_string()));
    let vocab = Vocab::from_tokens(tokens).unwrap();
    let mut config = AwdLstmConfig::language_model(vocab.len());
    config.embedding_size = 16;
    config.hidden_size = 24;
    let model = LanguageModel::new(config.clone(), &mut Rng::seed(3), &Device::Cpu).unwrap();
    let folder = ModelFolderConfig {
        kind: ModelKind::LanguageModel,
        model: config,
        backwards: false,
    };
    model_folder::save(dir, &folder, &model, &vocab, "fastai", None).unwrap();
    let mut rng = Rng::seed(4);
    (0..6)
        .map(|_| {
            (0..30)
                .map(|_| 2 + rng.below(vocab.len() as u64 - 2) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn exported_language_model_matches_f32_loss() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("lm");
    let half = dir.path().join("lm-f16");
    let documents = random_language_model(&original);
    export_model_folder(&original, &half, WeightDtype::F16).unwrap();
    let mut full = model_folder::load(&original, &Device::Cpu).unwrap();
    let mut exported = model_folder::load(&half, &Device::Cpu).unwrap();
    assert_eq!(exported.model.encoder().dtype(), candle_core::DType::F32);
    let expected = evaluate_language_model(&mut full.model, &documents, 3, 8, |_, _| {}).unwrap();
    let got = evaluate_language_model(&mut exported.model, &documents, 3, 8, |_, _| {}).unwrap();
    assert!(
        (expected.loss - got.loss).abs() < 1e-3,
        "f32 loss {} vs f16 loss {}",
        expected.loss,
        got.loss
    );
    assert_eq!(expected.tokens, got.tokens);
}

#[test]
fn export_rejects_folder_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let output = ulmfit(&[
        "export",
        "--model",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a model folder"), "{stderr}");
    assert!(stderr.contains("config.json"), "{stderr}");
}

#[test]
fn export_into_its_own_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_random_classifier(dir.path(), WORDS, &["neg", "pos"], 8).unwrap();
    let result = export_model_folder(dir.path(), dir.path(), WeightDtype::F16);
    assert!(matches!(
        result,
        Err(ulmfit::pipeline::export::ExportError::SameFolder { .. })
    ));
}
