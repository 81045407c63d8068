//! TensorFlow Lite model files: tensors, quantization, operators and their options, read
//! from the FlatBuffers schema (`schema.fbs`, file identifier `TFL3`) of TensorFlow Lite.
//! Only the first subgraph (the main graph) is read.

use std::path::{Path, PathBuf};

use super::flatbuffer::{FormatError, Table};
use super::{Result, VisionError};

/// Builtin operator names by code, from the `BuiltinOperator` enum of the TensorFlow
/// Lite schema (codes 0 to 102).
#[rustfmt::skip]
const BUILTIN_NAMES: [&str; 103] = [
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D",
    "DEPTH_TO_SPACE", "DEQUANTIZE", "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED",
    "HASHTABLE_LOOKUP", "L2_NORMALIZATION", "L2_POOL_2D", "LOCAL_RESPONSE_NORMALIZATION",
    "LOGISTIC", "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU", "RELU_N1_TO_1",
    "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF",
    "TANH", "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE",
    "PAD", "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND",
    "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN", "SUB", "DIV", "SQUEEZE",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN", "EXP",
    "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST",
    "PRELU", "MAXIMUM", "ARG_MAX", "MINIMUM", "LESS", "NEG", "PADV2", "GREATER",
    "GREATER_EQUAL", "LESS_EQUAL", "SELECT", "SLICE", "SIN", "TRANSPOSE_CONV",
    "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL", "LOG", "SUM", "SQRT",
    "RSQRT", "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX", "PACK",
    "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND", "LOGICAL_NOT", "UNPACK", "REDUCE_MIN",
    "FLOOR_DIV", "REDUCE_ANY", "SQUARE", "ZEROS_LIKE", "FILL", "FLOOR_MOD", "RANGE",
    "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS",
    "SPLIT_V",
];

const CODE_ADD: i32 = 0;
const CODE_AVERAGE_POOL_2D: i32 = 1;
const CODE_CONV_2D: i32 = 3;
const CODE_DEPTHWISE_CONV_2D: i32 = 4;
const CODE_RESHAPE: i32 = 22;
const CODE_SOFTMAX: i32 = 25;
const CODE_CUSTOM: i32 = 32;

/// Returns the schema name of a builtin operator code, or `BUILTIN_<code>` past the table.
pub fn builtin_name(code: i32) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|index| BUILTIN_NAMES.get(index))
        .map_or_else(|| format!("BUILTIN_{code}"), |name| (*name).to_string())
}

/// Element type of a tensor (`TensorType` in the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    Float32,
    Float16,
    Int32,
    UInt8,
    Int64,
    Int16,
    Int8,
    /// Any other schema code (string, bool, complex and newer types).
    Other(i8),
}

impl TensorType {
    fn from_code(code: i8) -> Self {
        match code {
            0 => Self::Float32,
            1 => Self::Float16,
            2 => Self::Int32,
            3 => Self::UInt8,
            4 => Self::Int64,
            7 => Self::Int16,
            9 => Self::Int8,
            other => Self::Other(other),
        }
    }
}

/// Affine quantization of a tensor: `real = (q - zero_point) * scale`, per tensor (one
/// scale) or per slice along `quantized_dimension`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantization {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub quantized_dimension: usize,
}

/// One tensor of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in TensorFlow Lite's layout (NHWC for images).
    pub shape: Vec<usize>,
    pub dtype: TensorType,
    /// Index into the model's buffers; buffer 0 is the empty buffer of activations.
    pub buffer: usize,
    /// `None` when the tensor has no scale (a float tensor).
    pub quantization: Option<Quantization>,
}

/// Padding scheme of convolutions and pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Output size `ceil(input / stride)`, zero padding split as TensorFlow does (the
    /// extra row or column goes to the bottom or right).
    Same,
    /// No padding: output size `ceil((input - kernel + 1) / stride)`.
    Valid,
}

/// Activation fused into an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    ReluN1To1,
    Relu6,
    Tanh,
    SignBit,
}

/// Spatial settings of a convolution or pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub padding: Padding,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
}

