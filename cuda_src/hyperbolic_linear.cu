// Hyperbolic linear maps as the epilogue of one GEMM (xpu_stone/linear.py).
// One warp per row; row sums and the per-row formula in S (fp64), elements in S
// and rounded to T once.
//
// Mobius matrix-vector product (Ganea et al. 2018), v = M x from the GEMM:
//   out = phi v,  phi = tanh(|v|/|x| artanh(sqrt(c)|x|)) / (sqrt(c)|v|).
// Backward (g = dL/dout): dL/dv = phi g + 2 <g,v> dphi/d|v|^2 v (then GEMMs),
//   gamma = 2 <g,v> dphi/d|x|^2 (dL/dx = gv M + gamma x), dL/dc = <g,v> dphi/dc,
// the derivatives from the same formula on dual numbers.
//
// Poincare MLR / fully-connected layer of HNN++ (Shimizu et al. 2021), with
// pz = x z from the GEMM (z: D_in x D_out, columns z_k) and zn_k = |z_k|:
//   lambda = 2 / (1 - c|x|^2),  P = pz / zn,
//   q = sqrt(c) lambda P cosh(2 sqrt(c) r) - (lambda - 1) sinh(2 sqrt(c) r),
//   v = 2 zn / sqrt(c) asinh(q)                         (MLR: out = v)
//   w = sinh(sqrt(c) v) / sqrt(c),  out = w / (1 + sqrt(1 + c|w|^2))   (FC)
// Backward writes, per row i and column k: gpz = dL/dP / zn, H = dL/dzn at
// fixed P, Rk = dL/dr_k, and gamma_i = dL/dlambda * c lambda^2 (the host does
// the GEMMs and the column sums).
#include "common/domain.cuh"
#include "common/dtype.cuh"
#include "common/math.cuh"
#include "common/reduce.cuh"

// (xs_sinh, xs_cosh, xs_asinh and their dual-number forms come from math.cuh.)
// sqrt(c) v and 2 sqrt(c) r are clamped to [-XS_HYP_ARG_MAX, XS_HYP_ARG_MAX]
// (sinh(50) = 2.6e21: the point is then 1e-21 of the radius from the boundary).
#define XS_HYP_ARG_MAX 50.0

// ------------------------------------------------------------ mobius_matvec
// The call's curvature: *c_ptr (a tensor c, read on the device) or the value c; NaN
// unless xs_curvature_ok, so that every output and gradient of the call is NaN.
__device__ __forceinline__ double xs_call_c(const double* __restrict__ c_ptr, double c) {
  const double v = c_ptr != nullptr ? *c_ptr : c;
  return xs_curvature_ok(v) ? v : xs_nan(v);
}

template <class R, class S>
__device__ __forceinline__ R xs_matvec_phi(const R& vv, const R& xx, const R& c) {
  const R sc = xs_sqrt(c);
  const R r = xs_norm_from_sq<R, S>(vv);
  const R n = xs_norm_from_sq<R, S>(xx);
  return xs_tanh_c<R, S>(r / n * xs_artanh_c<R, S>(sc * n)) / (sc * r);
}

// Sums of a row of a (rows x D) matrix over one warp.
template <class T, class S>
__device__ __forceinline__ S xs_warp_sqnorm(const T* __restrict__ row, long long D, int lane) {
  S s[1] = {S(0)};
  for (long long i = lane; i < D; i += 32) {
    const S v = xs_to_e(row[i]);
    s[0] += v * v;
  }
  xs_group_sum<32>(s);
  return s[0];
}

template <class T, class S>
__global__ void xs_matvec_fwd(const T* __restrict__ x, const T* __restrict__ v, T* __restrict__ out,
                              const double* __restrict__ c_ptr, long long rows, long long din, long long dout,
                              double c) {
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* xr = x + row * din;
  const T* vr = v + row * dout;
  const S xx = xs_warp_sqnorm<T, S>(xr, din, lane);
  const S vv = xs_warp_sqnorm<T, S>(vr, dout, lane);
  const S phi = xs_matvec_phi<S, S>(vv, xx, S(xs_call_c(c_ptr, c)));
  T* o = out + row * dout;
  for (long long i = lane; i < dout; i += 32) o[i] = xs_from_e<T>(typename xs_traits<T>::E(phi * S(xs_to_e(vr[i]))));
}

