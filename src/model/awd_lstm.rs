//! The AWD-LSTM language model: encoder, LSTM stack and (tied) linear decoder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::config::AwdLstmConfig;
use super::dropout::{apply_mask, embed, embedding_row_mask, locked_dropout_mask, WeightMask};
use super::lstm::LstmLayer;
use super::{ModelError, Result};
use crate::kernels::precision::{
    bf16_matmul, linear_inference, linear_packed, PackedWeight, Precision,
};
use crate::rng::Rng;

/// fastai's activation regularisation factor (`alpha`) for language models.
pub const DEFAULT_AR_ALPHA: f64 = 2.0;
/// fastai's temporal activation regularisation factor (`beta`) for language models.
pub const DEFAULT_TAR_BETA: f64 = 1.0;

/// Outputs of [`LanguageModel::forward`].
#[derive(Debug, Clone)]
pub struct LmOutput {
    /// Next-token scores before softmax, `[batch, time, vocab]`.
    pub logits: Tensor,
    /// Output of the last LSTM layer, `[batch, time, embedding]`.
    pub last_raw: Tensor,
    /// `last_raw` after output dropout (equal to it in eval), `[batch, time, embedding]`.
    pub last_dropped: Tensor,
}

/// The terms of the training loss, each a scalar tensor.
#[derive(Debug, Clone)]
pub struct LmLoss {
    /// Cross-entropy plus the AR and TAR terms: the value to backpropagate.
    pub total: Tensor,
    /// Mean cross-entropy over all positions.
    pub cross_entropy: Tensor,
}

impl LmOutput {
    /// Returns the mean cross-entropy of `logits` against `targets` (`[batch, time]` u32).
    pub fn cross_entropy(&self, targets: &Tensor) -> Result<Tensor> {
        let (batch, time, vocab) = self.logits.dims3()?;
        if targets.dims() != [batch, time] {
            return Err(ModelError::InvalidInput(format!(
                "targets have shape {:?}, expected [{batch}, {time}] like the input",
                targets.dims()
            )));
        }
        let logits = self.logits.reshape((batch * time, vocab))?;
        Ok(candle_nn::loss::cross_entropy(
            &logits,
            &targets.flatten_all()?,
        )?)
    }

    /// Returns fastai's language-model training loss: cross-entropy, plus
    /// `ar_alpha * mean(last_dropped^2)` (activation regularisation), plus
    /// `tar_beta * mean((last_raw[:, t+1] - last_raw[:, t])^2)` (temporal activation
    /// regularisation). fastai adds the two terms in training only: pass 0 for eval.
    pub fn loss(&self, targets: &Tensor, ar_alpha: f64, tar_beta: f64) -> Result<LmLoss> {
        let cross_entropy = self.cross_entropy(targets)?;
        regularised_loss(
            cross_entropy,
            &self.last_raw,
            &self.last_dropped,
            ar_alpha,
            tar_beta,
        )
    }
}

/// Adds the AR term on `last_dropped` and the TAR term on `last_raw` (both
/// `[batch, time, embedding]`) to `cross_entropy`.
fn regularised_loss(
    cross_entropy: Tensor,
    last_raw: &Tensor,
    last_dropped: &Tensor,
    ar_alpha: f64,
    tar_beta: f64,
) -> Result<LmLoss> {
    let mut total = cross_entropy.clone();
    if ar_alpha != 0.0 {
        let ar = last_dropped.sqr()?.mean_all()?.affine(ar_alpha, 0.0)?;
        total = total.add(&ar)?;
    }
    let time = last_raw.dims()[1];
    if tar_beta != 0.0 && time > 1 {
        let later = last_raw.narrow(1, 1, time - 1)?;
        let earlier = last_raw.narrow(1, 0, time - 1)?;
        let tar = later
            .sub(&earlier)?
            .sqr()?
            .mean_all()?
            .affine(tar_beta, 0.0)?;
        total = total.add(&tar)?;
    }
    Ok(LmLoss {
        total,
        cross_entropy,
    })
}

