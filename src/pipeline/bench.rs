//! Language-model throughput: training and inference tokens per second of the AWD-LSTM
//! on random token ids, with the sizes of fastai's reference runs.
//!
//! Training steps are forward, cross-entropy, backward and one AdamW step; inference is a
//! forward pass without gradient tracking. The hidden state carries over between batches,
//! as in fastai's language-model training. Warm-up batches run first and are not timed.
//!
//! FLOPs per token count the matrix products only (element-wise work, embedding lookups
//! and the optimizer are left out), two FLOPs per multiply-add:
//!
//! ```text
//! forward  = 2 * (sum over layers of 4 h_l (in_l + h_l)  +  vocab * embedding)
//! training = 3 * forward        (backward = gradients of inputs and of weights)
//! ```
//!
//! On the `small` preset that is 17.3 MFLOP per token forward and 51.8 MFLOP in training.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::kernels::precision::Precision;
use crate::model::{AwdLstmConfig, LanguageModel, ModelError};
use crate::rng::Rng;
use crate::train::groups::{Param, ParamGroup};
use crate::train::optimizer::{AdamConfig, AdamW};
use crate::train::TrainError;

/// f32 FMA peak of two Zen 5 cores at 2.6 GHz, whose FMA units are 512 bits wide: 2 cores
/// x 2 FMA units x 16 lanes x 2 FLOPs x 2.6 GHz, in FLOP/s. The roofline fractions are
/// relative to it.
pub const REFERENCE_PEAK_FLOPS: f64 = 332.8e9;

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Building or running the model failed.
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The optimizer failed.
    #[error(transparent)]
    Train(Box<TrainError>),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The options are invalid.
    #[error("invalid benchmark options: {0}")]
    Invalid(String),
}

impl From<ModelError> for BenchError {
    fn from(error: ModelError) -> Self {
        Self::Model(Box::new(error))
    }
}

impl From<TrainError> for BenchError {
    fn from(error: TrainError) -> Self {
        Self::Train(Box::new(error))
    }
}

/// Model and batch sizes of a benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LmPreset {
    /// Vocabulary 16,000, embedding 200, hidden 600, 3 layers, batch 32, bptt 70.
    Small,
    /// fastai's WikiText-103 model: vocabulary 60,000, embedding 400, hidden 1152,
    /// 3 layers, batch 64, bptt 70.
    Wt103,
}

impl LmPreset {
    /// Returns `(config, batch, bptt)` for the preset, with fastai's language-model
    /// dropouts.
    pub fn sizes(self) -> (AwdLstmConfig, usize, usize) {
        match self {
            Self::Small => (
                AwdLstmConfig {
                    embedding_size: 200,
                    hidden_size: 600,
                    ..AwdLstmConfig::language_model(16_000)
                },
                32,
                70,
            ),
            Self::Wt103 => (AwdLstmConfig::language_model(60_000), 64, 70),
        }
    }
}

/// Options of [`run_lm_bench`].
#[derive(Debug, Clone)]
pub struct LmBenchOptions {
    /// Model and batch sizes.
    pub preset: LmPreset,
    /// Timed batches for training and again for inference.
    pub batches: usize,
    /// Untimed batches before each timed phase.
    pub warmup: usize,
    /// Whether to time training (forward, backward, AdamW step).
    pub train: bool,
    /// Whether to time inference.
    pub infer: bool,
    /// Whether the training loss adds fastai's AR and TAR terms (alpha 2, beta 1).
    pub rnn_reg: bool,
    /// Whether the training loss uses the fused decoder and cross-entropy kernel.
    pub fused_loss: bool,
    /// Seed of the random token ids, initialisation and dropout masks.
    pub seed: u64,
    /// Format of the matrix products of the LSTM layers and the decoder.
    pub precision: Precision,
    /// Device the model runs on.
    pub device: Device,
}

