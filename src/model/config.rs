//! Hyperparameters of the AWD-LSTM, with fastai's defaults.

use serde::{Deserialize, Serialize};

/// The dropout probabilities of an AWD-LSTM, before [`AwdLstmConfig::dropout_multiplier`]
/// scales them. Each is a probability in `[0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DropoutConfig {
    /// Dropout on the last layer's output before the decoder (fastai `output_p`).
    pub output: f32,
    /// Locked dropout between LSTM layers (fastai `hidden_p`).
    pub hidden: f32,
    /// Locked dropout on the embedded input of the first layer (fastai `input_p`).
    pub input: f32,
    /// Dropout of whole embedding rows, that is of whole words (fastai `embed_p`).
    pub embedding: f32,
    /// Dropout on each hidden-to-hidden weight matrix (fastai `weight_p`).
    pub weight: f32,
}

impl DropoutConfig {
    /// fastai's language-model set (`awd_lstm_lm_config`): 0.1, 0.15, 0.25, 0.02, 0.2.
    pub const LANGUAGE_MODEL: Self = Self {
        output: 0.1,
        hidden: 0.15,
        input: 0.25,
        embedding: 0.02,
        weight: 0.2,
    };

    /// fastai's classifier set (`awd_lstm_clas_config`): 0.4, 0.3, 0.4, 0.05, 0.5.
    pub const CLASSIFIER: Self = Self {
        output: 0.4,
        hidden: 0.3,
        input: 0.4,
        embedding: 0.05,
        weight: 0.5,
    };

    /// Returns every probability multiplied by `multiplier`.
    pub fn scaled(&self, multiplier: f32) -> Self {
        Self {
            output: self.output * multiplier,
            hidden: self.hidden * multiplier,
            input: self.input * multiplier,
            embedding: self.embedding * multiplier,
            weight: self.weight * multiplier,
        }
    }
}

/// Architecture and regularisation of an AWD-LSTM (Merity et al., 2017) as fastai 2.x
/// builds it. The same struct is saved next to each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwdLstmConfig {
    /// Number of tokens in the vocabulary (rows of the embedding). No default.
    pub vocab_size: usize,
    /// Width of each token's embedding vector, in features. Default 400.
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
    /// Width of the hidden state of every LSTM layer but the last, whose output is
    /// `embedding_size` wide. Default 1152.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Number of stacked single-layer LSTMs. Default 3.
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Token id of the padding token, whose embedding row receives no gradient. Default 1.
    #[serde(default = "default_pad_id")]
    pub pad_id: u32,
    /// Whether the decoder reuses the embedding matrix as its weight. Default true.
    #[serde(default = "default_true")]
    pub tie_weights: bool,
    /// Whether the decoder has a bias vector. Default true.
    #[serde(default = "default_true")]
    pub output_bias: bool,
    /// Dropout probabilities before scaling. Default: fastai's language-model set.
    #[serde(default = "default_dropout")]
    pub dropout: DropoutConfig,
    /// Factor applied to every dropout probability (fastai `drop_mult`). Default 1.0.
    #[serde(default = "default_multiplier")]
    pub dropout_multiplier: f32,
}

fn default_embedding_size() -> usize {
    400
}
fn default_hidden_size() -> usize {
    1152
}
fn default_layers() -> usize {
    3
}
fn default_pad_id() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_dropout() -> DropoutConfig {
    DropoutConfig::LANGUAGE_MODEL
}
fn default_multiplier() -> f32 {
    1.0
}

impl AwdLstmConfig {
    /// Returns fastai's language-model configuration for a vocabulary of `vocab_size`.
    pub fn language_model(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            embedding_size: default_embedding_size(),
            hidden_size: default_hidden_size(),
            layers: default_layers(),
            pad_id: default_pad_id(),
            tie_weights: true,
            output_bias: true,
            dropout: DropoutConfig::LANGUAGE_MODEL,
            dropout_multiplier: 1.0,
        }
    }

    /// Returns fastai's classifier-encoder configuration for a vocabulary of `vocab_size`.
    pub fn classifier(vocab_size: usize) -> Self {
        Self {
            dropout: DropoutConfig::CLASSIFIER,
            ..Self::language_model(vocab_size)
        }
    }

    /// Returns the dropout probabilities after applying `dropout_multiplier`.
    pub fn effective_dropout(&self) -> DropoutConfig {
        self.dropout.scaled(self.dropout_multiplier)
    }

    /// Returns `(input, output)` widths of LSTM layer `layer`: the first layer reads the
    /// embedding, the last writes `embedding_size` features so the decoder can be tied.
    pub fn layer_sizes(&self, layer: usize) -> (usize, usize) {
        let input = if layer == 0 {
            self.embedding_size
        } else {
            self.hidden_size
        };
        let output = if layer + 1 == self.layers {
            self.embedding_size
        } else {
            self.hidden_size
        };
        (input, output)
    }

    /// Checks that sizes are non-zero and probabilities lie in `[0, 1)`.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 || self.embedding_size == 0 || self.hidden_size == 0 {
            return Err(format!(
                "vocab_size ({}), embedding_size ({}) and hidden_size ({}) must be positive",
                self.vocab_size, self.embedding_size, self.hidden_size
            ));
        }
        if self.layers == 0 {
            return Err("layers must be at least 1".to_string());
        }
        if self.pad_id as usize >= self.vocab_size {
            return Err(format!(
                "pad_id {} is outside the vocabulary of {} tokens",
                self.pad_id, self.vocab_size
            ));
        }
        let dropout = self.effective_dropout();
        for (name, p) in [
            ("output", dropout.output),
            ("hidden", dropout.hidden),
            ("input", dropout.input),
            ("embedding", dropout.embedding),
            ("weight", dropout.weight),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!(
                    "{name} dropout is {p} after dropout_multiplier {}; it must lie in [0, 1)",
                    self.dropout_multiplier
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiplier_scales_every_probability() {
        let mut config = AwdLstmConfig::classifier(100);
        config.dropout_multiplier = 0.5;
        let dropout = config.effective_dropout();
        assert_eq!(dropout.output, 0.2);
        assert_eq!(dropout.hidden, 0.15);
        assert_eq!(dropout.input, 0.2);
        assert_eq!(dropout.embedding, 0.025);
        assert_eq!(dropout.weight, 0.25);
    }

    #[test]
    fn layer_sizes_end_at_embedding_size() {
        let config = AwdLstmConfig::language_model(100);
        assert_eq!(config.layer_sizes(0), (400, 1152));
        assert_eq!(config.layer_sizes(1), (1152, 1152));
        assert_eq!(config.layer_sizes(2), (1152, 400));
    }

    #[test]
    fn missing_fields_take_fastai_defaults() {
        let config: AwdLstmConfig = serde_json::from_str(r#"{"vocab_size": 7}"#).unwrap();
        assert_eq!(config, AwdLstmConfig::language_model(7));
    }

    #[test]
    fn validate_rejects_probability_of_one() {
        let mut config = AwdLstmConfig::classifier(100);
        config.dropout_multiplier = 2.0;
        let message = config.validate().unwrap_err();
        assert!(message.contains("weight dropout is 1"), "{message}");
    }
}