/// An AWD-LSTM language model whose hidden state carries over between calls.
#[derive(Debug)]
pub struct LanguageModel {
    config: AwdLstmConfig,
    encoder: Var,
    layers: Vec<LstmLayer>,
    /// Separate decoder weight `[vocab, embedding]`, or `None` when tied to the encoder.
    decoder_weight: Option<Var>,
    decoder_bias: Option<Var>,
    /// `(h, c)` per layer, each `[batch, layer output]`, detached from earlier graphs.
    hidden: Option<Vec<(Tensor, Tensor)>>,
    track_gradients: bool,
    fused_loss: bool,
    precision: Precision,
}

/// The last layer's output and the decoder parameters, before the decoder runs.
struct Encoded {
    last_raw: Tensor,
    last_dropped: Tensor,
    decoder_weight: Tensor,
    decoder_bias: Option<Tensor>,
}

impl LanguageModel {
    /// Creates a model in f32 with fastai's initialisation: embedding uniform in
    /// `[-0.1, 0.1)`, LSTM parameters as PyTorch (uniform in `±1/sqrt(hidden)`), decoder
    /// bias 0, and an untied decoder weight uniform in `[-0.1, 0.1)`.
    pub fn new(config: AwdLstmConfig, rng: &mut Rng, device: &Device) -> Result<Self> {
        config.validate().map_err(ModelError::InvalidConfig)?;
        let dtype = DType::F32;
        let (vocab, embedding) = (config.vocab_size, config.embedding_size);
        let uniform = |rng: &mut Rng, shape: &[usize], bound: f32| -> Result<Var> {
            let count = shape.iter().product();
            let tensor = Tensor::from_vec(rng.uniform(count, -bound, bound), shape, device)?;
            Ok(Var::from_tensor(&tensor)?)
        };
        let encoder = uniform(rng, &[vocab, embedding], 0.1)?;
        let mut layers = Vec::with_capacity(config.layers);
        for layer in 0..config.layers {
            let (input, output) = config.layer_sizes(layer);
            layers.push(LstmLayer::new(input, output, rng, dtype, device)?);
        }
        let decoder_weight = if config.tie_weights {
            None
        } else {
            Some(uniform(rng, &[vocab, embedding], 0.1)?)
        };
        let decoder_bias = if config.output_bias {
            Some(Var::zeros(vocab, dtype, device)?)
        } else {
            None
        };
        Ok(Self {
            config,
            encoder,
            layers,
            decoder_weight,
            decoder_bias,
            hidden: None,
            track_gradients: true,
            fused_loss: true,
            precision: Precision::F32,
        })
    }

    /// Returns the canonical parameter names and shapes that `config` needs, in order.
    pub fn parameter_shapes(config: &AwdLstmConfig) -> Vec<(String, Vec<usize>)> {
        let (vocab, embedding) = (config.vocab_size, config.embedding_size);
        let mut shapes = vec![("encoder.weight".to_string(), vec![vocab, embedding])];
        for layer in 0..config.layers {
            let (input, output) = config.layer_sizes(layer);
            shapes.push((format!("rnns.{layer}.weight_ih"), vec![4 * output, input]));
            shapes.push((format!("rnns.{layer}.weight_hh"), vec![4 * output, output]));
            shapes.push((format!("rnns.{layer}.bias_ih"), vec![4 * output]));
            shapes.push((format!("rnns.{layer}.bias_hh"), vec![4 * output]));
        }
        if !config.tie_weights {
            shapes.push(("decoder.weight".to_string(), vec![vocab, embedding]));
        }
        if config.output_bias {
            shapes.push(("decoder.bias".to_string(), vec![vocab]));
        }
        shapes
    }

