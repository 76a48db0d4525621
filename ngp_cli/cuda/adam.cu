// Adam step with tiny-cuda-nn's semantics (include/tiny-cuda-nn/optimizers/adam.h, adam_step):
//  - parameters flagged skip_zero_grad (hash-grid tables) are left untouched, moments included, when their gradient is
//    exactly 0 (paper §4: "we skip Adam steps for hash table entries whose gradient is exactly 0");
//  - every element keeps its own step count for the bias correction, since sparse entries see fewer steps;
//  - L2 regularisation (l2_reg * w added to the gradient) applies where l2_reg != 0 (the MLP matrices).
// The bias-correction factor sqrt(1 - beta2^t) / (1 - beta1^t) is read from a small table indexed by t (computed on
// the host in double precision), so no powf is evaluated per element.
// uniform_step != 0 (dense steps, skip_zero_grad = 0): every element is at step uniform_step, param_steps is neither
// read nor written (the host keeps the one count). 8 of the 36 bytes an element moves, on a memory-bound pass.
// Each thread updates ADAM_CHUNK consecutive elements (1 on the GPU; a few thousand on the CPU, where the inner loop
// then vectorises and the per-thread launch cost is amortised).
#include "common.cuh"

#ifndef ADAM_CHUNK
#define ADAM_CHUNK 1
#endif

// One element's update (both paths): the moments and the new weight for a gradient already divided by the loss scale.
__device__ inline void adam_update(float gradient, const float weight, const float m0, const float v0, const float lr,
                                   const float beta1, const float beta2, const float epsilon, const float l2_reg,
                                   float& m, float& v, float& new_weight) {
    gradient += l2_reg * weight;
    m = beta1 * m0 + (1.0f - beta1) * gradient;
    v = beta2 * v0 + (1.0f - beta2) * gradient * gradient;
    new_weight = weight - lr / (sqrtf(v) + epsilon) * m;
}

extern "C" __global__ void adam_step(const unsigned int n, const float learning_rate, const float beta1,
                                     const float beta2, const float epsilon, const float l2_reg,
                                     const float inv_loss_scale, const unsigned int skip_zero_grad,
                                     const unsigned int max_step, const unsigned int uniform_step,
                                     const float* __restrict__ correction,
                                     float* __restrict__ weights, const float* __restrict__ gradients,
                                     float* __restrict__ first_moments, float* __restrict__ second_moments,
                                     unsigned int* __restrict__ param_steps) {
    const unsigned long long first = (unsigned long long)(blockIdx.x * blockDim.x + threadIdx.x) * ADAM_CHUNK;
    const unsigned long long last = first + ADAM_CHUNK < n ? first + ADAM_CHUNK : n;
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
