//! The language-model stage for the trainer: an AWD-LSTM trained on memory-mapped token
//! files with fastai's stream cut, carrying the hidden state from one window to the next.

use std::collections::HashMap;
use std::sync::{mpsc, Arc};

use anyhow::Context;
use candle_core::{DType, Device, Tensor, D};

use crate::model::LanguageModel;
use crate::rng::Rng;
use crate::text::batches::{LmBatch, LmBatches, LmLayout, LmOrder, TokenSource};
use crate::text::token_file::TokenFile;
use crate::train::{BatchIter, Metrics, Param, ParamGroup, TrainTask};

/// Batches the data thread prepares ahead of the trainer's own prefetch.
const PRODUCER_BUFFER: usize = 2;

/// A token file read forwards, or with every document's tokens in reverse order.
#[derive(Clone, Copy)]
pub struct DirectedTokens<'a> {
    file: &'a TokenFile,
    backwards: bool,
}

impl<'a> DirectedTokens<'a> {
    /// Wraps `file`; with `backwards`, each document reads from its last token to its first.
    pub fn new(file: &'a TokenFile, backwards: bool) -> Self {
        Self { file, backwards }
    }
}

impl TokenSource for DirectedTokens<'_> {
    fn n_documents(&self) -> usize {
        self.file.n_documents()
    }

    fn document_len(&self, doc: usize) -> usize {
        self.file.document_len(doc).unwrap_or(0)
    }

    fn extend_from_document(&self, doc: usize, start: usize, end: usize, out: &mut Vec<u32>) {
        if !self.backwards {
            self.file.extend_from_document(doc, start, end, out);
            return;
        }
        // Positions [start, end) of the reversed document are the original positions
        // [len - end, len - start), read from the back.
        let len = self.document_len(doc);
        if let Some(ids) = self
            .file
            .document(doc)
            .and_then(|ids| ids.slice(len - end, len - start))
        {
            out.extend(ids.to_vec().into_iter().rev());
        }
    }
}

/// Training settings of the language-model loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmTaskSettings {
    /// Rows per batch.
    pub batch_size: usize,
    /// Tokens per window (backpropagation through time).
    pub bptt: usize,
    /// Read every document backwards.
    pub backwards: bool,
    /// Activation regularisation factor (fastai `alpha`).
    pub ar_alpha: f64,
    /// Temporal activation regularisation factor (fastai `beta`).
    pub tar_beta: f64,
}

/// An AWD-LSTM language model with its training and validation token files.
pub struct LmTask {
    model: LanguageModel,
    train: Arc<TokenFile>,
    valid: Option<Arc<TokenFile>>,
    settings: LmTaskSettings,
    layout: LmLayout,
    device: Device,
    /// Whether every group is frozen, so forward passes build no backward graph.
    all_frozen: bool,
}

impl LmTask {
    /// Sets the format of the model's matrix products (see
    /// [`LanguageModel::set_precision`]).
    pub fn set_precision(&mut self, precision: crate::kernels::precision::Precision) {
        self.model.set_precision(precision);
    }

    /// Creates the task. Fails when the training file is too small for one batch or
    /// when a token file's vocabulary size differs from the model's.
    pub fn new(
        model: LanguageModel,
        train: Arc<TokenFile>,
        valid: Option<Arc<TokenFile>>,
        settings: LmTaskSettings,
    ) -> anyhow::Result<Self> {
        let vocab_size = model.config().vocab_size as u64;
        for file in std::iter::once(&train).chain(valid.iter()) {
            if file.vocab_size() != vocab_size {
                anyhow::bail!(
                    "token file {} was numericalized with a vocabulary of {} tokens but the model has {vocab_size}; numericalize it again with the model's vocabulary",
                    file.path().display(),
                    file.vocab_size()
                );
            }
        }
        let layout = LmLayout::new(train.n_tokens(), settings.batch_size, settings.bptt)
            .with_context(|| format!("cannot batch {}", train.path().display()))?;
        if let Some(valid) = &valid {
            LmLayout::new(valid.n_tokens(), settings.batch_size, settings.bptt)
                .with_context(|| format!("cannot batch {}", valid.path().display()))?;
        }
        let device = model.encoder().device().clone();
        Ok(Self {
            model,
            train,
            valid,
            settings,
            layout,
            device,
            all_frozen: false,
        })
    }

