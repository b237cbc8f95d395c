// tinyllm/cuda/moe.cuh — Mixture of Experts on the GPU: include this one header.
//
//   moe_gating.cuh    fused gating kernels (softmax / noisy / DeepSeek grouped
//                     top-k), v1 naive (thread per token) and v2 fused (warp per token)
//   moe_dispatch.cuh  the deterministic dispatch plan (count -> CUB scan ->
//                     scatter, capacity), gather, cuBLAS SwiGLU experts, combine
//
// Each function has the signature and meaning of its CPU reference in
// <tinyllm/moe.hpp>; tests/cuda/test_moe.cu checks them against it.
#pragma once

#include <tinyllm/cuda/moe_dispatch.cuh>
#include <tinyllm/cuda/moe_gating.cuh>
#include <tinyllm/moe.hpp>
