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
// Kernels by batch size (xpu_stone/ops/rbe.py picks): xs_rbe_gemv for at most 16 rows
// (a warp a tile, generated in registers); xs_rbe_mma for larger fp16/bf16 batches (the
// tile staged in shared memory in T, tensor-core mma.m16n8k16); xs_rbe_mm for larger
// fp32/fp64 batches. All share the modes below, the grid and the split workspace.
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

// float: a reduced to [-pi, pi] (k = rint(a / 2 pi); 2 pi as fp32 hi + lo, two FMAs, exact
// for |k| < 2^12), then the special-function unit (absolute error < 4e-7 there). double:
// the library's correctly reduced sincos.
__device__ __forceinline__ void xs_rbe_sincos(float a, float* s, float* c) {
  const float k = rintf(a * 0.159154943091895336f);
  const float r = fmaf(-k, -1.74845553146951715e-7f, fmaf(-k, 6.28318548202514648f, a));
  __sincosf(r, s, c);
}
__device__ __forceinline__ void xs_rbe_sincos(double a, double* s, double* c) { sincos(a, s, c); }

// (sinh a, cosh a) for |a| <= the hyperbolic clamp: float from one SFU exponential
// (absolute error ~1e-7 |cosh a|), double from the library.
__device__ __forceinline__ void xs_rbe_sinhcosh(float a, float& sh, float& ch) {
  const float e = __expf(a), ie = __frcp_rn(e);
  sh = 0.5f * (e - ie);
  ch = 0.5f * (e + ie);
}
__device__ __forceinline__ void xs_rbe_sinhcosh(double a, double& sh, double& ch) {
  sh = xs_sinh(a);
  ch = xs_cosh(a);
}
__device__ __forceinline__ float xs_rbe_tanh(float a) { return 1.0f - __fdividef(2.0f, __expf(2.0f * a) + 1.0f); }
__device__ __forceinline__ double xs_rbe_tanh(double a) { return xs_tanh(a); }

// g(arg) and g'(arg) of an atom of `kind`.
template <class S>
__device__ __forceinline__ void xs_rbe_basis(int kind, S a, S hyp_max, S& g, S& dg) {
  if (kind == 0) {
    xs_rbe_sincos(a, &g, &dg);
  } else if (kind == 3) {
    g = xs_rbe_tanh(a);
    dg = S(1) - g * g;
  } else {
    const bool inside = a >= -hyp_max && a <= hyp_max;
    S sh, ch;
    xs_rbe_sinhcosh(fmin(fmax(a, -hyp_max), hyp_max), sh, ch);
    g = kind == 1 ? sh : ch;
    dg = inside ? (kind == 1 ? ch : sh) : S(0);
  }
}

// The constants of atom k of tile t (shadow row and state word).
template <class S>
__device__ __forceinline__ xs_rbe_atom<S> xs_rbe_decode(const float* __restrict__ shadow,
                                                         const int* __restrict__ state, long long t, int J, int k,
                                                         double delta_omega) {
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
  return a;
}

// The constants of the J atoms of tile t into smem (threads 0..J-1).
template <class S>
__device__ __forceinline__ void xs_rbe_load_atoms(xs_rbe_atom<S>* atoms, const float* __restrict__ shadow,
                                                  const int* __restrict__ state, long long t, int J,
                                                  double delta_omega) {
  if (threadIdx.x < J) atoms[threadIdx.x] = xs_rbe_decode<S>(shadow, state, t, J, threadIdx.x, delta_omega);
}

