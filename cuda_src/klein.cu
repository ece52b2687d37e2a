// Beltrami-Klein model of curvature -c: the ball of radius 1/sqrt(c), where
// geodesics are straight chords. Row-wise descriptions for common/rowwise.cuh.
//
// With A = 1 - c|u|^2, B = 1 - c|v|^2, d = v - u, the Lorentz factors are
// 1/sqrt(A), 1/sqrt(B) and
//   cosh(th) = (1 - c<u,v>) / sqrt(A B),
//   sinh(th)^2 = Q / (A B),  Q = c (A |d|^2 + c <u,d>^2),
// th = sqrt(c) d(u, v). Q follows from (1 - c<u,v>)^2 - A B and Lagrange's
// identity |u|^2|v|^2 - <u,v>^2 = |u|^2|d|^2 - <u,d>^2; it is a sum of
// non-negative terms, so small distances keep their digits.
#include "common/ops.cuh"

// sinh(sqrt(c) d(u, v))^2 from the dots |u|^2, |v|^2, |d|^2, <u,d>; A and B out.
template <class R, class S>
__device__ __forceinline__ R xs_klein_sinh2(const R (&dot)[4], const R& c, R& A, R& B) {
  A = xs_max(1 - c * dot[0], xs_limits<S>::min_denom);
  B = xs_max(1 - c * dot[1], xs_limits<S>::min_denom);
  return c * (A * dot[2] + c * dot[3] * dot[3]) / (A * B);
}

// d(u, v) = asinh(sqrt(Q / (A B))) / sqrt(c)
struct KleinDist : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 4, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {1, 0})              // u, v, d = v - u
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2}, {0, 2})  // |u|^2, |v|^2, |d|^2, <u,d>
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    R A, B;
    const R sh2 = xs_klein_sinh2<R, S>(dot, c, A, B);
    coef[0] = xs_asinh(xs_norm_from_sq<R, S>(sh2)) / xs_sqrt(c);
  }
};

// The point at fraction t of the geodesic from u to v, at constant speed:
// u + lam d with lam = b / sqrt(B) / (a / sqrt(A) + b / sqrt(B)),
// a = sinh((1 - t) th) / sinh(th), b = sinh(t th) / sinh(th)
// (the hyperboloid's a u_L + b v_L, seen in the Klein chart).
struct KleinGeodesic : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 4, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {1, 0})
  XS_TABLE(dot, xs_ij, {0, 0}, {1, 1}, {2, 2}, {0, 2})
  XS_TABLE(out, int, 0, 2)
  XS_COEFFS {
    R A, B;
    const R sh = xs_norm_from_sq<R, S>(xs_klein_sinh2<R, S>(dot, c, A, B));
    const R th = xs_asinh(sh);
    const R a = xs_sinh_c<R, S>((1 - t) * th) * xs_sqrt(B);  // both times sinh(th) sqrt(A B)
    const R b = xs_sinh_c<R, S>(t * th) * xs_sqrt(A);
    coef[0] = R(1);
    // a + b > 0 for every t, and ~ th sqrt(A) as th -> 0 (th >= sqrt(min_sqnorm)): no clamp,
    // which would crush lam -> t near u = v and give d/du = I, d/dv = 0 there
    coef[1] = b / (a + b);
  }
};

// Lorentz factor 1 / sqrt(1 - c|x|^2) (the weight of x in an Einstein midpoint)
struct KleinLorentzFactor : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = 1 / xs_sqrt(xs_max(1 - c * dot[0], XS_LIM(min_denom))); }
};
