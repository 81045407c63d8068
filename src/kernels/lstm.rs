//! A whole-sequence LSTM layer as one Candle custom operation.
//!
//! The caller computes the input projection `x W_ih^T + b_ih + b_hh` for every time step
//! with one matrix product. The operation then runs the recurrence: per step one
//! `[batch, hidden] x [hidden, 4 hidden]` product and one element-wise pass over the
//! gates. f32 products run on the packed kernels ([`super::f32gemm`], or bf16 with
//! [`Precision::Bf16`]), f64 products and f32 ones with the `gemm` backend selected
//! ([`super::f32gemm::f32_backend`]) on the `gemm` crate, which Candle's CPU backend
//! uses. Its backward pass is
//! hand-written backpropagation through time that returns the gradient of the projected
//! inputs, of `W_hh` (one large matrix product over all steps), and of the initial state.
//!
//! Gate order and weight layout follow PyTorch's `nn.LSTM`: the `4 hidden` rows of
//! `W_hh` are the input, forget, cell (g) and output gates, in that order.

use std::sync::{Arc, Mutex};

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType,
};

use super::bf16::{Bf16Gemm, MatRef};
use super::f32gemm::{f32_backend, has_avx512f, F32Backend, F32Gemm};
use super::packed::PackedGemm;
use super::precision::{bf16_matmul, f32_matmul, PackedWeight, Precision};
use super::{contiguous_slice, parallelism};

/// Outputs of [`lstm_sequence`].
#[derive(Debug, Clone)]
pub struct LstmSequenceOutput {
    /// Hidden state after every step, `[time, batch, hidden]`.
    pub outputs: Tensor,
    /// Hidden state after the last step, `[batch, hidden]`.
    pub h_last: Tensor,
    /// Cell state after the last step, `[batch, hidden]`.
    pub c_last: Tensor,
}

/// Runs an LSTM layer over a whole sequence with the fused CPU operation.
///
/// Shapes: `projected` `[time, batch, 4 hidden]` (the input projection with both biases
/// added), `w_hh` `[4 hidden, hidden]`, `h0` and `c0` `[batch, hidden]`. All must share
/// one floating dtype (f32 or f64) and live on the CPU. Gradients flow to all four inputs.
pub fn lstm_sequence(
    projected: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<LstmSequenceOutput> {
    lstm_sequence_with(projected, w_hh, h0, c0, Precision::F32, None)
}

/// Runs [`lstm_sequence`] with the recurrent products in `precision`, which applies to
/// f32 inputs only (f64 inputs always use f64 products).
///
/// With [`Precision::F32`] and the packed f32 backend, `W_hh` is packed once per call
/// for the per-step products in both passes. With [`Precision::Bf16`], `W_hh` is packed to bf16 once per call and both the
/// per-step products and the backward's products (the gradient of `h` and of `W_hh`)
/// round their inputs to bf16 and sum in f32. [`Precision::Int8`] serves inference
/// only and fails when an input tracks gradients. `packed_w_hh`, a weight packed
/// beforehand by [`PackedWeight::pack`] from `w_hh`, replaces the per-call packing in
/// inference. It is rejected when an input tracks gradients, because it would miss
/// changes of `w_hh`.
pub fn lstm_sequence_with(
    projected: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    precision: Precision,
    packed_w_hh: Option<Arc<PackedWeight>>,
) -> Result<LstmSequenceOutput> {
    let (time, _batch, hidden) = check_shapes(projected, w_hh, h0, c0)?;
    let state0 = Tensor::stack(&[h0, c0], 0)?.contiguous()?;
    let save_for_backward = projected.track_op() || w_hh.track_op() || state0.track_op();
    if save_for_backward && (precision == Precision::Int8 || packed_w_hh.is_some()) {
        bail!("lstm_sequence: int8 products and prepacked weights serve inference only, but an input tracks gradients; use f32 or bf16 for training");
    }
    if let Some(packed) = &packed_w_hh {
        if packed.dims() != (4 * hidden, hidden) {
            bail!(
                "lstm_sequence: the packed W_hh has shape {:?}, expected [{}, {hidden}]",
                packed.dims(),
                4 * hidden
            );
        }
    }
    let op = FusedLstm {
        save_for_backward,
        precision,
        packed_w_hh,
        cache: Mutex::new(None),
    };
    let packed = projected
        .contiguous()?
        .apply_op3(&w_hh.contiguous()?, &state0, op)?;
    Ok(LstmSequenceOutput {
        outputs: packed.narrow(0, 0, time)?,
        h_last: packed.get(time - 1)?,
        c_last: packed.get(time)?,
    })
}

/// Runs the same LSTM recurrence with stock Candle operations, one step at a time, so
/// that autograd derives the backward pass. Same shapes and result as
/// [`lstm_sequence`]; slower, and kept as a reference for tests.
pub fn lstm_sequence_autograd(
    projected: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<LstmSequenceOutput> {
    let (time, _batch, hidden) = check_shapes(projected, w_hh, h0, c0)?;
    let w_t = w_hh.t()?;
    let mut h = h0.clone();
    let mut c = c0.clone();
    let mut outputs = Vec::with_capacity(time);
    for t in 0..time {
        let gates = projected.get(t)?.add(&h.matmul(&w_t)?)?;
        let input_gate = candle_nn::ops::sigmoid(&gates.narrow(1, 0, hidden)?)?;
        let forget_gate = candle_nn::ops::sigmoid(&gates.narrow(1, hidden, hidden)?)?;
        let cell_gate = gates.narrow(1, 2 * hidden, hidden)?.tanh()?;
        let output_gate = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hidden, hidden)?)?;
        c = forget_gate.mul(&c)?.add(&input_gate.mul(&cell_gate)?)?;
        h = output_gate.mul(&c.tanh()?)?;
        outputs.push(h.clone());
    }
    Ok(LstmSequenceOutput {
        outputs: Tensor::stack(&outputs, 0)?,
        h_last: h,
        c_last: c,
    })
}

