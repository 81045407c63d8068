//! A TF-IDF and logistic-regression baseline, to put a classifier's scores in context.
//!
//! The features follow scikit-learn's `TfidfVectorizer(ngram_range=(1, 2),
//! sublinear_tf=True)`: lowercased text, tokens of 2 or more word characters, word 1-
//! and 2-grams, term frequency `1 + ln(tf)`, smooth IDF `ln((1 + n) / (1 + df)) + 1`, and
//! rows scaled to unit L2 norm. The model follows scikit-learn's `LogisticRegression()`:
//! an L2 penalty with `C = 1` on the weights but not on the intercepts, a single
//! logistic output for two classes and a multinomial (softmax) model for more, fitted
//! by L-BFGS. The fit is deterministic: it starts from zeros, and every parallel sum
//! adds its terms in a fixed order.

use std::collections::VecDeque;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// Errors of fitting the baseline.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BaselineError {
    /// Texts and labels differ in length.
    #[error("{texts} training texts but {labels} labels")]
    LengthMismatch {
        /// Number of texts.
        texts: usize,
        /// Number of labels.
        labels: usize,
    },
    /// The training labels contain fewer than 2 distinct classes.
    #[error("the baseline's training data has {found} distinct class(es); it needs examples of at least 2 classes")]
    TooFewClasses {
        /// Distinct classes found.
        found: usize,
    },
    /// A label is not below the number of classes.
    #[error("training label {label} at example {example} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// 0-based position of the example.
        example: usize,
        /// Number of classes.
        classes: usize,
    },
    /// No training text contains a token of 2 or more word characters.
    #[error(
        "no training text contains a word of 2 or more letters or digits, so there are no features"
    )]
    EmptyVocabulary,
}

/// Returns scikit-learn's default tokens of `text`: the text is lowercased, and every
/// maximal run of 2 or more word characters (letters, digits, `_`) is a token.
pub fn word_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    let mut chars_in_run = 0usize;
    for (offset, ch) in lower.char_indices() {
        if ch.is_alphanumeric() || ch == '_' {
            if start.is_none() {
                start = Some(offset);
                chars_in_run = 0;
            }
            chars_in_run += 1;
        } else if let Some(begin) = start.take() {
            if chars_in_run >= 2 {
                tokens.push(lower[begin..offset].to_string());
            }
        }
    }
    if let Some(begin) = start {
        if chars_in_run >= 2 {
            tokens.push(lower[begin..].to_string());
        }
    }
    tokens
}

/// Returns the word 1-grams and 2-grams of `text`, 2-grams joined by one space.
fn ngrams(text: &str) -> Vec<String> {
    let tokens = word_tokens(text);
    let mut grams = Vec::with_capacity(tokens.len() * 2);
    for pair in tokens.windows(2) {
        grams.push(format!("{} {}", pair[0], pair[1]));
    }
    grams.extend(tokens);
    grams
}

/// A sparse matrix in compressed sparse row form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseMatrix {
    /// Number of columns.
    pub n_cols: usize,
    /// Row `r` has its entries at `indptr[r]..indptr[r + 1]`, so `n_rows + 1` offsets.
    pub indptr: Vec<usize>,
    /// Column of each entry, increasing within a row.
    pub indices: Vec<u32>,
    /// Value of each entry.
    pub values: Vec<f64>,
}

