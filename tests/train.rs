//! Trainer tests on a toy classifier: determinism, exact resume (in process and after
//! SIGKILL), checkpoint integrity, non-finite losses, freezing, logs and lr_find.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var, D};
use ulmfit::rng::Rng;
use ulmfit::train::{
    checkpoint, BatchIter, LrFinder, LrSpec, Metrics, Param, ParamGroup, RunOptions, Schedule,
    TrainError, TrainSettings, TrainTask, Trainer,
};

const FEATURES: usize = 4;
const HIDDEN: usize = 8;
const CLASSES: usize = 3;
const SAMPLES: usize = 64;
const BATCH: usize = 8;

/// Two-layer MLP with dropout on synthetic data whose class depends on the features.
struct Toy {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    x: Vec<f32>,
    y: Vec<u32>,
    /// Return a NaN loss at this (epoch, batch).
    nan_at: Option<(usize, usize)>,
    /// Sleep this long in each step (for the SIGKILL test).
    step_delay: Duration,
    epoch: usize,
    batch: usize,
}

impl Toy {
    fn new(init_seed: u64) -> Self {
        let mut data = Rng::seed(1234);
        let x = data.uniform(SAMPLES * FEATURES, -1.0, 1.0);
        let y = x
            .chunks(FEATURES)
            .map(|r| {
                let s = r[0] + 0.5 * r[1] - r[2];
                if s < -0.3 {
                    0
                } else if s < 0.3 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let mut init = Rng::seed(init_seed);
        let dev = Device::Cpu;
        let var = |rng: &mut Rng, shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            Var::from_vec(rng.uniform(n, -scale, scale), shape, &dev).unwrap()
        };
        Self {
            w1: var(&mut init, &[FEATURES, HIDDEN], 0.5),
            b1: var(&mut init, &[HIDDEN], 0.1),
            w2: var(&mut init, &[HIDDEN, CLASSES], 0.5),
            b2: var(&mut init, &[CLASSES], 0.1),
            x,
            y,
            nan_at: None,
            step_delay: Duration::ZERO,
            epoch: 0,
            batch: 0,
        }
    }

    fn logits(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut h = x
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        if let Some(mask) = mask {
            h = h.broadcast_mul(mask)?;
        }
        h.matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())
    }

    fn weights(&self) -> Vec<Vec<u32>> {
        [&self.w1, &self.b1, &self.w2, &self.b2]
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|f| f.to_bits())
                    .collect()
            })
            .collect()
    }
}

impl TrainTask for Toy {
    type Batch = (Tensor, Tensor, usize);

    fn groups(&self) -> Vec<ParamGroup> {
        vec![
            ParamGroup::new(
                "hidden",
                vec![
                    Param::new("hidden.weight", self.w1.clone()),
                    Param::no_decay("hidden.bias", self.b1.clone()),
                ],
            ),
            ParamGroup::new(
                "head",
                vec![
                    Param::new("head.weight", self.w2.clone()),
                    Param::no_decay("head.bias", self.b2.clone()),
                ],
            ),
        ]
    }

    fn batches_per_epoch(&self) -> usize {
        SAMPLES / BATCH
    }

    fn train_batches(
        &mut self,
        epoch: usize,
        mut rng: Rng,
        skip: usize,
    ) -> anyhow::Result<BatchIter<Self::Batch>> {
        self.epoch = epoch;
        self.batch = skip;
        let mut order: Vec<usize> = (0..SAMPLES).collect();
        rng.shuffle(&mut order);
        let (x, y) = (self.x.clone(), self.y.clone());
        let iter = order
            .chunks(BATCH)
            .map(<[usize]>::to_vec)
            .collect::<Vec<_>>()
            .into_iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, idx)| {
                let xs: Vec<f32> = idx
                    .iter()
                    .flat_map(|&j| x[j * FEATURES..(j + 1) * FEATURES].to_vec())
                    .collect();
                let ys: Vec<u32> = idx.iter().map(|&j| y[j]).collect();
                let xt = Tensor::from_vec(xs, (idx.len(), FEATURES), &Device::Cpu)?;
                let yt = Tensor::from_vec(ys, idx.len(), &Device::Cpu)?;
                Ok((xt, yt, i))
            });
        Ok(Box::new(iter))
    }

    fn batch_items(&self, batch: &Self::Batch) -> usize {
        batch.1.dims()[0]
    }

    fn train_step(&mut self, (x, y, i): Self::Batch, rng: &mut Rng) -> anyhow::Result<Tensor> {
        std::thread::sleep(self.step_delay);
        self.batch = i;
        if self.nan_at == Some((self.epoch, i)) {
            return Ok(Tensor::new(f32::NAN, &Device::Cpu)?);
        }
        let mask = Tensor::from_vec(rng.dropout_mask(HIDDEN, 0.2), HIDDEN, &Device::Cpu)?;
        let logits = self.logits(&x, Some(&mask))?;
        Ok(candle_nn::loss::cross_entropy(&logits, &y)?)
    }

    fn validate(&mut self) -> anyhow::Result<Metrics> {
        let x = Tensor::from_vec(self.x.clone(), (SAMPLES, FEATURES), &Device::Cpu)?;
        let y = Tensor::from_vec(self.y.clone(), SAMPLES, &Device::Cpu)?;
        let logits = self.logits(&x, None)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?;
        let predicted = logits
            .argmax(D::Minus1)?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        let mut metrics = Metrics::with_loss(f64::from(loss));
        metrics.insert("accuracy", ulmfit::train::accuracy(&predicted, &self.y));
        Ok(metrics)
    }
}

