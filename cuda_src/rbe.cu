// RBE compressed layers (xpu_stone/rbe, shared/RBE.md): the weight W (out x in) is
// generated tile by tile from its atoms and residual inside the matmul and never
// written to global memory.
//
// Tile (tr, tc), B x B, cell (i, j): rho_ij, psi_ij from the cell-centred coordinates
// u_j = (2j+1)/B - 1, v_i = (2i+1)/B - 1 (each thread keeps those of its cells in
// registers); per atom, from its shadow row (u, theta, phi, ln A) and state word
// (trk bits 19:18, m_r 17:8, m_psi 7:2 two's complement, s_h 1, sigma 0):
//   arg = kr rho + m psi + c0,  kr = 2 omega u,  c0 = m theta + phi,  omega = m_r delta_omega
//   W_ij = sum_k amp_k g_k(arg) + scale[o][j / 128] level[code_ij],  amp = (-1)^sigma e^(ln A)
// g: sin (kind 0), sinh (1), cosh (2), tanh (3); the hyperbolic argument clamped to
// +-hyp_max (derivative 0 outside). The residual code of column k of row o is bit p of
// word (k % 128) / 32 of plane p of group k / 128 (bit k % 32), planes (out, G, bits, 4).
//
// xs_rbe_mm (one block of 256 threads per tile row or column, batch block and split):
//   MODE 0: FORWARD, y = x W^T (+ bias): the block walks the tiles of tile row tr.
//   MODE 1: DATA GRADIENT, gx = delta W: the block walks the tiles of tile column tc.
// Each tile is generated into shared memory once and multiplied with BN rows of the
// input. With one split the block writes the output (T, bias added); with several, its
// partial sums go to ws[split][row][col] (S) and xs_rbe_finish adds them up.
// xs_rbe_grad (one block per tile): G = delta[:, rows]^T x[:, cols] of the tile, in
// registers, reduced against the atom derivatives (g' the derivative of g):
//   dphi = sum G amp g'(arg), dtheta = m dphi, du = 2 omega sum G amp g'(arg) rho,
//   dlnA = sum G amp g(arg);   per row, sum_j G_ij level[code_ij] (this tile's part of
//   the scales' gradient, added atomically into g_scale[o][group]: a tile lies in one
//   group of 128 columns, which 128 / B tiles share).
#include "common/dtype.cuh"
#include "common/math.cuh"
#include "common/reduce.cuh"

// Per-atom constants of one tile.
template <class S>
struct xs_rbe_atom {
  S kr, m, c0, amp, two_omega;
  int kind;
};

__device__ __forceinline__ void xs_rbe_sincos(float a, float* s, float* c) {
  sincospif(a * 0.318309886183790672f, s, c);  // exact reduction of the multiple of pi
}
__device__ __forceinline__ void xs_rbe_sincos(double a, double* s, double* c) { sincos(a, s, c); }

// g(arg) and g'(arg) of an atom of `kind`.
template <class S>
__device__ __forceinline__ void xs_rbe_basis(int kind, S a, S hyp_max, S& g, S& dg) {
  if (kind == 0) {
    xs_rbe_sincos(a, &g, &dg);
  } else if (kind == 3) {
    g = xs_tanh(a);
    dg = S(1) - g * g;
  } else {
    const bool inside = a >= -hyp_max && a <= hyp_max;
    const S ac = fmin(fmax(a, -hyp_max), hyp_max);
    const S sh = xs_sinh(ac), ch = xs_cosh(ac);
    g = kind == 1 ? sh : ch;
    dg = inside ? (kind == 1 ? ch : sh) : S(0);
  }
}

