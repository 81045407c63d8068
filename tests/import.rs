//! Import of fastai AWD-LSTM weights and PyTorch checkpoints.
//!
//! The fixtures in `tests/fixtures/fastai-weights/` are a tiny fastai 2.8.12 language
//! model (vocab 40, embedding 8, hidden 12, 3 layers) with random weights, saved by
//! PyTorch 2.15 in the zip and legacy formats, in fastai 1.x layout, with optimizer
//! state and as an encoder only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{IndexOp, Tensor};
use ulmfit::import::{
    fastai::check_itos, load_fastai_lm, load_torch, match_embeddings, read_itos, FastaiLayout,
    ImportError, ImportedShape, TorchFormat,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fastai-weights")
        .join(name)
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1().unwrap()
}

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

const LM_SHAPE: ImportedShape = ImportedShape {
    vocab_size: 40,
    embedding_size: 8,
    hidden_size: 12,
    layers: 3,
    has_decoder: true,
    tied: true,
};

#[test]
fn every_fixture_loads_with_its_layout() {
    let cases = [
        ("tiny_lm.pth", FastaiLayout::Fastai2, false, true),
        ("tiny_lm_legacy.pth", FastaiLayout::Fastai2, false, true),
        ("tiny_lm_v1layout.pth", FastaiLayout::Fastai1, false, true),
        ("tiny_lm_learner.pth", FastaiLayout::Fastai2, true, true),
        ("tiny_enc.pth", FastaiLayout::Encoder, false, false),
    ];
    for (name, layout, had_optimizer, has_decoder) in cases {
        let weights = load_fastai_lm(&fixture(name)).unwrap();
        assert_eq!(weights.layout, layout, "{name}");
        assert_eq!(weights.had_optimizer, had_optimizer, "{name}");
        let expected_shape = ImportedShape {
            has_decoder,
            tied: has_decoder,
            ..LM_SHAPE
        };
        assert_eq!(weights.shape, expected_shape, "{name}");
    }
}

#[test]
fn canonical_names_and_shapes() {
    let weights = load_fastai_lm(&fixture("tiny_lm.pth")).unwrap();
    let mut expected: Vec<(String, Vec<usize>)> = vec![("encoder.weight".into(), vec![40, 8])];
    for (i, (hidden, input)) in [(12, 8), (12, 12), (8, 12)].into_iter().enumerate() {
        expected.push((format!("rnns.{i}.weight_ih"), vec![4 * hidden, input]));
        expected.push((format!("rnns.{i}.weight_hh"), vec![4 * hidden, hidden]));
        expected.push((format!("rnns.{i}.bias_ih"), vec![4 * hidden]));
        expected.push((format!("rnns.{i}.bias_hh"), vec![4 * hidden]));
    }
    expected.push(("decoder.bias".into(), vec![40]));
    let actual: Vec<(String, Vec<usize>)> = weights
        .tensors
        .iter()
        .map(|(name, tensor)| (name.clone(), tensor.dims().to_vec()))
        .collect();
    assert_eq!(actual, expected);
}

#[test]
fn canonical_tensors_identical_across_formats() {
    let reference = load_fastai_lm(&fixture("tiny_lm.pth")).unwrap();
    for name in [
        "tiny_lm_legacy.pth",
        "tiny_lm_v1layout.pth",
        "tiny_lm_learner.pth",
        "tiny_enc.pth",
    ] {
        let other = load_fastai_lm(&fixture(name)).unwrap();
        for (key, tensor) in &other.tensors {
            let expected = reference.tensor(key).unwrap();
            assert_eq!(values(tensor), values(expected), "{name}: {key}");
        }
    }
}

#[test]
fn encoder_only_file_has_no_decoder_tensors() {
    let weights = load_fastai_lm(&fixture("tiny_enc.pth")).unwrap();
    assert_eq!(weights.tensors.len(), 13);
    assert!(weights.tensor("decoder.bias").is_none());
    assert!(weights.tensor("decoder.weight").is_none());
}

#[test]
fn torch_tensors_match_recorded_shapes() {
    let text = std::fs::read_to_string(fixture("tiny_lm_keys.json")).unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (name, prefix, entries) in [
        ("tiny_lm.pth", "", &recorded["tiny_lm.pth"]),
        ("tiny_lm_legacy.pth", "", &recorded["tiny_lm_legacy.pth"]),
        (
            "tiny_lm_v1layout.pth",
            "",
            &recorded["tiny_lm_v1layout.pth"],
        ),
        ("tiny_enc.pth", "", &recorded["tiny_enc.pth"]),
        (
            "tiny_lm_learner.pth",
            "model.",
            &recorded["tiny_lm_learner.pth"]["model"],
        ),
    ] {
        let file = load_torch(&fixture(name)).unwrap();
        let expected: Vec<(String, Vec<usize>)> = entries
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, entry)| {
                let shape = entry["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (format!("{prefix}{key}"), shape)
            })
            .collect();
        // serde_json sorts object keys, so compare both sides sorted.
        let mut actual: Vec<(String, Vec<usize>)> = file
            .tensors
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, tensor)| (key.clone(), tensor.dims().to_vec()))
            .collect();
        actual.sort();
        assert_eq!(actual, expected, "{name}");
    }
}

