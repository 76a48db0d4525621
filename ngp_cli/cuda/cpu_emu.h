// CPU emulation of the CUDA device environment used by the kernels in ngp_cli/cuda (docs/kernels.md).
//
// Force-included (g++ -include cpu_emu.h -DNGP_CPU) when a .cu kernel source is compiled for the CPU target by
// ngp_cli/cuda/runtime.py. It provides the CUDA names the kernels use: execution-space qualifiers, the built-in index
// variables, static and dynamic shared memory, __syncthreads and warp intrinsics (threads of a block run as fibers
// when the launch asks for sync_threads), atomics, __half/__half2 with the cuda_fp16 functions, CUDA math functions,
// vector types, and nvcuda::wmma m16n16k16 fragments with whole-tile semantics (every lane holds the whole tile).
//
// It also holds the block runner: runtime.py appends, per kernel, `NGP_EMU_EXPORT_KERNEL(name)`, which instantiates
// ngp_emu::launch_kernel<&name> — the launch parameters are unpacked once and the kernel is called directly (inlined)
// in a loop over the threads of each block. Blocks are spread over worker threads by the pool in cpu_launch.cpp,
// whose entry point comes in through the LaunchDesc.
#pragma once

#ifndef NGP_CPU
#define NGP_CPU 1
#endif

#include <algorithm>
#include <atomic>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__) || defined(NGP_EMU_UCONTEXT)
#include <ucontext.h>
#define NGP_EMU_USE_UCONTEXT 1
#endif

// ---------------------------------------------------------------------------------------------------------------
// Qualifiers
// ---------------------------------------------------------------------------------------------------------------
// Kernels are always inlined into their block runner (the per-thread loop), so a thread costs a few instructions.
#define __global__ inline __attribute__((always_inline))
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#ifndef __restrict__
#define __restrict__ __restrict
#endif
// Static shared memory: one instance per OS thread; the threads (fibers) of a block all run on one OS thread and a
// worker runs its blocks one after another, so this is per-block storage. Not poisoned (uninitialised on the GPU).
#define __shared__ static thread_local
// Dynamic shared memory (`extern __shared__` cannot be emulated with a qualifier): poisoned with 0xFF bytes (NaN)
// at every block start.
#define NGP_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::ngp_emu::ctx.dyn_smem)

