// Toy kernel for tests/cuda/test_runtime.py: value parameters of every supported scalar type; PARAM_T is a define
// (float or __half), substituted in the signature by the runtime's parser.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(32) scalars(double* __restrict__ out, int a, unsigned int b, float c,
                                                         double d, long long e, unsigned long long f, PARAM_T g,
                                                         bool h /* a flag */) {
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
    out[4] = (double)e;
    out[5] = (double)f;
    out[6] = (double)(float)g;
    out[7] = h ? 1.0 : 0.0;
}
