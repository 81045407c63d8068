//! fastai's ULMFiT text classifier: the AWD-LSTM encoder run over long documents in
//! chunks (BPT3C), masked concat pooling, and the `PoolingLinearClassifier` head.
//!
//! Padding never reaches the recurrent state or the pooling. Documents are padded on the
//! right: every row starts its state at its first real token, and the LSTM is causal, so
//! the outputs at real positions never see the trailing padding. The pooling reads only
//! each row's own real positions. A document's logits are therefore the same alone and
//! in any batch, up to floating-point rounding of the batched matrix products.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::config::AwdLstmConfig;
use super::dropout::{
    apply_mask, dropout_mask, embed, embedding_row_mask, locked_dropout_mask, uses_cuda_kernels,
    WeightMask,
};
use super::lstm::{LstmLayer, PackedLayer};
use super::{LanguageModel, ModelError, Result};
use crate::kernels::precision::Precision;
use crate::rng::Rng;

/// fastai's chunk length for classifier documents (`seq_len` of `TextDataLoaders`).
pub const DEFAULT_BPTT: usize = 72;
/// fastai's number of trailing tokens whose outputs the pooling keeps (`max_len`).
pub const DEFAULT_MAX_LEN: usize = 1440;
/// fastai's hidden width of the head (`lin_ftrs=[50]`).
pub const DEFAULT_HEAD_HIDDEN: usize = 50;
/// fastai's dropout multiplier for the classifier in its examples (`drop_mult=0.5`).
pub const DEFAULT_CLASSIFIER_DROPOUT_MULTIPLIER: f32 = 0.5;
/// Dropout before every head layer but the first (fastai `ps=[0.1]`, not scaled by `drop_mult`).
pub const HEAD_HIDDEN_DROPOUT: f32 = 0.1;
/// PyTorch's `BatchNorm1d` defaults.
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Architecture of a classifier: the encoder, the head and the chunking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// The encoder, normally with [`super::DropoutConfig::CLASSIFIER`] dropouts.
    pub encoder: AwdLstmConfig,
    /// Number of classes (outputs of the head).
    pub n_classes: usize,
    /// Widths of the hidden head layers (fastai `lin_ftrs`), default `[50]`.
    pub head_hidden: Vec<usize>,
    /// Tokens per chunk of the encoder (BPT3C).
    pub bptt: usize,
    /// The pooling keeps the outputs of the chunks that start within the last `max_len`
    /// tokens of each document.
    pub max_len: usize,
}

impl ClassifierConfig {
    /// Returns fastai's classifier for `vocab_size` tokens and `n_classes` classes, with
    /// the classifier dropout set scaled by 0.5, a head of 50 hidden units, bptt 72 and
    /// max_len 1440.
    pub fn new(vocab_size: usize, n_classes: usize) -> Self {
        let mut encoder = AwdLstmConfig::classifier(vocab_size);
        encoder.dropout_multiplier = DEFAULT_CLASSIFIER_DROPOUT_MULTIPLIER;
        Self {
            encoder,
            n_classes,
            head_hidden: vec![DEFAULT_HEAD_HIDDEN],
            bptt: DEFAULT_BPTT,
            max_len: DEFAULT_MAX_LEN,
        }
    }

    /// Returns the layer widths of the head: `[3 * embedding, hidden..., n_classes]`.
    pub fn head_sizes(&self) -> Vec<usize> {
        let mut sizes = vec![3 * self.encoder.embedding_size];
        sizes.extend(&self.head_hidden);
        sizes.push(self.n_classes);
        sizes
    }

    /// Returns the dropout before each head layer: the encoder's scaled `output` dropout
    /// first, then 0.1 for every further layer.
    pub fn head_dropouts(&self) -> Vec<f32> {
        let mut dropouts = vec![self.encoder.effective_dropout().output];
        dropouts.extend(std::iter::repeat_n(
            HEAD_HIDDEN_DROPOUT,
            self.head_hidden.len(),
        ));
        dropouts
    }

    /// Checks the encoder and that the class count, bptt and max_len are positive.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.encoder.validate()?;
        if self.n_classes < 2 {
            return Err(format!(
                "a classifier needs at least 2 classes, got {}",
                self.n_classes
            ));
        }
        if self.bptt == 0 || self.max_len == 0 {
            return Err(format!(
                "bptt ({}) and max_len ({}) must be positive",
                self.bptt, self.max_len
            ));
        }
        if self.head_hidden.contains(&0) {
            return Err("head hidden widths must be positive".into());
        }
        Ok(())
    }
}

/// One `BatchNorm1d -> Dropout -> Linear` block of the head (fastai `LinBnDrop` with
/// `bn=True`, so the linear layer has no bias).
#[derive(Debug, Clone)]
struct HeadBlock {
    /// BatchNorm scale `[in]`.
    bn_weight: Var,
    /// BatchNorm shift `[in]`.
    bn_bias: Var,
    /// Running mean `[in]`, used in eval.
    running_mean: Tensor,
    /// Running (unbiased) variance `[in]`, used in eval.
    running_var: Tensor,
    /// Linear weight `[out, in]`.
    linear: Var,
    /// Dropout probability before the linear layer.
    dropout: f32,
}