// ---------------------------------------------------------------------------------------------------------------
// Vector types
// ---------------------------------------------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __align__(8) float2 { float x, y; };
struct float3 { float x, y, z; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) int2 { int x, y; };
struct int3 { int x, y, z; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(8) uint2 { unsigned int x, y; };
struct __align__(16) uint4 { unsigned int x, y, z, w; };
struct __align__(16) double2 { double x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int3 make_int3(int x, int y, int z) { return int3{x, y, z}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------------------------
// Launch context (per OS thread)
// ---------------------------------------------------------------------------------------------------------------
namespace ngp_emu {

// Must match _LaunchDesc in runtime.py.
typedef void (*item_fn)(void* arg, int worker, long long begin, long long end);
typedef int (*pool_run_fn)(int nthreads, long long nitems, long long chunk, item_fn fn, void* arg);
struct LaunchDesc {
    pool_run_fn pool_run;
    long long nthreads;
    unsigned int grid[3];
    unsigned int block[3];
    unsigned long long shared_bytes;
    void** params;
    long long flags;  // FLAG_FIBERS | FLAG_EXCLUSIVE_Y
    char* err;
    long long err_len;
};
enum : long long { FLAG_FIBERS = 1, FLAG_EXCLUSIVE_Y = 2 };

struct BlockState;

struct Ctx {
    uint3 tid;
    uint3 bid;
    dim3 bdim;
    dim3 gdim;
    int exclusive;          // atomics are plain read-modify-writes (each worker owns whole blockIdx.y rows)
    int in_fiber;           // running on a fiber stack of `block`
    unsigned int nthreads;  // threads in a block
    unsigned char* dyn_smem;
    BlockState* block;  // fiber state of the current block, or nullptr in plain mode
    jmp_buf* jb;        // where fail() returns to (on the worker's own stack)
    const char* err;
    char errbuf[256];
};
// Local-dynamic TLS (the module defines it): the address is computed once per function, hoisted out of the
// per-thread loop of the block runner.
static thread_local Ctx ctx{};  // constant-initialised: no TLS guard on access

[[noreturn]] inline void fail(const char* msg);

inline unsigned int linear_tid() { return ctx.tid.x + ctx.bdim.x * (ctx.tid.y + ctx.bdim.y * ctx.tid.z); }

}  // namespace ngp_emu

#define threadIdx (::ngp_emu::ctx.tid)
#define blockIdx (::ngp_emu::ctx.bid)
#define blockDim (::ngp_emu::ctx.bdim)
#define gridDim (::ngp_emu::ctx.gdim)

// ---------------------------------------------------------------------------------------------------------------
// Math
// ---------------------------------------------------------------------------------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline unsigned int min(int a, unsigned int b) { return min((unsigned int)a, b); }
inline unsigned int max(int a, unsigned int b) { return max((unsigned int)a, b); }
inline unsigned int min(unsigned int a, int b) { return min(a, (unsigned int)b); }
inline unsigned int max(unsigned int a, int b) { return max(a, (unsigned int)b); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return expf(x * 2.302585092994046f); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) {
    *s = sinf(x);
    *c = cosf(x);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
inline float sinpif(float x) { return sinf(x * 3.14159265358979323846f); }
inline float cospif(float x) { return cosf(x * 3.14159265358979323846f); }
inline void sincospif(float x, float* s, float* c) {
    *s = sinpif(x);
    *c = cospif(x);
}
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned int __float2uint_rn(float x) { return (unsigned int)nearbyintf(x); }
inline unsigned int __float2uint_rz(float x) { return (unsigned int)x; }
inline unsigned int __float2uint_rd(float x) { return (unsigned int)floorf(x); }
inline unsigned int __float2uint_ru(float x) { return (unsigned int)ceilf(x); }
inline long long __float2ll_rd(float x) { return (long long)floorf(x); }
inline long long __float2ll_rz(float x) { return (long long)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned int x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
// Reinterpretation of the bits of one trivially copyable type as another of the same size.
template <typename To, typename From>
inline To ngp_bit_cast(From x) {
    static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
    To r;
    memcpy(&r, &x, sizeof(To));
    return r;
}
inline int __float_as_int(float x) { return ngp_bit_cast<int>(x); }
inline unsigned int __float_as_uint(float x) { return ngp_bit_cast<unsigned int>(x); }
inline float __int_as_float(int x) { return ngp_bit_cast<float>(x); }
inline float __uint_as_float(unsigned int x) { return ngp_bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return ngp_bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return ngp_bit_cast<double>(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
    return (x >> 16) | (x << 16);
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned int __umul24(unsigned int a, unsigned int b) { return a * b; }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
template <typename T>
inline T __ldcs(const T* p) {
    return *p;
}
template <typename T>
inline void __stcs(T* p, T v) {
    *p = v;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#if defined(__x86_64__)
inline long long clock64() { return (long long)__builtin_ia32_rdtsc(); }
#else
inline long long clock64() { return 0; }
#endif
[[noreturn]] inline void __trap() { ngp_emu::fail("__trap() called in a kernel"); }

// ---------------------------------------------------------------------------------------------------------------
// __half / __half2 (cuda_fp16.h subset), on _Float16
// ---------------------------------------------------------------------------------------------------------------
struct __half_raw {
    unsigned short x;
};
struct __half {
    _Float16 v;
    __half() = default;
    constexpr __half(float f) : v((_Float16)f) {}
    constexpr __half(double f) : v((_Float16)f) {}
    constexpr __half(int i) : v((_Float16)i) {}
    constexpr __half(unsigned int i) : v((_Float16)i) {}
    constexpr __half(long long i) : v((_Float16)i) {}
    constexpr __half(unsigned long long i) : v((_Float16)i) {}
    constexpr __half(short i) : v((_Float16)i) {}
    constexpr __half(unsigned short i) : v((_Float16)i) {}
    __half(__half_raw r) { memcpy(&v, &r.x, 2); }
    constexpr operator float() const { return (float)v; }
    operator __half_raw() const {
        __half_raw r;
        memcpy(&r.x, &v, 2);
        return r;
    }
    __half& operator+=(const __half& o) {
        v = (_Float16)((float)v + (float)o.v);
        return *this;
    }
    __half& operator-=(const __half& o) {
        v = (_Float16)((float)v - (float)o.v);
        return *this;
    }
    __half& operator*=(const __half& o) {
        v = (_Float16)((float)v * (float)o.v);
        return *this;
    }
    __half& operator/=(const __half& o) {
        v = (_Float16)((float)v / (float)o.v);
        return *this;
    }
};
static_assert(sizeof(__half) == 2, "__half must be 2 bytes");
typedef __half half;

struct __align__(4) __half2 {
    __half x, y;
    __half2() = default;
    constexpr __half2(__half a, __half b) : x(a), y(b) {}
    __half2& operator+=(const __half2& o);
    __half2& operator-=(const __half2& o);
    __half2& operator*=(const __half2& o);
    __half2& operator/=(const __half2& o);
};
static_assert(sizeof(__half2) == 4, "__half2 must be 4 bytes");
typedef __half2 half2;

inline __half __hf_(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double f) { return __half(f); }
inline float __half2float(__half h) { return (float)h.v; }
inline __half __int2half_rn(int i) { return __half(i); }
inline int __half2int_rn(__half h) { return (int)nearbyintf((float)h.v); }
inline int __half2int_rz(__half h) { return (int)(float)h.v; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2(__half(a), __half(b)); }
inline __half2 __float2half2_rn(float a) { return __half2(__half(a), __half(a)); }
inline __half2 __float22half2_rn(float2 f) { return __half2(__half(f.x), __half(f.y)); }
inline float2 __half22float2(__half2 h) { return float2{(float)h.x.v, (float)h.y.v}; }
inline float __low2float(__half2 h) { return (float)h.x.v; }
inline float __high2float(__half2 h) { return (float)h.y.v; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2(lo, hi); }
inline __half2 __half2half2(__half h) { return __half2(h, h); }
inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2(a.x, b.x); }
inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2(a.y, b.y); }
inline __half2 make_half2(__half a, __half b) { return __half2(a, b); }
inline unsigned short __half_as_ushort(__half h) { return ngp_bit_cast<unsigned short>(h); }
inline short __half_as_short(__half h) { return ngp_bit_cast<short>(h); }
inline __half __ushort_as_half(unsigned short u) { return ngp_bit_cast<__half>(u); }
inline __half __short_as_half(short u) { return ngp_bit_cast<__half>(u); }
// Arithmetic: computed in float and rounded once to half (the GPU's fp16 units round the exact result once).
inline __half __hadd(__half a, __half b) { return __half((float)a.v + (float)b.v); }
inline __half __hsub(__half a, __half b) { return __half((float)a.v - (float)b.v); }
inline __half __hmul(__half a, __half b) { return __half((float)a.v * (float)b.v); }
inline __half __hdiv(__half a, __half b) { return __half((float)a.v / (float)b.v); }
inline __half __hfma(__half a, __half b, __half c) { return __half(fmaf((float)a.v, (float)b.v, (float)c.v)); }
inline __half __hneg(__half a) { return __half(-(float)a.v); }
inline __half __habs(__half a) { return __half(fabsf((float)a.v)); }
inline __half __hmax(__half a, __half b) { return __half(fmaxf((float)a.v, (float)b.v)); }
inline __half __hmin(__half a, __half b) { return __half(fminf((float)a.v, (float)b.v)); }
inline bool __hisnan(__half a) { return std::isnan((float)a.v); }
inline bool __hisinf(__half a) { return std::isinf((float)a.v); }
inline bool __heq(__half a, __half b) { return (float)a.v == (float)b.v; }
inline bool __hne(__half a, __half b) { return (float)a.v != (float)b.v; }
inline bool __hlt(__half a, __half b) { return (float)a.v < (float)b.v; }
inline bool __hle(__half a, __half b) { return (float)a.v <= (float)b.v; }
inline bool __hgt(__half a, __half b) { return (float)a.v > (float)b.v; }
inline bool __hge(__half a, __half b) { return (float)a.v >= (float)b.v; }
inline __half hsqrt(__half a) { return __half(sqrtf((float)a.v)); }
inline __half hexp(__half a) { return __half(expf((float)a.v)); }
inline __half hlog(__half a) { return __half(logf((float)a.v)); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
inline __half2 __h2div(__half2 a, __half2 b) { return __half2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
    return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}
inline __half2 __hneg2(__half2 a) { return __half2(__hneg(a.x), __hneg(a.y)); }
inline __half2 __habs2(__half2 a) { return __half2(__habs(a.x), __habs(a.y)); }
inline __half2 __hmax2(__half2 a, __half2 b) { return __half2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
inline __half2 __hmin2(__half2 a, __half2 b) { return __half2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }

inline __half operator+(const __half& a, const __half& b) { return __hadd(a, b); }
inline __half operator-(const __half& a, const __half& b) { return __hsub(a, b); }
inline __half operator*(const __half& a, const __half& b) { return __hmul(a, b); }
inline __half operator/(const __half& a, const __half& b) { return __hdiv(a, b); }
inline __half operator-(const __half& a) { return __hneg(a); }
inline __half operator+(const __half& a) { return a; }
inline bool operator==(const __half& a, const __half& b) { return __heq(a, b); }
inline bool operator!=(const __half& a, const __half& b) { return __hne(a, b); }
inline bool operator<(const __half& a, const __half& b) { return __hlt(a, b); }
inline bool operator<=(const __half& a, const __half& b) { return __hle(a, b); }
inline bool operator>(const __half& a, const __half& b) { return __hgt(a, b); }
inline bool operator>=(const __half& a, const __half& b) { return __hge(a, b); }
inline __half2 operator+(const __half2& a, const __half2& b) { return __hadd2(a, b); }
inline __half2 operator-(const __half2& a, const __half2& b) { return __hsub2(a, b); }
inline __half2 operator*(const __half2& a, const __half2& b) { return __hmul2(a, b); }
inline __half2 operator/(const __half2& a, const __half2& b) { return __h2div(a, b); }
inline __half2 operator-(const __half2& a) { return __hneg2(a); }
inline bool operator==(const __half2& a, const __half2& b) { return a.x == b.x && a.y == b.y; }
inline bool operator!=(const __half2& a, const __half2& b) { return !(a == b); }
inline __half2& __half2::operator+=(const __half2& o) { return *this = *this + o; }
inline __half2& __half2::operator-=(const __half2& o) { return *this = *this - o; }
inline __half2& __half2::operator*=(const __half2& o) { return *this = *this * o; }
inline __half2& __half2::operator/=(const __half2& o) { return *this = *this / o; }

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

// ---------------------------------------------------------------------------------------------------------------
// Fibers: the threads of a block when the launch has sync_threads=True
// ---------------------------------------------------------------------------------------------------------------
#ifndef NGP_EMU_USE_UCONTEXT
// Hand-written x86-64 SysV context switch: saves the callee-saved registers on the old stack, swaps stacks.
extern "C" void ngp_emu_switch_ctx(void** save_sp, void* to_sp);
extern "C" void ngp_emu_fiber_start();
__asm__(
    ".text\n"
    ".globl ngp_emu_switch_ctx\n"
    ".hidden ngp_emu_switch_ctx\n"
    ".type ngp_emu_switch_ctx,@function\n"
    "ngp_emu_switch_ctx:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size ngp_emu_switch_ctx, .-ngp_emu_switch_ctx\n"
    ".globl ngp_emu_fiber_start\n"
    ".hidden ngp_emu_fiber_start\n"
    ".type ngp_emu_fiber_start,@function\n"
    "ngp_emu_fiber_start:\n"
    "  movq %r12, %rdi\n"
    "  callq *%r13\n"
    "  ud2\n"
    ".size ngp_emu_fiber_start, .-ngp_emu_fiber_start\n");
#endif

namespace ngp_emu {

constexpr size_t kFiberStack = 256 * 1024;
constexpr unsigned kMaxBlock = 1024;
constexpr unsigned kMaxWarps = kMaxBlock / 32;

struct Fiber {
#ifdef NGP_EMU_USE_UCONTEXT
    ucontext_t uc;
#else
    void* sp;
#endif
    uint3 tid;
    unsigned next, prev;  // ring of live fibers
};

struct BlockState {
    unsigned n = 0;
    unsigned cur = 0;
    unsigned alive = 0;
    unsigned bar_count = 0, bar_gen = 0;
    unsigned bar_acc[2] = {0, 0};  // __syncthreads_count/and/or
    unsigned stall = 0;            // consecutive resumptions without progress (deadlock detection)
    const char* abort_msg = nullptr;
    void (*invoke)(void*) = nullptr;
    void* body = nullptr;
#ifdef NGP_EMU_USE_UCONTEXT
    ucontext_t main_uc;
#else
    void* main_sp = nullptr;
#endif
    Fiber fibers[kMaxBlock];
    unsigned warp_alive[kMaxWarps], warp_count[kMaxWarps], warp_gen[kMaxWarps];
    unsigned char lane_phase[kMaxBlock];
    unsigned long long shfl[kMaxWarps][2][32];
    std::vector<void*> stacks;  // allocated once per worker, reused

    ~BlockState() {
        for (void* s : stacks) munmap(s, kFiberStack);
    }
};

inline BlockState& block_state() {
    static thread_local BlockState* bs = nullptr;
    if (!bs) bs = new BlockState();  // kept for the worker's lifetime (large, so not a TLS object itself)
    return *bs;
}

inline void* alloc_stack() {
    void* p = mmap(nullptr, kFiberStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting memory
    return p;
}

inline void switch_to(BlockState& b, unsigned next) {
    unsigned prev = b.cur;
    if (prev == next) return;
    b.cur = next;
    ctx.tid = b.fibers[next].tid;
#ifdef NGP_EMU_USE_UCONTEXT
    swapcontext(&b.fibers[prev].uc, &b.fibers[next].uc);
#else
    ngp_emu_switch_ctx(&b.fibers[prev].sp, b.fibers[next].sp);
#endif
}

// Leave the block's fibers for good and resume the launcher's context.
[[noreturn]] inline void return_to_main(BlockState& b) {
    void* dummy;
    (void)dummy;
#ifdef NGP_EMU_USE_UCONTEXT
    setcontext(&b.main_uc);
#else
    ngp_emu_switch_ctx(&dummy, b.main_sp);
#endif
    __builtin_unreachable();
}

[[noreturn]] inline void abort_block(BlockState& b, const char* msg) {
    b.abort_msg = msg;
    return_to_main(b);
}

// Give the CPU to the next live fiber; counts resumptions without progress to detect a deadlock.
inline void yield_blocked(BlockState& b) {
    if (++b.stall > 2 * b.alive + 4)
        abort_block(b, "deadlock: the threads of a block wait at different barriers (divergent __syncthreads or warp "
                       "intrinsic)");
    switch_to(b, b.fibers[b.cur].next);
}

inline void fiber_exit(BlockState& b) {
    unsigned me = b.cur;
    unsigned w = linear_tid() / 32;
    b.stall = 0;
    b.alive--;
    b.warp_alive[w]--;
    // Exited threads no longer take part in barriers.
    if (b.bar_count > 0 && b.bar_count >= b.alive) {
        b.bar_count = 0;
        b.bar_gen++;
        b.bar_acc[b.bar_gen & 1] = 0;
    }
    if (b.warp_count[w] > 0 && b.warp_count[w] >= b.warp_alive[w]) {
        b.warp_count[w] = 0;
        b.warp_gen[w]++;
    }
    if (b.alive == 0) return_to_main(b);
    Fiber& f = b.fibers[me];
    b.fibers[f.prev].next = f.next;
    b.fibers[f.next].prev = f.prev;
    unsigned next = f.next;
    b.cur = next;
    ctx.tid = b.fibers[next].tid;
    void* dummy;
    (void)dummy;
#ifdef NGP_EMU_USE_UCONTEXT
    setcontext(&b.fibers[next].uc);
#else
    ngp_emu_switch_ctx(&dummy, b.fibers[next].sp);
#endif
    __builtin_unreachable();
}

extern "C" inline void ngp_emu_fiber_main(void*) {
    BlockState& b = *ctx.block;
    b.invoke(b.body);
    fiber_exit(b);
}

// Barrier over the live threads of the block; returns the barrier generation passed.
inline unsigned block_barrier(BlockState& b) {
    unsigned gen = b.bar_gen;
    b.stall = 0;
    if (++b.bar_count >= b.alive) {
        b.bar_count = 0;
        b.bar_gen++;
        b.bar_acc[b.bar_gen & 1] = 0;
        return gen;
    }
    while (b.bar_gen == gen) yield_blocked(b);
    return gen;
}

inline void warp_barrier(BlockState& b, unsigned w) {
    unsigned gen = b.warp_gen[w];
    b.stall = 0;
    if (++b.warp_count[w] >= b.warp_alive[w]) {
        b.warp_count[w] = 0;
        b.warp_gen[w]++;
        return;
    }
    while (b.warp_gen[w] == gen) yield_blocked(b);
}

[[noreturn]] inline void fail_no_fibers(const char* what) {
    snprintf(ctx.errbuf, sizeof(ctx.errbuf),
             "%s reached in a block of %u threads launched without sync_threads=True", what, ctx.nthreads);
    fail(ctx.errbuf);
}

[[noreturn]] inline void fail(const char* msg) {
    if (ctx.in_fiber) abort_block(*ctx.block, msg);
    ctx.err = msg;
    longjmp(*ctx.jb, 1);
}

// Whole-warp exchange: every lane publishes 8 bytes, waits for its warp, and gets the warp's slots. Two slot sets
// alternate so that a fast lane's next exchange cannot overwrite a slot a slow lane has still to read.
inline const unsigned long long* warp_exchange(unsigned long long bits, unsigned& lane, unsigned& nlanes) {
    BlockState& b = *ctx.block;
    unsigned t = linear_tid();
    unsigned w = t / 32;
    lane = t % 32;
    nlanes = std::min(32u, ctx.nthreads - 32 * w);
    unsigned ph = b.lane_phase[t];
    b.lane_phase[t] = ph ^ 1;
    b.shfl[w][ph][lane] = bits;
    warp_barrier(b, w);
    return b.shfl[w][ph];
}

template <typename T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of an unsupported type");
    unsigned long long r = 0;
    memcpy(&r, &v, sizeof(T));
    return r;
}
template <typename T>
inline T from_bits(unsigned long long r) {
    T v;
    memcpy(&v, &r, sizeof(T));
    return v;
}

// src(lane) gives the source lane, or -1 for "keep the own value".
template <typename T, typename Src>
inline T shuffle(T var, Src src) {
    if (ctx.nthreads <= 1) {
        int s = src(0u, 1u);
        (void)s;
        return var;
    }
    if (!ctx.in_fiber) fail_no_fibers("a warp shuffle");
    unsigned lane, nlanes;
    const unsigned long long* slots = warp_exchange(to_bits(var), lane, nlanes);
    int s = src(lane, nlanes);
    if (s < 0 || (unsigned)s >= nlanes) return var;
    return from_bits<T>(slots[s]);
}

}  // namespace ngp_emu

inline void __syncthreads() {
    if (ngp_emu::ctx.nthreads <= 1) return;
    if (!ngp_emu::ctx.in_fiber) ngp_emu::fail_no_fibers("__syncthreads()");
    ngp_emu::block_barrier(*ngp_emu::ctx.block);
}
namespace ngp_emu {
inline unsigned syncthreads_reduce(unsigned v, int op) {  // op: 0 sum, 1 and, 2 or
    if (ctx.nthreads <= 1) return v;
    if (!ctx.in_fiber) fail_no_fibers("__syncthreads_count/and/or()");
    BlockState& b = *ctx.block;
    unsigned slot = b.bar_gen & 1;
    if (b.bar_count == 0) b.bar_acc[slot] = op == 1 ? 1u : 0u;
    if (op == 0)
        b.bar_acc[slot] += v;
    else if (op == 1)
        b.bar_acc[slot] &= (v != 0);
    else
        b.bar_acc[slot] |= (v != 0);
    unsigned gen = block_barrier(b);
    return b.bar_acc[gen & 1];
}
}  // namespace ngp_emu
inline int __syncthreads_count(int pred) { return (int)ngp_emu::syncthreads_reduce(pred != 0, 0); }
inline int __syncthreads_and(int pred) { return (int)ngp_emu::syncthreads_reduce(pred != 0, 1); }
inline int __syncthreads_or(int pred) { return (int)ngp_emu::syncthreads_reduce(pred != 0, 2); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    if (ngp_emu::ctx.nthreads <= 1) return;
    if (!ngp_emu::ctx.in_fiber) ngp_emu::fail_no_fibers("__syncwarp()");
    ngp_emu::warp_barrier(*ngp_emu::ctx.block, ngp_emu::linear_tid() / 32);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        return (int)((lane / width) * width + ((unsigned)srcLane % (unsigned)width));
    });
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        unsigned s = lane ^ (unsigned)laneMask;
        return s / width == lane / width ? (int)s : -1;
    });
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        return (lane % width) + delta < (unsigned)width ? (int)(lane + delta) : -1;
    });
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    return ngp_emu::shuffle(var, [=](unsigned lane, unsigned) {
        return (lane % width) >= delta ? (int)(lane - delta) : -1;
    });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    using namespace ngp_emu;
    if (ctx.nthreads <= 1) return pred ? (mask & 1u) : 0u;
    if (!ctx.in_fiber) fail_no_fibers("__ballot_sync()");
    unsigned lane, nlanes;
    const unsigned long long* slots = warp_exchange(pred ? 1ull : 0ull, lane, nlanes);
    unsigned r = 0;
    for (unsigned i = 0; i < nlanes; ++i) r |= (slots[i] ? 1u : 0u) << i;
    return r & mask;
}
inline int __all_sync(unsigned mask, int pred) {
    unsigned b = __ballot_sync(0xffffffffu, pred);
    using namespace ngp_emu;
    unsigned nl = ctx.nthreads <= 1 ? 1u : std::min(32u, ctx.nthreads - 32 * (linear_tid() / 32));
    unsigned live = (nl >= 32 ? 0xffffffffu : ((1u << nl) - 1)) & mask;
    return (b & live) == live;
}
inline int __any_sync(unsigned mask, int pred) { return (__ballot_sync(mask, pred) & mask) != 0; }
inline unsigned __activemask() {
    using namespace ngp_emu;
    unsigned nl = ctx.nthreads <= 1 ? 1u : std::min(32u, ctx.nthreads - 32 * (linear_tid() / 32));
    return nl >= 32 ? 0xffffffffu : ((1u << nl) - 1);
}

// ---------------------------------------------------------------------------------------------------------------
// nvcuda::wmma, m16n16k16, whole-tile semantics: x[] holds the whole 16x16 tile in row-major order (row, col of the
// mathematical matrix: A is M x K, B is K x N, C/D are M x N) on every lane.
// ---------------------------------------------------------------------------------------------------------------
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the CPU emulation supports m16n16k16 only");
    enum { num_elements = 256 };
    typedef T element_type;
    T x[256];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const T& v) {
    for (int i = 0; i < 256; ++i) f.x[i] = v;
}
template <typename Use, int M, int N, int K, typename T, typename L, typename V>
inline typename std::enable_if<!std::is_same<T, V>::value>::type fill_fragment(fragment<Use, M, N, K, T, L>& f,
                                                                              const V& v) {
    T t = T(v);
    for (int i = 0; i < 256; ++i) f.x[i] = t;
}

namespace detail {
// Element (r, c) of the tile at p: row_major => p[r * ldm + c], col_major => p[c * ldm + r].
template <typename T, typename S>
inline void load_tile(T* x, const S* p, unsigned ldm, bool col) {
    if (!col) {
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c) x[r * 16 + c] = T(p[(size_t)r * ldm + c]);
    } else {
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c) x[r * 16 + c] = T(p[(size_t)c * ldm + r]);
    }
}
template <typename T, typename S>
inline void store_tile(S* p, const T* x, unsigned ldm, bool col) {
    if (!col) {
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c) p[(size_t)r * ldm + c] = S(x[r * 16 + c]);
    } else {
        for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c) p[(size_t)c * ldm + r] = S(x[r * 16 + c]);
    }
}
inline void to_float(float* out, const float* x) { memcpy(out, x, 256 * sizeof(float)); }
template <typename T>
inline void to_float(float* out, const T* x) {
    for (int i = 0; i < 256; ++i) out[i] = (float)x[i];
}
}  // namespace detail

