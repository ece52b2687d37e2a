// The row-wise engine shared by every op whose output row depends only on the
// matching rows of its inputs (all Poincare-ball ops, and their relatives in
// the other models).
//
// An op is a struct that describes its row in three parts:
//   * terms: up to NTERM vectors built from the NVEC input rows, each either an
//     input v_a, a difference v_a - v_b or (flag sum) a sum v_a + v_b (formed
//     elementwise, so that nearby points, or nearly opposite ones for a sum,
//     do not lose their digits to cancellation), optionally with element 0 zeroed ("spatial": the space part of a
//     Lorentz vector, whose squared norm then carries no cancellation), or the
//     unit vector e_0 (XS_E0: the time axis; <v, e_0> = v_0);
//   * dots:  NDOT inner products <term_p, term_q>, reduced over the row in the
//     accumulation type S;
//   * coeffs(dots, c, t, eps) -> coef[NOUT]: the per-row formula. A vector op
//     writes out = sum_k coef[k] * term_{out(k)}; a scalar op (SCALAR_OUT)
//     writes coef[0].
//
// Backward, with g the output gradient and s the dots: the per-row adjoints
// sbar_j = sum_k <g, term_out(k)> d coef_k / d s_j (or g * d coef_0 / d s_j)
// come from evaluating coeffs on dual numbers; then
//   dL/d term_k = [k is out(m)] coef_m g + sum_q W_kq term_q,
//   W_pq = sbar_d for each dot d = <term_p, term_q> (2 sbar_d when p == q),
// and dL/dv_j = sum_k (d term_k / d v_j) dL/d term_k with d term/d v = +1 or -1
// (-1: v_b of a difference; v_b of a sum has +1).
// xpu_stone/engine/rowwise_cpu.py transcribes this for the CPU, in fp64 for every
// dtype (for 16-bit rows its results differ from the kernels' by fp32 rounding).
//
// Element arithmetic (terms, output sums, gradients) runs in E = xs_elem<T, S>
// (dtype.cuh): S for fp32 and fp64 rows (fp64 for fp32 rows, so that an output
// that is a small difference of large terms keeps its digits), fp32 for 16-bit
// rows. The per-row scalars (dots, coefficients, c, t) are S for every dtype.
// For 16-bit rows:
//   * a 16-bit element and the product of two are exact in fp32 (unless the
//     product falls below fp32's normal range, |v| < ~1e-19 for bf16); the sum
//     or difference of two rounds when their exponents are more than 16 (bf16)
//     or 13 (fp16) apart;
//   * a dot of two raw terms (xs_raw_term) sums each chunk of VEC exact products
//     in fp32 (one rounding an addition, at 2^-24 of the chunk's size) and adds
//     the chunk's sum to S; a dot with a difference or sum term multiplies in S,
//     element by element (xs_mixed_dot);
//   * outputs and gradients are summed in fp32 from coefficients rounded to
//     fp32; the forward adds the TwoSum remainders of difference terms
//     (xs_term_rem). An output that is a small difference of large terms with a
//     coefficient that is not exact in fp32 keeps only fp32's relative 2^-24 of
//     the large terms (known limit, see issue 15's notes).
// The value is rounded to T once, when stored.
//
// Thread layout: G threads per row (G <= 32: several rows per warp; G > 32: one
// row per block of G threads). Each thread moves VEC consecutive elements per
// access (VEC * sizeof(T) == 16 for the vector variants, 1 for the strided
// generic one). NITER > 0 keeps the row in registers (D <= NITER * G * VEC);
// NITER == 0 loops over the row and reads it again for the output pass.
//
// Rows whose length changes (the conversions to and from the hyperboloid) set
// IN_SHIFT / OUT_SHIFT: the kernel walks a logical row of a.D elements; the
// inputs hold its elements from IN_SHIFT on (the first ones read as 0), the
// output receives them from OUT_SHIFT on. Such ops run with VEC == 1 only.
//
// Bad rows (domain.cuh): a NaN or inf in any input row, an input that
// XS_POINTS declares a point of DOMAIN lying outside it, a row's c that is not
// finite and positive or its t that is not finite (a tensor c or t is checked
// here, on the host only by opt-in: config.check_tensor_values), makes every
// coefficient of the row NaN: forward, the whole output row (or the scalar)
// is NaN; backward, every gradient of the row (inputs, c, t; the input
// gradients are set NaN outright: an element that no term varies with, such as
// x_0 of an input seen only through spatial terms, would keep its 0). Where
// the input has a sum of squares, a non-finite element shows there: its |v|^2
// among the op's dots, or the point sums it takes of its own (xs_point_sums: |v|^2 for
// the ball, |v_s|^2 and v_0 for the hyperboloid, reduced with the dots; a ball
// point whose |v|^2 is a dot reads the dot). For the other inputs 0 * v of
// every element is added to dot 0 (exact zeros: the dot is unchanged), so dot 0
// comes out NaN. (So an fp64 input whose |v|^2 overflows counts as non-finite.)
// xpu_stone/engine/rowwise_cpu.py does the same.
#pragma once
#include "domain.cuh"
#include "dtype.cuh"
#include "math.cuh"
#include "reduce.cuh"

