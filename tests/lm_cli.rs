//! `ulmfit import-fastai`, `perplexity` and `generate` on the tiny fastai fixture model,
//! checked against numbers and text that fastai 2.8.12 with PyTorch 2.15 produced.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ulmfit::pipeline::generate::{generate_tokens, SamplingOptions};
use ulmfit::pipeline::model_folder::{self, ModelKind};
use ulmfit::rng::Rng;

/// fastai's loss on `tests/data/perplexity-text.txt` (79 tokens in one row, so 78
/// predictions) with `tiny_lm.pth`, in eval mode, for bptt 5 and 72 alike.
const REFERENCE_LOSS: f64 = 3.775444825490316;
/// fastai's next-token accuracy on the same text: 3 of 78.
const REFERENCE_ACCURACY: f64 = 0.038461538461538464;
const REFERENCE_TOKENS: u64 = 78;

fn ulmfit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        .output()
        .expect("the binary starts")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fastai-weights")
        .join(name)
}

fn text_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/perplexity-text.txt")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `import-fastai` on `weights` with `itos` into `dir/name` and returns the folder.
fn import(dir: &Path, weights: &Path, itos: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let output = ulmfit(&[
        "import-fastai",
        "--weights",
        path_str(weights),
        "--itos",
        path_str(itos),
        "--out",
        path_str(&out),
        "--rules",
        "fastai2",
    ]);
    stdout(&output);
    out
}

fn perplexity_json(model: &Path, bptt: usize) -> serde_json::Value {
    let bptt = bptt.to_string();
    let output = ulmfit(&[
        "-q",
        "perplexity",
        "--model",
        path_str(model),
        path_str(&text_file()),
        "--batch-size",
        "1",
        "--bptt",
        &bptt,
        "--json",
    ]);
    serde_json::from_str(stdout(&output).trim()).expect("one JSON object")
}

/// Writes a protocol 2 pickle of a list of strings, as fastai's `itos.pkl` holds.
fn itos_pickle(tokens: &[&str]) -> Vec<u8> {
    let mut bytes = b"\x80\x02](".to_vec();
    for token in tokens {
        bytes.push(b'X');
        bytes.extend_from_slice(&(token.len() as u32).to_le_bytes());
        bytes.extend_from_slice(token.as_bytes());
    }
    bytes.extend_from_slice(b"e.");
    bytes
}

fn fixture_tokens() -> Vec<String> {
    ulmfit::import::read_itos(&fixture("tiny_itos.pkl")).expect("fixture vocabulary")
}

#[test]
fn perplexity_matches_fastai_for_every_format() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let itos = fixture("tiny_itos.pkl");
    for weights in [
        "tiny_lm.pth",
        "tiny_lm_legacy.pth",
        "tiny_lm_v1layout.pth",
        "tiny_lm_learner.pth",
    ] {
        let model = import(dir.path(), &fixture(weights), &itos, weights);
        for bptt in [5, 72] {
            let result = perplexity_json(&model, bptt);
            let loss = result["loss"].as_f64().expect("loss");
            assert!(
                (loss - REFERENCE_LOSS).abs() < 1e-4,
                "{weights}, bptt {bptt}: loss {loss}"
            );
            assert_eq!(
                result["accuracy"].as_f64(),
                Some(REFERENCE_ACCURACY),
                "{weights}, bptt {bptt}"
            );
            assert_eq!(
                result["tokens"].as_u64(),
                Some(REFERENCE_TOKENS),
                "{weights}, bptt {bptt}"
            );
            let perplexity = result["perplexity"].as_f64().expect("perplexity");
            assert!(
                (perplexity - loss.exp()).abs() < 1e-9,
                "{weights}, bptt {bptt}: perplexity {perplexity}"
            );
        }
    }
}

#[test]
fn perplexity_rows_drop_uneven_tail() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = import(
        dir.path(),
        &fixture("tiny_lm.pth"),
        &fixture("tiny_itos.pkl"),
        "lm",
    );
    // 79 tokens in 4 rows: (79 - 1) / 4 = 19 tokens per row, so 76 predictions.
    let output = ulmfit(&[
        "-q",
        "perplexity",
        "--model",
        path_str(&model),
        path_str(&text_file()),
        "--batch-size",
        "4",
        "--json",
    ]);
    let result: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(result["tokens"].as_u64(), Some(76));
}