/// An operator with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum OperatorKind {
    /// Inputs: data, weights `[out, kh, kw, in]`, optional bias `[out]`.
    Conv2d {
        window: Window,
        activation: Activation,
    },
    /// Inputs: data, weights `[1, kh, kw, channels * depth_multiplier]`, optional bias.
    DepthwiseConv2d {
        window: Window,
        depth_multiplier: usize,
        activation: Activation,
    },
    Add {
        activation: Activation,
    },
    AveragePool2d {
        window: Window,
        filter_h: usize,
        filter_w: usize,
        activation: Activation,
    },
    /// `new_shape` from the options; empty when the shape comes from the second input or
    /// the output tensor.
    Reshape {
        new_shape: Vec<i32>,
    },
    Softmax {
        beta: f32,
    },
}

impl OperatorKind {
    /// Returns the schema name of the operator.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Conv2d { .. } => "CONV_2D",
            Self::DepthwiseConv2d { .. } => "DEPTHWISE_CONV_2D",
            Self::Add { .. } => "ADD",
            Self::AveragePool2d { .. } => "AVERAGE_POOL_2D",
            Self::Reshape { .. } => "RESHAPE",
            Self::Softmax { .. } => "SOFTMAX",
        }
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub kind: OperatorKind,
    /// Tensor indices; `None` marks an omitted optional input (index -1 in the file).
    pub inputs: Vec<Option<usize>>,
    pub outputs: Vec<usize>,
}

/// A TensorFlow Lite model: the main subgraph and the constant buffers.
#[derive(Debug, Clone)]
pub struct Model {
    pub path: PathBuf,
    pub version: u32,
    pub description: Option<String>,
    pub tensors: Vec<TensorInfo>,
    pub operators: Vec<Operator>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    buffers: Vec<Vec<u8>>,
}