// matrix_a / matrix_b fragments, either layout (the accumulator overload below takes the layout at run time).
template <typename Use, typename T, typename Layout, typename S>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const S* p, unsigned ldm) {
    detail::load_tile(f.x, p, ldm, std::is_same<Layout, col_major>::value);
}
template <typename T, typename S>
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T, void>& f, const S* p, unsigned ldm,
                             layout_t layout) {
    detail::load_tile(f.x, p, ldm, layout == mem_col_major);
}
template <typename T, typename S>
inline void store_matrix_sync(S* p, const fragment<accumulator, 16, 16, 16, T, void>& f, unsigned ldm,
                              layout_t layout) {
    detail::store_tile(p, f.x, ldm, layout == mem_col_major);
}

// D = A B + C, accumulated in fp32 (like the tensor cores), rounded once to the accumulator type.
template <typename TA, typename LA, typename TB, typename LB, typename TC, typename TD>
inline void mma_sync(fragment<accumulator, 16, 16, 16, TD, void>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
                     const fragment<accumulator, 16, 16, 16, TC, void>& c) {
    alignas(64) float fa[256], fb[256], acc[256];
    detail::to_float(fa, a.x);
    detail::to_float(fb, b.x);
    detail::to_float(acc, c.x);
    for (int i = 0; i < 16; ++i) {
        float* __restrict__ row = acc + i * 16;
        for (int k = 0; k < 16; ++k) {
            const float aik = fa[i * 16 + k];
            const float* __restrict__ brow = fb + k * 16;
            for (int j = 0; j < 16; ++j) row[j] += aik * brow[j];
        }
    }
    for (int i = 0; i < 256; ++i) d.x[i] = TD(acc[i]);
}
}  // namespace wmma
}  // namespace nvcuda

