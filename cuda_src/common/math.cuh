// Scalar maths for the per-row stage of the kernels: clamping constants, safe
// special functions, and forward-mode dual numbers.
//
// Every per-row formula (the `coeffs` function of an op) is written once as a
// template over its scalar type R. Evaluated with R = S it gives the forward
// values; evaluated with R = xs_dual<S, N> it gives, in the same pass, the
// derivatives of those values with respect to N seeded inputs (the row's dot
// products, c and t). The backward kernels use these derivatives; there is no
// second, hand-differentiated copy of any formula that could drift from it.
#pragma once

// Clamping constants (documented in xpu_stone/constants.py, which mirrors them).
template <class S>
struct xs_limits;
template <>
struct xs_limits<float> {
  static constexpr float min_sqnorm = 1e-36f;  // squared norms below this count as this
  static constexpr float min_denom = 1e-15f;   // positive denominators are at least this
  static constexpr float tanh_max = 15.0f;     // tanh's input is clamped to [-15, 15]
  static constexpr float artanh_max = 1.0f - 1e-7f;  // artanh's input <= 1 - 1e-7
  static constexpr float cosh_max = 88.0f;     // sinh's and cosh's input is clamped to [-88, 88]
};
template <>
struct xs_limits<double> {
  static constexpr double min_sqnorm = 1e-200;
  static constexpr double min_denom = 1e-15;
  static constexpr double tanh_max = 15.0;
  static constexpr double artanh_max = 1.0 - 1e-15;
  static constexpr double cosh_max = 700.0;
};

// ---------------------------------------------------------------- plain scalars
__device__ __forceinline__ float xs_val(float x) { return x; }
__device__ __forceinline__ double xs_val(double x) { return x; }
__device__ __forceinline__ float xs_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double xs_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float xs_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ float xs_artanh(float x) { return atanhf(x); }
__device__ __forceinline__ float xs_sinh(float x) { return sinhf(x); }
__device__ __forceinline__ float xs_cosh(float x) { return coshf(x); }
__device__ __forceinline__ float xs_asinh(float x) { return asinhf(x); }

// With XS_FAST_TRANSCENDENTALS (set for kernels whose outputs are stored in fp32
// or narrower), fp64 tanh and artanh are formed from one fp32 expm1 / log1p:
// relative error about 2e-7, far below what those outputs keep, at a fraction
// of the cost of the fp64 library calls. The arguments of the fp32 calls carry
// no cancellation: tanh(x) = m / (m + 2) with m = expm1(2x), and
// artanh(z) = log1p(2z / (1 - z)) / 2 with 1 - z formed in fp64. Below 1e-3
// both use their odd series to x^5 in fp64 (truncation < 1e-18 relative): fp32
// would flush tiny arguments to zero, and tanh(x)/x must stay 1 at x -> 0.
// The fp32 rounding of an argument a (|a - float(a)| <= |a| 2^-24) is put back to
// first order: expm1(a) = m + (m + 1)(a - float(a)), log1p(a) = l + (a - float(a)) / (1 + a).
// Without it, e^a for large a carries the relative error |a| 2^-24 of its rounded
// argument (sinh and cosh at 74: 3.9e-6, 65 fp32 ulps).
#if XS_FAST_TRANSCENDENTALS
__device__ __forceinline__ double xs_expm1_fast(double a) {
  const float af = static_cast<float>(a);
  const double m = expm1f(af);
  return m + (m + 1) * (a - static_cast<double>(af));
}
__device__ __forceinline__ double xs_log1p_fast(double a) {
  const float af = static_cast<float>(a);
  return static_cast<double>(log1pf(af)) + (a - static_cast<double>(af)) / (1 + a);
}
// e^a / 2 for a > 80 (where e^-a no longer counts), from fp32's expm1 of a - 80;
// finite up to a = 168, far beyond what fp32 outputs hold.
__device__ __forceinline__ double xs_half_exp_large(double a) {
  return 0.5 * 5.540622384393510e34 * (xs_expm1_fast(a - 80) + 1);
}
#endif
__device__ __forceinline__ double xs_tanh(double x) {
#if XS_FAST_TRANSCENDENTALS
  if (fabs(x) < 1e-3) {
    const double x2 = x * x;
    return x * (1 - x2 * (1.0 / 3 - x2 * (2.0 / 15)));
  }
  const double m = xs_expm1_fast(2 * x);
  return m / (m + 2);
#else
  return tanh(x);
#endif
}
__device__ __forceinline__ double xs_artanh(double x) {
#if XS_FAST_TRANSCENDENTALS
  if (fabs(x) < 1e-3) {
    const double x2 = x * x;
    return x * (1 + x2 * (1.0 / 3 + x2 * (1.0 / 5)));
  }
  return 0.5 * xs_log1p_fast(2 * x / (1 - x));
#else
  return atanh(x);
#endif
}