impl Model {
    /// Reads a `.tflite` file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| VisionError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a `.tflite` file; `path` is used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let invalid = |message: String| VisionError::InvalidModel {
            path: path.to_path_buf(),
            message,
        };
        if bytes.get(4..8) != Some(b"TFL3".as_slice()) {
            return Err(invalid(
                "missing the TFL3 file identifier at bytes 4..8 (expected a .tflite file)"
                    .to_string(),
            ));
        }
        let graph = parse(bytes).map_err(|error| match error {
            ParseError::Format(FormatError(message)) => invalid(message),
            ParseError::Unsupported(error) => error,
        })?;
        let model = Self {
            path: path.to_path_buf(),
            version: graph.version,
            description: graph.description,
            tensors: graph.tensors,
            operators: graph.operators,
            inputs: graph.inputs,
            outputs: graph.outputs,
            buffers: graph.buffers,
        };
        model.check_indices()?;
        Ok(model)
    }

    fn check_indices(&self) -> Result<()> {
        let tensor_count = self.tensors.len();
        let tensor_refs = self.inputs.iter().chain(&self.outputs).copied().chain(
            self.operators
                .iter()
                .flat_map(|op| op.inputs.iter().flatten().chain(&op.outputs).copied()),
        );
        for index in tensor_refs {
            if index >= tensor_count {
                return Err(VisionError::InvalidModel {
                    path: self.path.clone(),
                    message: format!("tensor index {index} out of range ({tensor_count} tensors)"),
                });
            }
        }
        for tensor in &self.tensors {
            if tensor.buffer >= self.buffers.len() {
                return Err(VisionError::InvalidModel {
                    path: self.path.clone(),
                    message: format!(
                        "tensor {} refers to buffer {} of {}",
                        tensor.name,
                        tensor.buffer,
                        self.buffers.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Returns the raw bytes of a tensor's constant data (empty for activations).
    pub fn tensor_data(&self, tensor: usize) -> &[u8] {
        self.tensors
            .get(tensor)
            .and_then(|info| self.buffers.get(info.buffer))
            .map_or(&[], Vec::as_slice)
    }

    /// Returns the constant data of a tensor as f32, flattened in the file's (row-major)
    /// order: `(q - zero_point) * scale` for quantized integer tensors, the values as
    /// they are for float tensors.
    pub fn dequantize(&self, tensor: usize) -> Result<Vec<f32>> {
        let info = self.tensor(tensor)?;
        let quantization = info.quantization.as_ref();
        let scales = quantization.map(|q| q.scale.as_slice()).unwrap_or(&[]);
        let zero_points = quantization.map(|q| q.zero_point.as_slice()).unwrap_or(&[]);
        self.dequantize_with(tensor, scales, zero_points)
    }

    /// Dequantizes an int32 bias of a convolution, with `scale = input_scale *
    /// weight_scale` (per output channel when the weights are quantized per channel) and
    /// zero point 0, as TensorFlow Lite's quantized kernels define it.
    pub fn dequantize_bias(&self, bias: usize, input: usize, weights: usize) -> Result<Vec<f32>> {
        let info = self.tensor(bias)?;
        if info.dtype != TensorType::Int32 {
            return self.dequantize(bias);
        }
        let input_scale = self.single_scale(input)?;
        let weight_scales = self
            .tensor(weights)?
            .quantization
            .as_ref()
            .map(|q| q.scale.clone())
            .ok_or_else(|| {
                VisionError::InvalidGraph(format!(
                    "int32 bias {} has float weights {}",
                    info.name, self.tensors[weights].name
                ))
            })?;
        let scales: Vec<f32> = weight_scales.iter().map(|s| s * input_scale).collect();
        self.dequantize_with(bias, &scales, &[0])
    }

    /// Returns the scale of a per-tensor quantized tensor.
    pub fn single_scale(&self, tensor: usize) -> Result<f32> {
        let info = self.tensor(tensor)?;
        match info.quantization.as_ref().map(|q| q.scale.as_slice()) {
            Some([scale]) => Ok(*scale),
            _ => Err(VisionError::InvalidGraph(format!(
                "tensor {} has no single quantization scale",
                info.name
            ))),
        }
    }

    /// Returns the tensor description at `index`.
    pub fn tensor(&self, index: usize) -> Result<&TensorInfo> {
        self.tensors.get(index).ok_or_else(|| {
            VisionError::InvalidGraph(format!(
                "tensor index {index} out of range ({} tensors)",
                self.tensors.len()
            ))
        })
    }

    fn dequantize_with(
        &self,
        tensor: usize,
        scales: &[f32],
        zero_points: &[i64],
    ) -> Result<Vec<f32>> {
        let info = self.tensor(tensor)?;
        let data = self.tensor_data(tensor);
        let count: usize = info.shape.iter().product();
        let values: Vec<f64> = match info.dtype {
            TensorType::Float32 => {
                return check_count(info, decode(data, f32::from_le_bytes), count);
            }
            TensorType::UInt8 => data.iter().map(|&q| f64::from(q)).collect(),
            TensorType::Int8 => data.iter().map(|&q| f64::from(q as i8)).collect(),
            TensorType::Int32 => decode(data, i32::from_le_bytes)
                .into_iter()
                .map(f64::from)
                .collect(),
            TensorType::Int16 => decode(data, i16::from_le_bytes)
                .into_iter()
                .map(f64::from)
                .collect(),
            other => {
                return Err(VisionError::Unsupported(format!(
                    "tensor {} has type {other:?}, which cannot be dequantized",
                    info.name
                )))
            }
        };
        if scales.is_empty() {
            return Err(VisionError::InvalidGraph(format!(
                "integer tensor {} has no quantization scale",
                info.name
            )));
        }
        let axis = info
            .quantization
            .as_ref()
            .map_or(0, |q| q.quantized_dimension);
        // Elements per step of the quantized axis, for per-channel scales.
        let inner: usize = info.shape.iter().skip(axis + 1).product();
        let channels = info.shape.get(axis).copied().unwrap_or(1);
        let out = values
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let channel = if scales.len() == 1 {
                    0
                } else {
                    (i / inner.max(1)) % channels.max(1)
                };
                let scale = scales[channel.min(scales.len() - 1)];
                let zero_point = zero_points
                    .get(channel)
                    .or(zero_points.first())
                    .copied()
                    .unwrap_or(0);
                ((q - zero_point as f64) * f64::from(scale)) as f32
            })
            .collect();
        check_count(info, out, count)
    }
}

fn check_count(info: &TensorInfo, values: Vec<f32>, count: usize) -> Result<Vec<f32>> {
    if values.len() == count {
        Ok(values)
    } else {
        Err(VisionError::InvalidGraph(format!(
            "tensor {} of shape {:?} has {} values in its buffer, expected {count}",
            info.name,
            info.shape,
            values.len()
        )))
    }
}

fn decode<T, const N: usize>(data: &[u8], from_le: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|chunk| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(chunk);
            from_le(bytes)
        })
        .collect()
}

enum ParseError {
    Format(FormatError),
    Unsupported(VisionError),
}

impl From<FormatError> for ParseError {
    fn from(error: FormatError) -> Self {
        Self::Format(error)
    }
}

type ParseResult<T> = std::result::Result<T, ParseError>;

struct ParsedGraph {
    version: u32,
    description: Option<String>,
    tensors: Vec<TensorInfo>,
    operators: Vec<Operator>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    buffers: Vec<Vec<u8>>,
}

fn missing(what: &str) -> FormatError {
    FormatError(format!("missing required field {what}"))
}

fn to_index(value: i32, what: &str) -> ParseResult<usize> {
    usize::try_from(value).map_err(|_| FormatError(format!("negative {what} {value}")).into())
}

fn parse(bytes: &[u8]) -> ParseResult<ParsedGraph> {
    let model = Table::root(bytes)?;
    let version = model.u32(0, 0)?;
    let description = model.string(3)?;

    let buffers = match model.vector(4)? {
        Some(vector) => (0..vector.len())
            .map(|i| parse_buffer(bytes, vector.table(i)?))
            .collect::<ParseResult<Vec<_>>>()?,
        None => Vec::new(),
    };

    let mut codes = Vec::new();
    if let Some(vector) = model.vector(1)? {
        for i in 0..vector.len() {
            let code = vector.table(i)?;
            let deprecated = i32::from(code.i8(0, 0)?);
            let builtin = code.i32(3, 0)?;
            codes.push((deprecated.max(builtin), code.string(1)?));
        }
    }

    let subgraphs = model.vector(2)?.ok_or_else(|| missing("Model.subgraphs"))?;
    if subgraphs.len() == 0 {
        return Err(FormatError("the model has no subgraph".to_string()).into());
    }
    let graph = subgraphs.table(0)?;
    let tensors = match graph.vector(0)? {
        Some(vector) => (0..vector.len())
            .map(|i| parse_tensor(vector.table(i)?))
            .collect::<ParseResult<Vec<_>>>()?,
        None => Vec::new(),
    };
    let index_list = |slot: usize, what: &str| -> ParseResult<Vec<usize>> {
        let values = graph
            .vector(slot)?
            .map(|v| v.i32s())
            .transpose()?
            .unwrap_or_default();
        values.into_iter().map(|v| to_index(v, what)).collect()
    };
    let inputs = index_list(1, "subgraph input")?;
    let outputs = index_list(2, "subgraph output")?;

    let mut operators = Vec::new();
    if let Some(vector) = graph.vector(3)? {
        for i in 0..vector.len() {
            operators.push(parse_operator(i, vector.table(i)?, &codes)?);
        }
    }
    Ok(ParsedGraph {
        version,
        description,
        tensors,
        operators,
        inputs,
        outputs,
        buffers,
    })
}

fn parse_buffer(bytes: &[u8], buffer: Table<'_>) -> ParseResult<Vec<u8>> {
    if let Some(data) = buffer.vector(0)? {
        return Ok(data.bytes(1)?.to_vec());
    }
    // Models over 2 GB store buffers after the FlatBuffer, at `offset` with `size` bytes
    // (offset 0 or 1 means no such data).
    let offset = buffer.u64(1, 0)?;
    let size = buffer.u64(2, 0)?;
    if offset <= 1 {
        return Ok(Vec::new());
    }
    usize::try_from(offset)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(start, size)| bytes.get(start..start.checked_add(size)?))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            FormatError(format!(
                "buffer at offset {offset} with {size} bytes runs past the file"
            ))
            .into()
        })
}