/// Checks the shapes of the inputs and returns `(time, batch, hidden)`.
fn check_shapes(
    projected: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
) -> Result<(usize, usize, usize)> {
    let (time, batch, gate_width) = projected.dims3()?;
    let (w_rows, hidden) = w_hh.dims2()?;
    if time == 0 {
        bail!(
            "lstm_sequence: the sequence is empty (projected inputs {:?})",
            projected.dims()
        );
    }
    if gate_width != 4 * hidden || w_rows != 4 * hidden {
        bail!(
            "lstm_sequence: projected inputs {:?} and W_hh {:?} do not match [time, batch, 4 hidden] and [4 hidden, hidden]",
            projected.dims(),
            w_hh.dims()
        );
    }
    for (name, state) in [("h0", h0), ("c0", c0)] {
        if state.dims() != [batch, hidden] {
            bail!(
                "lstm_sequence: {name} has shape {:?}, expected [{batch}, {hidden}]",
                state.dims()
            );
        }
    }
    Ok((time, batch, hidden))
}

/// Activated gates and cell states of every step, kept by the forward pass for the
/// backward pass.
struct Cache {
    /// Activated gates `[time, batch, 4 hidden]`: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o).
    gates: CacheData,
    /// Cell state after every step, `[time, batch, hidden]`.
    cells: CacheData,
}

enum CacheData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The custom operation. Inputs: projected inputs `[T, B, 4H]`, `W_hh` `[4H, H]`, and the
/// initial state `[2, B, H]` (h0 then c0). Output `[T + 1, B, H]`: rows `0..T` hold the
/// hidden state after each step and row `T` the final cell state.
struct FusedLstm {
    save_for_backward: bool,
    /// Format of the products of f32 inputs.
    precision: Precision,
    /// `W_hh` packed beforehand, for inference.
    packed_w_hh: Option<Arc<PackedWeight>>,
    cache: Mutex<Option<Arc<Cache>>>,
}

