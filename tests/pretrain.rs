//! `ulmfit pretrain` and `ulmfit lr-find` through the binary: a tiny language model
//! trained on a slice of the pretraining corpus must beat a unigram model on held-out
//! WikiText-2 text.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use candle_core::Device;
use ulmfit::pipeline::model_folder;
use ulmfit::text::batches::{LmBatches, LmOrder};
use ulmfit::text::token_file::TokenFile;

/// Bytes of training text: about 160,000 tokens with fastai's tokenizer.
const TRAIN_BYTES: usize = 700_000;
/// Bytes of validation text: about 18,000 tokens.
const VALID_BYTES: usize = 80_000;
const BATCH_SIZE: usize = 16;
const BPTT: usize = 20;

fn ulmfit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        // Candle's CPU thread pool spins while waiting, which costs more than it gains
        // for a model this small on a shared machine.
        .env("CANDLE_NUM_THREADS", "1")
        // By default glibc returns each large tensor buffer to the kernel when it is
        // freed, so every step page-faults its buffers in again. A high threshold keeps them.
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=536870912",
        )
        .output()
        .expect("the binary starts")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Returns the start of `text` cut at the last blank line before `max_bytes`.
fn leading_documents(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind("\n\n") {
        Some(cut) => &text[..cut + 1],
        None => &text[..end],
    }
}

/// Returns the perplexity of an add-one smoothed unigram model of `train` on the
/// validation targets, the same targets the trained model is scored on.
fn unigram_perplexity(train: &TokenFile, valid: &TokenFile) -> f64 {
    let vocab_size = train.vocab_size() as usize;
    let mut counts = vec![0u64; vocab_size];
    for id in train.tokens().iter() {
        counts[id as usize] += 1;
    }
    let total = train.n_tokens() as f64 + vocab_size as f64;
    let batches = LmBatches::new(valid, BATCH_SIZE, BPTT, LmOrder::Sequential).expect("layout");
    let (mut nll, mut n) = (0.0f64, 0usize);
    for batch in batches.iter() {
        for &id in &batch.y {
            nll -= ((counts[id as usize] + 1) as f64 / total).ln();
            n += 1;
        }
    }
    (nll / n as f64).exp()
}

#[test]
fn pretrain_beats_unigram_and_checks_resume() {
    let Some(shared) = common::shared_dir("pretrain_beats_unigram_and_checks_resume") else {
        return;
    };
    let corpus = std::fs::read_to_string(shared.join("data/pretrain/nlp-corpus.txt"))
        .expect("read the pretraining corpus");
    let wikitext =
        std::fs::read_to_string(shared.join("data/wikitext-2/valid.txt")).expect("read WikiText-2");
    let tmp = tempfile::tempdir().expect("temporary folder");
    let train_path = tmp.path().join("train.txt");
    let valid_path = tmp.path().join("valid.txt");
    std::fs::write(&train_path, leading_documents(&corpus, TRAIN_BYTES)).expect("write train");
    std::fs::write(&valid_path, leading_documents(&wikitext, VALID_BYTES)).expect("write valid");
    let out = tmp.path().join("lm");
    let log = tmp.path().join("log.jsonl");

    let batch_size = BATCH_SIZE.to_string();
    let bptt = BPTT.to_string();
    let args = [
        "-q",
        "pretrain",
        "--corpus",
        path_str(&train_path),
        "--valid",
        path_str(&valid_path),
        "--documents",
        "blank-line",
        "--out",
        path_str(&out),
        "--embedding-size",
        "64",
        "--hidden-size",
        "128",
        "--layers",
        "2",
        "--bptt",
        &bptt,
        "--batch-size",
        &batch_size,
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--save-every",
        "200",
        "--log-json",
        path_str(&log),
    ];
    let start = std::time::Instant::now();
    let output = ulmfit(&args);
    assert!(
        output.status.success(),
        "pretrain failed: {}",
        stderr(&output)
    );
    let seconds = start.elapsed().as_secs_f64();

    // One JSON object per epoch with the trainer's fields and the LM metrics.
    let log_text = std::fs::read_to_string(&log).expect("read the JSON log");
    let records: Vec<serde_json::Value> = log_text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 2);
    for (epoch, record) in records.iter().enumerate() {
        assert_eq!(record["stage"], "pretrain");
        assert_eq!(record["epoch"], epoch);
        for key in [
            "train_loss",
            "valid_loss",
            "seconds",
            "accuracy",
            "perplexity",
        ] {
            assert!(record[key].is_f64(), "{key} missing in {record}");
        }
    }
    let record = &records[1];
    let valid_loss = record["valid_loss"].as_f64().expect("valid_loss");
    let perplexity = record["perplexity"].as_f64().expect("perplexity");
    assert!((perplexity - valid_loss.exp()).abs() < 1e-6 * perplexity);

    // The trained model against an add-one smoothed unigram model of the same tokens.
    let train_tokens = TokenFile::open(out.join("train.tok"), None).expect("train.tok");
    let valid_tokens = TokenFile::open(out.join("valid.tok"), None).expect("valid.tok");
    let unigram = unigram_perplexity(&train_tokens, &valid_tokens);
    eprintln!(
        "{} training tokens, {} validation tokens, {seconds:.1} s, {:.0} tokens/s: \
         LM perplexity {perplexity:.1}, unigram perplexity {unigram:.1}",
        train_tokens.n_tokens(),
        valid_tokens.n_tokens(),
        record["items_per_second"].as_f64().unwrap_or(f64::NAN)
    );
    assert!(
        perplexity <= unigram / 2.0,
        "LM perplexity {perplexity} is not at most half of the unigram's {unigram}"
    );

    // The output folder is a model folder.
    let loaded = model_folder::load(&out, &Device::Cpu).expect("load the model folder");
    assert_eq!(loaded.model.config().embedding_size, 64);
    assert_eq!(loaded.model.config().hidden_size, 128);
    assert_eq!(loaded.model.config().layers, 2);
    assert_eq!(loaded.vocab.len(), train_tokens.vocab_size() as usize);
    assert!(!loaded.config.backwards);

    // Resuming the finished run with another learning rate names the setting.
    let resume_args = ["-q", "pretrain", "--resume", path_str(&out), "--lr", "0.02"];
    let output = ulmfit(&resume_args);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("`lr`"), "{message}");

    // Resuming with another batch size names it too.
    let resume_batch = [
        "-q",
        "pretrain",
        "--resume",
        path_str(&out),
        "--batch-size",
        "8",
    ];
    let output = ulmfit(&resume_batch);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("`batch_size`"), "{message}");

    // The precision is saved with the run, and resuming with another one names it.
    let spec = std::fs::read_to_string(out.join("pretrain.json")).expect("pretrain.json");
    assert!(spec.contains("\"precision\": \"f32\""), "{spec}");
    let resume_precision = [
        "-q",
        "pretrain",
        "--resume",
        path_str(&out),
        "--precision",
        "bf16",
    ];
    let output = ulmfit(&resume_precision);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("`precision`"), "{message}");
    assert!(
        message.contains("f32") && message.contains("bf16"),
        "{message}"
    );
}

