//! The ULMFiT stages built from the text pipeline, the model and the trainer, and the
//! model folders they exchange.

pub mod baseline;
pub mod bench;
pub mod class_report;
pub mod classify;
pub mod evaluate;
pub mod export;
pub mod fastai_import;
pub mod finetune;
pub mod generate;
pub mod lm_task;
pub mod model_folder;
pub mod predict;
pub mod pretrain;
pub mod remap;
