//! Tests of the ULMFiT classifier: batch independence, labels, scoring and the CLI chain.

use candle_core::Device;
use ulmfit::model::{Classifier, ClassifierConfig};
use ulmfit::pipeline::classify::check_classes;
use ulmfit::rng::Rng;

const VOCAB: usize = 40;

/// A tiny classifier: 3 LSTM layers, chunks of 8 tokens, the last 24 tokens pooled.
fn tiny_classifier(seed: u64) -> Classifier {
    let mut config = ClassifierConfig::new(VOCAB, 3);
    config.encoder.embedding_size = 6;
    config.encoder.hidden_size = 10;
    config.bptt = 8;
    config.max_len = 24;
    Classifier::new(config, &mut Rng::seed(seed), &Device::Cpu).unwrap()
}

/// A document of `len` token ids in 2..VOCAB (never the pad id 1).
fn document(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::seed(seed);
    (0..len)
        .map(|_| 2 + rng.below(VOCAB as u64 - 2) as u32)
        .collect()
}

fn rows(tensor: &candle_core::Tensor) -> Vec<Vec<f32>> {
    tensor.to_vec2::<f32>().unwrap()
}

fn assert_rows_close(batch: &[f32], single: &[f32], what: &str) {
    assert_eq!(batch.len(), single.len(), "{what}: widths differ");
    for (index, (a, b)) in batch.iter().zip(single).enumerate() {
        assert!(
            (a - b).abs() < 1e-5,
            "{what}: column {index}: batch {a} vs single {b}"
        );
    }
}

fn check_batch_equals_single(model: &Classifier, documents: &[Vec<u32>]) {
    let refs: Vec<&[u32]> = documents.iter().map(Vec::as_slice).collect();
    let batch = model.predict(&refs).unwrap();
    let batch_logits = rows(&batch.logits);
    let batch_pooled = rows(&batch.pooled);
    for (index, doc) in documents.iter().enumerate() {
        let single = model.predict(&[doc.as_slice()]).unwrap();
        let what = format!("document {index} ({} tokens)", doc.len());
        assert_rows_close(&batch_logits[index], &rows(&single.logits)[0], &what);
        assert_rows_close(&batch_pooled[index], &rows(&single.pooled)[0], &what);
    }
}

#[test]
fn batch_equals_single_mixed_lengths() {
    let model = tiny_classifier(1);
    let documents: Vec<Vec<u32>> = [50, 3, 20, 3, 1]
        .iter()
        .enumerate()
        .map(|(i, &len)| document(len, 10 + i as u64))
        .collect();
    check_batch_equals_single(&model, &documents);
}

#[test]
fn batch_equals_single_copies_beside_long() {
    let model = tiny_classifier(2);
    let short = document(4, 7);
    let mut documents = vec![short; 6];
    documents.insert(3, document(200, 8));
    check_batch_equals_single(&model, &documents);
}

#[test]
fn ragged_document_pools_same_when_padded() {
    // 13 tokens: one full chunk of 8 and a ragged one of 5, batched beside 40 tokens.
    let model = tiny_classifier(3);
    let ragged = document(13, 21);
    let alone = model.predict(&[ragged.as_slice()]).unwrap();
    let long = document(40, 22);
    let batch = model
        .predict(&[long.as_slice(), ragged.as_slice()])
        .unwrap();
    assert_rows_close(&rows(&batch.pooled)[1], &rows(&alone.pooled)[0], "pooled");
}

#[test]
fn predictions_keep_input_order() {
    let model = tiny_classifier(4);
    let a = document(30, 1);
    let b = document(5, 2);
    let forward = rows(&model.predict(&[a.as_slice(), b.as_slice()]).unwrap().logits);
    let reversed = rows(&model.predict(&[b.as_slice(), a.as_slice()]).unwrap().logits);
    assert_rows_close(&forward[0], &reversed[1], "first document");
    assert_rows_close(&forward[1], &reversed[0], "second document");
}

