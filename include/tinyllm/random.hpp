// tinyllm/random.hpp — filling tensors with reproducible random numbers.
//
// Element i of a tensor filled with seed s is
//
//     lo + (hi - lo) * u_i,      u_i = philox_uniform(s, stream = 0, n = i)
//
// a pure function of (s, i), so the CPU loop here and the CUDA kernel in
// <tinyllm/cuda/random.cuh> produce bit-identical tensors (the product and sum
// are one fused multiply-add on both sides, see tinyllm/math.hpp). Tests use
// it for inputs, the tour for weights.
#pragma once

#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/tensor.hpp>

#include <cstdint>

namespace tinyllm {

// The value of element `i` of a tensor filled by fill_uniform(out, seed, lo, hi).
TINYLLM_HOST_DEVICE float uniform_element(std::uint64_t seed, std::uint64_t i, float lo, float hi) {
    return tinyllm::fma(hi - lo, philox_uniform(seed, 0, i), lo);
}

namespace cpu {

// out[i] = uniform in [lo, hi), element i drawn from (seed, i). out: any shape, contiguous.
template <std::size_t Rank>
void fill_uniform(tensor_view<float, Rank> out, std::uint64_t seed, float lo = 0.0f, float hi = 1.0f) {
    TINYLLM_EXPECT(out.is_contiguous(), "fill_uniform writes a contiguous tensor; got strides ",
                   to_string(out.strides()), " for shape ", to_string(out.shape()));
    TINYLLM_EXPECT(lo <= hi, "fill_uniform needs lo <= hi; got lo = ", lo, ", hi = ", hi);
    float* data = out.data();
    for (index_t i = 0; i < out.size(); ++i) data[i] = uniform_element(seed, static_cast<std::uint64_t>(i), lo, hi);
}

}  // namespace cpu
}  // namespace tinyllm
