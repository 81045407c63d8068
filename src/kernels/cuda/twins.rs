//! CPU twins of the CUDA kernels in this folder: the same expressions in plain loops, in
//! the same element order, compiled in every build. They are the reference the GPU check
//! compares the kernels against, and tests compare them with the crate's CPU paths.
//!
//! All values are f32 in row-major layout; gate order is input, forget, cell (g), output,
//! as in PyTorch's `nn.LSTM`.

use candle_core::{bail, Result};

/// Result of [`lstm_cell_forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct LstmCellForward {
    /// Activated gates `[batch, 4 hidden]`: sigmoid(i), sigmoid(f), tanh(g), sigmoid(o).
    pub gates: Vec<f32>,
    /// New cell state `[batch, hidden]`.
    pub c: Vec<f32>,
    /// New hidden state `[batch, hidden]`.
    pub h: Vec<f32>,
}

/// Result of [`lstm_cell_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct LstmCellBackward {
    /// Gradient of the gate pre-activations `[batch, 4 hidden]`, which is also the
    /// gradient of the projected inputs and of the recurrent product of the step.
    pub dpre: Vec<f32>,
    /// Gradient of the previous cell state `[batch, hidden]`.
    pub dc_prev: Vec<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Fails unless `values` contains `expected` elements.
fn check_len<T>(kernel: &str, name: &str, values: &[T], expected: usize) -> Result<()> {
    if values.len() != expected {
        bail!(
            "{kernel}: {name} has {} elements, expected {expected}",
            values.len()
        );
    }
    Ok(())
}

/// One LSTM step (twin of `lstm_cell_forward_f32`).
///
/// Shapes: `projected` and `recurrent` (`h_prev W_hh^T`) `[batch, 4 hidden]`, `c_prev`
/// `[batch, hidden]`.
pub fn lstm_cell_forward(
    projected: &[f32],
    recurrent: &[f32],
    c_prev: &[f32],
    batch: usize,
    hidden: usize,
) -> Result<LstmCellForward> {
    let kernel = "lstm_cell_forward";
    check_len(kernel, "projected", projected, batch * 4 * hidden)?;
    check_len(kernel, "recurrent", recurrent, batch * 4 * hidden)?;
    check_len(kernel, "c_prev", c_prev, batch * hidden)?;
    let mut gates = vec![0f32; batch * 4 * hidden];
    let mut c = vec![0f32; batch * hidden];
    let mut h = vec![0f32; batch * hidden];
    for b in 0..batch {
        let row = b * 4 * hidden;
        for j in 0..hidden {
            let pre = |gate: usize| {
                projected[row + gate * hidden + j] + recurrent[row + gate * hidden + j]
            };
            let input_gate = sigmoid(pre(0));
            let forget_gate = sigmoid(pre(1));
            let cell_gate = pre(2).tanh();
            let output_gate = sigmoid(pre(3));
            let index = b * hidden + j;
            let cell = forget_gate * c_prev[index] + input_gate * cell_gate;
            gates[row + j] = input_gate;
            gates[row + hidden + j] = forget_gate;
            gates[row + 2 * hidden + j] = cell_gate;
            gates[row + 3 * hidden + j] = output_gate;
            c[index] = cell;
            h[index] = output_gate * cell.tanh();
        }
    }
    Ok(LstmCellForward { gates, c, h })
}

