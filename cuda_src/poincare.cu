// Poincare ball of curvature -c (c > 0, radius 1/sqrt(c)): every op as a
// row-wise description for the engine in common/rowwise.cuh.
//
// Formulas follow Ganea, Becigneul & Hofmann, "Hyperbolic Neural Networks"
// (NeurIPS 2018) and Ungar's gyrovector algebra. Two rewrites keep nearby
// points accurate: with d = y - x and D2 = |d|^2 (reduced from the difference),
//   (-x) (+) y   = ((1 - c|x|^2 + c D2) d - c D2 y) / den,
//   |(-x) (+) y|^2 = D2 / den,   den = (1 - c|x|^2)(1 - c|y|^2) + c D2,
// which follow from expanding the Mobius sum; den has no cancellation.
#include "common/ops.cuh"

// artanh(sqrt(c)|(-x) (+) y|) = asinh(sqrt(c D2 / (A B))), A = 1 - c|x|^2,
// B = 1 - c|y|^2 (clamped at min_denom): 1 - c|(-x) (+) y|^2 = A B / den and
// artanh(z) = asinh(z / sqrt(1 - z^2)), so no difference of numbers near 1 is taken.
template <class R, class S>
__device__ __forceinline__ R xs_artanh_w(const R& xx, const R& yy, const R& dd, const R& c) {
  const R ab = xs_max(1 - c * xx, xs_limits<S>::min_denom) * xs_max(1 - c * yy, xs_limits<S>::min_denom);
  return xs_asinh(xs_sqrt(c) * xs_norm_from_sq<R, S>(dd / ab));
}

// x (+) (+-y) = (A w + c W2 x) / (A B + c W2), w = x +- y, W2 = |w|^2,
// A = 1 - c|x|^2, B = 1 - c|y|^2: expanding, 1 +- 2c<x,y> + c|y|^2 = A + c W2 and
// 1 +- 2c<x,y> + c^2|x|^2|y|^2 = A B + c W2, so that x ~ -+y (the denominator
// ~ 0 near the boundary) keeps its digits. dot: |x|^2, |y|^2, W2; out: w, x.
template <class R, class S>
__device__ __forceinline__ void xs_mobius_sum_coeffs(const R (&dot)[3], const R& c, R (&coef)[2]) {
  const R a = 1 - c * dot[0];
  const R den = xs_max(a * (1 - c * dot[1]) + c * dot[2], xs_limits<S>::min_denom);
  coef[0] = a / den;
  coef[1] = c * dot[2] / den;
}

// x (+) y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2|x|^2|y|^2)
//         = (A s + c|s|^2 x) / (A B + c|s|^2), s = x + y (xs_mobius_sum_coeffs)
struct PoincareMobiusAdd : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 3, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {0, 1, false, true})  // x, y, s = x + y
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2})                    // |x|^2, |y|^2, |s|^2
  XS_TABLE(out, int, 2, 0)                                        // s, x
  XS_COEFFS { xs_mobius_sum_coeffs<R, S>(dot, c, coef); }
};

// x (-) y = x (+) (-y) = (A d + c|d|^2 x) / (A B + c|d|^2), d = x - y (xs_mobius_sum_coeffs)
struct PoincareMobiusSub : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 3, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {0, 1})  // x, y, d = x - y
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2})     // |x|^2, |y|^2, |d|^2
  XS_TABLE(out, int, 2, 0)                         // d, x
  XS_COEFFS { xs_mobius_sum_coeffs<R, S>(dot, c, coef); }
};

// r (x) x = tanh(r artanh(sqrt(c)|x|)) x / (sqrt(c)|x|); r is passed as t.
struct PoincareMobiusScalarMul : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sn = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0]);
    coef[0] = xs_tanh_c<R, S>(t * xs_artanh_c<R, S>(sn)) / sn;
  }
};

// exp_0(u) = tanh(sqrt(c)|u|) u / (sqrt(c)|u|)
struct PoincareExpmap0 : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sn = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0]);
    coef[0] = xs_tanh_c<R, S>(sn) / sn;
  }
};

// log_0(y) = artanh(sqrt(c)|y|) y / (sqrt(c)|y|)
struct PoincareLogmap0 : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sn = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0]);
    coef[0] = xs_artanh_c<R, S>(sn) / sn;
  }
};

