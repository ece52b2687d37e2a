// Hyperboloid (Lorentz) model of curvature -c: points x with <x,x>_L = -1/c,
// x_0 > 0, time coordinate first; <u,v>_L = -u_0 v_0 + sum_{i>0} u_i v_i.
// Every op as a row-wise description for the engine in common/rowwise.cuh.
//
// Minkowski products are formed from the space parts (terms with element 0
// zeroed) and the time coordinates <v, e_0> = v_0, never as |v|^2 - 2 v_0^2,
// so that a small space part keeps its digits.
//
// Nearby points: with d = y - x and both on the hyperboloid,
//   -c<x,y>_L = 1 + z,  z = c <d,d>_L / 2,  s = sqrt(z / 2) = sqrt(c) |d|_L / 2,
//   d(x, y) = arcosh(1 + z) / sqrt(c) = 2 asinh(s) / sqrt(c),
// so distances, log maps and geodesics are written in s, which is reduced from
// the difference d and carries no cancellation (arcosh(-c<x,y>_L) loses all
// digits of a small distance once |x_0| is large).
#include "common/ops.cuh"

// <u, v>_L
struct LorentzInner : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 4, NDOT = 3, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {0, -1, true}, {XS_E0, -1})  // u, v, u_s, e0
  XS_TABLE(dot, xs_ij, {2, 1}, {0, 3}, {1, 3})                         // <u_s,v>, u_0, v_0
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = dot[0] - dot[1] * dot[2]; }
};

// |u|_L = sqrt(max(<u,u>_L, 0)) (the norm of a tangent vector)
struct LorentzNorm : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 3, NDOT = 2, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_TABLE(term, xs_ij, {0, -1}, {0, -1, true}, {XS_E0, -1})  // u, u_s, e0
  XS_TABLE(dot, xs_ij, {1, 1}, {0, 2})                        // |u_s|^2, u_0
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = xs_norm_from_sq<R, S>(dot[0] - dot[1] * dot[1]); }
};

// d(x, y) = 2 asinh(sqrt(c) |y - x|_L / 2) / sqrt(c)
struct LorentzDist : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 3, NDOT = 2, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_hyperboloid, 0, 1)
  XS_TABLE(term, xs_ij, {1, 0}, {1, 0, true}, {XS_E0, -1})  // d = y - x, d_s, e0
  XS_TABLE(dot, xs_ij, {1, 1}, {0, 2})                      // |d_s|^2, d_0
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sc = xs_sqrt(c);
    const R s = sc * xs_norm_from_sq<R, S>(dot[0] - dot[1] * dot[1]) / 2;
    coef[0] = 2 * xs_asinh(s) / sc;
  }
};

// d(o, x) = asinh(sqrt(c) |x_s|) / sqrt(c),  o = e_0 / sqrt(c)
struct LorentzDist0 : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = true;
  XS_POINTS(xs_hyperboloid, 0)
  XS_TABLE(term, xs_ij, {0, -1, true})  // x_s
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sc = xs_sqrt(c);
    coef[0] = xs_asinh(sc * xs_norm_from_sq<R, S>(dot[0])) / sc;
  }
};

// exp_o(u) = cosh(sqrt(c)|u_s|) e_0 / sqrt(c) + sinh(sqrt(c)|u_s|) u_s / (sqrt(c)|u_s|)
// (u's time coordinate is ignored: a tangent vector at o has none)
struct LorentzExpmap0 : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 2, NDOT = 1, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_TABLE(term, xs_ij, {0, -1, true}, {XS_E0, -1})  // u_s, e0
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 1, 0)
  XS_COEFFS {
    const R sc = xs_sqrt(c);
    const R th = sc * xs_norm_from_sq<R, S>(dot[0]);
    coef[0] = xs_cosh_c<R, S>(th) / sc;
    coef[1] = xs_sinh_c<R, S>(th) / th;
  }
};

// log_o(y) = asinh(sqrt(c)|y_s|) y_s / (sqrt(c)|y_s|)   (time coordinate 0)
struct LorentzLogmap0 : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0)
  XS_TABLE(term, xs_ij, {0, -1, true})  // y_s
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS {
    const R sn = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0]);
    coef[0] = xs_asinh(sn) / sn;
  }
};

// exp_x(u) = cosh(sqrt(c)|u|_L) x + sinh(sqrt(c)|u|_L) u / (sqrt(c)|u|_L)
struct LorentzExpmap : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 4, NDOT = 2, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {1, -1, true}, {XS_E0, -1})  // x, u, u_s, e0
  XS_TABLE(dot, xs_ij, {2, 2}, {1, 3})                                 // |u_s|^2, u_0
  XS_TABLE(out, int, 0, 1)
  XS_COEFFS {
    const R th = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0] - dot[1] * dot[1]);
    coef[0] = xs_cosh_c<R, S>(th);
    coef[1] = xs_sinh_c<R, S>(th) / th;
  }
};

