//! Validation metrics: loss, accuracy, perplexity and per-class scores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Validation results of one epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean validation loss.
    pub valid_loss: f64,
    /// Named scalar metrics, such as `accuracy` or `perplexity`.
    pub values: BTreeMap<String, f64>,
}

impl Metrics {
    /// Creates metrics with a loss and no other values.
    pub fn with_loss(valid_loss: f64) -> Self {
        Self {
            valid_loss,
            values: BTreeMap::new(),
        }
    }

    /// Adds a named value.
    pub fn insert(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.values.insert(name.into(), value);
        self
    }
}

/// Returns the fraction of positions where `predicted == target`, or 0 for no items.
pub fn accuracy(predicted: &[u32], target: &[u32]) -> f64 {
    let n = predicted.len().min(target.len());
    if n == 0 {
        return 0.0;
    }
    let correct = predicted.iter().zip(target).filter(|(p, t)| p == t).count();
    correct as f64 / n as f64
}

/// Returns the perplexity `exp(loss)` of a mean cross-entropy loss in nats.
pub fn perplexity(loss: f64) -> f64 {
    loss.exp()
}

/// Counts of (target, predicted) class pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    n_classes: usize,
    /// Row-major `counts[target * n_classes + predicted]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// Creates an empty matrix for `n_classes` classes.
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            counts: vec![0; n_classes * n_classes],
        }
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Records one prediction; out-of-range classes are ignored and return false.
    pub fn add(&mut self, target: usize, predicted: usize) -> bool {
        if target >= self.n_classes || predicted >= self.n_classes {
            return false;
        }
        self.counts[target * self.n_classes + predicted] += 1;
        true
    }

    /// Records predictions for a batch.
    pub fn add_all(&mut self, targets: &[u32], predicted: &[u32]) {
        for (&t, &p) in targets.iter().zip(predicted) {
            self.add(t as usize, p as usize);
        }
    }

    /// Returns the count of items of class `target` predicted as `predicted`.
    pub fn count(&self, target: usize, predicted: usize) -> u64 {
        self.counts[target * self.n_classes + predicted]
    }

    /// Rows of the matrix, one per target class.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.n_classes.max(1))
            .map(<[u64]>::to_vec)
            .collect()
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of items on the diagonal.
    pub fn accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let diagonal: u64 = (0..self.n_classes).map(|c| self.count(c, c)).sum();
        diagonal as f64 / total as f64
    }

    /// Precision of class `c`: true positives over predicted positives (0 when none).
    pub fn precision(&self, c: usize) -> f64 {
        let predicted: u64 = (0..self.n_classes).map(|t| self.count(t, c)).sum();
        ratio(self.count(c, c), predicted)
    }

    /// Recall of class `c`: true positives over actual positives (0 when none).
    pub fn recall(&self, c: usize) -> f64 {
        let actual: u64 = (0..self.n_classes).map(|p| self.count(c, p)).sum();
        ratio(self.count(c, c), actual)
    }

    /// F1 of class `c`, the harmonic mean of precision and recall (0 when both are 0).
    pub fn f1(&self, c: usize) -> f64 {
        let (p, r) = (self.precision(c), self.recall(c));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        if self.n_classes == 0 {
            return 0.0;
        }
        (0..self.n_classes).map(|c| self.f1(c)).sum::<f64>() / self.n_classes as f64
    }

    /// Adds `accuracy`, `macro_f1` and per-class `precision_{c}`, `recall_{c}`, `f1_{c}`
    /// to `metrics`.
    pub fn add_to(&self, metrics: &mut Metrics) {
        metrics.insert("accuracy", self.accuracy());
        metrics.insert("macro_f1", self.macro_f1());
        for c in 0..self.n_classes {
            metrics.insert(format!("precision_{c}"), self.precision(c));
            metrics.insert(format!("recall_{c}"), self.recall(c));
            metrics.insert(format!("f1_{c}"), self.f1(c));
        }
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets and predictions for three classes:
    /// target 0: predicted 0,0,1 ; target 1: predicted 1,1,1,2 ; target 2: predicted 0,2.
    fn example() -> ConfusionMatrix {
        let targets = [0, 0, 0, 1, 1, 1, 1, 2, 2];
        let predicted = [0, 0, 1, 1, 1, 1, 2, 0, 2];
        let mut cm = ConfusionMatrix::new(3);
        cm.add_all(&targets, &predicted);
        cm
    }

    #[test]
    fn confusion_counts() {
        assert_eq!(
            example().rows(),
            vec![vec![2, 1, 0], vec![0, 3, 1], vec![1, 0, 1]]
        );
    }

    #[test]
    fn precision_recall_f1_by_hand() {
        let cm = example();
        // Class 0: tp 2, predicted 3, actual 3.
        assert!((cm.precision(0) - 2.0 / 3.0).abs() < 1e-12);
        assert!((cm.recall(0) - 2.0 / 3.0).abs() < 1e-12);
        // Class 1: tp 3, predicted 4, actual 4.
        assert!((cm.precision(1) - 0.75).abs() < 1e-12);
        // Class 2: tp 1, predicted 2, actual 2; F1 = 0.5.
        assert!((cm.f1(2) - 0.5).abs() < 1e-12);
        assert!((cm.accuracy() - 6.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn f1_of_unequal_precision_recall() {
        let mut cm = ConfusionMatrix::new(2);
        cm.add_all(&[1, 1, 1, 1, 0], &[1, 0, 0, 0, 1]);
        // Class 1: precision 1/2, recall 1/4, F1 = 2 * 1/8 / (3/4) = 1/3.
        assert!((cm.f1(1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(cm.f1(0), 0.0);
    }

    #[test]
    fn out_of_range_class_ignored() {
        let mut cm = ConfusionMatrix::new(2);
        assert!(!cm.add(2, 0));
        assert_eq!(cm.accuracy(), 0.0);
    }

    #[test]
    fn accuracy_and_perplexity() {
        assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4]), 0.75);
        assert!((perplexity(2.0f64.ln()) - 2.0).abs() < 1e-12);
    }
}