// exp_x(u) = x (+) z,  z = s u,  s = tanh(a) / (sqrt(c)|u|),  a = sqrt(c)|u| / B_x
// (B_x = 1 - c|x|^2 = 2 / lambda_x), as the Mobius sum of mobius_add with w = x + z:
// (A w + c|w|^2 x) / (A B + c|w|^2), A = B_x, B = 1 - c|z|^2 = 1 / cosh^2(a). |w|^2
// is the late dot, summed from the elements of x + s u once s is known: near the
// boundary with x + z ~ 0, |x|^2 + 2s<x,u> + s^2|u|^2 cancels to nothing.
struct PoincareExpmap : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 2, NDOT = 4, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  static constexpr bool LATE = true;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1})               // x, u
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {0, 1}, {0, 1})  // |x|^2, |u|^2, <x,u>, late |x + s u|^2
  XS_TABLE(out, int, 0, 1)
  template <class R, class S>
  __device__ __forceinline__ static R arg(const R& xx, const R& uu, const R& c) {
    return xs_min(xs_sqrt(c) * xs_norm_from_sq<R, S>(uu) / xs_max(1 - c * xx, XS_LIM(min_denom)),
                  XS_LIM(tanh_max));
  }
  // z = s u: s from the tanh argument a
  template <class R, class S>
  __device__ __forceinline__ static R scale(const R& a, const R& uu, const R& c) {
    return xs_tanh(a) / (xs_sqrt(c) * xs_norm_from_sq<R, S>(uu));
  }
  // s of the late dot |x + s u|^2
  template <class R, class S>
  __device__ __forceinline__ static R late_scale(const R (&dot)[NDOT], const R& c) {
    return scale<R, S>(arg<R, S>(dot[0], dot[1], c), dot[1], c);
  }
  XS_COEFFS {
    const R xx = dot[0], uu = dot[1], ww = dot[3];
    const R a = arg<R, S>(xx, uu, c);
    const R s = scale<R, S>(a, uu, c);
    const R ax = 1 - c * xx;
    const R ch = xs_cosh(a);
    const R den = xs_max(ax / (ch * ch) + c * ww, XS_LIM(min_denom));
    coef[0] = (ax + c * ww) / den;
    coef[1] = ax * s / den;
  }
};

// log_x(y) = (2 / (sqrt(c) lambda_x)) artanh(sqrt(c)|w|) w / |w|,  w = (-x) (+) y
struct PoincareLogmap : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 3, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {1, 0})  // x, y, d = y - x
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2})     // |x|^2, |y|^2, D2
  XS_TABLE(out, int, 2, 1)                         // d, y
  XS_COEFFS {
    const R xx = dot[0], yy = dot[1], dd = dot[2];
    const R sc = xs_sqrt(c);
    const R bx = 1 - c * xx;
    const R den = xs_max(bx * (1 - c * yy) + c * dd, XS_LIM(min_denom));
    const R sn = sc * xs_norm_from_sq<R, S>(dd / den);  // sqrt(c)|w|
    const R f = xs_max(bx, XS_LIM(min_denom)) * xs_artanh_w<R, S>(xx, yy, dd, c) / sn;
    coef[0] = f * (bx + c * dd) / den;
    coef[1] = -f * c * dd / den;
  }
};

// d(x, y) = (2 / sqrt(c)) artanh(sqrt(c) |(-x) (+) y|) = (2 / sqrt(c)) asinh(sqrt(c D2 / (A B)))
struct PoincareDist : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 3, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {1, 0})
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R xx = dot[0], yy = dot[1], dd = dot[2];
    coef[0] = 2 * xs_artanh_w<R, S>(xx, yy, dd, c) / xs_sqrt(c);
  }
};

// d(0, x) = (2 / sqrt(c)) artanh(sqrt(c)|x|)
struct PoincareDist0 : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sc = xs_sqrt(c);
    coef[0] = 2 * xs_artanh_c<R, S>(sc * xs_norm_from_sq<R, S>(dot[0])) / sc;
  }
};

// proj(x) = x min(1, (1 - eps) / (sqrt(c)|x|))
struct PoincareProject : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R n = xs_norm_from_sq<R, S>(dot[0]);
    const R maxnorm = (1 - eps) / xs_sqrt(c);
    coef[0] = xs_val(n) > xs_val(maxnorm) ? maxnorm / n : R(1);
  }
};

// lambda_x = 2 / (1 - c|x|^2)
struct PoincareLambdaX : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = 2 / xs_max(1 - c * dot[0], XS_LIM(min_denom)); }
};