fn settings() -> TrainSettings {
    TrainSettings {
        stage: "toy".into(),
        epochs: 3,
        lr: LrSpec::Range(3e-3, 3e-2),
        schedule: Schedule::OneCycle(Default::default()),
        clip: Some(1.0),
        seed: 7,
        save_every: Some(3),
        ..TrainSettings::default()
    }
}

fn options(dir: Option<&Path>) -> RunOptions {
    RunOptions {
        checkpoint_dir: dir.map(Path::to_path_buf),
        config: serde_json::json!({"hidden": HIDDEN}),
        ..RunOptions::default()
    }
}

fn train_full(settings: TrainSettings) -> Toy {
    let mut task = Toy::new(1);
    let mut trainer = Trainer::new(&mut task, settings, options(None)).unwrap();
    trainer.fit(&mut task).unwrap();
    task
}

#[test]
fn same_seed_bit_identical() {
    let a = train_full(settings());
    let b = train_full(settings());
    assert_eq!(a.weights(), b.weights());
    assert_ne!(a.weights(), Toy::new(1).weights());
}

#[test]
fn toy_training_reduces_loss() {
    let mut task = Toy::new(1);
    let before = task.validate().unwrap().valid_loss;
    let mut trainer = Trainer::new(
        &mut task,
        TrainSettings {
            epochs: 10,
            lr: LrSpec::Value(0.05),
            ..settings()
        },
        options(None),
    )
    .unwrap();
    let records = trainer.fit(&mut task).unwrap();
    assert_eq!(records.len(), 10);
    assert!(
        records[9].valid_loss < before * 0.8,
        "{before} -> {}",
        records[9].valid_loss
    );
}

#[test]
fn resume_matches_uninterrupted() {
    let expected = train_full(settings()).weights();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    {
        let mut task = Toy::new(1);
        let opts = RunOptions {
            max_steps: Some(11),
            ..options(Some(&ckpt))
        };
        let mut trainer = Trainer::new(&mut task, settings(), opts).unwrap();
        trainer.fit(&mut task).unwrap();
        assert_eq!(trainer.state().opt_step, 11);
    }
    let state = checkpoint::read_state(&ckpt).unwrap();
    assert_eq!((state.epoch, state.batch_in_epoch), (1, 3));
    // Different initial weights: resume must overwrite them.
    let mut task = Toy::new(99);
    let mut trainer =
        Trainer::resume(&mut task, &ckpt, &Default::default(), options(Some(&ckpt))).unwrap();
    trainer.fit(&mut task).unwrap();
    assert_eq!(task.weights(), expected);
}

#[test]
fn resume_with_accumulation_matches() {
    let run = TrainSettings {
        accumulate: 2,
        save_every: Some(1),
        ..settings()
    };
    let expected = train_full(run.clone()).weights();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    {
        let mut task = Toy::new(1);
        let opts = RunOptions {
            max_steps: Some(5),
            ..options(Some(&ckpt))
        };
        Trainer::new(&mut task, run, opts)
            .unwrap()
            .fit(&mut task)
            .unwrap();
    }
    let mut task = Toy::new(5);
    let mut trainer =
        Trainer::resume(&mut task, &ckpt, &Default::default(), options(None)).unwrap();
    trainer.fit(&mut task).unwrap();
    assert_eq!(task.weights(), expected);
}

#[test]
fn resume_mismatch_names_setting() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut task = Toy::new(1);
    let opts = RunOptions {
        max_steps: Some(2),
        ..options(Some(&ckpt))
    };
    Trainer::new(&mut task, settings(), opts)
        .unwrap()
        .fit(&mut task)
        .unwrap();
    let given = serde_json::json!({"seed": 7, "epochs": 5});
    let err = Trainer::resume(&mut task, &ckpt, given.as_object().unwrap(), options(None))
        .err()
        .unwrap();
    assert!(
        matches!(&err, TrainError::ResumeMismatch { setting, .. } if setting == "epochs"),
        "{err}"
    );
    assert!(err.to_string().contains("`epochs`"), "{err}");
}

