//! End-to-end `ulmfit vision train`, `predict` and `evaluate` on tiny generated images
//! with the tiny ResNet fixture as backbone (random weights, so the head must learn
//! from random features). The run takes a few seconds.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::{Rgb, RgbImage};

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ulmfit"));
    command.args(["--threads", "2"]);
    command
}

fn backbone() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/resnet-tiny.pth")
}

/// Writes `count` 32x32 PNGs of a colour with a little per-image variation.
fn fill(dir: &Path, class: &str, color: [u8; 3], count: usize) {
    let folder = dir.join(class);
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..count {
        let shade = (i * 7 % 30) as u8;
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let noise = ((x * 13 + y * 7 + i as u32 * 5) % 11) as u8;
            Rgb(color.map(|c| c.saturating_sub(shade).saturating_add(noise)))
        });
        image.save(folder.join(format!("{i}.png"))).unwrap();
    }
}

/// Training images per class. The head's BatchNorm layers validate with running
/// statistics that move 10% of the way to each batch's statistics (PyTorch's momentum
/// 0.1), so the run needs enough batches to forget their start (mean 0, variance 1).
/// With 8 images per class and 4 per batch, 20 batches leave 12% of the start and
/// every validation image lands in one class; 40 per class give 100 batches.
const TRAIN_PER_CLASS: usize = 40;
/// Validation images per class.
const VALID_PER_CLASS: usize = 3;

fn make_data(root: &Path) {
    for (split, count) in [("train", TRAIN_PER_CLASS), ("val", VALID_PER_CLASS)] {
        fill(&root.join(split), "blue", [30, 40, 220], count);
        fill(&root.join(split), "red", [220, 40, 30], count);
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn train_predict_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data);
    let out = dir.path().join("model");
    let log = dir.path().join("log.jsonl");
    run(binary()
        .args(["vision", "train", "--data"])
        .arg(&data)
        .arg("--backbone")
        .arg(backbone())
        .arg("--out")
        .arg(&out)
        .args(["--epochs", "1", "--frozen-epochs", "4", "--batch-size", "4"])
        .args([
            "--size", "32", "--lr", "1e-2", "--seed", "3", "--device", "cpu",
        ])
        .arg("--log-json")
        .arg(&log));
    for file in ["config.json", "weights.safetensors", "backbone.pth"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records.len(), 5);
    let first_loss = records[0]["train_loss"].as_f64().unwrap();
    let last_loss = records.last().unwrap()["train_loss"].as_f64().unwrap();
    assert!(
        last_loss < first_loss,
        "train loss {first_loss} -> {last_loss}"
    );
    let accuracy = records.last().unwrap()["accuracy"].as_f64().unwrap();
    assert_eq!(accuracy, 1.0, "validation accuracy after the last epoch");
    assert_eq!(records[0]["stage"], "frozen");
    assert_eq!(records[4]["stage"], "unfrozen");

    let red = data.join("val/red/0.png");
    let blue = data.join("val/blue/1.png");
    let stdout = run(binary()
        .args(["vision", "predict", "--json", "--device", "cpu", "--model"])
        .arg(&out)
        .arg(&red)
        .arg(&blue));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["image"], red.display().to_string());
    assert_eq!(lines[1]["image"], blue.display().to_string());
    for line in &lines {
        let p = &line["probabilities"];
        let (p_red, p_blue) = (p["red"].as_f64().unwrap(), p["blue"].as_f64().unwrap());
        assert!((p_red + p_blue - 1.0).abs() < 1e-5, "{line}");
        let expected = if p_red >= p_blue { "red" } else { "blue" };
        assert_eq!(line["label"], expected, "{line}");
    }
    assert_eq!(lines[0]["label"], "red");
    assert_eq!(lines[1]["label"], "blue");

    let report: serde_json::Value = serde_json::from_str(&run(binary()
        .args(["vision", "evaluate", "--json", "--device", "cpu", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(&data)))
    .unwrap();
    assert_eq!(report["classes"], serde_json::json!(["blue", "red"]));
    let matrix: Vec<Vec<u64>> = serde_json::from_value(report["confusion_matrix"].clone()).unwrap();
    let n = VALID_PER_CLASS as u64;
    assert_eq!(matrix, vec![vec![n, 0], vec![0, n]], "{report}");
    assert_eq!(report["accuracy"].as_f64(), Some(1.0), "{report}");
    assert_eq!(report["per_class"]["red"]["support"], n);
}

#[test]
fn unknown_backbone_extension_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_data(&data);
    let weights = dir.path().join("weights.bin");
    std::fs::write(&weights, b"x").unwrap();
    let output = binary()
        .args(["vision", "train", "--data"])
        .arg(&data)
        .arg("--backbone")
        .arg(&weights)
        .arg("--out")
        .arg(dir.path().join("model"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(".tflite"), "{stderr}");
}

/// Returns the stderr of `ulmfit vision SUBCOMMAND --device DEVICE` with placeholder
/// paths, failing when the command succeeds.
fn device_error(subcommand: &str, device: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = binary();
    command.args(["vision", subcommand, "--device", device]);
    match subcommand {
        "train" => command
            .arg("--data")
            .arg(dir.path())
            .arg("--backbone")
            .arg(backbone())
            .arg("--out")
            .arg(dir.path().join("model")),
        "predict" => command
            .arg("--model")
            .arg(dir.path())
            .arg(dir.path().join("a.png")),
        _ => command
            .arg("--model")
            .arg(dir.path())
            .arg("--data")
            .arg(dir.path()),
    };
    let output = command.output().unwrap();
    assert!(
        !output.status.success(),
        "{subcommand} --device {device} succeeded"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn invalid_device_is_rejected() {
    for subcommand in ["train", "predict", "evaluate"] {
        let stderr = device_error(subcommand, "cuda:x");
        assert!(stderr.contains("cuda:x"), "{subcommand}: {stderr}");
        assert!(
            stderr.contains("is not a non-negative integer"),
            "{subcommand}: {stderr}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_needs_cuda_build() {
    for subcommand in ["train", "predict", "evaluate"] {
        let stderr = device_error(subcommand, "cuda");
        assert!(stderr.contains("--features cuda"), "{subcommand}: {stderr}");
    }
}