#[test]
fn import_writes_language_model_config() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let output = ulmfit(&[
        "import-fastai",
        "--weights",
        path_str(&fixture("tiny_lm.pth")),
        "--itos",
        path_str(&fixture("tiny_itos.pkl")),
        "--out",
        path_str(&dir.path().join("lm")),
    ]);
    let summary = stdout(&output);
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert!(summary.contains("40 tokens"), "{summary}");
    let config = model_folder::read_config(&dir.path().join("lm")).unwrap();
    assert_eq!(config.kind, ModelKind::LanguageModel);
    assert_eq!(config.model.embedding_size, 8);
    assert_eq!(config.model.hidden_size, 12);
    assert_eq!(config.model.layers, 3);
    assert!(config.model.tie_weights);
    assert!(config.model.output_bias);
    assert_eq!(config.model.dropout.weight, 0.2);
}

#[test]
fn import_rules_follow_layout() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let itos = path_str(&fixture("tiny_itos.pkl")).to_owned();
    for (weights, expected) in [
        ("tiny_lm.pth", "fastai"),
        ("tiny_lm_v1layout.pth", "fastai1"),
    ] {
        let out = dir.path().join(weights);
        let output = ulmfit(&[
            "import-fastai",
            "--weights",
            path_str(&fixture(weights)),
            "--itos",
            &itos,
            "--out",
            path_str(&out),
        ]);
        stdout(&output);
        let (_, header) = ulmfit::text::vocab::Vocab::load_with_header(&out).unwrap();
        assert_eq!(header.rules, expected, "{weights}");
    }
}

#[test]
fn encoder_imports_without_decoder() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = import(
        dir.path(),
        &fixture("tiny_enc.pth"),
        &fixture("tiny_itos.pkl"),
        "enc",
    );
    let loaded = model_folder::load(&model, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.config.kind, ModelKind::Encoder);
    assert!(!loaded.config.model.output_bias);
    let names: Vec<String> = loaded.model.tensors().into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|name| name.starts_with("decoder")));

    let output = ulmfit(&[
        "perplexity",
        "--model",
        path_str(&model),
        path_str(&text_file()),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("encoder without decoder"), "{message}");
}

#[test]
fn import_drops_filler_tokens_and_rows() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut tokens = fixture_tokens();
    tokens[38] = "xxfake".into();
    tokens[39] = "xxfake".into();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let itos = dir.path().join("itos.pkl");
    std::fs::write(&itos, itos_pickle(&refs)).unwrap();
    let model = import(dir.path(), &fixture("tiny_lm.pth"), &itos, "lm");

    let loaded = model_folder::load(&model, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.vocab.len(), 38);
    assert_eq!(loaded.config.model.vocab_size, 38);
    assert_eq!(loaded.model.encoder().dims(), &[38, 8]);
}

/// Loads `tiny_lm.pth` into a folder and generates greedily from `prompt`.
fn greedy_tokens(prompt: &str, count: usize) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temporary folder");
    let folder = import(
        dir.path(),
        &fixture("tiny_lm.pth"),
        &fixture("tiny_itos.pkl"),
        "lm",
    );
    let mut loaded = model_folder::load(&folder, &candle_core::Device::Cpu).unwrap();
    let tokens = loaded.tokenizer.tokenize(prompt).unwrap();
    let ids = loaded.vocab.encode(&tokens);
    let options = SamplingOptions {
        tokens: count,
        temperature: 0.0,
        banned: Some(0),
    };
    let generated = generate_tokens(&mut loaded.model, &ids, &options, &mut Rng::seed(0)).unwrap();
    generated
        .iter()
        .map(|&id| loaded.vocab.token(id).unwrap().to_owned())
        .collect()
}

// The expected tokens and texts below come from fastai 2.8.12 and PyTorch 2.15. The
// fixture was loaded into `get_language_model(AWD_LSTM, 40, config=awd_lstm_lm_config
// with emb_sz=8, n_hid=12)` in eval mode and the prompt tokenized with fastai's default
// rules. Then 12 steps took the argmax of the softmax with `xxunk` zeroed, and
// `decode_spec_tokens` made the text. The random fixture weights strongly favour "and".

#[test]
fn greedy_tokens_match_fastai() {
    let mut after_and = vec!["xxup".to_owned()];
    after_and.extend(std::iter::repeat_n("and".to_owned(), 11));
    assert_eq!(greedy_tokens("and", 12), after_and);
    assert_eq!(greedy_tokens("The movie was", 12), vec!["and"; 12]);
}

#[test]
fn greedy_text_matches_fastai() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = import(
        dir.path(),
        &fixture("tiny_lm.pth"),
        &fixture("tiny_itos.pkl"),
        "lm",
    );
    for (prompt, expected) in [
        ("and", "and AND and and and and and and and and and and"),
        (
            "The movie was",
            "The movie was and and and and and and and and and and and and",
        ),
        (
            "I love this film",
            "xxunk love this film and and and and and and and and and and and and",
        ),
    ] {
        let output = ulmfit(&[
            "generate",
            "--model",
            path_str(&model),
            "--prompt",
            prompt,
            "--words",
            "12",
            "--temperature",
            "0",
        ]);
        assert_eq!(stdout(&output).trim_end(), expected, "prompt {prompt:?}");
    }
}

