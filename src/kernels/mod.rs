//! Fused CPU operations that Candle's stock operations would spread over many small
//! tensors: the leaves of the model code, with no knowledge of the model above them.
//! [`cuda`] holds CUDA kernels (launched only with the `cuda` feature) and their CPU twins.

pub mod cuda;
pub mod decoder;
pub mod lstm;
