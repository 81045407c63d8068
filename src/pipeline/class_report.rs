//! Classification reports: accuracy, per-class precision, recall, F1 and support, and
//! the confusion matrix, for any classifier that outputs class indices.
//!
//! Precision of a class that is never predicted is defined as 0 (scikit-learn's
//! `zero_division=0`), as are recall of a class with no true examples and F1 when
//! precision and recall are both 0.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::train::ConfusionMatrix;

/// Errors of building a report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// The true and predicted lists differ in length.
    #[error(
        "{truth} true labels but {predicted} predictions; both lists need one entry per example"
    )]
    LengthMismatch {
        /// Number of true labels.
        truth: usize,
        /// Number of predictions.
        predicted: usize,
    },
    /// A class index is not below the number of class names.
    #[error(
        "{which} class index {index} at example {example} is out of range for {classes} classes"
    )]
    ClassOutOfRange {
        /// `true` or `predicted`.
        which: &'static str,
        /// The index.
        index: usize,
        /// 0-based position of the example.
        example: usize,
        /// Number of class names.
        classes: usize,
    },
}

/// Scores of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassScores {
    /// True positives over predicted positives (0 when the class is never predicted).
    pub precision: f64,
    /// True positives over true examples of the class (0 when it has none).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Number of examples whose true labels include the class.
    pub support: u64,
}

/// Scores of a classifier on a labelled set. Serialized as a JSON object with
/// `accuracy`, `examples`, `classes`, `per_class` (keyed by class name, in class order),
/// `macro_f1`, `multi_label`, and `confusion_matrix` for single-label reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    /// Fraction of examples predicted exactly right. For a multi-label report, this is
    /// sample accuracy: the predicted class set equals the true set.
    pub accuracy: f64,
    /// Number of examples scored.
    pub examples: usize,
    /// Class names, in the order of `per_class` and of the matrix rows and columns.
    pub classes: Vec<String>,
    /// Scores of each class, in `classes` order.
    pub per_class: Vec<ClassScores>,
    /// Unweighted mean of the per-class F1 scores.
    pub macro_f1: f64,
    /// Counts `[true class][predicted class]`, for single-label reports only.
    pub confusion_matrix: Option<Vec<Vec<u64>>>,
}

impl ClassificationReport {
    /// Returns whether the report scores sets of classes rather than one class each.
    pub fn is_multi_label(&self) -> bool {
        self.confusion_matrix.is_none()
    }
}

impl Serialize for ClassificationReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("accuracy", &self.accuracy)?;
        map.serialize_entry("examples", &self.examples)?;
        map.serialize_entry("classes", &self.classes)?;
        map.serialize_entry("per_class", &PerClass(self))?;
        map.serialize_entry("macro_f1", &self.macro_f1)?;
        map.serialize_entry("multi_label", &self.is_multi_label())?;
        if let Some(matrix) = &self.confusion_matrix {
            map.serialize_entry("confusion_matrix", matrix)?;
        }
        map.end()
    }
}

/// The `per_class` object, keyed by class name in class order.
struct PerClass<'a>(&'a ClassificationReport);

impl Serialize for PerClass<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.classes.len()))?;
        for (class, scores) in self.0.classes.iter().zip(&self.0.per_class) {
            map.serialize_entry(class, scores)?;
        }
        map.end()
    }
}

/// Builds the report of single-label predictions: `truth[i]` and `predicted[i]` are
/// indices into `classes`.
pub fn classification_report(
    truth: &[usize],
    predicted: &[usize],
    classes: &[String],
) -> Result<ClassificationReport, ReportError> {
    check_lengths(truth.len(), predicted.len())?;
    let n = classes.len();
    let mut matrix = ConfusionMatrix::new(n);
    for (example, (&t, &p)) in truth.iter().zip(predicted).enumerate() {
        check_index("true", t, example, n)?;
        check_index("predicted", p, example, n)?;
        matrix.add(t, p);
    }
    let rows = matrix.rows();
    let per_class: Vec<ClassScores> = (0..n)
        .map(|c| ClassScores {
            precision: matrix.precision(c),
            recall: matrix.recall(c),
            f1: matrix.f1(c),
            support: rows.get(c).map_or(0, |row| row.iter().sum()),
        })
        .collect();
    Ok(ClassificationReport {
        accuracy: matrix.accuracy(),
        examples: truth.len(),
        classes: classes.to_vec(),
        macro_f1: mean_f1(&per_class),
        per_class,
        confusion_matrix: Some(if n == 0 { Vec::new() } else { rows }),
    })
}