#[test]
fn truncated_weights_error_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut task = Toy::new(1);
    let opts = RunOptions {
        max_steps: Some(1),
        ..options(Some(&ckpt))
    };
    Trainer::new(&mut task, settings(), opts)
        .unwrap()
        .fit(&mut task)
        .unwrap();
    let weights = ckpt.join(checkpoint::WEIGHTS_FILE);
    let len = std::fs::metadata(&weights).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap();
    file.set_len(len / 2).unwrap();
    let err = checkpoint::load(&ckpt, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("weights.safetensors"), "{err}");
    assert!(err.contains("truncated or corrupted"), "{err}");
}

#[test]
fn invalid_safetensors_error_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut task = Toy::new(1);
    let opts = RunOptions {
        max_steps: Some(1),
        ..options(Some(&ckpt))
    };
    Trainer::new(&mut task, settings(), opts)
        .unwrap()
        .fit(&mut task)
        .unwrap();
    // Without a recorded hash, the safetensors parser itself must reject the bytes.
    let state_path = ckpt.join(checkpoint::STATE_FILE);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["sha256"] = serde_json::json!({});
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    std::fs::write(
        ckpt.join(checkpoint::OPTIMIZER_FILE),
        b"\x10\0\0\0\0\0\0\0{\"a\":",
    )
    .unwrap();
    let err = checkpoint::load(&ckpt, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer.safetensors"), "{err}");
    assert!(err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn nan_loss_reports_step_and_keeps_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut task = Toy::new(1);
    task.nan_at = Some((1, 5));
    let run = TrainSettings {
        save_every: None,
        ..settings()
    };
    let mut trainer = Trainer::new(&mut task, run, options(Some(&ckpt))).unwrap();
    let err = trainer.fit(&mut task).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFinite {
                what: "loss",
                epoch: 1,
                step: 5,
                ..
            }
        ),
        "{err}"
    );
    let saved = checkpoint::load(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(saved.state.epoch, 1);
    assert_eq!(saved.state.batch_in_epoch, 0);
}

#[test]
fn frozen_group_stays_fixed() {
    let mut task = Toy::new(1);
    let before = task.weights();
    let run = TrainSettings {
        freeze_to: -1,
        ..settings()
    };
    Trainer::new(&mut task, run, options(None))
        .unwrap()
        .fit(&mut task)
        .unwrap();
    let after = task.weights();
    assert_eq!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    assert_ne!(after[2], before[2]);
}

#[test]
fn json_log_one_line_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let mut task = Toy::new(1);
    let opts = RunOptions {
        json_log: Some(log.clone()),
        ..options(None)
    };
    Trainer::new(&mut task, settings(), opts)
        .unwrap()
        .fit(&mut task)
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["epoch"], 2);
    assert_eq!(lines[0]["stage"], "toy");
    for key in ["train_loss", "valid_loss", "accuracy", "seconds"] {
        assert!(lines[1][key].is_number(), "missing {key} in {}", lines[1]);
    }
}

#[test]
fn lr_find_restores_weights() {
    let mut task = Toy::new(1);
    let before = task.weights();
    let finder = LrFinder {
        start_lr: 1e-5,
        end_lr: 10.0,
        num_it: 40,
        stop_div: true,
    };
    let result = Trainer::lr_find(&mut task, &finder, &settings()).unwrap();
    assert_eq!(task.weights(), before);
    assert!(
        result.lrs.len() > 6 && result.lrs.len() <= 40,
        "{}",
        result.lrs.len()
    );
    assert_eq!(result.lrs[0], 1e-5);
    let suggestion = result.valley().unwrap();
    assert!((1e-5..10.0).contains(&suggestion), "{suggestion}");
}

/// Environment variable that turns `child_training_process` into the worker.
const CHILD_DIR: &str = "ULMFIT_TRAIN_CHILD_DIR";

/// The process the SIGKILL test starts: trains slowly, checkpointing every step.
#[test]
fn child_training_process() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mut task = Toy::new(1);
    task.step_delay = Duration::from_millis(40);
    let run = TrainSettings {
        save_every: Some(1),
        ..settings()
    };
    let mut trainer = Trainer::new(&mut task, run, options(Some(Path::new(&dir)))).unwrap();
    trainer.fit(&mut task).unwrap();
}

#[test]
fn resume_after_sigkill_matches() {
    let run = TrainSettings {
        save_every: Some(1),
        ..settings()
    };
    let expected = train_full(run).weights();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_training_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &ckpt)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ckpt.join(checkpoint::STATE_FILE).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "child wrote no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    // std's Child::kill sends SIGKILL on Unix.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let state = checkpoint::read_state(&ckpt).unwrap();
    assert!(state.opt_step < 24, "child finished before it was killed");
    let mut task = Toy::new(3);
    let mut trainer =
        Trainer::resume(&mut task, &ckpt, &Default::default(), options(None)).unwrap();
    trainer.fit(&mut task).unwrap();
    assert_eq!(task.weights(), expected);
}