impl SparseMatrix {
    /// Builds a matrix from rows of `(column, value)` pairs sorted by column.
    pub fn from_rows(rows: Vec<Vec<(u32, f64)>>, n_cols: usize) -> Self {
        let mut matrix = Self {
            n_cols,
            indptr: Vec::with_capacity(rows.len() + 1),
            ..Self::default()
        };
        matrix.indptr.push(0);
        for row in rows {
            for (column, value) in row {
                matrix.indices.push(column);
                matrix.values.push(value);
            }
            matrix.indptr.push(matrix.indices.len());
        }
        matrix
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Returns row `r` as column indices and values.
    pub fn row(&self, r: usize) -> (&[u32], &[f64]) {
        let range = self.indptr[r]..self.indptr[r + 1];
        (&self.indices[range.clone()], &self.values[range])
    }

    /// Returns the transpose, `[n_cols, n_rows]`, also in row form.
    pub fn transpose(&self) -> Self {
        let mut counts = vec![0usize; self.n_cols + 1];
        for &column in &self.indices {
            counts[column as usize + 1] += 1;
        }
        for c in 0..self.n_cols {
            counts[c + 1] += counts[c];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut indices = vec![0u32; self.indices.len()];
        let mut values = vec![0f64; self.values.len()];
        for r in 0..self.n_rows() {
            let (columns, row_values) = self.row(r);
            for (&column, &value) in columns.iter().zip(row_values) {
                let slot = next[column as usize];
                indices[slot] = r as u32;
                values[slot] = value;
                next[column as usize] += 1;
            }
        }
        Self {
            n_cols: self.n_rows(),
            indptr,
            indices,
            values,
        }
    }
}

/// TF-IDF features of word 1- and 2-grams, as described in the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct TfidfVectorizer {
    vocabulary: FxHashMap<String, u32>,
    idf: Vec<f64>,
}

/// Documents handled together when counting document frequencies in parallel.
const DF_CHUNK: usize = 512;

impl TfidfVectorizer {
    /// Learns the vocabulary (every n-gram of `texts`, indexed in sorted order) and the
    /// IDF of each term.
    pub fn fit(texts: &[&str]) -> Self {
        let partial: Vec<FxHashMap<String, u32>> = texts
            .par_chunks(DF_CHUNK)
            .map(|chunk| {
                let mut df: FxHashMap<String, u32> = FxHashMap::default();
                for text in chunk {
                    let mut grams = ngrams(text);
                    grams.sort_unstable();
                    grams.dedup();
                    for gram in grams {
                        *df.entry(gram).or_default() += 1;
                    }
                }
                df
            })
            .collect();
        let mut df: FxHashMap<String, u32> = FxHashMap::default();
        for part in partial {
            for (gram, count) in part {
                *df.entry(gram).or_default() += count;
            }
        }
        let mut terms: Vec<(String, u32)> = df.into_iter().collect();
        terms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let n = texts.len() as f64;
        let idf = terms
            .iter()
            .map(|(_, count)| ((1.0 + n) / (1.0 + f64::from(*count))).ln() + 1.0)
            .collect();
        let vocabulary = terms
            .into_iter()
            .enumerate()
            .map(|(index, (term, _))| (term, index as u32))
            .collect();
        Self { vocabulary, idf }
    }

    /// Number of features (terms in the vocabulary).
    pub fn n_features(&self) -> usize {
        self.idf.len()
    }

    /// Returns the feature index of `term` (a word or two words joined by a space).
    pub fn index(&self, term: &str) -> Option<u32> {
        self.vocabulary.get(term).copied()
    }

    /// Returns the IDF of each feature, by index.
    pub fn idf(&self) -> &[f64] {
        &self.idf
    }

    /// Returns the TF-IDF rows of `texts`, `[texts, n_features]`, each of unit L2 norm
    /// (rows without a known term stay empty). Terms not in the vocabulary are ignored.
    pub fn transform(&self, texts: &[&str]) -> SparseMatrix {
        let rows: Vec<Vec<(u32, f64)>> = texts.par_iter().map(|text| self.row(text)).collect();
        SparseMatrix::from_rows(rows, self.n_features())
    }

    fn row(&self, text: &str) -> Vec<(u32, f64)> {
        let mut indices: Vec<u32> = ngrams(text)
            .iter()
            .filter_map(|gram| self.index(gram))
            .collect();
        indices.sort_unstable();
        let mut row: Vec<(u32, f64)> = Vec::new();
        for index in indices {
            match row.last_mut() {
                Some((last, count)) if *last == index => *count += 1.0,
                _ => row.push((index, 1.0)),
            }
        }
        for (index, value) in &mut row {
            *value = (1.0 + value.ln()) * self.idf[*index as usize];
        }
        let norm = row.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            for (_, value) in &mut row {
                *value /= norm;
            }
        }
        row
    }
}