#[test]
fn max_len_limits_pooled_positions() {
    // With max_len 24 and bptt 8, a 40-token document pools the chunks that start at
    // 16, 24 and 32. Pooling all 40 positions keeps the same last output but changes
    // the mean.
    let model = tiny_classifier(5);
    let doc = document(40, 3);
    let pooled = rows(&model.predict(&[doc.as_slice()]).unwrap().pooled)[0].clone();
    let mut config = model.config().clone();
    config.max_len = 1000;
    let tensors: std::collections::HashMap<_, _> = model.tensors().into_iter().collect();
    let wide = Classifier::from_tensors(config, &tensors).unwrap();
    let all = rows(&wide.predict(&[doc.as_slice()]).unwrap().pooled)[0].clone();
    let width = pooled.len() / 3;
    assert_rows_close(&pooled[..width], &all[..width], "last output");
    let mean_gap: f32 = pooled[2 * width..]
        .iter()
        .zip(&all[2 * width..])
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(mean_gap > 1e-4, "means over 24 and 40 positions are equal");
}

fn strings(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| l.to_string()).collect()
}

#[test]
fn string_labels_become_classes() {
    let classes = check_classes(&strings(&["pos", "neg", "pos", "neg"]), &strings(&["pos"]));
    assert_eq!(classes.unwrap(), ["neg", "pos"]);
}

#[test]
fn integer_labels_stay_classes() {
    let train = strings(&["3", "1", "2", "1", "2", "3", "10", "10"]);
    assert_eq!(check_classes(&train, &[]).unwrap(), ["1", "2", "3", "10"]);
}

#[test]
fn class_only_in_validation_errors() {
    let error = check_classes(&strings(&["a", "a", "b", "b"]), &strings(&["c"])).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("`c`"), "{message}");
    assert!(message.contains("validation"), "{message}");
}

#[test]
fn class_with_one_example_errors() {
    let error = check_classes(&strings(&["a", "a", "b"]), &[]).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("`b`"), "{message}");
}

#[test]
fn api_scores_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let words = ["good", "bad", "movie", "great", "awful"];
    ulmfit::pipeline::predict::write_random_classifier(dir.path(), &words, &["neg", "pos"], 9)
        .unwrap();
    let model = ulmfit::api::SentimentModel::load(dir.path()).unwrap();
    let texts = [
        "a good movie",
        "",
        "awful awful bad movie that was bad",
        "great",
    ];
    let all = model.score(&texts).unwrap();
    assert_eq!(all.len(), 4);
    for (index, text) in texts.iter().enumerate() {
        let single = model.score(&[text]).unwrap();
        for class in ["neg", "pos"] {
            let (a, b) = (
                all[index].probabilities[class],
                single[0].probabilities[class],
            );
            assert!(
                (a - b).abs() < 1e-5,
                "text {index} class {class}: {a} vs {b}"
            );
        }
        let sum: f32 = all[index].probabilities.values().sum();
        assert!((sum - 1.0).abs() < 1e-5, "text {index} sums to {sum}");
    }
}

#[test]
fn api_model_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ulmfit::api::SentimentModel>();
}

fn ulmfit(args: &[&str]) -> std::process::Output {
    ulmfit_in(std::path::Path::new("."), args)
}

