//! Candle operations built on the CUDA kernels of this folder, with gradients.
//!
//! Each operation runs its kernel on a CUDA device (feature `cuda`) and its CPU twin from
//! [`super::twins`] on the CPU, so tests on the CPU exercise the same decomposition that
//! the GPU runs. The model uses these operations on CUDA devices only; its CPU path
//! keeps the fused whole-sequence LSTM of [`crate::kernels::lstm`]. All values are f32.

use std::sync::Mutex;

#[cfg(feature = "cuda")]
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};

use super::twins;
use crate::kernels::contiguous_slice;
use crate::kernels::lstm::LstmSequenceOutput;

/// Fails unless `tensor` has dtype f32.
fn require_f32(op: &str, name: &str, tensor: &Tensor) -> Result<()> {
    if tensor.dtype() != DType::F32 {
        bail!(
            "{op}: {name} has dtype {:?}, but the kernel runs on f32 only",
            tensor.dtype()
        );
    }
    Ok(())
}

/// Returns a tensor's elements as a vector (they must be f32).
fn to_f32_vec(tensor: &Tensor) -> Result<Vec<f32>> {
    tensor.flatten_all()?.to_vec1::<f32>()
}

/// Runs an LSTM layer over a whole sequence one step at a time: per step, one matrix
/// product `h_prev W_hh^T` and one fused cell operation ([`lstm_cell`]). This is the
/// recurrence that the model runs on a CUDA device, where the product is cuBLAS's.
///
/// Shapes and result as [`crate::kernels::lstm::lstm_sequence`]: `projected`
/// `[time, batch, 4 hidden]` (input projection with both biases), `w_hh`
/// `[4 hidden, hidden]`, `h0` and `c0` `[batch, hidden]`. Gradients flow to all four
/// inputs through autograd, with the cell's backward pass from the backward kernel.
pub fn lstm_sequence_stepwise(
    projected: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<LstmSequenceOutput> {
    let (time, batch, gate_width) = projected.dims3()?;
    let (rows, hidden) = w_hh.dims2()?;
    if time == 0 || gate_width != 4 * hidden || rows != 4 * hidden {
        bail!(
            "lstm_sequence_stepwise: projected inputs {:?} and W_hh {:?} do not match [time > 0, batch, 4 hidden] and [4 hidden, hidden]",
            projected.dims(),
            w_hh.dims()
        );
    }
    for (name, state) in [("h0", h0), ("c0", c0)] {
        if state.dims() != [batch, hidden] {
            bail!(
                "lstm_sequence_stepwise: {name} has shape {:?}, expected [{batch}, {hidden}]",
                state.dims()
            );
        }
    }
    let w_t = w_hh.t()?;
    let mut h = h0.clone();
    let mut c = c0.clone();
    let mut outputs = Vec::with_capacity(time);
    for t in 0..time {
        let recurrent = h.matmul(&w_t)?;
        (h, c) = lstm_cell(&projected.get(t)?, &recurrent, &c)?;
        outputs.push(h.clone());
    }
    Ok(LstmSequenceOutput {
        outputs: Tensor::stack(&outputs, 0)?,
        h_last: h,
        c_last: c,
    })
}

/// One fused LSTM step: returns `(h, c)`, each `[batch, hidden]`.
///
/// Shapes: `projected` and `recurrent` (`h_prev W_hh^T`) `[batch, 4 hidden]`, `c_prev`
/// `[batch, hidden]`, all f32 on one device. Gradients flow to all three inputs; the
/// gradient of `projected` equals that of `recurrent`.
pub fn lstm_cell(
    projected: &Tensor,
    recurrent: &Tensor,
    c_prev: &Tensor,
) -> Result<(Tensor, Tensor)> {
    for (name, tensor) in [
        ("projected", projected),
        ("recurrent", recurrent),
        ("c_prev", c_prev),
    ] {
        require_f32("lstm_cell", name, tensor)?;
    }
    let (batch, hidden) = c_prev.dims2()?;
    for (name, tensor) in [("projected", projected), ("recurrent", recurrent)] {
        if tensor.dims() != [batch, 4 * hidden] {
            bail!(
                "lstm_cell: {name} has shape {:?}, expected [{batch}, {}]",
                tensor.dims(),
                4 * hidden
            );
        }
    }
    let save_for_backward = projected.track_op() || recurrent.track_op() || c_prev.track_op();
    let op = LstmCellOp {
        save_for_backward,
        gates: Mutex::new(None),
    };
    let packed =
        projected
            .contiguous()?
            .apply_op3(&recurrent.contiguous()?, &c_prev.contiguous()?, op)?;
    Ok((packed.get(0)?, packed.get(1)?))
}

/// The cell as a custom operation. Inputs: projected `[B, 4H]`, recurrent `[B, 4H]`,
/// `c_prev` `[B, H]`. Output `[2, B, H]`: the new h, then the new c.
struct LstmCellOp {
    save_for_backward: bool,
    /// Activated gates `[B, 4H]` of the forward pass, on the input's device.
    gates: Mutex<Option<Tensor>>,
}

impl LstmCellOp {
    fn store_gates(&self, gates: Tensor) -> Result<()> {
        if self.save_for_backward {
            let mut slot = self
                .gates
                .lock()
                .map_err(|_| candle_core::Error::Msg("lstm_cell: gate lock poisoned".into()))?;
            *slot = Some(gates);
        }
        Ok(())
    }
}

/// Returns `(batch, hidden)` from the layout of `c_prev`.
fn cell_dims(c_prev: &Layout) -> Result<(usize, usize)> {
    c_prev.shape().dims2()
}

impl CustomOp3 for LstmCellOp {
    fn name(&self) -> &'static str {
        "lstm-cell"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, hidden) = cell_dims(l3)?;
        let out = twins::lstm_cell_forward(
            contiguous_slice::<f32>(s1, l1, "lstm_cell", "projected")?,
            contiguous_slice::<f32>(s2, l2, "lstm_cell", "recurrent")?,
            contiguous_slice::<f32>(s3, l3, "lstm_cell", "c_prev")?,
            batch,
            hidden,
        )?;
        self.store_gates(Tensor::from_vec(
            out.gates,
            (batch, 4 * hidden),
            &Device::Cpu,
        )?)?;
        let mut packed = out.h;
        packed.extend_from_slice(&out.c);
        Ok((CpuStorage::F32(packed), Shape::from((2, batch, hidden))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::gpu::{lstm_cell_forward_views, storage_view, to_tensor};

        let (batch, hidden) = cell_dims(l3)?;
        let device = s1.device();
        let (gates, hc) = lstm_cell_forward_views(
            device,
            &storage_view::<f32>("lstm_cell", "projected", s1, l1)?,
            &storage_view::<f32>("lstm_cell", "recurrent", s2, l2)?,
            &storage_view::<f32>("lstm_cell", "c_prev", s3, l3)?,
            batch,
            hidden,
        )?;
        self.store_gates(to_tensor(gates, device, &[batch, 4 * hidden]))?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(hc, device.clone()),
            Shape::from((2, batch, hidden)),
        ))
    }

    fn bwd(
        &self,
        _projected: &Tensor,
        _recurrent: &Tensor,
        c_prev: &Tensor,
        packed: &Tensor,
        grad_packed: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gates = self
            .gates
            .lock()
            .map_err(|_| candle_core::Error::Msg("lstm_cell: gate lock poisoned".into()))?
            .clone();
        let Some(gates) = gates else {
            bail!("lstm_cell: backward called, but the forward pass saved no gates (no input tracked gradients)");
        };
        let c_prev = c_prev.contiguous()?;
        let c = packed.get(1)?.contiguous()?;
        let dh = grad_packed.get(0)?.contiguous()?;
        let dc_next = grad_packed.get(1)?.contiguous()?;
        let (dpre, dc_prev) = lstm_cell_backward(&gates, &c_prev, &c, &dh, &dc_next)?;
        Ok((Some(dpre.clone()), Some(dpre), Some(dc_prev)))
    }
}