// ---------------------------------------------------------------------------------------------------------------
// Block runner
// ---------------------------------------------------------------------------------------------------------------
namespace ngp_emu {

template <typename F>
struct Job {
    const LaunchDesc* d;
    F* body;
    std::atomic<int> failed{0};
    char msg[512];
};

inline unsigned char* dyn_smem_buffer(size_t bytes) {
    static thread_local std::vector<unsigned char> buf;
    if (buf.size() < bytes + 64) buf.resize(bytes + 64);
    uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<unsigned char*>((p + 63) & ~uintptr_t(63));
}

template <typename F>
inline void invoke_body(void* p) {
    (*static_cast<F*>(p))();
}

// Runs one block with its threads as fibers (caller has set ctx.bid etc.).
template <typename F>
inline void run_block_fibers(F& body) {
    BlockState& b = block_state();
    const unsigned n = ctx.nthreads;
    while (b.stacks.size() < n) {
        void* s = alloc_stack();
        if (!s) fail("cannot allocate fiber stacks (mmap failed)");
        b.stacks.push_back(s);
    }
    b.n = n;
    b.alive = n;
    b.bar_count = 0;
    b.bar_gen = 0;
    b.bar_acc[0] = b.bar_acc[1] = 0;
    b.stall = 0;
    b.abort_msg = nullptr;
    b.invoke = &invoke_body<F>;
    b.body = &body;
    const unsigned nw = (n + 31) / 32;
    for (unsigned w = 0; w < nw; ++w) {
        b.warp_alive[w] = std::min(32u, n - 32 * w);
        b.warp_count[w] = 0;
        b.warp_gen[w] = 0;
    }
    const unsigned bx = ctx.bdim.x, by = ctx.bdim.y;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.tid = uint3{t % bx, (t / bx) % by, t / (bx * by)};
        f.next = t + 1 == n ? 0 : t + 1;
        f.prev = t == 0 ? n - 1 : t - 1;
        b.lane_phase[t] = 0;
        // Stagger the stack tops (the stacks are 256 KiB aligned): identical low address bits would make every
        // fiber's hot stack lines compete for the same cache sets.
        char* top = static_cast<char*>(b.stacks[t]) + kFiberStack - ((t * 1088u) % 65536u);
#ifdef NGP_EMU_USE_UCONTEXT
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = b.stacks[t];
        f.uc.uc_stack.ss_size = kFiberStack;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, (void (*)())ngp_emu_fiber_main, 1, nullptr);
        (void)top;
#else
        void** sp = reinterpret_cast<void**>(top - 72);
        sp[0] = nullptr;                                              // r15
        sp[1] = nullptr;                                              // r14
        sp[2] = reinterpret_cast<void*>(&ngp_emu_fiber_main);        // r13: function
        sp[3] = nullptr;                                              // r12: argument
        sp[4] = nullptr;                                              // rbx
        sp[5] = nullptr;                                              // rbp
        sp[6] = reinterpret_cast<void*>(&ngp_emu_fiber_start);       // return address
        f.sp = sp;
#endif
    }
    ctx.block = &b;
    ctx.in_fiber = 1;
    b.cur = 0;
    ctx.tid = b.fibers[0].tid;