// The constants of the J atoms of tile t into smem (threads 0..J-1).
template <class S>
__device__ __forceinline__ void xs_rbe_load_atoms(xs_rbe_atom<S>* atoms, const float* __restrict__ shadow,
                                                  const int* __restrict__ state, long long t, int J,
                                                  double delta_omega) {
  const int k = threadIdx.x;
  if (k >= J) return;
  const float* sh = shadow + (t * J + k) * 4;
  const int w = state[t * J + k];
  const int trk = (w >> 18) & 3, m_r = (w >> 8) & 1023, s_h = (w >> 1) & 1, sigma = w & 1;
  const int m_psi = ((w >> 2) & 63) - (((w >> 7) & 1) << 6);
  const double two_omega = 2.0 * delta_omega * m_r;
  xs_rbe_atom<S> a;
  a.kr = S(two_omega * double(sh[0]));
  a.m = S(m_psi);
  a.c0 = S(double(m_psi) * double(sh[1]) + double(sh[2]));
  a.amp = S((sigma ? -1.0 : 1.0) * exp(double(sh[3])));
  a.two_omega = S(two_omega);
  a.kind = trk == 0 ? 0 : (trk == 2 ? 3 : 1 + s_h);
  atoms[k] = a;
}

// rho and psi of cell (i, j) of a B x B tile, in fp64 then rounded (as the host's table).
template <class S, int B>
__device__ __forceinline__ void xs_rbe_polar(int i, int j, S& rho, S& psi) {
  const double u = (2.0 * j + 1.0) / B - 1.0, v = (2.0 * i + 1.0) / B - 1.0;
  rho = S(fmin(sqrt(u * u + v * v), 1.0));
  psi = S(atan2(v, u));
}

// The residual code of element (o, k): bit b from plane b of group k / 128.
__device__ __forceinline__ int xs_rbe_code(const int* __restrict__ planes, long long o, long long k,
                                           long long groups, int bits) {
  const int c = static_cast<int>(k & 127);
  const int* p = planes + ((o * groups + (k >> 7)) * bits) * 4 + (c >> 5);
  int code = 0;
  for (int b = 0; b < bits; ++b) code |= ((p[b * 4] >> (c & 31)) & 1) << b;
  return code;
}

// The residual sigma level[code] of element (o, k); 0 when bits == 0.
template <class S>
__device__ __forceinline__ S xs_rbe_residual(const int* __restrict__ planes, const float* __restrict__ scales,
                                             const S* levels, long long o, long long k, long long groups,
                                             int bits) {
  if (bits == 0) return S(0);
  return S(scales[o * groups + (k >> 7)]) * levels[xs_rbe_code(planes, o, k, groups, bits)];
}

