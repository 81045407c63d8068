//! Progress display and per-epoch records: an `indicatif` bar per epoch, a summary
//! line on stderr and optional JSON lines.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{Result, TrainError};

/// Results of one epoch, written as one JSON object per line to the JSON log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Stage name, such as `lm-finetune` or `classifier`.
    pub stage: String,
    /// Zero-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean validation loss.
    pub valid_loss: f64,
    /// Other validation metrics.
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
    /// Wall-clock seconds of training and validation in this process.
    pub seconds: f64,
    /// Training items (tokens, documents or images) per second.
    pub items_per_second: f64,
}

impl EpochRecord {
    /// Formats the one-line summary printed after each epoch.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} epoch {}: train_loss {:.4} valid_loss {:.4}",
            self.stage, self.epoch, self.train_loss, self.valid_loss
        );
        for (name, value) in &self.metrics {
            line.push_str(&format!(" {name} {value:.4}"));
        }
        line.push_str(&format!(
            " ({:.1} s, {:.0} items/s)",
            self.seconds, self.items_per_second
        ));
        line
    }
}

/// Appends `record` as one JSON line to `path`.
pub fn append_json_line(path: &Path, record: &EpochRecord) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    let line = serde_json::to_string(record)
        .map_err(|e| TrainError::Invalid(format!("failed to encode epoch record: {e}")))?;
    writeln!(file, "{line}").map_err(|e| TrainError::io(path, e))
}

/// Returns whether the last line of the JSON log at `path` is `record`, apart from the
/// timing fields (`seconds`, `items_per_second`). Only a regular file is read: a pipe or
/// terminal (`/dev/stderr`, say) could block. A missing file, an unreadable one and a
/// last line that is not such a record all count as no.
pub fn log_ends_with(path: &Path, record: &EpochRecord) -> bool {
    const TIMING: [&str; 2] = ["seconds", "items_per_second"];
    if !std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file()) {
        return false;
    }
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let text = String::from_utf8_lossy(&bytes);
    let Some(line) = text.lines().rev().find(|line| !line.trim().is_empty()) else {
        return false;
    };
    let (Ok(serde_json::Value::Object(mut last)), Ok(serde_json::Value::Object(mut new))) =
        (serde_json::from_str(line), serde_json::to_value(record))
    else {
        return false;
    };
    for field in TIMING {
        last.remove(field);
        new.remove(field);
    }
    last == new
}

/// Progress bar of one epoch, hidden when progress display is off.
pub struct EpochBar {
    bar: ProgressBar,
    unit: &'static str,
}

impl EpochBar {
    /// Creates a bar over `batches` batches starting at `position`.
    pub fn new(
        label: &str,
        batches: usize,
        position: usize,
        unit: &'static str,
        show: bool,
    ) -> Self {
        let bar = if show {
            ProgressBar::new(batches as u64)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar.set_position(position as u64);
        bar.enable_steady_tick(Duration::from_millis(500));
        Self { bar, unit }
    }

    /// Advances one batch and shows the running loss and throughput.
    pub fn update(&self, loss: f64, items_per_second: f64) {
        self.bar.inc(1);
        self.bar.set_message(format!(
            "loss {loss:.4} {items_per_second:.0} {}/s",
            self.unit
        ));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EpochRecord {
        EpochRecord {
            stage: "lm".into(),
            epoch: 1,
            train_loss: 4.25,
            valid_loss: 4.5,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.3)]),
            seconds: 2.0,
            items_per_second: 100.0,
        }
    }

    #[test]
    fn json_line_has_flat_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        append_json_line(&path, &record()).unwrap();
        append_json_line(&path, &record()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let value: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(value["stage"], "lm");
        assert_eq!(value["accuracy"], 0.3);
        assert_eq!(value["valid_loss"], 4.5);
    }

    #[test]
    fn log_end_matches_only_the_same_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        assert!(!log_ends_with(&path, &record()), "a missing log");
        append_json_line(&path, &record()).unwrap();
        let mut rerun = record();
        rerun.seconds = 7.5;
        rerun.items_per_second = 3.0;
        assert!(log_ends_with(&path, &rerun), "timing differs only");
        let mut other_run = record();
        other_run.train_loss = 4.3;
        assert!(
            !log_ends_with(&path, &other_run),
            "same stage and epoch, other losses"
        );
        let mut next_epoch = record();
        next_epoch.epoch = 2;
        assert!(!log_ends_with(&path, &next_epoch));
        assert!(
            !log_ends_with(dir.path(), &record()),
            "a folder is not read"
        );
    }

    #[test]
    fn summary_lists_metrics() {
        assert_eq!(
            record().summary(),
            "lm epoch 1: train_loss 4.2500 valid_loss 4.5000 accuracy 0.3000 (2.0 s, 100 items/s)"
        );
    }
}