/// Runs the binary with `folder` as its working folder and checks that it succeeds.
fn ulmfit_in(folder: &std::path::Path, args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .current_dir(folder)
        .args(["--quiet", "--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ulmfit {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Writes `count` synthetic reviews as JSONL: positive ones use positive words, negative
/// ones negative words, both with shared filler.
fn write_reviews(path: &std::path::Path, count: usize, seed: u64) {
    let positive = ["great", "wonderful", "excellent", "loved", "superb"];
    let negative = ["awful", "terrible", "boring", "hated", "dreadful"];
    let filler = ["the", "movie", "was", "plot", "and", "actors", "film", "it"];
    let mut rng = Rng::seed(seed);
    let mut lines = String::new();
    for index in 0..count {
        let label = if index % 2 == 0 { "pos" } else { "neg" };
        let words = if label == "pos" { &positive } else { &negative };
        let mut text = Vec::new();
        for _ in 0..(6 + rng.below(10)) {
            if rng.below(3) == 0 {
                text.push(words[rng.below(5) as usize]);
            } else {
                text.push(filler[rng.below(8) as usize]);
            }
        }
        text.push(words[rng.below(5) as usize]);
        let record = serde_json::json!({ "text": text.join(" "), "label": label });
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

/// The tiny language model barely depends on its input, so the pooled features mostly
/// track document length. Shuffled batches keep BatchNorm's batch statistics
/// representative of the whole set, as eval mode assumes.
#[test]
fn pretrain_finetune_classify_predict() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let train = dir.path().join("train.jsonl");
    let valid = dir.path().join("valid.jsonl");
    write_reviews(&corpus, 300, 1);
    write_reviews(&train, 200, 2);
    write_reviews(&valid, 60, 3);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (lm, tuned, clas) = (path("lm"), path("tuned"), path("clas"));
    let corpus_arg = corpus.to_str().unwrap();
    let (train_arg, valid_arg) = (train.to_str().unwrap(), valid.to_str().unwrap());
    ulmfit(&[
        "pretrain",
        "--out",
        &lm,
        "--corpus",
        corpus_arg,
        "--embedding-size",
        "16",
        "--hidden-size",
        "24",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--epochs",
        "1",
    ]);
    ulmfit(&[
        "lm-finetune",
        "--model",
        &lm,
        "--data",
        train_arg,
        "--out",
        &tuned,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--bptt",
        "16",
    ]);
    ulmfit(&[
        "classify",
        "--encoder",
        &tuned,
        "--data",
        train_arg,
        "--valid",
        valid_arg,
        "--out",
        &clas,
        "--batch-size",
        "8",
        "--bptt",
        "8",
        "--epochs",
        "10",
        "--drop-mult",
        "0",
        "--batch-order",
        "shuffled",
        "--seed",
        "1",
    ]);
    let output = ulmfit(&["predict", "--model", &clas, "--json", "--input", valid_arg]);
    let text = String::from_utf8(output.stdout).unwrap();
    let results: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 60);
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(&valid)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let correct = results
        .iter()
        .zip(&expected)
        .filter(|(got, want)| got["label"] == want["label"])
        .count();
    assert!(correct >= 48, "{correct} of 60 correct, chance is 30");
    for (got, want) in results.iter().zip(&expected) {
        assert_eq!(got["text"], want["text"]);
    }
}

/// Writes `count` JSONL records whose labels list one to three of `sport`, `music` and
/// `food`, separated by `|`, with one topic word per class at the end of the text.
fn write_tagged(path: &std::path::Path, count: usize, seed: u64) {
    let topics = [
        ("food", ["pizza", "bread", "soup"]),
        ("music", ["song", "band", "album"]),
        ("sport", ["goal", "match", "team"]),
    ];
    let filler = ["the", "a", "was", "it", "and", "news", "today"];
    let mut rng = Rng::seed(seed);
    let mut lines = String::new();
    for index in 0..count {
        let mut classes: Vec<&str> = topics
            .iter()
            .filter(|_| rng.below(2) == 0)
            .map(|(name, _)| *name)
            .collect();
        if classes.is_empty() {
            classes.push(topics[index % 3].0);
        }
        let mut text: Vec<&str> = (0..4 + rng.below(5))
            .map(|_| filler[rng.below(7) as usize])
            .collect();
        for (name, words) in &topics {
            if classes.contains(name) {
                text.push(words[rng.below(3) as usize]);
            }
        }
        let record = serde_json::json!({ "text": text.join(" "), "label": classes.join("|") });
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

#[test]
fn multi_label_classify_predict() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = (
        dir.path().join("train.jsonl"),
        dir.path().join("valid.jsonl"),
    );
    write_tagged(&train, 120, 4);
    write_tagged(&valid, 20, 5);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (lm, clas) = (path("lm"), path("clas"));
    let (train_arg, valid_arg) = (train.to_str().unwrap(), valid.to_str().unwrap());
    ulmfit(&[
        "pretrain",
        "--out",
        &lm,
        "--corpus",
        train_arg,
        "--embedding-size",
        "8",
        "--hidden-size",
        "12",
        "--batch-size",
        "8",
        "--bptt",
        "8",
        "--epochs",
        "1",
    ]);
    let output = ulmfit(&[
        "classify",
        "--encoder",
        &lm,
        "--data",
        train_arg,
        "--valid",
        valid_arg,
        "--out",
        &clas,
        "--batch-size",
        "8",
        "--bptt",
        "8",
        "--epochs",
        "1",
        "--multi-label",
        "--label-delimiter",
        "|",
        "--threshold",
        "0.4",
        "--batch-order",
        "shuffled",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        summary["classes"],
        serde_json::json!(["food", "music", "sport"])
    );
    let accuracy = summary["metrics"]["accuracy_multi"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "accuracy_multi {accuracy}");

    let output = ulmfit(&["predict", "--model", &clas, "--json", "--input", valid_arg]);
    let text = String::from_utf8(output.stdout).unwrap();
    let results: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 20);
    for (index, result) in results.iter().enumerate() {
        let over: Vec<&str> = ["food", "music", "sport"]
            .into_iter()
            .filter(|class| result["probabilities"][class].as_f64().unwrap() >= 0.4)
            .collect();
        assert_eq!(result["labels"], serde_json::json!(over), "text {index}");
    }
}

/// Runs `ulmfit` with `args`, expecting it to fail, and returns its stderr.
fn ulmfit_fails(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "ulmfit {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn device_cuda_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    for command in ["lm-finetune", "classify"] {
        let model_flag = if command == "classify" {
            "--encoder"
        } else {
            "--model"
        };
        let stderr = ulmfit_fails(&[
            command, model_flag, "missing", "--data", "missing", "--out", out, "--device", "cuda",
        ]);
        assert!(stderr.contains("--device cuda:0"), "{command}: {stderr}");
        assert!(stderr.contains("--device cpu"), "{command}: {stderr}");
    }
}

#[test]
fn device_option_rejects_unknown_names() {
    let commands: [&[&str]; 8] = [
        &["pretrain"],
        &["lr-find"],
        &["lm-finetune"],
        &["classify"],
        &["predict"],
        &["perplexity"],
        &["generate"],
        &["bench", "lm"],
    ];
    for command in commands {
        for (device, expected) in [
            ("gpu", "expected cpu, cuda or cuda:N"),
            ("cuda:x", "is not a non-negative integer"),
        ] {
            let mut args = command.to_vec();
            args.extend(["--device", device]);
            let stderr = ulmfit_fails(&args);
            assert!(stderr.contains(expected), "{command:?} {device}: {stderr}");
        }
    }
}

/// Trains a tiny language model on synthetic reviews and returns its folder.
fn tiny_encoder(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let corpus = dir.join("corpus.jsonl");
    write_reviews(&corpus, 120, 4);
    let lm = dir.join("lm").to_str().unwrap().to_string();
    ulmfit(&[
        "pretrain",
        "--out",
        &lm,
        "--corpus",
        corpus.to_str().unwrap(),
        "--embedding-size",
        "8",
        "--hidden-size",
        "12",
        "--batch-size",
        "8",
        "--bptt",
        "16",
        "--epochs",
        "1",
    ]);
    (lm, corpus)
}

/// Returns the `classify` arguments of the resume tests: batches of 8, checkpoints every
/// 2 steps, one epoch per stage.
fn resume_test_args<'a>(lm: &'a str, train: &'a str) -> [&'a str; 15] {
    [
        "classify",
        "--encoder",
        lm,
        "--data",
        train,
        "--batch-size",
        "8",
        "--bptt",
        "8",
        "--epochs",
        "1",
        "--save-every",
        "2",
        "--seed",
        "3",
    ]
}

#[test]
fn classify_resume_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    let train = dir.path().join("train.jsonl");
    write_reviews(&train, 80, 5);
    let train_arg = train.to_str().unwrap();
    let common = resume_test_args(&lm, train_arg);
    let full = dir.path().join("full");
    let full_log = dir.path().join("full.jsonl");
    let mut args = common.to_vec();
    args.extend(["--out", full.to_str().unwrap()]);
    args.extend(["--log-json", full_log.to_str().unwrap()]);
    ulmfit(&args);
    assert!(
        full.join("checkpoint-stage-1").is_dir(),
        "a stage checkpoint is written"
    );

    // The same run stopped after 5 optimizer steps, then resumed from its folder without
    // `--log-json`, which keeps appending to the log of the first part.
    let parted = dir.path().join("parted");
    let parted_log = dir.path().join("parted.jsonl");
    let mut args = common.to_vec();
    args.extend(["--out", parted.to_str().unwrap(), "--max-steps", "5"]);
    args.extend(["--log-json", parted_log.to_str().unwrap()]);
    let stopped = ulmfit(&args);
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("\"stopped\":true"));
    let logged_before_resume = epoch_log(&parted_log).len();
    let mut args = common.to_vec();
    args.extend(["--resume", parted.to_str().unwrap()]);
    ulmfit(&args);
    let full_epochs = epoch_log(&full_log);
    let parted_epochs = epoch_log(&parted_log);
    assert_eq!(full_epochs.len(), 4, "one epoch in each of the four stages");
    assert!(logged_before_resume < parted_epochs.len());
    assert_eq!(parted_epochs, full_epochs);

    let weights = |folder: &std::path::Path| {
        let tensors = candle_core::safetensors::load(
            folder.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut names: Vec<_> = tensors.keys().cloned().collect();
        names.sort();
        names
            .iter()
            .map(|name| {
                tensors[name]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(weights(&parted), weights(&full));

    // Resuming with another learning rate or precision is an error that names it.
    let resume_with = |option: &str, value: &str| {
        ulmfit_fails(&[
            "classify",
            "--encoder",
            lm.as_str(),
            "--data",
            train_arg,
            "--resume",
            parted.to_str().unwrap(),
            option,
            value,
        ])
    };
    let message = resume_with("--lr", "0.5");
    assert!(message.contains("lr"), "{message}");

    // Other documents under --data are an error, not a silent switch of training data.
    let other = dir.path().join("other.jsonl");
    write_reviews(&other, 80, 6);
    let message = ulmfit_fails(&[
        "classify",
        "--encoder",
        lm.as_str(),
        "--data",
        other.to_str().unwrap(),
        "--resume",
        parted.to_str().unwrap(),
    ]);
    assert!(message.contains("differ"), "{message}");
    assert!(message.contains("--data"), "{message}");
    let saved = std::fs::read_to_string(parted.join("classify.json")).unwrap();
    assert!(saved.contains("\"precision\": \"f32\""), "{saved}");
    let message = resume_with("--precision", "bf16");
    assert!(message.contains("precision"), "{message}");
}

/// A run that stopped after logging the end of stage 1 but before replacing that stage's
/// checkpoint: the log already has the stage's record, and the last checkpoint survives
/// only as the `.old` folder that a save renames it to. Resuming must read that folder
/// and must not log the stage again.
#[test]
fn classify_resume_after_crash_logs_once() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    let train = dir.path().join("train.jsonl");
    write_reviews(&train, 80, 5);
    let common = resume_test_args(&lm, train.to_str().unwrap());
    let full = dir.path().join("full");
    let full_log = dir.path().join("full.jsonl");
    let mut args = common.to_vec();
    args.extend(["--out", full.to_str().unwrap()]);
    args.extend(["--log-json", full_log.to_str().unwrap()]);
    ulmfit(&args);
    let full_text = std::fs::read_to_string(&full_log).unwrap();
    let first_record = full_text.lines().next().unwrap();
    assert!(first_record.contains("classify stage 1"), "{first_record}");

    // 72 training reviews in batches of 8 make 9 steps per stage, so step 8 is the last
    // checkpoint before the end of stage 1.
    let crashed = dir.path().join("crashed");
    let crashed_log = dir.path().join("crashed.jsonl");
    let mut args = common.to_vec();
    args.extend(["--out", crashed.to_str().unwrap(), "--max-steps", "8"]);
    args.extend(["--log-json", crashed_log.to_str().unwrap()]);
    ulmfit(&args);
    assert_eq!(
        epoch_log(&crashed_log).len(),
        0,
        "no stage finished by step 8"
    );
    std::fs::write(&crashed_log, format!("{first_record}\n")).unwrap();
    std::fs::rename(
        crashed.join("checkpoint-stage-1"),
        crashed.join(".checkpoint-stage-1.old"),
    )
    .unwrap();

    // The run folder records the encoder and the data, so `--resume` alone is enough.
    ulmfit(&[
        "classify",
        "--resume",
        crashed.to_str().unwrap(),
        "--max-steps",
        "10",
    ]);
    let logged = epoch_log(&crashed_log);
    assert_eq!(logged.len(), 2, "stages 1 and 2: {logged:?}");

    // A stop after logging stage 2 but before its first checkpoint: stage 2 starts again
    // from the end of stage 1 and must not be logged twice.
    std::fs::remove_dir_all(crashed.join("checkpoint-stage-2")).unwrap();
    ulmfit(&["classify", "--resume", crashed.to_str().unwrap()]);
    assert_eq!(epoch_log(&crashed_log), epoch_log(&full_log));
    let full_weights = std::fs::read(full.join("model.safetensors")).unwrap();
    let resumed_weights = std::fs::read(crashed.join("model.safetensors")).unwrap();
    assert!(full_weights == resumed_weights, "resumed weights differ");
}

/// Runs started with relative paths record them as absolute ones, so `--resume` works
/// from any working folder.
#[test]
fn resume_from_another_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    std::fs::rename(&lm, dir.path().join("encoder")).unwrap();
    write_reviews(&dir.path().join("train.jsonl"), 80, 5);
    let elsewhere = tempfile::tempdir().unwrap();

    let stopped = ulmfit_in(
        dir.path(),
        &[
            "lm-finetune",
            "--model",
            "encoder",
            "--data",
            "train.jsonl",
            "--batch-size",
            "4",
            "--bptt",
            "8",
            "--save-every",
            "2",
            "--out",
            "lm",
            "--max-steps",
            "3",
        ],
    );
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("\"stopped\":true"));
    let lm_run = dir.path().join("lm");
    let resume = ["lm-finetune", "--resume", lm_run.to_str().unwrap()];
    let mut args = resume.to_vec();
    args.extend(["--max-steps", "2"]);
    ulmfit_in(elsewhere.path(), &args);
    assert!(
        !lm_run.join("model.safetensors").is_file(),
        "the run is not finished"
    );

    // Runs used to save the paths as given. Such a run resumes from its own folder with
    // the paths given again in any spelling of the same files.
    let settings_path = lm_run.join("lm-finetune.json");
    let mut settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings_path).unwrap()).unwrap();
    settings["model"] = "encoder".into();
    settings["data"] = serde_json::json!(["train.jsonl"]);
    std::fs::write(&settings_path, settings.to_string()).unwrap();
    let mut args = resume.to_vec();
    args.extend(["--model", "encoder/", "--data", "./train.jsonl"]);
    ulmfit_in(dir.path(), &args);
    assert!(lm_run.join("model.safetensors").is_file());

    let stopped = ulmfit_in(
        dir.path(),
        &[
            "classify",
            "--encoder",
            "lm",
            "--data",
            "train.jsonl",
            "--batch-size",
            "8",
            "--bptt",
            "8",
            "--save-every",
            "2",
            "--out",
            "clas",
            "--max-steps",
            "5",
        ],
    );
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("\"stopped\":true"));
    let clas_run = dir.path().join("clas");
    ulmfit_in(
        elsewhere.path(),
        &["classify", "--resume", clas_run.to_str().unwrap()],
    );
    assert!(clas_run.join("model.safetensors").is_file());
}

