// Sums of several values over the threads that share one row.
#pragma once

// Butterfly sum over aligned groups of G lanes (G a power of two, G <= 32).
// Every lane of the warp must call it; afterwards each lane holds its group's sum.
template <int G, class S, int N>
__device__ __forceinline__ void xs_group_sum(S (&v)[N]) {
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
  }
}

// Sum over a whole block of G threads (G a multiple of 32). smem holds 32 * N
// values. Ends with a barrier so that smem can be reused by the next call.
template <int G, class S, int N>
__device__ __forceinline__ void xs_block_sum(S (&v)[N], S* smem) {
  xs_group_sum<32>(v);
  const int warp = threadIdx.x / 32;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) smem[warp * N + k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < N; ++k) {
    S s = 0;
#pragma unroll
    for (int w = 0; w < G / 32; ++w) s += smem[w * N + k];
    v[k] = s;
  }
  __syncthreads();
}
