/* metal_prelude.h -- the Metal Shading Language subset, emulated in C++17.
 *
 * A .metal file compiles as C++ with this header force-included (-include)
 * and the generator's launch thunks appended. Supported (docs/metal.md has
 * the list and the limits): address-space qualifiers and `kernel` (empty
 * macros); scalar types including `half` (_Float16); vectors of 2/3/4 with
 * .x/.y/.z/.w, indexing, constructors, arithmetic and comparisons (3-vectors
 * are 4-aligned like MSL's); math with metal::fast / metal::precise; as_type;
 * threadgroup and simdgroup barriers; simd_sum/min/max/prefix sums, shuffles
 * and broadcasts; simdgroup_float8x8 / half8x8 load/store/multiply_accumulate
 * with Apple's lane layout; function constants as per-pipeline values.
 *
 * Every synchronizing call is a collective of the runtime: it records the
 * caller's file:line so a barrier or collective that some threads miss is
 * reported by name. Standard headers come first: the address-space macros
 * below would break them.
 */
#ifndef SC_METAL_PRELUDE_H
#define SC_METAL_PRELUDE_H

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "emu_abi.h"

extern "C" const sc_emu_api *sc_emu_rt; /* set by sc_emu_module_init */

namespace metal {

typedef _Float16 half;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;

/* ------------------------------------------------------------ vectors */
template <class T, int N> struct vec;

/* A swizzle member (v.xy, v.xyz, v.zw, ...) of a vector whose storage is
 * T d[N]: reads as a vector, assigns element-wise through to its components,
 * and takes part in arithmetic. Pass one to a function through a
 * constructor, e.g. dot(float3(v.xyz), w), as template deduction does not
 * see through it. */
template <class T, int N, int... I> struct swizzle {
    T d[N];
    using vec_t = vec<T, int(sizeof...(I))>;
    operator vec_t() const { return vec_t(d[I]...); }
    swizzle &operator=(const vec_t &v) {
        const T vals[] = {v[0], v[1], v[2 < sizeof...(I) ? 2 : 0], v[3 < sizeof...(I) ? 3 : 0]};
        int k = 0;
        ((d[I] = vals[k++]), ...);
        return *this;
    }
    swizzle &operator=(const swizzle &o) { return *this = vec_t(o); }
};

#define SC_VEC_COMMON(N)                                                                          \
    using value_type = T;                                                                         \
    static constexpr int size = N;                                                                \
    T &operator[](int i) { return (&x)[i]; }                                                      \
    const T &operator[](int i) const { return (&x)[i]; }                                          \
    vec(const vec &o) = default;                                                                  \
    vec &operator=(const vec &o) {                                                                \
        for (int i = 0; i < N; i++) (&x)[i] = (&o.x)[i];                                          \
        return *this;                                                                             \
    }

template <class T> struct vec<T, 2> {
    union {
        struct { T x, y; };
        swizzle<T, 2, 1, 0> yx;
    };
    SC_VEC_COMMON(2)
    vec() = default;
    constexpr vec(T s) : x(s), y(s) {}
    constexpr vec(T a, T b) : x(a), y(b) {}
    template <class U> explicit constexpr vec(const vec<U, 2> &o) : x(T(o.x)), y(T(o.y)) {}
};
template <class T> struct alignas(4 * sizeof(T)) vec<T, 3> {
    union {
        struct { T x, y, z; };
        swizzle<T, 3, 0, 1> xy;
        swizzle<T, 3, 1, 2> yz;
        swizzle<T, 3, 0, 2> xz;
        swizzle<T, 3, 2, 1, 0> zyx;
    };
    SC_VEC_COMMON(3)
    vec() = default;
    constexpr vec(T s) : x(s), y(s), z(s) {}
    constexpr vec(T a, T b, T c) : x(a), y(b), z(c) {}
    constexpr vec(vec<T, 2> a, T c) : x(a.x), y(a.y), z(c) {}
    template <class U> explicit constexpr vec(const vec<U, 3> &o) : x(T(o.x)), y(T(o.y)), z(T(o.z)) {}
};
template <class T> struct alignas(4 * sizeof(T)) vec<T, 4> {
    union {
        struct { T x, y, z, w; };
        swizzle<T, 4, 0, 1> xy;
        swizzle<T, 4, 1, 2> yz;
        swizzle<T, 4, 2, 3> zw;
        swizzle<T, 4, 0, 2> xz;
        swizzle<T, 4, 1, 3> yw;
        swizzle<T, 4, 0, 1, 2> xyz;
        swizzle<T, 4, 1, 2, 3> yzw;
        swizzle<T, 4, 3, 2, 1, 0> wzyx;
    };
    SC_VEC_COMMON(4)
    vec() = default;
    constexpr vec(T s) : x(s), y(s), z(s), w(s) {}
    constexpr vec(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}
    constexpr vec(vec<T, 2> a, vec<T, 2> b) : x(a.x), y(a.y), z(b.x), w(b.y) {}
    constexpr vec(vec<T, 3> a, T d) : x(a.x), y(a.y), z(a.z), w(d) {}
    constexpr vec(vec<T, 2> a, T c, T d) : x(a.x), y(a.y), z(c), w(d) {}
    template <class U> explicit constexpr vec(const vec<U, 4> &o) : x(T(o.x)), y(T(o.y)), z(T(o.z)), w(T(o.w)) {}
};
#undef SC_VEC_COMMON

/* swizzles in arithmetic: convert, then use the vector operators */
template <class T> struct is_swizzle : std::false_type {};
template <class T, int N, int... I> struct is_swizzle<swizzle<T, N, I...>> : std::true_type {};
template <class A> inline const A &as_vec(const A &a) { return a; }
template <class T, int N, int... I> inline vec<T, int(sizeof...(I))> as_vec(const swizzle<T, N, I...> &s) {
    return s;
}
#define SC_SWZ_OP(op)                                                                             \
    template <class A, class B, class = std::enable_if_t<is_swizzle<A>::value || is_swizzle<B>::value>> \
    inline auto operator op(const A &a, const B &b) { return as_vec(a) op as_vec(b); }
SC_SWZ_OP(+)
SC_SWZ_OP(-)
SC_SWZ_OP(*)
SC_SWZ_OP(/)
#undef SC_SWZ_OP

template <class T> struct is_vec : std::false_type {};
template <class T, int N> struct is_vec<vec<T, N>> : std::true_type {};

#define SC_VEC_BINOP(op)                                                                          \
    template <class T, int N> inline vec<T, N> operator op(vec<T, N> a, vec<T, N> b) {             \
        for (int i = 0; i < N; i++) a[i] = T(a[i] op b[i]);                                       \
        return a;                                                                                 \
    }                                                                                             \
    template <class T, int N, class S, class = std::enable_if_t<std::is_arithmetic<S>::value ||   \
                                                              std::is_same<S, _Float16>::value>>  \
    inline vec<T, N> operator op(vec<T, N> a, S s) {                                              \
        for (int i = 0; i < N; i++) a[i] = T(a[i] op T(s));                                       \
        return a;                                                                                 \
    }                                                                                             \
    template <class T, int N, class S, class = std::enable_if_t<std::is_arithmetic<S>::value ||   \
                                                              std::is_same<S, _Float16>::value>>  \
    inline vec<T, N> operator op(S s, vec<T, N> a) {                                              \
        for (int i = 0; i < N; i++) a[i] = T(T(s) op a[i]);                                       \
        return a;                                                                                 \
    }                                                                                             \
    template <class T, int N, class S> inline vec<T, N> &operator op##=(vec<T, N> &a, S b) {       \
        a = a op b;                                                                               \
        return a;                                                                                 \
    }