// rho and psi of cell (i, j) of a B x B tile from the host's float64 table (rho[B][B] then
// psi[B][B], xpu_stone.rbe.generator.polar_table), rounded to S.
template <class S, int B>
__device__ __forceinline__ void xs_rbe_polar(const double* __restrict__ polar, int i, int j, S& rho, S& psi) {
  rho = S(polar[i * B + j]);
  psi = S(polar[B * B + i * B + j]);
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

// The walk of one block of xs_rbe_gemv, xs_rbe_mm and xs_rbe_mma: tile row (MODE 0) or
// tile column (MODE 1) `fixed` = blockIdx.x, walking the tiles [w0, w1) of the other
// dimension (split blockIdx.z of tiles_per_split), with the batch rows from
// nb = blockIdx.y * rows; in_dim: the width of the rows it reads, out_dim: of those it writes.
struct xs_rbe_walk {
  long long tile_cols, groups, fixed, w0, w1, nb, in_dim, out_dim;
};
template <int B, int MODE>
__device__ __forceinline__ xs_rbe_walk xs_rbe_block_walk(long long out_f, long long in_f, int tiles_per_split,
                                                         int rows) {
  const long long tile_cols = (in_f + B - 1) / B, tile_rows = (out_f + B - 1) / B;
  const long long w0 = static_cast<long long>(blockIdx.z) * tiles_per_split;
  return {tile_cols,
          (in_f + 127) / 128,
          static_cast<long long>(blockIdx.x),
          w0,
          min(MODE == 0 ? tile_cols : tile_rows, w0 + tiles_per_split),
          static_cast<long long>(blockIdx.y) * rows,
          MODE == 0 ? in_f : out_f,
          MODE == 0 ? out_f : in_f};
}

// W_ij of cell (o, k) (rho, psi its polar coordinates in the tile); 0 outside the matrix.
template <class S>
__device__ __forceinline__ S xs_rbe_weight(const xs_rbe_atom<S>* atoms, int J, S rho, S psi, S hmax,
                                           const int* __restrict__ planes, const float* __restrict__ scales,
                                           const S* levels, long long o, long long k, long long out_f,
                                           long long in_f, long long groups, int bits) {
  if (o >= out_f || k >= in_f) return S(0);
  S w = S(0);
  for (int a = 0; a < J; ++a) {
    const xs_rbe_atom<S> at = atoms[a];
    S g, dg;
    xs_rbe_basis<S>(at.kind, at.kr * rho + at.m * psi + at.c0, hmax, g, dg);
    w += at.amp * g;
  }
  return w + xs_rbe_residual<S>(planes, scales, levels, o, k, groups, bits);
}

// Batches of at most NB rows (GEMV-like), MODE 0 forward / 1 data gradient, grid as
// xs_rbe_mm. A warp generates a whole tile in registers and multiplies it at once, with
// no block barrier in its tile walk (the block's 4 warps take every 4th tile of the
// block's share). MODE 0: lane l owns output rows l + 32 r of the tile and walks its
// columns; MODE 1: lane l owns input columns l + 32 r and walks the rows; each cell's
// weight meets the NB staged input values of its walk index (shared-memory broadcasts).
// The atoms are decoded by lanes 0..J-1 and broadcast into registers; psi comes from a
// per-block table (fp32) or is computed per cell (fp64), rho from sqrt(u^2 + v^2). The
// warps' partial sums are added in shared memory at the end.
template <class T, class S, int B, int NB, int MODE>
__global__ void __launch_bounds__(128)
    xs_rbe_gemv(const T* __restrict__ in, const float* __restrict__ shadow, const int* __restrict__ state,
                const int* __restrict__ planes, const float* __restrict__ scales, const double* __restrict__ levels_g, const double* __restrict__ polar,
                const S* __restrict__ bias, S* __restrict__ ws, T* __restrict__ out, long long n_rows,
                long long out_f, long long in_f, int J, int bits, int tiles_per_split, double delta_omega,
                double hyp_max) {
  constexpr int R = B / 32;                   // rows (MODE 0) or columns (MODE 1) a lane owns
  constexpr bool TABLE = sizeof(S) == 4;      // fp64 computes psi per cell
  __shared__ float psi_s[TABLE ? B : 1][B + 1];
  __shared__ S io_s[4][NB][B];                // per warp: the input values its tile meets; then partial sums
  __shared__ S levels[16];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const auto [tile_cols, groups, fixed, w0, w1, nb, in_dim, out_dim] =
      xs_rbe_block_walk<B, MODE>(out_f, in_f, tiles_per_split, NB);
  if (bits > 0 && threadIdx.x < (1 << bits)) levels[threadIdx.x] = S(levels_g[threadIdx.x]);
  if (TABLE) {
    for (int e = threadIdx.x; e < B * B; e += 128) {
      S rho, psi;
      xs_rbe_polar<S, B>(polar, e / B, e % B, rho, psi);
      psi_s[TABLE ? e / B : 0][e % B] = float(psi);
    }
  }
  __syncthreads();
  const S hmax = S(hyp_max);
  S acc[R][NB];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int q = 0; q < NB; ++q) acc[r][q] = S(0);

  for (long long wk = w0 + warp; wk < w1; wk += 4) {
    const long long tr = MODE == 0 ? fixed : wk, tc = MODE == 0 ? wk : fixed;
    const long long tile = tr * tile_cols + tc;
    // atom constants: lane a < J decodes atom a, every lane gets all J
    S kr[8], am[8], c0[8], amp[8];
    int kind[8];
    {
      S my_kr = S(0), my_m = S(0), my_c0 = S(0), my_amp = S(0);
      int my_kind = 0;
      if (lane < J) {
        const xs_rbe_atom<S> at = xs_rbe_decode<S>(shadow, state, tile, J, lane, delta_omega);
        my_kr = at.kr;
        my_m = at.m;
        my_c0 = at.c0;
        my_amp = at.amp;
        my_kind = at.kind;
      }
#pragma unroll
      for (int a = 0; a < 8; ++a) {
        kr[a] = __shfl_sync(0xffffffffu, my_kr, a);
        am[a] = __shfl_sync(0xffffffffu, my_m, a);
        c0[a] = __shfl_sync(0xffffffffu, my_c0, a);
        amp[a] = __shfl_sync(0xffffffffu, my_amp, a);
        kind[a] = __shfl_sync(0xffffffffu, my_kind, a);
      }
    }
    // the input values this tile meets: x[:, tc B + j] (MODE 0) or delta[:, tr B + i] (MODE 1)
    const long long base = MODE == 0 ? tc * B : tr * B;
    for (int e = lane; e < NB * B; e += 32) {
      const long long n = nb + e / B, col = base + e % B;
      io_s[warp][e / B][e % B] = (n < n_rows && col < in_dim) ? S(xs_to_e(in[n * in_dim + col])) : S(0);
    }
    // MODE 0: the residual words and scale of this lane's rows (one group: B divides 128)
    unsigned wd[R][4][R];
    S sc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const long long o = tr * B + lane + 32 * r;
      sc[r] = S(0);
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int h = 0; h < R; ++h) wd[r][b][h] = 0u;
      if (MODE == 0 && bits > 0 && o < out_f) {
        const long long gk = (tc * B) >> 7;
        sc[r] = S(scales[o * groups + gk]);
        const int* p = planes + (o * groups + gk) * bits * 4 + (((tc * B) & 127) >> 5);
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
          for (int h = 0; h < R; ++h)
            if (b < bits) wd[r][b][h] = static_cast<unsigned>(p[b * 4 + h]);
      }
    }
    __syncwarp();
