// Shorthands for writing op descriptions (see rowwise.cuh): the term / dot /
// output tables and the signature of the per-row formula.
#pragma once
#include "rowwise.cuh"

#define XS_TABLE(name, type, ...)                          \
  __host__ __device__ static constexpr type name(int i) {  \
    constexpr type table[] = {__VA_ARGS__};                \
    return table[i];                                       \
  }
#define XS_COEFFS                                                                \
  template <class R, class S>                                                    \
  __device__ __forceinline__ static void coeffs(const R(&dot)[NDOT], const R& c, \
                                                const R& t, S eps, R(&coef)[NOUT])
#define XS_LIM(name) xs_limits<S>::name
// The inputs that are points of `domain` (xs_ball: the Poincare ball or the
// Klein disk; xs_hyperboloid), by index: XS_POINTS(xs_ball, 0, 1) for x and y.
// A row with such an input outside the domain gives NaN (domain.cuh); inputs
// not listed (tangent vectors, vectors to project) are not placed.
#define XS_POINTS(domain, ...)                 \
  static constexpr xs_domain DOMAIN = domain; \
  static constexpr unsigned POINTS = xs_bits(__VA_ARGS__);
template <class... I>
constexpr unsigned xs_bits(I... i) {
  return (0u | ... | (1u << i));
}
