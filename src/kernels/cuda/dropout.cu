// Dropout kernels for the AWD-LSTM, f32. The masks are drawn on the CPU by the crate's
// seeded generator, so a run gives the same masks on every device; these kernels only
// apply them. The CPU twins live in src/kernels/cuda/twins.rs.

// Weight dropout (DropConnect) on a weight matrix, and equally on its gradient:
//   out[k] = keep[k] ? weight[k] * scale : 0   for k < count
// keep contains one byte per element (0 = dropped), and scale is 1 / (1 - p).
extern "C" __global__ void weight_dropout_f32(
    const float *weight,
    const unsigned char *keep,
    float *out,
    const float scale,
    const unsigned int count
) {
    const unsigned int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= count) {
        return;
    }
    out[k] = keep[k] != 0 ? weight[k] * scale : 0.0f;
}

// Embedding lookup with embedding (word) dropout: each word's whole row is scaled by its
// row_scale (0 for a dropped word, 1 / (1 - p) for a kept one).
//   weight     [vocab, features]
//   ids        [n]               token ids, each < vocab
//   row_scale  [vocab]
//   out        [n, features]     out[r, f] = weight[ids[r], f] * row_scale[ids[r]]
// An id at or beyond vocab yields a zero row (the caller validates ids beforehand).
extern "C" __global__ void embedding_dropout_f32(
    const float *weight,
    const unsigned int *ids,
    const float *row_scale,
    float *out,
    const unsigned int n,
    const unsigned int features,
    const unsigned int vocab
) {
    const unsigned int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= n * features) {
        return;
    }
    const unsigned int r = index / features;
    const unsigned int f = index - r * features;
    const unsigned int id = ids[r];
    if (id >= vocab) {
        out[index] = 0.0f;
        return;
    }
    out[index] = weight[(size_t)id * features + f] * row_scale[id];
}