SC_VEC_BINOP(+)
SC_VEC_BINOP(-)
SC_VEC_BINOP(*)
SC_VEC_BINOP(/)
SC_VEC_BINOP(&)
SC_VEC_BINOP(|)
SC_VEC_BINOP(^)
SC_VEC_BINOP(<<)
SC_VEC_BINOP(>>)
#undef SC_VEC_BINOP
template <class T, int N> inline vec<T, N> operator-(vec<T, N> a) {
    for (int i = 0; i < N; i++) a[i] = -a[i];
    return a;
}
#define SC_VEC_CMP(op)                                                                            \
    template <class T, int N> inline vec<bool, N> operator op(vec<T, N> a, vec<T, N> b) {          \
        vec<bool, N> r;                                                                           \
        for (int i = 0; i < N; i++) r[i] = a[i] op b[i];                                          \
        return r;                                                                                 \
    }
SC_VEC_CMP(<)
SC_VEC_CMP(<=)
SC_VEC_CMP(>)
SC_VEC_CMP(>=)
SC_VEC_CMP(==)
SC_VEC_CMP(!=)
#undef SC_VEC_CMP

#define SC_VEC_TYPES(T, name)                                                                     \
    typedef vec<T, 2> name##2;                                                                    \
    typedef vec<T, 3> name##3;                                                                    \
    typedef vec<T, 4> name##4;
