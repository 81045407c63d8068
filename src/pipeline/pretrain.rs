//! Pretraining a language model from scratch on token files: the run's stored data and
//! model settings, fastai's WikiText-103 recipe, and the training and learning-rate
//! finder runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::lm_task::{LmTask, LmTaskSettings};
use crate::kernels::precision::Precision;
use crate::model::{AwdLstmConfig, LanguageModel};
use crate::rng::Rng;
use crate::text::token_file::TokenFile;
use crate::train::{
    AdamConfig, EpochRecord, LrFindResult, LrFinder, LrSpec, OneCycle, RunOptions, Schedule,
    TrainSettings, Trainer,
};

/// File in the output folder with the run's [`PretrainSpec`].
pub const SPEC_FILE: &str = "pretrain.json";
/// Token file of the training corpus in the output folder.
pub const TRAIN_TOKENS: &str = "train.tok";
/// Token file of the validation text in the output folder.
pub const VALID_TOKENS: &str = "valid.tok";
/// Checkpoint folder inside the output folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// fastai's WikiText-103 dropout multiplier (`drop_mult`).
pub const WT103_DROPOUT_MULTIPLIER: f32 = 0.1;
/// fastai's WikiText-103 peak learning rate.
pub const WT103_LR: f64 = 1e-2;
/// fastai's WikiText-103 window length in tokens.
pub const WT103_BPTT: usize = 80;

/// Stage name in progress lines, logs and checkpoints.
pub const STAGE: &str = "pretrain";

/// Added to the run seed for the weight initialisation, so it does not share a stream
/// with the dropout masks.
const INIT_SEED_OFFSET: u64 = 0x005e_ed0f_1a17;

/// Data and model settings of a pretraining run, stored in [`SPEC_FILE`] so that a
/// resumed run uses the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSpec {
    /// The architecture.
    pub model: AwdLstmConfig,
    /// Rows per batch.
    pub batch_size: usize,
    /// Tokens per window.
    pub bptt: usize,
    /// Whether every document is read backwards.
    pub backwards: bool,
    /// Activation regularisation factor.
    pub ar_alpha: f64,
    /// Temporal activation regularisation factor.
    pub tar_beta: f64,
    /// Format of the matrix products, or `None` in specs written before it was saved
    /// (a resumed run then takes `--precision`, f32 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

impl PretrainSpec {
    /// Returns the task settings of this spec.
    pub fn task_settings(&self) -> LmTaskSettings {
        LmTaskSettings {
            batch_size: self.batch_size,
            bptt: self.bptt,
            backwards: self.backwards,
            ar_alpha: self.ar_alpha,
            tar_beta: self.tar_beta,
        }
    }

    /// Writes the spec to `dir/pretrain.json`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(SPEC_FILE);
        let json = serde_json::to_string_pretty(self)?;
        fs::write(&path, json + "\n").with_context(|| format!("failed to write {}", path.display()))
    }

    /// Reads `dir/pretrain.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SPEC_FILE);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "failed to read {}; is {} the output folder of `ulmfit pretrain`?",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
    }
}

/// Returns the trainer settings of fastai's WikiText-103 recipe (fastai 2.x
/// `fit_one_cycle` with div 10, momentum 0.8 -> 0.7 -> 0.8, Adam with decoupled weight
/// decay 0.1, gradient clipping at norm 0.1) for the given epochs, peak rate and seed.
pub fn wt103_settings(
    epochs: usize,
    lr: f64,
    seed: u64,
    save_every: Option<usize>,
) -> TrainSettings {
    TrainSettings {
        stage: STAGE.into(),
        epochs,
        lr: LrSpec::Value(lr),
        schedule: Schedule::OneCycle(OneCycle {
            div: 10.0,
            moms: (0.8, 0.7, 0.8),
            ..OneCycle::default()
        }),
        adam: AdamConfig {
            wd: 0.1,
            ..AdamConfig::default()
        },
        clip: Some(0.1),
        accumulate: 1,
        freeze_to: 0,
        seed,
        save_every,
    }
}

/// Token files of a run.
#[derive(Debug, Clone)]
pub struct PretrainData {
    /// Training token file.
    pub train: PathBuf,
    /// Validation token file, if any.
    pub valid: Option<PathBuf>,
    /// SHA-256 of the vocabulary the files must have been built with.
    pub vocab_hash: String,
}

/// Opens the token files and builds the task with a freshly initialised model.
pub fn build_task(
    spec: &PretrainSpec,
    data: &PretrainData,
    seed: u64,
    device: &Device,
) -> anyhow::Result<LmTask> {
    let open = |path: &Path| -> anyhow::Result<Arc<TokenFile>> {
        let file = TokenFile::open(path, Some(&data.vocab_hash))
            .with_context(|| format!("failed to open token file {}", path.display()))?;
        Ok(Arc::new(file))
    };
    let train = open(&data.train)?;
    let valid = data.valid.as_deref().map(open).transpose()?;
    let mut rng = Rng::seed(seed.wrapping_add(INIT_SEED_OFFSET));
    let model = LanguageModel::new(spec.model.clone(), &mut rng, device)
        .context("failed to create the model")?;
    LmTask::new(model, train, valid, spec.task_settings())
}

/// Result of [`train`].
pub struct PretrainOutcome {
    /// The trained model.
    pub model: LanguageModel,
    /// Records of the epochs run by this call (none when resuming a finished run).
    pub records: Vec<EpochRecord>,
}

/// Trains `task` from scratch with `settings`, or, with `resume`, continues the run
/// checkpointed in `options.checkpoint_dir` after checking the settings given again.
pub fn train(
    mut task: LmTask,
    settings: TrainSettings,
    resume: Option<&serde_json::Map<String, serde_json::Value>>,
    options: RunOptions,
) -> anyhow::Result<PretrainOutcome> {
    let mut trainer = match resume {
        Some(given) => {
            let dir = options.checkpoint_dir.clone().ok_or_else(|| {
                anyhow::anyhow!("resuming needs a checkpoint folder in the run options")
            })?;
            Trainer::resume(&mut task, &dir, given, options)?
        }
        None => Trainer::new(&mut task, settings, options)?,
    };
    let records = trainer.fit(&mut task)?;
    Ok(PretrainOutcome {
        model: task.into_model(),
        records,
    })
}

/// Runs the learning-rate sweep on `task` with the recipe's optimizer settings.
pub fn find_lr(
    task: &mut LmTask,
    finder: &LrFinder,
    settings: &TrainSettings,
) -> anyhow::Result<LrFindResult> {
    Ok(Trainer::lr_find(task, finder, settings)?)
}