#pragma unroll
    for (int h = 0; h < R; ++h) {
#pragma unroll 2
      for (int c2 = 0; c2 < 32; ++c2) {
        const int c = 32 * h + c2;  // the walk index: column j (MODE 0) or row i (MODE 1)
        S xin[NB];
#pragma unroll
        for (int q = 0; q < NB; ++q) xin[q] = io_s[warp][q][c];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int i = MODE == 0 ? lane + 32 * r : c, j = MODE == 0 ? c : lane + 32 * r;
          const long long o = tr * B + i, k = tc * B + j;
          if (o >= out_f || k >= in_f) continue;
          S rho, psi;
          if (TABLE) {
            const S u = S(2 * j + 1) / S(B) - S(1), v = S(2 * i + 1) / S(B) - S(1);
            rho = fmin(sqrt(u * u + v * v), S(1));
            psi = S(psi_s[TABLE ? i : 0][j]);
          } else {
            xs_rbe_polar<S, B>(polar, i, j, rho, psi);
          }
          S w = S(0);
#pragma unroll
          for (int a = 0; a < 8; ++a) {
            if (a >= J) break;
            S g, dg;
            xs_rbe_basis<S>(kind[a], kr[a] * rho + am[a] * psi + c0[a], hmax, g, dg);
            w += amp[a] * g;
          }
          if (bits > 0) {
            if (MODE == 0) {
              int code = 0;
#pragma unroll
              for (int b = 0; b < 4; ++b)
                if (b < bits) code |= static_cast<int>((wd[r][b][h] >> c2) & 1u) << b;
              w += sc[r] * levels[code];
            } else {
              w += xs_rbe_residual<S>(planes, scales, levels, o, k, groups, bits);
            }
          }
#pragma unroll
          for (int q = 0; q < NB; ++q) acc[r][q] += w * xin[q];
        }
      }
    }
    __syncwarp();
  }
  // the block's sum over its warps, then the output (or this split's partial sums)
  __syncthreads();
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int q = 0; q < NB; ++q) io_s[warp][q][lane + 32 * r] = acc[r][q];
  __syncthreads();
  for (int e = threadIdx.x; e < NB * B; e += 128) {
    const int q = e / B, c = e % B;
    const long long n = nb + q, oc = fixed * B + c;
    if (n >= n_rows || oc >= out_dim) continue;
    S v = io_s[0][q][c] + io_s[1][q][c] + io_s[2][q][c] + io_s[3][q][c];
    if (gridDim.z == 1) {
      if (MODE == 0 && bias != nullptr) v += bias[oc];
      out[n * out_dim + oc] = xs_from_e<T>(typename xs_traits<T>::E(v));
    } else {
      ws[(static_cast<long long>(blockIdx.z) * n_rows + n) * out_dim + oc] = v;
    }
  }
}