// The hyperbolic functions of the Lorentz and Klein models, likewise: with
// m = expm1(|x|) in fp32, sinh|x| = (m + m / (m + 1)) / 2 and
// cosh x = 1 + m^2 / (2 (m + 1)) (both sums of positive terms), and
// asinh|x| = log1p(|x| + x^2 / (1 + sqrt(1 + x^2))) with the log1p argument
// formed in fp64; odd series below 1e-3 as above.
__device__ __forceinline__ double xs_sinh(double x) {
#if XS_FAST_TRANSCENDENTALS
  const double a = fabs(x);
  if (a < 1e-3) {
    const double x2 = x * x;
    return x * (1 + x2 * (1.0 / 6 + x2 * (1.0 / 120)));
  }
  if (a > 80) return copysign(xs_half_exp_large(a), x);
  const double m = xs_expm1_fast(a);
  return copysign(0.5 * (m + m / (m + 1)), x);
#else
  return sinh(x);
#endif
}
__device__ __forceinline__ double xs_cosh(double x) {
#if XS_FAST_TRANSCENDENTALS
  const double a = fabs(x);
  if (a < 1e-3) {
    const double x2 = x * x;
    return 1 + x2 * (0.5 + x2 * (1.0 / 24));
  }
  if (a > 80) return xs_half_exp_large(a);
  const double m = xs_expm1_fast(a);
  return 1 + m * m / (2 * (m + 1));
#else
  return cosh(x);
#endif
}
__device__ __forceinline__ double xs_asinh(double x) {
#if XS_FAST_TRANSCENDENTALS
  const double a = fabs(x);
  if (a < 1e-3) {
    const double x2 = x * x;
    return x * (1 - x2 * (1.0 / 6 - x2 * (3.0 / 40)));
  }
  const double arg = a < 1e150 ? a + a * a / (1 + sqrt(1 + a * a)) : 2 * a;
  return copysign(xs_log1p_fast(arg), x);
#else
  return asinh(x);
#endif
}

// ---------------------------------------------------------------- dual numbers
template <class S, int N>
struct xs_dual {
  S v;
  S d[N];

  __device__ __forceinline__ xs_dual() {}
  // A constant: all derivatives zero. Implicit, so that `1 + x` reads as maths.
  __device__ __forceinline__ xs_dual(S value) : v(value) {
#pragma unroll
    for (int i = 0; i < N; ++i) d[i] = S(0);
  }
  // The i-th seeded input.
  __device__ __forceinline__ static xs_dual seed(S value, int i) {
    xs_dual r(value);
    r.d[i] = S(1);
    return r;
  }

  __device__ __forceinline__ friend xs_dual operator+(const xs_dual& a, const xs_dual& b) {
    xs_dual r;
    r.v = a.v + b.v;
#pragma unroll
    for (int i = 0; i < N; ++i) r.d[i] = a.d[i] + b.d[i];
    return r;
  }
  __device__ __forceinline__ friend xs_dual operator-(const xs_dual& a, const xs_dual& b) {
    xs_dual r;
    r.v = a.v - b.v;
#pragma unroll
    for (int i = 0; i < N; ++i) r.d[i] = a.d[i] - b.d[i];
    return r;
  }
  __device__ __forceinline__ friend xs_dual operator-(const xs_dual& a) {
    xs_dual r;
    r.v = -a.v;
#pragma unroll
    for (int i = 0; i < N; ++i) r.d[i] = -a.d[i];
    return r;
  }
  __device__ __forceinline__ friend xs_dual operator*(const xs_dual& a, const xs_dual& b) {
    xs_dual r;
    r.v = a.v * b.v;
#pragma unroll
    for (int i = 0; i < N; ++i) r.d[i] = a.d[i] * b.v + a.v * b.d[i];
    return r;
  }
  __device__ __forceinline__ friend xs_dual operator/(const xs_dual& a, const xs_dual& b) {
    xs_dual r;
    const S inv = S(1) / b.v;
    r.v = a.v * inv;
#pragma unroll
    for (int i = 0; i < N; ++i) r.d[i] = (a.d[i] - r.v * b.d[i]) * inv;
    return r;
  }
};