SC_VEC_TYPES(float, float)
SC_VEC_TYPES(half, half)
SC_VEC_TYPES(int, int)
SC_VEC_TYPES(uint, uint)
SC_VEC_TYPES(short, short)
SC_VEC_TYPES(ushort, ushort)
SC_VEC_TYPES(signed char, char)
SC_VEC_TYPES(uchar, uchar)
SC_VEC_TYPES(bool, bool)
SC_VEC_TYPES(long, long)
SC_VEC_TYPES(ulong, ulong)
#undef SC_VEC_TYPES

template <int N> inline bool all(vec<bool, N> v) {
    for (int i = 0; i < N; i++)
        if (!v[i]) return false;
    return true;
}
template <int N> inline bool any(vec<bool, N> v) {
    for (int i = 0; i < N; i++)
        if (v[i]) return true;
    return false;
}

/* ------------------------------------------------------------ as_type */
template <class To, class From> inline To as_type(const From &f) {
    static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
    To t;
    std::memcpy(&t, &f, sizeof t);
    return t;
}

/* ------------------------------------------------------------ math */
/* Scalars compute in float for half (MSL evaluates half math at least that well). */
#define SC_MATH1(name, expr)                                                                      \
    inline float name(float x) { return expr; }                                                   \
    inline half name(half h) {                                                                    \
        float x = float(h);                                                                       \
        return half(expr);                                                                        \
    }                                                                                             \
    template <class T, int N> inline vec<T, N> name(vec<T, N> v) {                                \
        for (int i = 0; i < N; i++) v[i] = name(v[i]);                                            \
        return v;                                                                                 \
    }
SC_MATH1(exp, std::exp(x))
SC_MATH1(exp2, std::exp2(x))
SC_MATH1(log, std::log(x))
SC_MATH1(log2, std::log2(x))
SC_MATH1(sqrt, std::sqrt(x))
SC_MATH1(rsqrt, 1.0f / std::sqrt(x))
SC_MATH1(fabs, std::fabs(x))
SC_MATH1(floor, std::floor(x))
SC_MATH1(ceil, std::ceil(x))
SC_MATH1(round, std::round(x))
SC_MATH1(rint, std::rint(x))
SC_MATH1(trunc, std::trunc(x))
SC_MATH1(sin, std::sin(x))
SC_MATH1(cos, std::cos(x))
SC_MATH1(tanh, std::tanh(x))
SC_MATH1(fract, x - std::floor(x))
#undef SC_MATH1
inline float pow(float a, float b) { return std::pow(a, b); }
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline half fma(half a, half b, half c) { return half(std::fma(float(a), float(b), float(c))); }
inline bool isinf(float x) { return std::isinf(x); }
inline bool isnan(float x) { return std::isnan(x); }
inline bool isfinite(float x) { return std::isfinite(x); }