/// Returns the per-step product `pre += h_prev W_hh^T` with `gemm` in `T`.
fn gemm_step_forward<T: LstmFloat>(
    w_hh: &[T],
    (batch, hidden): (usize, usize),
) -> impl FnMut(&[T], &mut [T]) + '_ {
    let parallelism = parallelism();
    move |h_prev: &[T], pre: &mut [T]| {
        // pre[b, n] += sum_k h_prev[b, k] * w_hh[n, k]
        // SAFETY: every pointer covers the matrix its strides describe: `pre` is
        // [batch, 4 hidden] row-major, `h_prev` [batch, hidden] row-major, and `w_hh`
        // [4 hidden, hidden] row-major read as its transpose.
        unsafe {
            gemm::gemm(
                batch,
                4 * hidden,
                hidden,
                pre.as_mut_ptr(),
                1,
                (4 * hidden) as isize,
                true,
                h_prev.as_ptr(),
                1,
                hidden as isize,
                w_hh.as_ptr(),
                hidden as isize,
                1,
                T::one(),
                T::one(),
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// Returns the per-step product `dh_next = dg W_hh` with `gemm` in `T`.
fn gemm_step_backward<T: LstmFloat>(
    w_hh: &[T],
    (batch, hidden): (usize, usize),
) -> impl FnMut(&[T], &mut [T]) + '_ {
    let parallelism = parallelism();
    move |dg: &[T], dh_next: &mut [T]| {
        // dh_next[b, k] = sum_n dg[b, n] * w_hh[n, k]
        // SAFETY: `dh_next` is [batch, hidden], `dg` [batch, 4 hidden] and `w_hh`
        // [4 hidden, hidden], all row-major and fully allocated.
        unsafe {
            gemm::gemm(
                batch,
                hidden,
                4 * hidden,
                dh_next.as_mut_ptr(),
                1,
                hidden as isize,
                false,
                dg.as_ptr(),
                1,
                (4 * hidden) as isize,
                w_hh.as_ptr(),
                1,
                hidden as isize,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// Returns the per-step product `dh_next = dg W_hh` with the packed kernels of `G`, in
/// f32: `W_hh` is packed once, `dg` at every step.
fn packed_step_backward<T: LstmFloat, G: PackedGemm>(
    w_hh: &[T],
    (batch, hidden): (usize, usize),
) -> impl FnMut(&[T], &mut [T]) {
    // dh = dg W_hh, with W_hh [4 hidden, hidden] as the right operand.
    let w_f32: Vec<f32> = w_hh.iter().map(|v| v.to_f64() as f32).collect();
    let packed = G::pack_b(MatRef::row_major(&w_f32, 4 * hidden, hidden));
    let threads = candle_core::utils::get_num_threads();
    let mut dg_f32 = vec![0.0f32; batch * 4 * hidden];
    let mut out = vec![0.0f32; batch * hidden];
    move |dg: &[T], dh: &mut [T]| {
        for (x, v) in dg_f32.iter_mut().zip(dg) {
            *x = v.to_f64() as f32;
        }
        let a = G::pack_a(MatRef::row_major(&dg_f32, batch, 4 * hidden));
        G::gemm(&a, &packed, &mut out, hidden, false, threads);
        for (d, &v) in dh.iter_mut().zip(&out) {
            *d = T::from_f64(v as f64);
        }
    }
}

/// Element types the kernel runs on.
trait LstmFloat: WithDType {
    fn sigmoid(self) -> Self;
    fn tanh(self) -> Self;
    fn wrap(values: Vec<Self>) -> CacheData;
    fn unwrap(data: &CacheData) -> Option<&[Self]>;

    /// Runs the element-wise pass of one forward step on one batch row (see
    /// [`ForwardRow`]).
    fn forward_row(row: ForwardRow<'_, Self>) {
        forward_row(row);
    }

    /// Runs the element-wise pass of one backward step on one batch row (see
    /// [`BackwardRow`]).
    fn backward_row(row: BackwardRow<'_, Self>) {
        backward_row(row);
    }
}

/// One batch row of a forward step.
pub(crate) struct ForwardRow<'a, T> {
    /// The `[4 hidden]` pre-activations (input, forget, cell and output gates), replaced
    /// by the activated gates.
    pub gates: &'a mut [T],
    /// Cell state before the step, `[hidden]`.
    pub c_prev: &'a [T],
    /// Receives the cell state after the step.
    pub cell: &'a mut [T],
    /// Receives the hidden output of the step.
    pub h: &'a mut [T],
}

/// Splits the `[batch, ...]` slices of one forward step into batch rows.
fn forward_rows<'a, T>(
    gates: &'a mut [T],
    c_prev: &'a [T],
    cell: &'a mut [T],
    h: &'a mut [T],
    hidden: usize,
) -> impl Iterator<Item = ForwardRow<'a, T>> {
    gates
        .chunks_exact_mut(4 * hidden)
        .zip(c_prev.chunks_exact(hidden))
        .zip(
            cell.chunks_exact_mut(hidden)
                .zip(h.chunks_exact_mut(hidden)),
        )
        .map(|((gates, c_prev), (cell, h))| ForwardRow {
            gates,
            c_prev,
            cell,
            h,
        })
}

/// Runs the scalar forward pass of one row.
fn forward_row<T: LstmFloat>(row: ForwardRow<'_, T>) {
    let hidden = row.c_prev.len();
    let (input, rest) = row.gates.split_at_mut(hidden);
    let (forget, rest) = rest.split_at_mut(hidden);
    let (candidate, output) = rest.split_at_mut(hidden);
    for j in 0..hidden {
        let input_gate = input[j].sigmoid();
        let forget_gate = forget[j].sigmoid();
        let cell_gate = LstmFloat::tanh(candidate[j]);
        let output_gate = output[j].sigmoid();
        let c = forget_gate * row.c_prev[j] + input_gate * cell_gate;
        input[j] = input_gate;
        forget[j] = forget_gate;
        candidate[j] = cell_gate;
        output[j] = output_gate;
        row.cell[j] = c;
        row.h[j] = output_gate * LstmFloat::tanh(c);
    }
}

/// One batch row of a backward step: `gates` and `grad_gates` are `[4 hidden]`, the
/// others `[hidden]`.
pub(crate) struct BackwardRow<'a, T> {
    /// Activated gates of the step.
    pub gates: &'a [T],
    /// Cell state after the step.
    pub cell: &'a [T],
    /// Cell state before the step.
    pub c_prev: &'a [T],
    /// Gradient of the step's hidden output from above.
    pub grad_h: &'a [T],
    /// Gradient of the step's hidden output from the next step.
    pub dh_next: &'a [T],
    /// Gradient of the cell state after the step, replaced by that before the step.
    pub dc_next: &'a mut [T],
    /// Receives the gradient of the pre-activations.
    pub grad_gates: &'a mut [T],
}

/// The `[batch, ...]` slices of one backward step, in the order of [`BackwardRow`].
struct BackwardStep<'a, T> {
    gates: &'a [T],
    cells: &'a [T],
    c_prev: &'a [T],
    grad_h: &'a [T],
    dh_next: &'a [T],
    dc_next: &'a mut [T],
    grad_gates: &'a mut [T],
}

impl<'a, T> BackwardStep<'a, T> {
    /// Splits the step into batch rows.
    fn rows(self, hidden: usize) -> impl Iterator<Item = BackwardRow<'a, T>> {
        let states = self
            .cells
            .chunks_exact(hidden)
            .zip(self.c_prev.chunks_exact(hidden))
            .zip(self.grad_h.chunks_exact(hidden))
            .zip(self.dh_next.chunks_exact(hidden));
        let gate_rows = self
            .gates
            .chunks_exact(4 * hidden)
            .zip(self.grad_gates.chunks_exact_mut(4 * hidden))
            .zip(self.dc_next.chunks_exact_mut(hidden));
        states.zip(gate_rows).map(
            |((((cell, c_prev), grad_h), dh_next), ((gates, grad_gates), dc_next))| BackwardRow {
                gates,
                cell,
                c_prev,
                grad_h,
                dh_next,
                dc_next,
                grad_gates,
            },
        )
    }
}