/// Settings of [`LogisticRegression::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Inverse strength of the L2 penalty (scikit-learn's `C`).
    pub c: f64,
    /// Maximum L-BFGS iterations.
    pub max_iter: usize,
    /// Converged when every gradient component of the mean loss is at most this.
    pub gradient_tolerance: f64,
    /// Correction pairs L-BFGS keeps.
    pub memory: usize,
}

impl Default for FitOptions {
    /// `C = 1`, up to 1000 iterations, gradient tolerance `1e-5` (tighter than
    /// scikit-learn's `1e-4` with 100 iterations), 10 correction pairs.
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1000,
            gradient_tolerance: 1e-5,
            memory: 10,
        }
    }
}

/// Outcome of an L-BFGS fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitSummary {
    /// Iterations run.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached (false when stopped by `max_iter` or
    /// when the line search made no progress).
    pub converged: bool,
    /// Final value of the objective (mean loss plus penalty).
    pub objective: f64,
}

/// The penalized mean logistic loss of a training set, with its gradient.
///
/// Parameters are laid out as the weights `[n_features, outputs]` (feature-major), then
/// the `outputs` intercepts. `outputs` is 1 for two classes (class 1 is the positive
/// class) and the number of classes otherwise. The objective is
/// `mean_i loss_i + ||W||² / (2 C n)`, scikit-learn's objective divided by `C n`, which
/// has the same minimum.
pub struct LogisticObjective<'a> {
    x: &'a SparseMatrix,
    x_t: SparseMatrix,
    labels: &'a [usize],
    outputs: usize,
    c: f64,
}

impl<'a> LogisticObjective<'a> {
    /// Sets up the objective of rows `x` with class indices `labels` in `0..n_classes`.
    pub fn new(x: &'a SparseMatrix, labels: &'a [usize], n_classes: usize, c: f64) -> Self {
        Self {
            x,
            x_t: x.transpose(),
            labels,
            outputs: if n_classes == 2 { 1 } else { n_classes },
            c,
        }
    }

    /// Number of parameters: weights and intercepts.
    pub fn n_params(&self) -> usize {
        (self.x.n_cols + 1) * self.outputs
    }

    /// Returns the objective at `params` and its gradient.
    pub fn value_and_gradient(&self, params: &[f64]) -> (f64, Vec<f64>) {
        let k = self.outputs;
        let n = self.x.n_rows() as f64;
        let (weights, intercepts) = params.split_at(self.x.n_cols * k);
        // Per row: its loss and the derivative of the loss with respect to its scores.
        let per_row: Vec<(f64, Vec<f64>)> = (0..self.x.n_rows())
            .into_par_iter()
            .map(|r| {
                let scores = row_scores(self.x, r, weights, intercepts, k);
                row_loss(&scores, self.labels[r], k)
            })
            .collect();
        let loss: f64 = per_row.iter().map(|(loss, _)| loss).sum();
        let penalty: f64 = weights.iter().map(|w| w * w).sum();
        let value = loss / n + penalty / (2.0 * self.c * n);

        let mut gradient = vec![0.0; params.len()];
        let (weight_grad, intercept_grad) = gradient.split_at_mut(self.x.n_cols * k);
        weight_grad
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(feature, grad)| {
                let (rows, values) = self.x_t.row(feature);
                for (&r, &value) in rows.iter().zip(values) {
                    for (g, d) in grad.iter_mut().zip(&per_row[r as usize].1) {
                        *g += value * d;
                    }
                }
                for (o, g) in grad.iter_mut().enumerate() {
                    *g = *g / n + weights[feature * k + o] / (self.c * n);
                }
            });
        for (_, derivative) in &per_row {
            for (g, d) in intercept_grad.iter_mut().zip(derivative) {
                *g += d / n;
            }
        }
        (value, gradient)
    }
}