// gyr[u, v] w = w + alpha s + gamma v with s = u + v, from |u|^2, |v|^2, |s|^2,
// <s,w>, <v,w>, <s,v> (Ungar's w + (alpha u + beta v), gamma = beta - alpha, with u
// written as s - v):
//   alpha = 2c (<v,w> B - c<s,w>|v|^2 + 2c<s,v><v,w>) / dn
//   gamma = -2c (<s,w> B + c<v,w>|s|^2) / dn,  dn = A B + c|s|^2,
// A = 1 - c|u|^2, B = 1 - c|v|^2 (dn = 1 + 2c<u,v> + c^2|u|^2|v|^2). Near the
// boundary with u ~ -v, alpha u and beta v are large and nearly cancel and dn cancels
// in the dots; here every such term carries s, formed elementwise, and gamma ~ s.
template <class R, class S>
__device__ __forceinline__ void xs_gyration_coeffs(const R& uu, const R& vv, const R& ss,
                                                   const R& sw, const R& vw, const R& sv,
                                                   const R& c, R& alpha, R& gamma) {
  const R b = 1 - c * vv;
  const R dn = xs_max((1 - c * uu) * b + c * ss, xs_limits<S>::min_denom);
  alpha = 2 * c * (vw * b - c * sw * vv + 2 * c * sv * vw) / dn;
  gamma = -2 * c * (sw * b + c * vw * ss) / dn;
}

// gyr[a, b] u = (-(a (+) b)) (+) (a (+) (b (+) u)) = u + alpha (a + b) + gamma b
struct PoincareGyration : xs_op_base {
  static constexpr int NVEC = 3, NTERM = 4, NDOT = 6, NOUT = 3;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {2, -1}, {0, 1, false, true})  // a, b, u, s = a + b
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {3, 3}, {3, 2}, {1, 2}, {3, 1})  // aa bb ss su bu sb
  XS_TABLE(out, int, 2, 3, 1)
  XS_COEFFS {
    R alpha, gamma;
    xs_gyration_coeffs<R, S>(dot[0], dot[1], dot[2], dot[3], dot[4], dot[5], c, alpha, gamma);
    coef[0] = R(1);
    coef[1] = alpha;
    coef[2] = gamma;
  }
};

// P_{x->y}(v) = gyr[y, -x] v * lambda_x / lambda_y = scale (v + alpha d - gamma x),
// d = y - x (the s = y + (-x) of xs_gyration_coeffs)
struct PoincareTransp : xs_op_base {
  static constexpr int NVEC = 3, NTERM = 4, NDOT = 6, NOUT = 3;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {2, -1}, {1, 0})              // x, y, v, d = y - x
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {3, 3}, {3, 2}, {0, 2}, {3, 0})  // xx yy dd dv xv dx
  XS_TABLE(out, int, 2, 3, 0)
  XS_COEFFS {
    const R xx = dot[0], yy = dot[1], dd = dot[2], dv = dot[3], xv = dot[4], dx = dot[5];
    R alpha, gamma;  // gyr[y, -x] v = v + alpha d + gamma (-x)
    xs_gyration_coeffs<R, S>(yy, xx, dd, dv, -xv, -dx, c, alpha, gamma);
    const R scale = xs_max(1 - c * yy, XS_LIM(min_denom)) / xs_max(1 - c * xx, XS_LIM(min_denom));
    coef[0] = scale;
    coef[1] = scale * alpha;
    coef[2] = -scale * gamma;
  }
};

// geodesic(u, v, t) = u (+) (t (x) ((-u) (+) v)), the point at fraction t of the
// geodesic: with delta = sqrt(c) d(u, v) = 2 asinh(sqrt(c D2 / (A B))), A = 1 - c|u|^2,
// B = 1 - c|v|^2 (clamped at min_denom), the hyperboloid's
// (sinh((1 - t) delta) U + sinh(t delta) V) / sinh(delta) taken back to the ball is
//   out = (2 r0 B u + 2 r1 A v) / (A B + r0 (1 + c|u|^2) B + r1 (1 + c|v|^2) A),
//   r0 = sinh((1 - t) delta) / sinh(delta),  r1 = sinh(t delta) / sinh(delta).
// t = 1 (r0 = 0, r1 = 1) gives 2 A v / (A (B + 1 + c|v|^2)) = v and t = 0 gives u, to
// rounding; for t in [0, 1] every sum is of positive numbers. No tanh is taken, so
// tanh_max does not limit t delta (sinh's input is clamped at cosh_max).
struct PoincareGeodesic : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 3, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {1, 0})  // u, v, d = v - u
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2})     // |u|^2, |v|^2, D2
  XS_TABLE(out, int, 0, 1)                         // u, v
  XS_COEFFS {
    const R uu = dot[0], vv = dot[1], dd = dot[2];
    const R delta = 2 * xs_artanh_w<R, S>(uu, vv, dd, c);
    const R sd = xs_sinh_c<R, S>(delta);
    const R r0 = xs_sinh_c<R, S>((1 - t) * delta) / sd, r1 = xs_sinh_c<R, S>(t * delta) / sd;
    const R a = xs_max(1 - c * uu, XS_LIM(min_denom)), b = xs_max(1 - c * vv, XS_LIM(min_denom));
    const R den = a * b + r0 * (1 + c * uu) * b + r1 * (1 + c * vv) * a;
    coef[0] = 2 * r0 * b / den;
    coef[1] = 2 * r1 * a / den;
  }
};
