//! fastai AWD-LSTM language model weights mapped to the crate's parameter names.
//!
//! Recognised layouts (keys as fastai 2.8 and 1.x write them):
//! - fastai 2.x `Learner.save`: `0.encoder.weight`, `0.encoder_dp.emb.weight`, per
//!   layer `0.rnns.{i}.weight_hh_l0_raw` and `0.rnns.{i}.module.{weight_ih_l0,
//!   bias_ih_l0, bias_hh_l0}`, then `1.decoder.weight` and `1.decoder.bias`.
//! - fastai 1.x: the same plus `0.rnns.{i}.module.weight_hh_l0`, the weight-dropped
//!   copy of `weight_hh_l0_raw` from the last training step. It is ignored.
//! - either of them inside `{"model": state_dict, "opt": optimizer_state}`.
//! - `save_encoder` output: the encoder keys without the `0.` prefix and no decoder.
//!
//! Canonical names: `encoder.weight` [V, E]; `rnns.{i}.weight_ih` [4H, In];
//! `rnns.{i}.weight_hh` [4H, H]; `rnns.{i}.bias_ih` [4H]; `rnns.{i}.bias_hh` [4H];
//! `decoder.bias` [V]; and `decoder.weight` [V, E] only when it differs from the
//! embedding (otherwise the decoder is tied to `encoder.weight`). Gate rows are in
//! PyTorch's order: input, forget, cell, output.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor, D};

use super::pickle::{Unpickler, Value};
use super::torch::load_torch;
use super::{read_checked, ImportError};

/// Key layout a weight file was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastaiLayout {
    /// fastai 2.x language model state dict.
    Fastai2,
    /// fastai 1.x language model state dict, with the extra dropped-out `weight_hh_l0`.
    Fastai1,
    /// Encoder saved by `save_encoder`: no `0.` prefix and no decoder.
    Encoder,
}

/// Model sizes inferred from the imported tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportedShape {
    /// Rows of the embedding (V).
    pub vocab_size: usize,
    /// Embedding width (E).
    pub embedding_size: usize,
    /// Hidden size of the first LSTM layer (H). In a tied model the last layer's
    /// output size is `embedding_size` instead.
    pub hidden_size: usize,
    /// Number of LSTM layers.
    pub layers: usize,
    /// Whether the file has a decoder (false for encoder-only files).
    pub has_decoder: bool,
    /// Whether the decoder weight equals the embedding (false without a decoder).
    pub tied: bool,
}

/// Weights of a fastai language model under canonical names.
#[derive(Debug)]
pub struct FastaiWeights {
    /// Canonical `(name, tensor)` pairs, f32 on the CPU, in model order.
    pub tensors: Vec<(String, Tensor)>,
    /// Sizes inferred from the tensors.
    pub shape: ImportedShape,
    /// Key layout of the file.
    pub layout: FastaiLayout,
    /// Whether the file also held optimizer state (`Learner.save(with_opt=True)`), which is skipped.
    pub had_optimizer: bool,
}

impl FastaiWeights {
    /// Looks up a tensor by its canonical name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Loads a fastai language model or encoder `.pth` file (either torch format).
pub fn load_fastai_lm(path: &Path) -> Result<FastaiWeights, ImportError> {
    let file = load_torch(path)?;
    let is_learner = matches!(file.root.get("model"), Some(Value::Dict(_)));
    let state: HashMap<&str, &Tensor> = if is_learner {
        file.tensors
            .iter()
            .filter_map(|(name, tensor)| name.strip_prefix("model.").map(|n| (n, tensor)))
            .collect()
    } else {
        file.tensors
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor))
            .collect()
    };
    let mut names: Vec<&str> = state.keys().copied().collect();
    names.sort_unstable();

    let keys = expected_keys(&names);
    check_keys(path, &names, &keys)?;
    let mut weights = canonical_tensors(path, &state, &keys)?;
    weights.had_optimizer = is_learner && file.root.get("opt").is_some();
    Ok(weights)
}

/// The file keys a layout needs, in canonical order.
struct LayoutKeys {
    layout: FastaiLayout,
    encoder: String,
    encoder_dropout: String,
    /// Per layer: weight_ih, weight_hh (the raw matrix), bias_ih and bias_hh.
    layers: Vec<[String; 4]>,
    /// The fastai 1.x dropped-out copies of weight_hh, required but not imported.
    dropped_copies: Vec<String>,
    decoder: Option<(String, String)>,
}

