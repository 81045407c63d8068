//! `--precision`: the format of the CPU matrix products of training and scoring.

use clap::ValueEnum;

use crate::kernels::precision::Precision;

/// Formats accepted by the training commands' `--precision`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// 32-bit floats throughout.
    #[default]
    F32,
    /// Matrix products of the LSTM layers (and of a language model's decoder) with
    /// inputs rounded to bfloat16 and f32 sums (AVX512-BF16). Parameters, optimizer and
    /// all other operations stay f32.
    Bf16,
}

/// Formats accepted by `predict --precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ScorePrecision {
    /// 32-bit floats throughout.
    #[default]
    F32,
    /// LSTM weights rounded to bfloat16 once, activations per product, f32 sums
    /// (AVX512-BF16).
    Bf16,
    /// LSTM weights quantised to int8 once with one scale per row, activations per row
    /// and per product, i32 sums (AVX512-VNNI).
    Int8,
}

impl TrainPrecision {
    /// Returns the precision after checking that the CPU has its instructions.
    pub fn checked(self) -> anyhow::Result<Precision> {
        checked(match self {
            Self::F32 => Precision::F32,
            Self::Bf16 => Precision::Bf16,
        })
    }
}

impl ScorePrecision {
    /// Returns the precision after checking that the CPU has its instructions.
    pub fn checked(self) -> anyhow::Result<Precision> {
        checked(match self {
            Self::F32 => Precision::F32,
            Self::Bf16 => Precision::Bf16,
            Self::Int8 => Precision::Int8,
        })
    }
}

/// Fails when the CPU lacks the instructions of `precision`: the portable fallback
/// kernels are slower than f32, so running them would defeat the option.
fn checked(precision: Precision) -> anyhow::Result<Precision> {
    precision.check_cpu()?;
    Ok(precision)
}