struct xs_ij {
  int a, b;      // term: v_a, or v_a - v_b when b >= 0; a == XS_E0: e_0. dot: terms a, b
  bool spatial;  // term: element 0 reads as 0
  bool sum;      // term with b >= 0: v_a + v_b instead of v_a - v_b ({a, b, false, true})
};
constexpr int XS_E0 = -2;

// Defaults of an op description (ops derive from it): no input is a point
// (XS_POINTS in ops.cuh declares them).
struct xs_op_base {
  static constexpr int IN_SHIFT = 0, OUT_SHIFT = 0;
  // LATE: the last dot (a, b) is |w|^2 with w = t_a + s t_b, not <t_a, t_b>. Forward and
  // backward sum it from the elements in a second pass, once the other dots give s (the
  // op's `R late_scale(dot, c)`, a function of the other dots and c). Its adjoint
  // reaches the inputs through 2w and the other dots and c through s.
  static constexpr bool LATE = false;
  static constexpr xs_domain DOMAIN = xs_free;
  static constexpr unsigned POINTS = 0;  // bit j: input j is a point of DOMAIN
};

// Where the row sums that place an op's points are: a point of the ball whose
// |v|^2 is one of the op's dots (term v alone, dotted with itself) reads that
// dot; any other point has its own sums after the op's: |v|^2 (ball), or
// |v_s|^2 and v_0 (hyperboloid).
template <class Op>
struct xs_point_sums {
  static constexpr int PER = Op::DOMAIN == xs_hyperboloid ? 2 : 1;
  // the dot |v_j|^2 of the op, or -1
  __host__ __device__ static constexpr int norm_dot(int j) {
    for (int d = 0; d < Op::NDOT; ++d) {
      const xs_ij p = Op::dot(d);
      const xs_ij t = Op::term(p.a);
      if (p.a == p.b && t.a == j && t.b < 0 && !t.spatial) return d;
    }
    return -1;
  }
  __host__ __device__ static constexpr bool point(int j) { return (Op::POINTS >> j) & 1u; }
  // whether input j takes sums of its own
  __host__ __device__ static constexpr bool own(int j) {
    return point(j) && (Op::DOMAIN == xs_hyperboloid || norm_dot(j) < 0);
  }
  // whether a NaN or inf of input j shows in a sum of squares (its |v|^2 dot or
  // its own sums); otherwise 0 * v of its elements goes to dot 0
  __host__ __device__ static constexpr bool squared(int j) { return norm_dot(j) >= 0 || own(j); }
  // index of input j's first own sum
  __host__ __device__ static constexpr int slot(int j) {
    int s = 0;
    for (int i = 0; i < j; ++i) s += own(i) ? PER : 0;
    return s;
  }
  // own sums in all
  __host__ __device__ static constexpr int count() { return slot(Op::NVEC); }
};

// Value of term k at position i of a loaded chunk; gi is its index in the row.
template <class Op, class R, class V, int VEC>
__device__ __forceinline__ R xs_term(const V (&v)[Op::NVEC][VEC], int k, int i, long long gi) {
  const xs_ij t = Op::term(k);
  if (t.a == XS_E0) return R(gi == 0 ? 1 : 0);
  if (t.spatial && gi == 0) return R(0);
  const R a = R(v[t.a][i]);
  if (t.b < 0) return a;
  return t.sum ? a + R(v[t.b][i]) : a - R(v[t.b][i]);
}