#[test]
fn cuda_device_is_rejected() {
    let tmp = tempfile::tempdir().expect("temporary folder");
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "one two three\n").expect("write corpus");
    let out = tmp.path().join("lm");
    let output = ulmfit(&[
        "pretrain",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&out),
        "--device",
        "cuda",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("--device cuda"), "{message}");
    assert!(message.contains("--device cpu"), "{message}");
    assert!(!out.exists(), "nothing is written before the device check");
}

#[test]
fn lr_find_rejects_jpeg_plot() {
    let tmp = tempfile::tempdir().expect("temporary folder");
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "one two three\n").expect("write corpus");
    let output = ulmfit(&[
        "lr-find",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&tmp.path().join("work")),
        "--plot",
        path_str(&tmp.path().join("plot.jpg")),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("plot.jpg"), "{message}");
    assert!(message.contains(".svg or .png"), "{message}");
}

#[test]
fn lr_find_suggests_rate_and_plots() {
    let tmp = tempfile::tempdir().expect("temporary folder");
    let corpus = tmp.path().join("corpus.txt");
    // 40 documents of 50 distinct-enough words, each word repeated past min_freq 3.
    let text: String = (0..40)
        .map(|d| {
            (0..50)
                .map(|w| format!("w{}", (d * 7 + w * 3) % 60))
                .collect::<Vec<_>>()
                .join(" ")
                + "\n"
        })
        .collect();
    std::fs::write(&corpus, text).expect("write corpus");
    let plot = tmp.path().join("plot.svg");
    let output = ulmfit(&[
        "-q",
        "lr-find",
        "--corpus",
        path_str(&corpus),
        "--out",
        path_str(&tmp.path().join("work")),
        "--embedding-size",
        "8",
        "--hidden-size",
        "16",
        "--layers",
        "2",
        "--batch-size",
        "4",
        "--bptt",
        "10",
        "--iterations",
        "20",
        "--plot",
        path_str(&plot),
    ]);
    assert!(
        output.status.success(),
        "lr-find failed: {}",
        stderr(&output)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object on stdout");
    let steps = result["steps"].as_u64().expect("steps");
    assert!(steps <= 20, "{steps} steps");
    assert_eq!(result["lrs"][0].as_f64(), Some(1e-7));
    let svg = std::fs::read_to_string(&plot).expect("read the plot");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
}
