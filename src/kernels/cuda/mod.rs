//! CUDA kernels for the AWD-LSTM and their CPU twins.
//!
//! [`twins`] is compiled in every build. [`gpu`], which launches the kernels on a Candle
//! CUDA device, exists only with the `cuda` feature; build.rs then compiles the `.cu`
//! files of this folder to PTX for sm_90 and sm_80.

#[cfg(feature = "cuda")]
pub mod gpu;
pub mod twins;
