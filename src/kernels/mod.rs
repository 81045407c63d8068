//! Fused CPU operations that Candle's stock operations would spread over many small
//! tensors: the leaves of the model code, with no knowledge of the model above them.

pub mod decoder;
pub mod lstm;