/// Runs the scalar backward pass of one row.
fn backward_row<T: LstmFloat>(row: BackwardRow<'_, T>) {
    let one = T::one();
    let hidden = row.cell.len();
    let (input, rest) = row.gates.split_at(hidden);
    let (forget, rest) = rest.split_at(hidden);
    let (candidate, output) = rest.split_at(hidden);
    let (d_input, rest) = row.grad_gates.split_at_mut(hidden);
    let (d_forget, rest) = rest.split_at_mut(hidden);
    let (d_candidate, d_output) = rest.split_at_mut(hidden);
    for j in 0..hidden {
        let (input_gate, forget_gate) = (input[j], forget[j]);
        let (cell_gate, output_gate) = (candidate[j], output[j]);
        let tanh_c = LstmFloat::tanh(row.cell[j]);
        let dh = row.grad_h[j] + row.dh_next[j];
        let dc = row.dc_next[j] + dh * output_gate * (one - tanh_c * tanh_c);
        d_input[j] = dc * cell_gate * input_gate * (one - input_gate);
        d_forget[j] = dc * row.c_prev[j] * forget_gate * (one - forget_gate);
        d_candidate[j] = dc * input_gate * (one - cell_gate * cell_gate);
        d_output[j] = dh * tanh_c * output_gate * (one - output_gate);
        row.dc_next[j] = dc * forget_gate;
    }
}

/// The forward and backward row passes on 16 lanes of AVX-512.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::activations::avx512::{load, sigmoid, store, tail, tanh};
    use super::{BackwardRow, ForwardRow};

    /// The AVX-512 version of [`super::forward_row`].
    #[target_feature(enable = "avx512f")]
    pub fn forward_row(row: ForwardRow<'_, f32>) {
        let hidden = row.c_prev.len();
        assert_eq!(row.gates.len(), 4 * hidden);
        assert_eq!(row.cell.len(), hidden);
        assert_eq!(row.h.len(), hidden);
        let (input, rest) = row.gates.split_at_mut(hidden);
        let (forget, rest) = rest.split_at_mut(hidden);
        let (candidate, output) = rest.split_at_mut(hidden);
        for j in (0..hidden).step_by(16) {
            let m = tail(j, hidden);
            let i = sigmoid(load(input, j, m));
            let f = sigmoid(load(forget, j, m));
            let g = tanh(load(candidate, j, m));
            let o = sigmoid(load(output, j, m));
            let c = _mm512_fmadd_ps(f, load(row.c_prev, j, m), _mm512_mul_ps(i, g));
            store(input, j, m, i);
            store(forget, j, m, f);
            store(candidate, j, m, g);
            store(output, j, m, o);
            store(row.cell, j, m, c);
            store(row.h, j, m, _mm512_mul_ps(o, tanh(c)));
        }
    }

    /// The AVX-512 version of [`super::backward_row`].
    #[target_feature(enable = "avx512f")]
    pub fn backward_row(row: BackwardRow<'_, f32>) {
        let hidden = row.cell.len();
        assert_eq!(row.gates.len(), 4 * hidden);
        assert_eq!(row.grad_gates.len(), 4 * hidden);
        for part in [row.c_prev, row.grad_h, row.dh_next] {
            assert_eq!(part.len(), hidden);
        }
        assert_eq!(row.dc_next.len(), hidden);

        let (input, rest) = row.gates.split_at(hidden);
        let (forget, rest) = rest.split_at(hidden);
        let (candidate, output) = rest.split_at(hidden);
        let (d_input, rest) = row.grad_gates.split_at_mut(hidden);
        let (d_forget, rest) = rest.split_at_mut(hidden);
        let (d_candidate, d_output) = rest.split_at_mut(hidden);
        let one = _mm512_set1_ps(1.0);
        for j in (0..hidden).step_by(16) {
            let m = tail(j, hidden);
            let (i, f) = (load(input, j, m), load(forget, j, m));
            let (g, o) = (load(candidate, j, m), load(output, j, m));
            let tanh_c = tanh(load(row.cell, j, m));
            let dh = _mm512_add_ps(load(row.grad_h, j, m), load(row.dh_next, j, m));
            // dc = dc_next + dh o (1 - tanh(c)^2)
            let dtanh = _mm512_fnmadd_ps(tanh_c, tanh_c, one);
            let dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), dtanh, load(row.dc_next, j, m));
            let di = _mm512_mul_ps(
                _mm512_mul_ps(dc, g),
                _mm512_mul_ps(i, _mm512_sub_ps(one, i)),
            );
            let dc_c_prev = _mm512_mul_ps(dc, load(row.c_prev, j, m));
            let df = _mm512_mul_ps(dc_c_prev, _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
            let dg = _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one));
            let dh_tanh_o = _mm512_mul_ps(_mm512_mul_ps(dh, tanh_c), o);
            let d_o = _mm512_mul_ps(dh_tanh_o, _mm512_sub_ps(one, o));
            store(d_input, j, m, di);
            store(d_forget, j, m, df);
            store(d_candidate, j, m, dg);
            store(d_output, j, m, d_o);
            store(row.dc_next, j, m, _mm512_mul_ps(dc, f));
        }
    }
}