    /// The model.
    pub fn model(&self) -> &LanguageModel {
        &self.model
    }

    /// Returns the model, ending the task.
    pub fn into_model(self) -> LanguageModel {
        self.model
    }

    /// Returns the layout of the training batches.
    pub fn layout(&self) -> &LmLayout {
        &self.layout
    }

    fn ids_tensor(&self, ids: Vec<u32>, batch: &LmBatch) -> candle_core::Result<Tensor> {
        Tensor::from_vec(ids, (batch.batch_size, batch.seq_len), &self.device)
    }

    /// Runs the model in eval mode over `file` in corpus order and returns the summed
    /// cross-entropy, the number of correct next-token predictions and the token count.
    fn evaluate(&mut self, file: &TokenFile) -> anyhow::Result<(f64, u64, u64)> {
        let source = DirectedTokens::new(file, self.settings.backwards);
        let batches = LmBatches::new(
            &source,
            self.settings.batch_size,
            self.settings.bptt,
            LmOrder::Sequential,
        )
        .with_context(|| format!("cannot batch {}", file.path().display()))?;
        // Eval mode draws no dropout masks, so this generator is never used.
        let mut unused = Rng::seed(0);
        let (mut loss_sum, mut correct, mut count) = (0.0f64, 0u64, 0u64);
        for batch in batches.iter() {
            let n = (batch.batch_size * batch.seq_len) as u64;
            let x = self.ids_tensor(batch.x.clone(), &batch)?;
            let y = self.ids_tensor(batch.y.clone(), &batch)?;
            let output = self.model.forward(&x, false, &mut unused)?;
            let loss = output
                .cross_entropy(&y)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            loss_sum += loss * n as f64;
            let predicted = output.logits.argmax(D::Minus1)?.flatten_all()?;
            correct += predicted
                .eq(&y.flatten_all()?)?
                .to_dtype(DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()? as u64;
            count += n;
        }
        Ok((loss_sum, correct, count))
    }
}

impl TrainTask for LmTask {
    type Batch = LmBatch;

    /// Returns the four fastai language-model groups: one per LSTM layer, then the embedding
    /// with the decoder. Biases get no weight decay.
    fn groups(&self) -> Vec<ParamGroup> {
        let names: HashMap<_, _> = self
            .model
            .tensors()
            .into_iter()
            .map(|(name, tensor)| (tensor.id(), name))
            .collect();
        let n_groups = self.model.layers().len() + 1;
        self.model
            .layer_groups()
            .into_iter()
            .enumerate()
            .map(|(index, vars)| {
                let params = vars
                    .into_iter()
                    .map(|var| {
                        let name = names
                            .get(&var.as_tensor().id())
                            .cloned()
                            .unwrap_or_else(|| format!("group{index}.unnamed"));
                        if name.contains("bias") {
                            Param::no_decay(name, var)
                        } else {
                            Param::new(name, var)
                        }
                    })
                    .collect();
                let group_name = if index + 1 == n_groups {
                    "embedding and decoder".to_string()
                } else {
                    format!("lstm {index}")
                };
                ParamGroup::new(group_name, params)
            })
            .collect()
    }

    fn batches_per_epoch(&self) -> usize {
        self.layout.n_batches
    }

