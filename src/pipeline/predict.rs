//! Classifier folders and scoring texts with them.
//!
//! | file | contents |
//! | --- | --- |
//! | `model.safetensors` | encoder, head and BatchNorm running statistics |
//! | `config.json` | [`ClassifierFolderConfig`]: architecture, classes, direction |
//! | `vocab.txt`, `vocab.json` | the vocabulary and the tokenizer rules it was built with |
//! | `tokenizer.json` | the subword model, for subword vocabularies only |

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::kernels::precision::Precision;
use crate::model::classifier::softmax;
use crate::model::{Classifier, ClassifierConfig};
use crate::text::rules::RuleSet;
use crate::text::subword::SubwordModel;
use crate::text::tokenizer::Tokenizer;
use crate::text::vocab::{Vocab, VocabKind};
use crate::text::BOS;

/// File name of the weights in a classifier folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the configuration in a classifier folder.
pub const CONFIG_FILE: &str = "config.json";
/// Value of `kind` in a classifier folder's configuration.
pub const CLASSIFIER_KIND: &str = "classifier";
/// Documents scored together when the caller gives no batch size.
pub const DEFAULT_PREDICT_BATCH: usize = 64;

/// Contents of a classifier folder's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierFolderConfig {
    /// Always [`CLASSIFIER_KIND`].
    pub kind: String,
    /// The architecture.
    pub model: ClassifierConfig,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Whether the model reads every document's tokens in reverse order.
    #[serde(default)]
    pub backwards: bool,
    /// Multi-label settings, `None` for a single-label (softmax) classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabel>,
}

/// Settings of a multi-label classifier: independent sigmoid outputs per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabel {
    /// Probability at or above which a prediction includes a class.
    pub threshold: f32,
    /// Separator of class names in a label, such as `|`.
    pub delimiter: String,
}

impl ClassifierFolderConfig {
    /// Returns the predicted classes of one row of probabilities: every class at or
    /// above the threshold for a multi-label classifier, else the most probable class.
    pub fn predicted_classes(&self, probabilities: &[f32]) -> Vec<String> {
        match &self.multi_label {
            Some(settings) => self
                .classes
                .iter()
                .zip(probabilities)
                .filter(|(_, &p)| p >= settings.threshold)
                .map(|(class, _)| class.clone())
                .collect(),
            None => vec![self.classes[crate::model::classifier::argmax(probabilities)].clone()],
        }
    }
}

/// A classifier folder loaded for scoring.
pub struct LoadedClassifier {
    /// The folder's configuration.
    pub config: ClassifierFolderConfig,
    /// The network.
    pub model: Classifier,
    /// The vocabulary.
    pub vocab: Vocab,
    /// The tokenizer the vocabulary was built with.
    pub tokenizer: Tokenizer,
    /// The folder it was loaded from.
    pub dir: PathBuf,
}

/// Writes `model` and `config` into `dir` and copies the vocabulary files (and the
/// subword model, when present) from `vocab_dir`.
pub fn save_classifier(
    dir: &Path,
    config: &ClassifierFolderConfig,
    model: &Classifier,
    vocab_dir: &Path,
) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    model
        .save(dir.join(WEIGHTS_FILE))
        .with_context(|| format!("failed to write the classifier in {}", dir.display()))?;
    let path = dir.join(CONFIG_FILE);
    fs::write(&path, serde_json::to_string_pretty(config)? + "\n")
        .with_context(|| format!("failed to write {}", path.display()))?;
    if fs::canonicalize(vocab_dir).ok() != fs::canonicalize(dir).ok() {
        for name in [
            crate::text::vocab::VOCAB_TXT,
            crate::text::vocab::VOCAB_JSON,
            crate::text::subword::TOKENIZER_JSON,
        ] {
            let from = vocab_dir.join(name);
            if from.exists() {
                let to = dir.join(name);
                fs::copy(&from, &to).with_context(|| {
                    format!("failed to copy {} to {}", from.display(), to.display())
                })?;
            }
        }
    }
    Ok(())
}

/// Loads the vocabulary and tokenizer stored in `dir`.
pub fn load_vocab_and_tokenizer(dir: &Path) -> anyhow::Result<(Vocab, Tokenizer)> {
    let (vocab, header) = Vocab::load_with_header(dir)
        .with_context(|| format!("failed to load the vocabulary in {}", dir.display()))?;
    let rules = RuleSet::by_name(&header.rules)
        .with_context(|| format!("invalid rule set in the vocabulary of {}", dir.display()))?;
    let tokenizer = match header.kind {
        VocabKind::Word => Tokenizer::word(rules),
        VocabKind::Unigram | VocabKind::Bpe => Tokenizer::subword(
            rules,
            SubwordModel::load(dir).with_context(|| {
                format!("failed to load the subword model in {}", dir.display())
            })?,
        ),
    };
    Ok((vocab, tokenizer))
}