/// Backward pass of one LSTM step (twin of `lstm_cell_backward_f32`).
///
/// Shapes: `gates` `[batch, 4 hidden]` (as returned by [`lstm_cell_forward`]); `c_prev`,
/// `c`, `dh` (gradient of the step's hidden output) and `dc_next` (gradient of `c` from
/// the next step) `[batch, hidden]`.
pub fn lstm_cell_backward(
    gates: &[f32],
    c_prev: &[f32],
    c: &[f32],
    dh: &[f32],
    dc_next: &[f32],
    batch: usize,
    hidden: usize,
) -> Result<LstmCellBackward> {
    let kernel = "lstm_cell_backward";
    check_len(kernel, "gates", gates, batch * 4 * hidden)?;
    for (name, values) in [
        ("c_prev", c_prev),
        ("c", c),
        ("dh", dh),
        ("dc_next", dc_next),
    ] {
        check_len(kernel, name, values, batch * hidden)?;
    }
    let mut dpre = vec![0f32; batch * 4 * hidden];
    let mut dc_prev = vec![0f32; batch * hidden];
    for b in 0..batch {
        let row = b * 4 * hidden;
        for j in 0..hidden {
            let index = b * hidden + j;
            let input_gate = gates[row + j];
            let forget_gate = gates[row + hidden + j];
            let cell_gate = gates[row + 2 * hidden + j];
            let output_gate = gates[row + 3 * hidden + j];
            let tanh_c = c[index].tanh();
            let grad_h = dh[index];
            let grad_c = dc_next[index] + grad_h * output_gate * (1.0 - tanh_c * tanh_c);
            dpre[row + j] = grad_c * cell_gate * input_gate * (1.0 - input_gate);
            dpre[row + hidden + j] = grad_c * c_prev[index] * forget_gate * (1.0 - forget_gate);
            dpre[row + 2 * hidden + j] = grad_c * input_gate * (1.0 - cell_gate * cell_gate);
            dpre[row + 3 * hidden + j] = grad_h * tanh_c * output_gate * (1.0 - output_gate);
            dc_prev[index] = grad_c * forget_gate;
        }
    }
    Ok(LstmCellBackward { dpre, dc_prev })
}

/// Weight dropout (twin of `weight_dropout_f32`): `weight[k] * scale` where `keep[k]` is
/// non-zero, else 0. `weight` and `keep` have the same length; `scale` is `1 / (1 - p)`.
pub fn weight_dropout(weight: &[f32], keep: &[u8], scale: f32) -> Result<Vec<f32>> {
    check_len("weight_dropout", "keep", keep, weight.len())?;
    Ok(weight
        .iter()
        .zip(keep)
        .map(|(&w, &k)| if k != 0 { w * scale } else { 0.0 })
        .collect())
}

/// Embedding lookup with word dropout (twin of `embedding_dropout_f32`).
///
/// Shapes: `weight` `[vocab, features]`, `ids` `[n]`, `row_scale` `[vocab]`; returns
/// `[n, features]` with row `r` equal to `weight[ids[r]] * row_scale[ids[r]]`. Fails on
/// an id at or beyond `vocab`.
pub fn embedding_dropout(
    weight: &[f32],
    ids: &[u32],
    row_scale: &[f32],
    features: usize,
) -> Result<Vec<f32>> {
    let vocab = row_scale.len();
    check_len("embedding_dropout", "weight", weight, vocab * features)?;
    let mut out = Vec::with_capacity(ids.len() * features);
    for (position, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= vocab {
            bail!("embedding_dropout: id {id} at position {position} is outside the vocabulary of {vocab} words");
        }
        let scale = row_scale[id];
        out.extend(
            weight[id * features..(id + 1) * features]
                .iter()
                .map(|&w| w * scale),
        );
    }
    Ok(out)
}

/// Masked concat pooling (twin of `concat_pool_f32`).
///
/// Shapes: `outputs` `[batch, time, features]`, right-padded, with row `b` real at
/// positions `0..lengths[b]`; returns `[batch, 3 features]`: the output at the last real
/// position, the maximum and the mean over the real positions. Fails on a length of 0
/// or above `time`.
pub fn concat_pool(
    outputs: &[f32],
    lengths: &[u32],
    time: usize,
    features: usize,
) -> Result<Vec<f32>> {
    let batch = lengths.len();
    check_len("concat_pool", "outputs", outputs, batch * time * features)?;
    let mut pooled = vec![0f32; batch * 3 * features];
    for (b, &length) in lengths.iter().enumerate() {
        let length = length as usize;
        if length == 0 || length > time {
            bail!("concat_pool: row {b} has length {length}, expected 1..={time}");
        }
        let sequence = &outputs[b * time * features..(b + 1) * time * features];
        let out = &mut pooled[b * 3 * features..(b + 1) * 3 * features];
        for f in 0..features {
            let mut max_value = sequence[f];
            let mut sum = sequence[f];
            for t in 1..length {
                let value = sequence[t * features + f];
                max_value = max_value.max(value);
                sum += value;
            }
            out[f] = sequence[(length - 1) * features + f];
            out[features + f] = max_value;
            out[2 * features + f] = sum / length as f32;
        }
    }
    Ok(pooled)
}