// Whether term k is an input as loaded (an input, its space part or e_0): for
// 16-bit rows its elements, and the product of two of them, are exact in E
// (xs_elem; but see the header on underflow). A difference or sum of two inputs,
// and products with one, may round in fp32.
template <class Op>
__host__ __device__ constexpr bool xs_raw_term(int k) {
  return Op::term(k).b < 0;
}

// What rounding took from term k at this position: v_a -+ v_b - fl(v_a -+ v_b),
// exactly (TwoSum); zero for raw terms. The forward of 16-bit rows adds
// coef * remainder to the output, so that an output that cancels a term to
// nothing keeps what the term's rounding dropped (Klein geodesic u + lam (v - u)
// at t = 1, lam = 1 exactly: v, also for |v| < 2^-16 |u|).
template <class Op, class V, int VEC>
__device__ __forceinline__ float xs_term_rem(const V (&v)[Op::NVEC][VEC], int k, int i, long long gi) {
  const xs_ij t = Op::term(k);
  if (t.b < 0 || (t.spatial && gi == 0)) return 0.0f;
  const float a = v[t.a][i], b = t.sum ? float(v[t.b][i]) : -float(v[t.b][i]);
  const float s = a + b, bb = s - a;
  return (a - (s - bb)) + (b - bb);
}

template <class A, class B>
struct xs_same {
  static constexpr bool value = false;
};
template <class A>
struct xs_same<A, A> {
  static constexpr bool value = true;
};

// Loads elements [e, e + VEC) of the NV rows (zeros when !ok); with SH > 0
// (VEC == 1), logical element e is stored at e - SH and the first SH read as 0.
template <class T, int NV, int VEC, int SH, class E>
__device__ __forceinline__ void xs_load_rows(const T* const (&base)[3], const long long (&es)[3],
                                             long long e, bool ok, E (&v)[NV][VEC]) {
  static_assert(SH == 0 || VEC == 1, "shifted rows are read one element at a time");
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (ok && e >= SH) {
      if constexpr (VEC == 1) {
        v[j][0] = E(xs_to_e(base[j][(e - SH) * es[j]]));
      } else {
        xs_load<T, VEC>(base[j] + e, v[j]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) v[j][i] = 0;
    }
  }
}

// Whether the product of terms a and b (-1: an input gradient row, raw) is taken in S
// rather than E: E is narrower than S and a or b is not raw.
template <class Op, class S, class E>
__host__ __device__ constexpr bool xs_mixed_dot(int a, int b) {
  return !xs_same<E, S>::value && !((a < 0 || xs_raw_term<Op>(a)) && (b < 0 || xs_raw_term<Op>(b)));
}

// Adds a loaded chunk (row elements e ...) to the dots acc[0, NDOT) and to the
// own point sums pts[0, xs_point_sums<Op>::count()); 0 * v of the elements of
// the inputs that no sum of squares sees goes to dot 0. The chunk's VEC
// products are summed in E first and the chunk's sum is added to S once (for
// 16-bit rows: one conversion for VEC elements, the chunk's sum rounded to
// fp32); a dot with a difference or sum term takes its products in S, element by
// element (xs_mixed_dot).
template <class Op, class S, class E, int VEC>
__device__ __forceinline__ void xs_accumulate_dots(const E (&v)[Op::NVEC][VEC], S* acc, S* pts, long long e) {
  using PS = xs_point_sums<Op>;
  constexpr int ND = Op::NDOT - (Op::LATE ? 1 : 0);
  constexpr int NP = PS::count();
  static_assert(ND >= 1, "an op has a dot besides its late one");
  E part[ND + NP];  // this chunk's dots, then its own point sums
#pragma unroll
  for (int k = 0; k < ND + NP; ++k) part[k] = 0;
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    E t[Op::NTERM];
#pragma unroll
    for (int k = 0; k < Op::NTERM; ++k) t[k] = xs_term<Op, E>(v, k, i, e + i);
#pragma unroll
    for (int d = 0; d < ND; ++d) {
      const xs_ij pq = Op::dot(d);
      if (xs_mixed_dot<Op, S, E>(pq.a, pq.b)) {
        acc[d] += S(t[pq.a]) * S(t[pq.b]);
      } else {
        part[d] += t[pq.a] * t[pq.b];
      }
    }
#pragma unroll
    for (int j = 0; j < Op::NVEC; ++j) {
      const E x = v[j][i];
      if (!PS::squared(j)) part[0] += E(0) * x;  // NaN if x is NaN or +-inf
      if (!PS::own(j)) continue;
      if (Op::DOMAIN == xs_hyperboloid && e + i == 0) {
        part[ND + PS::slot(j) + 1] += x;  // v_0
      } else {
        part[ND + PS::slot(j)] += x * x;
      }
    }
  }