template <class T, class S>
__global__ void xs_matvec_bwd(const T* __restrict__ x, const T* __restrict__ v, const T* __restrict__ g,
                              T* __restrict__ gv, typename xs_traits<T>::P* __restrict__ gamma,
                              typename xs_traits<T>::P* __restrict__ gc, const double* __restrict__ c_ptr,
                              long long rows, long long din, long long dout, double c) {
  using P = typename xs_traits<T>::P;
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const T* vr = v + row * dout;
  const T* gr = g + row * dout;
  const S xx = xs_warp_sqnorm<T, S>(x + row * din, din, lane);
  S s[2] = {S(0), S(0)};  // |v|^2, <g, v>
  for (long long i = lane; i < dout; i += 32) {
    const S vi = xs_to_e(vr[i]);
    s[0] += vi * vi;
    s[1] += S(xs_to_e(gr[i])) * vi;
  }
  xs_group_sum<32>(s);
  using D3 = xs_dual<S, 3>;
  const D3 phi = xs_matvec_phi<D3, S>(D3::seed(s[0], 0), D3::seed(xx, 1), D3::seed(S(xs_call_c(c_ptr, c)), 2));
  const S kv = S(2) * s[1] * phi.d[0];
  T* gvr = gv + row * dout;
  for (long long i = lane; i < dout; i += 32)
    gvr[i] = xs_from_e<T>(typename xs_traits<T>::E(phi.v * S(xs_to_e(gr[i])) + kv * S(xs_to_e(vr[i]))));
  if (lane == 0) {
    gamma[row] = P(S(2) * s[1] * phi.d[1]);
    if (gc != nullptr) gc[row] = P(s[1] * phi.d[2]);
  }
}

// ------------------------------------------------------------ HNN++ MLR / FC
// v(P, lambda, r, zn) of one element (see the header).
template <class R, class S>
__device__ __forceinline__ R xs_hnn_v(const R& p, const R& lam, const R& r, const R& zn, S sc) {
  const R two_r = xs_clamp(S(2) * sc * r, -S(XS_HYP_ARG_MAX), S(XS_HYP_ARG_MAX));
  const R ch = xs_cosh(two_r), sh = xs_sinh(two_r);
  const R q = sc * lam * p * ch - (lam - S(1)) * sh;
  return S(2) * zn / sc * xs_asinh(q);
}

// w = sinh(sqrt(c) v) / sqrt(c) and dw/dv, with sqrt(c) v clamped.
template <class S>
__device__ __forceinline__ void xs_hnn_w(S v, S sc, S& w, S& dw) {
  const S a = sc * v;
  const bool clamped = a > S(XS_HYP_ARG_MAX) || a < -S(XS_HYP_ARG_MAX);
  const S ac = clamped ? (a > 0 ? S(XS_HYP_ARG_MAX) : -S(XS_HYP_ARG_MAX)) : a;
  w = xs_sinh(ac) / sc;
  dw = clamped ? S(0) : xs_cosh(ac);
}

template <class S>
__device__ __forceinline__ S xs_lambda(S xx, S c) {
  return S(2) / fmax(S(1) - c * xx, S(xs_limits<S>::min_denom));
}