template <class T, class = std::enable_if_t<std::is_arithmetic<T>::value || std::is_same<T, half>::value>>
inline T abs(T x) { return x < T(0) ? T(-x) : x; }
template <class T, class = std::enable_if_t<std::is_arithmetic<T>::value || std::is_same<T, half>::value>>
inline T max(T a, T b) { return a > b ? a : b; }
template <class T, class = std::enable_if_t<std::is_arithmetic<T>::value || std::is_same<T, half>::value>>
inline T min(T a, T b) { return a < b ? a : b; }
inline float fmax(float a, float b) { return std::fmax(a, b); }
inline float fmin(float a, float b) { return std::fmin(a, b); }
template <class T> inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T, int N> inline vec<T, N> abs(vec<T, N> v) {
    for (int i = 0; i < N; i++) v[i] = abs(v[i]);
    return v;
}
template <class T, int N> inline vec<T, N> max(vec<T, N> a, vec<T, N> b) {
    for (int i = 0; i < N; i++) a[i] = max(a[i], b[i]);
    return a;
}
template <class T, int N> inline vec<T, N> min(vec<T, N> a, vec<T, N> b) {
    for (int i = 0; i < N; i++) a[i] = min(a[i], b[i]);
    return a;
}
template <class T, int N> inline vec<T, N> clamp(vec<T, N> v, vec<T, N> lo, vec<T, N> hi) {
    return min(max(v, lo), hi);
}
template <class T, int N> inline vec<T, N> clamp(vec<T, N> v, T lo, T hi) {
    return min(max(v, vec<T, N>(lo)), vec<T, N>(hi));
}
template <class T, int N> inline vec<T, N> fma(vec<T, N> a, vec<T, N> b, vec<T, N> c) {
    for (int i = 0; i < N; i++) a[i] = fma(a[i], b[i], c[i]);
    return a;
}
template <class T, int N> inline T dot(vec<T, N> a, vec<T, N> b) {
    float s = 0.0f;
    for (int i = 0; i < N; i++) s += float(a[i]) * float(b[i]);
    return T(s);
}
template <class T> inline T select(T a, T b, bool c) { return c ? b : a; }
template <class T, int N> inline vec<T, N> select(vec<T, N> a, vec<T, N> b, vec<bool, N> c) {
    for (int i = 0; i < N; i++) a[i] = c[i] ? b[i] : a[i];
    return a;
}
template <class T> inline T mix(T a, T b, T t) { return a + (b - a) * t; }

/* fast:: and precise:: name the same functions here (the emulator is not a
 * precision oracle). Using-declarations, not a using-directive: a directive
 * silently picked the wrong overload in the feasibility study. */
namespace fast {
using metal::exp; using metal::exp2; using metal::log; using metal::log2; using metal::sqrt;
using metal::rsqrt; using metal::max; using metal::min; using metal::abs; using metal::clamp;
using metal::tanh; using metal::pow; using metal::fma; using metal::fabs;
}
namespace precise {
using metal::exp; using metal::exp2; using metal::log; using metal::log2; using metal::sqrt;
using metal::rsqrt; using metal::max; using metal::min; using metal::abs; using metal::clamp;
using metal::tanh; using metal::pow; using metal::fma; using metal::fabs;
}

/* ------------------------------------------------------------ barriers */
enum class mem_flags : uint { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint(a) | uint(b)); }

inline void threadgroup_barrier(mem_flags, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    sc_emu_rt->threadgroup_barrier(file, line);
}
inline void simdgroup_barrier(mem_flags, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    sc_emu_rt->simdgroup_barrier(file, line);
}

