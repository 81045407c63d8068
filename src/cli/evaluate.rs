//! `ulmfit evaluate`: score labelled data with classifier folders and print accuracy,
//! per-class precision, recall and F1, and the confusion matrix.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::data::DataArgs;
use super::predict::ScoringArgs;
use crate::model::classifier::argmax;
use crate::pipeline::baseline::{FitOptions, TfidfLogisticBaseline};
use crate::pipeline::class_report::{
    classification_report, multi_label_report, ClassificationReport,
};
use crate::pipeline::classify::split_labels;
use crate::pipeline::predict::{ensemble_probabilities, MultiLabel};
use crate::text::readers::{read_all, Document, LabelRequirement};

/// Arguments of `ulmfit evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,

    /// Labelled evaluation data: class folders, CSV or JSONL (see `--format`). Every
    /// label must be a class of the model. For a multi-label classifier, a label lists
    /// classes joined by the delimiter the classifier was trained with. Its report gives
    /// per-class precision, recall and F1 and sample accuracy (the predicted set equals
    /// the true set), without a confusion matrix.
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,

    /// Print one JSON object: `accuracy` (a fraction), `examples`, `classes`, `per_class`
    /// (`precision`, `recall`, `f1`, `support` by class), `macro_f1`, `multi_label`,
    /// `confusion_matrix` (rows true classes, columns predicted, in `classes` order),
    /// `models`, and `baseline` (the same fields) with `--baseline`.
    #[arg(long)]
    pub json: bool,

    /// Also fit a TF-IDF (word 1- and 2-grams) and logistic-regression baseline on this
    /// labelled training data, read with the same data options, and report its scores on
    /// `--data`. Single-label classifiers only.
    #[arg(long, value_name = "TRAIN_PATH")]
    pub baseline: Option<PathBuf>,

    #[command(flatten)]
    pub data_options: DataArgs,
}

/// True classes of the evaluation documents.
enum Truth {
    /// One class index per document.
    Single(Vec<usize>),
    /// A set of class indices per document.
    Multi(Vec<Vec<usize>>),
}

/// Returns the index of `label` in `classes`, or an error naming the label and where it
/// was read.
fn class_index(label: &str, classes: &[String], document: &Document) -> anyhow::Result<usize> {
    match classes.iter().position(|class| class == label) {
        Some(index) => Ok(index),
        None => bail!(
            "label `{label}` in {}:{} is not a class of the model (classes: {}); remove those documents or use a model trained with that class",
            document.origin.path.display(),
            document.origin.line,
            classes.join(", ")
        ),
    }
}

/// Maps the labels of `documents` to class indices, splitting multi-label labels on the
/// classifier's delimiter.
fn true_classes(
    documents: &[Document],
    classes: &[String],
    multi_label: Option<&MultiLabel>,
) -> anyhow::Result<Truth> {
    let label = |document: &Document| document.label.clone().unwrap_or_default();
    match multi_label {
        None => documents
            .iter()
            .map(|document| class_index(&label(document), classes, document))
            .collect::<anyhow::Result<_>>()
            .map(Truth::Single),
        Some(settings) => documents
            .iter()
            .map(|document| {
                split_labels(&label(document), &settings.delimiter)
                    .into_iter()
                    .map(|part| class_index(part, classes, document))
                    .collect::<anyhow::Result<Vec<usize>>>()
            })
            .collect::<anyhow::Result<_>>()
            .map(Truth::Multi),
    }
}

/// Runs `ulmfit evaluate`.
pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let models = args.scoring.load_models()?;
    let dirs: Vec<PathBuf> = models.iter().map(|model| model.dir.clone()).collect();
    let folder = models[0].config.clone();
    let classes = &folder.classes;

    let options = args.data_options.read_options(LabelRequirement::Required);
    let documents = read_all(std::slice::from_ref(&args.data), &options)?.documents;
    if documents.is_empty() {
        bail!("{} contains no labelled documents", args.data.display());
    }
    let truth = true_classes(&documents, classes, folder.multi_label.as_ref())?;
    let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
    tracing::info!(
        "scoring {} documents with {} model(s)",
        texts.len(),
        models.len()
    );
    let probabilities = ensemble_probabilities(&models, &texts, args.scoring.batch_size)?;
    let report = match (&truth, &folder.multi_label) {
        (Truth::Single(truth), _) => {
            let predicted: Vec<usize> = probabilities.iter().map(|row| argmax(row)).collect();
            classification_report(truth, &predicted, classes)?
        }
        (Truth::Multi(truth), Some(settings)) => {
            let predicted: Vec<Vec<usize>> = probabilities
                .iter()
                .map(|row| {
                    (0..row.len())
                        .filter(|&c| row[c] >= settings.threshold)
                        .collect()
                })
                .collect();
            multi_label_report(truth, &predicted, classes)?
        }
        (Truth::Multi(_), None) => bail!("multi-label labels read for a single-label model"),
    };

    let baseline = match &args.baseline {
        Some(path) => Some(fit_baseline(path, &args, &folder, &truth, &texts)?),
        None => None,
    };
    print_results(&args, &dirs, &report, baseline.as_ref())
}