// MODE 0: FORWARD (x rows against tile row tr); MODE 1: DATA GRADIENT (delta rows against
// tile column tc). Grid (tile rows or columns, batch blocks of BN, splits).
template <class T, class S, int B, int BN, int MODE>
__global__ void __launch_bounds__(256)
    xs_rbe_mm(const T* __restrict__ in, const float* __restrict__ shadow, const int* __restrict__ state,
              const int* __restrict__ planes, const float* __restrict__ scales, const double* __restrict__ levels_g, const double* __restrict__ polar,
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
  const auto [tile_cols, groups, fixed, w0, w1, nb, in_dim, out_dim] =
      xs_rbe_block_walk<B, MODE>(out_f, in_f, tiles_per_split, BN);  // fixed: tr (MODE 0) or tc (MODE 1)
  if (bits > 0 && t < (1 << bits)) levels[t] = S(levels_g[t]);
  S rho[NE], psi[NE];
#pragma unroll
  for (int e = 0; e < NE; ++e) xs_rbe_polar<S, B>(polar, (t + 256 * e) / B, (t + 256 * e) % B, rho[e], psi[e]);
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
      w_s[i][j] = xs_rbe_weight<S>(atoms, J, rho[e], psi[e], hmax, planes, scales, levels, tr * B + i,
                                   tc * B + j, out_f, in_f, groups, bits);
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

// The most tiles one block of xs_rbe_mma walks (their atoms are decoded into shared
// memory up front; xpu_stone.ops.rbe splits longer walks).
#define XS_RBE_MAX_WALK 32

// One m16n8k16 tensor-core product, fp32 accumulators: d += a b (a 16 x 16 row-major,
// b 16 x 8 column-major, both fp16 or bf16; fragments as the PTX ISA lays them out).
__device__ __forceinline__ void xs_mma16816(xs_half, float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                            unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void xs_mma16816(xs_bf16, float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                            unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Large batches of fp16/bf16 rows on the tensor cores: as xs_rbe_mm (MODE 0 forward, 1
// data gradient; same grid, splits and workspace), with BM = 128 input rows a block.
// Each tile is generated once into shared memory in T (w_s[n][k]: n the output index,
// k the reduction index within the tile), the BM x B input block staged beside it, and
// warp w multiplies its 16 rows by the whole tile with mma.m16n8k16 (fp32 accumulators).
// W rounded to T is the one difference from the CUDA-core kernel (fp16 saturates at
// +-65504).
template <class T, int B, int MODE>
__global__ void __launch_bounds__(256, 1)
    xs_rbe_mma(const T* __restrict__ in, const float* __restrict__ shadow, const int* __restrict__ state,
               const int* __restrict__ planes, const float* __restrict__ scales, const double* __restrict__ levels_g, const double* __restrict__ polar,
               const float* __restrict__ bias, float* __restrict__ ws, T* __restrict__ out, long long n_rows,
               long long out_f, long long in_f, int J, int bits, int tiles_per_split, double delta_omega,
               double hyp_max) {
  constexpr int BM = 128;          // input rows a block: 8 warps of 16
  constexpr int NE = B * B / 256;  // cells a thread generates
  constexpr int LD = B + 8;        // row stride (elements) of the staged tiles: no bank conflicts
  constexpr int NT = B / 8;        // n8 tiles across the tile's outputs
  __shared__ __align__(16) unsigned short w_s[B * LD];
  __shared__ __align__(16) unsigned short a_s[BM * LD];
  __shared__ xs_rbe_atom<float> atoms[XS_RBE_MAX_WALK * 8];  // the whole walk's, decoded once
  __shared__ float levels[16];
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, g = lane >> 2, q = lane & 3;
  const auto [tile_cols, groups, fixed, w0, w1, nb, in_dim, out_dim] =
      xs_rbe_block_walk<B, MODE>(out_f, in_f, tiles_per_split, BM);
  if (bits > 0 && t < (1 << bits)) levels[t] = float(levels_g[t]);
  for (int e = t; e < (w1 - w0) * J; e += 256) {
    const long long wk = w0 + e / J;
    atoms[e] = xs_rbe_decode<float>(shadow, state, MODE == 0 ? fixed * tile_cols + wk : wk * tile_cols + fixed, J,
                                    e % J, delta_omega);
  }
  float rho[NE], psi[NE];
#pragma unroll
  for (int e = 0; e < NE; ++e) xs_rbe_polar<float, B>(polar, (t + 256 * e) / B, (t + 256 * e) % B, rho[e], psi[e]);
  const float hmax = float(hyp_max);
  // 16-byte staging of the input block when rows are 16-byte aligned
  constexpr int NV = BM * B / 8 / 256;
  const bool vec = in_dim % 8 == 0 && (reinterpret_cast<unsigned long long>(in) & 15) == 0;
  __syncthreads();
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  for (long long wk = w0; wk < w1; ++wk) {
    const long long tr = MODE == 0 ? fixed : wk, tc = MODE == 0 ? wk : fixed;
    const long long base = MODE == 0 ? tc * B : tr * B;  // the input columns this tile meets
    // the input block's loads are issued first and land while the tile is generated
    uint4 av[NV];
    if (vec) {
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int e = t + 256 * v, row = e / (B / 8), c8 = (e % (B / 8)) * 8;
        const long long n = nb + row, col = base + c8;
        av[v] = (n < n_rows && col < in_dim) ? *reinterpret_cast<const uint4*>(in + n * in_dim + col)
                                              : make_uint4(0u, 0u, 0u, 0u);
      }
    } else {
      for (int e = t; e < BM * B; e += 256) {
        const long long n = nb + e / B, col = base + e % B;
        a_s[(e / B) * LD + e % B] = (n < n_rows && col < in_dim) ? in[n * in_dim + col].bits : 0;
      }
    }
    const xs_rbe_atom<float>* tile_atoms = atoms + (wk - w0) * J;
#pragma unroll
    for (int e = 0; e < NE; ++e) {
      const int i = (t + 256 * e) / B, j = (t + 256 * e) % B;
      const float w = xs_rbe_weight<float>(tile_atoms, J, rho[e], psi[e], hmax, planes, scales, levels, tr * B + i,
                                           tc * B + j, out_f, in_f, groups, bits);
      w_s[MODE == 0 ? i * LD + j : j * LD + i] = xs_from_e<T>(w).bits;
    }
    if (vec) {
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        const int e = t + 256 * v;
        *reinterpret_cast<uint4*>(a_s + (e / (B / 8)) * LD + (e % (B / 8)) * 8) = av[v];
      }
    }
    __syncthreads();
#pragma unroll
    for (int k0 = 0; k0 < B; k0 += 16) {
      unsigned a[4];
      const unsigned short* ar = a_s + (warp * 16 + g) * LD + k0 + 2 * q;
      a[0] = *reinterpret_cast<const unsigned*>(ar);
      a[1] = *reinterpret_cast<const unsigned*>(ar + 8 * LD);
      a[2] = *reinterpret_cast<const unsigned*>(ar + 8);
      a[3] = *reinterpret_cast<const unsigned*>(ar + 8 * LD + 8);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const unsigned short* br = w_s + (n * 8 + g) * LD + k0 + 2 * q;
        xs_mma16816(T{}, acc[n], a, *reinterpret_cast<const unsigned*>(br),
                    *reinterpret_cast<const unsigned*>(br + 8));
      }
    }
    __syncthreads();
  }
  // acc[n]: rows warp*16 + g (+8), outputs n*8 + 2q (+1) of this tile row (column)
#pragma unroll
  for (int n = 0; n < NT; ++n) {
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const long long row = nb + warp * 16 + g + (h >> 1) * 8, oc = fixed * B + n * 8 + 2 * q + (h & 1);
      if (row >= n_rows || oc >= out_dim) continue;
      if (gridDim.z == 1) {
        const float b = (MODE == 0 && bias != nullptr) ? bias[oc] : 0.0f;
        out[row * out_dim + oc] = xs_from_e<T>(acc[n][h] + b);
      } else {
        ws[(static_cast<long long>(blockIdx.z) * n_rows + row) * out_dim + oc] = acc[n][h];
      }
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
                const int* __restrict__ state, const int* __restrict__ planes, const double* __restrict__ levels_g, const double* __restrict__ polar,
                S* __restrict__ g_shadow, S* __restrict__ g_scale,
                long long n_rows, long long out_f, long long in_f, int J, int bits, double delta_omega,
                double hyp_max) {
  constexpr int NE = B * B / 256;
  constexpr int CH = 32;  // batch rows staged at once
  __shared__ S d_s[CH][B];
  __shared__ S x_s[CH][B];
  __shared__ S red[32 * 24];
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
  // per atom a: s[3a] = sum G amp g', s[3a + 1] = sum G amp g' rho, s[3a + 2] = sum G amp g
  // (G is 0 outside the matrix), all atoms summed over the block at once
  S s[24];
#pragma unroll
  for (int v = 0; v < 24; ++v) s[v] = S(0);
#pragma unroll
  for (int e = 0; e < NE; ++e) {
    S rho, psi;
    xs_rbe_polar<S, B>(polar, (t + 256 * e) / B, (t + 256 * e) % B, rho, psi);
#pragma unroll
    for (int a = 0; a < 8; ++a) {
      if (a >= J) break;
      const xs_rbe_atom<S> at = atoms[a];
      S g, dg;
      xs_rbe_basis<S>(at.kind, at.kr * rho + at.m * psi + at.c0, hmax, g, dg);
      const S ga = gacc[e] * at.amp;
      s[3 * a] += ga * dg;
      s[3 * a + 1] += ga * dg * rho;
      s[3 * a + 2] += ga * g;
    }
  }
  xs_block_sum<256, S, 24>(s, red);
#pragma unroll
  for (int a = 0; a < 8; ++a) {
    if (a < J && t == a) {  // thread a writes atom a (constant indices: s stays in registers)
      S* gs = g_shadow + (tile * J + a) * 4;
      gs[0] = s[3 * a + 1] * atoms[a].two_omega;
      gs[1] = s[3 * a] * atoms[a].m;
      gs[2] = s[3 * a];
      gs[3] = s[3 * a + 2];
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