// MODE 0: FORWARD (x rows against tile row tr); MODE 1: DATA GRADIENT (delta rows against
// tile column tc). Grid (tile rows or columns, batch blocks of BN, splits).
template <class T, class S, int B, int BN, int MODE>
__global__ void __launch_bounds__(256)
    xs_rbe_mm(const T* __restrict__ in, const float* __restrict__ shadow, const int* __restrict__ state,
              const int* __restrict__ planes, const float* __restrict__ scales, const double* __restrict__ levels_g,
              const S* __restrict__ bias, S* __restrict__ ws, T* __restrict__ out, long long n_rows,
              long long out_f, long long in_f, int J, int bits, int tiles_per_split, double delta_omega,
              double hyp_max) {
  constexpr int NE = B * B / 256;   // cells a thread generates
  constexpr int NPT = BN * B / 256; // batch rows a thread accumulates
  __shared__ S w_s[B][B + 1];
  __shared__ S in_s[BN][B];
  __shared__ xs_rbe_atom<S> atoms[8];
  __shared__ S levels[16];
  const int t = threadIdx.x;
  const long long tile_rows = (out_f + B - 1) / B, tile_cols = (in_f + B - 1) / B;
  const long long groups = (in_f + 127) / 128;
  const long long fixed = blockIdx.x;                  // tr (MODE 0) or tc (MODE 1)
  const long long n_walk = MODE == 0 ? tile_cols : tile_rows;
  const long long w0 = static_cast<long long>(blockIdx.z) * tiles_per_split;
  const long long w1 = min(n_walk, w0 + tiles_per_split);
  const long long nb = static_cast<long long>(blockIdx.y) * BN;
  const long long in_dim = MODE == 0 ? in_f : out_f, out_dim = MODE == 0 ? out_f : in_f;
  if (bits > 0 && t < (1 << bits)) levels[t] = S(levels_g[t]);
  S rho[NE], psi[NE];
#pragma unroll
  for (int e = 0; e < NE; ++e) xs_rbe_polar<S, B>((t + 256 * e) / B, (t + 256 * e) % B, rho[e], psi[e]);
  const S hmax = S(hyp_max);
  const int r = t % B, n0 = (t / B) * NPT;
  S acc[NPT];
#pragma unroll
  for (int q = 0; q < NPT; ++q) acc[q] = S(0);

  for (long long wk = w0; wk < w1; ++wk) {
    const long long tr = MODE == 0 ? fixed : wk, tc = MODE == 0 ? wk : fixed;
    const long long tile = tr * tile_cols + tc;
    xs_rbe_load_atoms<S>(atoms, shadow, state, tile, J, delta_omega);
    // the input columns this tile meets: x[:, tc B + j] (MODE 0) or delta[:, tr B + i] (MODE 1)
    const long long base = MODE == 0 ? tc * B : tr * B;
    for (int e = t; e < BN * B; e += 256) {
      const long long n = nb + e / B, col = base + e % B;
      in_s[e / B][e % B] = (n < n_rows && col < in_dim) ? S(xs_to_e(in[n * in_dim + col])) : S(0);
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < NE; ++e) {
      const int i = (t + 256 * e) / B, j = (t + 256 * e) % B;
      const long long o = tr * B + i, k = tc * B + j;
      S w = S(0);
      if (o < out_f && k < in_f) {
        for (int a = 0; a < J; ++a) {
          const xs_rbe_atom<S> at = atoms[a];
          S g, dg;
          xs_rbe_basis<S>(at.kind, at.kr * rho[e] + at.m * psi[e] + at.c0, hmax, g, dg);
          w += at.amp * g;
        }
        w += xs_rbe_residual<S>(planes, scales, levels, o, k, groups, bits);
      }
      w_s[i][j] = w;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < B; ++c) {
      const S wv = MODE == 0 ? w_s[r][c] : w_s[c][r];
#pragma unroll
      for (int q = 0; q < NPT; ++q) acc[q] += wv * in_s[n0 + q][c];
    }
    __syncthreads();
  }
  const long long oc = fixed * B + r;
  if (oc >= out_dim) return;
#pragma unroll
  for (int q = 0; q < NPT; ++q) {
    const long long n = nb + n0 + q;
    if (n >= n_rows) break;
    if (gridDim.z == 1) {
      const S b = (MODE == 0 && bias != nullptr) ? bias[oc] : S(0);
      out[n * out_dim + oc] = xs_from_e<T>(typename xs_traits<T>::E(acc[q] + b));
    } else {
      ws[(static_cast<long long>(blockIdx.z) * n_rows + n) * out_dim + oc] = acc[q];
    }
  }
}

// out[n][c] = sum_s ws[s][n][c] (+ bias[c]), rounded to T.
template <class T, class S>
__global__ void __launch_bounds__(256)
    xs_rbe_finish(const S* __restrict__ ws, const S* __restrict__ bias, T* __restrict__ out, long long n_rows,
                  long long cols, int splits) {
  const long long total = n_rows * cols;
  for (long long e = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<long long>(gridDim.x) * blockDim.x) {
    S s = bias != nullptr ? bias[e % cols] : S(0);
    for (int k = 0; k < splits; ++k) s += ws[k * total + e];
    out[e] = xs_from_e<T>(typename xs_traits<T>::E(s));
  }
}