impl LstmFloat for f32 {
    fn sigmoid(self) -> Self {
        super::activations::sigmoid(self)
    }
    fn tanh(self) -> Self {
        super::activations::tanh(self)
    }
    fn wrap(values: Vec<Self>) -> CacheData {
        CacheData::F32(values)
    }
    fn unwrap(data: &CacheData) -> Option<&[Self]> {
        match data {
            CacheData::F32(values) => Some(values),
            CacheData::F64(_) => None,
        }
    }
    fn forward_row(row: ForwardRow<'_, f32>) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: the CPU supports AVX512F, checked just above.
            unsafe { avx512::forward_row(row) };
            return;
        }
        forward_row(row);
    }
    fn backward_row(row: BackwardRow<'_, f32>) {
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            // SAFETY: the CPU supports AVX512F, checked just above.
            unsafe { avx512::backward_row(row) };
            return;
        }
        backward_row(row);
    }
}

impl LstmFloat for f64 {
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn wrap(values: Vec<Self>) -> CacheData {
        CacheData::F64(values)
    }
    fn unwrap(data: &CacheData) -> Option<&[Self]> {
        match data {
            CacheData::F64(values) => Some(values),
            CacheData::F32(_) => None,
        }
    }
}

impl FusedLstm {
    /// Runs the recurrence. Returns the packed output and, when requested, the cache.
    /// `step_product(h_prev, pre)` adds `h_prev W_hh^T` to the pre-activations.
    fn forward<T: LstmFloat>(
        &self,
        projected: &[T],
        mut step_product: impl FnMut(&[T], &mut [T]),
        state0: &[T],
        (time, batch, hidden): (usize, usize, usize),
    ) -> (Vec<T>, Option<Cache>) {
        let step = batch * hidden;
        let gate_step = 4 * step;
        let mut packed = vec![T::zero(); (time + 1) * step];
        let mut gates = vec![
            T::zero();
            if self.save_for_backward {
                time * gate_step
            } else {
                gate_step
            }
        ];
        let mut cells = vec![
            T::zero();
            if self.save_for_backward {
                time * step
            } else {
                step
            }
        ];
        let mut c_prev: Vec<T> = state0[step..2 * step].to_vec();

        for t in 0..time {
            let (done, rest) = packed.split_at_mut(t * step);
            let h_prev: &[T] = if t == 0 {
                &state0[..step]
            } else {
                &done[(t - 1) * step..]
            };
            let h_out = &mut rest[..step];
            let gate_offset = if self.save_for_backward {
                t * gate_step
            } else {
                0
            };
            let cell_offset = if self.save_for_backward { t * step } else { 0 };
            let pre = &mut gates[gate_offset..gate_offset + gate_step];
            pre.copy_from_slice(&projected[t * gate_step..(t + 1) * gate_step]);
            step_product(h_prev, pre);

            let cell = &mut cells[cell_offset..cell_offset + step];
            if hidden > 0 {
                forward_rows(pre, &c_prev, cell, h_out, hidden).for_each(T::forward_row);
            }
            c_prev.copy_from_slice(cell);
        }
        packed[time * step..].copy_from_slice(&c_prev);

        let cache = self.save_for_backward.then(|| Cache {
            gates: T::wrap(gates),
            cells: T::wrap(cells),
        });
        (packed, cache)
    }