fn parse_tensor(tensor: Table<'_>) -> ParseResult<TensorInfo> {
    let name = tensor.string(3)?.unwrap_or_default();
    let shape = tensor
        .vector(0)?
        .map(|v| v.i32s())
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .map(|d| to_index(d, "tensor dimension"))
        .collect::<ParseResult<Vec<_>>>()?;
    let quantization = match tensor.table(4)? {
        Some(q) => {
            let scale = q
                .vector(2)?
                .map(|v| v.f32s())
                .transpose()?
                .unwrap_or_default();
            let zero_point = q
                .vector(3)?
                .map(|v| v.i64s())
                .transpose()?
                .unwrap_or_default();
            let quantized_dimension = to_index(q.i32(6, 0)?, "quantized dimension")?;
            (!scale.is_empty()).then_some(Quantization {
                scale,
                zero_point,
                quantized_dimension,
            })
        }
        None => None,
    };
    Ok(TensorInfo {
        name,
        shape,
        dtype: TensorType::from_code(tensor.i8(1, 0)?),
        buffer: tensor.u32(2, 0)? as usize,
        quantization,
    })
}

fn parse_operator(
    index: usize,
    operator: Table<'_>,
    codes: &[(i32, Option<String>)],
) -> ParseResult<Operator> {
    let opcode_index = operator.u32(0, 0)? as usize;
    let (code, custom_code) = codes.get(opcode_index).ok_or_else(|| {
        FormatError(format!(
            "operator {index} has opcode index {opcode_index} of {} codes",
            codes.len()
        ))
    })?;
    let options = operator.table(4)?;
    let kind = match *code {
        CODE_CONV_2D => {
            let o = options.ok_or_else(|| missing("Conv2DOptions"))?;
            OperatorKind::Conv2d {
                window: window(
                    index,
                    o.i8(0, 0)?,
                    o.i32(2, 0)?,
                    o.i32(1, 0)?,
                    o.i32(5, 1)?,
                    o.i32(4, 1)?,
                )?,
                activation: activation(index, o.i8(3, 0)?)?,
            }
        }
        CODE_DEPTHWISE_CONV_2D => {
            let o = options.ok_or_else(|| missing("DepthwiseConv2DOptions"))?;
            OperatorKind::DepthwiseConv2d {
                window: window(
                    index,
                    o.i8(0, 0)?,
                    o.i32(2, 0)?,
                    o.i32(1, 0)?,
                    o.i32(6, 1)?,
                    o.i32(5, 1)?,
                )?,
                depth_multiplier: to_index(o.i32(3, 1)?, "depth multiplier")?.max(1),
                activation: activation(index, o.i8(4, 0)?)?,
            }
        }
        CODE_AVERAGE_POOL_2D => {
            let o = options.ok_or_else(|| missing("Pool2DOptions"))?;
            OperatorKind::AveragePool2d {
                window: window(index, o.i8(0, 0)?, o.i32(2, 0)?, o.i32(1, 0)?, 1, 1)?,
                filter_w: to_index(o.i32(3, 0)?, "filter width")?,
                filter_h: to_index(o.i32(4, 0)?, "filter height")?,
                activation: activation(index, o.i8(5, 0)?)?,
            }
        }
        CODE_ADD => OperatorKind::Add {
            activation: match options {
                Some(o) => activation(index, o.i8(0, 0)?)?,
                None => Activation::None,
            },
        },
        CODE_RESHAPE => OperatorKind::Reshape {
            new_shape: match options {
                Some(o) => o
                    .vector(0)?
                    .map(|v| v.i32s())
                    .transpose()?
                    .unwrap_or_default(),
                None => Vec::new(),
            },
        },
        CODE_SOFTMAX => OperatorKind::Softmax {
            beta: match options {
                Some(o) => o.f32(0, 0.0)?,
                None => 1.0,
            },
        },
        other => {
            let name = match (other, custom_code) {
                (CODE_CUSTOM, Some(custom)) => format!("CUSTOM ({custom})"),
                _ => builtin_name(other),
            };
            return Err(ParseError::Unsupported(VisionError::UnsupportedOperator {
                index,
                code: other,
                name,
            }));
        }
    };
    let inputs = operator
        .vector(1)?
        .map(|v| v.i32s())
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            if i < 0 {
                Ok(None)
            } else {
                to_index(i, "operator input").map(Some)
            }
        })
        .collect::<ParseResult<Vec<_>>>()?;
    let outputs = operator
        .vector(2)?
        .map(|v| v.i32s())
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .map(|i| to_index(i, "operator output"))
        .collect::<ParseResult<Vec<_>>>()?;
    Ok(Operator {
        kind,
        inputs,
        outputs,
    })
}

