//! Re-indexing a pretrained language model for a new vocabulary before fine-tuning, as
//! fastai's `match_embeds` does when `language_model_learner` loads pretrained weights.

use candle_core::{DType, Tensor};

use crate::import::{match_embeddings, ImportError};
use crate::model::{AwdLstmConfig, LanguageModel, ModelError};
use crate::text::vocab::Vocab;
use crate::text::PAD;

/// Errors of [`remap_language_model`].
#[derive(Debug, thiserror::Error)]
pub enum RemapError {
    /// The old vocabulary does not fit the model, or a tensor operation failed.
    #[error("failed to remap the model to the new vocabulary: {0}")]
    Match(#[from] ImportError),
    /// The remapped tensors do not form a model.
    #[error("failed to build the remapped model: {0}")]
    Model(Box<ModelError>),
}

impl From<ModelError> for RemapError {
    fn from(source: ModelError) -> Self {
        Self::Model(Box::new(source))
    }
}

impl From<candle_core::Error> for RemapError {
    fn from(source: candle_core::Error) -> Self {
        Self::Model(Box::new(ModelError::Candle(source)))
    }
}

/// Returns a copy of `model` whose embedding, untied decoder weight and decoder bias are
/// re-indexed from `old_vocab` (the model's) to `new_vocab`. A token of both keeps its
/// rows and bias, and a new token gets the mean row and the mean bias. The LSTM weights
/// are copied unchanged. `pad_id` becomes the id of `xxpad` in `new_vocab` (kept when absent).
pub fn remap_language_model(
    model: &LanguageModel,
    old_vocab: &Vocab,
    new_vocab: &Vocab,
) -> Result<LanguageModel, RemapError> {
    let (old_tokens, new_tokens) = (old_vocab.tokens(), new_vocab.tokens());
    let device = model.encoder().device().clone();
    let dtype = model.encoder().dtype();
    let to_f32 = |tensor: &Tensor| tensor.to_dtype(DType::F32);
    let back = |tensor: Tensor| tensor.to_dtype(dtype)?.to_device(&device);

    let mut tensors = model.tensors();
    // A model without decoder bias is matched with a zero bias, which is then discarded.
    let zero_bias = Tensor::zeros(model.config().vocab_size, DType::F32, &device)?;
    let bias = match tensors.iter().find(|(name, _)| name == "decoder.bias") {
        Some((_, bias)) => to_f32(bias)?,
        None => zero_bias.clone(),
    };
    let (new_embedding, new_bias) = match_embeddings(
        old_tokens,
        &to_f32(model.encoder().as_tensor())?,
        &bias,
        new_tokens,
    )?;

    for (name, tensor) in tensors.iter_mut() {
        match name.as_str() {
            "encoder.weight" => *tensor = back(new_embedding.clone())?,
            "decoder.bias" => *tensor = back(new_bias.clone())?,
            "decoder.weight" => {
                let (rows, _) =
                    match_embeddings(old_tokens, &to_f32(tensor)?, &zero_bias, new_tokens)?;
                *tensor = back(rows)?;
            }
            _ => {}
        }
    }

    let config = AwdLstmConfig {
        vocab_size: new_vocab.len(),
        pad_id: new_vocab.get(PAD).unwrap_or(model.config().pad_id),
        ..model.config().clone()
    };
    Ok(LanguageModel::from_named_tensors(config, tensors)?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;

    fn vocab(tokens: &[&str]) -> Vocab {
        Vocab::from_tokens(tokens.iter().map(|t| t.to_string()).collect()).unwrap()
    }

    fn values(model: &LanguageModel, name: &str) -> Vec<f32> {
        let (_, tensor) = model
            .tensors()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap();
        tensor.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Builds a one-layer model with embedding width 2, hidden width 2 and 3 tokens.
    fn small_model(tie_weights: bool) -> LanguageModel {
        let config = AwdLstmConfig {
            embedding_size: 2,
            hidden_size: 2,
            layers: 1,
            pad_id: 1,
            tie_weights,
            ..AwdLstmConfig::language_model(3)
        };
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        let tensor =
            |values: &[f32], shape: &[usize]| Tensor::from_slice(values, shape, &device).unwrap();
        tensors.insert(
            "encoder.weight".to_string(),
            tensor(&[1.0, 2.0, 3.0, 4.0, 5.0, 9.0], &[3, 2]),
        );
        tensors.insert("decoder.bias".to_string(), tensor(&[0.5, -1.0, 2.0], &[3]));
        if !tie_weights {
            tensors.insert(
                "decoder.weight".to_string(),
                tensor(&[0.0, 1.0, 2.0, 3.0, 4.0, 8.0], &[3, 2]),
            );
        }
        tensors.insert("rnns.0.weight_ih".to_string(), tensor(&[0.25; 16], &[8, 2]));
        tensors.insert("rnns.0.weight_hh".to_string(), tensor(&[0.5; 16], &[8, 2]));
        tensors.insert("rnns.0.bias_ih".to_string(), tensor(&[0.1; 8], &[8]));
        tensors.insert("rnns.0.bias_hh".to_string(), tensor(&[0.2; 8], &[8]));
        LanguageModel::from_tensors(config, &tensors).unwrap()
    }

    #[test]
    fn known_tokens_keep_rows_and_new_get_mean() {
        let model = small_model(true);
        let old = vocab(&["xxunk", "xxpad", "good"]);
        let new = vocab(&["xxunk", "great", "xxpad", "good"]);
        let remapped = remap_language_model(&model, &old, &new).unwrap();

        // Mean row of [1, 2], [3, 4], [5, 9] is [3, 5]; mean bias of 0.5, -1, 2 is 0.5.
        let embedding = values(&remapped, "encoder.weight");
        assert_eq!(embedding, vec![1.0, 2.0, 3.0, 5.0, 3.0, 4.0, 5.0, 9.0]);
        let bias = values(&remapped, "decoder.bias");
        assert_eq!(bias, vec![0.5, 0.5, -1.0, 2.0]);
    }

    #[test]
    fn config_follows_new_vocabulary() {
        let model = small_model(true);
        let old = vocab(&["xxunk", "xxpad", "good"]);
        let new = vocab(&["xxunk", "great", "xxpad", "good"]);
        let remapped = remap_language_model(&model, &old, &new).unwrap();
        assert_eq!(remapped.config().vocab_size, 4);
        assert_eq!(remapped.config().pad_id, 2);
    }

    #[test]
    fn lstm_weights_are_unchanged() {
        let model = small_model(true);
        let old = vocab(&["xxunk", "xxpad", "good"]);
        let new = vocab(&["xxunk", "bad"]);
        let remapped = remap_language_model(&model, &old, &new).unwrap();
        assert_eq!(values(&remapped, "rnns.0.weight_hh"), vec![0.5; 16]);
        assert_eq!(values(&remapped, "rnns.0.bias_ih"), vec![0.1; 8]);
    }

    #[test]
    fn untied_decoder_weight_is_remapped() {
        let model = small_model(false);
        let old = vocab(&["xxunk", "xxpad", "good"]);
        let new = vocab(&["xxunk", "good", "new"]);
        let remapped = remap_language_model(&model, &old, &new).unwrap();
        // Mean decoder row of [0, 1], [2, 3], [4, 8] is [2, 4].
        let decoder = values(&remapped, "decoder.weight");
        assert_eq!(decoder, vec![0.0, 1.0, 4.0, 8.0, 2.0, 4.0]);
        let embedding = values(&remapped, "encoder.weight");
        assert_eq!(embedding, vec![1.0, 2.0, 5.0, 9.0, 3.0, 5.0]);
    }

    #[test]
    fn wrong_old_vocabulary_is_rejected() {
        let model = small_model(true);
        let old = vocab(&["xxunk", "xxpad"]);
        let new = vocab(&["xxunk", "good"]);
        let err = remap_language_model(&model, &old, &new).unwrap_err();
        assert!(err.to_string().contains("2 tokens"), "{err}");
    }
}