// f(x) with f(x.v) = fv and f'(x.v) = dv.
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_chain(const xs_dual<S, N>& x, S fv, S dv) {
  xs_dual<S, N> r;
  r.v = fv;
#pragma unroll
  for (int i = 0; i < N; ++i) r.d[i] = dv * x.d[i];
  return r;
}
template <class S, int N>
__device__ __forceinline__ S xs_val(const xs_dual<S, N>& x) {
  return x.v;
}
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_sqrt(const xs_dual<S, N>& x) {
  const S s = xs_sqrt(x.v);
  return xs_chain(x, s, S(0.5) / s);
}
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_tanh(const xs_dual<S, N>& x) {
  const S t = xs_tanh(x.v);
  return xs_chain(x, t, S(1) - t * t);
}
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_artanh(const xs_dual<S, N>& x) {
  return xs_chain(x, xs_artanh(x.v), S(1) / ((S(1) - x.v) * (S(1) + x.v)));
}
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_sinh(const xs_dual<S, N>& x) {
  return xs_chain(x, xs_sinh(x.v), xs_cosh(x.v));
}
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_cosh(const xs_dual<S, N>& x) {
  return xs_chain(x, xs_cosh(x.v), xs_sinh(x.v));
}
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_asinh(const xs_dual<S, N>& x) {
  return xs_chain(x, xs_asinh(x.v), S(1) / xs_sqrt(S(1) + x.v * x.v));
}

// ------------------------------------------------------------ clamps (any R)
// A clamped value is a constant: its derivative is zero where the clamp acts.
template <class R, class S>
__device__ __forceinline__ R xs_max(const R& x, S lo) {
  return xs_val(x) < lo ? R(lo) : x;
}
template <class R, class S>
__device__ __forceinline__ R xs_min(const R& x, S hi) {
  return xs_val(x) > hi ? R(hi) : x;
}
template <class R, class S>
__device__ __forceinline__ R xs_clamp(const R& x, S lo, S hi) {
  return xs_min(xs_max(x, lo), hi);
}

// sqrt of a squared norm, with zero norms counted as sqrt(min_sqnorm).
template <class R, class S>
__device__ __forceinline__ R xs_norm_from_sq(const R& sq) {
  return xs_sqrt(xs_max(sq, xs_limits<S>::min_sqnorm));
}
// tanh with its input clamped to [-tanh_max, tanh_max].
template <class R, class S>
__device__ __forceinline__ R xs_tanh_c(const R& x) {
  return xs_tanh(xs_clamp(x, -xs_limits<S>::tanh_max, xs_limits<S>::tanh_max));
}
// artanh with its input clamped to [-artanh_max, artanh_max].
template <class R, class S>
__device__ __forceinline__ R xs_artanh_c(const R& x) {
  return xs_artanh(xs_clamp(x, -xs_limits<S>::artanh_max, xs_limits<S>::artanh_max));
}
// sinh and cosh with their input clamped to [-cosh_max, cosh_max].
template <class R, class S>
__device__ __forceinline__ R xs_sinh_c(const R& x) {
  return xs_sinh(xs_clamp(x, -xs_limits<S>::cosh_max, xs_limits<S>::cosh_max));
}
template <class R, class S>
__device__ __forceinline__ R xs_cosh_c(const R& x) {
  return xs_cosh(xs_clamp(x, -xs_limits<S>::cosh_max, xs_limits<S>::cosh_max));
}