#[test]
fn predict_rejects_language_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    let message = ulmfit_fails(&["predict", "--model", lm.as_str(), "a fine film"]);
    assert!(message.contains("not a classifier"), "{message}");
    assert!(message.contains("ulmfit classify"), "{message}");
}

#[test]
fn classify_rejects_zero_batch_size_early() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let message = ulmfit_fails(&[
        "classify",
        "--encoder",
        "missing-encoder",
        "--data",
        "missing-data",
        "--batch-size",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(message.contains("invalid --batch-size 0"), "{message}");
}

#[test]
fn classify_names_unreadable_validation_data() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    let train = dir.path().join("train.jsonl");
    write_reviews(&train, 40, 5);
    let missing = dir.path().join("missing.jsonl");
    let out = dir.path().join("out");
    let message = ulmfit_fails(&[
        "classify",
        "--encoder",
        lm.as_str(),
        "--data",
        train.to_str().unwrap(),
        "--valid",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(message.contains("validation data (--valid)"), "{message}");
    assert!(message.contains("missing.jsonl"), "{message}");
}

/// An output folder whose name is not UTF-8 is written and reported, lossily, in the
/// summary line.
#[cfg(unix)]
#[test]
fn classify_accepts_non_utf8_output_folder() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    let train = dir.path().join("train.jsonl");
    write_reviews(&train, 40, 5);
    let out = dir.path().join(std::ffi::OsStr::from_bytes(b"clas-\xff"));
    for extra in [&["--max-steps", "2"][..], &[]] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"));
        command.args(["--quiet", "classify", "--batch-size", "8", "--bptt", "8"]);
        if extra.is_empty() {
            command.arg("--resume").arg(&out);
        } else {
            command.args(["--encoder", lm.as_str(), "--data", train.to_str().unwrap()]);
            command.arg("--out").arg(&out).args(extra);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("clas-"));
    }
    assert!(out.join("model.safetensors").is_file());
}

