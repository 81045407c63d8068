//! Text generation with a language model, as fastai 2.8's `LMLearner.predict` does it:
//! feed the prompt, then repeatedly sample the next token from the softmax of the last
//! logits and feed it back.

use candle_core::Tensor;

use crate::model::{LanguageModel, ModelError};
use crate::rng::Rng;
use crate::text::{BOS, MAJ, PAD, REP, UP, WREP};

/// Settings of next-token sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingOptions {
    /// Number of tokens to generate after the prompt.
    pub tokens: usize,
    /// Softmax temperature: logits are divided by it before sampling. 0 picks the
    /// highest-scoring token (greedy decoding).
    pub temperature: f64,
    /// Token id that is never produced (fastai's `no_unk=True` passes the id of `xxunk`).
    pub banned: Option<u32>,
}

/// Errors of [`generate_tokens`].
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The prompt has no tokens, so there is nothing to condition on.
    #[error("the prompt has no tokens; pass a non-empty prompt")]
    EmptyPrompt,
    /// The temperature is negative or not a number.
    #[error("invalid temperature {0}: it must be 0 (greedy) or positive")]
    InvalidTemperature(f64),
    /// The forward pass failed.
    #[error(transparent)]
    Model(Box<ModelError>),
}

impl From<ModelError> for GenerateError {
    fn from(source: ModelError) -> Self {
        Self::Model(Box::new(source))
    }
}

impl From<candle_core::Error> for GenerateError {
    fn from(source: candle_core::Error) -> Self {
        Self::Model(Box::new(ModelError::Candle(source)))
    }
}

/// Feeds `prompt` (token ids) to `model` and returns the `options.tokens` ids generated
/// after it. Sampling draws one `f64` from `rng` per token; greedy decoding draws none.
/// The model is reset before and after.
pub fn generate_tokens(
    model: &mut LanguageModel,
    prompt: &[u32],
    options: &SamplingOptions,
    rng: &mut Rng,
) -> Result<Vec<u32>, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if options.temperature.is_nan() || options.temperature < 0.0 {
        return Err(GenerateError::InvalidTemperature(options.temperature));
    }
    let device = model.encoder().device().clone();
    // Eval mode draws nothing from this generator.
    let mut unused = Rng::seed(0);
    model.reset();
    model.set_track_gradients(false);

    let mut input = Tensor::from_slice(prompt, (1, prompt.len()), &device)?;
    let mut generated = Vec::with_capacity(options.tokens);
    for _ in 0..options.tokens {
        let logits = model.forward(&input, false, &mut unused)?.logits;
        let time = logits.dim(1)?;
        let last: Vec<f32> = logits.narrow(1, time - 1, 1)?.flatten_all()?.to_vec1()?;
        let next = choose_token(&last, options, rng);
        generated.push(next);
        input = Tensor::from_slice(&[next], (1, 1), &device)?;
    }
    model.reset();
    Ok(generated)
}

