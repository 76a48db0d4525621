// A kernel with a syntax error: load_module must raise KernelCompileError carrying the compiler log.
#include "common.cuh"

extern "C" __global__ void broken(float* __restrict__ out) {
    out[0] = 1.0f  // missing semicolon
    out[1] = ngp_undefined_identifier;
}
