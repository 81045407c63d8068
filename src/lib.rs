//! ULMFiT text classification on Candle.
//!
//! The crate follows the data's path: [`text`] turns raw text into token ids
//! (fastai-compatible word tokenizer, subword models, vocabularies, corpus readers,
//! memory-mapped token files and batches).

pub mod cli;
pub mod kernels;
pub mod model;
pub mod rng;
pub mod text;