impl LayoutKeys {
    fn all(&self) -> Vec<&str> {
        let mut keys = vec![self.encoder.as_str(), self.encoder_dropout.as_str()];
        for layer in &self.layers {
            keys.extend(layer.iter().map(String::as_str));
        }
        keys.extend(self.dropped_copies.iter().map(String::as_str));
        if let Some((weight, bias)) = &self.decoder {
            keys.push(weight);
            keys.push(bias);
        }
        keys
    }
}

/// Picks the layout from the key names and lists the keys it requires.
fn expected_keys(names: &[&str]) -> LayoutKeys {
    let encoder_only = names.contains(&"encoder.weight") && !names.contains(&"0.encoder.weight");
    let prefix = if encoder_only { "" } else { "0." };
    let rnn_prefix = format!("{prefix}rnns.");

    let layer_count = names
        .iter()
        .filter_map(|name| name.strip_prefix(&rnn_prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(1, |max| max + 1);
    let has_dropped_copy = names
        .iter()
        .any(|name| name.starts_with(&rnn_prefix) && name.ends_with(".module.weight_hh_l0"));

    let layers = (0..layer_count)
        .map(|i| {
            let layer = format!("{rnn_prefix}{i}.");
            [
                format!("{layer}module.weight_ih_l0"),
                format!("{layer}weight_hh_l0_raw"),
                format!("{layer}module.bias_ih_l0"),
                format!("{layer}module.bias_hh_l0"),
            ]
        })
        .collect();
    let dropped_copies = if has_dropped_copy {
        (0..layer_count)
            .map(|i| format!("{rnn_prefix}{i}.module.weight_hh_l0"))
            .collect()
    } else {
        Vec::new()
    };
    let layout = match (encoder_only, has_dropped_copy) {
        (true, _) => FastaiLayout::Encoder,
        (false, true) => FastaiLayout::Fastai1,
        (false, false) => FastaiLayout::Fastai2,
    };
    LayoutKeys {
        layout,
        encoder: format!("{prefix}encoder.weight"),
        encoder_dropout: format!("{prefix}encoder_dp.emb.weight"),
        layers,
        dropped_copies,
        decoder: (!encoder_only)
            .then(|| ("1.decoder.weight".to_owned(), "1.decoder.bias".to_owned())),
    }
}

fn check_keys(path: &Path, names: &[&str], keys: &LayoutKeys) -> Result<(), ImportError> {
    let expected: BTreeSet<&str> = keys.all().into_iter().collect();
    let present: BTreeSet<&str> = names.iter().copied().collect();
    let missing: Vec<String> = expected
        .difference(&present)
        .map(|k| (*k).to_owned())
        .collect();
    let unexpected: Vec<String> = present
        .difference(&expected)
        .map(|k| (*k).to_owned())
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    Err(ImportError::KeyMismatch {
        path: path.to_path_buf(),
        missing,
        unexpected,
    })
}

/// Checks the shapes of the required tensors and renames them.
fn canonical_tensors(
    path: &Path,
    state: &HashMap<&str, &Tensor>,
    keys: &LayoutKeys,
) -> Result<FastaiWeights, ImportError> {
    let get = |key: &str| -> Result<Tensor, ImportError> {
        state
            .get(key)
            .map(|t| (*t).clone())
            .ok_or_else(|| ImportError::KeyMismatch {
                path: path.to_path_buf(),
                missing: vec![key.to_owned()],
                unexpected: Vec::new(),
            })
    };
    let mismatch = |key: &str, actual: &Tensor, expected: String| ImportError::ShapeMismatch {
        path: path.to_path_buf(),
        key: key.to_owned(),
        actual: actual.dims().to_vec(),
        expected,
    };

    let encoder = get(&keys.encoder)?;
    let &[vocab_size, embedding_size] = encoder.dims() else {
        return Err(mismatch(
            &keys.encoder,
            &encoder,
            "[vocab, embedding]".into(),
        ));
    };
    let mut tensors = vec![("encoder.weight".to_owned(), encoder.clone())];

    let mut input_size = embedding_size;
    let mut hidden_sizes = Vec::new();
    for (i, [ih_key, hh_key, bias_ih_key, bias_hh_key]) in keys.layers.iter().enumerate() {
        let weight_ih = get(ih_key)?;
        let &[gates, inputs] = weight_ih.dims() else {
            return Err(mismatch(
                ih_key,
                &weight_ih,
                format!("[4 * hidden, {input_size}]"),
            ));
        };
        if gates % 4 != 0 || gates == 0 || inputs != input_size {
            return Err(mismatch(
                ih_key,
                &weight_ih,
                format!("[4 * hidden, {input_size}]"),
            ));
        }
        let hidden = gates / 4;
        let weight_hh = get(hh_key)?;
        if weight_hh.dims() != [gates, hidden] {
            return Err(mismatch(hh_key, &weight_hh, format!("[{gates}, {hidden}]")));
        }
        let bias_ih = get(bias_ih_key)?;
        let bias_hh = get(bias_hh_key)?;
        for (key, bias) in [(bias_ih_key, &bias_ih), (bias_hh_key, &bias_hh)] {
            if bias.dims() != [gates] {
                return Err(mismatch(key, bias, format!("[{gates}]")));
            }
        }
        tensors.push((format!("rnns.{i}.weight_ih"), weight_ih));
        tensors.push((format!("rnns.{i}.weight_hh"), weight_hh));
        tensors.push((format!("rnns.{i}.bias_ih"), bias_ih));
        tensors.push((format!("rnns.{i}.bias_hh"), bias_hh));
        hidden_sizes.push(hidden);
        input_size = hidden;
    }

    let mut tied = false;
    if let Some((weight_key, bias_key)) = &keys.decoder {
        let weight = get(weight_key)?;
        if weight.dims() != [vocab_size, input_size] {
            return Err(mismatch(
                weight_key,
                &weight,
                format!("[{vocab_size}, {input_size}]"),
            ));
        }
        let bias = get(bias_key)?;
        if bias.dims() != [vocab_size] {
            return Err(mismatch(bias_key, &bias, format!("[{vocab_size}]")));
        }
        tied = weight.dims() == encoder.dims() && tensors_equal(&weight, &encoder, path)?;
        if !tied {
            tensors.push(("decoder.weight".to_owned(), weight));
        }
        tensors.push(("decoder.bias".to_owned(), bias));
    }

    let shape = ImportedShape {
        vocab_size,
        embedding_size,
        hidden_size: hidden_sizes.first().copied().unwrap_or(embedding_size),
        layers: keys.layers.len(),
        has_decoder: keys.decoder.is_some(),
        tied,
    };
    Ok(FastaiWeights {
        tensors,
        shape,
        layout: keys.layout,
        had_optimizer: false,
    })
}

fn tensors_equal(a: &Tensor, b: &Tensor, path: &Path) -> Result<bool, ImportError> {
    let to_vec = |t: &Tensor| {
        t.flatten_all()
            .and_then(|flat| flat.to_vec1::<f32>())
            .map_err(|source| ImportError::Tensor {
                context: format!("comparing decoder and embedding of {}", path.display()),
                source,
            })
    };
    Ok(to_vec(a)? == to_vec(b)?)
}

/// Reads a fastai vocabulary: a pickled Python list of str (protocols 2 to 5).
pub fn read_itos(path: &Path) -> Result<Vec<String>, ImportError> {
    let data = read_checked(path)?;
    let value = Unpickler::new(&data)
        .load()
        .map_err(|err| ImportError::from_pickle(path, "itos list", err))?;
    let Value::List(items) = value else {
        return Err(ImportError::NotItos {
            path: path.to_path_buf(),
            detail: format!("the pickle holds {}", describe(&value)),
        });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(token) => Ok(token),
            other => Err(ImportError::NotItos {
                path: path.to_path_buf(),
                detail: format!("item {index} is {}", describe(&other)),
            }),
        })
        .collect()
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::String(_) => "a str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
        Value::Global { .. } => "a global",
        Value::Object { .. } => "an object",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
    }
}

