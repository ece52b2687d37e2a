// Pairwise hyperbolic distances as the epilogue of one GEMM (xpu_stone/pairwise.py).
//
// The host computes G = x y^T with cuBLAS; these kernels turn G into distances
// (forward) and the output gradient into the GEMM operand of the backward, with
// per-row / per-column scalars computed once by xs_pair_scalars:
//
//   Poincare (curvature -c):  p0 = |x_i|^2, p1 = 1 / (1 - c|x_i|^2),
//                             q0 = |y_j|^2, q1 = 2c / (1 - c|y_j|^2),
//     sq = |x_i|^2 + |y_j|^2 - 2 G_ij (>= 0),  w = sq p1 q1,
//   Lorentz (<x,x>_L = -1/c, time first): p0 = x_i0, q0 = y_j0,
//     w = -c <x_i, y_j>_L - 1 = c (2 p0 q0 - G_ij) - 1,
//   d = arcosh(1 + w) / sqrt(c) = log1p(w + sqrt(w (w + 2))) / sqrt(c).
//
// G carries a rounding error of a few ulps of |x||y|; w below tau times its
// scale (|x|^2 + |y|^2, or 2 c x_0 y_0) cannot be told from zero and is snapped
// to 0: coincident points get distance 0 and gradient 0 instead of noise
// amplified by the 1/sqrt(w) slope of arcosh at 1.
//
// A row with a NaN or inf, or that is not a point of the model (common/domain.cuh:
// outside the ball, off the hyperboloid, beyond the rounding tolerance), gets
// p1 = NaN (Poincare) or p0 = NaN (Lorentz): every distance to it is NaN (never
// snapped to 0), and so are the gradients that depend on it.
//
// Backward from the stored distance d (s = sqrt(c) d, m = expm1(s)):
//   sinh s = (m/2)(m+2)/(m+1),  w = (m/2) m/(m+1),  tanh(s/2) = m/(m+2),
//   f = dd/dw = 1 / (sqrt(c) sinh s).
// Poincare: A_ij = g f p1 q1, and with t = g f w = g tanh(s/2)/sqrt(c)
//   dL/dx_i = 2 x_i sum_j (A_ij + c p1 t) - 2 (A y)_i,
//   dL/dy_j = 2 y_j sum_i (A_ij + q1 t / 2) - 2 (A^T x)_j,
//   dL/dc  = sum_ij [ -g d / (2c) + t (1/c + p0 p1 + q0 q1 / (2c)) ].
// Lorentz: A_ij = -c g f;  dL/dx = (A y) J,  dL/dy = (A^T x) J,  J = diag(-1, 1, ...),
//   dL/dc  = sum_ij [ -g d / (2c) + g f (1 + w) / c ].
// The row sums (per warp), column sums (per row tile) and the c sum (per block)
// go to workspaces that the host reduces in a fixed order (deterministic).
#include "common/domain.cuh"
#include "common/dtype.cuh"
#include "common/math.cuh"
#include "common/reduce.cuh"

#define XS_POINCARE 0
#define XS_LORENTZ 1

constexpr int XS_PAIR_BLOCK = 256;

__device__ __forceinline__ float xs_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double xs_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float xs_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double xs_expm1(double x) { return expm1(x); }

// w of one pair, snapped to 0 below the rounding noise of G (NaN stays NaN).
template <int MODEL, class E>
__device__ __forceinline__ E xs_pair_w(E g, E p0, E p1, E q0, E q1, E c, E tau) {
  if (MODEL == XS_POINCARE) {
    const E scale = p0 + q0;
    const E sq = scale - E(2) * g;
    const E w = sq * p1 * q1;
    return sq > tau * scale || w != w ? w : E(0);
  } else {
    const E pq = E(2) * c * p0 * q0;
    const E w = (pq - c * g) - E(1);
    return w > tau * fabs(pq) || w != w ? w : E(0);
  }
}