#ifdef NGP_EMU_USE_UCONTEXT
    swapcontext(&b.main_uc, &b.fibers[0].uc);
#else
    ngp_emu_switch_ctx(&b.main_sp, b.fibers[0].sp);
#endif
    ctx.in_fiber = 0;
    if (b.abort_msg) {
        ctx.err = b.abort_msg;
        longjmp(*ctx.jb, 1);
    }
}

template <typename F>
inline void run_block(F& body, bool fibers) {
    if (fibers && ctx.nthreads > 1) {
        run_block_fibers(body);
        return;
    }
    const unsigned bx = ctx.bdim.x, by = ctx.bdim.y, bz = ctx.bdim.z;
    for (unsigned z = 0; z < bz; ++z)
        for (unsigned y = 0; y < by; ++y)
            for (unsigned x = 0; x < bx; ++x) {
                ctx.tid.x = x;
                ctx.tid.y = y;
                ctx.tid.z = z;
                body();
            }
}

// The blocks of items [begin, end): separate from run_items so that setjmp does not pessimise the thread loops.
template <typename F>
__attribute__((noinline)) void run_range(Job<F>& job, long long begin, long long end) {
    const LaunchDesc* d = job.d;
    F& body = *job.body;
    const bool fibers = (d->flags & FLAG_FIBERS) != 0;
    const unsigned gx = d->grid[0], gy = d->grid[1], gz = d->grid[2];
    const size_t shmem = d->shared_bytes;
    Ctx& c = ctx;
    if (d->flags & FLAG_EXCLUSIVE_Y) {
        // An item is a whole blockIdx.y row (all x and z): no other worker touches that row's outputs.
        for (long long y = begin; y < end; ++y)
            for (unsigned z = 0; z < gz; ++z)
                for (unsigned x = 0; x < gx; ++x) {
                    c.bid = uint3{x, (unsigned)y, z};
                    if (shmem) memset(c.dyn_smem, 0xFF, shmem);
                    run_block(body, fibers);
                }
    } else {
        unsigned x = (unsigned)(begin % gx);
        long long r = begin / gx;
        unsigned y = (unsigned)(r % gy), z = (unsigned)(r / gy);
        for (long long i = begin; i < end; ++i) {
            c.bid = uint3{x, y, z};
            if (shmem) memset(c.dyn_smem, 0xFF, shmem);
            run_block(body, fibers);
            if (++x == gx) {
                x = 0;
                if (++y == gy) {
                    y = 0;
                    ++z;
                }
            }
        }
    }
}