#pragma unroll
  for (int d = 0; d < ND; ++d) acc[d] += S(part[d]);
#pragma unroll
  for (int k = 0; k < NP; ++k) pts[k] += S(part[ND + k]);
}

// Whether the row's inputs are bad (see the header): dots the reduced dots,
// pts the reduced own point sums.
template <class Op, class T, class S>
__device__ __forceinline__ bool xs_row_bad(const S* dots, const S* pts, S c, S t, long long D) {
  using PS = xs_point_sums<Op>;
  // a curvature that is not finite and positive, or a t (r) that is not finite
  bool bad = !(dots[0] == dots[0]) || !xs_curvature_ok(c) || !(t - t == S(0));
#pragma unroll
  for (int j = 0; j < Op::NVEC; ++j) {
    if (!PS::point(j)) {
      if (PS::norm_dot(j) >= 0) {
        const S q = dots[PS::norm_dot(j)];
        bad = bad || !(q - q == S(0));  // |v|^2 is inf or NaN
      }
      continue;
    }
    const int k = PS::slot(j);
    if (Op::DOMAIN == xs_hyperboloid) {
      bad = bad || !xs_on_hyperboloid<T, S>(c, pts[k], pts[k + 1], D);
    } else {
      bad = bad || !xs_in_ball<T, S>(c, PS::own(j) ? pts[k] : dots[PS::norm_dot(j)], D);
    }
  }
  return bad;
}

template <int G, class S, int N>
__device__ __forceinline__ void xs_row_sum(S (&acc)[N]) {
  if constexpr (G <= 32) {
    xs_group_sum<G>(acc);
  } else {
    __shared__ S smem[32 * N];
    xs_block_sum<G>(acc, smem);
  }
}

// The late sums of an op (xs_op_base::LATE), with w = t_a + s t_b: sums[0] = |w|^2
// (the late dot) and, with N = 2 (the backward), sums[1] = <w, t_b> (its derivative in
// s, over 2), over the row, from the chunks cached in registers (NITER > 0: zeros past
// D) or reloaded with `load(e, v)`. The first NVEC rows of a chunk are the inputs.
// Every thread of the row group takes part (a group reduction).
template <class Op, class S, class E, int G, int NITER, int VEC, int NC, int N, class Load>
__device__ __forceinline__ void xs_late_sums(const E (&cache)[NITER > 0 ? NITER : 1][NC][VEC], S s, int lane,
                                             long long D, Load load, S (&sums)[N]) {
  static_assert(N == 1 || N == 2, "|w|^2, and <w, t_b> for the backward");
  constexpr xs_ij L = Op::dot(Op::NDOT - 1);
  constexpr long long STEP = (long long)G * VEC;
#pragma unroll
  for (int k = 0; k < N; ++k) sums[k] = 0;
  const E se = E(s);
  auto add = [&](const E(&v)[NC][VEC], long long e) {  // a chunk, summed in E (xs_accumulate_dots)
    const auto& in = reinterpret_cast<const E(&)[Op::NVEC][VEC]>(v);
    E part[N];
#pragma unroll
    for (int k = 0; k < N; ++k) part[k] = 0;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const E b = xs_term<Op, E>(in, L.b, i, e + i);
      const E w = xs_term<Op, E>(in, L.a, i, e + i) + se * b;
      part[0] += w * w;
      if constexpr (N == 2) part[N - 1] += w * b;
    }
#pragma unroll
    for (int k = 0; k < N; ++k) sums[k] += S(part[k]);
  };
  if constexpr (NITER > 0) {
#pragma unroll
    for (int it = 0; it < NITER; ++it) add(cache[it], it * STEP + (long long)lane * VEC);
  } else {
    E v[NC][VEC];
    for (long long e = (long long)lane * VEC; e < D; e += STEP) {
      load(e, v);
      add(v, e);
    }
  }
  xs_row_sum<G>(sums);
}