// Per-row scalars (p0, p1) of the rows of a (rows x D, row stride ld) matrix.
// Poincare: p0 = |a|^2, p1 = scale / (1 - c|a|^2) (|a|^2 reduced in fp64),
// p1 = NaN for a row that is not a point of the ball; Lorentz: p0 = a_0, NaN
// for a row that is not a point of the hyperboloid. One warp per row.
template <int MODEL, class T, class E>
__global__ void xs_pair_scalars(const T* __restrict__ a, long long rows, long long D, long long ld, double c,
                                double scale, E* __restrict__ p0, E* __restrict__ p1) {
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;  // whole warps leave together
  const T* r = a + row * ld;
  double s[1] = {0.0};  // |a|^2 (Poincare), |a_s|^2 (Lorentz)
  for (long long i = MODEL == XS_LORENTZ ? lane + 1 : lane; i < D; i += 32) {
    const double v = xs_to_e(r[i]);
    s[0] += v * v;
  }
  xs_group_sum<32>(s);
  if (lane != 0) return;
  if (MODEL == XS_LORENTZ) {
    const double a0 = xs_to_e(r[0]);
    p0[row] = E(xs_on_hyperboloid<T, double>(c, s[0], a0, D) ? a0 : xs_nan(a0));
    return;
  }
  p0[row] = E(s[0]);
  p1[row] = E(xs_in_ball<T, double>(c, s[0], D) ? scale / fmax(1.0 - c * s[0], xs_limits<double>::min_denom)
                                                : xs_nan(s[0]));
}

// Forward: out[r, j] = d(G[r, j]) for r < rows (= batches * n), j < m.
// Thread (blockIdx.x, threadIdx.x) owns VEC consecutive columns and walks the
// rows blockIdx.y, blockIdx.y + gridDim.y, ... `gram` and `out` may alias.
template <int MODEL, class T, class G, class E, int VEC>
__global__ void __launch_bounds__(XS_PAIR_BLOCK)
    xs_cdist_fwd(const G* gram, T* out, const E* __restrict__ p0, const E* __restrict__ p1,
                 const E* __restrict__ q0, const E* __restrict__ q1, long long rows, long long n, long long m,
                 E c, E tau) {
  const long long j0 = (static_cast<long long>(blockIdx.x) * XS_PAIR_BLOCK + threadIdx.x) * VEC;
  if (j0 >= m) return;
  const E inv_sc = E(1) / xs_sqrt(c);
  long long batch = -1;
  E cq0[VEC], cq1[VEC];
  for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
    const long long b = r / n;
    if (b != batch) {
      batch = b;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        cq0[k] = q0[b * m + j0 + k];
        cq1[k] = MODEL == XS_POINCARE ? q1[b * m + j0 + k] : E(0);
      }
    }
    const E rp0 = p0[r];
    const E rp1 = MODEL == XS_POINCARE ? p1[r] : E(0);
    E gv[VEC], d[VEC];
    xs_load<G, VEC>(gram + r * m + j0, gv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const E w = xs_pair_w<MODEL>(gv[k], rp0, rp1, cq0[k], cq1[k], c, tau);
      d[k] = xs_log1p(w + xs_sqrt(w * (w + E(2)))) * inv_sc;
    }
    xs_store<T, VEC>(out + r * m + j0, d);
  }
}

