//! The ResNet import against PyTorch's own output.
//!
//! `tests/data/resnet-tiny.pth` is a torchvision-layout ResNet (BasicBlock layers
//! [2, 1, 1, 1], widths 8 to 64, randomised BatchNorm statistics) written by
//! `scripts/make-resnet-fixture.py` with torch 2.x, and `resnet-tiny-reference.pth`
//! contains a normalised input batch and the logits torch computed in eval mode.

use std::path::{Path, PathBuf};

use candle_core::Device;
use ulmfit::import::load_torch;
use ulmfit::vision::resnet::ResNet;
use ulmfit::vision::VisionError;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn logits_match_torch() {
    let net = ResNet::load(&data("resnet-tiny.pth"), &Device::Cpu).unwrap();
    let reference = load_torch(&data("resnet-tiny-reference.pth")).unwrap();
    let input = reference.tensor("input").unwrap();
    let expected = reference
        .tensor("logits")
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let logits = net
        .logits_normalized(input)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(logits.len(), 2);
    for (row, (ours, theirs)) in logits.iter().zip(&expected).enumerate() {
        assert_eq!(ours.len(), 5);
        for (column, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert!(
                (a - b).abs() < 1e-4,
                "logit [{row}, {column}]: ours {a}, torch {b}"
            );
        }
    }
}

#[test]
fn body_shape_and_groups() {
    let net = ResNet::load(&data("resnet-tiny.pth"), &Device::Cpu).unwrap();
    assert_eq!(net.body_channels().unwrap(), 64);
    let images =
        candle_core::Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(net.body(&images).unwrap().dims(), &[1, 64, 2, 2]);
    let groups = net.body_groups();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0][0].0, "conv1.weight");
    assert!(groups[1]
        .iter()
        .all(|(name, _)| name.starts_with("layer3.") || name.starts_with("layer4.")));
    // conv1, bn1 (2), layer1 2 blocks x 6, layer2 6 + downsample 3.
    assert_eq!(groups[0].len(), 3 + 12 + 9);
}

#[test]
fn missing_key_is_named() {
    // A valid torch file whose keys are `input` and `logits`.
    let path = data("resnet-tiny-reference.pth");
    let error = match ResNet::load(&path, &Device::Cpu) {
        Err(error) => error,
        Ok(_) => panic!("a state dict without ResNet keys loaded"),
    };
    assert!(
        matches!(error, VisionError::InvalidWeights { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("conv1.weight"), "{error}");
}