/// Picks the next token from one row of logits `[V]`.
fn choose_token(logits: &[f32], options: &SamplingOptions, rng: &mut Rng) -> u32 {
    let allowed = |id: usize| options.banned != Some(id as u32);
    if options.temperature == 0.0 {
        // The first maximum wins, as torch's argmax does.
        let mut best: Option<(usize, f32)> = None;
        for (id, &value) in logits.iter().enumerate() {
            if allowed(id) && best.is_none_or(|(_, top)| value > top) {
                best = Some((id, value));
            }
        }
        return best.map_or(0, |(id, _)| id as u32);
    }

    let scaled: Vec<f64> = logits
        .iter()
        .map(|&value| f64::from(value) / options.temperature)
        .collect();
    let max = scaled
        .iter()
        .enumerate()
        .filter(|(id, _)| allowed(*id))
        .map(|(_, value)| *value)
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scaled
        .iter()
        .enumerate()
        .map(|(id, value)| {
            if allowed(id) {
                (value - max).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut threshold = rng.next_f64() * total;
    let mut last_allowed = 0;
    for (id, weight) in weights.iter().enumerate() {
        if *weight > 0.0 {
            last_allowed = id;
            if threshold < *weight {
                return id as u32;
            }
            threshold -= weight;
        }
    }
    // Rounding can leave a little of the threshold after the last token.
    last_allowed as u32
}

/// Turns tokens back into text as fastai's `LMLearner.predict` does: drops `xxbos` and
/// `xxpad`, undoes `xxmaj` (capitalise the next word), `xxup` (upper-case it),
/// `xxrep N c` and `xxwrep N w`, and joins the result with spaces.
///
/// NOTE: fastai 2.8.12's `decode_spec_tokens` never clears its state after a `xxrep` or
/// `xxwrep`, so it repeats every later token too. Here only the marked token repeats.
pub fn detokenize<S: AsRef<str>>(tokens: &[S]) -> String {
    let tokens: Vec<&str> = tokens
        .iter()
        .map(AsRef::as_ref)
        .filter(|token| *token != BOS && *token != PAD)
        .collect();
    decode_special_tokens(&tokens).join(" ")
}

/// Applies the capitalisation and repetition markers to the tokens that follow them.
fn decode_special_tokens(tokens: &[&str]) -> Vec<String> {
    let mut words = Vec::with_capacity(tokens.len());
    let mut marker: Option<&str> = None;
    let mut count: Option<usize> = None;
    for &token in tokens {
        if [MAJ, UP, REP, WREP].contains(&token) {
            marker = Some(token);
            count = None;
            continue;
        }
        match marker {
            None => words.push(token.to_owned()),
            Some(MAJ) => {
                words.push(capitalise(token));
                marker = None;
            }
            Some(UP) => {
                words.push(token.to_uppercase());
                marker = None;
            }
            // A repetition marker: the first token is the count, the second the text.
            Some(repeat) => match count {
                None => match token.parse::<usize>() {
                    Ok(n) => count = Some(n),
                    // fastai drops a count that is not a number, and the marker with it.
                    Err(_) => marker = None,
                },
                Some(n) => {
                    if repeat == REP {
                        words.push(token.repeat(n));
                    } else {
                        words.extend(std::iter::repeat_n(token.to_owned(), n));
                    }
                    marker = None;
                    count = None;
                }
            },
        }
    }
    words
}

/// Upper-cases the first character and lower-cases the rest, like Python's
/// `t[:1].upper() + t[1:].lower()`.
fn capitalise(token: &str) -> String {
    let mut chars = token.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detokenize_undoes_case_markers() {
        let tokens = [
            "xxbos", "xxmaj", "the", "xxup", "movie", "was", "xxpad", "good",
        ];
        assert_eq!(detokenize(&tokens), "The MOVIE was good");
    }

    #[test]
    fn detokenize_expands_repetitions() {
        let tokens = ["wow", "xxrep", "3", "!", "xxwrep", "2", "very", "good"];
        assert_eq!(detokenize(&tokens), "wow !!! very very good");
    }

    #[test]
    fn detokenize_drops_marker_with_invalid_count() {
        let tokens = ["xxrep", "many", "x", "end"];
        assert_eq!(detokenize(&tokens), "x end");
    }

    #[test]
    fn greedy_skips_banned_token() {
        let options = SamplingOptions {
            tokens: 1,
            temperature: 0.0,
            banned: Some(0),
        };
        let mut rng = Rng::seed(1);
        assert_eq!(choose_token(&[5.0, 1.0, 3.0, 3.0], &options, &mut rng), 2);
    }

    #[test]
    fn sampling_never_picks_banned_token() {
        let options = SamplingOptions {
            tokens: 1,
            temperature: 1.0,
            banned: Some(0),
        };
        let mut rng = Rng::seed(7);
        // Token 0 would take nearly all the mass; with it banned, 1 and 2 share it.
        let logits = [30.0, 0.0, 0.0];
        let picks: Vec<u32> = (0..200)
            .map(|_| choose_token(&logits, &options, &mut rng))
            .collect();
        assert!(!picks.contains(&0));
        assert!(picks.contains(&1));
        assert!(picks.contains(&2));
    }

    #[test]
    fn low_temperature_sharpens_sampling() {
        let options = SamplingOptions {
            tokens: 1,
            temperature: 0.01,
            banned: None,
        };
        let mut rng = Rng::seed(3);
        let picks: Vec<u32> = (0..100)
            .map(|_| choose_token(&[1.0, 1.5, 0.5], &options, &mut rng))
            .collect();
        assert!(picks.iter().all(|&id| id == 1));
    }
}