/// Reads a `--log-json` file as (stage, epoch, valid loss) per line.
fn epoch_log(path: &std::path::Path) -> Vec<(String, u64, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                record["stage"].as_str().unwrap().to_string(),
                record["epoch"].as_u64().unwrap(),
                record["valid_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn lm_finetune_resume_matches_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, _) = tiny_encoder(dir.path());
    let train = dir.path().join("train.jsonl");
    write_reviews(&train, 80, 6);
    let common = [
        "lm-finetune",
        "--model",
        lm.as_str(),
        "--data",
        train.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--bptt",
        "8",
        "--save-every",
        "2",
    ];
    let full = dir.path().join("full");
    let full_log = dir.path().join("full.jsonl");
    let mut args = common.to_vec();
    args.extend(["--out", full.to_str().unwrap()]);
    args.extend(["--log-json", full_log.to_str().unwrap()]);
    ulmfit(&args);

    let parted = dir.path().join("parted");
    let parted_log = dir.path().join("parted.jsonl");
    let mut args = common.to_vec();
    args.extend(["--out", parted.to_str().unwrap(), "--max-steps", "3"]);
    args.extend(["--log-json", parted_log.to_str().unwrap()]);
    let stopped = ulmfit(&args);
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("\"stopped\":true"));
    ulmfit(&["lm-finetune", "--resume", parted.to_str().unwrap()]);
    let full_epochs = epoch_log(&full_log);
    assert_eq!(full_epochs.len(), 2, "one frozen and one unfrozen epoch");
    assert_eq!(epoch_log(&parted_log), full_epochs);

    let full_weights = std::fs::read(full.join("model.safetensors")).unwrap();
    let resumed_weights = std::fs::read(parted.join("model.safetensors")).unwrap();
    assert!(full_weights == resumed_weights, "resumed weights differ");

    let saved = std::fs::read_to_string(parted.join("lm-finetune.json")).unwrap();
    assert!(saved.contains("\"precision\": \"f32\""), "{saved}");
    let message = ulmfit_fails(&[
        "lm-finetune",
        "--resume",
        parted.to_str().unwrap(),
        "--precision",
        "bf16",
    ]);
    assert!(message.contains("precision"), "{message}");
}