/// Fits the TF-IDF baseline on the training data at `path` and scores the evaluation
/// texts with it.
fn fit_baseline(
    path: &PathBuf,
    args: &EvaluateArgs,
    folder: &crate::pipeline::predict::ClassifierFolderConfig,
    truth: &Truth,
    texts: &[&str],
) -> anyhow::Result<ClassificationReport> {
    let Truth::Single(truth) = truth else {
        bail!(
            "--baseline supports single-label classifiers only; drop it for this multi-label model"
        );
    };

    let options = args.data_options.read_options(LabelRequirement::Required);
    let train = read_all(std::slice::from_ref(path), &options)?.documents;
    let labels: Vec<usize> = train
        .iter()
        .map(|d| class_index(d.label.as_deref().unwrap_or_default(), &folder.classes, d))
        .collect::<anyhow::Result<_>>()?;
    let train_texts: Vec<&str> = train.iter().map(|d| d.text.as_str()).collect();

    tracing::info!(
        "fitting the TF-IDF baseline on {} documents",
        train_texts.len()
    );
    let baseline = TfidfLogisticBaseline::fit(
        &train_texts,
        &labels,
        folder.classes.len(),
        &FitOptions::default(),
    )
    .with_context(|| format!("failed to fit the baseline on {}", path.display()))?;
    if !baseline.summary.converged {
        tracing::warn!(
            "the baseline's L-BFGS fit stopped after {} iterations before reaching its gradient tolerance",
            baseline.summary.iterations
        );
    }
    tracing::info!(
        "baseline: {} features, {} L-BFGS iterations",
        baseline.vectorizer.n_features(),
        baseline.summary.iterations
    );

    let predicted = baseline.predict(texts);
    Ok(classification_report(truth, &predicted, &folder.classes)?)
}

fn print_results(
    args: &EvaluateArgs,
    dirs: &[PathBuf],
    report: &ClassificationReport,
    baseline: Option<&ClassificationReport>,
) -> anyhow::Result<()> {
    if args.json {
        let mut object = serde_json::to_value(report)?;
        object["models"] = dirs
            .iter()
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .into();
        if let Some(baseline) = baseline {
            object["baseline"] = serde_json::to_value(baseline)?;
        }
        println!("{object}");
        return Ok(());
    }
    let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut text = format!("model: {}\n", names.join(" + "));
    text.push_str(&format_report(report));
    if let (Some(baseline), Some(path)) = (baseline, &args.baseline) {
        let _ = writeln!(
            text,
            "\nbaseline: TF-IDF word 1-2 grams + logistic regression, trained on {}",
            path.display()
        );
        text.push_str(&format_report(baseline));
    }
    print!("{text}");
    Ok(())
}

/// Formats a report as aligned tables: accuracy, per-class scores, then the confusion
/// matrix for single-label reports.
pub fn format_report(report: &ClassificationReport) -> String {
    let mut text = String::new();
    let kind = if report.is_multi_label() {
        "sample accuracy (exact set match)"
    } else {
        "accuracy"
    };
    let _ = writeln!(
        text,
        "{kind} {:.4} ({} examples), macro F1 {:.4}",
        report.accuracy, report.examples, report.macro_f1
    );
    let width = report
        .classes
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0)
        .max("class".len());
    let _ = writeln!(
        text,
        "\n{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}",
        "class", "precision", "recall", "f1", "support"
    );
    for (class, scores) in report.classes.iter().zip(&report.per_class) {
        let _ = writeln!(
            text,
            "{class:<width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>9}",
            scores.precision, scores.recall, scores.f1, scores.support
        );
    }
    if let Some(matrix) = &report.confusion_matrix {
        let cell = matrix
            .iter()
            .flatten()
            .map(|count| count.to_string().len())
            .chain(report.classes.iter().map(|c| c.chars().count()))
            .max()
            .unwrap_or(1);
        let corner = "true \\ predicted";
        let width = width.max(corner.len());
        let _ = write!(text, "\nconfusion matrix\n{corner:<width$}");
        for class in &report.classes {
            let _ = write!(text, "  {class:>cell$}");
        }
        text.push('\n');
        for (class, row) in report.classes.iter().zip(matrix) {
            let _ = write!(text, "{class:<width$}");
            for count in row {
                let _ = write!(text, "  {count:>cell$}");
            }
            text.push('\n');
        }
    }
    text
}
