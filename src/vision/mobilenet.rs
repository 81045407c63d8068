//! Runs a TensorFlow Lite MobileNet graph in f32 with Candle.
//!
//! Weights are dequantized once, at load time. Activations are NCHW Candle tensors
//! (TensorFlow Lite's are NHWC), so convolution weights are permuted from `[out, kh, kw,
//! in]` to `[out, in, kh, kw]` and depthwise weights from `[1, kh, kw, channels]` to
//! `[channels, 1, kh, kw]`.

use candle_core::{Device, Tensor, Var, D};

use super::clamp::clamp;
use super::depthwise::depthwise_conv2d;
use super::tflite::{Activation, Model, OperatorKind, Padding, TensorInfo, TensorType, Window};
use super::{Result, VisionError};

/// A convolution with dequantized weights, held in variables so they can be trained.
struct Conv {
    /// `[out, in / groups, kh, kw]`.
    weight: Var,
    /// `[1, out, 1, 1]`.
    bias: Option<Var>,
    window: Window,
    kernel: (usize, usize),
    groups: usize,
}

enum StepKind {
    Conv(Conv),
    Add,
    AveragePool {
        window: Window,
        filter: (usize, usize),
    },
    /// Target shape in TensorFlow Lite's layout without the batch dimension.
    Reshape(Vec<usize>),
    Softmax(f32),
}

/// One operator of the graph, ready to run.
struct Step {
    kind: StepKind,
    /// Activation tensors read by the step (graph tensor indices).
    inputs: Vec<usize>,
    output: usize,
    activation: Activation,
    /// Range representable by the output's quantization, as `(min, max)` real values.
    range: Option<(f32, f32)>,
}

/// A MobileNet (or any graph of the supported operators) loaded from a TensorFlow Lite
/// model, run in f32.
pub struct MobileNet {
    steps: Vec<Step>,
    input: usize,
    tensor_count: usize,
    /// Input height and width from the model's input tensor `[1, height, width, 3]`.
    input_size: (usize, usize),
    /// Maps pixel values in 0..=255 to model inputs: `(pixel - zero_point) * scale`.
    input_zero_point: f32,
    input_scale: f32,
    clamp_to_quantized_range: bool,
    /// Channel count (last NHWC dimension) of each graph tensor with 4 dimensions.
    channels: Vec<Option<usize>>,
}

impl MobileNet {
    /// Builds the runner from a model's main graph, with weights on `device`.
    pub fn from_tflite(model: &Model, device: &Device) -> Result<Self> {
        let [input] = model.inputs[..] else {
            return Err(VisionError::Unsupported(format!(
                "the graph has {} inputs, expected 1 image input",
                model.inputs.len()
            )));
        };
        let [output] = model.outputs[..] else {
            return Err(VisionError::Unsupported(format!(
                "the graph has {} outputs, expected 1",
                model.outputs.len()
            )));
        };
        let input_info = model.tensor(input)?;
        let input_size = match input_info.shape[..] {
            [_, height, width, 3] => (height, width),
            _ => {
                return Err(VisionError::Unsupported(format!(
                    "input tensor {} has shape {:?}, expected [batch, height, width, 3]",
                    input_info.name, input_info.shape
                )))
            }
        };
        let (input_zero_point, input_scale) = match &input_info.quantization {
            Some(q) => (
                q.zero_point.first().copied().unwrap_or(0) as f32,
                q.scale[0],
            ),
            // Float MobileNets take inputs in [-1, 1].
            None => (127.5, 1.0 / 127.5),
        };

        let mut available = vec![false; model.tensors.len()];
        available[input] = true;
        let mut steps = Vec::with_capacity(model.operators.len());
        for (index, operator) in model.operators.iter().enumerate() {
            let step = build_step(model, index, device)?;
            for &tensor in &step.inputs {
                if !available[tensor] {
                    return Err(VisionError::InvalidGraph(format!(
                        "operator {index} ({}) reads tensor {} before any operator writes it",
                        operator.kind.name(),
                        model.tensors[tensor].name
                    )));
                }
            }
            available[step.output] = true;
            steps.push(step);
        }
        if steps.last().map(|step| step.output) != Some(output) {
            return Err(VisionError::Unsupported(format!(
                "the last operator does not write the graph output {}",
                model.tensors[output].name
            )));
        }
        Ok(Self {
            steps,
            input,
            tensor_count: model.tensors.len(),
            input_size,
            input_zero_point,
            input_scale,
            clamp_to_quantized_range: true,
            channels: model
                .tensors
                .iter()
                .map(|t| match t.shape[..] {
                    [_, _, _, c] => Some(c),
                    _ => None,
                })
                .collect(),
        })
    }