#[test]
fn torch_format_is_detected() {
    let zip = load_torch(&fixture("tiny_lm.pth")).unwrap();
    assert_eq!(zip.format, TorchFormat::Zip);
    let legacy = load_torch(&fixture("tiny_lm_legacy.pth")).unwrap();
    assert_eq!(legacy.format, TorchFormat::Legacy);
}

#[test]
fn learner_file_keeps_optimizer_tree() {
    let file = load_torch(&fixture("tiny_lm_learner.pth")).unwrap();
    let opt = file.root.get("opt").unwrap();
    assert!(opt.get("state").is_some());
    assert!(opt.get("hypers").is_some());
}

#[test]
fn v1_layout_uses_raw_hidden_weight() {
    let file = load_torch(&fixture("tiny_lm_v1layout.pth")).unwrap();
    let weights = load_fastai_lm(&fixture("tiny_lm_v1layout.pth")).unwrap();
    for i in 0..3 {
        let imported = values(weights.tensor(&format!("rnns.{i}.weight_hh")).unwrap());
        let raw = values(
            file.tensor(&format!("0.rnns.{i}.weight_hh_l0_raw"))
                .unwrap(),
        );
        let dropped = values(
            file.tensor(&format!("0.rnns.{i}.module.weight_hh_l0"))
                .unwrap(),
        );
        assert_eq!(imported, raw, "layer {i}");
        assert_ne!(imported, dropped, "layer {i}");
    }
}

#[test]
fn values_match_pytorch() {
    // Printed with PyTorch 2.15 from torch.load("tiny_lm.pth").
    let weights = load_fastai_lm(&fixture("tiny_lm_legacy.pth")).unwrap();
    let encoder = weights.tensor("encoder.weight").unwrap();
    assert_eq!(
        values(&encoder.i((0, 0..4)).unwrap()),
        vec![0.030324697, -0.35918814, 0.2913242, 0.35894722]
    );
    assert_eq!(
        values(&encoder.i(39).unwrap()),
        vec![
            0.3705966,
            0.20644623,
            0.3737949,
            0.07341868,
            0.05604738,
            -0.11959875,
            -0.08437431,
            -0.26573282
        ]
    );
    let hh = weights.tensor("rnns.2.weight_hh").unwrap();
    assert_eq!(
        values(&hh.i((31, 5..8)).unwrap()),
        vec![-0.13129717, -0.09747821, 0.10232359]
    );
    let ih = weights.tensor("rnns.0.weight_ih").unwrap();
    assert_eq!(
        values(&ih.i((5, 0..3)).unwrap()),
        vec![-0.15021229, 0.074395716, 0.060878992]
    );
    let bias_hh = weights.tensor("rnns.1.bias_hh").unwrap();
    assert_eq!(
        values(&bias_hh.i(0..3).unwrap()),
        vec![-0.43221313, -0.08314371, -0.07195747]
    );
    let decoder_bias = weights.tensor("decoder.bias").unwrap();
    assert_eq!(
        values(&decoder_bias.i(37..40).unwrap()),
        vec![0.13726455, -0.33652878, -0.029541135]
    );
}

#[test]
fn itos_reads_both_protocols() {
    let itos = read_itos(&fixture("tiny_itos.pkl")).unwrap();
    let proto2 = read_itos(&fixture("tiny_itos_proto2.pkl")).unwrap();
    assert_eq!(itos.len(), 40);
    assert_eq!(
        itos[..9],
        ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]
    );
    assert_eq!(itos[9], "the");
    assert_eq!(itos[39], "is");
    assert_eq!(proto2, itos);
}

#[test]
fn itos_length_mismatch_names_both_sizes() {
    let itos = read_itos(&fixture("tiny_itos.pkl")).unwrap();
    assert!(check_itos(&itos, &LM_SHAPE).is_ok());
    let err = check_itos(&itos[..39], &LM_SHAPE).unwrap_err();
    assert!(matches!(
        err,
        ImportError::ItosLength {
            itos_len: 39,
            rows: 40
        }
    ));
    let message = err.to_string();
    assert!(message.contains("39"), "{message}");
    assert!(message.contains("40"), "{message}");
}

