// Fused multi-tensor Riemannian SGD / Adam steps (xpu_stone.optim).
//
// One launch updates every parameter of a (device, dtype) set. The host packs a
// device array of `xs_opt_meta`, one entry per tensor (pointers, sizes, manifold,
// hyper-parameters); warp w of the grid updates row w of the concatenation of
// all tensors' rows and finds its tensor by binary search over `row_start`.
//
// Manifold rows (Poincare ball, Lorentz hyperboloid) need row reductions; the
// three passes over a row read x, g and the old state and write only at the end:
//   A  |x|^2, |g|^2, <x,g>           -> Riemannian gradient rg = a_g g + a_x x (+ sign flip
//                                       of the Lorentz time coordinate), its squared norm
//   B  new moment b (Adam m / SGD momentum buffer) and step u, recomputed elementwise;
//      <x,u>, |u|^2, <x,b>, <u,b>      -> y = A x + B u (expmap or retraction, then the
//                                       stabilising projection), transported b' = Tb b + Ty y + Tx x
//   C  recomputes rg, b, u elementwise as B does (both call xs_step_element), writes y and b'.
// The same per-row formulas, in the same order, are the torch path of
// xpu_stone/optim/_math.py (tested against independent float64 references).
// Euclidean tensors get the plain elementwise SGD / Adam update, in rows of D
// elements (the last one shorter). Sparse gradients: `idx` lists the parameter
// row of each gradient row (coalesced, so no row appears twice).
#include "common/dtype.cuh"
#include "common/math.cuh"
#include "common/reduce.cuh"

enum { XS_EUCLIDEAN = 0, XS_POINCARE = 1, XS_LORENTZ = 2 };
enum {
  XS_AMSGRAD = 1,
  XS_NESTEROV = 2,
  XS_RETR = 4,        // first-order retraction proj(x + u) instead of the exponential map
  XS_MOMENTUM = 8,    // SGD keeps a momentum buffer
  XS_FIRST_STEP = 16  // SGD: the buffer starts as the gradient
};

// Mirrors META_FIELDS in xpu_stone/ops/optim.py (checked by tests/test_cuda_layout.py):
// 24 fields of 8 bytes.
struct xs_opt_meta {
  long long param, grad, buf, v, vmax, idx;
  long long row_start, rows, D, numel, kind, flags, step;
  double c, ball_eps, lr, wd, beta1, beta2, eps, bc1, bc2, pad0, pad1;
};

template <class T>
__device__ __forceinline__ double xs_ld(const T* p, long long i) {
  return static_cast<double>(xs_to_e(p[i]));
}
template <class T>
__device__ __forceinline__ void xs_st(T* p, long long i, double v) {
  p[i] = xs_from_e<T>(static_cast<typename xs_traits<T>::E>(v));
}

template <int N>
__device__ __forceinline__ void xs_warp_sum(double (&v)[N]) {
  xs_group_sum<32>(v);
}

// The per-row scalars of the retraction and of the transport (see the header).
// Inputs are the Euclidean dots; for Lorentz, x0, u0, b0 are the time coordinates.
struct xs_retr_coeffs {
  double Ay, By, y0, Tb, Ty, Tx;
};

__device__ __forceinline__ xs_retr_coeffs xs_retract_transport(int kind, int flags, double c,
                                                              double ball_eps, double xx, double xu,
                                                              double uu, double xb, double ub,
                                                              double x0, double u0, double b0) {
  const double min_sq = xs_limits<double>::min_sqnorm, min_den = xs_limits<double>::min_denom;
  const double sc = sqrt(c);
  xs_retr_coeffs r;
  if (kind == XS_POINCARE) {
    if (flags & XS_RETR) {
      r.Ay = 1.0;
      r.By = 1.0;
    } else {
      const double un = sqrt(fmax(uu, min_sq));
      const double lam = 2.0 / fmax(1.0 - c * xx, min_den);
      const double t = xs_tanh(fmin(sc * lam * un * 0.5, xs_limits<double>::tanh_max)) / (sc * un);
      const double xw = t * xu, ww = t * t * uu;
      const double den = fmax(1.0 + 2.0 * c * xw + c * c * xx * ww, min_den);
      r.Ay = (1.0 + 2.0 * c * xw + c * ww) / den;
      r.By = (1.0 - c * xx) * t / den;
    }
    double yy = fmax(r.Ay * r.Ay * xx + 2.0 * r.Ay * r.By * xu + r.By * r.By * uu, 0.0);
    const double maxn = (1.0 - ball_eps) / sc;
    if (yy > maxn * maxn) {
      const double p = maxn / sqrt(yy);
      r.Ay *= p;
      r.By *= p;
      yy *= p * p;
    }
    r.y0 = 0.0;
    const double xy = r.Ay * xx + r.By * xu, yb = r.Ay * xb + r.By * ub;
    const double a = -c * c * yb * xx - c * xb + 2.0 * c * c * xy * xb;
    const double bq = c * c * xb * yy - c * yb;
    const double d = fmax(1.0 - 2.0 * c * xy + c * c * xx * yy, min_den);
    const double ratio = fmax(1.0 - c * yy, min_den) / fmax(1.0 - c * xx, min_den);
    r.Tb = ratio;
    r.Ty = ratio * 2.0 * a / d;
    r.Tx = -ratio * 2.0 * bq / d;
  } else {  // Lorentz
    if (flags & XS_RETR) {
      r.Ay = 1.0;
      r.By = 1.0;
    } else {
      const double th = sqrt(c * fmax(uu - 2.0 * u0 * u0, min_sq));
      r.Ay = cosh(th);
      r.By = sinh(th) / th;
    }
    const double xxs = xx - x0 * x0, xus = xu - x0 * u0, uus = uu - u0 * u0;
    const double ys2 = fmax(r.Ay * r.Ay * xxs + 2.0 * r.Ay * r.By * xus + r.By * r.By * uus, 0.0);
    r.y0 = sqrt(1.0 / c + ys2);
    const double yb = -r.y0 * b0 + r.Ay * (xb - x0 * b0) + r.By * (ub - u0 * b0);
    const double xy = -x0 * r.y0 + r.Ay * xxs + r.By * xus;
    const double kappa = c * yb / fmax(1.0 - c * xy, min_den);
    r.Tb = 1.0;
    r.Ty = kappa;
    r.Tx = kappa;
  }
  return r;
}