/// Checks that a vocabulary has one token per embedding row.
pub fn check_itos(itos: &[String], shape: &ImportedShape) -> Result<(), ImportError> {
    if itos.len() != shape.vocab_size {
        return Err(ImportError::ItosLength {
            itos_len: itos.len(),
            rows: shape.vocab_size,
        });
    }
    Ok(())
}

/// Re-indexes a pretrained embedding [V_old, E] and decoder bias [V_old] for `new_itos`,
/// as fastai's `match_embeds` does: a token of the old vocabulary keeps its row and
/// bias, and a new token gets the mean row and the mean bias. Returns the embedding
/// [V_new, E] and bias [V_new]. When a token occurs twice in `old_itos` its last
/// row is used, like fastai's `{w: i for i, w in enumerate(itos)}`.
pub fn match_embeddings(
    old_itos: &[String],
    old_embedding: &Tensor,
    old_decoder_bias: &Tensor,
    new_itos: &[String],
) -> Result<(Tensor, Tensor), ImportError> {
    let tensor_error = |source| ImportError::Tensor {
        context: "matching embeddings to the new vocabulary".into(),
        source,
    };
    let (rows, _) = old_embedding.dims2().map_err(tensor_error)?;
    if old_itos.len() != rows {
        return Err(ImportError::ItosLength {
            itos_len: old_itos.len(),
            rows,
        });
    }
    let bias_rows = old_decoder_bias.dims1().map_err(tensor_error)?;
    if bias_rows != rows {
        return Err(ImportError::ItosLength {
            itos_len: old_itos.len(),
            rows: bias_rows,
        });
    }

    let old_index: HashMap<&str, u32> = old_itos
        .iter()
        .enumerate()
        .map(|(i, token)| (token.as_str(), i as u32))
        .collect();
    // Row `rows` of the extended tables below is the mean, used for unknown tokens.
    let indices: Vec<u32> = new_itos
        .iter()
        .map(|token| {
            old_index
                .get(token.as_str())
                .copied()
                .unwrap_or(rows as u32)
        })
        .collect();
    let indices = Tensor::from_vec(indices, new_itos.len(), &Device::Cpu).map_err(tensor_error)?;

    let embedding = old_embedding
        .to_device(&Device::Cpu)
        .map_err(tensor_error)?;
    let mean_row = embedding.mean_keepdim(0).map_err(tensor_error)?;
    let table = Tensor::cat(&[&embedding, &mean_row], 0).map_err(tensor_error)?;
    let new_embedding = table.index_select(&indices, 0).map_err(tensor_error)?;

    let bias = old_decoder_bias
        .to_device(&Device::Cpu)
        .map_err(tensor_error)?;
    let mean_bias = bias.mean_keepdim(D::Minus1).map_err(tensor_error)?;
    let bias_table = Tensor::cat(&[&bias, &mean_bias], 0).map_err(tensor_error)?;
    let new_bias = bias_table.index_select(&indices, 0).map_err(tensor_error)?;
    Ok((new_embedding, new_bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn lm_state(decoder_weight: &Tensor) -> Vec<(String, Tensor)> {
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let encoder = Tensor::ones((5, 2), DType::F32, &Device::Cpu).unwrap();
        vec![
            ("0.encoder.weight".into(), encoder.clone()),
            ("0.encoder_dp.emb.weight".into(), encoder),
            ("0.rnns.0.module.weight_ih_l0".into(), zeros(&[8, 2])),
            ("0.rnns.0.weight_hh_l0_raw".into(), zeros(&[8, 2])),
            ("0.rnns.0.module.bias_ih_l0".into(), zeros(&[8])),
            ("0.rnns.0.module.bias_hh_l0".into(), zeros(&[8])),
            ("1.decoder.weight".into(), decoder_weight.clone()),
            ("1.decoder.bias".into(), zeros(&[5])),
        ]
    }

    fn import(state: &[(String, Tensor)]) -> Result<FastaiWeights, ImportError> {
        let map: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut names: Vec<&str> = map.keys().copied().collect();
        names.sort_unstable();
        let keys = expected_keys(&names);
        check_keys(Path::new("lm.pth"), &names, &keys)?;
        canonical_tensors(Path::new("lm.pth"), &map, &keys)
    }

    #[test]
    fn untied_decoder_is_kept() {
        let decoder = Tensor::full(0.5f32, (5, 2), &Device::Cpu).unwrap();
        let weights = import(&lm_state(&decoder)).unwrap();
        assert!(!weights.shape.tied);
        let kept = weights.tensor("decoder.weight").unwrap();
        assert_eq!(kept.to_vec2::<f32>().unwrap(), vec![vec![0.5f32; 2]; 5]);
    }

    #[test]
    fn tied_decoder_is_dropped() {
        let decoder = Tensor::ones((5, 2), DType::F32, &Device::Cpu).unwrap();
        let weights = import(&lm_state(&decoder)).unwrap();
        assert!(weights.shape.tied);
        assert!(weights.tensor("decoder.weight").is_none());
        assert_eq!(weights.shape.hidden_size, 2);
    }

    #[test]
    fn wrong_gate_rows_are_rejected() {
        let decoder = Tensor::ones((5, 2), DType::F32, &Device::Cpu).unwrap();
        let mut state = lm_state(&decoder);
        state[3].1 = Tensor::zeros((8, 3), DType::F32, &Device::Cpu).unwrap();
        let err = import(&state).unwrap_err();
        let ImportError::ShapeMismatch { key, actual, .. } = &err else {
            panic!("expected a shape mismatch, got {err}");
        };
        assert_eq!(key, "0.rnns.0.weight_hh_l0_raw");
        assert_eq!(actual, &vec![8, 3]);
    }
}
