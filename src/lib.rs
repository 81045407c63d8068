//! ULMFiT text classification on Candle.
//!
//! The crate follows the data's path: [`text`] turns raw text into token ids
//! (fastai-compatible word tokenizer, subword models, vocabularies, corpus readers,
//! memory-mapped token files and batches); [`model`] is the AWD-LSTM, built on the fused
//! ops in [`kernels`]; [`train`] is the trainer shared by every model; [`import`] reads
//! fastai and PyTorch weight files without running Python.
//!
//! # Scoring texts
//!
//! [`api::SentimentModel`] loads a folder written by `ulmfit classify` and returns each
//! text's label and class probabilities. The example builds a tiny folder with random
//! weights, so its probabilities carry no meaning:
//!
//! ```
//! use ulmfit::api::SentimentModel;
//! use ulmfit::pipeline::predict::write_random_classifier;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let words = ["good", "bad", "movie"];
//! write_random_classifier(dir.path(), &words, &["neg", "pos"], 0)?;
//!
//! let model = SentimentModel::load(dir.path())?;
//! let predictions = model.score(&["a good movie", "a bad movie"])?;
//! assert_eq!(predictions.len(), 2);
//! for prediction in &predictions {
//!     let total: f32 = prediction.probabilities.values().sum();
//!     assert!((total - 1.0).abs() < 1e-5);
//!     assert!(model.classes().contains(&prediction.label));
//! }
//! # Ok(())
//! # }
//! ```

pub mod alloc;
pub mod api;
pub mod cli;
pub mod import;
pub mod kernels;
pub mod model;
pub mod pipeline;
pub mod rng;
pub mod text;
pub mod train;
pub mod vision;