// MODE 0: SGD (momentum, dampening, Nesterov); MODE 1: Adam (AMSGrad).
// For SGD, beta1 holds the momentum and beta2 the dampening.
template <class T, int MODE>
__device__ __forceinline__ void xs_euclidean_rows(const xs_opt_meta& m, long long r, int lane) {
  T* x = reinterpret_cast<T*>(m.param);
  const T* g = reinterpret_cast<const T*>(m.grad);
  T* buf = reinterpret_cast<T*>(m.buf);
  T* v = reinterpret_cast<T*>(m.v);
  T* vmax = reinterpret_cast<T*>(m.vmax);
  const long long* idx = reinterpret_cast<const long long*>(m.idx);
  const long long prow = idx ? idx[r] : r;
  const long long len = idx ? m.D : min(m.D, m.numel - r * m.D);
  const long long po = prow * m.D, go = r * m.D;
  for (long long j = lane; j < len; j += 32) {
    const double xj = xs_ld(x, po + j);
    const double gj = xs_ld(g, go + j) + m.wd * xj;
    if (MODE == 0) {
      double dj = gj;
      if (m.flags & XS_MOMENTUM) {
        const double bj =
            (m.flags & XS_FIRST_STEP) ? gj : m.beta1 * xs_ld(buf, po + j) + (1.0 - m.beta2) * gj;
        xs_st(buf, po + j, bj);
        dj = (m.flags & XS_NESTEROV) ? gj + m.beta1 * bj : bj;
      }
      xs_st(x, po + j, xj - m.lr * dj);
    } else {
      const double mj = m.beta1 * xs_ld(buf, po + j) + (1.0 - m.beta1) * gj;
      double vj = m.beta2 * xs_ld(v, po + j) + (1.0 - m.beta2) * gj * gj;
      xs_st(buf, po + j, mj);
      xs_st(v, po + j, vj);
      if (m.flags & XS_AMSGRAD) {
        vj = fmax(vj, xs_ld(vmax, po + j));
        xs_st(vmax, po + j, vj);
      }
      const double denom = sqrt(vj / m.bc2) + m.eps;
      xs_st(x, po + j, xj - m.lr * (mj / m.bc1) / denom);
    }
  }
}

// Element j of a manifold row: x, the Riemannian gradient rg, the new moment b (0 without
// a buffer) and the step u. Passes B and C both recompute it (a lane cannot keep D / 32
// elements in registers), so they share this one definition and agree bit for bit.
struct xs_step_elem {
  double x, rg, b, u;
};

template <class T, int MODE>
__device__ __forceinline__ xs_step_elem xs_step_element(const xs_opt_meta& m, const T* x,
                                                        const T* g, const T* buf, long long po,
                                                        long long go, long long j, bool lorentz,
                                                        bool has_buf, double ag, double ax,
                                                        double su) {
  xs_step_elem e;
  e.x = xs_ld(x, po + j);
  const double gj = xs_ld(g, go + j) + m.wd * e.x;
  e.rg = ag * ((lorentz && j == 0) ? -gj : gj) + ax * e.x;
  e.b = 0.0;
  if (MODE == 1) {
    e.b = m.beta1 * xs_ld(buf, po + j) + (1.0 - m.beta1) * e.rg;
    e.u = su * e.b;
  } else if (has_buf) {
    e.b = (m.flags & XS_FIRST_STEP) ? e.rg : m.beta1 * xs_ld(buf, po + j) + (1.0 - m.beta2) * e.rg;
    e.u = su * ((m.flags & XS_NESTEROV) ? e.rg + m.beta1 * e.b : e.b);
  } else {
    e.u = su * e.rg;
  }
  return e;
}