template <class T, int VEC, class E>
__device__ __forceinline__ void xs_store_chunk(T* __restrict__ p, long long e, const E (&o)[VEC]) {
  if constexpr (VEC == 1) {
    p[e] = xs_from_e<T>(typename xs_traits<T>::E(o[0]));
  } else {
    xs_store<T, VEC>(p + e, o);
  }
}

// Every row-wise kernel takes this one struct by value (a single 216-byte
// parameter: the host packs it with one call, see ROW_ARG_FIELDS in
// xpu_stone/kernels/launch.py, which mirrors the field order and which
// tests/test_cuda_layout.py checks against this declaration). Unused fields are zero.
struct xs_row_args {
  long long rows, D;
  const void* v[3];        // input rows (up to three vectors)
  long long v_rs[3];       // row strides (elements; 0 broadcasts one row)
  long long v_es[3];       // element strides
  const void* c_ptr;       // per-row curvature (double), or null: c_val
  long long c_rs;
  double c_val;
  const void* t_ptr;       // per-row weight t / r (double), or null: t_val
  long long t_rs;
  double t_val;
  double eps;
  void* out;               // forward output, contiguous
  const void* g;           // backward: output gradient
  long long g_rs, g_es;
  void* gv[3];             // backward: input gradients, contiguous (null: skip)
  void* gc;                // backward: per-row gradient of c (double)
  void* gt;                // backward: per-row gradient of t (double)
};

// Where thread `lane` of a row starts, and how far apart its accesses are.
#define XS_ROW_SETUP                                                                   \
  using E = typename xs_elem<T, S>::type;                                             \
  /* c, t and their gradients are double for every row dtype: a float64 c given  */    \
  /* with fp32/16-bit rows must not be rounded near the boundary (1 - c|x|^2).   */    \
  using P = double;                                                                    \
  constexpr int RPB = G > 32 ? 1 : BLOCK / G;                                          \
  const long long rows = a.rows, D = a.D;                                              \
  const int lane = threadIdx.x % G;                                                    \
  const long long row = (long long)blockIdx.x * RPB + threadIdx.x / G;                 \
  const bool valid = row < rows;                                                       \
  const long long r = valid ? row : 0;                                                 \
  const T* const v0 = static_cast<const T*>(a.v[0]);                                   \
  const T* const base[3] = {v0 + r * a.v_rs[0],                                        \
                            Op::NVEC > 1 ? static_cast<const T*>(a.v[1]) + r * a.v_rs[1] : v0, \
                            Op::NVEC > 2 ? static_cast<const T*>(a.v[2]) + r * a.v_rs[2] : v0}; \
  const long long es[3] = {a.v_es[0], a.v_es[1], a.v_es[2]};                           \
  const S c = a.c_ptr ? S(static_cast<const P*>(a.c_ptr)[r * a.c_rs]) : S(a.c_val);    \
  const S t = a.t_ptr ? S(static_cast<const P*>(a.t_ptr)[r * a.t_rs]) : S(a.t_val);    \
  const S eps = S(a.eps);                                                              \
  constexpr long long STEP = (long long)G * VEC;