fn window(
    index: usize,
    padding: i8,
    stride_h: i32,
    stride_w: i32,
    dilation_h: i32,
    dilation_w: i32,
) -> ParseResult<Window> {
    let padding = match padding {
        0 => Padding::Same,
        1 => Padding::Valid,
        other => {
            return Err(
                FormatError(format!("operator {index} has unknown padding code {other}")).into(),
            )
        }
    };
    let positive = |value: i32, what: &str| -> ParseResult<usize> {
        match usize::try_from(value) {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(FormatError(format!(
                "operator {index} has {what} {value}, expected at least 1"
            ))
            .into()),
        }
    };
    Ok(Window {
        padding,
        stride_h: positive(stride_h, "stride_h")?,
        stride_w: positive(stride_w, "stride_w")?,
        dilation_h: positive(dilation_h, "dilation_h_factor")?,
        dilation_w: positive(dilation_w, "dilation_w_factor")?,
    })
}

fn activation(index: usize, code: i8) -> ParseResult<Activation> {
    Ok(match code {
        0 => Activation::None,
        1 => Activation::Relu,
        2 => Activation::ReluN1To1,
        3 => Activation::Relu6,
        4 => Activation::Tanh,
        5 => Activation::SignBit,
        other => {
            return Err(FormatError(format!(
                "operator {index} has unknown fused activation code {other}"
            ))
            .into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field of a hand-built table: inline scalar bytes, or a forward offset to an
    /// object written later (patched by [`Builder::point`]).
    enum Field {
        Scalar(Vec<u8>),
        Offset,
        Absent,
    }

    /// Writes FlatBuffers front to back: each table's vtable sits just before it, and
    /// children follow their parent so every offset points forward.
    struct Builder {
        buf: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            // Root offset (patched later), then the TFL3 identifier.
            Self {
                buf: [0, 0, 0, 0, b'T', b'F', b'L', b'3'].to_vec(),
            }
        }

        /// Writes a table and returns its position and the positions of its offset fields.
        fn table(&mut self, fields: &[Field]) -> (usize, Vec<usize>) {
            let mut layout = Vec::new();
            let mut table_len = 4;
            for field in fields {
                match field {
                    Field::Scalar(bytes) => {
                        layout.push(table_len as u16);
                        table_len += bytes.len();
                    }
                    Field::Offset => {
                        layout.push(table_len as u16);
                        table_len += 4;
                    }
                    Field::Absent => layout.push(0),
                }
            }
            let vtable = self.buf.len();
            self.buf
                .extend_from_slice(&((4 + 2 * fields.len()) as u16).to_le_bytes());
            self.buf
                .extend_from_slice(&(table_len as u16).to_le_bytes());
            for offset in &layout {
                self.buf.extend_from_slice(&offset.to_le_bytes());
            }
            let table = self.buf.len();
            self.buf
                .extend_from_slice(&((table - vtable) as i32).to_le_bytes());
            let mut offsets = Vec::new();
            for field in fields {
                match field {
                    Field::Scalar(bytes) => self.buf.extend_from_slice(bytes),
                    Field::Offset => {
                        offsets.push(self.buf.len());
                        self.buf.extend_from_slice(&[0; 4]);
                    }
                    Field::Absent => {}
                }
            }
            (table, offsets)
        }

        /// Writes a vector of raw elements and returns its position.
        fn vector(&mut self, len: usize, bytes: &[u8]) -> usize {
            let pos = self.buf.len();
            self.buf.extend_from_slice(&(len as u32).to_le_bytes());
            self.buf.extend_from_slice(bytes);
            pos
        }

        /// Writes a vector of `count` table offsets and returns the element positions.
        fn table_vector(&mut self, count: usize) -> (usize, Vec<usize>) {
            let pos = self.vector(count, &vec![0; 4 * count]);
            (pos, (0..count).map(|i| pos + 4 + 4 * i).collect())
        }

        fn point(&mut self, at: usize, target: usize) {
            let offset = (target - at) as u32;
            self.buf[at..at + 4].copy_from_slice(&offset.to_le_bytes());
        }
    }

    fn ints(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Builds a model with one operator of builtin `code` and one uint8 tensor of shape
    /// [3] holding [10, 12, 255], quantized with scale 0.5 and zero point 10.
    fn model_bytes(code: i32) -> Vec<u8> {
        let mut b = Builder::new();
        // Model: version, operator_codes, subgraphs, description (absent), buffers.
        let (model, model_offsets) = b.table(&[
            Field::Scalar(3u32.to_le_bytes().to_vec()),
            Field::Offset,
            Field::Offset,
            Field::Absent,
            Field::Offset,
        ]);
        b.point(0, model);

        let (codes, code_slots) = b.table_vector(1);
        b.point(model_offsets[0], codes);
        // OperatorCode: deprecated_builtin_code, custom_code, version, builtin_code.
        let (code_table, _) = b.table(&[
            Field::Scalar(vec![code.min(127) as u8]),
            Field::Absent,
            Field::Absent,
            Field::Scalar(code.to_le_bytes().to_vec()),
        ]);
        b.point(code_slots[0], code_table);

        let (subgraphs, subgraph_slots) = b.table_vector(1);
        b.point(model_offsets[1], subgraphs);
        // SubGraph: tensors, inputs, outputs, operators.
        let (subgraph, sub) =
            b.table(&[Field::Offset, Field::Offset, Field::Offset, Field::Offset]);
        b.point(subgraph_slots[0], subgraph);
        let (tensors, tensor_slots) = b.table_vector(1);
        b.point(sub[0], tensors);
        // Tensor: shape, type (UINT8 = 3), buffer, name (absent), quantization.
        let (tensor, tensor_offsets) = b.table(&[
            Field::Offset,
            Field::Scalar(vec![3]),
            Field::Scalar(1u32.to_le_bytes().to_vec()),
            Field::Absent,
            Field::Offset,
        ]);
        b.point(tensor_slots[0], tensor);
        let shape = b.vector(1, &ints(&[3]));
        b.point(tensor_offsets[0], shape);
        // QuantizationParameters: min, max (absent), scale, zero_point.
        let (quantization, q) =
            b.table(&[Field::Absent, Field::Absent, Field::Offset, Field::Offset]);
        b.point(tensor_offsets[1], quantization);
        let scale = b.vector(1, &0.5f32.to_le_bytes());
        b.point(q[0], scale);
        let zero_point = b.vector(1, &10i64.to_le_bytes());
        b.point(q[1], zero_point);
        let inputs = b.vector(1, &ints(&[0]));
        b.point(sub[1], inputs);
        let outputs = b.vector(1, &ints(&[0]));
        b.point(sub[2], outputs);
        let (operators, operator_slots) = b.table_vector(1);
        b.point(sub[3], operators);
        // Operator: opcode_index, inputs, outputs.
        let (operator, operator_offsets) = b.table(&[
            Field::Scalar(0u32.to_le_bytes().to_vec()),
            Field::Offset,
            Field::Offset,
        ]);
        b.point(operator_slots[0], operator);
        let op_inputs = b.vector(1, &ints(&[0]));
        b.point(operator_offsets[0], op_inputs);
        let op_outputs = b.vector(1, &ints(&[0]));
        b.point(operator_offsets[1], op_outputs);

        let (buffers, buffer_slots) = b.table_vector(2);
        b.point(model_offsets[2], buffers);
        let (empty, _) = b.table(&[]);
        b.point(buffer_slots[0], empty);
        let (data_buffer, data) = b.table(&[Field::Offset]);
        b.point(buffer_slots[1], data_buffer);
        let bytes = b.vector(3, &[10, 12, 255]);
        b.point(data[0], bytes);
        b.buf
    }

    #[test]
    fn unsupported_operator_is_named() {
        // 17 is MAX_POOL_2D.
        let error = Model::from_bytes(&model_bytes(17), Path::new("max_pool.tflite")).unwrap_err();
        let VisionError::UnsupportedOperator { index, code, name } = &error else {
            panic!("expected UnsupportedOperator, got {error}");
        };
        assert_eq!(*index, 0);
        assert_eq!(*code, 17);
        assert_eq!(name, "MAX_POOL_2D");
    }

    #[test]
    fn uint8_tensor_dequantizes_with_zero_point() {
        // 22 is RESHAPE, which needs no options.
        let model = Model::from_bytes(&model_bytes(22), Path::new("reshape.tflite")).unwrap();
        assert_eq!(model.version, 3);
        assert_eq!(model.tensors[0].shape, vec![3]);
        // (10 - 10) * 0.5, (12 - 10) * 0.5, (255 - 10) * 0.5
        assert_eq!(model.dequantize(0).unwrap(), vec![0.0, 1.0, 122.5]);
    }

    #[test]
    fn truncated_model_is_invalid() {
        let mut bytes = model_bytes(22);
        bytes.truncate(bytes.len() - 6);
        let error = Model::from_bytes(&bytes, Path::new("cut.tflite")).unwrap_err();
        assert!(matches!(error, VisionError::InvalidModel { .. }), "{error}");
    }

    #[test]
    fn builtin_names_follow_schema() {
        assert_eq!(builtin_name(4), "DEPTHWISE_CONV_2D");
        assert_eq!(builtin_name(102), "SPLIT_V");
        assert_eq!(builtin_name(150), "BUILTIN_150");
    }
}