#[test]
fn sampling_repeats_with_seed() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = import(
        dir.path(),
        &fixture("tiny_lm.pth"),
        &fixture("tiny_itos.pkl"),
        "lm",
    );
    let sample = |seed: &str| {
        stdout(&ulmfit(&[
            "generate",
            "--model",
            path_str(&model),
            "--prompt",
            "The movie was",
            "--seed",
            seed,
        ]))
    };
    let first = sample("11");
    assert_eq!(sample("11"), first);
    assert_ne!(sample("12"), first);
    // 3 prompt words plus 40 generated tokens, some of them markers folded into words.
    let words = first.split_whitespace().count();
    assert!((3..=43).contains(&words), "{first}");
    assert!(!first.contains("xxunk"), "{first}");
}

#[test]
fn negative_temperature_is_rejected() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = import(
        dir.path(),
        &fixture("tiny_lm.pth"),
        &fixture("tiny_itos.pkl"),
        "lm",
    );
    let output = ulmfit(&[
        "generate",
        "--model",
        path_str(&model),
        "--prompt",
        "a",
        "--temperature=-1",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("invalid --temperature -1"));
}

/// Runs `import-fastai` and checks that it fails cleanly with a message containing each
/// of `expected`.
fn assert_import_fails(weights: &Path, itos: &Path, expected: &[&str]) {
    let out = weights.with_extension("out");
    let output = ulmfit(&[
        "import-fastai",
        "--weights",
        path_str(weights),
        "--itos",
        path_str(itos),
        "--out",
        path_str(&out),
    ]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    for part in expected {
        assert!(message.contains(part), "expected {part:?} in: {message}");
    }
    assert!(!out.exists(), "no folder is written on failure");
}

#[test]
fn import_failures_name_the_file() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let itos = fixture("tiny_itos.pkl");
    let weights = std::fs::read(fixture("tiny_lm.pth")).unwrap();
    let legacy = std::fs::read(fixture("tiny_lm_legacy.pth")).unwrap();

    let pointer = write(
        "pointer.pth",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 18681\n",
    );
    assert_import_fails(&pointer, &itos, &["pointer.pth", "git lfs pull"]);

    let page = write(
        "page.pth",
        b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n",
    );
    assert_import_fails(&page, &itos, &["page.pth", "HTML page"]);

    let cut = write("cut.pth", &weights[..weights.len() / 2]);
    assert_import_fails(&cut, &itos, &["cut.pth", "cut off"]);

    let evil = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
    let evil_weights = write("evil.pth", evil);
    assert_import_fails(&evil_weights, &itos, &["evil.pth", "os.system"]);
    let evil_itos = write("evil.pkl", evil);
    assert_import_fails(
        &fixture("tiny_lm.pth"),
        &evil_itos,
        &["evil.pkl", "os.system"],
    );

    let mut renamed = legacy.clone();
    let old = b"1.decoder.bias";
    let at = renamed.windows(old.len()).position(|w| w == old).unwrap();
    renamed[at..at + old.len()].copy_from_slice(b"1.decoder.bia_");
    let renamed = write("renamed.pth", &renamed);
    assert_import_fails(
        &renamed,
        &itos,
        &[
            "renamed.pth",
            "missing keys: [1.decoder.bias]",
            "unexpected keys: [1.decoder.bia_]",
        ],
    );
}

#[test]
fn itos_length_mismatch_names_both_files() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let tokens = fixture_tokens();
    let refs: Vec<&str> = tokens[..39].iter().map(String::as_str).collect();
    let itos = dir.path().join("short_itos.pkl");
    std::fs::write(&itos, itos_pickle(&refs)).unwrap();
    let weights = dir.path().join("lm.pth");
    std::fs::copy(fixture("tiny_lm.pth"), &weights).unwrap();
    assert_import_fails(
        &weights,
        &itos,
        &["short_itos.pkl has 39 tokens", "lm.pth has 40 rows"],
    );
}

#[test]
fn perplexity_missing_folder_is_named() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let missing = dir.path().join("no-such-model");
    let output = ulmfit(&[
        "perplexity",
        "--model",
        path_str(&missing),
        path_str(&text_file()),
    ]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("no-such-model"), "{message}");
    assert!(message.contains("not found"), "{message}");
}
