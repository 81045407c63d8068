//! Launches the CUDA kernels of this folder on Candle tensors (feature `cuda`).
//!
//! The PTX that build.rs wrote is embedded in the binary and loaded once per device
//! through [`CudaDevice::get_or_load_custom_func`]: the sm_90 build on devices of compute
//! capability 9.0 and above, else the sm_80 build. The public functions take contiguous
//! f32 tensors on one CUDA device (ids and lengths as u32) and return new tensors on it;
//! none records gradients. Each mirrors the function of the same name in
//! [`super::twins`]. The `*_views` functions launch the same kernels on device views,
//! for the `cuda_fwd` of the operations in [`super::ops`].
//!
//! NOTE: these launchers have not run on a GPU yet. The ignored GPU
//! tests in tests/cuda_twins.rs (see scripts/gpu-check.sh) are their first check.

use candle_core::cuda_backend::cudarc::driver::{
    sys::CUdevice_attribute, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Device, Layout, Result, Storage, Tensor};

/// A PTX module: its name in the device's module cache and its text.
struct Ptx {
    name: &'static str,
    text: &'static str,
}

macro_rules! ptx_pair {
    ($kernel:literal) => {
        [
            Ptx {
                name: concat!("ulmfit_", $kernel, "_sm_90"),
                text: include_str!(concat!(env!("OUT_DIR"), "/", $kernel, ".sm_90.ptx")),
            },
            Ptx {
                name: concat!("ulmfit_", $kernel, "_sm_80"),
                text: include_str!(concat!(env!("OUT_DIR"), "/", $kernel, ".sm_80.ptx")),
            },
        ]
    };
}

const LSTM_CELL: [Ptx; 2] = ptx_pair!("lstm_cell");
const DROPOUT: [Ptx; 2] = ptx_pair!("dropout");
const POOLING: [Ptx; 2] = ptx_pair!("pooling");

/// Threads per block of every launch.
const BLOCK: u32 = 256;

/// Picks the PTX build for the device: sm_90 from compute capability 9.0 up, else sm_80.
fn module(device: &CudaDevice, pair: &'static [Ptx; 2]) -> Result<&'static Ptx> {
    let major = device
        .cuda_stream()
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .w()?;
    Ok(if major >= 9 { &pair[0] } else { &pair[1] })
}

/// Returns the CUDA device of `tensor`, or an error naming the kernel and argument.
fn cuda_device<'a>(kernel: &str, name: &str, tensor: &'a Tensor) -> Result<&'a CudaDevice> {
    match tensor.device() {
        Device::Cuda(device) => Ok(device),
        other => bail!("{kernel}: {name} is on {other:?}, expected a CUDA device"),
    }
}

/// Checks dtype, element count and contiguity of one argument.
fn check(kernel: &str, name: &str, tensor: &Tensor, dtype: DType, elements: usize) -> Result<()> {
    if tensor.dtype() != dtype {
        bail!(
            "{kernel}: {name} has dtype {:?}, expected {dtype:?}",
            tensor.dtype()
        );
    }
    if tensor.elem_count() != elements {
        bail!(
            "{kernel}: {name} has shape {:?} ({} elements), expected {elements} elements",
            tensor.dims(),
            tensor.elem_count()
        );
    }
    if !tensor.is_contiguous() {
        bail!("{kernel}: {name} is not contiguous; call .contiguous() first");
    }
    Ok(())
}

/// A device view of a contiguous tensor's elements, kept alive with its storage guard.
fn with_view<T, R>(tensor: &Tensor, body: impl FnOnce(CudaView<'_, T>) -> Result<R>) -> Result<R>
where
    T: CudaDType + DeviceRepr,
{
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else {
        bail!(
            "expected a tensor in CUDA memory, found {:?}",
            tensor.device()
        );
    };
    let slice = storage.as_cuda_slice::<T>()?;
    let start = layout.start_offset();
    body(slice.slice(start..start + tensor.elem_count()))
}

/// Returns the device view of a contiguous storage's elements, or an error naming the
/// kernel and operand.
pub(crate) fn storage_view<'a, T: CudaDType + DeviceRepr>(
    kernel: &str,
    name: &str,
    storage: &'a CudaStorage,
    layout: &Layout,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{kernel}: {name} is not contiguous");
    };
    Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
}

/// Wraps a device buffer as a tensor of `shape`.
pub(crate) fn to_tensor(slice: CudaSlice<f32>, device: &CudaDevice, shape: &[usize]) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(slice, device.clone());
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

