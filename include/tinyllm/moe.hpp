// tinyllm/moe.hpp — Mixture of Experts, everything: include this one header.
//
// A sparse MoE layer keeps E expert FFNs but runs only k of them per token, so
// a model can hold E/k times more FFN parameters for the same compute per
// token (Mixtral 8x7B: 47B parameters, ~13B used per token). The pieces:
//
//   moe_gating.hpp    router logits (T, E) -> expert ids and weights (T, k):
//                     softmax top-k (Switch, GShard, Mixtral), noisy top-k
//                     (Shazeer 2017), sigmoid + bias + group-limited (DeepSeek-V3)
//   moe_balance.hpp   load-balancing loss, router z-loss, utilization
//                     statistics, expert capacity and token dropping
//   moe_dispatch.hpp  histogram -> prefix sum -> scatter, gather, the experts'
//                     SwiGLU FFNs, combine; cpu::moe_forward for a whole block
//
// CUDA versions of the same functions: <tinyllm/cuda/moe.cuh>. The story with
// formulas and the GPU ladder: docs/moe.md.
#pragma once

#include <tinyllm/moe_balance.hpp>
#include <tinyllm/moe_dispatch.hpp>
#include <tinyllm/moe_gating.hpp>