template <class T, int MODE>
__device__ __forceinline__ void xs_manifold_row(const xs_opt_meta& m, long long r, int lane) {
  T* x = reinterpret_cast<T*>(m.param);
  const T* g = reinterpret_cast<const T*>(m.grad);
  T* buf = reinterpret_cast<T*>(m.buf);
  T* v = reinterpret_cast<T*>(m.v);
  T* vmax = reinterpret_cast<T*>(m.vmax);
  const long long* idx = reinterpret_cast<const long long*>(m.idx);
  const long long prow = idx ? idx[r] : r;
  const long long D = m.D, po = prow * D, go = r * D;
  const bool lorentz = m.kind == XS_LORENTZ;
  const double c = m.c, wd = m.wd;
  const bool has_buf = MODE == 1 || (m.flags & XS_MOMENTUM);

  // ---- pass A: |x|^2, |g|^2, <x,g> (g includes the weight decay)
  double s[3] = {0.0, 0.0, 0.0};
  for (long long j = lane; j < D; j += 32) {
    const double xj = xs_ld(x, po + j), gj = xs_ld(g, go + j) + wd * xj;
    s[0] += xj * xj;
    s[1] += gj * gj;
    s[2] += xj * gj;
  }
  xs_warp_sum(s);
  const double xx = s[0], gg = s[1], xg = s[2];
  // time coordinates (lane 0 holds element 0)
  const double x0 = __shfl_sync(0xffffffffu, xs_ld(x, po), 0);
  const double g0 = __shfl_sync(0xffffffffu, xs_ld(g, go), 0) + wd * x0;
  // rg_j = ag * flip_j * g_j + ax * x_j, flip_0 = -1 on Lorentz; rr = <rg, rg> (Riemannian)
  double ag, ax, rr;
  if (lorentz) {
    ag = 1.0;
    ax = c * xg;
    rr = fmax(gg - 2.0 * g0 * g0 + 2.0 * ax * xg + ax * ax * (xx - 2.0 * x0 * x0), 0.0);
  } else {
    const double den = fmax(1.0 - c * xx, xs_limits<double>::min_denom);
    ag = den * den * 0.25;
    ax = 0.0;
    rr = ag * gg;
  }

  // per-row scalars of the step: u = su * (b or rg) (+ nesterov term), b = new moment
  double vrow = 0.0, vmrow = 0.0, su = -m.lr;
  if (MODE == 1) {
    vrow = m.beta2 * (lane == 0 ? xs_ld(v, prow) : 0.0) + (1.0 - m.beta2) * rr;
    double vh = vrow;
    if (m.flags & XS_AMSGRAD) {
      vmrow = fmax(vrow, lane == 0 ? xs_ld(vmax, prow) : 0.0);
      vh = vmrow;
    }
    vh = __shfl_sync(0xffffffffu, vh, 0);
    su = -m.lr / (m.bc1 * (sqrt(vh / m.bc2) + m.eps));
  }

  // ---- pass B: elementwise rg, b, u; dots <x,u>, |u|^2, <x,b>, <u,b>
  double t[4] = {0.0, 0.0, 0.0, 0.0};
  double u0 = 0.0, b0 = 0.0;
  for (long long j = lane; j < D; j += 32) {
    const xs_step_elem e =
        xs_step_element<T, MODE>(m, x, g, buf, po, go, j, lorentz, has_buf, ag, ax, su);
    t[0] += e.x * e.u;
    t[1] += e.u * e.u;
    t[2] += e.x * e.b;
    t[3] += e.u * e.b;
    if (j == 0) {
      u0 = e.u;
      b0 = e.b;
    }
  }
  xs_warp_sum(t);
  u0 = __shfl_sync(0xffffffffu, u0, 0);
  b0 = __shfl_sync(0xffffffffu, b0, 0);
  const xs_retr_coeffs k =
      xs_retract_transport(m.kind, m.flags, c, m.ball_eps, xx, t[0], t[1], t[2], t[3], x0, u0, b0);

  // ---- pass C: write y and the transported moment
  for (long long j = lane; j < D; j += 32) {
    const xs_step_elem e =
        xs_step_element<T, MODE>(m, x, g, buf, po, go, j, lorentz, has_buf, ag, ax, su);
    const double yj = (lorentz && j == 0) ? k.y0 : k.Ay * e.x + k.By * e.u;
    xs_st(x, po + j, yj);
    if (has_buf) xs_st(buf, po + j, k.Tb * e.b + k.Ty * yj + k.Tx * e.x);
  }
  if (MODE == 1 && lane == 0) {
    xs_st(v, prow, vrow);
    if (m.flags & XS_AMSGRAD) xs_st(vmax, prow, vmrow);
  }
}

template <class T, int MODE>
__global__ void __launch_bounds__(256) xs_riemannian_step(const xs_opt_meta* __restrict__ meta, int n,
                                                          long long total_rows) {
  const long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= total_rows) return;  // whole warps leave together
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta[mid].row_start <= w) lo = mid;
    else hi = mid - 1;
  }
  const xs_opt_meta m = meta[lo];
  const long long r = w - m.row_start;
  if (m.kind == XS_EUCLIDEAN) xs_euclidean_rows<T, MODE>(m, r, lane);
  else xs_manifold_row<T, MODE>(m, r, lane);
}