/* ------------------------------------------------------------ SIMD-group functions */
namespace detail {
template <class T> struct lanes {
    T v[SC_EMU_SIMD_WIDTH];
    uint32_t active;
    uint32_t self;
    bool on(uint32_t l) const { return l < SC_EMU_SIMD_WIDTH && ((active >> l) & 1u); }
};
template <class T> inline lanes<T> exchange(const T &x, const char *file, int line) {
    lanes<T> a;
    sc_emu_rt->simd_exchange(&x, sizeof(T), a.v, &a.active, file, line);
    a.self = sc_emu_rt->self()->lane;
    return a;
}
template <class T> inline T add(T a, T b) { return T(a + b); }
template <class T> inline T mx(T a, T b) { return max(a, b); }
template <class T> inline T mn(T a, T b) { return min(a, b); }
template <class T, int N> inline vec<T, N> mx(vec<T, N> a, vec<T, N> b) { return max(a, b); }
template <class T, int N> inline vec<T, N> mn(vec<T, N> a, vec<T, N> b) { return min(a, b); }
}  // namespace detail

#define SC_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
/* reductions run in lane order over the active lanes (deterministic) */
#define SC_SIMD_REDUCE(name, fn)                                                                  \
    template <class T> inline T name(T x, SC_SITE) {                                              \
        auto a = detail::exchange(x, file, line);                                                 \
        bool first = true;                                                                        \
        T r = x;                                                                                  \
        for (uint32_t l = 0; l < SC_EMU_SIMD_WIDTH; l++)                                          \
            if (a.on(l)) {                                                                        \
                r = first ? a.v[l] : fn(r, a.v[l]);                                               \
                first = false;                                                                    \
            }                                                                                     \
        return r;                                                                                 \
    }
SC_SIMD_REDUCE(simd_sum, detail::add)
SC_SIMD_REDUCE(simd_max, detail::mx)
SC_SIMD_REDUCE(simd_min, detail::mn)
#undef SC_SIMD_REDUCE
template <class T> inline T simd_prefix_exclusive_sum(T x, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    T r = T(0);
    for (uint32_t l = 0; l < a.self; l++)
        if (a.on(l)) r = T(r + a.v[l]);
    return r;
}
template <class T> inline T simd_prefix_inclusive_sum(T x, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    T r = T(0);
    for (uint32_t l = 0; l <= a.self; l++)
        if (a.on(l)) r = T(r + a.v[l]);
    return r;
}
/* reading an inactive lane gives 0 (MSL leaves it undefined) */
template <class T> inline T simd_shuffle(T x, ushort lane, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    return a.on(lane) ? a.v[lane] : T(0);
}
template <class T> inline T simd_broadcast(T x, ushort lane, SC_SITE) { return simd_shuffle(x, lane, file, line); }
template <class T> inline T simd_broadcast_first(T x, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    for (uint32_t l = 0; l < SC_EMU_SIMD_WIDTH; l++)
        if (a.on(l)) return a.v[l];
    return x;
}
template <class T> inline T simd_shuffle_xor(T x, ushort mask, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    uint32_t l = a.self ^ mask;
    return a.on(l) ? a.v[l] : T(0);
}
/* the upper `delta` lanes keep their value */
template <class T> inline T simd_shuffle_down(T x, ushort delta, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    uint32_t l = a.self + delta;
    return l < SC_EMU_SIMD_WIDTH ? (a.on(l) ? a.v[l] : T(0)) : x;
}
/* the lower `delta` lanes keep their value */
template <class T> inline T simd_shuffle_up(T x, ushort delta, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    return a.self >= delta ? (a.on(a.self - delta) ? a.v[a.self - delta] : T(0)) : x;
}
inline bool simd_all(bool x, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    for (uint32_t l = 0; l < SC_EMU_SIMD_WIDTH; l++)
        if (a.on(l) && !a.v[l]) return false;
    return true;
}
inline bool simd_any(bool x, SC_SITE) {
    auto a = detail::exchange(x, file, line);
    for (uint32_t l = 0; l < SC_EMU_SIMD_WIDTH; l++)
        if (a.on(l) && a.v[l]) return true;
    return false;
}