template <class Op, class T, class S, int G, int NITER, int VEC, int BLOCK>
__global__ void __launch_bounds__(BLOCK) xs_rowwise_fwd(const xs_row_args a) {
  XS_ROW_SETUP
  T* const out = static_cast<T*>(a.out);
  constexpr int NV = Op::NVEC;
  E cache[NITER > 0 ? NITER : 1][NV][VEC];
  constexpr int NSUM = Op::NDOT + xs_point_sums<Op>::count();
  S acc[NSUM];  // the dots, then the point sums
#pragma unroll
  for (int d = 0; d < NSUM; ++d) acc[d] = 0;

  if constexpr (NITER > 0) {
#pragma unroll
    for (int it = 0; it < NITER; ++it) {
      const long long e = it * STEP + (long long)lane * VEC;
      xs_load_rows<T, NV, VEC, Op::IN_SHIFT>(base, es, e, valid && e < D, cache[it]);
      xs_accumulate_dots<Op, S, E, VEC>(cache[it], acc, acc + Op::NDOT, e);
    }
  } else {
    for (long long e = (long long)lane * VEC; e < D; e += STEP) {
      xs_load_rows<T, NV, VEC, Op::IN_SHIFT>(base, es, e, valid, cache[0]);
      xs_accumulate_dots<Op, S, E, VEC>(cache[0], acc, acc + Op::NDOT, e);
    }
  }
  xs_row_sum<G>(acc);

  if constexpr (Op::LATE) {  // the late dot |t_a + s t_b|^2, from the elements
    const S s = Op::template late_scale<S, S>(reinterpret_cast<const S(&)[Op::NDOT]>(acc), c);
    S sums[1];
    xs_late_sums<Op, S, E, G, NITER, VEC, NV, 1>(
        cache, s, lane, D,
        [&](long long e, E(&v)[NV][VEC]) { xs_load_rows<T, NV, VEC, Op::IN_SHIFT>(base, es, e, valid, v); },
        sums);
    acc[Op::NDOT - 1] = sums[0];
  }

  const bool bad = xs_row_bad<Op, T>(acc, acc + Op::NDOT, c, t, D);
  S coef[Op::NOUT];
  Op::template coeffs<S, S>(reinterpret_cast<const S(&)[Op::NDOT]>(acc), c, t, eps, coef);
  if (bad) {
#pragma unroll
    for (int k = 0; k < Op::NOUT; ++k) coef[k] = xs_nan(coef[k]);
  }

  if constexpr (Op::SCALAR_OUT) {
    if (valid && lane == 0) out[row] = xs_from_e<T>(typename xs_traits<T>::E(coef[0]));
  } else {
    if (!valid) return;
    E ce[Op::NOUT];
#pragma unroll
    for (int k = 0; k < Op::NOUT; ++k) ce[k] = E(coef[k]);
    T* const orow = out + row * (D - Op::OUT_SHIFT);
    auto emit = [&](const E(&v)[NV][VEC], long long e) {
      E o[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        E s = 0;
#pragma unroll
        for (int k = 0; k < Op::NOUT; ++k) s += ce[k] * xs_term<Op, E>(v, Op::out(k), i, e + i);
        if constexpr (!xs_same<E, S>::value) {  // what fp32 dropped from the difference terms
#pragma unroll
          for (int k = 0; k < Op::NOUT; ++k)
            if (!xs_raw_term<Op>(Op::out(k))) s += ce[k] * xs_term_rem<Op>(v, Op::out(k), i, e + i);
        }
        o[i] = s;
      }
      if (e >= Op::OUT_SHIFT) xs_store_chunk<T, VEC>(orow, e - Op::OUT_SHIFT, o);
    };
    if constexpr (NITER > 0) {
#pragma unroll
      for (int it = 0; it < NITER; ++it) {
        const long long e = it * STEP + (long long)lane * VEC;
        if (e < D) emit(cache[it], e);
      }
    } else {
      for (long long e = (long long)lane * VEC; e < D; e += STEP) {
        xs_load_rows<T, NV, VEC, Op::IN_SHIFT>(base, es, e, true, cache[0]);
        emit(cache[0], e);
      }
    }
  }
}