impl LmBenchOptions {
    /// Returns fastai's reference settings for `preset`: 2 warm-up and 10 timed batches,
    /// both phases, no AR/TAR, the fused loss.
    pub fn new(preset: LmPreset) -> Self {
        Self {
            preset,
            batches: 10,
            warmup: 2,
            train: true,
            infer: true,
            rnn_reg: false,
            fused_loss: true,
            seed: 0,
            precision: Precision::F32,
            device: Device::Cpu,
        }
    }
}

/// Timings of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTiming {
    /// Tokens per second over all timed batches.
    pub tokens_per_s: f64,
    /// Median seconds per batch.
    pub batch_s_median: f64,
    /// Seconds of each timed batch.
    pub batch_s: Vec<f64>,
    /// Fraction of [`REFERENCE_PEAK_FLOPS`] reached by the matrix products.
    pub roofline_fraction: f64,
    /// Median seconds per batch of the forward pass and loss, the backward pass and the
    /// optimizer step (training only; inference is all forward).
    pub split_s_median: Option<[f64; 3]>,
}

/// Result of [`run_lm_bench`].
#[derive(Debug, Clone, Serialize)]
pub struct LmBenchReport {
    /// The preset.
    pub preset: LmPreset,
    /// Model configuration.
    pub config: AwdLstmConfig,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub bptt: usize,
    /// Rayon worker threads.
    pub threads: usize,
    /// Format of the matrix products (`f32` or `bf16`); parameters are always f32.
    pub precision: Precision,
    /// Whether the training loss used the fused decoder and cross-entropy kernel.
    pub fused_loss: bool,
    /// Trainable parameters.
    pub parameters: usize,
    /// Matrix-product FLOPs per token of a forward pass (see the module docs).
    pub flops_per_infer_token: f64,
    /// Matrix-product FLOPs per token of a training step.
    pub flops_per_train_token: f64,
    /// Training tokens per second, when timed.
    pub train_tokens_per_s: Option<f64>,
    /// Inference tokens per second, when timed.
    pub infer_tokens_per_s: Option<f64>,
    /// Training phase details.
    pub train: Option<PhaseTiming>,
    /// Inference phase details.
    pub infer: Option<PhaseTiming>,
    /// Peak resident memory of the process (`VmHWM`) in MiB, when the system reports it.
    pub peak_rss_mb: Option<f64>,
}

/// Returns the matrix-product FLOPs per token of a forward pass of `config` (see the
/// module docs for the formula).
pub fn forward_flops_per_token(config: &AwdLstmConfig) -> f64 {
    let mut multiply_adds = config.vocab_size * config.embedding_size;
    for layer in 0..config.layers {
        let (input, output) = config.layer_sizes(layer);
        multiply_adds += 4 * output * (input + output);
    }
    2.0 * multiply_adds as f64
}