impl LoadedClassifier {
    /// Loads the classifier folder `dir` onto the CPU.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// Loads the classifier folder `dir` onto `device`.
    pub fn load_on(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = fs::read_to_string(&config_path).with_context(|| {
            format!(
                "failed to read {}; is {} a folder written by `ulmfit classify`?",
                config_path.display(),
                dir.display()
            )
        })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("invalid JSON in {}", config_path.display()))?;
        // The kind is checked first, so a language-model folder gets this message rather
        // than one about a missing classifier field.
        let kind = value.get("kind").and_then(|kind| kind.as_str());
        if kind != Some(CLASSIFIER_KIND) {
            anyhow::bail!(
                "{} has kind `{}`, not `{CLASSIFIER_KIND}`, so {} is not a classifier; pass a \
                 folder written by `ulmfit classify`",
                config_path.display(),
                kind.unwrap_or("(none)"),
                dir.display()
            );
        }
        let config: ClassifierFolderConfig = serde_json::from_value(value)
            .with_context(|| format!("invalid classifier config {}", config_path.display()))?;
        if config.classes.len() != config.model.n_classes {
            anyhow::bail!(
                "{} lists {} classes but the model has {} outputs",
                config_path.display(),
                config.classes.len(),
                config.model.n_classes
            );
        }
        let (vocab, tokenizer) = load_vocab_and_tokenizer(dir)?;
        if vocab.len() != config.model.encoder.vocab_size {
            anyhow::bail!(
                "the vocabulary in {} has {} tokens but the model's embedding has {} rows",
                dir.display(),
                vocab.len(),
                config.model.encoder.vocab_size
            );
        }
        let model = Classifier::load(config.model.clone(), dir.join(WEIGHTS_FILE), device)
            .with_context(|| format!("failed to load the classifier in {}", dir.display()))?;
        Ok(Self {
            config,
            model,
            vocab,
            tokenizer,
            dir: dir.to_path_buf(),
        })
    }

    /// Sets the format of the encoder's matrix products for scoring and packs the LSTM
    /// weights in it once. bf16 and int8 give probabilities close to, but not equal
    /// to, f32's. On a CPU without AVX512-BF16 (bf16) or AVX512-VNNI (int8) they run
    /// on slower portable kernels; check [`Precision::check_cpu`] first to avoid that.
    pub fn set_precision(&mut self, precision: Precision) -> anyhow::Result<()> {
        self.model.set_precision(precision);
        self.model.pack_for_inference().with_context(|| {
            format!(
                "failed to pack the weights of {} for {precision}",
                self.dir.display()
            )
        })
    }

    /// Returns the token ids the model reads for `text`: tokenized, numericalized,
    /// reversed for a backward model, and `[xxbos]` when the text yields no token.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let tokens = self.tokenizer.tokenize(text)?;
        let mut ids = self.vocab.encode(&tokens);
        if ids.is_empty() {
            ids.push(self.vocab.id(BOS));
        }
        if self.config.backwards {
            ids.reverse();
        }
        Ok(ids)
    }

    /// Returns the class probabilities of each text, in input order. Texts are scored
    /// in batches of up to `batch_size` documents of similar length; the result does not
    /// depend on the batching.
    pub fn probabilities(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let encoded: Vec<Vec<u32>> = texts
            .iter()
            .map(|text| self.encode(text))
            .collect::<anyhow::Result<_>>()?;
        self.probabilities_of_ids(&encoded, batch_size)
    }

    /// Returns the class probabilities of token-id documents, in input order: softmax
    /// probabilities, or per-class sigmoids for a multi-label classifier.
    pub fn probabilities_of_ids(
        &self,
        documents: &[Vec<u32>],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let activation = match self.config.multi_label {
            Some(_) => Activation::Sigmoid,
            None => Activation::Softmax,
        };
        score_documents_with(&self.model, documents, batch_size, activation)
    }
}

/// Loads the classifier folders of an ensemble onto `device`, checking that they share
/// their classes (in the same order) and multi-label settings.
pub fn load_ensemble(dirs: &[PathBuf], device: &Device) -> anyhow::Result<Vec<LoadedClassifier>> {
    let models: Vec<LoadedClassifier> = dirs
        .iter()
        .map(|dir| LoadedClassifier::load_on(dir, device))
        .collect::<anyhow::Result<_>>()?;
    let Some(first) = models.first() else {
        anyhow::bail!("no classifier folder given; pass at least one --model DIR");
    };
    for model in &models[1..] {
        if model.config.classes != first.config.classes {
            anyhow::bail!(
                "{} has classes [{}] but {} has [{}]; an ensemble needs the same classes in the same order",
                model.dir.display(),
                model.config.classes.join(", "),
                first.dir.display(),
                first.config.classes.join(", ")
            );
        }
        if model.config.multi_label != first.config.multi_label {
            anyhow::bail!(
                "{} and {} differ in multi-label settings; an ensemble needs the same ones",
                model.dir.display(),
                first.dir.display()
            );
        }
    }
    Ok(models)
}