    /// Backpropagation through time. Returns the gradient of the projected inputs
    /// `[T, B, 4H]` and of the initial state `[2, B, H]`. `step_product(dg, dh)` sets
    /// `dh = dg W_hh`.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: LstmFloat>(
        gates: &[T],
        cells: &[T],
        mut step_product: impl FnMut(&[T], &mut [T]),
        state0: &[T],
        grad_packed: &[T],
        (time, batch, hidden): (usize, usize, usize),
    ) -> (Vec<T>, Vec<T>) {
        let step = batch * hidden;
        let gate_step = 4 * step;
        let mut grad_gates = vec![T::zero(); time * gate_step];
        // The gradient of the final cell state comes from row T of the packed output.
        let mut dc_next: Vec<T> = grad_packed[time * step..].to_vec();
        let mut dh_next = vec![T::zero(); step];

        for t in (0..time).rev() {
            let g = &gates[t * gate_step..(t + 1) * gate_step];
            let c = &cells[t * step..(t + 1) * step];
            let c_prev = if t == 0 {
                &state0[step..]
            } else {
                &cells[(t - 1) * step..t * step]
            };
            let grad_h = &grad_packed[t * step..(t + 1) * step];
            let dg = &mut grad_gates[t * gate_step..(t + 1) * gate_step];
            let pass = BackwardStep {
                gates: g,
                cells: c,
                c_prev,
                grad_h,
                dh_next: &dh_next,
                dc_next: &mut dc_next,
                grad_gates: &mut *dg,
            };
            if hidden > 0 {
                pass.rows(hidden).for_each(T::backward_row);
            }
            step_product(dg, &mut dh_next);
        }
        let mut grad_state0 = dh_next;
        grad_state0.extend_from_slice(&dc_next);
        (grad_gates, grad_state0)
    }

    fn backward_tensors<T: LstmFloat>(
        &self,
        cache: &Cache,
        w_hh: &Tensor,
        state0: &Tensor,
        packed: &Tensor,
        grad_packed: &Tensor,
        dims: (usize, usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (time, batch, hidden) = dims;
        let (Some(gates), Some(cells)) = (T::unwrap(&cache.gates), T::unwrap(&cache.cells)) else {
            bail!(
                "fused_lstm: the saved gates do not have dtype {:?}",
                T::DTYPE
            );
        };
        let w_values = w_hh.flatten_all()?.to_vec1::<T>()?;
        let state_values = state0.flatten_all()?.to_vec1::<T>()?;
        let grad_values = grad_packed.flatten_all()?.to_vec1::<T>()?;
        let packed_format = match (T::DTYPE, self.precision, f32_backend()) {
            (DType::F32, Precision::Bf16, _) => Some(Precision::Bf16),
            (DType::F32, Precision::F32, F32Backend::Packed) => Some(Precision::F32),
            _ => None,
        };
        let (grad_gates, grad_state0) = match packed_format {
            Some(Precision::Bf16) => {
                let product = packed_step_backward::<T, Bf16Gemm>(&w_values, (batch, hidden));
                Self::backward(gates, cells, product, &state_values, &grad_values, dims)
            }
            Some(_) => {
                let product = packed_step_backward::<T, F32Gemm>(&w_values, (batch, hidden));
                Self::backward(gates, cells, product, &state_values, &grad_values, dims)
            }
            None => {
                let product = gemm_step_backward(&w_values, (batch, hidden));
                Self::backward(gates, cells, product, &state_values, &grad_values, dims)
            }
        };

        let device = w_hh.device();
        let grad_projected = Tensor::from_vec(grad_gates, (time, batch, 4 * hidden), device)?;
        let grad_state0 = Tensor::from_vec(grad_state0, (2, batch, hidden), device)?;

        // dW_hh = sum over steps of dgates_t^T h_{t-1}, as one product over all steps.
        let h0 = state0.detach().narrow(0, 0, 1)?;
        let previous = if time > 1 {
            Tensor::cat(&[&h0, &packed.detach().narrow(0, 0, time - 1)?], 0)?
        } else {
            h0
        };
        let grad_rows = grad_projected.reshape((time * batch, 4 * hidden))?;
        let previous_rows = previous.reshape((time * batch, hidden))?;
        let grad_w = match packed_format {
            Some(Precision::Bf16) => bf16_matmul(&grad_rows, &previous_rows, true, false)?,
            Some(_) => f32_matmul(&grad_rows, &previous_rows, true, false)?,
            None => grad_rows.t()?.matmul(&previous_rows)?,
        };
        Ok((grad_projected, grad_w, grad_state0))
    }
}