/// Builds the report of multi-label predictions: `truth[i]` and `predicted[i]` are the
/// sets of class indices of example `i` (order and repeats do not matter). Accuracy is
/// sample accuracy (exact set match). No confusion matrix is built.
pub fn multi_label_report(
    truth: &[Vec<usize>],
    predicted: &[Vec<usize>],
    classes: &[String],
) -> Result<ClassificationReport, ReportError> {
    check_lengths(truth.len(), predicted.len())?;
    let n = classes.len();
    let mut true_positives = vec![0u64; n];
    let mut predicted_counts = vec![0u64; n];
    let mut support = vec![0u64; n];
    let mut exact = 0usize;
    for (example, (true_set, predicted_set)) in truth.iter().zip(predicted).enumerate() {
        let true_mask = class_mask("true", true_set, example, n)?;
        let predicted_mask = class_mask("predicted", predicted_set, example, n)?;
        for c in 0..n {
            support[c] += u64::from(true_mask[c]);
            predicted_counts[c] += u64::from(predicted_mask[c]);
            true_positives[c] += u64::from(true_mask[c] && predicted_mask[c]);
        }
        if true_mask == predicted_mask {
            exact += 1;
        }
    }
    let per_class: Vec<ClassScores> = (0..n)
        .map(|c| {
            let precision = ratio(true_positives[c], predicted_counts[c]);
            let recall = ratio(true_positives[c], support[c]);
            ClassScores {
                precision,
                recall,
                f1: harmonic_mean(precision, recall),
                support: support[c],
            }
        })
        .collect();
    Ok(ClassificationReport {
        accuracy: ratio(exact as u64, truth.len() as u64),
        examples: truth.len(),
        classes: classes.to_vec(),
        macro_f1: mean_f1(&per_class),
        per_class,
        confusion_matrix: None,
    })
}

fn check_lengths(truth: usize, predicted: usize) -> Result<(), ReportError> {
    if truth == predicted {
        Ok(())
    } else {
        Err(ReportError::LengthMismatch { truth, predicted })
    }
}

fn check_index(
    which: &'static str,
    index: usize,
    example: usize,
    classes: usize,
) -> Result<(), ReportError> {
    if index < classes {
        Ok(())
    } else {
        Err(ReportError::ClassOutOfRange {
            which,
            index,
            example,
            classes,
        })
    }
}