    /// Builds a model from tensors under canonical names (`encoder.weight`,
    /// `rnns.{i}.weight_ih`, `rnns.{i}.weight_hh` (raw), `rnns.{i}.bias_ih`,
    /// `rnns.{i}.bias_hh`, `decoder.bias`, and `decoder.weight` when untied). The model
    /// takes the dtype and device of `encoder.weight`. Returns one error that lists every
    /// missing, unexpected and wrongly shaped tensor.
    pub fn from_tensors(config: AwdLstmConfig, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        config.validate().map_err(ModelError::InvalidConfig)?;
        let expected = Self::parameter_shapes(&config);
        super::check_parameters(&expected, tensors)?;

        let encoder_weight = &tensors["encoder.weight"];
        let dtype = encoder_weight.dtype();
        if !dtype.is_float() {
            return Err(ModelError::InvalidInput(format!(
                "encoder.weight has dtype {dtype:?}, expected a floating dtype"
            )));
        }
        let device = encoder_weight.device().clone();
        let var = |name: &str| -> Result<Var> {
            let tensor = tensors[name].to_device(&device)?.to_dtype(dtype)?;
            Ok(Var::from_tensor(&tensor)?)
        };
        let mut layers = Vec::with_capacity(config.layers);
        for layer in 0..config.layers {
            layers.push(LstmLayer {
                weight_ih: var(&format!("rnns.{layer}.weight_ih"))?,
                weight_hh: var(&format!("rnns.{layer}.weight_hh"))?,
                bias_ih: var(&format!("rnns.{layer}.bias_ih"))?,
                bias_hh: var(&format!("rnns.{layer}.bias_hh"))?,
            });
        }
        let decoder_weight = if config.tie_weights {
            None
        } else {
            Some(var("decoder.weight")?)
        };
        let decoder_bias = if config.output_bias {
            Some(var("decoder.bias")?)
        } else {
            None
        };
        Ok(Self {
            encoder: var("encoder.weight")?,
            config,
            layers,
            decoder_weight,
            decoder_bias,
            hidden: None,
            track_gradients: true,
            fused_loss: true,
            precision: Precision::F32,
        })
    }