// One block per tile: the atoms' gradients g_shadow[tile][k] = (du, dtheta, dphi, dlnA)
// and, when g_scale is not null, the tile's row sums added into the zeroed scales'
// gradient g_scale[o][tc B / 128] (out x groups).
template <class T, class S, int B>
__global__ void __launch_bounds__(256)
    xs_rbe_grad(const T* __restrict__ x, const T* __restrict__ delta, const float* __restrict__ shadow,
                const int* __restrict__ state, const int* __restrict__ planes, const double* __restrict__ levels_g,
                S* __restrict__ g_shadow, S* __restrict__ g_scale,
                long long n_rows, long long out_f, long long in_f, int J, int bits, double delta_omega,
                double hyp_max) {
  constexpr int NE = B * B / 256;
  constexpr int CH = 32;  // batch rows staged at once
  __shared__ S d_s[CH][B];
  __shared__ S x_s[CH][B];
  __shared__ S red[32 * 3];
  __shared__ S part[B * B / 32];
  __shared__ xs_rbe_atom<S> atoms[8];
  __shared__ S levels[16];
  const int t = threadIdx.x;
  const long long tile_cols = (in_f + B - 1) / B, groups = (in_f + 127) / 128;
  const long long tile = blockIdx.x, tr = tile / tile_cols, tc = tile % tile_cols;
  if (bits > 0 && t < (1 << bits)) levels[t] = S(levels_g[t]);
  xs_rbe_load_atoms<S>(atoms, shadow, state, tile, J, delta_omega);
  __syncthreads();
  S gacc[NE];
#pragma unroll
  for (int e = 0; e < NE; ++e) gacc[e] = S(0);
  for (long long n0 = 0; n0 < n_rows; n0 += CH) {
    for (int e = t; e < CH * B; e += 256) {
      const long long n = n0 + e / B, o = tr * B + e % B, k = tc * B + e % B;
      d_s[e / B][e % B] = (n < n_rows && o < out_f) ? S(xs_to_e(delta[n * out_f + o])) : S(0);
      x_s[e / B][e % B] = (n < n_rows && k < in_f) ? S(xs_to_e(x[n * in_f + k])) : S(0);
    }
    __syncthreads();
    for (int n = 0; n < CH; ++n) {
#pragma unroll
      for (int e = 0; e < NE; ++e) gacc[e] += d_s[n][(t + 256 * e) / B] * x_s[n][(t + 256 * e) % B];
    }
    __syncthreads();
  }
  const S hmax = S(hyp_max);
  // per atom: sum G amp g', sum G amp g' rho, sum G amp g (G is 0 outside the matrix)
  S s[8][3];
#pragma unroll
  for (int a = 0; a < 8; ++a) s[a][0] = s[a][1] = s[a][2] = S(0);
#pragma unroll
  for (int e = 0; e < NE; ++e) {
    S rho, psi;
    xs_rbe_polar<S, B>((t + 256 * e) / B, (t + 256 * e) % B, rho, psi);
#pragma unroll
    for (int a = 0; a < 8; ++a) {
      if (a >= J) break;
      const xs_rbe_atom<S> at = atoms[a];
      S g, dg;
      xs_rbe_basis<S>(at.kind, at.kr * rho + at.m * psi + at.c0, hmax, g, dg);
      const S ga = gacc[e] * at.amp;
      s[a][0] += ga * dg;
      s[a][1] += ga * dg * rho;
      s[a][2] += ga * g;
    }
  }
#pragma unroll
  for (int a = 0; a < 8; ++a) {
    if (a >= J) break;
    xs_block_sum<256, S, 3>(s[a], red);
    if (t == 0) {
      S* gs = g_shadow + (tile * J + a) * 4;
      gs[0] = s[a][1] * atoms[a].two_omega;
      gs[1] = s[a][0] * atoms[a].m;
      gs[2] = s[a][0];
      gs[3] = s[a][2];
    }
  }
  if (g_scale == nullptr) return;
  // per row: sum_j G_ij level[code_ij]; a warp's 32 cells share a row (B >= 32)
#pragma unroll
  for (int e = 0; e < NE; ++e) {
    const int i = (t + 256 * e) / B, j = (t + 256 * e) % B;
    const long long o = tr * B + i, k = tc * B + j;
    S v[1] = {S(0)};
    if (o < out_f && k < in_f) v[0] = gacc[e] * levels[xs_rbe_code(planes, o, k, groups, bits)];
    xs_group_sum<32>(v);
    if ((t & 31) == 0) part[(t + 256 * e) / 32] = v[0];
  }
  __syncthreads();
  for (int i = t; i < B; i += 256) {
    const long long o = tr * B + i;
    if (o >= out_f) continue;
    S sum = S(0);
    for (int q = 0; q < B / 32; ++q) sum += part[i * (B / 32) + q];
    atomicAdd(g_scale + o * groups + ((tc * B) >> 7), sum);  // B divides 128
  }
}
