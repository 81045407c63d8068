//! Image classification with ImageNet-pretrained MobileNets.
//!
//! [`tflite`] reads TensorFlow Lite model files and dequantizes their weights,
//! [`mobilenet`] runs such a graph in f32 with Candle, and [`image_data`] decodes and
//! resizes images into the input tensors the models expect.

pub mod augment;
pub mod clamp;
pub mod depthwise;
mod flatbuffer;
pub mod folder;
pub mod image_data;
pub mod mobilenet;
pub mod model;
pub mod resnet;
pub mod tflite;
pub mod train;

use std::path::PathBuf;

/// Errors of the vision module.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a TensorFlow Lite model or its structure is corrupt.
    #[error("{path} is not a valid TensorFlow Lite model: {message}")]
    InvalidModel { path: PathBuf, message: String },
    /// A PyTorch weights file is unreadable or lacks the expected keys.
    #[error("invalid weights file {path}: {message}")]
    InvalidWeights { path: PathBuf, message: String },
    /// The graph uses an operator that [`mobilenet::MobileNet`] cannot run.
    #[error(
        "unsupported TensorFlow Lite operator {name} (builtin code {code}) at operator {index}; \
         supported: CONV_2D, DEPTHWISE_CONV_2D, ADD, AVERAGE_POOL_2D, RESHAPE, SOFTMAX"
    )]
    UnsupportedOperator {
        index: usize,
        code: i32,
        name: String,
    },
    /// An operator or tensor setting that the f32 runner does not implement.
    #[error("unsupported graph setting: {0}")]
    Unsupported(String),
    /// The graph refers to a missing tensor or has inconsistent shapes.
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// An image could not be decoded.
    #[error("failed to decode image {path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    /// An image has zero width or height.
    #[error("image {path} has no pixels")]
    EmptyImage { path: PathBuf },
    /// An image folder has no usable layout, too few images in a class, or a class
    /// seen only in validation.
    #[error("{0}")]
    Dataset(String),
    /// A Candle tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result type of the vision module.
pub type Result<T> = std::result::Result<T, VisionError>;