template <typename F>
inline void run_items(void* arg, int worker, long long begin, long long end) {
    (void)worker;
    Job<F>& job = *static_cast<Job<F>*>(arg);
    if (job.failed.load(std::memory_order_relaxed)) return;
    const LaunchDesc* d = job.d;
    const size_t shmem = d->shared_bytes;
    Ctx& c = ctx;
    c.bdim = dim3(d->block[0], d->block[1], d->block[2]);
    c.gdim = dim3(d->grid[0], d->grid[1], d->grid[2]);
    c.nthreads = d->block[0] * d->block[1] * d->block[2];
    c.exclusive = (d->flags & FLAG_EXCLUSIVE_Y) ? 1 : 0;
    c.in_fiber = 0;
    c.block = nullptr;
    c.err = nullptr;
    c.dyn_smem = shmem ? dyn_smem_buffer(shmem) : nullptr;
    jmp_buf jb;
    c.jb = &jb;
    if (setjmp(jb)) {
        Ctx& e = ctx;
        if (!job.failed.exchange(1)) {
            snprintf(job.msg, sizeof(job.msg), "%s (block %u,%u,%u thread %u,%u,%u)", e.err ? e.err : "error",
                     e.bid.x, e.bid.y, e.bid.z, e.tid.x, e.tid.y, e.tid.z);
        }
        e.in_fiber = 0;
        e.block = nullptr;
        e.exclusive = 0;
        return;
    }
    run_range(job, begin, end);
    ctx.exclusive = 0;
}