fn launch_config(elements: usize) -> Result<LaunchConfig> {
    let Ok(count) = u32::try_from(elements) else {
        bail!(
            "{elements} elements exceed one kernel launch (at most {})",
            u32::MAX
        );
    };
    Ok(LaunchConfig {
        grid_dim: (count.div_ceil(BLOCK).max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn dim_u32(kernel: &str, name: &str, value: usize) -> Result<u32> {
    match u32::try_from(value) {
        Ok(value) => Ok(value),
        Err(_) => bail!("{kernel}: {name} = {value} does not fit in 32 bits"),
    }
}

/// Launches `lstm_cell_forward_f32` on device views and returns `(gates, hc)`: the
/// activated gates `[batch, 4 hidden]` and the new states packed as `[2, batch, hidden]`
/// (h, then c). Every view must have the element count of its shape in
/// [`lstm_cell_forward`].
pub(crate) fn lstm_cell_forward_views(
    device: &CudaDevice,
    projected: &CudaView<'_, f32>,
    recurrent: &CudaView<'_, f32>,
    c_prev: &CudaView<'_, f32>,
    batch: usize,
    hidden: usize,
) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    let kernel = "lstm_cell_forward";
    let step = batch * hidden;
    for (name, view, expected) in [
        ("projected", projected, 4 * step),
        ("recurrent", recurrent, 4 * step),
        ("c_prev", c_prev, step),
    ] {
        if view.len() != expected {
            bail!(
                "{kernel}: {name} has {} elements, expected {expected}",
                view.len()
            );
        }
    }
    let ptx = module(device, &LSTM_CELL)?;
    let func = device.get_or_load_custom_func("lstm_cell_forward_f32", ptx.name, ptx.text)?;
    // SAFETY: every element of both buffers is written by the kernel below.
    let mut gates = unsafe { device.alloc::<f32>(4 * step)? };
    let mut hc = unsafe { device.alloc::<f32>(2 * step)? };
    let (batch_arg, hidden_arg) = (
        dim_u32(kernel, "batch", batch)?,
        dim_u32(kernel, "hidden", hidden)?,
    );
    let config = launch_config(step)?;
    {
        let (mut h, mut c) = hc.split_at_mut(step);
        let mut builder = func.builder();
        builder.arg(projected);
        builder.arg(recurrent);
        builder.arg(c_prev);
        builder.arg(&mut gates);
        builder.arg(&mut c);
        builder.arg(&mut h);
        builder.arg(&batch_arg);
        builder.arg(&hidden_arg);
        // SAFETY: the argument list matches the kernel's signature and the sizes were
        // checked above.
        unsafe { builder.launch(config) }.w()?;
    }
    Ok((gates, hc))
}

/// One LSTM step on the GPU: returns `(gates, c, h)`.
///
/// Shapes: `projected` and `recurrent` (`h_prev W_hh^T`) `[batch, 4 hidden]`, `c_prev`
/// `[batch, hidden]`; returns gates `[batch, 4 hidden]`, `c` and `h` `[batch, hidden]`.
pub fn lstm_cell_forward(
    projected: &Tensor,
    recurrent: &Tensor,
    c_prev: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let kernel = "lstm_cell_forward";
    let (batch, hidden) = c_prev.dims2()?;
    check(
        kernel,
        "projected",
        projected,
        DType::F32,
        batch * 4 * hidden,
    )?;
    check(
        kernel,
        "recurrent",
        recurrent,
        DType::F32,
        batch * 4 * hidden,
    )?;
    check(kernel, "c_prev", c_prev, DType::F32, batch * hidden)?;
    let device = cuda_device(kernel, "c_prev", c_prev)?;
    let (gates, hc) = with_view::<f32, _>(projected, |projected| {
        with_view::<f32, _>(recurrent, |recurrent| {
            with_view::<f32, _>(c_prev, |c_prev| {
                lstm_cell_forward_views(device, &projected, &recurrent, &c_prev, batch, hidden)
            })
        })
    })?;
    let hc = to_tensor(hc, device, &[2, batch, hidden]);
    Ok((
        to_tensor(gates, device, &[batch, 4 * hidden]),
        hc.get(1)?,
        hc.get(0)?,
    ))
}

/// Backward pass of one LSTM step on the GPU: returns `(dpre, dc_prev)`.
///
/// Shapes: `gates` `[batch, 4 hidden]`; `c_prev`, `c`, `dh` and `dc_next`
/// `[batch, hidden]`; returns `dpre` `[batch, 4 hidden]` and `dc_prev` `[batch, hidden]`.
pub fn lstm_cell_backward(
    gates: &Tensor,
    c_prev: &Tensor,
    c: &Tensor,
    dh: &Tensor,
    dc_next: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let kernel = "lstm_cell_backward";
    let (batch, hidden) = c.dims2()?;
    check(kernel, "gates", gates, DType::F32, batch * 4 * hidden)?;
    for (name, tensor) in [
        ("c_prev", c_prev),
        ("c", c),
        ("dh", dh),
        ("dc_next", dc_next),
    ] {
        check(kernel, name, tensor, DType::F32, batch * hidden)?;
    }
    let device = cuda_device(kernel, "c", c)?;
    let ptx = module(device, &LSTM_CELL)?;
    let func = device.get_or_load_custom_func("lstm_cell_backward_f32", ptx.name, ptx.text)?;
    // SAFETY: every element of both buffers is written by the kernel below.
    let mut dpre = unsafe { device.alloc::<f32>(batch * 4 * hidden)? };
    let mut dc_prev = unsafe { device.alloc::<f32>(batch * hidden)? };
    let (batch_arg, hidden_arg) = (
        dim_u32(kernel, "batch", batch)?,
        dim_u32(kernel, "hidden", hidden)?,
    );
    let config = launch_config(batch * hidden)?;
    with_view::<f32, _>(gates, |gates| {
        with_view::<f32, _>(c_prev, |c_prev| {
            with_view::<f32, _>(c, |c| {
                with_view::<f32, _>(dh, |dh| {
                    with_view::<f32, _>(dc_next, |dc_next| {
                        let mut builder = func.builder();
                        builder.arg(&gates);
                        builder.arg(&c_prev);
                        builder.arg(&c);
                        builder.arg(&dh);
                        builder.arg(&dc_next);
                        builder.arg(&mut dpre);
                        builder.arg(&mut dc_prev);
                        builder.arg(&batch_arg);
                        builder.arg(&hidden_arg);
                        // SAFETY: the argument list matches the kernel's signature and
                        // the sizes were checked above.
                        unsafe { builder.launch(config) }.w()?;
                        Ok(())
                    })
                })
            })
        })
    })?;
    Ok((
        to_tensor(dpre, device, &[batch, 4 * hidden]),
        to_tensor(dc_prev, device, &[batch, hidden]),
    ))
}

/// Launches `weight_dropout_f32` on device views of equal length and returns the
/// dropped weights.
pub(crate) fn weight_dropout_views(
    device: &CudaDevice,
    weight: &CudaView<'_, f32>,
    keep: &CudaView<'_, u8>,
    scale: f32,
) -> Result<CudaSlice<f32>> {
    let kernel = "weight_dropout";
    let count = weight.len();
    if keep.len() != count {
        bail!(
            "{kernel}: keep has {} elements, expected {count}",
            keep.len()
        );
    }
    let ptx = module(device, &DROPOUT)?;
    let func = device.get_or_load_custom_func("weight_dropout_f32", ptx.name, ptx.text)?;
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { device.alloc::<f32>(count)? };
    let count_arg = dim_u32(kernel, "count", count)?;
    let config = launch_config(count)?;
    let mut builder = func.builder();
    builder.arg(weight);
    builder.arg(keep);
    builder.arg(&mut out);
    builder.arg(&scale);
    builder.arg(&count_arg);
    // SAFETY: the argument list matches the kernel's signature and the sizes were checked
    // above.
    unsafe { builder.launch(config) }.w()?;
    Ok(out)
}

/// Weight dropout on the GPU: `weight * scale` where `keep` (u8, same shape) is
/// non-zero, else 0. Returns a tensor of `weight`'s shape.
pub fn weight_dropout(weight: &Tensor, keep: &Tensor, scale: f32) -> Result<Tensor> {
    let kernel = "weight_dropout";
    let count = weight.elem_count();
    check(kernel, "weight", weight, DType::F32, count)?;
    check(kernel, "keep", keep, DType::U8, count)?;
    let device = cuda_device(kernel, "weight", weight)?;
    let out = with_view::<f32, _>(weight, |weight| {
        with_view::<u8, _>(keep, |keep| {
            weight_dropout_views(device, &weight, &keep, scale)
        })
    })?;
    Ok(to_tensor(out, device, weight.dims()))
}

/// Launches `embedding_dropout_f32` on device views: `weight` `[vocab, features]`, `ids`
/// `[n]`, `row_scale` `[vocab]`. Returns `[n, features]`.
pub(crate) fn embedding_dropout_views(
    device: &CudaDevice,
    weight: &CudaView<'_, f32>,
    ids: &CudaView<'_, u32>,
    row_scale: &CudaView<'_, f32>,
    features: usize,
) -> Result<CudaSlice<f32>> {
    let kernel = "embedding_dropout";
    let vocab = row_scale.len();
    let n = ids.len();
    if weight.len() != vocab * features {
        bail!(
            "{kernel}: weight has {} elements, expected {vocab} x {features}",
            weight.len()
        );
    }
    let ptx = module(device, &DROPOUT)?;
    let func = device.get_or_load_custom_func("embedding_dropout_f32", ptx.name, ptx.text)?;
    // SAFETY: every element is written by the kernel below.
    let mut out = unsafe { device.alloc::<f32>(n * features)? };
    let n_arg = dim_u32(kernel, "n", n)?;
    let features_arg = dim_u32(kernel, "features", features)?;
    let vocab_arg = dim_u32(kernel, "vocab", vocab)?;
    let config = launch_config(n * features)?;
    let mut builder = func.builder();
    builder.arg(weight);
    builder.arg(ids);
    builder.arg(row_scale);
    builder.arg(&mut out);
    builder.arg(&n_arg);
    builder.arg(&features_arg);
    builder.arg(&vocab_arg);
    // SAFETY: the argument list matches the kernel's signature and the sizes were checked
    // above.
    unsafe { builder.launch(config) }.w()?;
    Ok(out)
}

/// Embedding lookup with word dropout on the GPU.
///
/// Shapes: `weight` `[vocab, features]`, `ids` `[n]` (u32), `row_scale` `[vocab]`;
/// returns `[n, features]`. Ids must be below `vocab` (an id beyond yields a zero row).
pub fn embedding_dropout(weight: &Tensor, ids: &Tensor, row_scale: &Tensor) -> Result<Tensor> {
    let kernel = "embedding_dropout";
    let (vocab, features) = weight.dims2()?;
    let n = ids.elem_count();
    check(kernel, "weight", weight, DType::F32, vocab * features)?;
    check(kernel, "ids", ids, DType::U32, n)?;
    check(kernel, "row_scale", row_scale, DType::F32, vocab)?;
    let device = cuda_device(kernel, "weight", weight)?;
    let out = with_view::<f32, _>(weight, |weight| {
        with_view::<u32, _>(ids, |ids| {
            with_view::<f32, _>(row_scale, |row_scale| {
                embedding_dropout_views(device, &weight, &ids, &row_scale, features)
            })
        })
    })?;
    Ok(to_tensor(out, device, &[n, features]))
}

/// Launches `concat_pool_f32` on device views: `outputs` `[batch, time, features]` and
/// `lengths` `[batch]`. Returns `[batch, 3 features]`.
pub(crate) fn concat_pool_views(
    device: &CudaDevice,
    outputs: &CudaView<'_, f32>,
    lengths: &CudaView<'_, u32>,
    time: usize,
    features: usize,
) -> Result<CudaSlice<f32>> {
    let kernel = "concat_pool";
    let batch = lengths.len();
    if outputs.len() != batch * time * features {
        bail!(
            "{kernel}: outputs has {} elements, expected {batch} x {time} x {features}",
            outputs.len()
        );
    }
    let ptx = module(device, &POOLING)?;
    let func = device.get_or_load_custom_func("concat_pool_f32", ptx.name, ptx.text)?;
    // SAFETY: every element is written by the kernel below.
    let mut pooled = unsafe { device.alloc::<f32>(batch * 3 * features)? };
    let batch_arg = dim_u32(kernel, "batch", batch)?;
    let time_arg = dim_u32(kernel, "time", time)?;
    let features_arg = dim_u32(kernel, "features", features)?;
    let config = launch_config(batch * features)?;
    let mut builder = func.builder();
    builder.arg(outputs);
    builder.arg(lengths);
    builder.arg(&mut pooled);
    builder.arg(&batch_arg);
    builder.arg(&time_arg);
    builder.arg(&features_arg);
    // SAFETY: the argument list matches the kernel's signature and the sizes were checked
    // above.
    unsafe { builder.launch(config) }.w()?;
    Ok(pooled)
}

/// Masked concat pooling on the GPU.
///
/// Shapes: `outputs` `[batch, time, features]`, right-padded; `lengths` `[batch]` (u32,
/// each in `1..=time`); returns `[batch, 3 features]` as [last, max, mean].
pub fn concat_pool(outputs: &Tensor, lengths: &Tensor) -> Result<Tensor> {
    let kernel = "concat_pool";
    let (batch, time, features) = outputs.dims3()?;
    check(
        kernel,
        "outputs",
        outputs,
        DType::F32,
        batch * time * features,
    )?;
    check(kernel, "lengths", lengths, DType::U32, batch)?;
    let device = cuda_device(kernel, "outputs", outputs)?;
    let pooled = with_view::<f32, _>(outputs, |outputs| {
        with_view::<u32, _>(lengths, |lengths| {
            concat_pool_views(device, &outputs, &lengths, time, features)
        })
    })?;
    Ok(to_tensor(pooled, device, &[batch, 3 * features]))
}