/// Returns the scores `[outputs]` of row `r`.
fn row_scores(
    x: &SparseMatrix,
    r: usize,
    weights: &[f64],
    intercepts: &[f64],
    k: usize,
) -> Vec<f64> {
    let mut scores = intercepts.to_vec();
    let (columns, values) = x.row(r);
    for (&column, &value) in columns.iter().zip(values) {
        let w = &weights[column as usize * k..column as usize * k + k];
        for (s, wk) in scores.iter_mut().zip(w) {
            *s += value * wk;
        }
    }
    scores
}

/// Returns the loss of one row with true class `label`, and its derivative with respect
/// to the scores.
fn row_loss(scores: &[f64], label: usize, k: usize) -> (f64, Vec<f64>) {
    if k == 1 {
        let z = scores[0];
        let y = if label == 1 { 1.0 } else { 0.0 };
        // ln(1 + e^z) - y z, computed without overflow.
        let softplus = z.max(0.0) + (-z.abs()).exp().ln_1p();
        return (softplus - y * z, vec![sigmoid(z) - y]);
    }
    let probabilities = softmax(scores);
    let loss = -probabilities[label].max(f64::MIN_POSITIVE).ln();
    let mut derivative = probabilities;
    derivative[label] -= 1.0;
    (loss, derivative)
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimizes `objective` from `start` with L-BFGS and a backtracking (Armijo) line search.
fn minimize_lbfgs(
    objective: &LogisticObjective<'_>,
    start: Vec<f64>,
    options: &FitOptions,
) -> (Vec<f64>, FitSummary) {
    let mut params = start;
    let (mut value, mut gradient) = objective.value_and_gradient(&params);
    let mut pairs: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::new();
    let mut summary = FitSummary {
        iterations: 0,
        converged: false,
        objective: value,
    };
    for iteration in 0..options.max_iter {
        let max_gradient = gradient.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        if max_gradient <= options.gradient_tolerance {
            summary.converged = true;
            break;
        }
        let mut direction = two_loop_direction(&gradient, &pairs);
        let mut slope = dot(&gradient, &direction);
        if slope >= 0.0 {
            pairs.clear();
            direction = gradient.iter().map(|g| -g).collect();
            slope = -dot(&gradient, &gradient);
        }
        // The first step has no curvature estimate, so it moves by at most 1 in norm.
        let mut step = if pairs.is_empty() {
            (1.0 / dot(&gradient, &gradient).sqrt()).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..60 {
            let candidate: Vec<f64> = params
                .iter()
                .zip(&direction)
                .map(|(p, d)| p + step * d)
                .collect();
            let (candidate_value, candidate_gradient) = objective.value_and_gradient(&candidate);
            if candidate_value <= value + 1e-4 * step * slope {
                accepted = Some((candidate, candidate_value, candidate_gradient));
                break;
            }
            step *= 0.5;
        }
        summary.iterations = iteration + 1;
        let Some((next, next_value, next_gradient)) = accepted else {
            break;
        };
        let s: Vec<f64> = next.iter().zip(&params).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = next_gradient
            .iter()
            .zip(&gradient)
            .map(|(a, b)| a - b)
            .collect();
        let curvature = dot(&s, &y);
        if curvature > 1e-12 * dot(&y, &y).max(f64::MIN_POSITIVE) {
            if pairs.len() == options.memory.max(1) {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / curvature));
        }
        let decrease = value - next_value;
        params = next;
        value = next_value;
        gradient = next_gradient;
        summary.objective = value;
        if decrease <= f64::EPSILON * value.abs().max(1.0) {
            break;
        }
    }
    summary.objective = value;
    (params, summary)
}

/// Returns `-H g`, L-BFGS's approximation of the Newton direction.
fn two_loop_direction(gradient: &[f64], pairs: &VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q = gradient.to_vec();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y, rho) in pairs.iter().rev() {
        let alpha = rho * dot(s, &q);
        for (qi, yi) in q.iter_mut().zip(y) {
            *qi -= alpha * yi;
        }
        alphas.push(alpha);
    }
    if let Some((s, y, _)) = pairs.back() {
        let scale = dot(s, y) / dot(y, y);
        for qi in &mut q {
            *qi *= scale;
        }
    }
    for ((s, y, rho), alpha) in pairs.iter().zip(alphas.iter().rev()) {
        let beta = rho * dot(y, &q);
        for (qi, si) in q.iter_mut().zip(s) {
            *qi += (alpha - beta) * si;
        }
    }
    q.iter().map(|v| -v).collect()
}

