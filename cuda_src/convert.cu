// Isometries between the three models of curvature -c, as row-wise
// descriptions for common/rowwise.cuh. With the hyperboloid point
// y = (y_0, y_s), <y,y>_L = -1/c, the Poincare point x and the Klein point k:
//   x = y_s / (1 + sqrt(c) y_0),        k = y_s / (sqrt(c) y_0),
//   y = ((1 + c|x|^2) / sqrt(c), 2x) / (1 - c|x|^2),
//   y = (1 / sqrt(c), k) / sqrt(1 - c|k|^2),
//   k = 2x / (1 + c|x|^2),               x = k / (1 + sqrt(1 - c|k|^2)).
// Rows gain (IN_SHIFT = 1) or lose (OUT_SHIFT = 1) the time coordinate.
#include "common/ops.cuh"

struct ConvertPoincareToKlein : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = 2 / (1 + c * dot[0]); }
};

struct ConvertKleinToPoincare : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 1, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0)
  XS_TABLE(term, xs_ij, {0, -1})
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = 1 / (1 + xs_sqrt(xs_max(1 - c * dot[0], XS_LIM(min_denom)))); }
};

struct ConvertPoincareToLorentz : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 2, NDOT = 1, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0)
  static constexpr int IN_SHIFT = 1;
  XS_TABLE(term, xs_ij, {0, -1}, {XS_E0, -1})  // x (from element 1 on), e0
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 1, 0)
  XS_COEFFS {
    const R A = xs_max(1 - c * dot[0], XS_LIM(min_denom));
    coef[0] = (1 + c * dot[0]) / (xs_sqrt(c) * A);
    coef[1] = 2 / A;
  }
};

struct ConvertLorentzToPoincare : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 2, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0)
  static constexpr int OUT_SHIFT = 1;
  XS_TABLE(term, xs_ij, {0, -1}, {XS_E0, -1})  // y, e0
  XS_TABLE(dot, xs_ij, {0, 1})                 // y_0
  XS_TABLE(out, int, 0)                        // y from element 1 on: y_s
  XS_COEFFS { coef[0] = 1 / xs_max(1 + xs_sqrt(c) * dot[0], XS_LIM(min_denom)); }
};

struct ConvertLorentzToKlein : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 2, NDOT = 1, NOUT = 1;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_hyperboloid, 0)
  static constexpr int OUT_SHIFT = 1;
  XS_TABLE(term, xs_ij, {0, -1}, {XS_E0, -1})
  XS_TABLE(dot, xs_ij, {0, 1})
  XS_TABLE(out, int, 0)
  XS_COEFFS { coef[0] = 1 / xs_max(xs_sqrt(c) * dot[0], XS_LIM(min_denom)); }
};

struct ConvertKleinToLorentz : xs_op_base {
  static constexpr int NVEC = 1, NTERM = 2, NDOT = 1, NOUT = 2;
  static constexpr bool SCALAR_OUT = false;
  XS_POINTS(xs_ball, 0)
  static constexpr int IN_SHIFT = 1;
  XS_TABLE(term, xs_ij, {0, -1}, {XS_E0, -1})  // k (from element 1 on), e0
  XS_TABLE(dot, xs_ij, {0, 0})
  XS_TABLE(out, int, 1, 0)
  XS_COEFFS {
    const R g = 1 / xs_sqrt(xs_max(1 - c * dot[0], XS_LIM(min_denom)));
    coef[0] = g / xs_sqrt(c);
    coef[1] = g;
  }
};