#[test]
fn itos_rejects_non_list() {
    let dir = tempfile::TempDir::new().unwrap();
    // Protocol 2 pickle of the int 7.
    let path = write_temp(&dir, "itos.pkl", b"\x80\x02K\x07.");
    let err = read_itos(&path).unwrap_err();
    assert!(matches!(err, ImportError::NotItos { .. }), "{err}");
}

fn strings(tokens: &[&str]) -> Vec<String> {
    tokens.iter().map(|t| (*t).to_owned()).collect()
}

#[test]
fn match_embeddings_keeps_known_rows() {
    let device = candle_core::Device::Cpu;
    let old_itos = strings(&["a", "b", "c"]);
    let embedding = Tensor::new(&[[0f32, 1.], [2., 3.], [4., 8.]], &device).unwrap();
    let bias = Tensor::new(&[1f32, 2., 6.], &device).unwrap();
    let new_itos = strings(&["c", "new", "a", "a"]);
    let (new_embedding, new_bias) =
        match_embeddings(&old_itos, &embedding, &bias, &new_itos).unwrap();
    // Mean row [2, 4] and mean bias 3 for the unknown token.
    assert_eq!(
        new_embedding.to_vec2::<f32>().unwrap(),
        vec![vec![4., 8.], vec![2., 4.], vec![0., 1.], vec![0., 1.]]
    );
    assert_eq!(new_bias.to_vec1::<f32>().unwrap(), vec![6., 3., 1., 1.]);
}

#[test]
fn match_embeddings_duplicate_uses_last_row() {
    let device = candle_core::Device::Cpu;
    let old_itos = strings(&["a", "b", "a"]);
    let embedding = Tensor::new(&[[0f32], [1.], [2.]], &device).unwrap();
    let bias = Tensor::new(&[0f32, 1., 2.], &device).unwrap();
    let (new_embedding, new_bias) =
        match_embeddings(&old_itos, &embedding, &bias, &strings(&["a"])).unwrap();
    assert_eq!(new_embedding.to_vec2::<f32>().unwrap(), vec![vec![2.]]);
    assert_eq!(new_bias.to_vec1::<f32>().unwrap(), vec![2.]);
}