    /// Sets whether each operator's output is clamped to the range its uint8/int8
    /// quantization can represent, as the quantized interpreter saturates (default on).
    pub fn set_clamp_to_quantized_range(&mut self, clamp: bool) {
        self.clamp_to_quantized_range = clamp;
    }

    /// Returns the `(height, width)` the model expects.
    pub fn input_size(&self) -> (usize, usize) {
        self.input_size
    }

    /// Runs the whole graph. `images`: `[batch, 3, height, width]` f32 pixel values in
    /// 0..=255. Returns `[batch, outputs]` (class probabilities for a classifier that
    /// ends in SOFTMAX, embeddings for a feature extractor).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let last =
            self.steps.len().checked_sub(1).ok_or_else(|| {
                VisionError::InvalidGraph("the graph has no operators".to_string())
            })?;
        let out = self.run(images, last)?;
        flatten_nhwc(&out)
    }

    /// Returns the input of a final SOFTMAX (the logits) as `[batch, classes]`, or the
    /// graph output when the graph does not end in SOFTMAX. `images` as in [`Self::forward`].
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        match self.steps.last() {
            Some(Step {
                kind: StepKind::Softmax(_),
                ..
            }) if self.steps.len() >= 2 => flatten_nhwc(&self.run(images, self.steps.len() - 2)?),
            _ => self.forward(images),
        }
    }

    /// Returns the output of the last AVERAGE_POOL_2D (the global pool before the
    /// classifier) as `[batch, channels]`. `images` as in [`Self::forward`].
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        let pool = self
            .steps
            .iter()
            .rposition(|step| matches!(step.kind, StepKind::AveragePool { .. }))
            .ok_or_else(|| {
                VisionError::Unsupported(
                    "the graph has no AVERAGE_POOL_2D to take features from".to_string(),
                )
            })?;
        flatten_nhwc(&self.run(images, pool)?)
    }

    /// Returns the index of the step whose output feeds the last AVERAGE_POOL_2D: the
    /// end of the convolutional body.
    fn body_end(&self) -> Result<usize> {
        let pool = self
            .steps
            .iter()
            .rposition(|step| matches!(step.kind, StepKind::AveragePool { .. }))
            .ok_or_else(|| {
                VisionError::Unsupported(
                    "the graph has no AVERAGE_POOL_2D, so its convolutional body is unknown"
                        .to_string(),
                )
            })?;
        let pool_input = self.steps[pool].inputs[0];
        self.steps[..pool]
            .iter()
            .rposition(|step| step.output == pool_input)
            .ok_or_else(|| {
                VisionError::InvalidGraph("the global pool reads the graph input".to_string())
            })
    }

    /// Runs the convolutional body (every step before the last AVERAGE_POOL_2D) and
    /// returns its feature map `[batch, channels, h, w]`. `images`: `[batch, 3, height,
    /// width]` f32 pixel values in 0..=255, of any height and width (the graph's own
    /// size gives `h = w = 7` for a 224-pixel MobileNet).
    pub fn body(&self, images: &Tensor) -> Result<Tensor> {
        let end = self.body_end()?;
        self.run_unchecked(images, end)
    }

    /// Returns the channels of the body's feature map.
    pub fn body_channels(&self) -> Result<usize> {
        let end = self.body_end()?;
        let output = self.steps[end].output;
        self.channels
            .get(output)
            .copied()
            .flatten()
            .ok_or_else(|| VisionError::InvalidGraph("body output has no shape".to_string()))
    }

    /// Returns the body's trainable variables from input to output, as
    /// `(name, variable)` with names `conv{step}.weight` and `conv{step}.bias`.
    pub fn body_vars(&self) -> Result<Vec<(String, Var)>> {
        let end = self.body_end()?;
        let mut vars = Vec::new();
        for (index, step) in self.steps[..=end].iter().enumerate() {
            if let StepKind::Conv(conv) = &step.kind {
                vars.push((format!("conv{index}.weight"), conv.weight.clone()));
                if let Some(bias) = &conv.bias {
                    vars.push((format!("conv{index}.bias"), bias.clone()));
                }
            }
        }
        Ok(vars)
    }

    /// Runs steps `0..=last` and returns the output of step `last` (NCHW when 4-D).
    fn run(&self, images: &Tensor, last: usize) -> Result<Tensor> {
        let (height, width) = self.input_size;
        match images.dims() {
            [_, 3, h, w] if (*h, *w) == (height, width) => {}
            dims => {
                return Err(VisionError::InvalidGraph(format!(
                    "images have shape {dims:?}, expected [batch, 3, {height}, {width}]"
                )))
            }
        }
        self.run_unchecked(images, last)
    }

    /// Runs steps `0..=last` on images of any size.
    fn run_unchecked(&self, images: &Tensor, last: usize) -> Result<Tensor> {
        match images.dims() {
            [_, 3, _, _] => {}
            dims => {
                return Err(VisionError::InvalidGraph(format!(
                    "images have shape {dims:?}, expected [batch, 3, height, width]"
                )))
            }
        }
        let mut values: Vec<Option<Tensor>> = vec![None; self.tensor_count];
        let normalized =
            ((images - f64::from(self.input_zero_point))? * f64::from(self.input_scale))?;
        values[self.input] = Some(normalized);
        for step in &self.steps[..=last] {
            let inputs = step
                .inputs
                .iter()
                .map(|&i| {
                    values[i].as_ref().ok_or_else(|| {
                        VisionError::InvalidGraph(format!(
                            "tensor {i} is read before it is written"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let out = self.run_step(step, &inputs)?;
            values[step.output] = Some(out);
        }
        values[self.steps[last].output]
            .take()
            .ok_or_else(|| VisionError::InvalidGraph("step output missing".to_string()))
    }

    fn run_step(&self, step: &Step, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let out = match &step.kind {
            StepKind::Conv(conv) => run_conv(conv, x)?,
            StepKind::Add => x.broadcast_add(inputs[1])?,
            StepKind::AveragePool { window, filter } => run_average_pool(x, *window, *filter)?,
            StepKind::Reshape(shape) => reshape_nhwc(x, shape)?,
            StepKind::Softmax(beta) => {
                let scaled = (x * f64::from(*beta))?;
                match scaled.rank() {
                    4 => candle_nn::ops::softmax(&scaled, 1)?,
                    _ => candle_nn::ops::softmax(&scaled, D::Minus1)?,
                }
            }
        };
        let range = step.range.filter(|_| self.clamp_to_quantized_range);
        apply_activation(out, step.activation, range)
    }
}

fn build_step(model: &Model, index: usize, device: &Device) -> Result<Step> {
    let operator = &model.operators[index];
    let input = |position: usize| -> Result<usize> {
        operator
            .inputs
            .get(position)
            .copied()
            .flatten()
            .ok_or_else(|| {
                VisionError::InvalidGraph(format!(
                    "operator {index} ({}) has no input {position}",
                    operator.kind.name()
                ))
            })
    };
    let output = *operator.outputs.first().ok_or_else(|| {
        VisionError::InvalidGraph(format!(
            "operator {index} ({}) has no output",
            operator.kind.name()
        ))
    })?;
    let output_info = model.tensor(output)?;
    let (kind, inputs, activation) = match &operator.kind {
        OperatorKind::Conv2d { window, activation } => {
            let conv = build_conv(
                model,
                input(0)?,
                input(1)?,
                operator.inputs.get(2).copied().flatten(),
                *window,
                false,
                device,
            )?;
            (StepKind::Conv(conv), vec![input(0)?], *activation)
        }
        OperatorKind::DepthwiseConv2d {
            window, activation, ..
        } => {
            let conv = build_conv(
                model,
                input(0)?,
                input(1)?,
                operator.inputs.get(2).copied().flatten(),
                *window,
                true,
                device,
            )?;
            (StepKind::Conv(conv), vec![input(0)?], *activation)
        }
        OperatorKind::Add { activation } => {
            (StepKind::Add, vec![input(0)?, input(1)?], *activation)
        }
        OperatorKind::AveragePool2d {
            window,
            filter_h,
            filter_w,
            activation,
        } => (
            StepKind::AveragePool {
                window: *window,
                filter: (*filter_h, *filter_w),
            },
            vec![input(0)?],
            *activation,
        ),
        OperatorKind::Reshape { .. } => {
            // The output tensor's shape is the resolved target shape.
            let shape = output_info.shape.get(1..).unwrap_or_default().to_vec();
            (StepKind::Reshape(shape), vec![input(0)?], Activation::None)
        }
        OperatorKind::Softmax { beta } => {
            (StepKind::Softmax(*beta), vec![input(0)?], Activation::None)
        }
    };
    if activation == Activation::SignBit {
        return Err(VisionError::Unsupported(format!(
            "operator {index} ({}) uses the SIGN_BIT fused activation",
            operator.kind.name()
        )));
    }
    Ok(Step {
        kind,
        inputs,
        output,
        activation,
        range: quantized_range(output_info),
    })
}

/// Returns the real range a uint8 or int8 tensor can represent.
fn quantized_range(info: &TensorInfo) -> Option<(f32, f32)> {
    let q = info.quantization.as_ref()?;
    let (q_min, q_max) = match info.dtype {
        TensorType::UInt8 => (0.0, 255.0),
        TensorType::Int8 => (-128.0, 127.0),
        _ => return None,
    };
    let zero_point = *q.zero_point.first()? as f32;
    let scale = *q.scale.first()?;
    (q.scale.len() == 1).then_some(((q_min - zero_point) * scale, (q_max - zero_point) * scale))
}

fn build_conv(
    model: &Model,
    input: usize,
    weights: usize,
    bias: Option<usize>,
    window: Window,
    depthwise: bool,
    device: &Device,
) -> Result<Conv> {
    let info = model.tensor(weights)?;
    let [d0, kh, kw, d3] = info.shape[..] else {
        return Err(VisionError::InvalidGraph(format!(
            "weights {} have shape {:?}, expected 4 dimensions",
            info.name, info.shape
        )));
    };
    let values = Tensor::from_vec(model.dequantize(weights)?, (d0, kh, kw, d3), &Device::Cpu)?;
    let (weight, groups, out_channels) = if depthwise {
        // [1, kh, kw, channels * multiplier] -> [channels * multiplier, 1, kh, kw]
        let input_channels = *model.tensor(input)?.shape.get(3).ok_or_else(|| {
            VisionError::InvalidGraph(format!(
                "input of depthwise weights {} is not 4-D",
                info.name
            ))
        })?;
        (values.permute((3, 0, 1, 2))?, input_channels, d3)
    } else {
        // [out, kh, kw, in] -> [out, in, kh, kw]
        (values.permute((0, 3, 1, 2))?, 1, d0)
    };
    let weight = Var::from_tensor(&weight.to_device(device)?.contiguous()?)?;
    let bias = match bias {
        Some(bias) => {
            let values = model.dequantize_bias(bias, input, weights)?;
            if values.len() != out_channels {
                return Err(VisionError::InvalidGraph(format!(
                    "bias {} has {} values for {out_channels} output channels",
                    model.tensors[bias].name,
                    values.len()
                )));
            }
            Some(Var::from_vec(values, (1, out_channels, 1, 1), device)?)
        }
        None => None,
    };
    Ok(Conv {
        weight,
        bias,
        window,
        kernel: (kh, kw),
        groups,
    })
}

/// Returns `(padding_before, padding_after)` for one spatial dimension, as TensorFlow
/// computes it: SAME gives `ceil(size / stride)` outputs and puts the odd padding cell
/// after (bottom or right).
fn padding_amounts(
    padding: Padding,
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize) {
    match padding {
        Padding::Valid => (0, 0),
        Padding::Same => {
            let effective = (kernel - 1) * dilation + 1;
            let out = size.div_ceil(stride);
            let total = ((out - 1) * stride + effective).saturating_sub(size);
            (total / 2, total - total / 2)
        }
    }
}

fn run_conv(conv: &Conv, x: &Tensor) -> Result<Tensor> {
    let window = conv.window;
    if window.stride_h != window.stride_w || window.dilation_h != window.dilation_w {
        return Err(VisionError::Unsupported(format!(
            "convolution with strides ({}, {}) and dilations ({}, {}): Candle's conv2d takes one stride and one dilation",
            window.stride_h, window.stride_w, window.dilation_h, window.dilation_w
        )));
    }
    let (_, _, height, width) = x.dims4()?;
    let (top, bottom) = padding_amounts(
        window.padding,
        height,
        conv.kernel.0,
        window.stride_h,
        window.dilation_h,
    );
    let (left, right) = padding_amounts(
        window.padding,
        width,
        conv.kernel.1,
        window.stride_w,
        window.dilation_w,
    );
    let padded = x
        .pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)?;
    let channels = x.dim(1)?;
    let depthwise = conv.groups > 1
        && conv.groups == channels
        && conv.weight.dim(0)? == channels
        && window.dilation_h == 1;
    let out = if depthwise {
        depthwise_conv2d(&padded, &conv.weight, window.stride_h)?
    } else {
        padded.conv2d(
            &conv.weight,
            0,
            window.stride_h,
            window.dilation_h,
            conv.groups,
        )?
    };
    match &conv.bias {
        Some(bias) => Ok(out.broadcast_add(bias.as_tensor())?),
        None => Ok(out),
    }
}

fn run_average_pool(x: &Tensor, window: Window, filter: (usize, usize)) -> Result<Tensor> {
    let (_, _, height, width) = x.dims4()?;
    let vertical = padding_amounts(window.padding, height, filter.0, window.stride_h, 1);
    let horizontal = padding_amounts(window.padding, width, filter.1, window.stride_w, 1);
    if vertical != (0, 0) || horizontal != (0, 0) {
        // NOTE: TensorFlow Lite averages over the valid cells only; zero padding would
        // bias the border averages, so padded pools are rejected instead.
        return Err(VisionError::Unsupported(format!(
            "AVERAGE_POOL_2D with SAME padding that pads a {height}x{width} input"
        )));
    }
    Ok(x.avg_pool2d_with_stride(filter, (window.stride_h, window.stride_w))?)
}

/// Reshapes in TensorFlow Lite's element order: NCHW inputs are read as NHWC, and a 4-D
/// target shape `[h, w, c]` comes back as NCHW.
fn reshape_nhwc(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let batch = x.dim(0)?;
    let nhwc = match x.rank() {
        4 => x.permute((0, 2, 3, 1))?.contiguous()?,
        _ => x.clone(),
    };
    let mut target = vec![batch];
    target.extend_from_slice(shape);
    let reshaped = nhwc.reshape(target)?;
    match reshaped.rank() {
        4 => Ok(reshaped.permute((0, 3, 1, 2))?.contiguous()?),
        _ => Ok(reshaped),
    }
}

/// Flattens to `[batch, features]` in TensorFlow Lite's NHWC element order.
fn flatten_nhwc(x: &Tensor) -> Result<Tensor> {
    let nhwc = match x.rank() {
        4 => x.permute((0, 2, 3, 1))?.contiguous()?,
        _ => x.clone(),
    };
    Ok(nhwc.flatten_from(1)?)
}

/// Applies a fused activation, then clamps to `range` when given. The clamping
/// activations and the range clamp run as one [`clamp`] with the intersected bounds, so
/// a training step keeps one tensor for both.
fn apply_activation(
    x: Tensor,
    activation: Activation,
    range: Option<(f32, f32)>,
) -> Result<Tensor> {
    let (x, (low, high)) = match activation {
        Activation::None => (x, (f32::NEG_INFINITY, f32::INFINITY)),
        Activation::Relu => (x, (0.0, f32::INFINITY)),
        Activation::Relu6 => (x, (0.0, 6.0)),
        Activation::ReluN1To1 => (x, (-1.0, 1.0)),
        Activation::Tanh => (x.tanh()?, (f32::NEG_INFINITY, f32::INFINITY)),
        Activation::SignBit => {
            return Err(VisionError::Unsupported(
                "the SIGN_BIT activation".to_string(),
            ))
        }
    };
    let Some((min, max)) = range else {
        if low == f32::NEG_INFINITY && high == f32::INFINITY {
            return Ok(x);
        }
        return Ok(clamp(&x, low, high)?);
    };
    if low.max(min) <= high.min(max) {
        Ok(clamp(&x, low.max(min), high.min(max))?)
    } else {
        // Disjoint ranges: clamping twice gives the range end nearest the activation's.
        Ok(clamp(&clamp(&x, low, high)?, min, max)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_is_asymmetric_for_stride_two() {
        // 224 / 2 = 112 outputs need (112 - 1) * 2 + 3 - 224 = 1 cell, put after.
        assert_eq!(padding_amounts(Padding::Same, 224, 3, 2, 1), (0, 1));
    }

    #[test]
    fn same_padding_is_symmetric_for_stride_one() {
        assert_eq!(padding_amounts(Padding::Same, 7, 3, 1, 1), (1, 1));
    }

    #[test]
    fn valid_padding_is_zero() {
        assert_eq!(padding_amounts(Padding::Valid, 7, 7, 2, 1), (0, 0));
    }

    #[test]
    fn flatten_uses_nhwc_order() {
        // NCHW [1, 2, 1, 2]: channel 0 = [1, 2], channel 1 = [3, 4].
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 2, 1, 2), &Device::Cpu).unwrap();
        let flat = flatten_nhwc(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(flat, vec![vec![1., 3., 2., 4.]]);
    }
}
