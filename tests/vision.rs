//! MobileNet classification against TensorFlow Lite's own interpreter.
//!
//! Reference outputs: `ai-edge-litert` 2.3.0 (the TensorFlow Lite interpreter for Python,
//! installed with pip into a fresh venv, with numpy 2.4.6 and Pillow 13.0.0). The script
//! read each BMP with Pillow as RGB, resized it to 224x224 with the same f32 bilinear
//! resize as `image_data::resize_bilinear` (align_corners and half_pixel_centers off,
//! truncation to uint8), fed the uint8 image to the quantized model and dequantized the
//! output with its scale 1/256. Top-5 of `mobilenet_v2_1.0_224_quant.tflite`:
//!
//! - cat: 286 Egyptian cat 0.777, 282 tabby 0.117, 283 tiger cat 0.066, 729 plastic bag
//!   0.004, 0 background 0.000 (ties at zero).
//! - grace_hopper: 653 military uniform 0.941, 835 suit 0.016, 440 bearskin 0.004,
//!   458 bow tie 0.004, 668 mortarboard 0.004.
//!
//! The resized uint8 inputs summed to 17,038,579 (cat) and 12,051,063 (grace_hopper).

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use ulmfit::vision::image_data::load_image;
use ulmfit::vision::mobilenet::MobileNet;
use ulmfit::vision::tflite::{Model, OperatorKind};
use ulmfit::vision::VisionError;

fn model_dir(test: &str) -> Option<PathBuf> {
    Some(common::shared_dir(test)?.join("data/models/mobilenet-imagenet"))
}

