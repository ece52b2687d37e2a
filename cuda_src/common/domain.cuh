// The domains of the models' points, and the rule for inputs outside them.
//
// A point of the Poincare ball or of the Klein disk has c|x|^2 < 1; a point of
// the hyperboloid has c<x,x>_L = -1 and x_0 > 0. Rows are stored rounded to
// their dtype T (unit roundoff u_T: 2^-53, 2^-24, 2^-11, 2^-8 for fp64, fp32,
// fp16, bf16) and reduced in S (u_S) over D elements, so a point of the domain
// can read as slightly outside it. The rule, with tol = base + (D + 2) u_S:
//   ball (and Klein disk): a point iff  c|x|^2 <= 1 + tol,           base = 4 u_T
//   hyperboloid:           a point iff  x_0 > 0 and
//                          |c<x,x>_L + 1| <= tol (1 + c|x|^2),        base = 2^-6 + 4 u_T
// (comparisons written so that NaN and inf fail them). A point within the
// tolerance keeps the formulas' clamps (1 - c|x|^2 counted as at least
// min_denom); any other row of a point input makes the op's output row NaN, as
// artanh(2) would, and so does a NaN or inf anywhere in any input row.
// The hyperboloid's margin is a fixed fraction: its formulas work from
// differences and have no singularity near it, and points drift off it by far
// more than rounding (a few fp32 ops, finite-difference gradient checks, a step
// of a learnable c); what it rejects is vectors that are no hyperboloid points
// at all (ball points, the lower sheet, zero vectors).
// xpu_stone/engine/checks.py mirrors this (UNIT_ROUNDOFF, HYPERBOLOID_MARGIN, domain_tol, not_points).
#pragma once
#include "dtype.cuh"
#include "math.cuh"

enum xs_domain : int { xs_free = 0, xs_ball = 1, xs_hyperboloid = 2 };

// Unit roundoff of the storage / arithmetic types.
template <class T>
struct xs_roundoff;
template <>
struct xs_roundoff<double> {
  static constexpr double u = 0x1p-53;
};
template <>
struct xs_roundoff<float> {
  static constexpr double u = 0x1p-24;
};
template <>
struct xs_roundoff<xs_half> {
  static constexpr double u = 0x1p-11;
};
template <>
struct xs_roundoff<xs_bf16> {
  static constexpr double u = 0x1p-8;
};

template <class T, class S>
__device__ __forceinline__ S xs_domain_tol(xs_domain domain, long long D) {
  const double base = 4 * xs_roundoff<T>::u + (domain == xs_hyperboloid ? 0x1p-6 : 0.0);
  return S(base + double(D + 2) * xs_roundoff<S>::u);
}

// Whether c|x|^2 = c * sq is in the ball (false for NaN and inf).
template <class T, class S>
__device__ __forceinline__ bool xs_in_ball(S c, S sq, long long D) {
  return c * sq <= S(1) + xs_domain_tol<T, S>(xs_ball, D);
}

// Whether (x0, x_s) with sq = |x_s|^2 is on the hyperboloid (false for NaN and inf).
template <class T, class S>
__device__ __forceinline__ bool xs_on_hyperboloid(S c, S sq, S x0, long long D) {
  const S t = x0 * x0;
  const S m = c * (sq - t) + S(1);  // c<x,x>_L + 1
  const S lim = xs_domain_tol<T, S>(xs_hyperboloid, D) * (S(1) + c * (sq + t));
  return x0 > S(0) && m <= lim && -m <= lim && lim - lim == S(0);  // the last: lim is finite
}

// Whether a curvature is usable: finite and positive (false for NaN and inf). A
// tensor c reaches the kernels unread by the host unless
// xpu_stone.config.check_tensor_values asks for it.
template <class S>
__device__ __forceinline__ bool xs_curvature_ok(S c) {
  return c > S(0) && c - c == S(0);
}

// A NaN of the type of x (a dual number: NaN value and derivatives), for the
// coefficients of a row with a bad input.
__device__ __forceinline__ float xs_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double xs_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }
template <class S, int N>
__device__ __forceinline__ xs_dual<S, N> xs_nan(const xs_dual<S, N>& x) {
  xs_dual<S, N> r;
  r.v = xs_nan(x.v);
#pragma unroll
  for (int i = 0; i < N; ++i) r.d[i] = r.v;
  return r;
}