/// Returns the process's peak resident set size (`VmHWM` in `/proc/self/status`) in MiB,
/// or `None` where that file does not exist.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Returns the median of a non-empty list.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Builds the model and times training and inference as `options` selects.
pub fn run_lm_bench(options: &LmBenchOptions) -> Result<LmBenchReport, BenchError> {
    if options.batches == 0 {
        return Err(BenchError::Invalid(
            "--batches must be at least 1".to_string(),
        ));
    }
    let device = options.device.clone();
    let (config, batch, bptt) = options.preset.sizes();
    let mut rng = Rng::seed(options.seed);
    let mut model = LanguageModel::new(config.clone(), &mut rng, &device)?;
    model.set_fused_loss(options.fused_loss);
    model.set_precision(options.precision);
    let parameters = model.vars().iter().map(|var| var.elem_count()).sum();
    let forward_flops = forward_flops_per_token(&config);
    let tokens_per_batch = (batch * bptt) as f64;
    let vocab = config.vocab_size as u64;
    let next_batch = |rng: &mut Rng| -> Result<(Tensor, Tensor), BenchError> {
        let ids: Vec<u32> = (0..batch * (bptt + 1))
            .map(|_| rng.below(vocab) as u32)
            .collect();
        let all = Tensor::from_vec(ids, (batch, bptt + 1), &device)?;
        Ok((
            all.narrow(1, 0, bptt)?.contiguous()?,
            all.narrow(1, 1, bptt)?.contiguous()?,
        ))
    };
    let summarise = |times: Vec<f64>, flops: f64| {
        let total: f64 = times.iter().sum();
        let tokens_per_s = tokens_per_batch * times.len() as f64 / total;
        let batch_s_median = median(&times);
        PhaseTiming {
            tokens_per_s,
            batch_s_median,
            batch_s: times,
            roofline_fraction: tokens_per_s * flops / REFERENCE_PEAK_FLOPS,
            split_s_median: None,
        }
    };

    let mut train = None;
    if options.train {
        let groups = model
            .layer_groups()
            .into_iter()
            .enumerate()
            .map(|(gi, vars)| {
                let params = vars
                    .into_iter()
                    .enumerate()
                    .map(|(pi, var)| Param::new(format!("group{gi}.param{pi}"), var))
                    .collect();
                ParamGroup::new(format!("group{gi}"), params)
            })
            .collect::<Vec<_>>();
        let lrs = vec![1e-3; groups.len()];
        let mut optimizer = AdamW::new(groups, AdamConfig::default())?;
        let (alpha, beta) = if options.rnn_reg {
            (2.0, 1.0)
        } else {
            (0.0, 0.0)
        };
        model.set_track_gradients(true);
        let mut times = Vec::with_capacity(options.batches);
        let mut splits = [const { Vec::new() }; 3];
        for index in 0..options.warmup + options.batches {
            let (input, targets) = next_batch(&mut rng)?;
            let start = Instant::now();
            let loss = model.forward_loss(&input, &targets, true, &mut rng, alpha, beta)?;
            // A GPU runs asynchronously: wait for it before each reading of the clock.
            device.synchronize()?;
            let forward_end = Instant::now();
            let store = loss.total.backward()?;
            drop(loss);
            let grads = optimizer.collect_grads(&store);
            drop(store);
            device.synchronize()?;
            let backward_end = Instant::now();
            optimizer.step(&grads, &lrs, 0.9)?;
            drop(grads);
            device.synchronize()?;
            let end = Instant::now();
            if index >= options.warmup {
                times.push((end - start).as_secs_f64());
                splits[0].push((forward_end - start).as_secs_f64());
                splits[1].push((backward_end - forward_end).as_secs_f64());
                splits[2].push((end - backward_end).as_secs_f64());
            }
        }
        let mut timing = summarise(times, 3.0 * forward_flops);
        timing.split_s_median = Some(splits.map(|split| median(&split)));
        train = Some(timing);
    }

    let mut infer = None;
    if options.infer {
        model.set_track_gradients(false);
        let mut times = Vec::with_capacity(options.batches);
        for index in 0..options.warmup + options.batches {
            let (input, _) = next_batch(&mut rng)?;
            let start = Instant::now();
            let output = model.forward(&input, false, &mut rng)?;
            device.synchronize()?;
            drop(output);
            if index >= options.warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        infer = Some(summarise(times, forward_flops));
    }

    Ok(LmBenchReport {
        preset: options.preset,
        batch,
        bptt,
        threads: rayon::current_num_threads(),
        precision: options.precision,
        fused_loss: options.fused_loss,
        parameters,
        flops_per_infer_token: forward_flops,
        flops_per_train_token: 3.0 * forward_flops,
        train_tokens_per_s: train.as_ref().map(|t| t.tokens_per_s),
        infer_tokens_per_s: infer.as_ref().map(|t| t.tokens_per_s),
        train,
        infer,
        peak_rss_mb: peak_rss_mb(),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_preset_flops_match_hand_count() {
        // Layers: 4*600*(200+600) + 4*600*(600+600) + 4*200*(600+200) = 5,440,000
        // multiply-adds; decoder 16,000*200 = 3,200,000; times 2 FLOPs.
        let (config, _, _) = LmPreset::Small.sizes();
        assert_eq!(forward_flops_per_token(&config), 17_280_000.0);
    }

    #[test]
    fn peak_rss_is_positive_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        }
    }
}