// MODE 0: MLR logits; MODE 1: FC layer output.
template <class T, class S, int MODE>
__global__ void xs_hnn_fwd(const T* __restrict__ x, const T* __restrict__ pz, T* __restrict__ out,
                           const S* __restrict__ zn, const S* __restrict__ r, long long rows, long long din,
                           long long dout, double c) {
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const S cs = S(c), sc = xs_sqrt(cs);
  const S lam = xs_lambda(xs_warp_sqnorm<T, S>(x + row * din, din, lane), cs);
  const T* pr = pz + row * dout;
  T* o = out + row * dout;
  if (MODE == 0) {
    for (long long k = lane; k < dout; k += 32)
      o[k] = xs_from_e<T>(typename xs_traits<T>::E(xs_hnn_v<S, S>(S(xs_to_e(pr[k])) / zn[k], lam, r[k], zn[k], sc)));
    return;
  }
  S ww[1] = {S(0)};
  for (long long k = lane; k < dout; k += 32) {
    S w, dw;
    xs_hnn_w(xs_hnn_v<S, S>(S(xs_to_e(pr[k])) / zn[k], lam, r[k], zn[k], sc), sc, w, dw);
    ww[0] += w * w;
  }
  xs_group_sum<32>(ww);
  const S psi = S(1) / (S(1) + xs_sqrt(S(1) + cs * ww[0]));
  for (long long k = lane; k < dout; k += 32) {
    S w, dw;
    xs_hnn_w(xs_hnn_v<S, S>(S(xs_to_e(pr[k])) / zn[k], lam, r[k], zn[k], sc), sc, w, dw);
    o[k] = xs_from_e<T>(typename xs_traits<T>::E(w * psi));
  }
}

// buf: rows x 3 dout, [gpz | H | Rk] (see the header), stored as P; gamma: rows.
template <class T, class S, int MODE>
__global__ void xs_hnn_bwd(const T* __restrict__ x, const T* __restrict__ pz, const T* __restrict__ g,
                           const S* __restrict__ zn, const S* __restrict__ r,
                           typename xs_traits<T>::P* __restrict__ buf, typename xs_traits<T>::P* __restrict__ gamma,
                           long long rows, long long din, long long dout, double c) {
  using P = typename xs_traits<T>::P;
  using D4 = xs_dual<S, 4>;
  const long long row = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const S cs = S(c), sc = xs_sqrt(cs);
  const S xx = xs_warp_sqnorm<T, S>(x + row * din, din, lane);
  const S lam = xs_lambda(xx, cs);
  const T* pr = pz + row * dout;
  const T* gr = g + row * dout;
  S psi = S(1), kw = S(0);
  if (MODE == 1) {
    S s[2] = {S(0), S(0)};  // |w|^2, <g, w>
    for (long long k = lane; k < dout; k += 32) {
      S w, dw;
      xs_hnn_w(xs_hnn_v<S, S>(S(xs_to_e(pr[k])) / zn[k], lam, r[k], zn[k], sc), sc, w, dw);
      s[0] += w * w;
      s[1] += S(xs_to_e(gr[k])) * w;
    }
    xs_group_sum<32>(s);
    const S root = xs_sqrt(S(1) + cs * s[0]);
    psi = S(1) / (S(1) + root);
    const S dpsi = -cs / (S(2) * root * (S(1) + root) * (S(1) + root));  // d psi / d|w|^2
    kw = S(2) * dpsi * s[1];
  }
  S glam[1] = {S(0)};
  P* row_buf = buf + row * 3 * dout;
  for (long long k = lane; k < dout; k += 32) {
    const S znk = zn[k];
    const D4 v = xs_hnn_v<D4, S>(D4::seed(S(xs_to_e(pr[k])) / znk, 0), D4::seed(lam, 1), D4::seed(r[k], 2),
                                 D4::seed(znk, 3), sc);
    S gvk = S(xs_to_e(gr[k]));
    if (MODE == 1) {
      S w, dw;
      xs_hnn_w(v.v, sc, w, dw);
      gvk = (psi * gvk + kw * w) * dw;
    }
    row_buf[k] = P(gvk * v.d[0] / znk);
    row_buf[dout + k] = P(gvk * v.d[3]);
    row_buf[2 * dout + k] = P(gvk * v.d[2]);
    glam[0] += gvk * v.d[1];
  }
  xs_group_sum<32>(glam);
  if (lane == 0) {
    // lambda = 2 / (1 - c|x|^2): dlambda/dx = c lambda^2 x (0 where the denominator is clamped).
    const bool clamped = S(1) - cs * xx < S(xs_limits<S>::min_denom);
    gamma[row] = P(clamped ? S(0) : glam[0] * cs * lam * lam);
  }
}