/// A fitted logistic-regression classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticRegression {
    n_classes: usize,
    outputs: usize,
    /// `[n_features, outputs]`, feature-major.
    weights: Vec<f64>,
    intercepts: Vec<f64>,
}

impl LogisticRegression {
    /// Fits the model to rows `x` with class indices `labels` in `0..n_classes`.
    pub fn fit(
        x: &SparseMatrix,
        labels: &[usize],
        n_classes: usize,
        options: &FitOptions,
    ) -> Result<(Self, FitSummary), BaselineError> {
        if x.n_rows() != labels.len() {
            return Err(BaselineError::LengthMismatch {
                texts: x.n_rows(),
                labels: labels.len(),
            });
        }
        let mut seen = vec![false; n_classes];
        for (example, &label) in labels.iter().enumerate() {
            if label >= n_classes {
                return Err(BaselineError::LabelOutOfRange {
                    label,
                    example,
                    classes: n_classes,
                });
            }
            seen[label] = true;
        }
        let found = seen.iter().filter(|&&s| s).count();
        if found < 2 {
            return Err(BaselineError::TooFewClasses { found });
        }
        let objective = LogisticObjective::new(x, labels, n_classes, options.c);
        let (params, summary) =
            minimize_lbfgs(&objective, vec![0.0; objective.n_params()], options);
        let k = objective.outputs;
        let (weights, intercepts) = params.split_at(x.n_cols * k);
        let model = Self {
            n_classes,
            outputs: k,
            weights: weights.to_vec(),
            intercepts: intercepts.to_vec(),
        };
        Ok((model, summary))
    }

    /// Returns the class probabilities `[rows, n_classes]` of `x`.
    pub fn predict_proba(&self, x: &SparseMatrix) -> Vec<Vec<f64>> {
        (0..x.n_rows())
            .into_par_iter()
            .map(|r| {
                let scores = row_scores(x, r, &self.weights, &self.intercepts, self.outputs);
                if self.outputs == 1 {
                    let p = sigmoid(scores[0]);
                    vec![1.0 - p, p]
                } else {
                    softmax(&scores)
                }
            })
            .collect()
    }

    /// Returns the most probable class of each row of `x` (the lowest index on ties).
    pub fn predict(&self, x: &SparseMatrix) -> Vec<usize> {
        self.predict_proba(x)
            .iter()
            .map(|row| {
                let mut best = 0;
                for (index, &p) in row.iter().enumerate() {
                    if p > row[best] {
                        best = index;
                    }
                }
                best
            })
            .collect()
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }
}

/// TF-IDF features and a logistic-regression model fitted on them.
#[derive(Debug, Clone)]
pub struct TfidfLogisticBaseline {
    /// The features.
    pub vectorizer: TfidfVectorizer,
    /// The model.
    pub model: LogisticRegression,
    /// Outcome of the fit.
    pub summary: FitSummary,
}

impl TfidfLogisticBaseline {
    /// Fits the baseline to `texts` with class indices `labels` in `0..n_classes`.
    pub fn fit(
        texts: &[&str],
        labels: &[usize],
        n_classes: usize,
        options: &FitOptions,
    ) -> Result<Self, BaselineError> {
        if texts.len() != labels.len() {
            return Err(BaselineError::LengthMismatch {
                texts: texts.len(),
                labels: labels.len(),
            });
        }
        let vectorizer = TfidfVectorizer::fit(texts);
        if vectorizer.n_features() == 0 {
            return Err(BaselineError::EmptyVocabulary);
        }
        let x = vectorizer.transform(texts);
        let (model, summary) = LogisticRegression::fit(&x, labels, n_classes, options)?;
        Ok(Self {
            vectorizer,
            model,
            summary,
        })
    }