impl HeadBlock {
    /// Returns the running mean and variance under their canonical names for block
    /// `index` of the head.
    fn running_statistics(&self, index: usize) -> [(String, Tensor); 2] {
        [
            (
                format!("head.{index}.bn.running_mean"),
                self.running_mean.clone(),
            ),
            (
                format!("head.{index}.bn.running_var"),
                self.running_var.clone(),
            ),
        ]
    }
}

/// The ULMFiT classifier. Forward passes do not keep a hidden state between calls, so
/// eval-mode scoring takes `&self` and may run from several threads at once.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    embedding: Var,
    layers: Vec<LstmLayer>,
    head: Vec<HeadBlock>,
    /// Format of the encoder's matrix products.
    precision: Precision,
    /// The LSTM weights packed in `precision` by [`Self::pack_for_inference`].
    packed: Option<Vec<PackedLayer>>,
}

/// Output of a classifier forward pass.
#[derive(Debug, Clone)]
pub struct ClassifierOutput {
    /// Class scores before softmax, `[batch, n_classes]`, in input order.
    pub logits: Tensor,
    /// Pooled encoder features `[batch, 3 * embedding]` ([last, max, mean]), in input order.
    pub pooled: Tensor,
    /// The last LSTM layer's outputs `[positions, embedding]` of each document at the
    /// positions it pools (no padding), in input order. Training adds AR and TAR on them.
    pub outputs: Vec<Tensor>,
}

impl Classifier {
    /// Builds a classifier whose encoder copies the embedding and LSTM weights of `lm`
    /// (fastai `load_encoder`) and whose head is freshly initialised from `rng`: BatchNorm
    /// scale 1 and shift 0, linear weights uniform in `±1/sqrt(in)` as PyTorch.
    pub fn from_language_model(
        lm: &LanguageModel,
        config: ClassifierConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        config.validate().map_err(ModelError::InvalidConfig)?;
        let lm_config = lm.config();
        if lm_config.vocab_size != config.encoder.vocab_size
            || lm_config.embedding_size != config.encoder.embedding_size
            || lm_config.hidden_size != config.encoder.hidden_size
            || lm_config.layers != config.encoder.layers
        {
            return Err(ModelError::InvalidConfig(format!(
                "the language model (vocab {}, embedding {}, hidden {}, layers {}) does not match the classifier encoder (vocab {}, embedding {}, hidden {}, layers {})",
                lm_config.vocab_size, lm_config.embedding_size, lm_config.hidden_size, lm_config.layers,
                config.encoder.vocab_size, config.encoder.embedding_size, config.encoder.hidden_size, config.encoder.layers
            )));
        }
        let copy = |var: &Var| -> Result<Var> { Ok(Var::from_tensor(&var.as_tensor().copy()?)?) };
        let embedding = copy(lm.encoder())?;
        let mut layers = Vec::with_capacity(lm.layers().len());
        for layer in lm.layers() {
            layers.push(LstmLayer {
                weight_ih: copy(&layer.weight_ih)?,
                weight_hh: copy(&layer.weight_hh)?,
                bias_ih: copy(&layer.bias_ih)?,
                bias_hh: copy(&layer.bias_hh)?,
            });
        }
        let device = embedding.device().clone();
        let head = new_head(&config, rng, &device)?;
        Ok(Self {
            config,
            embedding,
            layers,
            head,
            precision: Precision::F32,
            packed: None,
        })
    }

    /// Creates a classifier with a randomly initialised encoder (fastai's AWD-LSTM
    /// initialisation) and head, for tests and examples.
    pub fn new(config: ClassifierConfig, rng: &mut Rng, device: &Device) -> Result<Self> {
        config.validate().map_err(ModelError::InvalidConfig)?;
        let lm = LanguageModel::new(config.encoder.clone(), rng, device)?;
        Self::from_language_model(&lm, config, rng)
    }

