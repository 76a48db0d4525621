// nvcuda::wmma m16n16k16 fragments with whole-tile semantics (every lane holds the whole 16x16 tile): fill, load,
// store and mma_sync (accumulated in fp32). Part of the CUDA emulation that cpu_emu.h assembles for the CPU target
// (docs/kernels.md): cpu_emu.h includes the parts in order, and each relies on the ones before it.
#pragma once

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