/* ------------------------------------------------------------ simdgroup matrices */
/* Apple's 8x8 layout (the one MLX's steel and metal-flash-attention use):
 * lane l holds row fm, columns fn and fn+1, with q = l / 4,
 * fm = (q & 4) + (l / 2) % 4 and fn = (q & 2) * 2 + (l % 2) * 2. */
namespace detail {
inline int frag_row(uint32_t l) { return int(((l / 4) & 4) + (l / 2) % 4); }
inline int frag_col(uint32_t l) { return int(((l / 4) & 2) * 2 + (l % 2) * 2); }
}  // namespace detail

template <class T, int R, int C> struct simdgroup_matrix {
    static_assert(R == 8 && C == 8, "only 8x8 simdgroup matrices");
    vec<T, 2> e;
    simdgroup_matrix() : e(T(0)) {}
    vec<T, 2> &thread_elements() { return e; }
    const vec<T, 2> &thread_elements() const { return e; }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;

template <class T, int R, int C> inline simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v) {
    simdgroup_matrix<T, R, C> m;
    m.e = vec<T, 2>(v);
    return m;
}
/* element (row, col) of an 8x8 tile at src with `ld` elements per row,
 * origin (x = column, y = row), optionally transposed */
template <class T, class U>
inline void simdgroup_load(simdgroup_matrix<T, 8, 8> &m, const U *src, ulong ld = 8, ulong2 origin = ulong2(0),
                           bool transpose = false) {
    const uint32_t l = sc_emu_rt->self()->lane;
    const int r = detail::frag_row(l), c = detail::frag_col(l);
    for (int i = 0; i < 2; i++) {
        const ulong row = origin.y + ulong(r), col = origin.x + ulong(c + i);
        m.e[i] = T(transpose ? src[col * ld + row] : src[row * ld + col]);
    }
}
template <class T, class U>
inline void simdgroup_store(const simdgroup_matrix<T, 8, 8> &m, U *dst, ulong ld = 8, ulong2 origin = ulong2(0),
                            bool transpose = false) {
    const uint32_t l = sc_emu_rt->self()->lane;
    const int r = detail::frag_row(l), c = detail::frag_col(l);
    for (int i = 0; i < 2; i++) {
        const ulong row = origin.y + ulong(r), col = origin.x + ulong(c + i);
        (transpose ? dst[col * ld + row] : dst[row * ld + col]) = U(m.e[i]);
    }
}
/* d = a * b + c, a collective of the simdgroup (all 32 lanes must call it) */
template <class TD, class TA, class TB, class TC>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8> &d, const simdgroup_matrix<TA, 8, 8> &a,
                                          const simdgroup_matrix<TB, 8, 8> &b,
                                          const simdgroup_matrix<TC, 8, 8> &c, SC_SITE) {
    struct ab { float a0, a1, b0, b1; } mine = {float(a.e[0]), float(a.e[1]), float(b.e[0]), float(b.e[1])};
    auto all = detail::exchange(mine, file, line);
    if (all.active != 0xFFFFFFFFu) sc_emu_rt->fail("simdgroup_multiply_accumulate needs all 32 lanes", file, line);
    float A[8][8], B[8][8];
    for (uint32_t l = 0; l < 32; l++) {
        const int r = detail::frag_row(l), col = detail::frag_col(l);
        A[r][col] = all.v[l].a0; A[r][col + 1] = all.v[l].a1;
        B[r][col] = all.v[l].b0; B[r][col + 1] = all.v[l].b1;
    }
    const uint32_t l = all.self;
    const int r = detail::frag_row(l), col = detail::frag_col(l);
    simdgroup_matrix<TD, 8, 8> out;
    for (int i = 0; i < 2; i++) {
        float s = float(c.e[i]);
        for (int k = 0; k < 8; k++) s += A[r][k] * B[k][col + i];
        out.e[i] = TD(s);
    }
    d = out;
}
template <class TD, class TA, class TB>
inline void simdgroup_multiply(simdgroup_matrix<TD, 8, 8> &d, const simdgroup_matrix<TA, 8, 8> &a,
                               const simdgroup_matrix<TB, 8, 8> &b, SC_SITE) {
    simdgroup_multiply_accumulate(d, a, b, simdgroup_matrix<TD, 8, 8>(), file, line);
}
#undef SC_SITE

}  // namespace metal

