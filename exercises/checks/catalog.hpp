// exercises/checks/catalog.hpp — the list of exercises, in course order: each one's
// name, the file a student edits, the program that checks it and a one-line statement.
//
// One list for the check programs (they refuse to start when a check and this list
// disagree) and for `tinyllm exercise` (examples/tinyllm/cmd_exercise.cpp), which
// prints it. The full statement of an exercise is the comment at the top of its file.
#pragma once

namespace exercises {

struct exercise_info {
    const char* name;     // "<component>/<nn>_<name>", also the check's name
    const char* file;     // under exercises/; the solution is the same path under exercises/solutions/
    const char* program;  // the check program of the stub build (the solutions': "<program>_solutions")
    const char* summary;  // what to compute, in one line
};

inline constexpr exercise_info catalog[] = {
    {"tokenization/01_most_frequent_pair", "tokenization/01_most_frequent_pair.cpp", "exercises_cpu",
     "BPE training's counting step: the most frequent adjacent pair over weighted words, ties to the smallest"},
    {"tokenization/02_merge_pair", "tokenization/02_merge_pair.cpp", "exercises_cpu",
     "apply one BPE merge to a token sequence, left to right, as the encoder does"},
    {"positional/01_alibi_bias", "positional/01_alibi_bias.cpp", "exercises_cpu",
     "the ALiBi bias tensor (H, T, T) with the paper's slopes, for any number of heads"},
    {"positional/02_rope_rotate", "positional/02_rope_rotate.cpp", "exercises_cpu",
     "rotate one head vector by RoPE at a position (rotate-half pairing)"},
    {"positional/03_rope_relative_score", "positional/03_rope_relative_score.cpp", "exercises_cpu",
     "RoPE's relative-position identity: the score <R_m q, R_n k> from q, k and m - n alone"},
    {"attention/01_online_softmax_merge", "attention/01_online_softmax_merge.cpp", "exercises_cpu",
     "merge two partial attention results (max, sum, unnormalized output) as flash attention does"},
    {"attention/02_causal_probs", "attention/02_causal_probs.cpp", "exercises_cpu",
     "the causal attention probabilities softmax(mask(Q K^T / sqrt(D)))"},
    {"attention/03_kv_cache_bytes", "attention/03_kv_cache_bytes.cpp", "exercises_cpu",
     "the bytes a KV cache holds for a model shape and a context length"},
    {"attention/04_swizzled_tile", "attention/04_swizzled_tile.cpp", "exercises_cpu",
     "the byte of a tile element in attention v6's shared memory (wgmma's 128-byte swizzle)"},
    {"attention/05_ring_parity", "attention/05_ring_parity.cpp", "exercises_cpu",
     "the stage and the mbarrier parities of a tile in attention v7's ring of buffers"},
    {"sampling/01_min_p", "sampling/01_min_p.cpp", "exercises_cpu",
     "min-p filtering: keep the tokens at least p times as probable as the top one"},
    {"sampling/02_top_p_bisection", "sampling/02_top_p_bisection.cpp", "exercises_cpu",
     "top-p (nucleus) filtering without sorting, by bisection on a probability threshold"},
    {"moe/01_topk_routing", "moe/01_topk_routing.cpp", "exercises_cpu",
     "MoE routing: softmax, the top k experts, their weights renormalized to sum to 1"},
    {"moe/02_load_balancing_loss", "moe/02_load_balancing_loss.cpp", "exercises_cpu",
     "the Switch Transformer load-balancing loss E * sum_i f_i P_i"},
    {"layers/01_rms_norm", "layers/01_rms_norm.cpp", "exercises_cpu",
     "RMSNorm forward: x / sqrt(mean(x^2) + eps) * weight, row by row"},
    {"layers/02_rms_norm_backward", "layers/02_rms_norm_backward.cpp", "exercises_cpu",
     "RMSNorm backward: dx and dweight from dout"},
    {"model/01_count_parameters", "model/01_count_parameters.cpp", "exercises_cpu",
     "count the parameters of a GPT-2, Llama or Mixtral shape"},
    {"model/02_cross_entropy", "model/02_cross_entropy.cpp", "exercises_cpu",
     "the next-token cross-entropy loss over rows with targets, and its gradient"},
    {"quantization/01_int4_groups", "quantization/01_int4_groups.cpp", "exercises_cpu",
     "int4 group quantization of a row: each group's scale and zero point, and the 4-bit values"},
    {"quantization/02_int8_absmax", "quantization/02_int8_absmax.cpp", "exercises_cpu",
     "int8 absmax quantization of a row: the scale, the values, and the worst error (at most scale / 2)"},
    {"speculative/01_acceptance_rule", "speculative/01_acceptance_rule.cpp", "exercises_cpu",
     "speculative sampling: accept the draft with min(1, p/q), else draw from norm(max(0, p - q))"},
    {"serving/01_paged_addressing", "serving/01_paged_addressing.cpp", "exercises_cpu",
     "paged KV cache: the pool row of a position, through the sequence's block table"},
    {"serving/02_blocks_needed", "serving/02_blocks_needed.cpp", "exercises_cpu",
     "paged KV cache: the free blocks a sequence needs for n more positions, copy-on-write included"},
    {"kernels/01_warp_softmax", "kernels/01_warp_softmax.cu", "exercises_cuda",
     "CUDA: a row softmax, one warp per row, reductions with __shfl_xor_sync"},
    {"kernels/02_tiled_matmul", "kernels/02_tiled_matmul.cu", "exercises_cuda",
     "CUDA: C = A B with 16x16 tiles in shared memory and __syncthreads"},
    {"kernels/03_last_block_sum", "kernels/03_last_block_sum.cu", "exercises_cuda",
     "CUDA: a sum over the whole grid in one launch, the last block to arrive adding the blocks' partials"},
};

}  // namespace exercises