/// Returns the mean of the ensemble members' class probabilities for each text, in
/// input order. Each member reads the texts in its own direction.
pub fn ensemble_probabilities(
    models: &[LoadedClassifier],
    texts: &[&str],
    batch_size: usize,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let width = models.first().map_or(0, |m| m.config.classes.len());
    let mut average = vec![vec![0.0f32; width]; texts.len()];
    for model in models {
        let probabilities = model.probabilities(texts, batch_size)?;
        for (sum, row) in average.iter_mut().zip(probabilities) {
            for (s, p) in sum.iter_mut().zip(row) {
                *s += p / models.len() as f32;
            }
        }
    }
    Ok(average)
}

/// Function turning logits into class probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Softmax over the classes (single-label).
    Softmax,
    /// Independent sigmoid per class (multi-label).
    Sigmoid,
}

/// Scores `documents` with `model` in eval mode, longest first in batches of
/// `batch_size`, and returns the softmax probabilities in input order.
pub fn score_documents(
    model: &Classifier,
    documents: &[Vec<u32>],
    batch_size: usize,
) -> anyhow::Result<Vec<Vec<f32>>> {
    score_documents_with(model, documents, batch_size, Activation::Softmax)
}

/// Scores `documents` as [`score_documents`] does, with `activation` on the logits.
pub fn score_documents_with(
    model: &Classifier,
    documents: &[Vec<u32>],
    batch_size: usize,
    activation: Activation,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let lengths: Vec<usize> = documents.iter().map(Vec::len).collect();
    let order = crate::text::batches::sorted_order(&lengths);
    let mut results: Vec<Vec<f32>> = vec![Vec::new(); documents.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| documents[i].as_slice()).collect();
        let output = model.predict(&batch)?;
        let probabilities = match activation {
            Activation::Softmax => softmax(&output.logits)?,
            Activation::Sigmoid => {
                candle_nn::ops::sigmoid(&output.logits.to_dtype(candle_core::DType::F32)?)?
            }
        };
        let probabilities = probabilities.to_vec2::<f32>()?;
        for (&index, row) in chunk.iter().zip(probabilities) {
            results[index] = row;
        }
    }
    Ok(results)
}

/// Writes a classifier folder with random weights into `dir`: a word vocabulary of the
/// special tokens plus `words` (fastai rules), a 3-layer encoder of embedding 8 and
/// hidden 12, chunks of 8 tokens, and `classes`. For examples and tests, where a
/// trained model would be too slow to build.
pub fn write_random_classifier(
    dir: &Path,
    words: &[&str],
    classes: &[&str],
    seed: u64,
) -> anyhow::Result<()> {
    let mut tokens: Vec<String> = crate::text::SPECIAL_TOKENS
        .iter()
        .map(|t| t.to_string())
        .collect();
    tokens.extend(words.iter().map(|w| w.to_string()));
    let vocab = Vocab::from_tokens(tokens)?;
    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    vocab.save(dir, "fastai", VocabKind::Word)?;
    let mut model = ClassifierConfig::new(vocab.len(), classes.len());
    model.encoder.embedding_size = 8;
    model.encoder.hidden_size = 12;
    model.bptt = 8;
    model.max_len = 64;
    let mut rng = crate::rng::Rng::seed(seed);
    let classifier = Classifier::new(model.clone(), &mut rng, &Device::Cpu)?;
    let config = ClassifierFolderConfig {
        kind: CLASSIFIER_KIND.into(),
        model,
        classes: classes.iter().map(|c| c.to_string()).collect(),
        backwards: false,
        multi_label: None,
    };
    save_classifier(dir, &config, &classifier, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(multi_label: Option<MultiLabel>) -> ClassifierFolderConfig {
        ClassifierFolderConfig {
            kind: CLASSIFIER_KIND.into(),
            model: ClassifierConfig::new(10, 3),
            classes: vec!["a".into(), "b".into(), "c".into()],
            backwards: false,
            multi_label,
        }
    }

    #[test]
    fn multi_label_predicts_classes_over_threshold() {
        let config = folder(Some(MultiLabel {
            threshold: 0.4,
            delimiter: "|".into(),
        }));
        assert_eq!(config.predicted_classes(&[0.4, 0.1, 0.9]), ["a", "c"]);
        assert!(config.predicted_classes(&[0.3, 0.1, 0.2]).is_empty());
    }

    #[test]
    fn single_label_predicts_most_probable() {
        assert_eq!(folder(None).predicted_classes(&[0.2, 0.5, 0.3]), ["b"]);
    }
}