template <typename T>
struct fn_args;
template <typename... A>
struct fn_args<void (*)(A...)> {
    using type = std::tuple<typename std::remove_cv<typename std::remove_reference<A>::type>::type...>;
};

template <typename Tuple, size_t... I>
inline Tuple unpack_params(void** params, std::index_sequence<I...>) {
    return Tuple{*static_cast<typename std::tuple_element<I, Tuple>::type*>(params[I])...};
}

// Entry point of one kernel: runtime.py calls ngp_launch_<name>(const LaunchDesc*), 0 = success, else the error
// message is in d->err.
template <auto Kernel>
inline int launch_kernel(const LaunchDesc* d) {
    using Args = typename fn_args<decltype(Kernel)>::type;
    Args args = unpack_params<Args>(d->params, std::make_index_sequence<std::tuple_size<Args>::value>{});
    auto body = [&args]() { std::apply(Kernel, args); };
    using F = decltype(body);
    Job<F> job;
    job.d = d;
    job.body = &body;
    job.msg[0] = 0;
    const long long gx = d->grid[0], gy = d->grid[1], gz = d->grid[2];
    long long nitems, chunk;
    if (d->flags & FLAG_EXCLUSIVE_Y) {
        nitems = gy;
        chunk = 1;
    } else {
        nitems = gx * gy * gz;
        chunk = std::max(1LL, nitems / (std::max(1LL, d->nthreads) * 16));
    }
    if (nitems <= 0) return 0;
    if (d->nthreads <= 1 || nitems <= chunk || !d->pool_run) {
        run_items<F>(&job, 0, 0, nitems);
    } else {
        int rc = d->pool_run((int)d->nthreads, nitems, chunk, &run_items<F>, &job);
        if (rc != 0) {
            snprintf(d->err, d->err_len, "the CPU worker pool failed (code %d)", rc);
            return 2;
        }
    }
    if (job.failed.load()) {
        snprintf(d->err, d->err_len, "%s", job.msg);
        return 1;
    }
    return 0;
}

}  // namespace ngp_emu

#define NGP_EMU_EXPORT_KERNEL(name)                                                                       \
    extern "C" __attribute__((visibility("default"))) int ngp_launch_##name(const ngp_emu::LaunchDesc* d) { \
        return ngp_emu::launch_kernel<&name>(d);                                                          \
    }
