// __half / __half2 (the cuda_fp16.h subset the kernels use) on _Float16: conversions, arithmetic computed in float
// and rounded once, comparisons and operators. Part of the CUDA emulation that cpu_emu.h assembles for the CPU
// target (docs/kernels.md): cpu_emu.h includes the parts in order, and each relies on the ones before it.
#pragma once

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
