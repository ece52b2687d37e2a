// Shorthands for writing op descriptions (see rowwise.cuh): the term / dot /
// output tables and the signature of the per-row formula.
#pragma once
#include "rowwise.cuh"

#define XS_TABLE(name, type, ...)                    \
  __device__ static constexpr type name(int i) {     \
    constexpr type table[] = {__VA_ARGS__};          \
    return table[i];                                 \
  }
#define XS_COEFFS                                                                \
  template <class R, class S>                                                    \
  __device__ __forceinline__ static void coeffs(const R(&dot)[NDOT], const R& c, \
                                                const R& t, S eps, R(&coef)[NOUT])
#define XS_LIM(name) xs_limits<S>::name
