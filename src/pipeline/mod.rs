//! The ULMFiT stages built from the text pipeline, the model and the trainer, and the
//! model folders they exchange.

pub mod bench;
pub mod model_folder;