/* ------------------------------------------------------------ literals, limits */
inline metal::half operator""h(long double x) { return metal::half(double(x)); }
inline metal::half operator""h(unsigned long long x) { return metal::half(double(x)); }
#define HALF_MAX ((metal::half)65504.0f)
#define HALF_MIN ((metal::half)6.103515625e-05f)
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38F
#endif
#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif

/* ------------------------------------------------------------ function constants */
template <class T> inline T sc_emu_function_constant(uint32_t index, int type) {
    union { int32_t i; uint32_t u; float f; } v;
    v.u = 0;
    sc_emu_rt->function_constant(index, type, &v);
    if (type == 3) return T(v.f);
    if (type == 2) return T(v.u);
    return T(v.i);
}

/* a function constant reads the pipeline's value wherever it is used */
template <class T, unsigned Index, int Type> struct sc_emu_fc {
    operator T() const { return sc_emu_function_constant<T>(Index, Type); }
};

/* ------------------------------------------------------------ thread positions */
template <class T> struct sc_emu_pos_conv {
    static T from(uint32_t x, uint32_t, uint32_t) { return T(x); }
};
template <class U> struct sc_emu_pos_conv<metal::vec<U, 2>> {
    static metal::vec<U, 2> from(uint32_t x, uint32_t y, uint32_t) { return metal::vec<U, 2>(U(x), U(y)); }
};
template <class U> struct sc_emu_pos_conv<metal::vec<U, 3>> {
    static metal::vec<U, 3> from(uint32_t x, uint32_t y, uint32_t z) {
        return metal::vec<U, 3>(U(x), U(y), U(z));
    }
};
/* which: the generator's index into its list of position attributes */
template <class T> inline T sc_emu_position(const sc_emu_thread *t, int which) {
    uint32_t v[3] = {0, 0, 0};
    switch (which) {
    case 0: for (int i = 0; i < 3; i++) v[i] = t->tgpig[i] * t->ntg[i] + t->tpitg[i]; break;
    case 1: for (int i = 0; i < 3; i++) v[i] = t->tpitg[i]; break;
    case 2: for (int i = 0; i < 3; i++) v[i] = t->tgpig[i]; break;
    case 3: for (int i = 0; i < 3; i++) v[i] = t->ntg[i]; break;
    case 4: for (int i = 0; i < 3; i++) v[i] = t->ngrid[i]; break;
    case 5: v[0] = t->index; break;
    case 6: v[0] = t->lane; break;
    case 7: v[0] = t->simdgroup; break;
    case 8: v[0] = t->n_simdgroups; break;
    case 9: v[0] = SC_EMU_SIMD_WIDTH; break;
    case 10: for (int i = 0; i < 3; i++) v[i] = t->ngrid[i] * t->ntg[i]; break;
    }
    return sc_emu_pos_conv<std::remove_cv_t<T>>::from(v[0], v[1], v[2]);
}

/* ------------------------------------------------------------ MSL keywords */
#define kernel
#define device
#define constant
#define threadgroup
#define thread
#define METAL_FUNC inline

#endif