impl candle_core::CustomOp3 for FusedLstm {
    fn name(&self) -> &'static str {
        "fused-lstm"
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
        let (time, batch, gate_width) = l1.shape().dims3()?;
        let hidden = gate_width / 4;
        let dims = (time, batch, hidden);
        let (storage, cache) = match s1.dtype() {
            DType::F32 => {
                let projected = contiguous_slice(s1, l1, "fused_lstm", "projected inputs")?;
                let w_hh: &[f32] = contiguous_slice(s2, l2, "fused_lstm", "W_hh")?;
                let state0 = contiguous_slice(s3, l3, "fused_lstm", "initial state")?;
                let packed_now = match &self.packed_w_hh {
                    Some(packed) => Some(packed.clone()),
                    None => {
                        PackedWeight::pack(w_hh, 4 * hidden, hidden, self.precision).map(Arc::new)
                    }
                };
                let (packed, cache) = match packed_now {
                    Some(weight) => {
                        let product = |h_prev: &[f32], pre: &mut [f32]| {
                            weight.matmul_transposed(h_prev, batch, pre, true)
                        };
                        self.forward::<f32>(projected, product, state0, dims)
                    }
                    None => {
                        let product = gemm_step_forward(w_hh, (batch, hidden));
                        self.forward::<f32>(projected, product, state0, dims)
                    }
                };
                (CpuStorage::F32(packed), cache)
            }
            DType::F64 => {
                let w_hh = contiguous_slice(s2, l2, "fused_lstm", "W_hh")?;
                let (packed, cache) = self.forward::<f64>(
                    contiguous_slice(s1, l1, "fused_lstm", "projected inputs")?,
                    gemm_step_forward(w_hh, (batch, hidden)),
                    contiguous_slice(s3, l3, "fused_lstm", "initial state")?,
                    dims,
                );
                (CpuStorage::F64(packed), cache)
            }
            dtype => bail!("fused_lstm: dtype {dtype:?} is not supported, use f32 or f64"),
        };
        if let Some(cache) = cache {
            let mut slot = self
                .cache
                .lock()
                .map_err(|_| candle_core::Error::Msg("fused_lstm: cache lock poisoned".into()))?;
            *slot = Some(Arc::new(cache));
        }
        Ok((storage, Shape::from((time + 1, batch, hidden))))
    }

    fn bwd(
        &self,
        projected: &Tensor,
        w_hh: &Tensor,
        state0: &Tensor,
        packed: &Tensor,
        grad_packed: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let cache = self
            .cache
            .lock()
            .map_err(|_| candle_core::Error::Msg("fused_lstm: cache lock poisoned".into()))?
            .clone();
        let Some(cache) = cache else {
            bail!("fused_lstm: backward called, but the forward pass saved no gates (no input tracked gradients)");
        };
        let (time, batch, gate_width) = projected.dims3()?;
        let dims = (time, batch, gate_width / 4);
        let (grad_projected, grad_w, grad_state0) = match projected.dtype() {
            DType::F32 => {
                self.backward_tensors::<f32>(&cache, w_hh, state0, packed, grad_packed, dims)?
            }
            DType::F64 => {
                self.backward_tensors::<f64>(&cache, w_hh, state0, packed, grad_packed, dims)?
            }
            dtype => bail!("fused_lstm: dtype {dtype:?} is not supported, use f32 or f64"),
        };
        Ok((Some(grad_projected), Some(grad_w), Some(grad_state0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    const TIME: usize = 4;
    const BATCH: usize = 2;
    const HIDDEN: usize = 3;

    fn random(rng: &mut Rng, shape: &[usize], bound: f64) -> Vec<f64> {
        let count: usize = shape.iter().product();
        (0..count)
            .map(|_| (rng.next_f64() * 2.0 - 1.0) * bound)
            .collect()
    }

    /// Inputs in the order projected, W_hh, h0, c0, with their shapes.
    fn inputs() -> Vec<(Vec<f64>, Vec<usize>)> {
        let mut rng = Rng::seed(21);
        let shapes = [
            vec![TIME, BATCH, 4 * HIDDEN],
            vec![4 * HIDDEN, HIDDEN],
            vec![BATCH, HIDDEN],
            vec![BATCH, HIDDEN],
        ];
        shapes
            .into_iter()
            .map(|shape| (random(&mut rng, &shape, 1.0), shape))
            .collect()
    }

    /// A scalar that weighs every output differently: sum(outputs * a) + sum(h_last * b)
    /// + sum(c_last * c), with fixed random weights.
    fn objective(output: &LstmSequenceOutput) -> Result<Tensor> {
        let mut rng = Rng::seed(22);
        let device = Device::Cpu;
        let weights_out = Tensor::from_vec(
            random(&mut rng, &[TIME, BATCH, HIDDEN], 1.0),
            (TIME, BATCH, HIDDEN),
            &device,
        )?;
        let weights_h = Tensor::from_vec(
            random(&mut rng, &[BATCH, HIDDEN], 1.0),
            (BATCH, HIDDEN),
            &device,
        )?;
        let weights_c = Tensor::from_vec(
            random(&mut rng, &[BATCH, HIDDEN], 1.0),
            (BATCH, HIDDEN),
            &device,
        )?;
        output
            .outputs
            .mul(&weights_out)?
            .sum_all()?
            .add(&output.h_last.mul(&weights_h)?.sum_all()?)?
            .add(&output.c_last.mul(&weights_c)?.sum_all()?)
    }

    fn run(
        values: &[(Vec<f64>, Vec<usize>)],
        fused: bool,
    ) -> Result<(f64, Vec<Vec<f64>>, LstmSequenceOutput)> {
        let vars: Vec<Var> = values
            .iter()
            .map(|(data, shape)| {
                Var::from_tensor(&Tensor::from_vec(
                    data.clone(),
                    shape.as_slice(),
                    &Device::Cpu,
                )?)
            })
            .collect::<Result<_>>()?;
        let [projected, w_hh, h0, c0] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
        let output = if fused {
            lstm_sequence(projected, w_hh, h0, c0)?
        } else {
            lstm_sequence_autograd(projected, w_hh, h0, c0)?
        };
        let loss = objective(&output)?;
        let grads = loss.backward()?;
        let mut gradients = Vec::new();
        for var in &vars {
            let grad = grads.get(var.as_tensor()).expect("input has no gradient");
            gradients.push(grad.flatten_all()?.to_vec1::<f64>()?);
        }
        Ok((loss.to_scalar::<f64>()?, gradients, output))
    }

    #[test]
    fn zero_hidden_units_give_empty_outputs() {
        let device = Device::Cpu;
        let projected =
            Var::from_tensor(&Tensor::zeros((3, 2, 0), DType::F32, &device).unwrap()).unwrap();
        let w_hh = Tensor::zeros((0, 0), DType::F32, &device).unwrap();
        let state = Tensor::zeros((2, 0), DType::F32, &device).unwrap();
        let output = lstm_sequence(projected.as_tensor(), &w_hh, &state, &state).unwrap();
        assert_eq!(output.outputs.dims(), [3, 2, 0]);
        let grads = output.outputs.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(projected.as_tensor()).unwrap().dims(), [3, 2, 0]);
    }

    /// The f32 path (vectorised gate passes, with a partial last vector at hidden 21)
    /// against stock Candle operations in f32.
    #[test]
    fn fused_f32_matches_autograd_reference() {
        let (time, batch, hidden) = (5, 3, 21);
        let mut rng = Rng::seed(23);
        let mut make = |shape: &[usize], bound: f64| -> Result<Tensor> {
            let values: Vec<f32> = random(&mut rng, shape, bound)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu)
        };
        let values = [
            make(&[time, batch, 4 * hidden], 3.0).unwrap(),
            make(&[4 * hidden, hidden], 1.5).unwrap(),
            make(&[batch, hidden], 1.0).unwrap(),
            make(&[batch, hidden], 1.0).unwrap(),
        ];
        let weights = make(&[time, batch, hidden], 1.0).unwrap();
        let run = |fused: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
            let vars: Vec<Var> = values.iter().map(Var::from_tensor).collect::<Result<_>>()?;
            let [projected, w_hh, h0, c0] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
            let output = if fused {
                lstm_sequence(projected, w_hh, h0, c0)?
            } else {
                lstm_sequence_autograd(projected, w_hh, h0, c0)?
            };
            let loss = output
                .outputs
                .mul(&weights)?
                .sum_all()?
                .add(&output.c_last.sum_all()?)?;
            let grads = loss.backward()?;
            let mut gradients = Vec::new();
            for var in &vars {
                let grad = grads.get(var.as_tensor()).expect("input has no gradient");
                gradients.push(grad.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok((output.outputs.flatten_all()?.to_vec1::<f32>()?, gradients))
        };
        let (out_fused, grads_fused) = run(true).unwrap();
        let (out_reference, grads_reference) = run(false).unwrap();
        for (a, b) in out_fused.iter().zip(&out_reference) {
            assert!((a - b).abs() < 1e-6, "outputs {a} vs {b}");
        }
        for (fused, reference) in grads_fused.iter().zip(&grads_reference) {
            for (a, b) in fused.iter().zip(reference) {
                assert!(
                    (a - b).abs() < 2e-5 * b.abs().max(1.0),
                    "gradients {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn fused_gradients_match_finite_differences() {
        let base = inputs();
        let (_, gradients, _) = run(&base, true).unwrap();
        let epsilon = 1e-6;
        let names = ["projected", "W_hh", "h0", "c0"];
        for (input, name) in names.iter().enumerate() {
            for (index, &exact) in gradients[input].iter().enumerate() {
                let mut plus = base.clone();
                plus[input].0[index] += epsilon;
                let mut minus = base.clone();
                minus[input].0[index] -= epsilon;
                let (loss_plus, _, _) = run(&plus, true).unwrap();
                let (loss_minus, _, _) = run(&minus, true).unwrap();
                let numeric = (loss_plus - loss_minus) / (2.0 * epsilon);
                assert!(
                    (numeric - exact).abs() < 1e-8,
                    "{name}[{index}]: finite difference {numeric}, backward {exact}"
                );
            }
        }
    }

    #[test]
    fn fused_matches_autograd_reference() {
        let base = inputs();
        let (loss_fused, grads_fused, out_fused) = run(&base, true).unwrap();
        let (loss_reference, grads_reference, out_reference) = run(&base, false).unwrap();
        let fused = out_fused
            .outputs
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let reference = out_reference
            .outputs
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (a, b) in fused.iter().zip(&reference) {
            assert!((a - b).abs() < 1e-14, "outputs {a} vs {b}");
        }
        assert!((loss_fused - loss_reference).abs() < 1e-13);
        for (fused, reference) in grads_fused.iter().zip(&grads_reference) {
            for (a, b) in fused.iter().zip(reference) {
                assert!((a - b).abs() < 1e-13, "gradients {a} vs {b}");
            }
        }
    }

    #[test]
    fn single_step_matches_hand_computed_cell() {
        // One step, one unit, W_hh = 0, zero state: c = sigmoid(i) * tanh(g),
        // h = sigmoid(o) * tanh(c).
        let device = Device::Cpu;
        let projected = Tensor::new(&[[[0.5f32, -1.0, 0.25, 2.0]]], &device).unwrap();
        let w_hh = Tensor::zeros((4, 1), DType::F32, &device).unwrap();
        let zero = Tensor::zeros((1, 1), DType::F32, &device).unwrap();
        let output = lstm_sequence(&projected, &w_hh, &zero, &zero).unwrap();
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let c = sigmoid(0.5) * 0.25f32.tanh();
        let h = sigmoid(2.0) * c.tanh();
        let c_last = output
            .c_last
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let h_last = output
            .h_last
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((c_last - c).abs() < 1e-7, "c {c_last} vs {c}");
        assert!((h_last - h).abs() < 1e-7, "h {h_last} vs {h}");
    }
}