// Backward: coef[r, j] = A_rj (see the header); row_part[r, blockIdx.x * 8 +
// warp] = the warp's share of the row sum (Poincare); col_part[blockIdx.y %
// tiles, b * m + j] = the row tile's column sum (Poincare); c_part[block] = the
// block's share of dL/dc (when need_c). Block (x, y) covers columns
// [x * 256 * VEC, ...) and rows tile_rows * (y % tiles) ... of batch y / tiles.
template <int MODEL, class T, class E, int VEC>
__global__ void __launch_bounds__(XS_PAIR_BLOCK)
    xs_cdist_bwd(const T* __restrict__ dist, const T* __restrict__ grad, E* __restrict__ coef,
                 E* __restrict__ row_part, E* __restrict__ col_part, E* __restrict__ c_part,
                 const E* __restrict__ p0, const E* __restrict__ p1, const E* __restrict__ q0,
                 const E* __restrict__ q1, long long n, long long m, long long tiles, long long tile_rows,
                 E c, int need_c) {
  __shared__ E smem[32];
  const long long j0 = (static_cast<long long>(blockIdx.x) * XS_PAIR_BLOCK + threadIdx.x) * VEC;
  const bool active = j0 < m;
  const long long b = blockIdx.y / tiles;
  const long long r_begin = b * n + (blockIdx.y % tiles) * tile_rows;
  const long long r_end = min(r_begin + tile_rows, (b + 1) * n);
  const E sc = xs_sqrt(c), inv_sc = E(1) / sc, inv_c = E(1) / c;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  E cq0[VEC], cq1[VEC], colsum[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    cq0[k] = active ? q0[b * m + j0 + k] : E(0);
    cq1[k] = (active && MODEL == XS_POINCARE) ? q1[b * m + j0 + k] : E(0);
    colsum[k] = E(0);
  }
  E csum[1] = {E(0)};
  for (long long r = r_begin; r < r_end; ++r) {
    const E rp0 = p0[r];
    const E rp1 = MODEL == XS_POINCARE ? p1[r] : E(0);
    E rowsum[1] = {E(0)};
    if (active) {
      E dv[VEC], gv[VEC], a[VEC];
      xs_load<T, VEC>(dist + r * m + j0, dv);
      xs_load<T, VEC>(grad + r * m + j0, gv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        a[k] = E(0);
        if (!(dv[k] <= E(0))) {  // a positive or NaN distance (NaN: every term NaN)
          // exp(s) stays finite: beyond s_max the gradient terms are 0 or constant anyway.
          const E s_max = sizeof(E) == 4 ? E(80) : E(700);
          const E s = sc * dv[k] > s_max ? s_max : sc * dv[k];
          const E em = xs_expm1(s);
          const E half = E(0.5) * em;
          const E sinh_s = half * ((em + E(2)) / (em + E(1)));
          const E f = inv_sc / sinh_s;
          if (MODEL == XS_POINCARE) {
            const E t = gv[k] * (em / (em + E(2))) * inv_sc;  // g f w
            a[k] = gv[k] * f * rp1 * cq1[k];
            rowsum[0] += a[k] + c * rp1 * t;
            colsum[k] += a[k] + E(0.5) * cq1[k] * t;
            if (need_c)
              csum[0] += -gv[k] * dv[k] * E(0.5) * inv_c + t * (inv_c + rp0 * rp1 + E(0.5) * cq0[k] * cq1[k] * inv_c);
          } else {
            const E w = half * (em / (em + E(1)));
            a[k] = -c * gv[k] * f;
            if (need_c) csum[0] += -gv[k] * dv[k] * E(0.5) * inv_c + gv[k] * f * (E(1) + w) * inv_c;
          }
        }
      }
      xs_store<E, VEC>(coef + r * m + j0, a);
    }
    if (MODEL == XS_POINCARE) {
      xs_group_sum<32>(rowsum);
      if (lane == 0) row_part[r * (gridDim.x * (XS_PAIR_BLOCK / 32)) + blockIdx.x * (XS_PAIR_BLOCK / 32) + warp] = rowsum[0];
    }
  }
  if (MODEL == XS_POINCARE && active) {
    E* dst = col_part + (blockIdx.y % tiles) * (gridDim.y / tiles) * m + b * m + j0;
#pragma unroll
    for (int k = 0; k < VEC; ++k) dst[k] = colsum[k];
  }
  if (need_c) {
    xs_block_sum<XS_PAIR_BLOCK>(csum, smem);
    if (threadIdx.x == 0) c_part[static_cast<long long>(blockIdx.y) * gridDim.x + blockIdx.x] = csum[0];
  }
}