    /// Returns the predicted class index of each text.
    pub fn predict(&self, texts: &[&str]) -> Vec<usize> {
        self.model.predict(&self.vectorizer.transform(texts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: f64, want: f64, tolerance: f64, what: &str) {
        assert!(
            (got - want).abs() <= tolerance,
            "{what}: got {got}, want {want}"
        );
    }

    #[test]
    fn tokens_follow_default_pattern() {
        assert_eq!(
            word_tokens("I LOVED it!! A 10/10 film_x, très-bon <br />"),
            ["loved", "it", "10", "10", "film_x", "très", "bon", "br"]
        );
    }

    /// Documents "the cat", "the dog", "the cat cat" (n = 3). Document frequencies:
    /// the 3, cat 2, dog 1, "the cat" 2, "the dog" 1, "cat cat" 1.
    #[test]
    fn tfidf_of_three_documents_by_hand() {
        let texts = ["The cat", "the dog", "the cat cat"];
        let vectorizer = TfidfVectorizer::fit(&texts);
        assert_eq!(vectorizer.n_features(), 6);
        let idf = |term: &str| vectorizer.idf()[vectorizer.index(term).unwrap() as usize];
        // idf = ln((1 + 3) / (1 + df)) + 1.
        assert_close(idf("the"), 1.0, 1e-12, "idf the");
        assert_close(idf("cat"), (4.0f64 / 3.0).ln() + 1.0, 1e-12, "idf cat");
        assert_close(idf("dog"), 2.0f64.ln() + 1.0, 1e-12, "idf dog");

        let x = vectorizer.transform(&texts);
        let value = |row: usize, term: &str| {
            let column = vectorizer.index(term).unwrap();
            let (columns, values) = x.row(row);
            columns
                .iter()
                .position(|&c| c == column)
                .map_or(0.0, |i| values[i])
        };
        // Row 3 "the cat cat": tf-idf the 1, cat (1 + ln 2)(1 + ln 4/3), "the cat" 1 + ln 4/3,
        // "cat cat" 1 + ln 2, then divided by the L2 norm of those four.
        let idf_cat = 1.0 + (4.0f64 / 3.0).ln();
        let idf_once = 1.0 + 2.0f64.ln();
        let raw = [1.0, (1.0 + 2.0f64.ln()) * idf_cat, idf_cat, idf_once];
        let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert_close(value(2, "the"), raw[0] / norm, 1e-12, "row 3 the");
        assert_close(value(2, "cat"), raw[1] / norm, 1e-12, "row 3 cat");
        assert_close(value(2, "the cat"), raw[2] / norm, 1e-12, "row 3 the cat");
        assert_close(value(2, "cat cat"), raw[3] / norm, 1e-12, "row 3 cat cat");
        assert_eq!(value(2, "dog"), 0.0);
        // Row 2 "the dog": the 1, dog 1 + ln 2, "the dog" 1 + ln 2.
        let norm = (1.0 + 2.0 * idf_once * idf_once).sqrt();
        assert_close(value(1, "dog"), idf_once / norm, 1e-12, "row 2 dog");
        assert_close(value(1, "the"), 1.0 / norm, 1e-12, "row 2 the");
    }

    #[test]
    fn unknown_terms_are_ignored() {
        let vectorizer = TfidfVectorizer::fit(&["good film"]);
        let x = vectorizer.transform(&["unseen words only"]);
        assert_eq!(x.row(0).0.len(), 0);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let x = SparseMatrix::from_rows(vec![vec![(0, 1.0), (2, 2.0)], vec![(1, 3.0)]], 3);
        let t = x.transpose();
        assert_eq!(t.n_rows(), 3);
        assert_eq!(t.row(2), (&[0u32][..], &[2.0][..]));
        assert_eq!(t.row(1), (&[1u32][..], &[3.0][..]));
    }

    /// Returns a small random sparse matrix with about a third of its entries empty.
    fn random_rows(n_rows: usize, n_cols: usize, seed: u64) -> SparseMatrix {
        let mut rng = crate::rng::Rng::seed(seed);
        let mut rows = Vec::new();
        for _ in 0..n_rows {
            let mut row = Vec::new();
            for column in 0..n_cols as u32 {
                if rng.below(3) > 0 {
                    row.push((column, rng.below(1000) as f64 / 500.0 - 1.0));
                }
            }
            rows.push(row);
        }
        SparseMatrix::from_rows(rows, n_cols)
    }

    fn check_gradient(n_classes: usize) {
        let x = random_rows(7, 5, 11);
        let labels: Vec<usize> = (0..7).map(|i| i % n_classes).collect();
        let objective = LogisticObjective::new(&x, &labels, n_classes, 0.7);
        let mut rng = crate::rng::Rng::seed(12);
        let params: Vec<f64> = (0..objective.n_params())
            .map(|_| rng.below(1000) as f64 / 250.0 - 2.0)
            .collect();
        let (_, gradient) = objective.value_and_gradient(&params);
        let h = 1e-6;
        for index in 0..params.len() {
            let mut plus = params.clone();
            plus[index] += h;
            let mut minus = params.clone();
            minus[index] -= h;
            let numeric = (objective.value_and_gradient(&plus).0
                - objective.value_and_gradient(&minus).0)
                / (2.0 * h);
            assert_close(
                gradient[index],
                numeric,
                1e-7,
                &format!("{n_classes} classes, parameter {index}"),
            );
        }
    }

    #[test]
    fn binary_gradient_matches_finite_differences() {
        check_gradient(2);
    }

    #[test]
    fn multinomial_gradient_matches_finite_differences() {
        check_gradient(3);
    }

    /// At the minimum of `mean loss + ||w||² / (2 C n)`, the gradient is zero.
    #[test]
    fn fit_reaches_zero_gradient() {
        let x = random_rows(20, 6, 13);
        let labels: Vec<usize> = (0..20).map(|i| (i * 7) % 3).collect();
        let options = FitOptions::default();
        let (model, summary) = LogisticRegression::fit(&x, &labels, 3, &options).unwrap();
        assert!(summary.converged, "{summary:?}");
        let objective = LogisticObjective::new(&x, &labels, 3, 1.0);
        let mut params = model.weights.clone();
        params.extend(&model.intercepts);
        let (_, gradient) = objective.value_and_gradient(&params);
        let max = gradient.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        assert!(max <= 1e-5, "max gradient {max}");
    }

    #[test]
    fn baseline_separates_obvious_classes() {
        let texts = [
            "good great film",
            "great acting, good story",
            "a good and great movie",
            "bad awful film",
            "awful acting, bad story",
            "a bad and awful movie",
            "dull plot, nothing happens",
            "so dull, a dull film",
            "dull and slow",
        ];
        let labels = [0, 0, 0, 1, 1, 1, 2, 2, 2];
        let baseline =
            TfidfLogisticBaseline::fit(&texts, &labels, 3, &FitOptions::default()).unwrap();
        assert!(baseline.summary.converged);
        let predicted = baseline.predict(&["great good", "awful, bad", "dull dull", "GOOD"]);
        assert_eq!(predicted, [0, 1, 2, 0]);
    }

    #[test]
    fn binary_baseline_predicts_positive_class() {
        let texts = ["yes yes", "yes indeed", "no no", "no way"];
        let baseline =
            TfidfLogisticBaseline::fit(&texts, &[1, 1, 0, 0], 2, &FitOptions::default()).unwrap();
        assert_eq!(baseline.predict(&["yes", "no"]), [1, 0]);
        let x = baseline.vectorizer.transform(&["yes"]);
        let probabilities = baseline.model.predict_proba(&x);
        assert_close(probabilities[0].iter().sum(), 1.0, 1e-12, "probability sum");
        assert!(probabilities[0][1] > 0.5);
    }

    #[test]
    fn single_class_is_an_error() {
        let result =
            TfidfLogisticBaseline::fit(&["aa bb", "cc dd"], &[1, 1], 2, &FitOptions::default());
        assert_eq!(
            result.err(),
            Some(BaselineError::TooFewClasses { found: 1 })
        );
    }
}