// Backward. g is the output gradient: rows x D (strides g_rs, g_es) for vector
// ops, one value per row (stride g_rs) for scalar ops. Gradients of the input
// rows go to gv0..gv2 (contiguous rows x D), of c and t to gc, gt (one value per
// row); a null pointer skips that gradient.
template <class Op, class T, class S, int G, int NITER, int VEC, int BLOCK>
__global__ void __launch_bounds__(BLOCK) xs_rowwise_bwd(const xs_row_args a) {
  XS_ROW_SETUP
  const T* const g = static_cast<const T*>(a.g);
  const long long g_rs = a.g_rs, g_es = a.g_es;
  P* const gc = static_cast<P*>(a.gc);
  P* const gt = static_cast<P*>(a.gt);
  T* const gv0 = static_cast<T*>(a.gv[0]);
  T* const gv1 = static_cast<T*>(a.gv[1]);
  T* const gv2 = static_cast<T*>(a.gv[2]);
  // Vector ops load g as one more row (index NVEC) next to the inputs.
  constexpr bool VG = !Op::SCALAR_OUT;
  constexpr int NV = Op::NVEC;
  constexpr int NL = NV + (VG ? 1 : 0);
  constexpr int NRED = Op::NDOT + (VG ? Op::NOUT : 0);
  constexpr int NSUM = NRED + xs_point_sums<Op>::count();  // then the own point sums
  const T* const gbase = g + r * g_rs;
  E cache[NITER > 0 ? NITER : 1][NL][VEC];
  S acc[NSUM];
#pragma unroll
  for (int d = 0; d < NSUM; ++d) acc[d] = 0;

  auto load = [&](long long e, bool ok, E(&v)[NL][VEC]) {
    xs_load_rows<T, NV, VEC, Op::IN_SHIFT>(base, es, e, ok, reinterpret_cast<E(&)[NV][VEC]>(v));
    if constexpr (VG) {
      if (!ok || e < Op::OUT_SHIFT) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[NV][i] = 0;
      } else if constexpr (VEC == 1) {
        v[NV][0] = E(xs_to_e(gbase[(e - Op::OUT_SHIFT) * g_es]));
      } else {
        xs_load<T, VEC>(gbase + e, v[NV]);
      }
    }
  };
  auto accumulate = [&](const E(&v)[NL][VEC], long long e) {
    xs_accumulate_dots<Op, S, E, VEC>(reinterpret_cast<const E(&)[NV][VEC]>(v), acc, acc + NRED, e);
    if constexpr (VG) {  // <g, term_out(k)>, the chunk summed in E
      E part[Op::NOUT];
#pragma unroll
      for (int k = 0; k < Op::NOUT; ++k) part[k] = 0;
#pragma unroll
      for (int i = 0; i < VEC; ++i)
#pragma unroll
        for (int k = 0; k < Op::NOUT; ++k) {
          const E tk = xs_term<Op, E>(reinterpret_cast<const E(&)[NV][VEC]>(v), Op::out(k), i, e + i);
          if (xs_mixed_dot<Op, S, E>(-1, Op::out(k))) {
            acc[Op::NDOT + k] += S(v[NV][i]) * S(tk);
          } else {
            part[k] += v[NV][i] * tk;
          }
        }
#pragma unroll
      for (int k = 0; k < Op::NOUT; ++k) acc[Op::NDOT + k] += S(part[k]);
    }
  };

  if constexpr (NITER > 0) {
#pragma unroll
    for (int it = 0; it < NITER; ++it) {
      const long long e = it * STEP + (long long)lane * VEC;
      load(e, valid && e < D, cache[it]);
      accumulate(cache[it], e);
    }
  } else {
    for (long long e = (long long)lane * VEC; e < D; e += STEP) {
      load(e, valid, cache[0]);
      accumulate(cache[0], e);
    }
  }
  xs_row_sum<G>(acc);

  // Per-row adjoints of the dots, c and t, through dual numbers.
  constexpr int NS = Op::NDOT + 2;
  using R = xs_dual<S, NS>;
  R dots[Op::NDOT];
#pragma unroll
  for (int d = 0; d < Op::NDOT; ++d) dots[d] = R::seed(acc[d], d);
  const R cs = R::seed(c, Op::NDOT);
  // LATE: the late dot |w|^2, w = t_a + s t_b, is seeded like the others, with the value
  // summed from the elements; its adjoint reaches the inputs through w itself (below)
  // and the other dots and c through s (late_wb = <w, t_b>: d|w|^2/ds = 2 late_wb).
  S late_s = 0, late_wb = 0;
  if constexpr (Op::LATE) {
    late_s = Op::template late_scale<S, S>(reinterpret_cast<const S(&)[Op::NDOT]>(acc), c);
    S sums[2];
    xs_late_sums<Op, S, E, G, NITER, VEC, NL, 2>(
        cache, late_s, lane, D, [&](long long e, E(&v)[NL][VEC]) { load(e, valid, v); }, sums);
    dots[Op::NDOT - 1] = R::seed(sums[0], Op::NDOT - 1);
    late_wb = sums[1];
  }
  const bool bad = xs_row_bad<Op, T>(acc, acc + NRED, c, t, D);
  R coef[Op::NOUT];
  Op::template coeffs<R, S>(dots, cs, R::seed(t, Op::NDOT + 1), eps, coef);
  if (bad) {
#pragma unroll
    for (int k = 0; k < Op::NOUT; ++k) coef[k] = xs_nan(coef[k]);
  }
  const S gs = (!VG && valid) ? S(xs_to_e(g[r * g_rs])) : S(0);
  S sbar[NS];
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    S s = 0;
    if constexpr (VG) {
#pragma unroll
      for (int k = 0; k < Op::NOUT; ++k) s += acc[Op::NDOT + k] * coef[k].d[j];
    } else {
      s = gs * coef[0].d[j];
    }
    sbar[j] = s;
  }
  if constexpr (Op::LATE) {  // the late dot's adjoint through s = s(dots, c)
    const R sd = Op::template late_scale<R, S>(dots, cs);
    const S chain = 2 * sbar[Op::NDOT - 1] * late_wb;
#pragma unroll
    for (int j = 0; j < NS; ++j)
      if (j != Op::NDOT - 1) sbar[j] += chain * sd.d[j];
  }
  if (valid && lane == 0) {
    if (gc) gc[row] = P(sbar[Op::NDOT]);
    if (gt) gt[row] = P(sbar[Op::NDOT + 1]);
  }
  if (!valid) return;

  E W[Op::NTERM][Op::NTERM];
  E direct[Op::NTERM];