/// Runs the backward kernel on CUDA tensors or its twin on CPU tensors; returns
/// `(dpre, dc_prev)`. Shapes as in [`twins::lstm_cell_backward`].
fn lstm_cell_backward(
    gates: &Tensor,
    c_prev: &Tensor,
    c: &Tensor,
    dh: &Tensor,
    dc_next: &Tensor,
) -> Result<(Tensor, Tensor)> {
    match gates.device() {
        Device::Cpu => {
            let (batch, hidden) = c.dims2()?;
            let out = twins::lstm_cell_backward(
                &to_f32_vec(gates)?,
                &to_f32_vec(c_prev)?,
                &to_f32_vec(c)?,
                &to_f32_vec(dh)?,
                &to_f32_vec(dc_next)?,
                batch,
                hidden,
            )?;
            Ok((
                Tensor::from_vec(out.dpre, (batch, 4 * hidden), &Device::Cpu)?,
                Tensor::from_vec(out.dc_prev, (batch, hidden), &Device::Cpu)?,
            ))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => super::gpu::lstm_cell_backward(gates, c_prev, c, dh, dc_next),
        other => bail!("lstm_cell: no kernel for device {other:?}"),
    }
}

/// Weight dropout (DropConnect) as an operation: `weight * scale` where `keep` (u8, same
/// shape, on the same device) is non-zero, else 0. The gradient is masked and scaled
/// the same way. `weight` must be f32.
pub fn weight_dropout(weight: &Tensor, keep: &Tensor, scale: f32) -> Result<Tensor> {
    require_f32("weight_dropout", "weight", weight)?;
    if keep.dtype() != DType::U8 || keep.dims() != weight.dims() {
        bail!(
            "weight_dropout: keep has dtype {:?} and shape {:?}, expected u8 and {:?}",
            keep.dtype(),
            keep.dims(),
            weight.dims()
        );
    }
    let op = WeightDropoutOp {
        keep: keep.contiguous()?,
        scale,
    };
    weight.contiguous()?.apply_op1(op)
}

/// The weight-dropout operation; `keep` is contiguous and on the weight's device.
#[derive(Clone)]
struct WeightDropoutOp {
    keep: Tensor,
    scale: f32,
}

impl CustomOp1 for WeightDropoutOp {
    fn name(&self) -> &'static str {
        "weight-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let weight = contiguous_slice::<f32>(storage, layout, "weight_dropout", "weight")?;
        let keep = self.keep.flatten_all()?.to_vec1::<u8>()?;
        let out = twins::weight_dropout(weight, &keep, self.scale)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::gpu::{storage_view, weight_dropout_views};

        let device = storage.device();
        let weight = storage_view::<f32>("weight_dropout", "weight", storage, layout)?;
        let (keep_storage, keep_layout) = self.keep.storage_and_layout();
        let candle_core::Storage::Cuda(keep_storage) = &*keep_storage else {
            bail!(
                "weight_dropout: keep is on {:?}, expected the weight's CUDA device",
                self.keep.device()
            );
        };
        let keep = storage_view::<u8>("weight_dropout", "keep", keep_storage, keep_layout)?;
        let out = weight_dropout_views(device, &weight, &keep, self.scale)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, device.clone()),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, _weight: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Embedding lookup with word dropout as an operation: row `r` of the result is
/// `weight[ids[r]] * row_scale[ids[r]]`.
///
/// Shapes: `weight` `[vocab, features]` f32, `ids` `[n]` u32 (each below `vocab`),
/// `row_scale` `[vocab]` f32, all on one device; returns `[n, features]`. The gradient
/// reaches `weight` only, scaled by the same row scales; rows of `pad_id` take none, as
/// with PyTorch's `padding_idx`.
pub fn embedding_dropout(
    weight: &Tensor,
    ids: &Tensor,
    row_scale: &Tensor,
    pad_id: Option<u32>,
) -> Result<Tensor> {
    require_f32("embedding_dropout", "weight", weight)?;
    require_f32("embedding_dropout", "row_scale", row_scale)?;
    let (vocab, _features) = weight.dims2()?;
    if ids.dtype() != DType::U32 || ids.rank() != 1 {
        bail!(
            "embedding_dropout: ids have dtype {:?} and shape {:?}, expected u32 [n]",
            ids.dtype(),
            ids.dims()
        );
    }
    if row_scale.dims() != [vocab] {
        bail!(
            "embedding_dropout: row_scale has shape {:?}, expected [{vocab}]",
            row_scale.dims()
        );
    }
    let op = EmbeddingDropoutOp {
        ids: ids.contiguous()?,
        row_scale: row_scale.contiguous()?,
        pad_id,
    };
    weight.contiguous()?.apply_op1(op)
}

/// The embedding-dropout operation; `ids` and `row_scale` are contiguous and on the
/// weight's device.
struct EmbeddingDropoutOp {
    ids: Tensor,
    row_scale: Tensor,
    pad_id: Option<u32>,
}

impl CustomOp1 for EmbeddingDropoutOp {
    fn name(&self) -> &'static str {
        "embedding-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_vocab, features) = layout.shape().dims2()?;
        let weight = contiguous_slice::<f32>(storage, layout, "embedding_dropout", "weight")?;
        let ids = self.ids.to_vec1::<u32>()?;
        let row_scale = self.row_scale.to_vec1::<f32>()?;
        let out = twins::embedding_dropout(weight, &ids, &row_scale, features)?;
        Ok((CpuStorage::F32(out), Shape::from((ids.len(), features))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::gpu::{embedding_dropout_views, storage_view};

        let (_vocab, features) = layout.shape().dims2()?;
        let device = storage.device();
        let weight = storage_view::<f32>("embedding_dropout", "weight", storage, layout)?;
        let (ids_storage, ids_layout) = self.ids.storage_and_layout();
        let (scale_storage, scale_layout) = self.row_scale.storage_and_layout();
        let (candle_core::Storage::Cuda(ids_storage), candle_core::Storage::Cuda(scale_storage)) =
            (&*ids_storage, &*scale_storage)
        else {
            bail!("embedding_dropout: ids and row_scale must be on the weight's CUDA device");
        };
        let ids = storage_view::<u32>("embedding_dropout", "ids", ids_storage, ids_layout)?;
        let row_scale = storage_view::<f32>(
            "embedding_dropout",
            "row_scale",
            scale_storage,
            scale_layout,
        )?;
        let n = ids.len();
        let out = embedding_dropout_views(device, &weight, &ids, &row_scale, features)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, device.clone()),
            Shape::from((n, features)),
        ))
    }

    fn bwd(&self, weight: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d weight[v] = sum over positions r with ids[r] = v of grad[r] * row_scale[v],
        // except for the padding row.
        let mut scale = self.row_scale.index_select(&self.ids, 0)?;
        if let Some(pad_id) = self.pad_id {
            let not_pad = self.ids.ne(pad_id)?.to_dtype(DType::F32)?;
            scale = scale.mul(&not_pad)?;
        }
        let rows = grad.broadcast_mul(&scale.unsqueeze(1)?)?;
        let grad_weight = weight.zeros_like()?.index_add(&self.ids, &rows, 0)?;
        Ok(Some(grad_weight))
    }
}

