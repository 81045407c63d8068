//! ULMFiT text classification on Candle.
//!
//! The crate follows the data's path: [`text`] turns raw text into token ids
//! (fastai-compatible word tokenizer, subword models, vocabularies, corpus readers,
//! memory-mapped token files and batches); [`model`] is the AWD-LSTM, built on the fused
//! ops in [`kernels`]; [`train`] is the trainer shared by every model; [`import`] reads
//! fastai and PyTorch weight files without running Python.

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
