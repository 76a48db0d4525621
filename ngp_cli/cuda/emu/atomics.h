// CUDA atomics (atomicAdd/Sub/Inc/CAS, atomicMax/Min/Exch/And/Or/Xor): relaxed hardware atomics or compare-and-swap
// loops, or plain read-modify-writes when the launch is exclusive_y. Part of the CUDA emulation that cpu_emu.h
// assembles for the CPU target (docs/kernels.md): cpu_emu.h includes the parts in order, and each relies on the ones
// before it.
#pragma once

// ---------------------------------------------------------------------------------------------------------------
// Atomics: real atomics, or plain read-modify-writes when the launch is exclusive_y
// ---------------------------------------------------------------------------------------------------------------
namespace ngp_emu {
template <typename T, typename Op>
inline T atomic_cas_loop(T* p, Op op) {
    static_assert(sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8, "unsupported atomic size");
    if (ctx.exclusive) {
        T old = *p;
        *p = op(old);
        return old;
    }
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    T desired;
    do {
        desired = op(old);
    } while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
template <typename T>
inline T atomic_fetch_add_int(T* p, T v) {
    if (ctx.exclusive) {
        T old = *p;
        *p = old + v;
        return old;
    }
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
}  // namespace ngp_emu

inline float atomicAdd(float* p, float v) {
    return ngp_emu::atomic_cas_loop(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
    return ngp_emu::atomic_cas_loop(p, [v](double o) { return o + v; });
}
inline __half atomicAdd(__half* p, __half v) {
    return ngp_emu::atomic_cas_loop(p, [v](__half o) { return __hadd(o, v); });
}
inline __half2 atomicAdd(__half2* p, __half2 v) {
    return ngp_emu::atomic_cas_loop(p, [v](__half2 o) { return __hadd2(o, v); });
}
inline int atomicAdd(int* p, int v) { return ngp_emu::atomic_fetch_add_int(p, v); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return ngp_emu::atomic_fetch_add_int(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return ngp_emu::atomic_fetch_add_int(p, v);
}
inline int atomicSub(int* p, int v) { return ngp_emu::atomic_fetch_add_int(p, -v); }
inline unsigned int atomicSub(unsigned int* p, unsigned int v) { return ngp_emu::atomic_fetch_add_int(p, 0u - v); }
#define NGP_EMU_ATOMIC_OP(NAME, T, EXPR) \
    inline T NAME(T* p, T v) { return ngp_emu::atomic_cas_loop(p, [v](T o) { return (T)(EXPR); }); }
NGP_EMU_ATOMIC_OP(atomicMax, int, o > v ? o : v)
NGP_EMU_ATOMIC_OP(atomicMax, unsigned int, o > v ? o : v)
NGP_EMU_ATOMIC_OP(atomicMax, unsigned long long, o > v ? o : v)
NGP_EMU_ATOMIC_OP(atomicMin, int, o < v ? o : v)
NGP_EMU_ATOMIC_OP(atomicMin, unsigned int, o < v ? o : v)
NGP_EMU_ATOMIC_OP(atomicMin, unsigned long long, o < v ? o : v)
NGP_EMU_ATOMIC_OP(atomicExch, int, v)
NGP_EMU_ATOMIC_OP(atomicExch, unsigned int, v)
NGP_EMU_ATOMIC_OP(atomicExch, unsigned long long, v)
NGP_EMU_ATOMIC_OP(atomicExch, float, v)
NGP_EMU_ATOMIC_OP(atomicAnd, int, o & v)
NGP_EMU_ATOMIC_OP(atomicAnd, unsigned int, o & v)
NGP_EMU_ATOMIC_OP(atomicOr, int, o | v)
NGP_EMU_ATOMIC_OP(atomicOr, unsigned int, o | v)
NGP_EMU_ATOMIC_OP(atomicXor, int, o ^ v)
NGP_EMU_ATOMIC_OP(atomicXor, unsigned int, o ^ v)
#undef NGP_EMU_ATOMIC_OP
inline unsigned int atomicInc(unsigned int* p, unsigned int v) {
    return ngp_emu::atomic_cas_loop(p, [v](unsigned int o) { return o >= v ? 0u : o + 1; });
}
template <typename T>
inline T ngp_emu_atomic_cas(T* p, T compare, T val) {
    if (ngp_emu::ctx.exclusive) {
        T old = *p;
        if (old == compare) *p = val;
        return old;
    }
    __atomic_compare_exchange(p, &compare, &val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return compare;
}
inline int atomicCAS(int* p, int c, int v) { return ngp_emu_atomic_cas(p, c, v); }
inline unsigned int atomicCAS(unsigned int* p, unsigned int c, unsigned int v) { return ngp_emu_atomic_cas(p, c, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
    return ngp_emu_atomic_cas(p, c, v);
}
inline unsigned short atomicCAS(unsigned short* p, unsigned short c, unsigned short v) {
    return ngp_emu_atomic_cas(p, c, v);
}