// log_x(y) = f (d - z x),  f = asinh(s) / (s sqrt(1 + s^2)),  z = 2 s^2, d = y - x
// (= d(x,y) (y + c<x,y>_L x) / |y + c<x,y>_L x|_L on the hyperboloid)
struct LorentzLogmap : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 4, NDOT = 2, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, 0}, {1, 0, true}, {XS_E0, -1})  // x, d, d_s, e0
  XS_TABLE(dot, xs_ij, {2, 2}, {1, 3})                               // |d_s|^2, d_0
  XS_TABLE(out, int, 1, 0)
  XS_COEFFS {
    const R s = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0] - dot[1] * dot[1]) / 2;
    const R f = xs_asinh(s) / (s * xs_sqrt(1 + s * s));
    coef[0] = f;
    coef[1] = -2 * f * s * s;
  }
};

// proj(x) = (sqrt(1/c + |x_s|^2), x_s): the point of the hyperboloid above x_s
struct LorentzProject : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 2, NDOT = 1, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_TABLE(term, xs_ij, {0, -1, true}, {XS_E0, -1})  // x_s, e0
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0, 1)
  XS_COEFFS {
    coef[0] = R(1);
    coef[1] = xs_sqrt(1 / c + dot[0]);
  }
};

// proj_x(u) = u + c <x,u>_L x: the tangent component of u at x
struct LorentzProjTan : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 4, NDOT = 3, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0)
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {0, -1, true}, {XS_E0, -1})  // x, u, x_s, e0
  XS_TABLE(dot, xs_ij, {2, 1}, {0, 3}, {1, 3})                         // <x_s,u>, x_0, u_0
  XS_TABLE(out, int, 1, 0)
  XS_COEFFS {
    coef[0] = R(1);
    coef[1] = c * (dot[0] - dot[1] * dot[2]);
  }
};

// P_{x->y}(v) = v + c<y,v>_L / (1 - c<x,y>_L) (x + y)
struct LorentzTransp : xs_op_base {
  static constexpr int NVEC = 3, NTERM = 6, NDOT = 5, NOUT = 3;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0, 1)
  // x, y, v, x_s, y_s, e0
  XS_TABLE(term, xs_ij, {0, -1}, {1, -1}, {2, -1}, {0, -1, true}, {1, -1, true}, {XS_E0, -1})
  // <x_s,y>, x_0, y_0, <y_s,v>, v_0
  XS_TABLE(dot, xs_ij, {3, 1}, {0, 5}, {1, 5}, {4, 2}, {2, 5})
  XS_TABLE(out, int, 2, 0, 1)
  XS_COEFFS {
    const R xy = dot[0] - dot[1] * dot[2], yv = dot[3] - dot[2] * dot[4];
    const R k = c * yv / xs_max(1 - c * xy, XS_LIM(min_denom));
    coef[0] = R(1);
    coef[1] = k;
    coef[2] = k;
  }
};

// geodesic(u, v, t) = exp_u(t log_u(v)) = a u + b v
//   = (a + b) u + b d,   a = sinh((1 - t) th) / sinh(th), b = sinh(t th) / sinh(th),
// th = 2 asinh(s) = sqrt(c) d(u, v), sinh(th) = 2 s sqrt(1 + s^2), d = v - u
// (a + b is a sum of positive terms for t in [0, 1]; the equal
// cosh(t th) - (cosh(th) - 1) b cancels badly at large th)
struct LorentzGeodesic : xs_op_base {
  static constexpr int NVEC = 2, NTERM = 4, NDOT = 2, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0, 1)
  XS_TABLE(term, xs_ij, {0, -1}, {1, 0}, {1, 0, true}, {XS_E0, -1})  // u, d, d_s, e0
  XS_TABLE(dot, xs_ij, {2, 2}, {1, 3})                               // |d_s|^2, d_0
  XS_TABLE(out, int, 0, 1)
  XS_COEFFS {
    const R s = xs_sqrt(c) * xs_norm_from_sq<R, S>(dot[0] - dot[1] * dot[1]) / 2;
    const R th = 2 * xs_asinh(s);
    const R sh = 2 * s * xs_sqrt(1 + s * s);
    const R b = xs_sinh_c<R, S>(t * th) / sh;
    coef[0] = xs_sinh_c<R, S>((1 - t) * th) / sh + b;
    coef[1] = b;
  }
};