    /// Builds a model from an ordered list of named tensors, as a file reader returns
    /// them. A name given twice is reported as unexpected.
    pub fn from_named_tensors(
        config: AwdLstmConfig,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<Self> {
        let mut map = HashMap::new();
        let mut duplicates = Vec::new();
        for (name, tensor) in tensors {
            if map.contains_key(&name) {
                duplicates.push(format!("{name} (given twice)"));
            }
            map.insert(name, tensor);
        }
        if !duplicates.is_empty() {
            return Err(ModelError::ParameterMismatch {
                missing: Vec::new(),
                unexpected: duplicates,
                wrong_shapes: Vec::new(),
            });
        }
        Self::from_tensors(config, &map)
    }

    /// Returns every parameter under its canonical name, in [`Self::parameter_shapes`]
    /// order. The tensors share storage with the model's variables.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut named = vec![(
            "encoder.weight".to_string(),
            self.encoder.as_tensor().clone(),
        )];
        for (index, layer) in self.layers.iter().enumerate() {
            for (suffix, var) in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                .iter()
                .zip(layer.vars())
            {
                named.push((format!("rnns.{index}.{suffix}"), var.as_tensor().clone()));
            }
        }
        if let Some(weight) = &self.decoder_weight {
            named.push(("decoder.weight".to_string(), weight.as_tensor().clone()));
        }
        if let Some(bias) = &self.decoder_bias {
            named.push(("decoder.bias".to_string(), bias.as_tensor().clone()));
        }
        named
    }

    /// Writes the parameters to a safetensors file under their canonical names.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        super::save_tensors(self.tensors(), path.as_ref())
    }

    /// Reads a model written by [`Self::save`] onto `device`.
    pub fn load(config: AwdLstmConfig, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let tensors = super::load_tensors(path.as_ref(), device)?;
        Self::from_tensors(config, &tensors)
    }

    /// Returns the configuration.
    pub fn config(&self) -> &AwdLstmConfig {
        &self.config
    }

    /// Returns the LSTM layers.
    pub fn layers(&self) -> &[LstmLayer] {
        &self.layers
    }

    /// Returns the embedding matrix `[vocab, embedding]` (also the tied decoder weight).
    pub fn encoder(&self) -> &Var {
        &self.encoder
    }

    /// Returns every trainable variable, in canonical order.
    pub fn vars(&self) -> Vec<Var> {
        self.layer_groups().into_iter().flatten().collect()
    }

    /// Returns the variables grouped as fastai's language-model layer groups: one group
    /// per LSTM layer (`weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`), then the encoder
    /// and decoder (`encoder.weight`, `decoder.weight` when untied, `decoder.bias`).
    pub fn layer_groups(&self) -> Vec<Vec<Var>> {
        let mut groups: Vec<Vec<Var>> = self.layers.iter().map(LstmLayer::vars).collect();
        let mut last = vec![self.encoder.clone()];
        last.extend(self.decoder_weight.iter().cloned());
        last.extend(self.decoder_bias.iter().cloned());
        groups.push(last);
        groups
    }

    /// Sets whether forward passes build a graph for backpropagation (default true).
    /// With `false`, the fused LSTM keeps no gates for a backward pass, so inference
    /// needs less memory.
    pub fn set_track_gradients(&mut self, track: bool) {
        self.track_gradients = track;
    }

    /// Sets whether [`Self::forward_loss`] computes the cross-entropy with the fused
    /// decoder kernel ([`crate::kernels::decoder`], the default), which never holds all
    /// logits at once, or from full logits with stock operations (the reference). A
    /// model on a GPU always takes the full logits, because the fused kernel is CPU-only.
    pub fn set_fused_loss(&mut self, fused: bool) {
        self.fused_loss = fused;
    }

    /// Sets the format of the matrix products of the LSTM layers and the decoder
    /// (default f32, which runs exactly as before this option existed). The parameters
    /// stay in their dtype. [`Precision::Bf16`] serves training and inference;
    /// [`Precision::Int8`] serves inference only, and training forwards then fail.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Returns the format of the matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Zeroes the hidden state, as before a new text or epoch.
    pub fn reset(&mut self) {
        self.hidden = None;
    }

    /// Returns the carried `(h, c)` of each layer, each `[batch, layer output]`, or
    /// `None` before the first forward and after [`Self::reset`].
    pub fn hidden_state(&self) -> Option<&[(Tensor, Tensor)]> {
        self.hidden.as_deref()
    }

    /// Replaces the carried `(h, c)` of each layer, as [`Self::hidden_state`] returns
    /// them, so a resumed run continues from a saved state. Fails when the number of
    /// layers or a state's width does not match the model.
    pub fn set_hidden_state(&mut self, hidden: Vec<(Tensor, Tensor)>) -> Result<()> {
        if hidden.len() != self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "hidden state has {} layers, the model {}",
                hidden.len(),
                self.layers.len()
            )));
        }
        for (index, ((h, c), layer)) in hidden.iter().zip(&self.layers).enumerate() {
            let width = layer.hidden_size();
            if h.dims().last() != Some(&width) || c.dims() != h.dims() {
                return Err(ModelError::InvalidInput(format!(
                    "hidden state of layer {index} has shapes {:?} and {:?}, expected [batch, {width}]",
                    h.dims(),
                    c.dims()
                )));
            }
        }
        self.hidden = Some(hidden);
        Ok(())
    }

    /// Returns the hidden state for a batch of `batch` rows. Like fastai, a smaller batch
    /// keeps the first rows of the carried state and a larger one adds zero rows.
    fn hidden_for_batch(
        &self,
        batch: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let mut states = Vec::with_capacity(self.layers.len());
        for (index, layer) in self.layers.iter().enumerate() {
            let width = layer.hidden_size();
            let zeros = || Tensor::zeros((batch, width), dtype, device);
            let state = match self.hidden.as_ref().map(|hidden| &hidden[index]) {
                None => (zeros()?, zeros()?),
                Some((h, c)) => {
                    let carried = h.dims()[0];
                    let resize = |t: &Tensor| -> candle_core::Result<Tensor> {
                        if carried == batch {
                            Ok(t.clone())
                        } else if carried > batch {
                            t.narrow(0, 0, batch)?.contiguous()
                        } else {
                            let extra = Tensor::zeros((batch - carried, width), dtype, device)?;
                            Tensor::cat(&[t, &extra], 0)
                        }
                    };
                    (resize(h)?, resize(c)?)
                }
            };
            states.push(state);
        }
        Ok(states)
    }

    fn param(&self, var: &Var) -> Tensor {
        if self.track_gradients {
            var.as_tensor().clone()
        } else {
            var.as_tensor().detach()
        }
    }

    /// Runs the model on `input` (`[batch, time]` u32 token ids), continuing from the
    /// carried hidden state, and stores the new state detached.
    ///
    /// With `train`, draws from `rng` in this order: the embedding row mask, the input
    /// mask, then per layer the weight mask and (except after the last layer) the hidden
    /// mask, and last the output mask. Without `train`, no dropout is applied and `rng`
    /// is not used.
    pub fn forward(&mut self, input: &Tensor, train: bool, rng: &mut Rng) -> Result<LmOutput> {
        let encoded = self.encode(input, train, rng)?;
        let (batch, time, embedding) = encoded.last_dropped.dims3()?;
        let vocab = self.config.vocab_size;
        let rows = encoded.last_dropped.reshape((batch * time, embedding))?;
        let weight = &encoded.decoder_weight;
        if !self.track_gradients && rows.device().is_cpu() {
            let bias = encoded.decoder_bias.as_ref();
            let logits = linear_inference(&rows, weight, bias, self.precision, None)?;
            return Ok(LmOutput {
                logits: logits.reshape((batch, time, vocab))?,
                last_raw: encoded.last_raw,
                last_dropped: encoded.last_dropped,
            });
        }
        let mut logits = match self.precision {
            Precision::Bf16 if rows.dtype() == DType::F32 => {
                bf16_matmul(&rows, weight, false, true)?
            }
            Precision::Int8 => {
                let values = weight
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let packed = PackedWeight::pack(&values, vocab, embedding, Precision::Int8);
                linear_packed(&rows, weight, packed.map(std::sync::Arc::new).as_ref())?
            }
            _ => rows.matmul(&weight.t()?)?,
        };
        if let Some(bias) = &encoded.decoder_bias {
            logits = logits.broadcast_add(bias)?;
        }
        Ok(LmOutput {
            logits: logits.reshape((batch, time, vocab))?,
            last_raw: encoded.last_raw,
            last_dropped: encoded.last_dropped,
        })
    }

    /// Runs [`Self::forward`] and returns fastai's language-model loss against `targets`
    /// (`[batch, time]` u32), as [`LmOutput::loss`] does, without returning the logits.
    /// Unless [`Self::set_fused_loss`] turned it off, the cross-entropy comes from the
    /// fused decoder kernel, so the `[batch * time, vocab]` logits and their gradient
    /// are never held whole. Draws from `rng` exactly as [`Self::forward`].
    pub fn forward_loss(
        &mut self,
        input: &Tensor,
        targets: &Tensor,
        train: bool,
        rng: &mut Rng,
        ar_alpha: f64,
        tar_beta: f64,
    ) -> Result<LmLoss> {
        // The fused decoder loss runs on the CPU only: other devices take the full logits.
        if !self.fused_loss || !self.encoder.device().is_cpu() {
            return self
                .forward(input, train, rng)?
                .loss(targets, ar_alpha, tar_beta);
        }
        let (batch, time) = self.check_input(input)?;
        if targets.dims() != [batch, time] {
            return Err(ModelError::InvalidInput(format!(
                "targets have shape {:?}, expected [{batch}, {time}] like the input",
                targets.dims()
            )));
        }
        let encoded = self.encode(input, train, rng)?;
        let embedding = self.config.embedding_size;
        let hidden = encoded.last_dropped.reshape((batch * time, embedding))?;
        let cross_entropy = crate::kernels::decoder::decoder_cross_entropy_with(
            &hidden,
            &encoded.decoder_weight,
            encoded.decoder_bias.as_ref(),
            &targets.flatten_all()?,
            self.precision,
        )?;
        regularised_loss(
            cross_entropy,
            &encoded.last_raw,
            &encoded.last_dropped,
            ar_alpha,
            tar_beta,
        )
    }

    /// Runs the embedding and the LSTM stack; stores the new hidden state.
    fn encode(&mut self, input: &Tensor, train: bool, rng: &mut Rng) -> Result<Encoded> {
        let (batch, time) = self.check_input(input)?;
        let device = self.encoder.device().clone();
        let dtype = self.encoder.dtype();
        let dropout = self.config.effective_dropout();
        let (vocab, embedding) = (self.config.vocab_size, self.config.embedding_size);
        let hidden = self.hidden_for_batch(batch, dtype, &device)?;

        // Time-major from here on: [time, batch, features].
        let ids = input.t()?.contiguous()?.flatten_all()?;
        let row_mask = match train {
            true => embedding_row_mask(rng, vocab, dropout.embedding, dtype, &device)?,
            false => None,
        };
        let encoder = self.param(&self.encoder);
        let embedded = embed(&encoder, &ids, row_mask.as_ref(), Some(self.config.pad_id))?
            .reshape((time, batch, embedding))?;
        let input_mask = match train {
            true => locked_dropout_mask(rng, batch, embedding, dropout.input, dtype, &device)?,
            false => None,
        };
        let mut activations = apply_mask(&embedded, input_mask.as_ref())?;

        let mut new_hidden = Vec::with_capacity(self.layers.len());
        let last_layer = self.layers.len() - 1;
        for (index, (layer, (h0, c0))) in self.layers.iter().zip(&hidden).enumerate() {
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
            let output = layer.forward(
                &activations,
                h0,
                c0,
                weight_mask.as_ref(),
                self.track_gradients,
                self.precision,
                None,
            )?;
            new_hidden.push((output.h_last.detach(), output.c_last.detach()));
            activations = output.outputs;
            if index != last_layer && train {
                let width = layer.hidden_size();
                let mask = locked_dropout_mask(rng, batch, width, dropout.hidden, dtype, &device)?;
                activations = apply_mask(&activations, mask.as_ref())?;
            }
        }
        self.hidden = Some(new_hidden);

        let last_raw = activations.transpose(0, 1)?.contiguous()?;
        let output_mask = match train {
            true => locked_dropout_mask(rng, batch, embedding, dropout.output, dtype, &device)?
                .map(|mask| mask.reshape((batch, 1, embedding)))
                .transpose()?,
            false => None,
        };
        let last_dropped = apply_mask(&last_raw, output_mask.as_ref())?;
        let decoder_weight = match &self.decoder_weight {
            Some(weight) => self.param(weight),
            None => encoder,
        };
        Ok(Encoded {
            last_raw,
            last_dropped,
            decoder_weight,
            decoder_bias: self.decoder_bias.as_ref().map(|bias| self.param(bias)),
        })
    }

    /// Checks that `input` is a non-empty `[batch, time]` u32 tensor of in-vocabulary ids
    /// and returns `(batch, time)`.
    fn check_input(&self, input: &Tensor) -> Result<(usize, usize)> {
        let (batch, time) = match input.dims() {
            [batch, time] if *batch > 0 && *time > 0 => (*batch, *time),
            dims => {
                return Err(ModelError::InvalidInput(format!(
                    "expected a non-empty [batch, time] tensor of token ids, got shape {dims:?}"
                )))
            }
        };
        if input.dtype() != DType::U32 {
            return Err(ModelError::InvalidInput(format!(
                "token ids must have dtype u32, got {:?}; convert them with to_dtype(DType::U32)",
                input.dtype()
            )));
        }
        let max_id = input.max_all()?.to_scalar::<u32>()?;
        if max_id as usize >= self.config.vocab_size {
            return Err(ModelError::InvalidInput(format!(
                "token id {max_id} is outside the vocabulary of {} tokens; numericalize the text with the model's vocabulary",
                self.config.vocab_size
            )));
        }
        Ok((batch, time))
    }
}