/// Masked concat pooling as an operation: for every row, the output at its last real
/// position, the maximum and the mean over its real positions.
///
/// Shapes: `outputs` `[batch, time, features]` f32, right-padded, with row `b` real at
/// positions `0..lengths[b]` (each in `1..=time`); returns `[batch, 3 features]` as
/// [last, max, mean]. The gradient reaches `outputs`; as with Candle's `max`, every
/// position equal to a row's maximum receives the maximum's full gradient.
pub fn concat_pool(outputs: &Tensor, lengths: &[u32]) -> Result<Tensor> {
    require_f32("concat_pool", "outputs", outputs)?;
    let (batch, time, _features) = outputs.dims3()?;
    if lengths.len() != batch {
        bail!(
            "concat_pool: {} lengths for a batch of {batch} rows",
            lengths.len()
        );
    }
    if let Some((row, &length)) = lengths
        .iter()
        .enumerate()
        .find(|(_, &length)| length == 0 || length as usize > time)
    {
        bail!("concat_pool: row {row} has length {length}, expected 1..={time}");
    }
    let op = ConcatPoolOp {
        lengths: lengths.to_vec(),
        #[cfg(feature = "cuda")]
        lengths_tensor: Tensor::from_slice(lengths, batch, outputs.device())?,
    };
    outputs.contiguous()?.apply_op1(op)
}

