//! Tests of `ulmfit evaluate`: reports of single models, ensembles, multi-label models
//! and the TF-IDF baseline, run against the real binary on small random classifiers.

use std::path::{Path, PathBuf};
use std::process::Output;

use ulmfit::model::classifier::argmax;
use ulmfit::pipeline::predict::{write_random_classifier, LoadedClassifier};

const WORDS: &[&str] = &[
    "the", "movie", "was", "great", "awful", "plot", "and", "actors", "film", "boring", "good",
    "bad",
];

fn ulmfit(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(["--quiet", "--threads", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "ulmfit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Labelled reviews as JSON lines: `(text, label)`.
fn reviews() -> Vec<(&'static str, &'static str)> {
    vec![
        ("The movie was great, great actors.", "pos"),
        ("Awful plot and boring actors.", "neg"),
        ("good good film", "pos"),
        ("bad bad film, the plot was bad", "neg"),
        ("The film was great and the plot was good.", "pos"),
        ("boring", "neg"),
        (
            "A great movie with good actors and a good plot, great film.",
            "pos",
        ),
        ("awful awful awful", "neg"),
    ]
}

fn write_jsonl(path: &Path, records: &[(&str, &str)]) {
    let lines: Vec<String> = records
        .iter()
        .map(|(text, label)| serde_json::json!({ "text": text, "label": label }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Returns the confusion matrix of `probabilities` against `labels`, classes in order.
fn expected_matrix(probabilities: &[Vec<f32>], labels: &[usize], n: usize) -> Vec<Vec<u64>> {
    let mut matrix = vec![vec![0u64; n]; n];
    for (row, &label) in probabilities.iter().zip(labels) {
        matrix[label][argmax(row)] += 1;
    }
    matrix
}

fn json_matrix(value: &serde_json::Value) -> Vec<Vec<u64>> {
    serde_json::from_value(value["confusion_matrix"].clone()).unwrap()
}

fn class_ids(classes: &[String]) -> Vec<usize> {
    reviews()
        .iter()
        .map(|(_, label)| classes.iter().position(|c| c == label).unwrap())
        .collect()
}

#[test]
fn json_report_matches_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_classifier(&model, WORDS, &["neg", "pos"], 21).unwrap();
    let data = dir.path().join("valid.jsonl");
    write_jsonl(&data, &reviews());

    let output = ulmfit(&[
        "evaluate",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--json",
    ]);
    let text = stdout_of(&output);
    assert_eq!(text.lines().count(), 1, "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();

    let loaded = LoadedClassifier::load(&model).unwrap();
    let texts: Vec<&str> = reviews().iter().map(|(t, _)| *t).collect();
    let probabilities = loaded.probabilities(&texts, 3).unwrap();
    let labels = class_ids(&loaded.config.classes);
    let matrix = expected_matrix(&probabilities, &labels, 2);
    let correct = matrix[0][0] + matrix[1][1];
    assert_eq!(json_matrix(&value), matrix);
    assert_eq!(value["accuracy"], correct as f64 / 8.0);
    assert_eq!(value["classes"], serde_json::json!(["neg", "pos"]));
    assert_eq!(value["per_class"]["neg"]["support"], 4);
    assert_eq!(value["per_class"]["pos"]["support"], 4);
    let predicted_pos = matrix[0][1] + matrix[1][1];
    let precision_pos = if predicted_pos == 0 {
        0.0
    } else {
        matrix[1][1] as f64 / predicted_pos as f64
    };
    assert_eq!(value["per_class"]["pos"]["precision"], precision_pos);
    assert!(value.get("baseline").is_none());
}

/// Copies a model folder and marks the copy backward, so it reads documents in reverse.
fn backward_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let config_path = to.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["backwards"] = true.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
}

#[test]
fn ensemble_averages_forward_and_backward() {
    let dir = tempfile::tempdir().unwrap();
    let forward = dir.path().join("fwd");
    let backward = dir.path().join("bwd");
    write_random_classifier(&forward, WORDS, &["neg", "pos"], 22).unwrap();
    backward_copy(&forward, &backward);
    let data = dir.path().join("valid.jsonl");
    write_jsonl(&data, &reviews());

    let output = ulmfit(&[
        "evaluate",
        "--model",
        path(&forward),
        "--model",
        path(&backward),
        "--data",
        path(&data),
        "--json",
    ]);
    let value: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();

    let texts: Vec<&str> = reviews().iter().map(|(t, _)| *t).collect();
    let forward_probabilities = LoadedClassifier::load(&forward)
        .unwrap()
        .probabilities(&texts, 8)
        .unwrap();
    let backward_model = LoadedClassifier::load(&backward).unwrap();
    assert!(backward_model.config.backwards);
    let backward_probabilities = backward_model.probabilities(&texts, 8).unwrap();
    let average: Vec<Vec<f32>> = forward_probabilities
        .iter()
        .zip(&backward_probabilities)
        .map(|(f, b)| f.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect())
        .collect();
    let labels = class_ids(&backward_model.config.classes);
    assert_eq!(json_matrix(&value), expected_matrix(&average, &labels, 2));
    assert_eq!(value["models"].as_array().unwrap().len(), 2);
}

#[test]
fn unknown_label_names_label_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_classifier(&model, WORDS, &["neg", "pos"], 23).unwrap();
    let data = dir.path().join("valid.jsonl");
    write_jsonl(&data, &[("good film", "pos"), ("fine film", "neutral")]);
    let output = ulmfit(&["evaluate", "--model", path(&model), "--data", path(&data)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("label `neutral`"), "{stderr}");
    assert!(stderr.contains("valid.jsonl:2"), "{stderr}");
}

#[test]
fn text_report_lists_classes_and_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_classifier(&model, WORDS, &["negative", "pos"], 24).unwrap();
    let data = dir.path().join("valid.csv");
    std::fs::write(
        &data,
        "text,label\ngood film,pos\nbad film,negative\ngreat,pos\n",
    )
    .unwrap();

    let text = stdout_of(&ulmfit(&[
        "evaluate",
        "--model",
        path(&model),
        "--data",
        path(&data),
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("accuracy "), "{text}");
    assert!(lines[1].contains("(3 examples)"), "{text}");
    let header = lines.iter().position(|l| l.starts_with("class ")).unwrap();
    assert!(lines[header + 1].starts_with("negative "), "{text}");
    assert!(lines[header + 1].ends_with(" 1"), "{text}");
    assert!(lines[header + 2].ends_with(" 2"), "{text}");
    let matrix = lines.iter().position(|l| *l == "confusion matrix").unwrap();
    assert!(lines[matrix + 1].starts_with("true \\ predicted"), "{text}");
    let counts: Vec<u64> = lines[matrix + 2..matrix + 4]
        .iter()
        .flat_map(|l| l.split_whitespace().skip(1))
        .map(|count| count.parse().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 3, "{text}");
    assert_eq!(counts[0] + counts[1], 1, "{text}");
}

#[test]
fn baseline_learns_obvious_words() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_classifier(&model, WORDS, &["neg", "pos"], 25).unwrap();
    let train = dir.path().join("train.jsonl");
    write_jsonl(
        &train,
        &[
            ("great good film", "pos"),
            ("good great actors", "pos"),
            ("a great movie", "pos"),
            ("awful bad film", "neg"),
            ("bad boring actors", "neg"),
            ("an awful movie", "neg"),
        ],
    );

    let data = dir.path().join("valid.jsonl");
    write_jsonl(
        &data,
        &[
            ("great", "pos"),
            ("good movie", "pos"),
            ("awful", "neg"),
            ("boring and bad", "neg"),
        ],
    );
    let output = ulmfit(&[
        "evaluate",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--baseline",
        path(&train),
        "--json",
    ]);

    let value: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let baseline = &value["baseline"];
    assert_eq!(baseline["accuracy"], 1.0);
    assert_eq!(json_matrix(baseline), vec![vec![2, 0], vec![0, 2]]);
    assert_eq!(baseline["per_class"]["pos"]["f1"], 1.0);
}

#[test]
fn multi_label_reports_sample_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_classifier(&model, WORDS, &["action", "comedy", "drama"], 26).unwrap();
    let config_path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["multi_label"] = serde_json::json!({ "threshold": 0.4, "delimiter": "|" });
    std::fs::write(&config_path, config.to_string()).unwrap();
    let records = [
        ("great actors and a good plot", "action|comedy"),
        ("boring film", "drama"),
        ("the movie", "comedy|drama"),
        ("awful awful", "action"),
    ];
    let data = dir.path().join("valid.jsonl");
    write_jsonl(&data, &records);
    let output = ulmfit(&[
        "evaluate",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--json",
    ]);
    let text = stdout_of(&output);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["multi_label"], true);
    assert!(value.get("confusion_matrix").is_none(), "{text}");

    let loaded = LoadedClassifier::load(&model).unwrap();
    let texts: Vec<&str> = records.iter().map(|(t, _)| *t).collect();
    let probabilities = loaded.probabilities(&texts, 4).unwrap();
    let mut exact = 0;
    for ((_, label), row) in records.iter().zip(&probabilities) {
        let mut truth: Vec<&str> = label.split('|').filter(|s| !s.is_empty()).collect();
        truth.sort();
        let predicted = loaded.config.predicted_classes(row);
        if predicted == truth {
            exact += 1;
        }
    }
    assert_eq!(value["accuracy"], exact as f64 / 4.0);
    assert_eq!(value["per_class"]["comedy"]["support"], 2);
    assert_eq!(value["per_class"]["drama"]["support"], 2);
    assert_eq!(value["per_class"]["action"]["support"], 2);
}

#[test]
fn missing_default_model_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("valid.jsonl");
    write_jsonl(&data, &reviews());
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/imdb-sentiment");
    if default.join("config.json").exists() {
        return;
    }
    let output = ulmfit(&["evaluate", "--data", path(&data)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--model DIR"), "{stderr}");
}

/// Fits the baseline on IMDb's 25,000 training reviews and scores the 25,000 test
/// reviews. It runs only when `ULMFIT_IMDB` names an unpacked `aclImdb` folder, because
/// it reads 130 MB. scikit-learn 1.9.1's `TfidfVectorizer(ngram_range=(1, 2),
/// sublinear_tf=True)` with `LogisticRegression()` reaches 0.8924 on the same split.
#[test]
fn imdb_baseline_accuracy() {
    let Some(imdb) = std::env::var_os("ULMFIT_IMDB").map(PathBuf::from) else {
        eprintln!("skipped imdb_baseline_accuracy: set ULMFIT_IMDB to an aclImdb folder");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_classifier(&model, WORDS, &["neg", "pos"], 27).unwrap();
    let output = ulmfit(&[
        "evaluate",
        "--model",
        path(&model),
        "--data",
        path(&imdb.join("test")),
        "--baseline",
        path(&imdb.join("train")),
        "--json",
    ]);
    let value: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    let accuracy = value["baseline"]["accuracy"].as_f64().unwrap();
    eprintln!("IMDb baseline accuracy {accuracy}: {}", value["baseline"]);
    assert!(accuracy >= 0.885, "baseline accuracy {accuracy}");
}
