//! CUDA kernels for the AWD-LSTM, their CPU twins and the Candle operations built on them.
//!
//! [`twins`] and [`ops`] are compiled in every build: on the CPU, the operations run the
//! twins. [`gpu`], which launches the kernels on a Candle CUDA device, exists only with
//! the `cuda` feature; build.rs then compiles the `.cu` files of this folder to PTX for
//! sm_90 and sm_80.

#[cfg(feature = "cuda")]
pub mod gpu;
pub mod ops;
pub mod twins;
