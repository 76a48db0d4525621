// Adam step with tiny-cuda-nn's semantics (include/tiny-cuda-nn/optimizers/adam.h, adam_step):
//  - parameters flagged skip_zero_grad (hash-grid tables) are left untouched, moments included, when their gradient is
//    exactly 0 (paper §4: "we skip Adam steps for hash table entries whose gradient is exactly 0");
//  - every element keeps its own step count for the bias correction, since sparse entries see fewer steps;
//  - L2 regularisation (l2_reg * w added to the gradient) applies where l2_reg != 0 (the MLP matrices).
// The bias-correction factor sqrt(1 - beta2^t) / (1 - beta1^t) is read from a small table indexed by t (computed on
// the host in double precision), so no powf is evaluated per element.
// uniform_step != 0 (dense steps, skip_zero_grad = 0): every element is at step uniform_step, param_steps is neither
// read nor written (the host keeps the one count). 8 of the 36 bytes an element moves, on a memory-bound pass.
//
// One launch updates every tensor of an optimizer step (a multi-tensor apply, as PyTorch's multi_tensor_apply): the
// host passes a table of AdamTensor records whose elements are laid end to end in one index space, [start, start + n)
// per record, in increasing start order. Each thread updates ADAM_CHUNK consecutive indices of that space (1 on the
// GPU, where a linear scan over the few records finds its tensor; a few thousand on the CPU, where the run is split at
// tensor boundaries so the inner loop still vectorises and the per-thread launch cost is amortised).
#include "common.cuh"

#ifndef ADAM_CHUNK
#define ADAM_CHUNK 1
#endif

// One tensor's share of the step. Pointers are device addresses on the GPU and process addresses on the CPU target,
// passed as 64-bit integers; ngp_cli/cuda/adam.py builds the same layout (_RECORD), checked there and here.
struct AdamTensor {
    float* weights;
    const float* gradients;
    float* first_moments;
    float* second_moments;
    unsigned int* param_steps;  // null: dense, every element is at uniform_step
    const float* correction;    // the bias-correction table, max_step + 1 entries
    unsigned long long start;   // first index in the concatenated index space
    unsigned long long n;       // element count
    unsigned int uniform_step, max_step, skip_zero_grad;
    float learning_rate, beta1, beta2, epsilon, l2_reg;
};
static_assert(sizeof(AdamTensor) == 96, "AdamTensor must match adam.py's _RECORD");

// One element's update (both paths): the moments and the new weight for a gradient already divided by the loss scale.
__device__ inline void adam_update(float gradient, const float weight, const float m0, const float v0, const float lr,
                                   const float beta1, const float beta2, const float epsilon, const float l2_reg,
                                   float& m, float& v, float& new_weight) {
    gradient += l2_reg * weight;
    m = beta1 * m0 + (1.0f - beta1) * gradient;
    v = beta2 * v0 + (1.0f - beta2) * gradient * gradient;
    new_weight = weight - lr / (sqrtf(v) + epsilon) * m;
}

// Elements [first, last) of one tensor. The arrays are __restrict__ parameters (not struct fields) so that the CPU
// compiler vectorises the loops without runtime aliasing checks.
__device__ inline void adam_range(const unsigned long long first, const unsigned long long last,
                                  const float inv_loss_scale, const float learning_rate, const float beta1,
                                  const float beta2, const float epsilon, const float l2_reg,
                                  const unsigned int skip_zero_grad, const unsigned int max_step,
                                  const unsigned int uniform_step, const float* __restrict__ correction,
                                  float* __restrict__ weights, const float* __restrict__ gradients,
                                  float* __restrict__ first_moments, float* __restrict__ second_moments,
                                  unsigned int* __restrict__ param_steps) {
    if (uniform_step) {
        const float lr = learning_rate * correction[uniform_step < max_step ? uniform_step : max_step];
        for (unsigned long long i = first; i < last; ++i) {
            float m, v, w;
            adam_update(gradients[i] * inv_loss_scale, weights[i], first_moments[i], second_moments[i], lr, beta1,
                        beta2, epsilon, l2_reg, m, v, w);
            first_moments[i] = m;
            second_moments[i] = v;
            weights[i] = w;
        }
        return;
    }
    for (unsigned long long i = first; i < last; ++i) {
        // Computed for every element and stored only where active: a branch-free body the CPU compiler vectorises
        // with masked stores; on the GPU skipped elements still cost no stores.
        const float gradient = gradients[i] * inv_loss_scale;
        const bool active = !(skip_zero_grad && gradient == 0.0f);
        const unsigned int step = param_steps[i] + 1;
        // The table covers every count a step can reach; the clamp is only a guard.
        const float lr = learning_rate * correction[step < max_step ? step : max_step];
        float m, v, w;
        adam_update(gradient, weights[i], first_moments[i], second_moments[i], lr, beta1, beta2, epsilon, l2_reg, m,
                    v, w);
        if (active) {
            first_moments[i] = m;
            second_moments[i] = v;
            param_steps[i] = step;
            weights[i] = w;
        }
    }
}

// n_elements: the total over all records; records: n_tensors AdamTensor records (as 64-bit words).
extern "C" __global__ void adam_step(const unsigned long long n_elements, const unsigned int n_tensors,
                                     const float inv_loss_scale, const unsigned long long* __restrict__ records) {
    const AdamTensor* tensors = reinterpret_cast<const AdamTensor*>(records);
    const unsigned long long first = ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x) * ADAM_CHUNK;
    const unsigned long long last = first + ADAM_CHUNK < n_elements ? first + ADAM_CHUNK : n_elements;
    // Records are sorted by start: stop at the first one beginning at or after this thread's run.
    for (unsigned int k = 0; k < n_tensors && tensors[k].start < last; ++k) {
        const AdamTensor& t = tensors[k];
        const unsigned long long end = t.start + t.n;
        if (end <= first) continue;
        adam_range(first > t.start ? first - t.start : 0, (last < end ? last : end) - t.start, inv_loss_scale,
                   t.learning_rate, t.beta1, t.beta2, t.epsilon, t.l2_reg, t.skip_zero_grad, t.max_step,
                   t.uniform_step, t.correction, t.weights, t.gradients, t.first_moments, t.second_moments,
                   t.param_steps);
    }
}