#[test]
fn match_embeddings_rejects_wrong_itos_length() {
    let device = candle_core::Device::Cpu;
    let embedding = Tensor::zeros((3, 2), candle_core::DType::F32, &device).unwrap();
    let bias = Tensor::zeros(3, candle_core::DType::F32, &device).unwrap();
    let err =
        match_embeddings(&strings(&["a", "b"]), &embedding, &bias, &strings(&["a"])).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::ItosLength {
                itos_len: 2,
                rows: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn git_lfs_pointer_is_named() {
    let dir = tempfile::TempDir::new().unwrap();
    let pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 18681\n";
    let path = write_temp(&dir, "lm.pth", pointer);
    let err = load_fastai_lm(&path).unwrap_err();
    assert!(matches!(err, ImportError::GitLfsPointer { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("lm.pth"), "{message}");
    assert!(message.contains("git lfs pull"), "{message}");
}

#[test]
fn html_page_is_named() {
    let dir = tempfile::TempDir::new().unwrap();
    let page = b"\n<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n";
    let path = write_temp(&dir, "lm.pth", page);
    let err = load_torch(&path).unwrap_err();
    assert!(matches!(err, ImportError::HtmlPage { .. }), "{err}");
    assert!(err.to_string().contains("lm.pth"), "{err}");
}

#[test]
fn truncated_zip_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let bytes = std::fs::read(fixture("tiny_lm.pth")).unwrap();
    // Cut inside the storage of the first layer's hidden weight.
    let path = write_temp(&dir, "cut.pth", &bytes[..bytes.len() / 2]);
    let err = load_fastai_lm(&path).unwrap_err();
    assert!(matches!(err, ImportError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("cut.pth"), "{err}");
}

#[test]
fn truncated_legacy_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let bytes = std::fs::read(fixture("tiny_lm_legacy.pth")).unwrap();
    // Cut inside the last storage, the shared 40 x 8 embedding (1280 bytes).
    let path = write_temp(&dir, "cut.pth", &bytes[..bytes.len() - 100]);
    let err = load_fastai_lm(&path).unwrap_err();
    assert!(matches!(err, ImportError::Truncated { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("cut.pth"), "{message}");
    assert!(message.contains("needs 1280 bytes"), "{message}");
}

#[test]
fn truncated_legacy_pickle_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let bytes = std::fs::read(fixture("tiny_lm_legacy.pth")).unwrap();
    let path = write_temp(&dir, "cut.pth", &bytes[..1000]);
    let err = load_torch(&path).unwrap_err();
    assert!(matches!(err, ImportError::Truncated { .. }), "{err}");
}

#[test]
fn mismatched_keys_are_listed() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut bytes = std::fs::read(fixture("tiny_lm_legacy.pth")).unwrap();
    // Rename one key in the pickle, keeping its length so the stream stays valid.
    let old = b"1.decoder.bias";
    let at = bytes.windows(old.len()).position(|w| w == old).unwrap();
    bytes[at..at + old.len()].copy_from_slice(b"1.decoder.bia_");
    let path = write_temp(&dir, "renamed.pth", &bytes);
    let err = load_fastai_lm(&path).unwrap_err();
    let ImportError::KeyMismatch {
        missing,
        unexpected,
        ..
    } = &err
    else {
        panic!("expected a key mismatch, got {err}");
    };
    assert_eq!(missing, &vec!["1.decoder.bias".to_owned()]);
    assert_eq!(unexpected, &vec!["1.decoder.bia_".to_owned()]);
    assert!(err.to_string().contains("renamed.pth"), "{err}");
}

#[test]
fn unknown_layout_lists_keys() {
    let err = {
        let dir = tempfile::TempDir::new().unwrap();
        let mut bytes = std::fs::read(fixture("tiny_lm_legacy.pth")).unwrap();
        let old = b"0.encoder.weight";
        let at = bytes.windows(old.len()).position(|w| w == old).unwrap();
        bytes[at..at + old.len()].copy_from_slice(b"0.embedder.weigh");
        let path = write_temp(&dir, "other.pth", &bytes);
        load_fastai_lm(&path).unwrap_err()
    };
    let ImportError::KeyMismatch {
        missing,
        unexpected,
        ..
    } = &err
    else {
        panic!("expected a key mismatch, got {err}");
    };
    assert_eq!(missing, &vec!["0.encoder.weight".to_owned()]);
    assert_eq!(unexpected, &vec!["0.embedder.weigh".to_owned()]);
}

#[test]
fn global_os_system_is_rejected() {
    let dir = tempfile::TempDir::new().unwrap();
    // os.system("ls") via GLOBAL and REDUCE, protocol 2.
    let pickle = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
    for name in ["evil.pth", "evil.pkl"] {
        let path = write_temp(&dir, name, pickle);
        let err = if name.ends_with(".pth") {
            load_torch(&path).unwrap_err()
        } else {
            read_itos(&path).unwrap_err()
        };
        let ImportError::ForbiddenGlobal {
            module,
            name: global,
            ..
        } = &err
        else {
            panic!("expected a forbidden global, got {err}");
        };
        assert_eq!(module, "os");
        assert_eq!(global, "system");
        assert!(err.to_string().contains("os.system"), "{err}");
    }
}

#[test]
fn stack_global_os_system_is_rejected() {
    let dir = tempfile::TempDir::new().unwrap();
    // os.system("ls") via STACK_GLOBAL, protocol 4 with a frame.
    let pickle = b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02ls\x94\x85\x94R\x94.";
    let path = write_temp(&dir, "evil.pkl", pickle);
    let err = read_itos(&path).unwrap_err();
    let ImportError::ForbiddenGlobal { module, name, .. } = &err else {
        panic!("expected a forbidden global, got {err}");
    };
    assert_eq!(module, "os");
    assert_eq!(name, "system");
}

#[test]
fn builtins_eval_is_rejected() {
    let dir = tempfile::TempDir::new().unwrap();
    let pickle = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.";
    let path = write_temp(&dir, "evil.pkl", pickle);
    let err = read_itos(&path).unwrap_err();
    assert!(err.to_string().contains("builtins.eval"), "{err}");
}

#[test]
fn unknown_opcode_names_byte_and_offset() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = write_temp(&dir, "odd.pkl", b"\x80\x02]\xfe.");
    let message = read_itos(&path).unwrap_err().to_string();
    assert!(message.contains("0xfe"), "{message}");
    assert!(message.contains("byte 3"), "{message}");
    assert!(message.contains("odd.pkl"), "{message}");
}

#[test]
fn raw_tensors_keep_pickle_order() {
    // The raw state dict keeps pickle order, which fastai 2.x relies on.
    let file = load_torch(&fixture("tiny_lm.pth")).unwrap();
    let names: Vec<&str> = file.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"0.encoder.weight"));
    assert_eq!(names.last(), Some(&"1.decoder.bias"));
    let unique: BTreeMap<&str, ()> = names.iter().map(|n| (*n, ())).collect();
    assert_eq!(unique.len(), 16);
}
