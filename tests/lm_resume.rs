//! A language-model run stopped mid-epoch after a checkpoint and resumed from it ends with
//! weights bit-identical to an uninterrupted run: the checkpoint carries the LSTM hidden
//! state, the data position, the optimizer moments and the random generator.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use ulmfit::model::{AwdLstmConfig, LanguageModel};
use ulmfit::pipeline::lm_task::{LmTask, LmTaskSettings};
use ulmfit::pipeline::pretrain::wt103_settings;
use ulmfit::rng::Rng;
use ulmfit::text::token_file::{TokenFile, TokenFileWriter};
use ulmfit::train::{RunOptions, Trainer};

const VOCAB: usize = 50;
const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Writes 40 documents of 30 to 90 random ids, each starting with xxbos (id 2).
fn write_corpus(path: &Path) {
    let mut rng = Rng::seed(5);
    let mut writer = TokenFileWriter::create(path, VOCAB as u64, HASH, None).expect("create");
    for _ in 0..40 {
        let length = 30 + rng.below(60) as usize;
        let mut ids = vec![2u32];
        ids.extend((1..length).map(|_| 9 + rng.below(VOCAB as u64 - 9) as u32));
        writer.push_document(&ids, None).expect("push");
    }
    writer.finish().expect("finish");
}

fn task(corpus: &Path) -> LmTask {
    let config = AwdLstmConfig {
        embedding_size: 16,
        hidden_size: 24,
        layers: 2,
        ..AwdLstmConfig::language_model(VOCAB)
    };
    let model = LanguageModel::new(config, &mut Rng::seed(1), &Device::Cpu).expect("model");
    let file = Arc::new(TokenFile::open(corpus, Some(HASH)).expect("token file"));
    let settings = LmTaskSettings {
        batch_size: 4,
        bptt: 10,
        backwards: false,
        ar_alpha: 2.0,
        tar_beta: 1.0,
    };
    LmTask::new(model, file, None, settings).expect("task")
}

fn options(checkpoints: &Path, max_steps: Option<usize>) -> RunOptions {
    RunOptions {
        checkpoint_dir: Some(checkpoints.to_path_buf()),
        progress: false,
        max_steps,
        ..RunOptions::default()
    }
}

fn weights(task: &LmTask) -> Vec<Vec<f32>> {
    task.model()
        .tensors()
        .iter()
        .map(|(_, t)| t.flatten_all().and_then(|t| t.to_vec1()).expect("values"))
        .collect()
}

#[test]
fn mid_epoch_resume_is_bit_identical() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let corpus = dir.path().join("corpus.tok");
    write_corpus(&corpus);
    let settings = wt103_settings(2, 1e-2, 7, Some(3));

    let mut full = task(&corpus);
    let mut trainer = Trainer::new(
        &mut full,
        settings.clone(),
        options(&dir.path().join("a"), None),
    )
    .expect("trainer");
    trainer.fit(&mut full).expect("uninterrupted run");
    let batches = full.layout().n_batches;
    assert!(batches > 8, "{batches} batches per epoch");

    // Stop 3 steps into the second epoch (the trainer checkpoints when it stops
    // mid-epoch), drop everything and resume from the folder.
    let stop_at = batches + 3;
    let resumed_dir = dir.path().join("b");
    {
        let mut first = task(&corpus);
        let mut trainer = Trainer::new(
            &mut first,
            settings.clone(),
            options(&resumed_dir, Some(stop_at)),
        )
        .expect("trainer");
        trainer.fit(&mut first).expect("interrupted run");
        assert!(!trainer.is_done());
        assert!(trainer.state().batch_in_epoch > 0, "stopped mid-epoch");
    }

    let mut second = task(&corpus);
    let given = serde_json::Map::new();
    let mut trainer = Trainer::resume(
        &mut second,
        &resumed_dir,
        &given,
        options(&resumed_dir, None),
    )
    .expect("resume");
    trainer.fit(&mut second).expect("resumed run");
    assert!(trainer.is_done());
    assert_eq!(weights(&second), weights(&full));
}
