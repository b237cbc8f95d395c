// tinyllm/cuda/dtype.cuh — tinyllm's 16-bit types beside CUDA's own.
//
// tinyllm::bfloat16 / tinyllm::float16 (tinyllm/dtype.hpp) have the same size
// and bit layout as CUDA's __nv_bfloat16 / __half, and their conversions give
// the same bits as __float2bfloat16_rn / __float2half_rn (a CUDA test checks
// this). Kernels may use either; these helpers move between the two spellings
// and give 16-bit types the to_float / from_float spelling used in templates.
#pragma once

#include <tinyllm/dtype.hpp>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace tinyllm {

static_assert(sizeof(bfloat16) == sizeof(__nv_bfloat16) && alignof(bfloat16) == alignof(std::uint16_t),
              "tinyllm::bfloat16 must have the layout of __nv_bfloat16");
static_assert(sizeof(float16) == sizeof(__half), "tinyllm::float16 must have the layout of __half");

namespace cuda {

TINYLLM_HOST_DEVICE __nv_bfloat16 to_cuda(bfloat16 x) {
    __nv_bfloat16_raw raw;
    raw.x = x.bits;
    return __nv_bfloat16(raw);
}
TINYLLM_HOST_DEVICE __half to_cuda(float16 x) {
    __half_raw raw;
    raw.x = x.bits;
    return __half(raw);
}
TINYLLM_HOST_DEVICE bfloat16 from_cuda(__nv_bfloat16 x) { return {static_cast<__nv_bfloat16_raw>(x).x}; }
TINYLLM_HOST_DEVICE float16 from_cuda(__half x) { return {static_cast<__half_raw>(x).x}; }

}  // namespace cuda

// to_float for CUDA's own types, so templates accept them too.
TINYLLM_HOST_DEVICE float to_float(__nv_bfloat16 x) { return bf16_to_float(cuda::from_cuda(x)); }
TINYLLM_HOST_DEVICE float to_float(__half x) { return fp16_to_float(cuda::from_cuda(x)); }

}  // namespace tinyllm
