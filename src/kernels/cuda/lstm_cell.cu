// One LSTM time step, forward and backward, for f32 tensors in row-major layout.
//
// Gate order follows PyTorch's nn.LSTM: input (i), forget (f), cell (g), output (o),
// each `hidden` wide, so a gate row is `4 * hidden` floats. The caller computes the
// recurrent product `h_prev W_hh^T` with one matrix product per step; these kernels fuse
// everything element-wise around it. One thread handles one (batch, unit) pair and
// reads or writes the four gates of that unit.
//
// The CPU twins live in src/kernels/cuda/twins.rs and must compute the same expressions.

__device__ __forceinline__ float ulmfit_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

// Forward step.
//   projected  [batch, 4 hidden]  input projection x W_ih^T + b_ih + b_hh of this step
//   recurrent  [batch, 4 hidden]  h_prev W_hh^T
//   c_prev     [batch, hidden]
//   gates      [batch, 4 hidden]  out: activated gates sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
//   c_out      [batch, hidden]    out: new cell state
//   h_out      [batch, hidden]    out: new hidden state
extern "C" __global__ void lstm_cell_forward_f32(
    const float *projected,
    const float *recurrent,
    const float *c_prev,
    float *gates,
    float *c_out,
    float *h_out,
    const unsigned int batch,
    const unsigned int hidden
) {
    const unsigned int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * hidden) {
        return;
    }
    const unsigned int b = index / hidden;
    const unsigned int j = index - b * hidden;
    const unsigned int row = b * 4 * hidden;

    const float input_gate = ulmfit_sigmoid(projected[row + j] + recurrent[row + j]);
    const float forget_gate =
        ulmfit_sigmoid(projected[row + hidden + j] + recurrent[row + hidden + j]);
    const float cell_gate = tanhf(projected[row + 2 * hidden + j] + recurrent[row + 2 * hidden + j]);
    const float output_gate =
        ulmfit_sigmoid(projected[row + 3 * hidden + j] + recurrent[row + 3 * hidden + j]);

    const float c = forget_gate * c_prev[index] + input_gate * cell_gate;
    gates[row + j] = input_gate;
    gates[row + hidden + j] = forget_gate;
    gates[row + 2 * hidden + j] = cell_gate;
    gates[row + 3 * hidden + j] = output_gate;
    c_out[index] = c;
    h_out[index] = output_gate * tanhf(c);
}

// Backward step.
//   gates        [batch, 4 hidden]  activated gates saved by the forward step
//   c_prev       [batch, hidden]    cell state before the step
//   c            [batch, hidden]    cell state after the step
//   dh           [batch, hidden]    gradient of the step's hidden output (from above and
//                                   from the next step's recurrent product)
//   dc_next      [batch, hidden]    gradient of the cell state flowing back from the next step
//   dpre         [batch, 4 hidden]  out: gradient of the gate pre-activations; it is also
//                                   the gradient of `projected` and of `recurrent`
//   dc_prev      [batch, hidden]    out: gradient of c_prev
// The caller then forms dh_prev = dpre W_hh and dW_hh += dpre^T h_prev.
extern "C" __global__ void lstm_cell_backward_f32(
    const float *gates,
    const float *c_prev,
    const float *c,
    const float *dh,
    const float *dc_next,
    float *dpre,
    float *dc_prev,
    const unsigned int batch,
    const unsigned int hidden
) {
    const unsigned int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * hidden) {
        return;
    }
    const unsigned int b = index / hidden;
    const unsigned int j = index - b * hidden;
    const unsigned int row = b * 4 * hidden;

    const float input_gate = gates[row + j];
    const float forget_gate = gates[row + hidden + j];
    const float cell_gate = gates[row + 2 * hidden + j];
    const float output_gate = gates[row + 3 * hidden + j];
    const float tanh_c = tanhf(c[index]);
    const float grad_h = dh[index];
    const float grad_c = dc_next[index] + grad_h * output_gate * (1.0f - tanh_c * tanh_c);

    dpre[row + j] = grad_c * cell_gate * input_gate * (1.0f - input_gate);
    dpre[row + hidden + j] = grad_c * c_prev[index] * forget_gate * (1.0f - forget_gate);
    dpre[row + 2 * hidden + j] = grad_c * input_gate * (1.0f - cell_gate * cell_gate);
    dpre[row + 3 * hidden + j] = grad_h * tanh_c * output_gate * (1.0f - output_gate);
    dc_prev[index] = grad_c * forget_gate;
}