    /// Yields the windows of `epoch` over the documents in an order shuffled with a seed
    /// drawn from `rng`. A producer thread owns the token file, so the iterator is
    /// `'static` without copying the corpus.
    fn train_batches(
        &mut self,
        epoch: usize,
        mut rng: Rng,
        skip: usize,
    ) -> anyhow::Result<BatchIter<LmBatch>> {
        let file = Arc::clone(&self.train);
        let settings = self.settings;
        let seed = rng.next_u64();
        let (sender, receiver) = mpsc::sync_channel(PRODUCER_BUFFER);
        std::thread::spawn(move || {
            let source = DirectedTokens::new(&file, settings.backwards);
            let order = LmOrder::Shuffled {
                seed,
                epoch: epoch as u64,
            };
            let batches = match LmBatches::new(&source, settings.batch_size, settings.bptt, order) {
                Ok(batches) => batches,
                Err(error) => {
                    let _ = sender.send(Err(anyhow::Error::new(error)));
                    return;
                }
            };
            for index in skip..batches.n_batches() {
                let Some(batch) = batches.batch(index) else {
                    break;
                };
                // A closed channel means the trainer stopped reading.
                if sender.send(Ok(batch)).is_err() {
                    return;
                }
            }
        });
        Ok(Box::new(receiver.into_iter()))
    }

    fn batch_items(&self, batch: &LmBatch) -> usize {
        batch.batch_size * batch.seq_len
    }

    /// Runs the model in training mode and returns cross-entropy plus AR and TAR.
    fn train_step(&mut self, batch: LmBatch, rng: &mut Rng) -> anyhow::Result<Tensor> {
        let x = Tensor::from_vec(batch.x, (batch.batch_size, batch.seq_len), &self.device)?;
        let y = Tensor::from_vec(batch.y, (batch.batch_size, batch.seq_len), &self.device)?;
        let loss = self.model.forward_loss(
            &x,
            &y,
            true,
            rng,
            self.settings.ar_alpha,
            self.settings.tar_beta,
        )?;
        Ok(loss.total)
    }

    /// Returns the mean cross-entropy, `accuracy` and `perplexity` on the validation
    /// file. Without one, the loss is NaN (written as `null` in JSON logs).
    fn validate(&mut self) -> anyhow::Result<Metrics> {
        let Some(valid) = self.valid.clone() else {
            return Ok(Metrics::with_loss(f64::NAN));
        };
        self.model.reset();
        self.model.set_track_gradients(false);
        let result = self.evaluate(&valid);
        self.model.set_track_gradients(!self.all_frozen);
        self.model.reset();
        let (loss_sum, correct, count) = result?;
        let loss = loss_sum / count.max(1) as f64;
        let mut metrics = Metrics::with_loss(loss);
        metrics.insert("accuracy", correct as f64 / count.max(1) as f64);
        metrics.insert("perplexity", crate::train::perplexity(loss));
        Ok(metrics)
    }

    fn reset_state(&mut self) {
        self.model.reset();
    }

    /// Returns the hidden state of each layer, as `{layer}.h` and `{layer}.c`.
    fn carried_state(&self) -> Vec<(String, Tensor)> {
        let Some(hidden) = self.model.hidden_state() else {
            return Vec::new();
        };
        hidden
            .iter()
            .enumerate()
            .flat_map(|(layer, (h, c))| {
                [
                    (format!("{layer}.h"), h.clone()),
                    (format!("{layer}.c"), c.clone()),
                ]
            })
            .collect()
    }

    fn restore_carried_state(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        if tensors.is_empty() {
            self.model.reset();
            return Ok(());
        }
        let layers = self.model.layers().len();
        let mut hidden = Vec::with_capacity(layers);
        for layer in 0..layers {
            let get = |part: &str| {
                tensors
                    .get(&format!("{layer}.{part}"))
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("checkpoint has no hidden state {layer}.{part}"))
            };
            hidden.push((get("h")?, get("c")?));
        }
        self.model.set_hidden_state(hidden)?;
        Ok(())
    }

    /// Stops building a backward graph only when every group is frozen, because the
    /// model's gradient tracking is one switch for all parameters. The trainer ignores
    /// the gradients of frozen groups either way.
    fn set_frozen(&mut self, frozen: &[bool]) {
        self.all_frozen = frozen.iter().all(|&is_frozen| is_frozen);
        self.model.set_track_gradients(!self.all_frozen);
    }
}