    /// Returns the configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// Sets the format of the encoder's matrix products (default f32, which runs
    /// exactly as before this option existed) and drops weights packed earlier. The
    /// head stays f32. [`Precision::Int8`] serves inference only: training forwards
    /// then fail.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.packed = None;
    }

    /// Returns the format of the encoder's matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Packs the LSTM weights once in the current precision, so that eval-mode
    /// forwards stop packing them per chunk. Training does not use the packed copy;
    /// call this again after the weights change, or [`Self::set_precision`] to drop it.
    pub fn pack_for_inference(&mut self) -> Result<()> {
        let mut packed = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            match layer.pack(self.precision)? {
                Some(layer) => packed.push(layer),
                None => {
                    self.packed = None;
                    return Ok(());
                }
            }
        }
        self.packed = Some(packed);
        Ok(())
    }

    /// Returns the parameter shapes under their canonical names: the encoder's
    /// (`encoder.weight`, `rnns.{i}.*`) and per head block `head.{j}.bn.weight`,
    /// `head.{j}.bn.bias`, `head.{j}.bn.running_mean`, `head.{j}.bn.running_var`,
    /// `head.{j}.linear.weight`.
    pub fn parameter_shapes(config: &ClassifierConfig) -> Vec<(String, Vec<usize>)> {
        let mut shapes: Vec<(String, Vec<usize>)> =
            LanguageModel::parameter_shapes(&config.encoder)
                .into_iter()
                .filter(|(name, _)| !name.starts_with("decoder."))
                .collect();
        let sizes = config.head_sizes();
        for (index, pair) in sizes.windows(2).enumerate() {
            let (input, output) = (pair[0], pair[1]);
            for stat in ["weight", "bias", "running_mean", "running_var"] {
                shapes.push((format!("head.{index}.bn.{stat}"), vec![input]));
            }
            shapes.push((format!("head.{index}.linear.weight"), vec![output, input]));
        }
        shapes
    }

    /// Returns every tensor (parameters and BatchNorm running statistics) under its
    /// canonical name, in [`Self::parameter_shapes`] order.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut named = vec![(
            "encoder.weight".to_string(),
            self.embedding.as_tensor().clone(),
        )];
        for (index, layer) in self.layers.iter().enumerate() {
            for (suffix, var) in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                .iter()
                .zip(layer.vars())
            {
                named.push((format!("rnns.{index}.{suffix}"), var.as_tensor().clone()));
            }
        }
        for (index, block) in self.head.iter().enumerate() {
            named.push((
                format!("head.{index}.bn.weight"),
                block.bn_weight.as_tensor().clone(),
            ));
            named.push((
                format!("head.{index}.bn.bias"),
                block.bn_bias.as_tensor().clone(),
            ));
            named.extend(block.running_statistics(index));
            named.push((
                format!("head.{index}.linear.weight"),
                block.linear.as_tensor().clone(),
            ));
        }
        named
    }

    /// Returns the running statistics of every head BatchNorm under their canonical names
    /// (`head.{j}.bn.running_mean`, `head.{j}.bn.running_var`).
    pub fn running_statistics(&self) -> Vec<(String, Tensor)> {
        let blocks = self.head.iter().enumerate();
        blocks
            .flat_map(|(index, block)| block.running_statistics(index))
            .collect()
    }

    /// Replaces the running statistics named in `tensors` (see
    /// [`Self::running_statistics`]). Statistics that `tensors` lacks keep their values,
    /// and a tensor of the wrong shape is an error that names it.
    pub fn set_running_statistics(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (index, block) in self.head.iter_mut().enumerate() {
            for (stat, target) in [
                ("running_mean", &mut block.running_mean),
                ("running_var", &mut block.running_var),
            ] {
                let name = format!("head.{index}.bn.{stat}");
                let Some(value) = tensors.get(&name) else {
                    continue;
                };
                if value.dims() != target.dims() {
                    return Err(ModelError::InvalidInput(format!(
                        "`{name}` has shape {:?} but the head expects {:?}",
                        value.dims(),
                        target.dims()
                    )));
                }
                *target = value.to_device(target.device())?.to_dtype(target.dtype())?;
            }
        }
        Ok(())
    }

    /// Builds a classifier from tensors under canonical names (see
    /// [`Self::parameter_shapes`]); the model takes the dtype and device of
    /// `encoder.weight`. Returns one error listing every missing, unexpected and wrongly
    /// shaped tensor.
    pub fn from_tensors(
        config: ClassifierConfig,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        config.validate().map_err(ModelError::InvalidConfig)?;
        let expected = Self::parameter_shapes(&config);
        super::check_parameters(&expected, tensors)?;
        let reference = &tensors["encoder.weight"];
        let (dtype, device) = (reference.dtype(), reference.device().clone());
        let tensor = |name: &str| -> Result<Tensor> {
            Ok(tensors[name].to_device(&device)?.to_dtype(dtype)?)
        };
        let var = |name: &str| -> Result<Var> { Ok(Var::from_tensor(&tensor(name)?)?) };
        let mut layers = Vec::with_capacity(config.encoder.layers);
        for layer in 0..config.encoder.layers {
            layers.push(LstmLayer {
                weight_ih: var(&format!("rnns.{layer}.weight_ih"))?,
                weight_hh: var(&format!("rnns.{layer}.weight_hh"))?,
                bias_ih: var(&format!("rnns.{layer}.bias_ih"))?,
                bias_hh: var(&format!("rnns.{layer}.bias_hh"))?,
            });
        }
        let mut head = Vec::new();
        for (index, dropout) in config.head_dropouts().into_iter().enumerate() {
            head.push(HeadBlock {
                bn_weight: var(&format!("head.{index}.bn.weight"))?,
                bn_bias: var(&format!("head.{index}.bn.bias"))?,
                running_mean: tensor(&format!("head.{index}.bn.running_mean"))?,
                running_var: tensor(&format!("head.{index}.bn.running_var"))?,
                linear: var(&format!("head.{index}.linear.weight"))?,
                dropout,
            });
        }
        Ok(Self {
            embedding: var("encoder.weight")?,
            config,
            layers,
            head,
            precision: Precision::F32,
            packed: None,
        })
    }

    /// Writes every tensor to a safetensors file under its canonical name.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        super::save_tensors(self.tensors(), path.as_ref())
    }

    /// Reads a classifier written by [`Self::save`] onto `device`.
    pub fn load(config: ClassifierConfig, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let tensors = super::load_tensors(path.as_ref(), device)?;
        Self::from_tensors(config, &tensors)
    }

    /// Returns fastai's classifier layer groups, with canonical names: the embedding,
    /// one group per LSTM layer, then the head (BatchNorm and linear parameters).
    pub fn layer_groups(&self) -> Vec<Vec<(String, Var)>> {
        let mut groups = vec![vec![("encoder.weight".to_string(), self.embedding.clone())]];
        for (index, layer) in self.layers.iter().enumerate() {
            let group = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                .iter()
                .zip(layer.vars())
                .map(|(suffix, var)| (format!("rnns.{index}.{suffix}"), var))
                .collect();
            groups.push(group);
        }
        let mut head = Vec::new();
        for (index, block) in self.head.iter().enumerate() {
            head.push((format!("head.{index}.bn.weight"), block.bn_weight.clone()));
            head.push((format!("head.{index}.bn.bias"), block.bn_bias.clone()));
            head.push((format!("head.{index}.linear.weight"), block.linear.clone()));
        }
        groups.push(head);
        groups
    }

    /// Scores `documents` (token ids, each non-empty) in eval mode: no dropout, BatchNorm
    /// with running statistics, no backward graph. Returns logits `[batch, n_classes]`
    /// in input order.
    pub fn predict(&self, documents: &[&[u32]]) -> Result<ClassifierOutput> {
        let mut unused = Rng::seed(0);
        let (pooled, outputs) = self.pool_with_outputs(documents, false, &[], &mut unused)?;
        let logits = self.head_forward_eval(&pooled)?;
        Ok(ClassifierOutput {
            logits,
            pooled,
            outputs,
        })
    }

    /// Runs a training forward pass over `documents`: dropout from `rng`, BatchNorm with
    /// batch statistics (and updated running statistics). `frozen` marks, per layer group,
    /// the groups that need no backward graph. Returns logits `[batch, n_classes]` in input
    /// order.
    pub fn forward_train(
        &mut self,
        documents: &[&[u32]],
        frozen: &[bool],
        rng: &mut Rng,
    ) -> Result<ClassifierOutput> {
        let (pooled, outputs) = self.pool_with_outputs(documents, true, frozen, rng)?;
        let head_frozen = frozen.last().copied().unwrap_or(false);
        let logits = self.head_forward_train(&pooled, head_frozen, rng)?;
        Ok(ClassifierOutput {
            logits,
            pooled,
            outputs,
        })
    }

    /// Sets the running statistics of every head BatchNorm to the exact mean and unbiased
    /// variance of its eval-mode inputs over `documents`, block after block, so that each
    /// block uses the previous blocks' new statistics. The encoder runs in eval mode on
    /// batches of up to `batch_size` documents.
    ///
    /// This replaces PyTorch's moving averages, which lag the weights and, when training
    /// batches hold documents of similar length, average within-batch variances that can
    /// be far below the variance over the whole set.
    pub fn set_population_statistics(
        &mut self,
        documents: &[&[u32]],
        batch_size: usize,
    ) -> Result<()> {
        self.set_population_statistics_with_progress(documents, batch_size, &mut |_| {})
    }

    /// Runs [`Self::set_population_statistics`] and calls `on_batch` with the number of
    /// documents of each encoder batch once it is pooled.
    pub fn set_population_statistics_with_progress(
        &mut self,
        documents: &[&[u32]],
        batch_size: usize,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<()> {
        if documents.len() < 2 {
            return Err(ModelError::InvalidInput(format!(
                "population statistics need at least 2 documents, got {}",
                documents.len()
            )));
        }
        let lengths: Vec<usize> = documents.iter().map(|d| d.len()).collect();
        let order = crate::text::batches::sorted_order(&lengths);
        let mut pooled = Vec::with_capacity(order.len().div_ceil(batch_size.max(1)));
        let mut unused = Rng::seed(0);
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| documents[i]).collect();
            pooled.push(self.pool(&batch, false, &[], &mut unused)?);
            on_batch(batch.len());
        }
        // Row order does not matter for the statistics.
        let mut x = Tensor::cat(&pooled, 0)?.to_dtype(DType::F64)?;
        let n = x.dims()[0] as f64;
        let last = self.head.len() - 1;
        for (index, block) in self.head.iter_mut().enumerate() {
            let mean = x.mean(0)?;
            let centered = x.broadcast_sub(&mean)?;
            let variance = centered.sqr()?.sum(0)?.affine(1.0 / (n - 1.0), 0.0)?;
            let dtype = block.running_mean.dtype();
            block.running_mean = mean.to_dtype(dtype)?;
            block.running_var = variance.to_dtype(dtype)?;
            if index != last {
                x = block_forward_eval(block, &x)?.relu()?;
            }
        }
        Ok(())
    }

    /// Checks that every document is non-empty and in the vocabulary.
    fn check_documents(&self, documents: &[&[u32]]) -> Result<()> {
        if documents.is_empty() {
            return Err(ModelError::InvalidInput(
                "the batch has no documents".into(),
            ));
        }
        let vocab = self.config.encoder.vocab_size;
        for (index, document) in documents.iter().enumerate() {
            if document.is_empty() {
                return Err(ModelError::InvalidInput(format!(
                    "document {index} has no tokens; give it at least one token such as xxbos"
                )));
            }
            if let Some(&id) = document.iter().find(|&&id| id as usize >= vocab) {
                return Err(ModelError::InvalidInput(format!(
                    "document {index} has token id {id}, outside the vocabulary of {vocab} tokens"
                )));
            }
        }
        Ok(())
    }

    /// Runs the encoder chunk by chunk and returns the masked concat pooling
    /// `[batch, 3 * embedding]` in input order.
    ///
    /// Rows are sorted by length, longest first, and padded on the right. Chunk `i`
    /// (tokens `i..i + bptt`) runs only the rows still longer than `i`, which are the
    /// first rows, so the carried state of the other rows is dropped as fastai's
    /// `SentenceEncoder` does. As in fastai, the state carries over between chunks but
    /// gradients do not.
    fn pool(
        &self,
        documents: &[&[u32]],
        train: bool,
        frozen: &[bool],
        rng: &mut Rng,
    ) -> Result<Tensor> {
        Ok(self.pool_with_outputs(documents, train, frozen, rng)?.0)
    }

    /// Runs [`Self::pool`] and also returns each document's pooled last-layer outputs
    /// `[positions, embedding]`, in input order.
    fn pool_with_outputs(
        &self,
        documents: &[&[u32]],
        train: bool,
        frozen: &[bool],
        rng: &mut Rng,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check_documents(documents)?;
        let device = self.embedding.device().clone();
        let dtype = self.embedding.dtype();
        let (bptt, max_len) = (self.config.bptt, self.config.max_len);
        let embedding_size = self.config.encoder.embedding_size;
        let pad_id = self.config.encoder.pad_id;

        let mut order: Vec<usize> = (0..documents.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(documents[i].len()));
        let lengths: Vec<usize> = order.iter().map(|&i| documents[i].len()).collect();
        let longest = lengths[0];

        // Per layer `(h, c)`, each `[rows, width]`, for the rows of the previous chunk.
        let mut state: Option<Vec<(Tensor, Tensor)>> = None;
        // Per sorted row, the kept output slices `[n, embedding]`.
        let mut kept: Vec<Vec<Tensor>> = vec![Vec::new(); documents.len()];
        let mut start = 0;
        while start < longest {
            let rows = lengths.iter().filter(|&&len| len > start).count();
            let time = bptt.min(longest - start);
            let keeps = |len: usize| len - start <= max_len;
            let any_kept = lengths[..rows].iter().any(|&len| keeps(len));
            let mut ids = vec![pad_id; rows * time];
            for (row, &doc) in order[..rows].iter().enumerate() {
                let end = documents[doc].len().min(start + time);
                let tokens = &documents[doc][start..end];
                ids[row * time..row * time + tokens.len()].copy_from_slice(tokens);
            }
            let input = Tensor::from_vec(ids, (rows, time), &device)?;
            let track = train && any_kept;
            let previous = match state.take() {
                Some(layers) => {
                    let mut narrowed = Vec::with_capacity(layers.len());
                    for (h, c) in layers {
                        narrowed.push((h.narrow(0, 0, rows)?, c.narrow(0, 0, rows)?));
                    }
                    narrowed
                }
                None => {
                    let mut zeros = Vec::with_capacity(self.layers.len());
                    for layer in &self.layers {
                        let width = layer.hidden_size();
                        zeros.push((
                            Tensor::zeros((rows, width), dtype, &device)?,
                            Tensor::zeros((rows, width), dtype, &device)?,
                        ));
                    }
                    zeros
                }
            };
            let (outputs, new_state) =
                self.encode_chunk(&input, &previous, train, track, frozen, rng)?;
            state = Some(new_state);
            if any_kept {
                for row in 0..rows {
                    let len = lengths[row];
                    if keeps(len) {
                        let real = (len - start).min(time);
                        kept[row].push(outputs.get(row)?.narrow(0, 0, real)?);
                    }
                }
            }
            start += bptt;
        }

        let mut document_outputs = vec![None; documents.len()];
        for (sorted_row, slices) in kept.iter().enumerate() {
            document_outputs[order[sorted_row]] = Some(Tensor::cat(slices, 0)?);
        }
        let document_outputs: Vec<Tensor> = document_outputs.into_iter().flatten().collect();
        let stacked = if uses_cuda_kernels(self.embedding.as_tensor()) {
            // The pooling kernel: sorted rows, then back to input order.
            let mut inverse = vec![0u32; order.len()];
            for (sorted_row, &document) in order.iter().enumerate() {
                inverse[document] = sorted_row as u32;
            }
            let inverse = Tensor::from_vec(inverse, documents.len(), &device)?;
            concat_pool_padded(&kept)?.index_select(&inverse, 0)?
        } else {
            let mut pooled = Vec::with_capacity(documents.len());
            for outputs in &document_outputs {
                let n = outputs.dims()[0];
                let last = outputs.get(n - 1)?;
                let max = outputs.max(0)?;
                let mean = outputs.mean(0)?;
                pooled.push(Tensor::cat(&[&last, &max, &mean], 0)?);
            }
            Tensor::stack(&pooled, 0)?
        };
        debug_assert_eq!(stacked.dims(), [documents.len(), 3 * embedding_size]);
        Ok((stacked, document_outputs))
    }

    /// Runs the embedding and the LSTM stack over one chunk `[rows, time]` from
    /// `previous` and returns the last layer's outputs `[rows, time, embedding]` and the
    /// new state (detached). With `train`, draws dropout masks from `rng` in the order of
    /// [`LanguageModel::forward`]. Without `track`, every parameter enters detached.
    fn encode_chunk(
        &self,
        input: &Tensor,
        previous: &[(Tensor, Tensor)],
        train: bool,
        track: bool,
        frozen: &[bool],
        rng: &mut Rng,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (rows, time) = input.dims2()?;
        let device = self.embedding.device().clone();
        let dtype = self.embedding.dtype();
        let dropout = self.config.encoder.effective_dropout();
        let (vocab, embedding_size) = (
            self.config.encoder.vocab_size,
            self.config.encoder.embedding_size,
        );
        let is_frozen = |group: usize| frozen.get(group).copied().unwrap_or(false);
        let param = |var: &Var, group: usize| {
            if track && !is_frozen(group) {
                var.as_tensor().clone()
            } else {
                var.as_tensor().detach()
            }
        };

        let ids = input.t()?.contiguous()?.flatten_all()?;
        let row_mask = match train {
            true => embedding_row_mask(rng, vocab, dropout.embedding, dtype, &device)?,
            false => None,
        };
        let embedding = param(&self.embedding, 0);
        let embedded = embed(
            &embedding,
            &ids,
            row_mask.as_ref(),
            Some(self.config.encoder.pad_id),
        )?
        .reshape((time, rows, embedding_size))?;
        let input_mask = match train {
            true => locked_dropout_mask(rng, rows, embedding_size, dropout.input, dtype, &device)?,
            false => None,
        };
        let mut activations = apply_mask(&embedded, input_mask.as_ref())?;
        let mut new_state = Vec::with_capacity(self.layers.len());
        let last_layer = self.layers.len() - 1;
        for (index, (layer, (h0, c0))) in self.layers.iter().zip(previous).enumerate() {
            let weight_mask = if train && dropout.weight > 0.0 {
                let shape = layer.weight_hh.dims().to_vec();
                Some(WeightMask::draw(
                    rng,
                    &shape,
                    dropout.weight,
                    dtype,
                    &device,
                )?)
            } else {
                None
            };
            let layer_track = track && !is_frozen(index + 1);
            let packed = match (&self.packed, train || layer_track) {
                (Some(packed), false) => Some(&packed[index]),
                _ => None,
            };
            let output = layer.forward(
                &activations,
                h0,
                c0,
                weight_mask.as_ref(),
                layer_track,
                self.precision,
                packed,
            )?;
            new_state.push((output.h_last.detach(), output.c_last.detach()));
            activations = output.outputs;
            if !track {
                activations = activations.detach();
            }
            if index != last_layer && train {
                let width = layer.hidden_size();
                let mask = locked_dropout_mask(rng, rows, width, dropout.hidden, dtype, &device)?;
                activations = apply_mask(&activations, mask.as_ref())?;
            }
        }
        let outputs = activations.transpose(0, 1)?.contiguous()?;
        Ok((outputs, new_state))
    }

    /// Runs the head in eval mode on `pooled` `[batch, 3 * embedding]`.
    fn head_forward_eval(&self, pooled: &Tensor) -> Result<Tensor> {
        let mut x = pooled.detach();
        let last = self.head.len() - 1;
        for (index, block) in self.head.iter().enumerate() {
            x = block_forward_eval(block, &x)?;
            if index != last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }

    /// Runs the head in training mode: BatchNorm normalises with the batch mean and
    /// biased variance and updates the running statistics with momentum 0.1 and the
    /// unbiased variance, as PyTorch's `BatchNorm1d`.
    fn head_forward_train(
        &mut self,
        pooled: &Tensor,
        frozen: bool,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let mut x = pooled.clone();
        let batch = x.dims()[0];
        let last = self.head.len() - 1;
        let device = x.device().clone();
        let dtype = x.dtype();
        for (index, block) in self.head.iter_mut().enumerate() {
            let param = |var: &Var| {
                if frozen {
                    var.as_tensor().detach()
                } else {
                    var.as_tensor().clone()
                }
            };
            let mean = x.mean_keepdim(0)?;
            let centered = x.broadcast_sub(&mean)?;
            let variance = centered.sqr()?.mean_keepdim(0)?;
            let normalised = centered.broadcast_div(&variance.affine(1.0, BN_EPS)?.sqrt()?)?;
            x = normalised
                .broadcast_mul(&param(&block.bn_weight))?
                .broadcast_add(&param(&block.bn_bias))?;
            let unbiased = if batch > 1 {
                variance.affine(batch as f64 / (batch - 1) as f64, 0.0)?
            } else {
                variance.clone()
            };
            block.running_mean = block
                .running_mean
                .affine(1.0 - BN_MOMENTUM, 0.0)?
                .add(&mean.squeeze(0)?.detach().affine(BN_MOMENTUM, 0.0)?)?;
            block.running_var = block
                .running_var
                .affine(1.0 - BN_MOMENTUM, 0.0)?
                .add(&unbiased.squeeze(0)?.detach().affine(BN_MOMENTUM, 0.0)?)?;
            if block.dropout > 0.0 {
                let mask = dropout_mask(rng, x.dims(), block.dropout, dtype, &device)?;
                x = x.mul(&mask)?;
            }
            x = x.matmul(&param(&block.linear).t()?)?;
            if index != last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// Returns the masked concat pooling `[rows, 3 * features]` ([last, max, mean]) of each
/// row's kept output slices (`[n, features]` each, `n > 0`). The rows are padded to one
/// `[rows, time, features]` tensor for the pooling operation of
/// [`crate::kernels::cuda::ops`], which runs the kernel on a GPU and its twin on the CPU.
pub(crate) fn concat_pool_padded(kept: &[Vec<Tensor>]) -> Result<Tensor> {
    let mut rows = Vec::with_capacity(kept.len());
    for slices in kept {
        rows.push(Tensor::cat(slices, 0)?);
    }
    let longest = rows.iter().map(|row| row.dims()[0]).max().unwrap_or(0);
    let mut lengths = Vec::with_capacity(rows.len());
    let mut padded = Vec::with_capacity(rows.len());
    for row in &rows {
        let length = row.dims()[0];
        lengths.push(length as u32);
        padded.push(row.pad_with_zeros(0, 0, longest - length)?);
    }
    let outputs = Tensor::stack(&padded, 0)?;
    Ok(crate::kernels::cuda::ops::concat_pool(&outputs, &lengths)?)
}

/// Runs one head block in eval mode (BatchNorm with the running statistics, then the
/// linear layer, no activation) on `x` `[batch, in]` and returns `[batch, out]` in the
/// dtype of `x`.
fn block_forward_eval(block: &HeadBlock, x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let detached = |tensor: &Tensor| tensor.detach().to_dtype(dtype);
    let scale = detached(&block.running_var)?
        .affine(1.0, BN_EPS)?
        .sqrt()?
        .recip()?
        .mul(&detached(block.bn_weight.as_tensor())?)?;
    let normalised = x
        .detach()
        .broadcast_sub(&detached(&block.running_mean)?)?
        .broadcast_mul(&scale)?
        .broadcast_add(&detached(block.bn_bias.as_tensor())?)?;
    Ok(normalised.matmul(&detached(block.linear.as_tensor())?.t()?)?)
}

/// Creates the head blocks of `config`.
fn new_head(config: &ClassifierConfig, rng: &mut Rng, device: &Device) -> Result<Vec<HeadBlock>> {
    let sizes = config.head_sizes();
    let dropouts = config.head_dropouts();
    let mut head = Vec::with_capacity(dropouts.len());
    for (pair, dropout) in sizes.windows(2).zip(dropouts) {
        let (input, output) = (pair[0], pair[1]);
        let bound = 1.0 / (input as f32).sqrt();
        let weight = Tensor::from_vec(
            rng.uniform(input * output, -bound, bound),
            (output, input),
            device,
        )?;
        head.push(HeadBlock {
            bn_weight: Var::from_tensor(&Tensor::ones(input, DType::F32, device)?)?,
            bn_bias: Var::from_tensor(&Tensor::zeros(input, DType::F32, device)?)?,
            running_mean: Tensor::zeros(input, DType::F32, device)?,
            running_var: Tensor::ones(input, DType::F32, device)?,
            linear: Var::from_tensor(&weight)?,
            dropout,
        });
    }
    Ok(head)
}

/// Returns the softmax of `logits` `[batch, n_classes]` over classes.
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(
        &logits.to_dtype(DType::F32)?.contiguous()?,
    )?)
}

/// Returns the index of the largest value of `row`.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (index, &value) in row.iter().enumerate() {
        if value > row[best] {
            best = index;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a 2-layer classifier of embedding 4 and hidden 6 with a head `[12, 5, 3]`.
    fn small() -> Classifier {
        let mut config = ClassifierConfig::new(30, 3);
        config.encoder.layers = 2;
        config.encoder.embedding_size = 4;
        config.encoder.hidden_size = 6;
        config.encoder.dropout_multiplier = 0.0;
        config.head_hidden = vec![5];
        config.bptt = 4;
        Classifier::new(config, &mut Rng::seed(11), &Device::Cpu).unwrap()
    }

    fn documents() -> Vec<Vec<u32>> {
        vec![
            vec![2, 3, 4, 5, 6, 7],
            vec![8, 9],
            vec![10, 11, 12, 13, 14, 15, 16, 17, 18],
            vec![19],
        ]
    }

    /// Returns the column means and the unbiased column variances of `rows`.
    fn column_stats(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
        let n = rows.len() as f64;
        let width = rows[0].len();
        let mut means = vec![0.0; width];
        let mut variances = vec![0.0; width];
        for column in 0..width {
            let mean = rows.iter().map(|r| r[column] as f64).sum::<f64>() / n;
            let squares: f64 = rows.iter().map(|r| (r[column] as f64 - mean).powi(2)).sum();
            means[column] = mean;
            variances[column] = squares / (n - 1.0);
        }
        (means, variances)
    }

    fn assert_close(got: &Tensor, want: &[f64], what: &str) {
        let got = got.to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (index, (g, w)) in got.iter().zip(want).enumerate() {
            let tolerance = 1e-6 + 1e-4 * w.abs();
            assert!(
                (*g as f64 - w).abs() < tolerance,
                "{what}[{index}]: got {g}, expected {w}"
            );
        }
    }

    #[test]
    fn training_step_updates_running_stats() {
        // PyTorch BatchNorm1d from mean 0 and variance 1 with momentum 0.1:
        // running_mean = 0.1 * batch mean, running_var = 0.9 + 0.1 * unbiased variance.
        let mut model = small();
        let docs = documents();
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let output = model
            .forward_train(&refs, &[false; 4], &mut Rng::seed(1))
            .unwrap();
        let (means, variances) = column_stats(&output.pooled.to_vec2::<f32>().unwrap());
        let want_mean: Vec<f64> = means.iter().map(|m| 0.1 * m).collect();
        let want_var: Vec<f64> = variances.iter().map(|v| 0.9 + 0.1 * v).collect();
        assert_close(&model.head[0].running_mean, &want_mean, "running_mean");
        assert_close(&model.head[0].running_var, &want_var, "running_var");
    }

    #[test]
    fn running_stats_move_between_models() {
        let mut trained = small();
        let docs = documents();
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        trained
            .forward_train(&refs, &[false; 4], &mut Rng::seed(1))
            .unwrap();
        let stats = trained.running_statistics();
        assert_eq!(stats.len(), 2 * trained.head.len());
        let mut fresh = small();
        let before = fresh
            .predict(&refs)
            .unwrap()
            .logits
            .to_vec2::<f32>()
            .unwrap();
        let map: HashMap<String, Tensor> = stats.into_iter().collect();
        fresh.set_running_statistics(&map).unwrap();
        let want = trained
            .predict(&refs)
            .unwrap()
            .logits
            .to_vec2::<f32>()
            .unwrap();
        let got = fresh
            .predict(&refs)
            .unwrap()
            .logits
            .to_vec2::<f32>()
            .unwrap();
        assert_ne!(before, want, "training moved the running statistics");
        assert_eq!(got, want);

        let wrong = HashMap::from([(
            "head.1.bn.running_var".to_string(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        )]);
        let error = fresh
            .set_running_statistics(&wrong)
            .unwrap_err()
            .to_string();
        assert!(error.contains("head.1.bn.running_var"), "{error}");
    }

    #[test]
    fn population_stats_match_eval_features() {
        let mut model = small();
        let docs = documents();
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        model.set_population_statistics(&refs, 3).unwrap();
        let pooled = model.predict(&refs).unwrap().pooled;
        let (means, variances) = column_stats(&pooled.to_vec2::<f32>().unwrap());
        assert_close(&model.head[0].running_mean, &means, "block 0 mean");
        assert_close(&model.head[0].running_var, &variances, "block 0 variance");
        // The second block reads the first block's eval output with the new statistics.
        let hidden = block_forward_eval(&model.head[0], &pooled)
            .unwrap()
            .relu()
            .unwrap();
        let (means, variances) = column_stats(&hidden.to_vec2::<f32>().unwrap());
        assert_close(&model.head[1].running_mean, &means, "block 1 mean");
        assert_close(&model.head[1].running_var, &variances, "block 1 variance");
    }

    #[test]
    fn population_stats_report_each_batch() {
        let mut model = small();
        let docs = documents();
        let refs: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let mut batches = Vec::new();
        model
            .set_population_statistics_with_progress(&refs, 3, &mut |n| batches.push(n))
            .unwrap();
        assert_eq!(batches, vec![3, refs.len() - 3]);
    }

    #[test]
    fn population_stats_need_two_documents() {
        let mut model = small();
        let error = model.set_population_statistics(&[&[2, 3]], 8).unwrap_err();
        assert!(error.to_string().contains("at least 2"), "{error}");
    }
}