#pragma unroll
  for (int p = 0; p < Op::NTERM; ++p) {
    direct[p] = 0;
#pragma unroll
    for (int q = 0; q < Op::NTERM; ++q) W[p][q] = 0;
  }
#pragma unroll
  for (int d = 0; d < Op::NDOT - (Op::LATE ? 1 : 0); ++d) {
    const xs_ij pq = Op::dot(d);
    if (pq.a == pq.b) {
      W[pq.a][pq.a] += E(2 * sbar[d]);
    } else {
      W[pq.a][pq.b] += E(sbar[d]);
      W[pq.b][pq.a] += E(sbar[d]);
    }
  }
  if constexpr (VG) {
#pragma unroll
    for (int k = 0; k < Op::NOUT; ++k) direct[Op::out(k)] += E(coef[k].v);
  }

  const long long DI = D - Op::IN_SHIFT;
  T* const grow[3] = {gv0 ? gv0 + row * DI : nullptr, gv1 ? gv1 + row * DI : nullptr,
                      gv2 ? gv2 + row * DI : nullptr};
  auto emit = [&](const E(&v)[NL][VEC], long long e) {
    E grad[NV][VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      E tv[Op::NTERM];
#pragma unroll
      for (int k = 0; k < Op::NTERM; ++k)
        tv[k] = xs_term<Op, E>(reinterpret_cast<const E(&)[NV][VEC]>(v), k, i, e + i);
#pragma unroll
      for (int j = 0; j < NV; ++j) grad[j][i] = 0;
      E gw = 0;  // LATE: d|w|^2/dw = 2w, times the late dot's adjoint
      if constexpr (Op::LATE) {
        constexpr xs_ij L = Op::dot(Op::NDOT - 1);
        gw = E(2 * sbar[Op::NDOT - 1]) * (tv[L.a] + E(late_s) * tv[L.b]);
      }
#pragma unroll
      for (int k = 0; k < Op::NTERM; ++k) {
        const xs_ij tk = Op::term(k);
        if (tk.a == XS_E0 || (tk.spatial && e + i == 0)) continue;  // constant there
        E gk = VG ? direct[k] * v[NL - 1][i] : E(0);
        if constexpr (Op::LATE) {
          if (k == Op::dot(Op::NDOT - 1).a) gk += gw;
          if (k == Op::dot(Op::NDOT - 1).b) gk += E(late_s) * gw;
        }
#pragma unroll
        for (int q = 0; q < Op::NTERM; ++q) gk += W[k][q] * tv[q];
        grad[tk.a][i] += gk;
        if (tk.b >= 0) grad[tk.b][i] += tk.sum ? gk : -gk;
      }
      // A bad row: every element NaN, also those no term varies with (element 0
      // of an input seen only through spatial terms, e.g. x of lorentz.dist0).
      if (bad) {
#pragma unroll
        for (int j = 0; j < NV; ++j) grad[j][i] = xs_nan(E(0));
      }
    }
    if (e < Op::IN_SHIFT) return;
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (grow[j]) xs_store_chunk<T, VEC>(grow[j], e - Op::IN_SHIFT, grad[j]);
  };
  if constexpr (NITER > 0) {
#pragma unroll
    for (int it = 0; it < NITER; ++it) {
      const long long e = it * STEP + (long long)lane * VEC;
      if (e < D) emit(cache[it], e);
    }
  } else {
    for (long long e = (long long)lane * VEC; e < D; e += STEP) {
      load(e, true, cache[0]);
      emit(cache[0], e);
    }
  }
}
