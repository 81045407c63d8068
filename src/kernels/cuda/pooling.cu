// Masked concat pooling for the classifier head, f32: for every sequence, the encoder
// output at its last real position, the maximum and the mean over its real positions.
// Sequences are padded on the right, so the real positions of row b are 0..lengths[b].
//   outputs  [batch, time, features]
//   lengths  [batch]                    each in 1..=time
//   pooled   [batch, 3 features]        out: [last, max, mean]
// One thread handles one (batch, feature) pair and walks the time axis. A row with a
// length of 0 or above time yields zeros (the caller validates lengths beforehand).
// The CPU twin lives in src/kernels/cuda/twins.rs.
extern "C" __global__ void concat_pool_f32(
    const float *outputs,
    const unsigned int *lengths,
    float *pooled,
    const unsigned int batch,
    const unsigned int time,
    const unsigned int features
) {
    const unsigned int index = blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= batch * features) {
        return;
    }
    const unsigned int b = index / features;
    const unsigned int f = index - b * features;
    const unsigned int length = lengths[b];
    float *out = pooled + (size_t)b * 3 * features;
    if (length == 0 || length > time) {
        out[f] = 0.0f;
        out[features + f] = 0.0f;
        out[2 * features + f] = 0.0f;
        return;
    }
    const float *column = outputs + (size_t)b * time * features + f;
    float max_value = column[0];
    float sum = column[0];
    for (unsigned int t = 1; t < length; ++t) {
        const float value = column[(size_t)t * features];
        max_value = fmaxf(max_value, value);
        sum += value;
    }
    out[f] = column[(size_t)(length - 1) * features];
    out[features + f] = max_value;
    out[2 * features + f] = sum / (float)length;
}
