//! The shipped IMDb sentiment classifier through the binary: `predict` and `evaluate`
//! without `--model` use `checkpoints/imdb-sentiment` from any working folder, and the
//! model scores real IMDb test reviews.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ulmfit_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary starts")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "ulmfit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/imdb-sentiment")
}

#[test]
fn default_model_works_from_any_folder() {
    assert!(
        shipped_model().join("config.json").is_file(),
        "checkpoints/imdb-sentiment is missing"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let output = ulmfit_in(
        elsewhere.path(),
        &[
            "predict",
            "--json",
            "A wonderful film. The acting is superb and I loved every minute of it.",
            "Dull, boring and far too long. The worst movie I have seen in years.",
            "",
        ],
    );
    let lines: Vec<serde_json::Value> = stdout_of(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["label"], "pos");
    assert_eq!(lines[1]["label"], "neg");
    for line in &lines {
        let probabilities = line["probabilities"].as_object().unwrap();
        assert_eq!(probabilities.len(), 2);
        let sum: f64 = probabilities.values().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "probabilities sum to {sum}");
    }
    assert!(lines[0]["probabilities"]["pos"].as_f64().unwrap() > 0.8);
    assert!(lines[1]["probabilities"]["neg"].as_f64().unwrap() > 0.8);
}

/// Scores the 222 test reviews whose file names start with `99` (111 per class).
#[test]
fn default_model_scores_imdb_test_sample() {
    let Some(shared) = common::shared_dir("default_model_scores_imdb_test_sample") else {
        return;
    };
    let archive = shared.join("data/imdb/aclImdb-labelled.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .args([
            "--wildcards",
            "aclImdb/test/pos/99*_*.txt",
            "aclImdb/test/neg/99*_*.txt",
        ])
        .status()
        .expect("tar starts");
    assert!(status.success(), "failed to unpack {}", archive.display());
    let data = dir.path().join("aclImdb/test");
    let output = ulmfit_in(
        dir.path(),
        &["evaluate", "--data", data.to_str().unwrap(), "--json"],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout_of(&output)).unwrap();
    assert_eq!(report["examples"], 222);
    assert_eq!(report["per_class"]["pos"]["support"], 111);
    assert_eq!(report["per_class"]["neg"]["support"], 111);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.85, "accuracy {accuracy} on 222 test reviews");
}

#[test]
fn plain_text_input_honours_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviews.txt");
    // "Café" in Latin-1 (0xE9), a CRLF line end, then a blank line and a last line
    // without a line end: three inputs.
    std::fs::write(
        &path,
        b"Caf\xe9 food and a wonderful film\r\n\nDull and far too long",
    )
    .unwrap();
    let file = path.to_str().unwrap();

    let output = ulmfit_in(dir.path(), &["predict", "--input", file, "--json"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("reviews.txt:1:"), "{message}");
    assert!(message.contains("--encoding latin1"), "{message}");

    let output = ulmfit_in(
        dir.path(),
        &["predict", "--input", file, "--encoding", "latin1", "--json"],
    );
    let stdout = stdout_of(&output);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["text"], "Café food and a wonderful film");
    assert_eq!(lines[1]["text"], "");
    assert_eq!(lines[2]["text"], "Dull and far too long");
}

#[test]
fn csv_output_has_label_probabilities_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let output = ulmfit_in(
        dir.path(),
        &[
            "predict",
            "--csv",
            "A wonderful film, I loved it.",
            "Say \"no\", then go",
        ],
    );
    let stdout = stdout_of(&output);
    let mut reader = csv::Reader::from_reader(stdout.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, ["label", "p_neg", "p_pos", "text"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(&rows[0][0], "pos");
    assert_eq!(&rows[1][3], "Say \"no\", then go");
    for row in &rows {
        let sum: f64 = (1..3).map(|i| row[i].parse::<f64>().unwrap()).sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "probabilities of {row:?} sum to {sum}"
        );
    }
}

#[test]
fn input_dash_reads_standard_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(["predict", "--json", "--input", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"A superb, moving film.\nDreadful and boring.\n")
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = stdout_of(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["text"], "A superb, moving film.");
    assert_eq!(lines[1]["text"], "Dreadful and boring.");
}

/// A reader that stops early, as `head` does, ends the output without an error message.
#[cfg(unix)]
#[test]
fn closed_output_pipe_is_not_an_error() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    // More output than a pipe buffers (64 KiB on Linux), so writing must block.
    std::fs::write(&input, "a great film\n".repeat(3000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ulmfit"))
        .args(["predict", "--input", input.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("pos\t"), "{first}");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("error"), "{stderr}");
    // Linux builds end by SIGPIPE (13), as other tools do; elsewhere the status is 141.
    use std::os::unix::process::ExitStatusExt;
    let by_sigpipe = output.status.signal() == Some(13) || output.status.code() == Some(141);
    assert!(by_sigpipe, "{:?}", output.status);
}