fn labels(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("imagenet_labels.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(k);
    order
}

fn batch(dir: &std::path::Path, names: &[&str]) -> Tensor {
    let images: Vec<Tensor> = names
        .iter()
        .map(|name| load_image(dir.join(name), 224).unwrap())
        .collect();
    Tensor::stack(&images, 0).unwrap()
}

/// Returns the RGB values at row `y`, column `x` of a `[3, h, w]` image tensor.
fn pixel(image: &Tensor, y: usize, x: usize) -> Vec<f32> {
    (0..3)
        .map(|c| {
            image
                .get(c)
                .unwrap()
                .get(y)
                .unwrap()
                .get(x)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn resized_inputs_match_reference() {
    let Some(dir) = model_dir("resized_inputs_match_reference") else {
        return;
    };
    // (file, sum of all values, pixel at row 0 col 0, pixel at row 100 col 150)
    let cases = [
        (
            "cat.bmp",
            17_038_579.0,
            [223.0, 124.0, 82.0],
            [158.0, 102.0, 76.0],
        ),
        (
            "grace_hopper.bmp",
            12_051_063.0,
            [21.0, 26.0, 82.0],
            [120.0, 45.0, 32.0],
        ),
    ];
    for (name, sum, corner, inner) in cases {
        let image = load_image(dir.join(name), 224).unwrap();
        assert_eq!(image.dims(), &[3, 224, 224]);
        let total = image
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(total, sum, "{name}");
        assert_eq!(pixel(&image, 0, 0), corner, "{name}");
        assert_eq!(pixel(&image, 100, 150), inner, "{name}");
    }
}

#[test]
fn v2_model_structure() {
    let Some(dir) = model_dir("v2_model_structure") else {
        return;
    };
    let model = Model::load(dir.join("mobilenet_v2_1.0_224_quant.tflite")).unwrap();
    let count = |name: &str| {
        model
            .operators
            .iter()
            .filter(|op| op.kind.name() == name)
            .count()
    };
    assert_eq!(count("CONV_2D"), 36);
    assert_eq!(count("DEPTHWISE_CONV_2D"), 17);
    assert_eq!(count("ADD"), 10);
    assert_eq!(count("AVERAGE_POOL_2D"), 1);
    assert_eq!(count("RESHAPE"), 1);
    assert_eq!(count("SOFTMAX"), 1);
    let input = model.tensor(model.inputs[0]).unwrap();
    assert_eq!(input.shape, vec![1, 224, 224, 3]);
    let quantization = input.quantization.as_ref().unwrap();
    assert_eq!(quantization.scale, vec![0.0078125]);
    assert_eq!(quantization.zero_point, vec![128]);
    let output = model.tensor(model.outputs[0]).unwrap();
    assert_eq!(output.shape, vec![1, 1001]);
    let first_conv = model
        .operators
        .iter()
        .find(|op| matches!(op.kind, OperatorKind::Conv2d { .. }))
        .unwrap();
    let OperatorKind::Conv2d { window, .. } = first_conv.kind else {
        unreachable!()
    };
    assert_eq!(window.stride_h, 2);
}

#[test]
fn v2_top1_matches_reference() {
    let Some(dir) = model_dir("v2_top1_matches_reference") else {
        return;
    };
    let model = Model::load(dir.join("mobilenet_v2_1.0_224_quant.tflite")).unwrap();
    let net = MobileNet::from_tflite(&model, &Device::Cpu).unwrap();
    let labels = labels(&dir);
    let probabilities = net
        .forward(&batch(&dir, &["cat.bmp", "grace_hopper.bmp"]))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let references = [
        // (top-1 label, reference top 5, how many of them score above 2/256)
        ("Egyptian cat", [286, 282, 283, 729, 0], 3),
        ("military uniform", [653, 835, 440, 458, 668], 2),
    ];
    for (scores, (label, reference_top5, confident)) in probabilities.iter().zip(references) {
        assert_eq!(scores.len(), 1001);
        let top5 = top_k(scores, 5);
        eprintln!(
            "{label}: {:?}",
            top5.iter().map(|&i| (i, scores[i])).collect::<Vec<_>>()
        );
        assert_eq!(labels[top5[0]], label);
        // Below 2/256 the uint8 reference scores tie, so only the classes above that
        // must be in our top 5, and the two top-5 lists must share at least 3 classes.
        for class in &reference_top5[..confident] {
            assert!(top5.contains(class), "class {class} missing from {top5:?}");
        }
        let shared = reference_top5.iter().filter(|c| top5.contains(c)).count();
        assert!(
            shared >= 3,
            "top-5 {top5:?} vs reference {reference_top5:?}"
        );
    }
}

#[test]
fn v1_embeddings_differ_between_images() {
    let Some(dir) = model_dir("v1_embeddings_differ_between_images") else {
        return;
    };
    let model =
        Model::load(dir.join("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")).unwrap();
    let net = MobileNet::from_tflite(&model, &Device::Cpu).unwrap();
    let embeddings = net
        .forward(&batch(&dir, &["cat.bmp", "grace_hopper.bmp"]))
        .unwrap();
    assert_eq!(embeddings.dims(), &[2, 1024]);
    let rows = embeddings.to_vec2::<f32>().unwrap();
    let distance: f32 = rows[0]
        .iter()
        .zip(&rows[1])
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(distance > 100.0, "L1 distance {distance}");
    // Reference (uint8 output times its scale 0.023528) for cat: 1.7176, 0.4000, 0.2823,
    // 0.0941, 3.2469. Float execution stays within about 4 quantization steps.
    let reference = [1.7176f32, 0.4000, 0.2823, 0.0941, 3.2469];
    for (i, (ours, expected)) in rows[0].iter().zip(reference).enumerate() {
        eprintln!("embedding[{i}] {ours} vs {expected}");
        assert!(
            (ours - expected).abs() < 0.1,
            "embedding[{i}] = {ours}, reference {expected}"
        );
    }
    let features = net.features(&batch(&dir, &["cat.bmp"])).unwrap();
    assert_eq!(features.dims(), &[1, 1024]);
}

#[test]
fn non_tflite_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.tflite");
    std::fs::write(&path, b"this is not a flatbuffer").unwrap();
    let error = Model::load(&path).unwrap_err();
    assert!(matches!(error, VisionError::InvalidModel { .. }), "{error}");
    assert!(error.to_string().contains("TFL3"), "{error}");
}