/// The pooling operation; `lengths_tensor` contains `lengths` on the outputs' device.
struct ConcatPoolOp {
    lengths: Vec<u32>,
    #[cfg(feature = "cuda")]
    lengths_tensor: Tensor,
}

impl CustomOp1 for ConcatPoolOp {
    fn name(&self) -> &'static str {
        "concat-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, time, features) = layout.shape().dims3()?;
        let outputs = contiguous_slice::<f32>(storage, layout, "concat_pool", "outputs")?;
        let pooled = twins::concat_pool(outputs, &self.lengths, time, features)?;
        Ok((CpuStorage::F32(pooled), Shape::from((batch, 3 * features))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::gpu::{concat_pool_views, storage_view};

        let (batch, time, features) = layout.shape().dims3()?;
        let device = storage.device();
        let outputs = storage_view::<f32>("concat_pool", "outputs", storage, layout)?;
        let (lengths_storage, lengths_layout) = self.lengths_tensor.storage_and_layout();
        let candle_core::Storage::Cuda(lengths_storage) = &*lengths_storage else {
            bail!("concat_pool: lengths must be on the outputs' CUDA device");
        };
        let lengths =
            storage_view::<u32>("concat_pool", "lengths", lengths_storage, lengths_layout)?;
        let pooled = concat_pool_views(device, &outputs, &lengths, time, features)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(pooled, device.clone()),
            Shape::from((batch, 3 * features)),
        ))
    }

    fn bwd(&self, outputs: &Tensor, pooled: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (batch, time, features) = outputs.dims3()?;
        let device = outputs.device();
        // Per (row, position): 1 at the last real position, 1 at every real position,
        // and 1 / length at every real position.
        let mut last = vec![0f32; batch * time];
        let mut real = vec![0f32; batch * time];
        let mut mean = vec![0f32; batch * time];
        for (b, &length) in self.lengths.iter().enumerate() {
            let length = length as usize;
            last[b * time + length - 1] = 1.0;
            for t in 0..length {
                real[b * time + t] = 1.0;
                mean[b * time + t] = 1.0 / length as f32;
            }
        }
        let column = |values: Vec<f32>| Tensor::from_vec(values, (batch, time, 1), device);
        let (last, real, mean) = (column(last)?, column(real)?, column(mean)?);
        let part = |index: usize| -> Result<Tensor> {
            grad.narrow(1, index * features, features)?
                .reshape((batch, 1, features))
        };
        let max = pooled
            .narrow(1, features, features)?
            .reshape((batch, 1, features))?;
        let is_max = outputs
            .broadcast_eq(&max)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&real)?;
        let grad_outputs = last
            .broadcast_mul(&part(0)?)?
            .add(&is_max.broadcast_mul(&part(1)?)?)?
            .add(&mean.broadcast_mul(&part(2)?)?)?;
        Ok(Some(grad_outputs))
    }
}
