// Storage types and their conversions.
//
// fp16 and bf16 are carried as raw 16-bit patterns so that the kernels need no
// CUDA toolkit header (NVRTC on a machine without a toolkit has none); the
// conversions are single PTX instructions (sm_80+ for bf16 rounding).
#pragma once

struct __align__(2) xs_half {
  unsigned short bits;
};
struct __align__(2) xs_bf16 {
  unsigned short bits;
};

// E: element compute type (fp16/bf16/fp32 -> fp32, fp64 -> fp64).
// P: type of per-row scalar operands such as c and t, and of their gradients.
template <class T>
struct xs_traits;
template <>
struct xs_traits<float> {
  using E = float;
  using P = float;
};
template <>
struct xs_traits<double> {
  using E = double;
  using P = double;
};
template <>
struct xs_traits<xs_half> {
  using E = float;
  using P = float;
};
template <>
struct xs_traits<xs_bf16> {
  using E = float;
  using P = float;
};

// Element arithmetic type of the row-wise engine for rows of T whose row sums are
// S: fp32 for 16-bit rows, S otherwise (what is exact in fp32 and what rounds:
// rowwise.cuh's header). fp32's range is narrower than fp64's: a chunk of 8 bf16
// squares overflows from |v| ~ 6.5e18 (the row then reads inf, as an fp64 row's
// sums do past ~1e154; fp16 tops out at 65504), and an intermediate of the
// backward (an adjoint times a term) can reach inf where fp64 stayed finite.
template <class T, class S>
struct xs_elem {
  using type = S;
};
template <class S>
struct xs_elem<xs_half, S> {
  using type = float;
};
template <class S>
struct xs_elem<xs_bf16, S> {
  using type = float;
};

__device__ __forceinline__ float xs_to_e(float v) { return v; }
__device__ __forceinline__ double xs_to_e(double v) { return v; }
__device__ __forceinline__ float xs_to_e(xs_half v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}
__device__ __forceinline__ float xs_to_e(xs_bf16 v) {
  return __uint_as_float(static_cast<unsigned>(v.bits) << 16);
}

template <class T>
__device__ __forceinline__ T xs_from_e(typename xs_traits<T>::E v);
template <>
__device__ __forceinline__ float xs_from_e<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double xs_from_e<double>(double v) {
  return v;
}
// fp16 stores saturate at +-65504 (the largest finite half): a gradient or
// conformal factor beyond fp16's range comes out as the largest value, not inf.
// NaN stays NaN (fmaxf would return the bound).
template <>
__device__ __forceinline__ xs_half xs_from_e<xs_half>(float v) {
  xs_half h;
  if (v != v) {
    h.bits = 0x7e00;  // the canonical fp16 NaN
    return h;
  }
  v = fminf(fmaxf(v, -65504.0f), 65504.0f);
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
  return h;
}
template <>
__device__ __forceinline__ xs_bf16 xs_from_e<xs_bf16>(float v) {
  xs_bf16 h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
  return h;
}

// N consecutive elements moved as one access (16 bytes when N * sizeof(T) == 16).
template <class T, int N>
struct alignas(sizeof(T) * N) xs_pack {
  T v[N];
};

// Loads N consecutive, aligned elements starting at p into registers of type V.
template <class T, int N, class V>
__device__ __forceinline__ void xs_load(const T* __restrict__ p, V (&out)[N]) {
  const xs_pack<T, N> k = *reinterpret_cast<const xs_pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = V(xs_to_e(k.v[i]));
}

// Stores N values of type V as N consecutive, aligned elements of type T.
template <class T, int N, class V>
__device__ __forceinline__ void xs_store(T* __restrict__ p, const V (&in)[N]) {
  xs_pack<T, N> k;
#pragma unroll
  for (int i = 0; i < N; ++i) k.v[i] = xs_from_e<T>(typename xs_traits<T>::E(in[i]));
  *reinterpret_cast<xs_pack<T, N>*>(p) = k;
}