fn class_mask(
    which: &'static str,
    set: &[usize],
    example: usize,
    classes: usize,
) -> Result<Vec<bool>, ReportError> {
    let mut mask = vec![false; classes];
    for &index in set {
        check_index(which, index, example, classes)?;
        mask[index] = true;
    }
    Ok(mask)
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn harmonic_mean(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

fn mean_f1(per_class: &[ClassScores]) -> f64 {
    if per_class.is_empty() {
        return 0.0;
    }
    per_class.iter().map(|scores| scores.f1).sum::<f64>() / per_class.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(classes: &[&str]) -> Vec<String> {
        classes.iter().map(|c| c.to_string()).collect()
    }

    fn assert_close(got: f64, want: f64, what: &str) {
        assert!((got - want).abs() < 1e-12, "{what}: got {got}, want {want}");
    }

    /// Three classes. True `a`: predicted a, a, b. True `b`: b, b, b, c. True `c`: a, c.
    #[test]
    fn three_classes_by_hand() {
        let truth = [0, 0, 0, 1, 1, 1, 1, 2, 2];
        let predicted = [0, 0, 1, 1, 1, 1, 2, 0, 2];
        let report = classification_report(&truth, &predicted, &names(&["a", "b", "c"])).unwrap();
        assert_eq!(
            report.confusion_matrix,
            Some(vec![vec![2, 1, 0], vec![0, 3, 1], vec![1, 0, 1]])
        );
        assert_close(report.accuracy, 6.0 / 9.0, "accuracy");
        // a: tp 2, predicted 3 (2 + 0 + 1), true 3.
        assert_close(report.per_class[0].precision, 2.0 / 3.0, "precision a");
        assert_close(report.per_class[0].recall, 2.0 / 3.0, "recall a");
        // b: tp 3, predicted 4, true 4.
        assert_close(report.per_class[1].precision, 0.75, "precision b");
        assert_close(report.per_class[1].recall, 0.75, "recall b");
        // c: tp 1, predicted 2, true 2.
        assert_close(report.per_class[2].f1, 0.5, "f1 c");
        let supports: Vec<u64> = report.per_class.iter().map(|s| s.support).collect();
        assert_eq!(supports, [3, 4, 2]);
        assert_close(report.macro_f1, (2.0 / 3.0 + 0.75 + 0.5) / 3.0, "macro f1");
    }

    /// Class `c` has two true examples but is never predicted.
    #[test]
    fn never_predicted_class_has_zero_precision() {
        let truth = [0, 1, 1, 2, 2];
        let predicted = [0, 1, 0, 1, 0];
        let report = classification_report(&truth, &predicted, &names(&["a", "b", "c"])).unwrap();
        assert_eq!(
            report.confusion_matrix,
            Some(vec![vec![1, 0, 0], vec![1, 1, 0], vec![1, 1, 0]])
        );
        assert_eq!(report.per_class[2].precision, 0.0);
        assert_eq!(report.per_class[2].recall, 0.0);
        assert_eq!(report.per_class[2].f1, 0.0);
        assert_eq!(report.per_class[2].support, 2);
        // a: tp 1, predicted 3, true 1, so F1 = 2 * (1/3) / (4/3) = 1/2.
        assert_close(report.per_class[0].precision, 1.0 / 3.0, "precision a");
        assert_close(report.per_class[0].f1, 0.5, "f1 a");
        assert_close(report.accuracy, 0.4, "accuracy");
    }

    #[test]
    fn class_without_examples_has_zero_recall() {
        let report = classification_report(&[0, 0], &[0, 1], &names(&["a", "b"])).unwrap();
        assert_eq!(report.per_class[1].recall, 0.0);
        assert_eq!(report.per_class[1].support, 0);
        assert_close(report.per_class[0].recall, 0.5, "recall a");
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let error = classification_report(&[0, 2], &[0, 1], &names(&["a", "b"])).unwrap_err();
        assert_eq!(
            error,
            ReportError::ClassOutOfRange {
                which: "true",
                index: 2,
                example: 1,
                classes: 2
            }
        );
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let error = classification_report(&[0, 1], &[0], &names(&["a", "b"])).unwrap_err();
        assert_eq!(
            error,
            ReportError::LengthMismatch {
                truth: 2,
                predicted: 1
            }
        );
    }

    /// Sets: {a,b} vs {a,b} exact; {b} vs {b,c}; {} vs {}; {c} vs {a}.
    #[test]
    fn multi_label_by_hand() {
        let truth = vec![vec![0, 1], vec![1], vec![], vec![2]];
        let predicted = vec![vec![1, 0], vec![1, 2], vec![], vec![0]];
        let report = multi_label_report(&truth, &predicted, &names(&["a", "b", "c"])).unwrap();
        assert_close(report.accuracy, 0.5, "sample accuracy");
        // a: tp 1, predicted 2, true 1.
        assert_close(report.per_class[0].precision, 0.5, "precision a");
        assert_close(report.per_class[0].recall, 1.0, "recall a");
        // b: tp 2, predicted 2, true 2.
        assert_close(report.per_class[1].f1, 1.0, "f1 b");
        // c: tp 0, predicted 1, true 1.
        assert_eq!(report.per_class[2].f1, 0.0);
        let supports: Vec<u64> = report.per_class.iter().map(|s| s.support).collect();
        assert_eq!(supports, [1, 2, 1]);
        assert!(report.is_multi_label());
    }

    #[test]
    fn json_keys_follow_class_order() {
        let report = classification_report(&[1, 0], &[1, 1], &names(&["zeta", "alpha"])).unwrap();
        let json = serde_json::to_string(&report).unwrap();
        let zeta = json.find("\"zeta\":{").unwrap();
        let alpha = json.find("\"alpha\":{").unwrap();
        assert!(zeta < alpha, "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value["confusion_matrix"],
            serde_json::json!([[0, 1], [0, 1]])
        );
        assert_eq!(value["per_class"]["alpha"]["precision"], 0.5);
        assert_eq!(value["accuracy"], 0.5);
    }
}
