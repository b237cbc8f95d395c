// tinyllm/cuda/model.cuh — the decoder of <tinyllm/model.hpp> on the GPU,
// composed from the CUDA kernels of the earlier chapters, with cuBLAS for
// every matrix product.
//
// The same diagram as the CPU reference, with the kernel that runs each step:
//
//     x = embed(tokens) (+ positions)         embedding.cuh, add_learned_positions (GPT-2)   (B·n, D)
//     for each layer:
//         h = norm1(x)                         norm.cuh (fused with the residual add below)
//         qkv = h Wqkv^T (+ b)                 ONE cuBLAS GEMM: Wq, Wk, Wv stacked at load time
//         q, k = rope(q, k, positions)         ONE kernel, positional.cuh's rope_write_cache (RoPE v3): v2's
//         cache[b, L_b + t] = k, v             rotation in place on qkv, then k, v into the (B, capacity, Hkv, Dh) cache
//                                              (a decode step, at most 8 rows: these three are ONE kernel, RoPE v4's
//                                              qkv_rope_write_cache, a GEMV that rotates and stores in its epilogue)
//         a = attention(q, cache)              attention_decode.cuh for a few queries, attention_mma.cuh
//                                              (bf16, Dh 64/128) or attention_flash.cuh (anything else) for a prompt
//         x, h = x + a Wo^T (+ bo), norm2(...)  cuBLAS + residual_add_*_norm (one pass; a dense
//                                              projection's bias is added in that pass, not after the GEMM);
//                                              a decode step on quantized weights: ONE GEMV, norm.cuh's v3
//                                              (the add in its epilogue, the norm by its last block)
//         delta = ffn(h)                        ffn.cuh (GPT-2 MLP, SwiGLU) or moe.cuh (gating, plan,
//                                              gather, cuBLAS experts, combine); a decode step (at most 8
//                                              rows) computes the first projection and its activation in
//                                              ONE GEMV (ffn.cuh's swiglu_gemv, bias_activate_gemv), and
//                                              a MoE layer's chosen experts as grouped GEMVs that read
//                                              the plan on the device (moe_experts_swiglu_gemv)
//     x, h = x + delta (+ proj's bias), norm_f(...)   (or the next layer's norm1), as after attention:
//                                              one pass after the MLP's last GEMM, or, quantized, a
//                                              decode step's v3 GEMV; after a MoE block,
//                                              combine does it (combine v2: ONE kernel with the add + norm)
//     logits = h W_lm^T                         cuBLAS, float output (for the sampler)
//
// A decode step (one token per row) runs these kernels eagerly (forward), from a
// CUDA graph (decode_step), or as ONE kernel whose blocks wait for each other
// through counters in device memory (decode_step_dataflow: decode_dataflow.cuh;
// dense GPT-2 and Llama-style models, at most 8 rows).
//
// Element type T: float (matches the CPU reference to ~1e-6) or
// tinyllm::bfloat16 (weights and activations in bf16, every product and
// reduction accumulated in float — what transformers does with
// torch_dtype=bfloat16 — except that the MoE router's logits and the final
// logits leave their GEMMs as float instead of being rounded to bf16).
//
// Batches and the KV cache. A session holds B sequences, each with its own
// length L_b. forward() feeds up to n tokens per row (right padding: row b
// feeds counts[b] <= n); the keys and values of the fed tokens go to cache
// positions [L_b, L_b + counts[b]). Attention masks each row's keys beyond its
// length (attention_options::key_lengths), and the causal alignment is
// bottom-right over the longest row, so
//   * a prompt (n > 1) may be fed when every row has the same length (a fresh
//     session: prompts of different lengths, right-padded);
//   * one token per row (decode) may be fed at any lengths.
// That is exactly what generation needs: prefill the batch, then one token per
// row per step. Padding positions are never written to the cache.
//
// An int8 KV cache (new_session(B, capacity, cpu::model::kv_dtype::int8), or
// generation_options::kv_cache) holds each position's keys and values of each
// KV head as Dh bytes and one float step, the CPU's kv_cache_int8 format made
// by the same formulas (quant::step_for, quant::quantize_int8): about 3.8x less
// memory than a float32 cache at Dh = 64 (1.9x less than a bfloat16 one). Attention reads it through a per-layer temporary of T that
// a kernel dequantizes (the CPU reference's way), so it saves memory, not time.
//
// Quantized weights. A CPU model whose matrices are quantized (int8, int4-gG;
// cpu::model::quantize_weights, or a checkpoint of `tinyllm quantize --out`)
// uploads them as they are (quantize.cuh's device_quantized_matrix; Wq, Wk, Wv
// stacked by rows as the dense ones are), and every projection picks its rung:
// a few rows (decoding, at most 8) the fused GEMV (v2), which reads the
// quantized bytes once (for the QKV projection and the MLP's first one, with
// the same epilogues as the dense decode GEMVs); more rows (a prompt) dequantize + cuBLAS (v1) for
// float, which keeps float accuracy, or the tensor-core dequantize-GEMM (v3)
// for bfloat16. Embeddings, norms, biases and the router stay as the CPU holds
// them (float); a quantized untied output projection and Mixtral's quantized
// experts are dequantized once on the host and uploaded dense (the logits' GEMM
// writes float; the experts' grouped GEMMs have no quantized rung yet).
//
// Training: forward_backward(grads, tokens, targets, options) is
// cpu::model::forward_backward on the GPU, float only (T = float; bfloat16
// training is not implemented and throws). The forward pass runs over the
// whole batch (N = B*T rows, causal, no cache) and keeps what the CPU keeps per
// layer (x, norm1(x), q/k after RoPE and v, the attention output and its
// log-sum-exp, x_mid, norm2(x_mid), the FFN's pre-activations); the backward
// walks the layers from the top with the backward kernels:
//
//     dlogits                                 cross_entropy (fused, in place over the logits)
//     dh = dlogits W_lm; dW_lm                linear_backward (cuBLAS)
//     dx = norm_f backward                    residual_add_*_norm_backward
//     for each layer, last first:
//         dh2 = ffn backward (dx)             activate_backward / swiglu_backward + linear_backward,
//                                             or moe_backward (Mixtral)
//         dx += norm2 backward (dh2)          residual_add_*_norm_backward (dx in place)
//         da = dx Wo; dWo                     linear_backward
//         dq, dk, dv                          attention_backward_flash (from the saved lse), into dqkv
//         dq, dk = rope backward              apply_rope_backward, in place in dqkv
//         dh1 = dqkv Wqkv; dWqkv              ONE linear_backward on the stacked Wqkv
//         dx += norm1 backward (dh1)
//     d embed, d positions                    embedding_backward / learned_positions_backward
//
// Every step is deterministic (no float atomics anywhere), so a step's
// gradients are the same bits on every run. Mixtral's load-balancing loss is
// small ((N, E) per layer) and needs a global count over all layers before any
// gradient: each layer's router logits are downloaded, and the loss and its
// gradient at the logits are computed on the host by the CPU's own code
// (detail::load_balancing_loss), then uploaded for moe_backward. The
// gradients are accumulated on the device (Wq, Wk, Wv stacked, as the weights
// are) and downloaded at the end into a CPU model_weights in the weights'
// layout — one synchronous copy of every gradient per call.
//
// One model and its sessions belong to one host thread (the model owns a cuBLAS
// handle); the calls are synchronous where they return data to the host.
#pragma once

#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/attention_backward.cuh>
#include <tinyllm/cuda/attention_decode.cuh>
#include <tinyllm/cuda/attention_flash.cuh>
#include <tinyllm/cuda/attention_mma.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/decode_dataflow.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/loss.cuh>
#include <tinyllm/cuda/moe.cuh>
#include <tinyllm/cuda/moe_dispatch.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/cuda/quantize.cuh>
#include <tinyllm/cuda/sampling.cuh>
#include <tinyllm/model.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace tinyllm::cuda {
namespace detail {

// A decode step's ids (where cuda::sample wrote its tokens) are read on the GPU:
// host memory is refused by name (a copy from it failed with a bare "invalid argument").
inline void expect_device_ids(tensor_view<const token_id, 1> ids, const char* op) {
    TINYLLM_EXPECT(ids.extent(0) == 0 || is_device_memory(ids.data()), op, ": ids point to host memory (",
                   static_cast<const void*>(ids.data()), "); a decode step reads them on the GPU, so they must be in "
                   "device memory (where cuda::sample writes its tokens); host ids go to forward()");
}

// A device tensor that owns its memory: a buffer and a shape. Empty when the
// host tensor was empty (an absent bias, an untied lm_head).
template <class T, std::size_t R>
struct device_tensor {
    device_buffer<T> buffer;
    extents<R> shape{};

    bool empty() const { return buffer.size() == 0; }
    tensor_view<T, R> view() { return {buffer.data(), shape}; }
    tensor_view<const T, R> view() const { return {buffer.data(), shape}; }
};

// One unsigned of device memory, zero: the counter of a kernel whose last block
// finishes the job (launch.cuh's last_block_to_arrive), which leaves it zero.
inline device_buffer<unsigned> zeroed_counter() {
    device_buffer<unsigned> c(1);
    TINYLLM_CUDA_CHECK(cudaMemset(c.data(), 0, c.bytes()));
    return c;
}

// Host float -> device T (rounded to nearest even for bfloat16).
template <class T, std::size_t R>
device_tensor<T, R> upload(const tensor<float, R>& host) {
    device_tensor<T, R> d;
    if (host.size() == 0) return d;
    std::vector<T> converted(static_cast<std::size_t>(host.size()));
    for (std::size_t i = 0; i < converted.size(); ++i) converted[i] = from_float<T>(host.data()[i]);
    d.buffer = to_device(converted);
    d.shape = host.shape();
    return d;
}

// The rows of a, then of b, then of c: (Na + Nb + Nc, K); for 1-D tensors the concatenation.
template <std::size_t R>
tensor<float, R> stacked(const tensor<float, R>& a, const tensor<float, R>& b, const tensor<float, R>& c) {
    if (a.size() == 0) return {};
    extents<R> shape = a.shape();
    shape[0] = a.extent(0) + b.extent(0) + c.extent(0);
    tensor<float, R> s(shape);
    float* out = s.data();
    for (const auto* part : {&a, &b, &c}) out = std::copy(part->data(), part->data() + part->size(), out);
    return s;
}

// The rows of a, then of b, then of c, of three quantized matrices with the same
// inputs and format (Wq, Wk, Wv): per-row formats, so the bytes, scales and zero
// points simply follow one another. Empty when a is.
inline quantized_matrix stacked(const quantized_matrix& a, const quantized_matrix& b, const quantized_matrix& c) {
    if (a.rows == 0) return {};
    quantized_matrix s;
    s.spec = a.spec;
    s.cols = a.cols;
    s.rows = a.rows + b.rows + c.rows;
    const index_t groups = a.groups();
    s.scales = tensor<float, 2>({s.rows, groups});
    if (a.zeros.size()) s.zeros = tensor<std::uint8_t, 2>({s.rows, groups});
    float* scale = s.scales.data();
    std::uint8_t* zero = s.zeros.data();
    for (const quantized_matrix* part : {&a, &b, &c}) {
        TINYLLM_EXPECT(part->cols == a.cols && part->spec.name() == a.spec.name() && part->groups() == groups,
                       "cuda::model: Wq, Wk and Wv are quantized differently (", a.spec.name(), " with ", a.cols,
                       " inputs vs ", part->spec.name(), " with ", part->cols, ")");
        s.data.insert(s.data.end(), part->data.begin(), part->data.end());
        scale = std::copy(part->scales.data(), part->scales.data() + part->scales.size(), scale);
        if (zero) zero = std::copy(part->zeros.data(), part->zeros.data() + part->zeros.size(), zero);
    }
    return s;
}

inline std::optional<device_quantized_matrix> upload_quantized(const quantized_matrix& q) {
    if (q.rows == 0) return std::nullopt;
    return to_device(q);
}

// The int8 KV cache (session kv_dtype::int8; the format of tinyllm/kv_cache_int8.hpp):
// like rope_write_cache_kernel's copy, but each position's Dh numbers of one KV head are
// stored as int8 with one float step s = max|x| / 127 (quant::step_for and
// quant::quantize_int8, the CPU cache's formulas, so the bytes are the CPU's).
// One warp per (position, head): the absmax by shuffles, then each lane rounds
// its elements. A non-finite element makes the step NaN, so attention over it
// is NaN rather than silently finite. Grid (n, B), 32 * warps threads.
template <class T>
__global__ void write_cache_int8_kernel(std::int8_t* cache, float* scales, index_t capacity, const T* src,
                                        index_t src_batch_stride, index_t src_time_stride, index_t heads,
                                        index_t head_dim, const std::int32_t* start, const std::int32_t* count) {
    const int t = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y);
    if (t >= count[b]) return;  // right padding: nothing to keep
    const index_t at = static_cast<index_t>(b) * capacity + start[b] + t;  // the cache position
    const T* from = src + b * src_batch_stride + t * src_time_stride;
    const int lane = static_cast<int>(threadIdx.x % 32), warps = static_cast<int>(blockDim.x / 32);
    for (index_t h = threadIdx.x / 32; h < heads; h += warps) {
        const T* x = from + h * head_dim;
        float amax = 0.0f;
        bool finite = true;
        for (index_t d = lane; d < head_dim; d += 32) {
            const float xd = to_float(x[d]);
            finite = finite && ::isfinite(xd);
            amax = fmaxf(amax, fabsf(xd));
        }
        amax = warp_max(amax);
        finite = __all_sync(0xffffffffu, finite);
        const float s = finite ? quant::step_for(amax, 127.0) : __int_as_float(0x7fc00000);  // NaN
        if (lane == 0) scales[at * heads + h] = s;
        std::int8_t* q = cache + (at * heads + h) * head_dim;
        for (index_t d = lane; d < head_dim; d += 32) q[d] = finite ? quant::quantize_int8(to_float(x[d]), s) : 0;
    }
}

// out (B, tk, Hkv, Dh) contiguous = s · q for the first tk positions of each row
// of an int8 cache (B, capacity, Hkv, Dh): the keys or values attention reads.
template <class T>
__global__ void dequantize_cache_kernel(T* out, const std::int8_t* cache, const float* scales, index_t capacity,
                                        index_t tk, index_t heads, index_t head_dim) {
    const index_t width = heads * head_dim, n = static_cast<index_t>(gridDim.y) * tk * width;
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const index_t b = i / (tk * width), rest = i % (tk * width), t = rest / width, e = rest % width;
        const index_t at = b * capacity + t;
        out[i] = from_float<T>(quant::dequantize_int8(cache[at * width + e], scales[at * heads + e / head_dim]));
    }
}

// out(r, :) = in(rows[r], :), for the last real position of each batch row.
template <class T>
__global__ void gather_rows_kernel(T* out, const T* in, const std::int32_t* rows, index_t width) {
    const index_t r = blockIdx.x;
    const T* from = in + static_cast<index_t>(rows[r]) * width;
    for (index_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = from[i];
}

// The per-row bookkeeping of one decode step (one token per row), computed on
// the device from the device copy of the rows' lengths, which it advances: what
// forward() computes on the host and uploads, so that a captured step needs
// nothing from the host. info is (4, B): start, count, key length, last row.
// (A template, as every kernel in a header: several translation units include it.)
template <class I>
__global__ void decode_prepare_kernel(I* lengths, I* info, std::int64_t* positions, int B) {
    for (int b = static_cast<int>(threadIdx.x); b < B; b += static_cast<int>(blockDim.x)) {
        const I L = lengths[b];
        info[b] = L;
        info[B + b] = 1;
        info[2 * B + b] = L + 1;
        info[3 * B + b] = b;
        positions[b] = L;
        lengths[b] = L + 1;
    }
}

// The keys a decode step attends: the longest row's plus one, rounded up to a
// power of two (at least 64, at most the capacity). Rows shorter than that are
// masked by their key lengths, and the attention kernels skip the masked keys'
// splits; rounding keeps the kernels' shapes fixed for many steps, so that one
// captured graph serves them all.
inline index_t decode_keys(index_t longest, index_t capacity) {
    index_t tk = 64;
    while (tk < longest) tk *= 2;
    return tk < capacity ? tk : capacity;
}

// Captured decode steps: a session's (model::decode_step) or a paged pool's
// (forward_batch's decode-only steps, model_paged.cuh). One executable graph per
// step shape, keyed by (rows, keys): decode_step's (B, rounded key count), the
// pool's (sessions, rounded block-table width). Also the stream they run on and
// the device copy of a session's lengths. Destroying it destroys the graphs and
// the stream.
struct decode_graphs {
    using shape = std::pair<index_t, index_t>;  // (rows, keys or table width)
    cudaStream_t stream = nullptr;
    std::map<shape, cudaGraphExec_t> steps;
    std::vector<const void*> scratch;           // the buffers the graphs were captured on
    std::vector<index_t> uploaded;              // the lengths the device copy holds (decode_step)
    device_buffer<std::int32_t> lengths;        // (B) (decode_step)
    std::string failure;                        // why capture failed (the steps then run eagerly)
    std::size_t captures = 0, replays = 0;
    std::size_t nodes = 0;                      // nodes of the last graph captured (its kernels and copies)

    decode_graphs() { TINYLLM_CUDA_CHECK(cudaStreamCreate(&stream)); }  // blocking: ordered with the default stream
    decode_graphs(const decode_graphs&) = delete;
    decode_graphs& operator=(const decode_graphs&) = delete;
    ~decode_graphs() {
        clear();
        if (stream) (void)cudaStreamDestroy(stream);  // never throw from a destructor
    }
    void clear() {
        for (auto& [key, exec] : steps) (void)cudaGraphExecDestroy(exec);
        steps.clear();
    }
    // Drops the graphs if the buffers they were captured on moved (a scratch buffer grew).
    void follow(std::vector<const void*> buffers) {
        if (buffers == scratch) return;
        clear();
        scratch = std::move(buffers);
    }
    // The graph of a step shape, or nullptr.
    cudaGraphExec_t find(shape key) const {
        const auto it = steps.find(key);
        return it == steps.end() ? nullptr : it->second;
    }
    // Captures what issue() issues on `stream` into the graph of `key`; nothing
    // runs. A failure (a synchronization or an allocation inside, a capture the
    // driver refuses) is kept in `failure`, and the caller runs eagerly from then on.
    template <class Issue>
    void capture(shape key, Issue&& issue) {
        cudaGraph_t graph = nullptr;
        try {
            TINYLLM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            try {
                issue();
            } catch (...) {
                (void)cudaStreamEndCapture(stream, &graph);
                if (graph) (void)cudaGraphDestroy(graph);
                (void)cudaGetLastError();
                throw;
            }
            TINYLLM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
            std::size_t count = 0;  // for graph_nodes(); a runtime that cannot count leaves it as it was
            if (cudaGraphGetNodes(graph, nullptr, &count) == cudaSuccess) nodes = count;
            else (void)cudaGetLastError();  // that failure is not the step's
            cudaGraphExec_t exec = nullptr;
            const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
            (void)cudaGraphDestroy(graph);
            TINYLLM_CUDA_CHECK(made);
            steps[key] = exec;
            ++captures;
        } catch (const std::exception& e) {
            failure = e.what();
            clear();
        }
    }
    // Runs the graph of a step shape on `stream`.
    void replay(cudaGraphExec_t exec) {
        TINYLLM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        ++replays;
    }
};

// Grow-only scratch: a buffer of at least n elements.
template <class T>
T* at_least(device_buffer<T>& b, index_t n) {
    if (b.size() < static_cast<std::size_t>(n)) b = device_buffer<T>(static_cast<std::size_t>(n));
    return b.data();
}

// y[i] *= factor for i < n.
template <class F>
__global__ void scale_gradient_kernel(F* y, index_t n, F factor) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        y[i] *= factor;
}

// A zeroed device tensor of the shape of `like` (empty when `like` is).
template <class T, std::size_t R>
device_tensor<T, R> zeros_like(const device_tensor<T, R>& like) {
    device_tensor<T, R> d;
    if (like.empty()) return d;
    d.buffer = device_buffer<T>(like.buffer.size());
    d.shape = like.shape;
    TINYLLM_CUDA_CHECK(cudaMemset(d.buffer.data(), 0, d.buffer.bytes()));
    return d;
}

// Device float -> host float (empty stays empty).
template <std::size_t R>
tensor<float, R> download(const device_tensor<float, R>& d) {
    if (d.empty()) return {};
    tensor<float, R> host(d.shape);
    TINYLLM_CUDA_CHECK(cudaMemcpy(host.data(), d.buffer.data(), d.buffer.bytes(), cudaMemcpyDeviceToHost));
    return host;
}

// What one layer keeps from the training forward for its backward, on the
// device (cpu::detail::layer_activations; the stream entering the layer is
// kept by the caller). N = B*T rows.
struct training_layer {
    device_buffer<float> h1;             // (N, D)           norm1(x)
    device_buffer<float> qkv;            // (N, Hq*Dh + 2*Hkv*Dh)  q, k after RoPE; v
    device_buffer<float> attn;           // (N, Hq*Dh)       attention output, Wo's input
    device_buffer<float> lse;            // (B, Hq, T)       the attention rows' log-sum-exp
    device_buffer<float> x_mid;          // (N, D)           x + attention
    device_buffer<float> h2;             // (N, D)           norm2(x_mid)
    device_buffer<float> a, b;           // (N, F)           GPT-2: fc pre-activation; Llama: gate, up
    tensor<float, 2> router_logits;      // (N, E)           Mixtral, on the host (for the aux loss)
};

}  // namespace detail

// The weights of one layer on the device, in T. Wq, Wk, Wv are stacked into wqkv.
template <class T>
struct device_layer_weights {
    detail::device_tensor<T, 1> attn_norm_weight, attn_norm_bias, ffn_norm_weight, ffn_norm_bias;  // (D)
    detail::device_tensor<T, 2> wqkv;   // (Hq*Dh + 2*Hkv*Dh, D)
    detail::device_tensor<T, 1> bqkv;   // GPT-2
    detail::device_tensor<T, 2> wo;     // (D, Hq*Dh)
    detail::device_tensor<T, 1> bo;
    detail::device_tensor<T, 2> fc, proj;  // GPT-2 MLP
    detail::device_tensor<T, 1> fc_bias, proj_bias;
    detail::device_tensor<T, 2> gate, up, down;  // SwiGLU
    detail::device_tensor<T, 2> router;          // Mixtral (E, D)
    detail::device_tensor<T, 3> w1, w3, w2;      // Mixtral experts
    // A quantized model's matrices (the dense ones above are then empty).
    std::optional<device_quantized_matrix> wqkv_q, wo_q, fc_q, proj_q, gate_q, up_q, down_q;
};

// The device keys and values of a paged KV cache (cuda/tinyllm/cuda/model_paged.cuh).
template <class T>
class paged_kv_pool;
namespace detail {
struct paged_step;  // one forward_batch step's rows (model_paged.cuh)
}

template <class T>
class model {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, bfloat16>,
                  "tinyllm::cuda::model runs in float or tinyllm::bfloat16");

    // A CPU model's float32 weights (a model holding bfloat16 matrices has them empty;
    // a quantized one has its quantized matrices, uploaded by upload_quantized).
    static const model_weights& float_weights_of(const cpu::model& host) {
        TINYLLM_EXPECT(host.weights_dtype() == cpu::model::weight_dtype::float32,
                       "cuda::model: the CPU model holds its matrices in bfloat16; upload a model with float32 "
                       "(or quantized) weights");
        return host.weights();
    }

public:
    // Upload the weights of a CPU model (converted to T).
    model(const model_config& config, const model_weights& w) : config_(config), layout_(w.layout) {
        TINYLLM_EXPECT(static_cast<index_t>(w.layers.size()) == config_.num_layers, "cuda::model: ", w.layers.size(),
                       " layers of weights for a config with ", config_.num_layers);
        embed_ = detail::upload<T>(w.embed);
        positions_ = detail::upload<T>(w.positions);
        for (const layer_weights& L : w.layers) {
            device_layer_weights<T> d;
            d.attn_norm_weight = detail::upload<T>(L.attn_norm_weight);
            d.attn_norm_bias = detail::upload<T>(L.attn_norm_bias);
            d.ffn_norm_weight = detail::upload<T>(L.ffn_norm_weight);
            d.ffn_norm_bias = detail::upload<T>(L.ffn_norm_bias);
            d.wqkv = detail::upload<T>(detail::stacked(L.wq, L.wk, L.wv));
            d.bqkv = detail::upload<T>(detail::stacked(L.bq, L.bk, L.bv));
            d.wo = detail::upload<T>(L.wo);
            d.bo = detail::upload<T>(L.bo);
            d.fc = detail::upload<T>(L.fc);
            d.fc_bias = detail::upload<T>(L.fc_bias);
            d.proj = detail::upload<T>(L.proj);
            d.proj_bias = detail::upload<T>(L.proj_bias);
            d.gate = detail::upload<T>(L.gate);
            d.up = detail::upload<T>(L.up);
            d.down = detail::upload<T>(L.down);
            d.router = detail::upload<T>(L.router);
            d.w1 = detail::upload<T>(L.w1);
            d.w3 = detail::upload<T>(L.w3);
            d.w2 = detail::upload<T>(L.w2);
            layers_.push_back(std::move(d));
        }
        final_norm_weight_ = detail::upload<T>(w.final_norm_weight);
        final_norm_bias_ = detail::upload<T>(w.final_norm_bias);
        lm_head_ = detail::upload<T>(w.lm_head);
        // The cos/sin table of RoPE v2, up to 16384 positions (the kernel computes later ones on the fly).
        if (config_.arch != model_arch::gpt2)
            rope_ = make_rope_cache(resolve_rope(config_.rope, config_.head_dim), std::min<index_t>(std::max<index_t>(config_.max_positions, 1), 16384));
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    explicit model(const cpu::model& host) : model(host.config(), float_weights_of(host)) {
        if (host.quantized()) upload_quantized(host);
    }

    // Whether the matrices are quantized, and how (see the top).
    bool quantized() const { return quantization_.has_value(); }

    // Load DIR/config.json and DIR/model.safetensors (read as float on the host, then
    // uploaded); a quantized checkpoint (`tinyllm quantize --out`) is read by the CPU
    // model and uploaded as it stores it.
    static model load(const std::string& dir) {
        const model_config c = load_model_config(dir);
        if (c.quantization) return model(cpu::model::load(dir));
        const safetensors_checkpoint ck(dir);
        return model(c, load_model_weights(c, ck));
    }

    const model_config& config() const { return config_; }

    // Bytes of all the weights on the device. A decode step reads nearly all of them
    // (every matrix once; of an untied embedding only the fed rows; of Mixtral's
    // experts only the chosen ones), so for dense tied models this is the bytes
    // floor of a step.
    std::size_t weight_bytes() const {
        std::size_t n = 0;
        const auto add = [&n](const auto&... t) { ((n += t.buffer.bytes()), ...); };
        add(embed_, positions_, final_norm_weight_, final_norm_bias_, lm_head_);
        for (const auto& L : layers_) {
            add(L.attn_norm_weight, L.attn_norm_bias, L.ffn_norm_weight, L.ffn_norm_bias, L.wqkv, L.bqkv, L.wo, L.bo,
                L.fc, L.fc_bias, L.proj, L.proj_bias, L.gate, L.up, L.down, L.router, L.w1, L.w3, L.w2);
            for (const auto* q : {&L.wqkv_q, &L.wo_q, &L.fc_q, &L.proj_q, &L.gate_q, &L.up_q, &L.down_q})
                if (*q) n += (*q)->data.bytes() + (*q)->scales.bytes() + (*q)->zeros.bytes();
        }
        return n;
    }

    // B sequences' state: a KV cache per layer, each row's length, and the
    // activations of the last forward (grown on demand, reused).
    struct session {
        index_t batch = 0, capacity = 0;
        std::vector<index_t> lengths;                   // (B) positions fed so far
        std::vector<device_buffer<T>> keys, values;     // per layer (B, capacity, Hkv, Dh); empty for int8
        // An int8 session (new_session(..., kv_dtype::int8)) keeps them as int8 with a
        // float step per position and KV head, and dequantizes one layer at a time
        // into keys_T/values_T (B, tk, Hkv, Dh) for attention.
        cpu::model::kv_dtype kv = cpu::model::kv_dtype::float32;
        std::vector<device_buffer<std::int8_t>> keys8, values8;     // per layer (B, capacity, Hkv, Dh)
        std::vector<device_buffer<float>> key_steps, value_steps;   // per layer (B, capacity, Hkv)
        device_buffer<T> keys_T, values_T;
        // Bytes the cache keeps between forwards (the int8 session's temporaries not counted).
        std::size_t cache_bytes() const {
            std::size_t bytes = 0;
            for (const auto& b : keys) bytes += 2 * b.bytes();
            for (const auto& b : keys8) bytes += 2 * b.bytes();
            for (const auto& b : key_steps) bytes += 2 * b.bytes();
            return bytes;
        }
        // scratch
        device_buffer<token_id> ids;                    // (B, n)
        device_buffer<std::int32_t> row_info;           // (4, B): start, count, key length, last row
        device_buffer<std::int64_t> positions;          // (B, n)
        device_buffer<T> x, h, qkv, attn, delta, hidden, hidden2, head_in;
        device_buffer<float> logits;
        // The arrival counter of the decode GEMVs that end in a norm (norm.cuh v3): zero
        // between launches; one per session, whose launches are ordered on one stream.
        device_buffer<unsigned> arrivals = detail::zeroed_counter();
        attention_workspace attention_ws;
        // Mixtral
        device_buffer<float> router_logits;
        device_buffer<T> sorted, expert_out;
        device_buffer<std::int32_t> expert_ids, plan_ints;
        device_buffer<float> expert_weights;
        std::optional<moe_dispatch_workspace> dispatch_ws;
        moe_experts_workspace experts_ws;  // shared by every MoE layer: no allocation or final wait per layer
        // decode_step's graphs (created at its first call)
        std::unique_ptr<detail::decode_graphs> graphs;
        // decode_step_dataflow's layer table and counters (created at its first call)
        std::unique_ptr<detail::dataflow_state<T>> dataflow;
        // Whether decode_step_dataflow traces its launches: each block stamps the GPU's
        // clock at its start, at the end of its wait and at its end, for
        // model::dataflow_profile (a little time of its own per block).
        bool dataflow_trace = false;
        // How decode_step ran so far: graphs captured and replayed, and why capture failed, if it did.
        std::size_t graph_captures() const { return graphs ? graphs->captures : 0; }
        std::size_t graph_replays() const { return graphs ? graphs->replays : 0; }
        std::string graph_failure() const { return graphs ? graphs->failure : std::string(); }
        // The number of nodes (kernel launches, copies, cuBLAS's kernels) in the last
        // step graph captured: what one decode step issues. 0 before any capture.
        std::size_t graph_nodes() const { return graphs ? graphs->nodes : 0; }
    };

    // A session of `batch` sequences of up to `capacity` positions each; kv_dtype::int8
    // keeps the keys and values in 8 bits (tinyllm/kv_cache_int8.hpp's format: about
    // 3.8x less cache memory than float32 at Dh = 64, 1.9x less than bfloat16, attention over the rounded keys and values, exactly as
    // cpu::model's int8 sessions).
    session new_session(index_t batch, index_t capacity,
                        cpu::model::kv_dtype kv = cpu::model::kv_dtype::float32) const {
        TINYLLM_EXPECT(batch >= 1 && capacity >= 1, "cuda::model::new_session: batch = ", batch, " and capacity = ",
                       capacity, " must be at least 1");
        if (config_.arch == model_arch::gpt2)
            TINYLLM_EXPECT(capacity <= config_.max_positions, "cuda::model::new_session: capacity ", capacity,
                           " exceeds GPT-2's ", config_.max_positions, " learned positions");
        // The CPU session's bound (model.hpp): float32 keys and values of every layer for every
        // row, at most 2^40 bytes, computed without overflow (the size wrapped or reached cudaMalloc,
        // whose out-of-memory error named neither the capacity nor the call).
        TINYLLM_EXPECT(::tinyllm::detail::nonzero_product_at_most(
                           index_t{1} << 40, {batch, capacity, config_.num_layers, 2, config_.num_kv_heads,
                                              config_.head_dim, static_cast<index_t>(sizeof(float))}),
                       "cuda::model::new_session: batch ", batch, " x capacity ", capacity,
                       " needs a KV cache of more than 2^40 bytes (", config_.num_layers, " layers of ",
                       config_.num_kv_heads, " KV heads of ", config_.head_dim, " floats, keys and values)");
        session s;
        s.batch = batch;
        s.capacity = capacity;
        s.lengths.assign(static_cast<std::size_t>(batch), 0);
        const std::size_t per_layer =
            static_cast<std::size_t>(batch * capacity * config_.num_kv_heads * config_.head_dim);
        // Zeroed: attention masks the positions a row has not filled, but a masked
        // key's value still meets a weight of exactly 0, and 0 * NaN would be NaN.
        s.kv = kv;
        const auto zeroed = [](auto& buffers, std::size_t n) {
            buffers.emplace_back(n);
            TINYLLM_CUDA_CHECK(cudaMemset(buffers.back().data(), 0, buffers.back().bytes()));
        };
        const std::size_t steps = static_cast<std::size_t>(batch * capacity * config_.num_kv_heads);
        for (index_t l = 0; l < config_.num_layers; ++l) {
            if (kv == cpu::model::kv_dtype::int8) {
                zeroed(s.keys8, per_layer), zeroed(s.values8, per_layer);
                zeroed(s.key_steps, steps), zeroed(s.value_steps, steps);
            } else {
                zeroed(s.keys, per_layer), zeroed(s.values, per_layer);
            }
        }
        // cudaMemset runs on the legacy default stream, which does not order it before
        // the kernels of a non-blocking stream the session may be used on: the zeros
        // (and the session's arrival counter's) are in place before it is returned.
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        return s;
    }

    // Feed tokens (B, n) (host memory) after what each row already holds; row b
    // feeds its first counts[b] tokens (empty span: all n). Returns float logits
    // on the device, valid until the session's next forward:
    //   all_positions = false: (B, V), the last fed position of each row;
    //   all_positions = true:  (B * n, V), row b * n + t (padding rows included).
    tensor_view<const float, 2> forward(session& s, tensor_view<const token_id, 2> tokens,
                                        std::span<const index_t> counts = {}, bool all_positions = false) const {
        const index_t B = s.batch, n = tokens.extent(1), V = config_.vocab_size, rows = B * n;
        TINYLLM_EXPECT(tokens.extent(0) == B, "cuda::model::forward: tokens has ", tokens.extent(0),
                       " rows but the session holds ", B, " sequences");
        TINYLLM_EXPECT(n >= 1, "cuda::model::forward: no tokens to feed");
        TINYLLM_EXPECT(counts.empty() || static_cast<index_t>(counts.size()) == B, "cuda::model::forward: ",
                       counts.size(), " counts for ", B, " rows");

        // Per-row bookkeeping on the host: start, count, key length, last row.
        std::vector<std::int32_t> info(static_cast<std::size_t>(4 * B));
        std::vector<token_id> ids(static_cast<std::size_t>(rows));
        std::vector<std::int64_t> pos(static_cast<std::size_t>(rows));
        index_t tk = 0;
        for (index_t b = 0; b < B; ++b) {
            const index_t count = counts.empty() ? n : counts[b], L = s.lengths[b];
            TINYLLM_EXPECT(count >= 1 && count <= n, "cuda::model::forward: row ", b, " feeds ", count,
                           " tokens; each row feeds between 1 and n = ", n);
            TINYLLM_EXPECT(n == 1 || L == s.lengths[0], "cuda::model::forward: rows hold ", s.lengths[0], " and ", L,
                           " positions; several tokens per row can only be fed when every row has the same length "
                           "(feed one token per row otherwise)");
            TINYLLM_EXPECT(L + n <= s.capacity, "cuda::model::forward: row ", b, ": ", L, " + ", n,
                           " positions exceed the session's capacity ", s.capacity);
            for (index_t t = 0; t < n; ++t) {
                const token_id id = tokens(b, t);
                if (t < count)
                    TINYLLM_EXPECT(id >= 0 && id < V, "cuda::model::forward: token id ", id, " of row ", b,
                                   " at position ", L + t, " is outside the vocabulary [0, ", V, ")");
                // Padding feeds token 0 at the row's last real position: valid everywhere, never kept.
                ids[static_cast<std::size_t>(b * n + t)] = t < count ? id : 0;
                pos[static_cast<std::size_t>(b * n + t)] = L + std::min(t, count - 1);
            }
            info[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(L);
            info[static_cast<std::size_t>(B + b)] = static_cast<std::int32_t>(count);
            info[static_cast<std::size_t>(2 * B + b)] = static_cast<std::int32_t>(L + count);
            info[static_cast<std::size_t>(3 * B + b)] = static_cast<std::int32_t>(b * n + count - 1);
            tk = std::max(tk, L + n);
        }
        // Decode: the keys attended are those of the longest row, rounded up as
        // decode_step rounds them (the same kernels, the same logits); shorter rows
        // mask the rest.
        if (n == 1) tk = detail::decode_keys(*std::max_element(s.lengths.begin(), s.lengths.end()) + 1, s.capacity);

        std::int32_t* d_info = detail::at_least(s.row_info, 4 * B);
        TINYLLM_CUDA_CHECK(cudaMemcpy(d_info, info.data(), info.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
        token_id* d_ids = detail::at_least(s.ids, rows);
        TINYLLM_CUDA_CHECK(cudaMemcpy(d_ids, ids.data(), ids.size() * sizeof(token_id), cudaMemcpyHostToDevice));
        std::int64_t* d_pos = detail::at_least(s.positions, rows);
        TINYLLM_CUDA_CHECK(cudaMemcpy(d_pos, pos.data(), pos.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice));
        const tensor_view<const float, 2> logits = forward_device(s, n, tk, all_positions, nullptr);
        for (index_t b = 0; b < B; ++b) s.lengths[b] += counts.empty() ? n : counts[b];
        return logits;
    }

    // One decode step, one token per row, replayed from a CUDA graph: row b is
    // fed ids[b], read from device memory (where cuda::sample writes its
    // tokens), so the step needs nothing from the host. The same kernels on the
    // same data as forward(s, ids as (B, 1)), hence the same logits, bit for bit.
    //
    // Why: a decode step of a small model is hundreds of short kernel launches
    // (a dozen per layer), and at batch 1 the GPU finishes many of them sooner
    // than the CPU can issue the next one, so the step costs launch overhead
    // rather than the weights' bytes. Captured once (cudaStreamBeginCapture ...
    // cudaStreamEndCapture) and instantiated, the whole step is one
    // cudaGraphLaunch. What changes from step to step lives in device memory:
    // the ids, the positions and the rows' bookkeeping, which the graph's first
    // kernel (decode_prepare_kernel) derives from a device copy of the lengths
    // and advances. The number of keys attended is a kernel shape, so it is
    // rounded up (detail::decode_keys) and one graph is kept per rounded value:
    // a 2048-position session captures at most 6.
    //
    // A step of a new shape runs eagerly first (that sizes every scratch buffer,
    // since no allocation may happen inside a capture), then is captured for
    // the next steps. Should the scratch buffers move (a longer forward() on
    // the session grows them), the graphs are dropped and captured again. A
    // Mixtral model's steps are captured too, up to 8 rows: there a decode
    // step's experts are GEMVs that read the dispatch plan on the device (more
    // rows run eagerly: their GEMMs read the plan back). Should capture fail,
    // the steps run eagerly, with the reason in s.graph_failure().
    //
    // The ids stay on the device, so the host cannot check them: an id outside
    // the vocabulary gives its row NaN logits (the embedding writes a NaN row),
    // which the samplers refuse by name.
    tensor_view<const float, 2> decode_step(session& s, tensor_view<const token_id, 1> ids /*(B) device*/) const {
        const index_t B = s.batch;
        TINYLLM_EXPECT(ids.extent(0) == B, "cuda::model::decode_step: ", ids.extent(0), " ids for ", B, " rows");
        TINYLLM_EXPECT(ids.is_contiguous(), "cuda::model::decode_step: ids must be contiguous");
        detail::expect_device_ids(ids, "cuda::model::decode_step");
        for (index_t b = 0; b < B; ++b)
            TINYLLM_EXPECT(s.lengths[b] + 1 <= s.capacity, "cuda::model::decode_step: row ", b, " holds ", s.lengths[b],
                           " positions; one more exceeds the session's capacity ", s.capacity);
        if (!s.graphs) {
            s.graphs = std::make_unique<detail::decode_graphs>();
            s.graphs->lengths = device_buffer<std::int32_t>(static_cast<std::size_t>(B));
        }
        detail::decode_graphs& g = *s.graphs;
        // Eagerly (the host needs the ids) after a failed capture, or when the step's
        // experts read their plan back to the host, which a graph cannot hold.
        if (!g.failure.empty() || experts_read_plan_back(B)) {
            std::vector<token_id> host(static_cast<std::size_t>(B));
            TINYLLM_CUDA_CHECK(cudaMemcpy(host.data(), ids.data(), host.size() * sizeof(token_id), cudaMemcpyDeviceToHost));
            return forward(s, tensor_view<const token_id, 2>(host.data(), {B, 1}));
        }
        if (g.uploaded != s.lengths) {  // forward() fed the session since: refresh the device copy
            std::vector<std::int32_t> lengths(s.lengths.begin(), s.lengths.end());
            TINYLLM_CUDA_CHECK(cudaMemcpy(g.lengths.data(), lengths.data(), lengths.size() * sizeof(std::int32_t),
                                          cudaMemcpyHostToDevice));
        }
        token_id* d_ids = detail::at_least(s.ids, B);
        if (ids.data() != d_ids)
            TINYLLM_CUDA_CHECK(cudaMemcpyAsync(d_ids, ids.data(), static_cast<std::size_t>(B) * sizeof(token_id),
                                               cudaMemcpyDeviceToDevice, g.stream));
        const index_t tk = detail::decode_keys(*std::max_element(s.lengths.begin(), s.lengths.end()) + 1, s.capacity);
        const detail::decode_graphs::shape key{B, tk};
        g.follow(scratch_of(s));
        tensor_view<const float, 2> logits;
        if (const cudaGraphExec_t exec = g.find(key)) {
            g.replay(exec);
            logits = tensor_view<const float, 2>(s.logits.data(), {B, config_.vocab_size});
        } else {
            logits = prepared_decode(s, tk);  // eagerly, sizing the buffers
            g.follow(scratch_of(s));
            g.capture(key, [&] { (void)prepared_decode(s, tk); });
        }
        for (index_t b = 0; b < B; ++b) s.lengths[b] += 1;
        g.uploaded = s.lengths;
        return logits;
    }

    // One decode step, one token per row, as ONE kernel launch (decode_dataflow.cuh):
    // the step's ~90 kernels become phases of a single grid whose blocks wait for
    // each other through counters in device memory, and the weight loads of later
    // phases start while earlier phases compute. Row b is fed ids[b] (device
    // memory); returns the float logits (B, V) on the device, valid until the
    // session's next forward. The same arithmetic as decode_step, up to the order
    // of the norms' and attention's sums (float32: within ~1e-6 relative L2).
    //
    // Takes dense float/bf16 weights, the float cache, GPT-2 and Llama-style
    // decoders (no experts), at most 8 rows, D, F and head_dim multiples of
    // 16 / sizeof(T), head_dim <= 128 and at most 4 query heads per KV head; other
    // models are refused with the reason. Not a CUDA graph: one launch per step,
    // the rows' positions among its arguments.
    tensor_view<const float, 2> decode_step_dataflow(session& s, tensor_view<const token_id, 1> ids /*(B) device*/,
                                                     cudaStream_t stream = nullptr) const {
        constexpr const char* op = "cuda::model::decode_step_dataflow";
        const model_config& c = config_;
        const index_t B = s.batch, D = c.hidden_size, F = c.intermediate_size, Dh = c.head_dim;
        const index_t Hq = c.num_heads, Hkv = c.num_kv_heads, V = c.vocab_size;
        TINYLLM_EXPECT(ids.extent(0) == B, op, ": ", ids.extent(0), " ids for ", B, " rows");
        TINYLLM_EXPECT(ids.is_contiguous(), op, ": ids must be contiguous");
        detail::expect_device_ids(ids, op);
        TINYLLM_EXPECT(!quantized(), op, ": the model's matrices are quantized (", quantization_ ? quantization_->name()
                       : std::string(), "); the one-launch step takes dense weights (use decode_step)");
        TINYLLM_EXPECT(c.num_experts == 0 && (c.arch == model_arch::gpt2 || c.arch == model_arch::llama), op,
                       ": takes GPT-2 and Llama-style decoders; this model has ", c.num_experts,
                       " experts per layer (use decode_step)");
        TINYLLM_EXPECT(s.kv == cpu::model::kv_dtype::float32, op, ": the session keeps an int8 KV cache; the "
                       "one-launch step reads the cache in T (use decode_step)");
        TINYLLM_EXPECT(B <= detail::dataflow_max_rows, op, ": ", B, " rows; the step takes at most ",
                       detail::dataflow_max_rows, " (use decode_step)");
        TINYLLM_EXPECT(Hq % Hkv == 0 && Hq / Hkv <= detail::dataflow_max_group &&
                           Dh <= detail::dataflow_max_head_dim,
                       op, ": ", Hq, " query heads over ", Hkv, " KV heads of dimension ", Dh, "; the step takes at most ",
                       detail::dataflow_max_group, " query heads per KV head and head_dim <= ",
                       detail::dataflow_max_head_dim);
        constexpr index_t vector = 16 / static_cast<index_t>(sizeof(T));
        TINYLLM_EXPECT(D % vector == 0 && F % vector == 0 && Dh % vector == 0, op, ": hidden_size ", D,
                       ", intermediate_size ", F, " and head_dim ", Dh, " must be multiples of ", vector,
                       " (16-byte loads of ", dtype_name<T>(), ")");
        for (index_t b = 0; b < B; ++b)
            TINYLLM_EXPECT(s.lengths[b] + 1 <= s.capacity, op, ": row ", b, " holds ", s.lengths[b],
                           " positions; one more exceeds the session's capacity ", s.capacity);

        if (!s.dataflow) {
            auto state = std::make_unique<detail::dataflow_state<T>>();
            std::vector<detail::dataflow_layer<T>> table;
            const auto ptr = [](const auto& t) { return t.empty() ? nullptr : t.buffer.data(); };
            for (index_t l = 0; l < c.num_layers; ++l) {
                const device_layer_weights<T>& L = layers_[static_cast<std::size_t>(l)];
                const bool gpt2 = c.arch == model_arch::gpt2;
                table.push_back({ptr(L.attn_norm_weight), ptr(L.attn_norm_bias), ptr(L.wqkv), ptr(L.bqkv), ptr(L.wo),
                                 ptr(L.bo), ptr(L.ffn_norm_weight), ptr(L.ffn_norm_bias),
                                 gpt2 ? ptr(L.fc) : ptr(L.gate), gpt2 ? ptr(L.fc) : ptr(L.up),
                                 gpt2 ? ptr(L.fc_bias) : nullptr, gpt2 ? ptr(L.proj) : ptr(L.down),
                                 gpt2 ? ptr(L.proj_bias) : nullptr, s.keys[static_cast<std::size_t>(l)].data(),
                                 s.values[static_cast<std::size_t>(l)].data()});
            }
            // Both on `stream`, before the step's kernel: a copy or memset on the legacy default
            // stream is not ordered before a kernel on a non-blocking stream. (A copy from pageable
            // memory has read `table` when it returns.)
            state->layers = device_buffer<detail::dataflow_layer<T>>(table.size());
            TINYLLM_CUDA_CHECK(cudaMemcpyAsync(state->layers.data(), table.data(),
                                               table.size() * sizeof(detail::dataflow_layer<T>), cudaMemcpyHostToDevice,
                                               stream));
            // A counter per phase (the embedding, five per layer, the logits), the ticket, the blocks done.
            state->counters =
                device_buffer<unsigned>(static_cast<std::size_t>(2 + detail::dataflow_layer_kinds * c.num_layers + 2));
            TINYLLM_CUDA_CHECK(cudaMemsetAsync(state->counters.data(), 0, state->counters.bytes(), stream));
            s.dataflow = std::move(state);
        }
        detail::dataflow_state<T>& st = *s.dataflow;

        detail::dataflow_args<T> a{};
        a.layers = st.layers.data();
        a.embed = embed_.buffer.data();
        a.learned = c.arch == model_arch::gpt2 ? positions_.buffer.data() : nullptr;
        a.final_weight = final_norm_weight_.buffer.data();
        a.final_bias = final_norm_bias_.empty() ? nullptr : final_norm_bias_.buffer.data();
        a.head = c.tie_word_embeddings ? embed_.buffer.data() : lm_head_.buffer.data();
        a.ids = ids.data();
        for (index_t b = 0; b < B; ++b) a.positions[b] = s.lengths[b];  // passed by value: nothing to copy first
        a.x = detail::at_least(s.x, B * D);
        a.qkv = detail::at_least(s.qkv, B * (Hq + 2 * Hkv) * Dh);
        a.attn = detail::at_least(s.attn, B * Hq * Dh);
        a.hidden = detail::at_least(s.hidden, B * F);
        a.logits = detail::at_least(s.logits, B * V);
        a.counters = st.counters.data();
        a.stamps = nullptr;
        a.rotate = c.arch != model_arch::gpt2;
        if (a.rotate) {
            a.rope = rope_.config;
            a.rope_cos = rope_.cos.data();
            a.rope_sin = rope_.sin.data();
            a.rope_rows = rope_.max_positions;
        }
        a.gpt2 = c.arch == model_arch::gpt2;
        a.D = D, a.F = F, a.V = V, a.Hq = Hq, a.Hkv = Hkv, a.Dh = Dh, a.capacity = s.capacity;
        a.rows = static_cast<int>(B);
        a.layers_count = static_cast<int>(c.num_layers);
        a.eps = c.norm_eps;
        a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dh)));
        // Units and blocks per phase: the GEMV phases' units are their epilogues'. A
        // warp takes one unit, or at batch 1 as many as make the phase about one block
        // per SM (at most 8): a block's fixed costs (the wait, the norm it computes for
        // itself) are then paid over more weights where a phase has many units (the
        // logits), while a phase of few units keeps every SM busy. (The kernel of more
        // rows takes one unit per warp: dataflow_gemv.)
        using kind = detail::dataflow_kind;
        const int sms = current_multiprocessors();
        const auto set = [&](kind k, index_t units, index_t per_warp, index_t blocks) {
            a.units[static_cast<int>(k)] = units;
            a.per_warp[static_cast<int>(k)] = per_warp;
            a.blocks[static_cast<int>(k)] = static_cast<unsigned>(blocks);
        };
        const auto gemv = [&](kind k, index_t units) {
            const index_t per_warp = B > 1 ? 1 : std::clamp<index_t>(units / (detail::dataflow_warps * sms), 1, 8);
            set(k, units, per_warp, ceil_div<index_t>(units, detail::dataflow_warps * per_warp));
        };
        detail::qkv_rope_epilogue<T, detail::dataflow_cache_rows> qkv{};  // only its units()
        qkv.q_heads = Hq, qkv.kv_heads = Hkv, qkv.head_dim = Dh;
        set(kind::embed, 0, 1, B);
        gemv(kind::qkv, qkv.units());
        set(kind::attention, 0, 1, B * Hkv);
        gemv(kind::out_proj, detail::neighbour_rows::units(D));  // the residual add's units
        gemv(kind::ffn_in, a.gpt2 ? detail::bias_activate_gemv_epilogue<T>{nullptr, nullptr, F, {}}.units()
                                  : detail::swiglu_gemv_epilogue<T>{nullptr, F}.units());
        gemv(kind::ffn_out, detail::neighbour_rows::units(D));
        gemv(kind::logits, detail::neighbour_rows::units(V));
        std::uint64_t total = a.blocks[0] + a.blocks[6];
        for (int k = 1; k <= detail::dataflow_layer_kinds; ++k) total += std::uint64_t{a.blocks[k]} * c.num_layers;
        TINYLLM_EXPECT(total < 0x7fffffffu, op, ": ", total, " blocks exceed the grid");
        a.total = static_cast<unsigned>(total);
        const std::size_t shared = detail::dataflow_shared_bytes(a);
        TINYLLM_EXPECT(shared <= 227 * 1024, op, ": ", B, " rows need ", shared,
                       " bytes of shared memory per block (at most 227 KB); use decode_step");
        if (s.dataflow_trace) {
            const std::size_t stamps = 3 * std::size_t{a.total};  // (total, 3)
            if (st.stamps.size() < stamps) st.stamps = device_buffer<unsigned long long>(stamps);
            a.stamps = st.stamps.data();
        }
        st.last = a;
        detail::launch_decode_dataflow(a, stream);
        for (index_t b = 0; b < B; ++b) s.lengths[b] += 1;
        return tensor_view<const float, 2>(a.logits, {B, V});
    }

    // The phases of the session's last decode_step_dataflow, traced (s.dataflow_trace
    // on when it was launched): each phase's time on the step's chain, which add up to
    // the step's (detail::dataflow_profile). Waits for the launch.
    std::vector<detail::dataflow_phase_time> dataflow_profile(const session& s) const {
        TINYLLM_EXPECT(s.dataflow && s.dataflow->last.stamps != nullptr, "cuda::model::dataflow_profile: the "
                       "session's last decode_step_dataflow was not traced (set session.dataflow_trace first)");
        const detail::dataflow_args<T>& a = s.dataflow->last;
        std::vector<unsigned long long> stamps(3 * std::size_t{a.total});
        TINYLLM_CUDA_CHECK(cudaMemcpy(stamps.data(), a.stamps, stamps.size() * sizeof(unsigned long long),
                                      cudaMemcpyDeviceToHost));
        return detail::dataflow_profile(a, stamps);
    }

private:
    // Whether a step of `rows` rows waits for the host inside: a MoE model's experts
    // are GEMMs sized from the dispatch plan read back to the host, except in a decode
    // step of at most 8 rows, where they are GEMVs reading it on the device (ffn).
    // decode_step and forward_batch capture only steps that do not.
    bool experts_read_plan_back(index_t rows) const {
        return config_.num_experts > 0 && rows > detail::mlp_gemv_max_rows;
    }

    // decode_step's work on its stream: the bookkeeping from the device lengths, then the step.
    tensor_view<const float, 2> prepared_decode(session& s, index_t tk) const {
        detail::decode_graphs& g = *s.graphs;
        const index_t B = s.batch;
        std::int32_t* d_info = detail::at_least(s.row_info, 4 * B);
        std::int64_t* d_pos = detail::at_least(s.positions, B);
        launch(detail::decode_prepare_kernel<std::int32_t>, 1, 128, 0, g.stream, g.lengths.data(), d_info, d_pos,
               static_cast<int>(B));
        TINYLLM_CUDA_CHECK_LAUNCH();
        return forward_device(s, 1, tk, false, g.stream);
    }

    // The device buffers a captured step reads and writes: if one moves, the graphs are stale.
    std::vector<const void*> scratch_of(session& s) const {
        return {s.ids.data(),     s.row_info.data(), s.positions.data(), s.x.data(),      s.h.data(),
                s.qkv.data(),     s.attn.data(),     s.delta.data(),     s.hidden.data(), s.hidden2.data(),
                s.head_in.data(), s.logits.data(),   s.keys_T.data(),    s.values_T.data(),
                s.attention_ws.floats(0), dequantized_.data()};
    }

    // forward()'s device work for n tokens per row, from the ids, positions and
    // row bookkeeping already in s.ids, s.positions and s.row_info, issued on
    // `stream`: embedding, the layers, the final norm and the logits.
    tensor_view<const float, 2> forward_device(session& s, index_t n, index_t tk, bool all_positions,
                                               cudaStream_t stream) const {
        const model_config& c = config_;
        const index_t B = s.batch, D = c.hidden_size, Dh = c.head_dim;
        const index_t Hq = c.num_heads, Hkv = c.num_kv_heads, q_out = Hq * Dh, kv_out = Hkv * Dh;
        const index_t qkv_out = q_out + 2 * kv_out, rows = B * n;
        const std::int32_t* d_info = s.row_info.data();
        const std::int32_t* d_start = d_info;              // (B) first cache position written
        const std::int32_t* d_count = d_info + B;          // (B) tokens kept
        const std::int32_t* d_key_length = d_info + 2 * B; // (B) valid keys after this forward
        const std::int32_t* d_last_row = d_info + 3 * B;   // (B) row of x holding the last fed token
        const tensor_view<const token_id, 2> ids_v(s.ids.data(), {B, n});
        const tensor_view<const std::int64_t, 2> pos_v(s.positions.data(), {B, n});

        const tensor_view<T, 2> x(detail::at_least(s.x, rows * D), {rows, D});            // (B·n, D)
        const tensor_view<T, 2> h(detail::at_least(s.h, rows * D), {rows, D});
        const tensor_view<T, 2> delta(detail::at_least(s.delta, rows * D), {rows, D});
        const tensor_view<T, 2> qkv(detail::at_least(s.qkv, rows * qkv_out), {rows, qkv_out});
        const tensor_view<T, 2> attn(detail::at_least(s.attn, rows * q_out), {rows, q_out});

        // q, k, v: views into the rows of qkv                                    (B, n, H, Dh)
        const extents<4> qkv_strides{n * qkv_out, qkv_out, Dh, 1};
        const tensor_view<T, 4> q(qkv.data(), {B, n, Hq, Dh}, qkv_strides);
        const tensor_view<T, 4> k(qkv.data() + q_out, {B, n, Hkv, Dh}, qkv_strides);
        const tensor_view<T, 4> v(qkv.data() + q_out + kv_out, {B, n, Hkv, Dh}, qkv_strides);
        const tensor_view<T, 4> attn4(attn.data(), {B, n, Hq, Dh});
        const extents<4> cache_strides{s.capacity * kv_out, kv_out, Dh, 1};
        attention_options opts;
        opts.causal = true;
        opts.key_lengths = tensor_view<const std::int32_t, 1>(d_key_length, {B});

        // Each layer's attention, from h into attn: the QKV projection, RoPE, the cache write, attention.
        const auto attend_layer = [&](index_t l) {
            const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(B));
            const device_layer_weights<T>& L = layers_[static_cast<std::size_t>(l)];
            if (s.kv == cpu::model::kv_dtype::int8) {
                project(qkv, h, L.wqkv, L.wqkv_q, L.bqkv, stream);
                if (c.arch != model_arch::gpt2) {  // q's and k's heads are adjacent in a row of qkv: one launch
                    const tensor_view<T, 4> qk(qkv.data(), {B, n, Hq + Hkv, Dh}, qkv_strides);
                    apply_rope_cached(qk, pos_v, rope_, stream);
                }
                // Quantize the new keys and values into the int8 cache, then dequantize
                // positions [0, tk) for attention (the CPU reference's way, on the device).
                const auto l_ = static_cast<std::size_t>(l);
                const unsigned threads = static_cast<unsigned>(32 * std::min<index_t>(Hkv, 4));
                launch(detail::write_cache_int8_kernel<T>, grid, threads, 0, stream, s.keys8[l_].data(),
                       s.key_steps[l_].data(), s.capacity, k.data(), n * qkv_out, qkv_out, Hkv, Dh, d_start, d_count);
                TINYLLM_CUDA_CHECK_LAUNCH();
                launch(detail::write_cache_int8_kernel<T>, grid, threads, 0, stream, s.values8[l_].data(),
                       s.value_steps[l_].data(), s.capacity, v.data(), n * qkv_out, qkv_out, Hkv, Dh, d_start,
                       d_count);
                TINYLLM_CUDA_CHECK_LAUNCH();
                T* keys_T = detail::at_least(s.keys_T, B * tk * kv_out);
                T* values_T = detail::at_least(s.values_T, B * tk * kv_out);
                const dim3 dq_grid(static_cast<unsigned>(std::min<index_t>((tk * kv_out + 255) / 256, 1024)),
                                   static_cast<unsigned>(B));
                launch(detail::dequantize_cache_kernel<T>, dq_grid, 256, 0, stream, keys_T, s.keys8[l_].data(),
                       s.key_steps[l_].data(), s.capacity, tk, Hkv, Dh);
                TINYLLM_CUDA_CHECK_LAUNCH();
                launch(detail::dequantize_cache_kernel<T>, dq_grid, 256, 0, stream, values_T, s.values8[l_].data(),
                       s.value_steps[l_].data(), s.capacity, tk, Hkv, Dh);
                TINYLLM_CUDA_CHECK_LAUNCH();
                attend(attn4, q, tensor_view<const T, 4>(keys_T, {B, tk, Hkv, Dh}),
                       tensor_view<const T, 4>(values_T, {B, tk, Hkv, Dh}), opts, s.attention_ws, stream);
            } else {
                T* cache_k = s.keys[static_cast<std::size_t>(l)].data();
                T* cache_v = s.values[static_cast<std::size_t>(l)].data();
                // qkv = h Wqkv^T; q, k = rope(q, k); cache rows [start_b, start_b + count_b) = k, v.
                project_qkv_write_cache(qkv, h, L, cache_k, cache_v,
                                        detail::contiguous_cache_rows{n, s.capacity, d_start, d_count},
                                        s.positions.data(), stream);
                const tensor_view<const T, 4> keys(cache_k, {B, tk, Hkv, Dh}, cache_strides);
                const tensor_view<const T, 4> values(cache_v, {B, tk, Hkv, Dh}, cache_strides);
                attend(attn4, q, keys, values, opts, s.attention_ws, stream);
            }
        };
        run_decoder(s, x, h, delta, attn, ids_v, pos_v, attend_layer, stream);
        // logits = h W^T for the rows asked for. With one token per row (a decode step),
        // row b of h is row b's last position already: nothing to gather, one node less.
        if (all_positions || n == 1) return logits_of(s, h, nullptr, rows, stream);
        return logits_of(s, h, d_last_row, B, stream);
    }

    // The decoder around attention, shared by forward_device and
    // forward_batch_device: x = embed(ids) (+ learned positions), then for each
    // layer the first norm, attend_layer(l) (the caller's QKV projection, RoPE,
    // cache write and attention, from h through qkv into attn; see
    // project_qkv_write_cache), the output GEMM, the second norm and the FFN;
    // h = the final norm of x.
    //   x, h, delta (B·n, D); attn (B·n, Hq Dh); ids, positions (B, n)
    template <class AttendLayer>
    void run_decoder(session& s, tensor_view<T, 2> x, tensor_view<T, 2> h, tensor_view<T, 2> delta,
                     tensor_view<T, 2> attn, tensor_view<const token_id, 2> ids,
                     tensor_view<const std::int64_t, 2> positions, const AttendLayer& attend_layer,
                     cudaStream_t stream) const {
        const model_config& c = config_;
        const extents<3> x3{ids.extent(0), ids.extent(1), c.hidden_size};
        embedding<T, token_id>(tensor_view<T, 3>(x.data(), x3), ids, embed_.view(), 1.0f, embedding_version::vectorized,
                               /*check_ids=*/false, stream);
        if (c.arch == model_arch::gpt2)
            add_learned_positions<T>(tensor_view<T, 3>(x.data(), x3), positions_.view(), positions, stream);
        // Each block's output is added to x and x normalized for what follows (the
        // next norm), in one step (project_residual_norm); delta is its scratch.
        norm(h, x, layers_[0].attn_norm_weight, layers_[0].attn_norm_bias, stream);
        for (index_t l = 0; l < c.num_layers; ++l) {
            const device_layer_weights<T>& L = layers_[static_cast<std::size_t>(l)];
            const bool last = l + 1 == c.num_layers;
            const device_layer_weights<T>* next = last ? nullptr : &layers_[static_cast<std::size_t>(l + 1)];
            attend_layer(l);  // h -> qkv -> attn
            const residual_target after_attention{h, x, &L.ffn_norm_weight, &L.ffn_norm_bias};
            project_residual_norm(s, after_attention, delta, attn, L.wo, L.wo_q, L.bo, stream);  // x += attn Wo^T
            const residual_target after_ffn{h, x, last ? &final_norm_weight_ : &next->attn_norm_weight,
                                            last ? &final_norm_bias_ : &next->attn_norm_bias};
            ffn(s, delta, h, L, stream, &after_ffn);  // x += ffn(h)
        }
    }

    // The float logits (m, V) of m rows of h: the rows `rows` names ((m) device
    // row ids, gathered first), or all of h's m rows when rows == nullptr. The
    // GEMM writes float (bf16 inputs, float accumulation and output).
    tensor_view<const float, 2> logits_of(session& s, tensor_view<const T, 2> h, const std::int32_t* rows, index_t m,
                                          cudaStream_t stream) const {
        const index_t D = config_.hidden_size, V = config_.vocab_size;
        tensor_view<const T, 2> head_in = h;
        if (rows != nullptr) {
            T* picked = detail::at_least(s.head_in, m * D);
            launch(detail::gather_rows_kernel<T>, static_cast<unsigned>(m), 128, 0, stream, picked, h.data(), rows, D);
            TINYLLM_CUDA_CHECK_LAUNCH();
            head_in = tensor_view<const T, 2>(picked, {m, D});
        }
        const tensor_view<const T, 2> head = config_.tie_word_embeddings ? embed_.view() : lm_head_.view();
        float* logits = detail::at_least(s.logits, m * V);
        linear<T, float>(tensor_view<float, 2>(logits, {m, V}), head_in, head, {}, handle_, stream);
        return tensor_view<const float, 2>(logits, {m, V});
    }

public:

    // Paged sessions and continuous batching's step, cpu::model::forward_batch on
    // the GPU (defined in cuda/tinyllm/cuda/model_paged.cuh, where the design is):
    // a paged session is a cpu::model::session whose block table is in
    // pool.host(); its keys and values live in the pool's device blocks.
    cpu::model::session new_session(paged_kv_pool<T>& pool) const;
    cpu::model::session fork(const cpu::model::session& s) const;
    // Session i is fed tokens[i] (a prompt chunk or one decode token); returns the
    // float logits of each session's last fed position, (S, V), on the device,
    // valid until the pool's next forward_batch.
    tensor_view<const float, 2> forward_batch(paged_kv_pool<T>& pool, std::span<cpu::model::session* const> sessions,
                                              std::span<const std::span<const token_id>> tokens) const;

private:
    // forward_batch's device work on `stream`, from the rows' bookkeeping already on the device.
    tensor_view<const float, 2> forward_batch_device(paged_kv_pool<T>& pool, const detail::paged_step& step,
                                                     cudaStream_t stream) const;

public:


    // One training step's forward and backward over a batch, the contract of
    // cpu::model::forward_backward: tokens and targets (B, T) on the host
    // (targets(b, t): the token that should follow tokens(b, t), or
    // ignore_index); every parameter's gradient is written (overwritten) into
    // `grads`, a CPU model_weights in the weights' layout (Wq, Wk, Wv split
    // again), downloaded from the device at the end. Returns the losses. float
    // only: a bfloat16 model throws (its training is not implemented).
    loss_terms forward_backward(model_weights& grads, tensor_view<const token_id, 2> tokens,
                                tensor_view<const token_id, 2> targets, const backward_options& options = {}) const {
        if constexpr (!std::is_same_v<T, float>) {
            TINYLLM_FAIL("cuda::model<", dtype_name<T>(), ">::forward_backward: training runs in float only; "
                         "load the model as cuda::model<float> (bfloat16 training is not implemented)");
        } else {
            TINYLLM_EXPECT(!quantized(), "cuda::model::forward_backward: the model's matrices are quantized (",
                           quantization_->name(), "); training needs float32 weights");
            return train_step(grads, tokens, targets, options);
        }
    }

private:
    // The quantized matrices of a CPU model (the dense ones were uploaded empty).
    void upload_quantized(const cpu::model& host) {
        const auto& Q = host.weights_quantized();
        TINYLLM_EXPECT(Q.size() == layers_.size(), "cuda::model: ", Q.size(), " quantized layers for ", layers_.size());
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            const layer_weights_quantized& q = Q[l];
            device_layer_weights<T>& d = layers_[l];
            d.wqkv_q = detail::upload_quantized(detail::stacked(q.wq, q.wk, q.wv));
            d.wo_q = detail::upload_quantized(q.wo);
            d.fc_q = detail::upload_quantized(q.fc);
            d.proj_q = detail::upload_quantized(q.proj);
            d.gate_q = detail::upload_quantized(q.gate);
            d.up_q = detail::upload_quantized(q.up);
            d.down_q = detail::upload_quantized(q.down);
            // Mixtral's experts: dequantized here and uploaded dense (the experts' grouped
            // GEMMs have no quantized rung yet), so the GPU computes with the rounded
            // weights the CPU does, but holds them in T.
            for (auto [dense, experts] : {std::pair{&d.w1, &q.w1}, {&d.w3, &q.w3}, {&d.w2, &q.w2}}) {
                if (experts->empty()) continue;
                const index_t E = static_cast<index_t>(experts->size()), rows = experts->front().rows,
                              cols = experts->front().cols;
                tensor<float, 3> all(extents<3>{E, rows, cols});  // (E, rows, cols)
                for (index_t e = 0; e < E; ++e)
                    tinyllm::dequantize(tensor_view<float, 2>(all.data() + e * rows * cols, {rows, cols}),
                                        (*experts)[static_cast<std::size_t>(e)]);
                *dense = detail::upload<T>(all);
            }
        }
        if (const quantized_matrix& head = host.head_quantized(); head.rows > 0) {
            tensor<float, 2> dense({head.rows, head.cols});
            tinyllm::dequantize(dense.view(), head);
            lm_head_ = detail::upload<T>(dense);
        }
        quantization_ = host.quantization();
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
    }

    // qkv = h Wqkv^T (+ b), q and k rotated at their positions (not GPT-2), and k,
    // v stored into the cache rows `rows` gives each token. For a few rows (a
    // decode step): ONE kernel, RoPE v4 (positional.cuh's qkv_rope_epilogue on
    // the dense GEMV, or on the quantized one for quantized weights: the rotation
    // and the store in the GEMV's epilogue). Otherwise the projection (cuBLAS, or
    // a quantized rung), then RoPE v3 (rope_write_cache).
    //   qkv (m, (Hq + 2 Hkv) Dh); h (m, D); positions (m)
    template <class Rows>
    void project_qkv_write_cache(tensor_view<T, 2> qkv, tensor_view<const T, 2> h, const device_layer_weights<T>& L,
                                 T* cache_k, T* cache_v, Rows rows, const std::int64_t* positions,
                                 cudaStream_t stream) const {
        const model_config& c = config_;
        const rope_cache* rope = c.arch != model_arch::gpt2 ? &rope_ : nullptr;
        const index_t m = h.extent(0);
        const T* bias = L.bqkv.empty() ? nullptr : L.bqkv.buffer.data();
        if (!L.wqkv_q && m <= detail::qkv_gemv_max_rows) {
            detail::qkv_rope_write_cache(qkv.data(), cache_k, cache_v, rows, h.data(), m, L.wqkv.buffer.data(), bias,
                                         c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, positions, rope,
                                         stream);
            return;
        }
        if (L.wqkv_q && detail::quantized_pair_gemv_takes(m, *L.wqkv_q, *L.wqkv_q)) {
            const auto epi = detail::make_qkv_rope_epilogue<T>(qkv.data(), cache_k, cache_v, rows, m, bias, c.num_heads,
                                                               c.num_kv_heads, c.head_dim, positions, rope);
            detail::launch_quantized_pair_gemv<T>("qkv_rope_write_cache", epi, h.data(), m, c.hidden_size, *L.wqkv_q,
                                                  *L.wqkv_q, epi.units(), stream);
            return;
        }
        project(qkv, h, L.wqkv, L.wqkv_q, L.bqkv, stream);
        detail::rope_write_cache(cache_k, cache_v, rows, qkv.data(), m, qkv.extent(1), c.num_heads, c.num_kv_heads,
                                 c.head_dim, positions, rope, stream);
    }

    // out = x W^T + bias with W dense, or quantized (then the rung by the number of rows; see the top).
    void project(tensor_view<T, 2> out, tensor_view<const T, 2> x, const detail::device_tensor<T, 2>& dense,
                 const std::optional<device_quantized_matrix>& q, const detail::device_tensor<T, 1>& bias,
                 cudaStream_t stream = nullptr) const {
        if (!q) {
            linear<T>(out, x, dense.view(), bias.view(), handle_, stream);
            return;
        }
        if (x.extent(0) <= detail::gemv_max_rows && detail::gemv_takes(*q))
            linear_quantized_gemv<T>(out, x, *q, bias.view(), stream);
        else if constexpr (std::is_same_v<T, float>)
            linear_dequantize_gemm<T>(out, x, *q, bias.view(), dequantized_, handle_, stream);
        else
            linear_quantized_mma<T>(out, x, *q, bias.view(), stream);
    }

    // project() before a residual add (project_residual_norm's second way): a dense weight's
    // bias is not added but returned, for residual_norm to add; a quantized projection adds
    // it itself (returns empty).
    tensor_view<const T, 1> project_deferring_bias(tensor_view<T, 2> out, tensor_view<const T, 2> x,
                                                   const detail::device_tensor<T, 2>& dense,
                                                   const std::optional<device_quantized_matrix>& q,
                                                   const detail::device_tensor<T, 1>& bias,
                                                   cudaStream_t stream = nullptr) const {
        if (q || bias.empty()) {
            project(out, x, dense, q, bias, stream);
            return {};
        }
        linear<T>(out, x, dense.view(), {}, handle_, stream);
        return bias.view();
    }

    void norm(tensor_view<T, 2> out, tensor_view<const T, 2> x, const detail::device_tensor<T, 1>& w,
              const detail::device_tensor<T, 1>& b, cudaStream_t stream = nullptr) const {
        if (config_.arch == model_arch::gpt2) layer_norm<T>(out, x, w.view(), b.view(), config_.norm_eps, stream);
        else rms_norm<T>(out, x, w.view(), config_.norm_eps, stream);
    }

    // x = x + (delta + delta_bias); out = norm(x), in one pass. delta_bias: the bias the
    // projection that wrote delta left out (project_deferring_bias), or empty.
    void residual_norm(tensor_view<T, 2> out, tensor_view<T, 2> x, tensor_view<const T, 2> delta,
                       tensor_view<const T, 1> delta_bias, const detail::device_tensor<T, 1>& w,
                       const detail::device_tensor<T, 1>& b, cudaStream_t stream = nullptr) const {
        if (config_.arch == model_arch::gpt2)
            detail::residual_add_bias_layer_norm<T>(out, x, x, delta, delta_bias, w.view(), b.view(), config_.norm_eps,
                                                    stream);
        else detail::residual_add_bias_rms_norm<T>(out, x, x, delta, delta_bias, w.view(), config_.norm_eps, stream);
    }

    // Where a block's output goes: x += output, then out = norm(x) with the next
    // norm's weight w and bias b (LayerNorm) (x, out (rows, D)).
    struct residual_target {
        tensor_view<T, 2> out, x;
        const detail::device_tensor<T, 1>* w;
        const detail::device_tensor<T, 1>* b;
    };

    // to.x += in W^T (+ bias); to.out = norm(to.x). A decode step (at most 8 rows)
    // on quantized W does it in one GEMV whose epilogue adds and whose last block
    // normalizes (norm.cuh v3); otherwise, dense W included, the projection into
    // delta (a dense bias deferred) and residual_norm. Dense decode steps took norm
    // v3 too until an H200 measured it (2026-12-04, Llama-3.2-1B's down projection,
    // bf16): 36.9 µs at one row and 129.5 µs at eight, where cuBLAS and the separate
    // residual add + RMSNorm took 21.8 and 20.8 µs (docs/layers.md). The quantized
    // path keeps v3 until its own comparison is measured.
    void project_residual_norm(session& s, const residual_target& to, tensor_view<T, 2> delta,
                               tensor_view<const T, 2> in, const detail::device_tensor<T, 2>& dense,
                               const std::optional<device_quantized_matrix>& q,
                               const detail::device_tensor<T, 1>& bias, cudaStream_t stream = nullptr) const {
        const index_t rows = in.extent(0);
        const float eps = config_.norm_eps;
        const bool gpt2 = config_.arch == model_arch::gpt2;
        const auto fused = [&](const auto& proj) {
            if (gpt2)
                detail::residual_add_layer_norm_gemv<T>(to.out, to.x, in, proj, bias.view(), to.w->view(), to.b->view(),
                                                        eps, s.arrivals.data(), stream);
            else
                detail::residual_add_rms_norm_gemv<T>(to.out, to.x, in, proj, bias.view(), to.w->view(), eps,
                                                      s.arrivals.data(), stream);
        };
        if (q && detail::quantized_pair_gemv_takes(rows, *q, *q)) return fused(*q);
        const tensor_view<const T, 1> pending = project_deferring_bias(delta, in, dense, q, bias, stream);
        residual_norm(to.out, to.x, delta, pending, *to.w, *to.b, stream);
    }

    // The backward of norm (+ the residual path): dx = norm'(dout) + dskip (dskip may be dx itself).
    void norm_backward(tensor_view<float, 2> dx, detail::device_tensor<float, 1>& dweight,
                       detail::device_tensor<float, 1>& dbias, tensor_view<const float, 2> dout,
                       tensor_view<const float, 2> dskip, tensor_view<const float, 2> x,
                       const detail::device_tensor<T, 1>& weight) const {
        if (config_.arch == model_arch::gpt2)
            residual_add_layer_norm_backward<float>(dx, dweight.view(), dbias.view(), dout, dskip, x, weight.view(),
                                                    config_.norm_eps);
        else residual_add_rms_norm_backward<float>(dx, dweight.view(), dout, dskip, x, weight.view(), config_.norm_eps);
    }

    // forward_backward for T = float (see the top of this file).
    loss_terms train_step(model_weights& grads, tensor_view<const token_id, 2> tokens,
                          tensor_view<const token_id, 2> targets, const backward_options& options) const {
        const model_config& c = config_;
        const index_t B = tokens.extent(0), Tn = tokens.extent(1), N = B * Tn;
        const index_t D = c.hidden_size, Dh = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
        const index_t V = c.vocab_size, F = c.intermediate_size, E = c.num_experts;
        const index_t q_out = Hq * Dh, kv_out = Hkv * Dh, qkv_out = q_out + 2 * kv_out;
        const bool gpt2 = c.arch == model_arch::gpt2, moe = c.arch == model_arch::mixtral;
        constexpr const char* op = "cuda::model::forward_backward";
        TINYLLM_EXPECT(B >= 1 && Tn >= 1, op, ": tokens has shape ", to_string(tokens.shape()),
                       "; it needs at least one row of one token (B, T)");
        TINYLLM_EXPECT(targets.shape() == tokens.shape(), op, ": targets has shape ", to_string(targets.shape()),
                       " but tokens has shape ", to_string(tokens.shape()), "; they must be equal (B, T)");
        TINYLLM_EXPECT(std::isfinite(options.lm_weight) && std::isfinite(options.aux_weight) &&
                           options.lm_weight >= 0 && options.aux_weight >= 0,
                       op, ": lm_weight = ", options.lm_weight, " and aux_weight = ", options.aux_weight,
                       " must be finite and not negative");
        TINYLLM_EXPECT(!gpt2 || Tn <= c.max_positions, op, ": ", Tn, " positions exceed GPT-2's ", c.max_positions,
                       " learned positions");
        std::vector<token_id> ids(static_cast<std::size_t>(N)), want(ids.size());
        std::vector<std::int32_t> pos(ids.size());  // (B, T): 0..T-1 in every row
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < Tn; ++t) {
                TINYLLM_EXPECT(tokens(b, t) >= 0 && tokens(b, t) < V, op, ": token id ", tokens(b, t), " at (", b,
                               ", ", t, ") is outside the vocabulary [0, ", V, ")");
                ids[static_cast<std::size_t>(b * Tn + t)] = tokens(b, t);
                want[static_cast<std::size_t>(b * Tn + t)] = targets(b, t);
                pos[static_cast<std::size_t>(b * Tn + t)] = static_cast<std::int32_t>(t);
            }
        const device_buffer<token_id> d_ids = to_device(ids), d_targets = to_device(want);
        const device_buffer<std::int32_t> d_pos = to_device(pos);
        const tensor_view<const token_id, 2> ids_v(d_ids.data(), {B, Tn});
        const tensor_view<const std::int32_t, 2> pos_v(d_pos.data(), {B, Tn});
        const auto buffer = [](index_t n) { return device_buffer<float>(static_cast<std::size_t>(n)); };
        const auto mat = [](device_buffer<float>& m, index_t rows, index_t cols) {
            return tensor_view<float, 2>(m.data(), {rows, cols});
        };
        const auto cmat = [](const device_buffer<float>& m, index_t rows, index_t cols) {
            return tensor_view<const float, 2>(m.data(), {rows, cols});
        };
        // (B, T, H, Dh) views of q, k, v inside the rows of a (N, qkv_out) matrix.
        const extents<4> qkv_strides{Tn * qkv_out, qkv_out, Dh, 1};
        const auto heads = [&](float* qkv, index_t first, index_t H) {
            return tensor_view<float, 4>(qkv + first, {B, Tn, H, Dh}, qkv_strides);
        };
        const auto cheads = [&](const float* qkv, index_t first, index_t H) {
            return tensor_view<const float, 4>(qkv + first, {B, Tn, H, Dh}, qkv_strides);
        };
        attention_options causal;
        causal.causal = true;

        // ---- forward, keeping each layer's activations ----
        // xs[l]: the stream entering layer l (xs[L]: leaving the last layer).
        std::vector<device_buffer<float>> xs;
        for (index_t l = 0; l <= c.num_layers; ++l) xs.push_back(buffer(N * D));
        embedding<float, token_id>(tensor_view<float, 3>(xs[0].data(), {B, Tn, D}), ids_v, embed_.view(), 1.0f,
                                   embedding_version::vectorized, /*check_ids=*/false);
        if (gpt2) add_learned_positions<float>(tensor_view<float, 3>(xs[0].data(), {B, Tn, D}), positions_.view(), pos_v);

        std::vector<detail::training_layer> acts(static_cast<std::size_t>(c.num_layers));
        device_buffer<float> delta = buffer(N * D), scratch = buffer(N * std::max<index_t>(F, 1));
        std::optional<session> moe_session;  // the generation path's MoE scratch (Mixtral)
        if (moe) moe_session.emplace(new_session(1, 1));
        for (index_t l = 0; l < c.num_layers; ++l) {
            const device_layer_weights<T>& L = layers_[static_cast<std::size_t>(l)];
            detail::training_layer& A = acts[static_cast<std::size_t>(l)];
            const auto x = cmat(xs[static_cast<std::size_t>(l)], N, D);
            A.h1 = buffer(N * D);
            A.qkv = buffer(N * qkv_out);
            A.attn = buffer(N * q_out);
            A.lse = buffer(B * Hq * Tn);
            A.x_mid = buffer(N * D);
            A.h2 = buffer(N * D);
            norm(mat(A.h1, N, D), x, L.attn_norm_weight, L.attn_norm_bias);
            linear<float>(mat(A.qkv, N, qkv_out), cmat(A.h1, N, D), L.wqkv.view(), L.bqkv.view(), handle_);
            if (!gpt2) {
                apply_rope(heads(A.qkv.data(), 0, Hq), c.rope);
                apply_rope(heads(A.qkv.data(), q_out, Hkv), c.rope);
            }
            const tensor_view<float, 4> attn4(A.attn.data(), {B, Tn, Hq, Dh});
            attention_flash<float>(attn4, tensor_view<float, 3>(A.lse.data(), {B, Hq, Tn}),
                                   heads(A.qkv.data(), 0, Hq), heads(A.qkv.data(), q_out, Hkv),
                                   heads(A.qkv.data(), q_out + kv_out, Hkv), causal);
            linear<float>(mat(delta, N, D), cmat(A.attn, N, q_out), L.wo.view(), L.bo.view(), handle_);
            // x_mid = x + attention; h2 = norm2(x_mid)
            if (gpt2)
                residual_add_layer_norm<float>(mat(A.h2, N, D), mat(A.x_mid, N, D), x, cmat(delta, N, D),
                                               L.ffn_norm_weight.view(), L.ffn_norm_bias.view(), c.norm_eps);
            else
                residual_add_rms_norm<float>(mat(A.h2, N, D), mat(A.x_mid, N, D), x, cmat(delta, N, D),
                                             L.ffn_norm_weight.view(), c.norm_eps);
            const auto h2 = cmat(A.h2, N, D);
            if (gpt2) {
                A.a = buffer(N * F);
                linear<float>(mat(A.a, N, F), h2, L.fc.view(), L.fc_bias.view(), handle_);
                activate<float>(mat(scratch, N, F), cmat(A.a, N, F), activation::gelu_tanh);
                linear<float>(mat(delta, N, D), cmat(scratch, N, F), L.proj.view(), L.proj_bias.view(), handle_);
            } else if (!moe) {
                A.a = buffer(N * F);
                A.b = buffer(N * F);
                linear<float>(mat(A.a, N, F), h2, L.gate.view(), {}, handle_);
                linear<float>(mat(A.b, N, F), h2, L.up.view(), {}, handle_);
                swiglu<float>(mat(scratch, N, F), cmat(A.a, N, F), cmat(A.b, N, F));
                linear<float>(mat(delta, N, D), cmat(scratch, N, F), L.down.view(), {}, handle_);
            } else {
                ffn(*moe_session, mat(delta, N, D), h2, L);  // leaves the router logits in the session
                A.router_logits = tensor<float, 2>(extents<2>{N, E});
                TINYLLM_CUDA_CHECK(cudaMemcpy(A.router_logits.data(), moe_session->router_logits.data(),
                                              static_cast<std::size_t>(N * E) * sizeof(float),
                                              cudaMemcpyDeviceToHost));
            }
            add<float>(mat(xs[static_cast<std::size_t>(l + 1)], N, D), cmat(A.x_mid, N, D), cmat(delta, N, D));
        }
        const auto x_top = cmat(xs.back(), N, D);
        device_buffer<float> hf = buffer(N * D);  // (N, D) norm_f(x)
        norm(mat(hf, N, D), x_top, final_norm_weight_, final_norm_bias_);
        const tensor_view<const float, 2> head = c.tie_word_embeddings ? embed_.view() : lm_head_.view();
        device_buffer<float> logits = buffer(N * V);  // (N, V), overwritten below by its gradient
        linear<float>(mat(logits, N, V), cmat(hf, N, D), head, {}, handle_);

        // ---- the losses ----
        loss_terms loss;
        loss.lm = cross_entropy<float>(mat(logits, N, V), tensor_view<float, 1>{}, cmat(logits, N, V),
                                       tensor_view<const token_id, 1>(d_targets.data(), {N}), options.loss);
        if (options.lm_weight != 1.0) {
            const index_t n = N * V;
            launch(detail::scale_gradient_kernel<float>, static_cast<unsigned>(std::min<index_t>(ceil_div<index_t>(n, 256), 65535)),
                   256, 0, nullptr, logits.data(), n, static_cast<float>(options.lm_weight));
            TINYLLM_CUDA_CHECK_LAUNCH();
        }
        std::vector<tensor<float, 2>> aux_dlogits;  // (N, E) per layer, host
        if (moe) {
            std::vector<tensor_view<const float, 2>> router_logits;
            for (const auto& A : acts) router_logits.push_back(A.router_logits.view());
            loss.aux = cpu::detail::load_balancing_loss(aux_dlogits, router_logits, c.experts_per_token,
                                                        options.aux_weight);
        }
        loss.total = options.lm_weight * loss.lm + options.aux_weight * loss.aux;

        // ---- backward, from the loss down; gradients on the device, Wq/Wk/Wv stacked ----
        detail::device_tensor<float, 2> d_embed = detail::zeros_like(embed_), d_positions = detail::zeros_like(positions_),
                                        d_lm_head = detail::zeros_like(lm_head_);
        detail::device_tensor<float, 1> d_final_w = detail::zeros_like(final_norm_weight_),
                                        d_final_b = detail::zeros_like(final_norm_bias_);
        std::vector<device_layer_weights<float>> dl(layers_.size());
        for (std::size_t l = 0; l < layers_.size(); ++l) {
            const device_layer_weights<T>& L = layers_[l];
            device_layer_weights<float>& G = dl[l];
            G.attn_norm_weight = detail::zeros_like(L.attn_norm_weight);
            G.attn_norm_bias = detail::zeros_like(L.attn_norm_bias);
            G.ffn_norm_weight = detail::zeros_like(L.ffn_norm_weight);
            G.ffn_norm_bias = detail::zeros_like(L.ffn_norm_bias);
            G.wqkv = detail::zeros_like(L.wqkv);
            G.bqkv = detail::zeros_like(L.bqkv);
            G.wo = detail::zeros_like(L.wo);
            G.bo = detail::zeros_like(L.bo);
            G.fc = detail::zeros_like(L.fc);
            G.fc_bias = detail::zeros_like(L.fc_bias);
            G.proj = detail::zeros_like(L.proj);
            G.proj_bias = detail::zeros_like(L.proj_bias);
            G.gate = detail::zeros_like(L.gate);
            G.up = detail::zeros_like(L.up);
            G.down = detail::zeros_like(L.down);
            G.router = detail::zeros_like(L.router);
            G.w1 = detail::zeros_like(L.w1);
            G.w3 = detail::zeros_like(L.w3);
            G.w2 = detail::zeros_like(L.w2);
        }

        device_buffer<float> dh = buffer(N * D), dx = buffer(N * D), dpart = buffer(N * D);  // (N, D)
        detail::device_tensor<float, 2>& dhead = c.tie_word_embeddings ? d_embed : d_lm_head;
        linear_backward<float>(mat(dh, N, D), dhead.view(), {}, cmat(logits, N, V), cmat(hf, N, D), head, handle_);
        norm_backward(mat(dx, N, D), d_final_w, d_final_b, cmat(dh, N, D), {}, x_top, final_norm_weight_);

        device_buffer<float> dqkv = buffer(N * qkv_out), dattn = buffer(N * q_out);
        device_buffer<float> dscratch = buffer(N * std::max<index_t>(F, 1)), dscratch2 = buffer(N * std::max<index_t>(F, 1));
        std::optional<moe_backward_workspace> moe_ws;
        if (moe) moe_ws.emplace();
        for (index_t l = c.num_layers - 1; l >= 0; --l) {
            const device_layer_weights<T>& L = layers_[static_cast<std::size_t>(l)];
            device_layer_weights<float>& G = dl[static_cast<std::size_t>(l)];
            const detail::training_layer& A = acts[static_cast<std::size_t>(l)];
            const auto h2 = cmat(A.h2, N, D);
            // FFN block: x_out = x_mid + ffn(norm2(x_mid)); dx holds d x_out.
            if (gpt2) {
                activate<float>(mat(dscratch2, N, F), cmat(A.a, N, F), activation::gelu_tanh);  // gelu(a) again
                linear_backward<float>(mat(dscratch, N, F), G.proj.view(), G.proj_bias.view(), cmat(dx, N, D),
                                       cmat(dscratch2, N, F), L.proj.view(), handle_);
                activate_backward<float>(mat(dscratch, N, F), cmat(dscratch, N, F), cmat(A.a, N, F),
                                         activation::gelu_tanh);
                linear_backward<float>(mat(dh, N, D), G.fc.view(), G.fc_bias.view(), cmat(dscratch, N, F), h2,
                                       L.fc.view(), handle_);
            } else if (!moe) {
                swiglu<float>(mat(dscratch2, N, F), cmat(A.a, N, F), cmat(A.b, N, F));  // s again
                linear_backward<float>(mat(dscratch, N, F), G.down.view(), {}, cmat(dx, N, D), cmat(dscratch2, N, F),
                                       L.down.view(), handle_);
                // dscratch becomes d gate, dscratch2 d up
                swiglu_backward<float>(mat(dscratch, N, F), mat(dscratch2, N, F), cmat(dscratch, N, F),
                                       cmat(A.a, N, F), cmat(A.b, N, F));
                linear_backward<float>(mat(dh, N, D), G.gate.view(), {}, cmat(dscratch, N, F), h2, L.gate.view(),
                                       handle_);
                linear_backward<float>(mat(dpart, N, D), G.up.view(), {}, cmat(dscratch2, N, F), h2, L.up.view(),
                                       handle_);
                add<float>(mat(dh, N, D), cmat(dh, N, D), cmat(dpart, N, D));
            } else {
                const tensor<float, 2>& aux = aux_dlogits[static_cast<std::size_t>(l)];
                const device_buffer<float> d_aux =
                    to_device(std::span<const float>(aux.data(), static_cast<std::size_t>(aux.size())));
                moe_backward(mat(dh, N, D), G.router.view(), G.w1.view(), G.w3.view(), G.w2.view(), cmat(dx, N, D),
                             cmat(d_aux, N, E), h2, L.router.view(), L.w1.view(), L.w3.view(), L.w2.view(),
                             c.experts_per_token, moe_dispatch_options{}, *moe_ws, handle_);
            }
            // dx = d x_mid: the norm's path plus the skip's
            norm_backward(mat(dx, N, D), G.ffn_norm_weight, G.ffn_norm_bias, cmat(dh, N, D), cmat(dx, N, D),
                          cmat(A.x_mid, N, D), L.ffn_norm_weight);
            // Attention block: x_mid = x + attention(norm1(x)) Wo.
            linear_backward<float>(mat(dattn, N, q_out), G.wo.view(), G.bo.view(), cmat(dx, N, D),
                                   cmat(A.attn, N, q_out), L.wo.view(), handle_);
            const float* const qkv = A.qkv.data();
            attention_backward_flash<float>(heads(dqkv.data(), 0, Hq), heads(dqkv.data(), q_out, Hkv),
                                            heads(dqkv.data(), q_out + kv_out, Hkv),
                                            tensor_view<const float, 4>(dattn.data(), {B, Tn, Hq, Dh}),
                                            cheads(qkv, 0, Hq), cheads(qkv, q_out, Hkv),
                                            cheads(qkv, q_out + kv_out, Hkv),
                                            tensor_view<const float, 4>(A.attn.data(), {B, Tn, Hq, Dh}),
                                            tensor_view<const float, 3>(A.lse.data(), {B, Hq, Tn}), causal);
            if (!gpt2) {
                apply_rope_backward(heads(dqkv.data(), 0, Hq), c.rope);
                apply_rope_backward(heads(dqkv.data(), q_out, Hkv), c.rope);
            }
            // dh1 = dq Wq + dk Wk + dv Wv in one product with the stacked Wqkv.
            linear_backward<float>(mat(dh, N, D), G.wqkv.view(), G.bqkv.view(), cmat(dqkv, N, qkv_out),
                                   cmat(A.h1, N, D), L.wqkv.view(), handle_);
            norm_backward(mat(dx, N, D), G.attn_norm_weight, G.attn_norm_bias, cmat(dh, N, D), cmat(dx, N, D),
                          cmat(xs[static_cast<std::size_t>(l)], N, D), L.attn_norm_weight);  // dx = d x
        }
        // The embedding: each row of dx goes back to its token's row of the table
        // (added to the output projection's gradient when the two are tied).
        const tensor_view<const float, 3> dx3(dx.data(), {B, Tn, D});
        {
            embedding_backward_workspace ws(N, V);
            embedding_backward<float, token_id>(d_embed.view(), ids_v, dx3, 1.0f,
                                                /*accumulate=*/c.tie_word_embeddings, ws, /*check_ids=*/false);
            if (gpt2) {
                embedding_backward_workspace pws(N, positions_.shape[0]);
                learned_positions_backward<float, const std::int32_t>(d_positions.view(), dx3, pos_v,
                                                                      /*accumulate=*/false, pws, /*check=*/false);
                TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());  // before pws is freed
            }
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());  // before ws is freed
        }

        // ---- download, in the weights' layout ----
        grads = model_weights{};
        grads.layout = layout_;
        grads.embed = detail::download(d_embed);
        grads.positions = detail::download(d_positions);
        grads.lm_head = detail::download(d_lm_head);
        grads.final_norm_weight = detail::download(d_final_w);
        grads.final_norm_bias = detail::download(d_final_b);
        for (const device_layer_weights<float>& G : dl) {
            layer_weights h;
            h.attn_norm_weight = detail::download(G.attn_norm_weight);
            h.attn_norm_bias = detail::download(G.attn_norm_bias);
            h.ffn_norm_weight = detail::download(G.ffn_norm_weight);
            h.ffn_norm_bias = detail::download(G.ffn_norm_bias);
            const tensor<float, 2> wqkv = detail::download(G.wqkv);
            h.wq = tinyllm::detail::rows_of(wqkv, 0, q_out);
            h.wk = tinyllm::detail::rows_of(wqkv, q_out, kv_out);
            h.wv = tinyllm::detail::rows_of(wqkv, q_out + kv_out, kv_out);
            if (!G.bqkv.empty()) {
                const tensor<float, 1> bqkv = detail::download(G.bqkv);
                h.bq = tinyllm::detail::slice_of(bqkv, 0, q_out);
                h.bk = tinyllm::detail::slice_of(bqkv, q_out, kv_out);
                h.bv = tinyllm::detail::slice_of(bqkv, q_out + kv_out, kv_out);
            }
            h.wo = detail::download(G.wo);
            h.bo = detail::download(G.bo);
            h.fc = detail::download(G.fc);
            h.fc_bias = detail::download(G.fc_bias);
            h.proj = detail::download(G.proj);
            h.proj_bias = detail::download(G.proj_bias);
            h.gate = detail::download(G.gate);
            h.up = detail::download(G.up);
            h.down = detail::download(G.down);
            h.router = detail::download(G.router);
            h.w1 = detail::download(G.w1);
            h.w3 = detail::download(G.w3);
            h.w2 = detail::download(G.w2);
            grads.layers.push_back(std::move(h));
        }
        if (const std::string bad = cpu::detail::first_non_finite(grads); !bad.empty())
            TINYLLM_FAIL(op, ": the gradient went non-finite: ", bad, " (lm loss ", loss.lm, ", aux loss ", loss.aux,
                         ")");
        return loss;
    }

    // The attention kernel for the shape: flash-decoding when few query rows
    // share a KV head (decode), tensor cores for a bf16 prompt, v3 otherwise.
    void attend(tensor_view<T, 4> out, tensor_view<const T, 4> q, tensor_view<const T, 4> k, tensor_view<const T, 4> v,
                const attention_options& opts, attention_workspace& ws, cudaStream_t stream = nullptr) const {
        const index_t group = config_.num_heads / config_.num_kv_heads;
        if (group * q.extent(1) <= detail::decode_rows) {
            attention_decode<T>(out, q, k, v, opts, ws, 0, stream);
        } else if constexpr (std::is_same_v<T, bfloat16>) {
            if (config_.head_dim == 64 || config_.head_dim == 128) attention_mma<T>(out, q, k, v, opts, stream);
            else attention_flash<T>(out, q, k, v, opts, stream);
        } else {
            attention_flash<T>(out, q, k, v, opts, stream);
        }
    }

    // out (rows, D) = ffn(h). With `then`, the output goes to then->x instead (x +=
    // ffn(h)) and then->out gets norm(x): the last projection by project_residual_norm
    // (one GEMV for a decode step on quantized weights), `out` only its scratch. The MoE branch (Mixtral):
    // gating and the dispatch plan on the GPU, then the experts as GEMMs (their sizes
    // read back from the plan: a wait) or, in a decode step, as GEMVs (no wait).
    void ffn(session& s, tensor_view<T, 2> out, tensor_view<const T, 2> h, const device_layer_weights<T>& L,
             cudaStream_t stream = nullptr, const residual_target* then = nullptr) const {
        const model_config& c = config_;
        const index_t rows = h.extent(0), F = c.intermediate_size, D = c.hidden_size;
        // The last projection of the MLP: into out, or added to the stream and normalized.
        const auto last_projection = [&](tensor_view<const T, 2> in, const detail::device_tensor<T, 2>& dense,
                                         const std::optional<device_quantized_matrix>& q,
                                         const detail::device_tensor<T, 1>& bias) {
            if (then) project_residual_norm(s, *then, out, in, dense, q, bias, stream);
            else project(out, in, dense, q, bias, stream);
        };
        const detail::device_tensor<T, 1> no_bias;
        // Quantized: gpt2_mlp's and swiglu_mlp's steps, each projection by project(),
        // except that a decode step takes the first projection and its element-wise
        // step in one quantized GEMV (the same bits).
        if (c.arch == model_arch::gpt2 && L.fc_q) {
            const tensor_view<T, 2> hidden(detail::at_least(s.hidden, rows * F), {rows, F});
            if (detail::quantized_pair_gemv_takes(rows, *L.fc_q, *L.fc_q)) {
                detail::bias_activate_gemv<T>(hidden, h, *L.fc_q, L.fc_bias.view(), activation::gelu_tanh, stream);
            } else {
                project(hidden, h, L.fc, L.fc_q, {}, stream);
                bias_activate<T>(hidden, hidden, L.fc_bias.view(), activation::gelu_tanh, stream);
            }
            last_projection(hidden, L.proj, L.proj_q, L.proj_bias);
            return;
        }
        if (c.arch == model_arch::llama && L.gate_q) {
            const tensor_view<T, 2> gate(detail::at_least(s.hidden, rows * F), {rows, F});
            if (detail::quantized_pair_gemv_takes(rows, *L.gate_q, *L.up_q)) {
                detail::swiglu_gemv<T>(gate, h, *L.gate_q, *L.up_q, stream);
            } else {
                const tensor_view<T, 2> up(detail::at_least(s.hidden2, rows * F), {rows, F});
                project(gate, h, L.gate, L.gate_q, {}, stream);
                project(up, h, L.up, L.up_q, {}, stream);
                swiglu<T>(gate, gate, up, stream);
            }
            last_projection(gate, L.down, L.down_q, no_bias);
            return;
        }
        // Dense weights: gpt2_mlp's and swiglu_mlp's steps, except that a decode step (at most
        // 8 rows) computes the first projection and its element-wise step in one GEMV.
        const bool gemv = rows <= detail::mlp_gemv_max_rows;
        if (c.arch == model_arch::gpt2) {
            const tensor_view<T, 2> hidden(detail::at_least(s.hidden, rows * F), {rows, F});
            if (gemv) {
                detail::bias_activate_gemv<T>(hidden, h, L.fc.view(), L.fc_bias.view(), activation::gelu_tanh, stream);
            } else {
                linear<T>(hidden, h, L.fc.view(), {}, handle_, stream);
                bias_activate<T>(hidden, hidden, L.fc_bias.view(), activation::gelu_tanh, stream);  // fused bias + GELU
            }
            last_projection(hidden, L.proj, std::nullopt, L.proj_bias);
            return;
        }
        if (c.arch == model_arch::llama) {
            const tensor_view<T, 2> gate(detail::at_least(s.hidden, rows * F), {rows, F});
            if (gemv) {
                detail::swiglu_gemv<T>(gate, h, L.gate.view(), L.up.view(), stream);
                last_projection(gate, L.down, std::nullopt, no_bias);
                return;
            }
            const tensor_view<T, 2> up(detail::at_least(s.hidden2, rows * F), {rows, F});
            swiglu_mlp<T>(out, h, {L.gate.view(), L.up.view(), L.down.view()}, gate, up, handle_, stream);
            if (then) residual_norm(then->out, then->x, out, {}, *then->w, *then->b, stream);
            return;
        }
        // Mixtral: softmax -> top-k -> renormalize, then dispatch / experts / combine.
        const index_t E = c.num_experts, k = c.experts_per_token, R = moe_max_rows(rows, k, E, 1);
        // The router's logits stay float: rounded to bf16, two experts' logits may tie
        // and the top-k choice flip (measured: transformers' own bf16 Mixtral fixture
        // flips one token's experts and that position's logits move 0.25 rel-L2).
        const tensor_view<float, 2> logits(detail::at_least(s.router_logits, rows * E), {rows, E});
        linear<T, float>(logits, h, L.router.view(), {}, handle_, stream);
        const tensor_view<std::int32_t, 2> ids(detail::at_least(s.expert_ids, rows * k), {rows, k});
        const tensor_view<float, 2> weights(detail::at_least(s.expert_weights, rows * k), {rows, k});
        softmax_topk_gating(ids, weights, tensor_view<const float, 2>(logits), /*renormalize=*/true, stream);
        std::int32_t* p = detail::at_least(s.plan_ints, rows * k + R + (E + 1) + E);
        const moe_plan_view plan{tensor_view<std::int32_t, 2>(p, {rows, k}),
                                 tensor_view<std::int32_t, 1>(p + rows * k, {R}),
                                 tensor_view<std::int32_t, 1>(p + rows * k + R, {E + 1}),
                                 tensor_view<std::int32_t, 1>(p + rows * k + R + E + 1, {E})};
        if (!s.dispatch_ws || s.dispatch_ws->slots() < rows * k) s.dispatch_ws.emplace(rows * k, E);
        moe_plan(plan, tensor_view<const std::int32_t, 2>(ids), moe_dispatch_options{}, *s.dispatch_ws, stream);
        const tensor_view<T, 2> sorted(detail::at_least(s.sorted, R * D), {R, D});
        const tensor_view<T, 2> expert_out(detail::at_least(s.expert_out, R * D), {R, D});
        moe_gather(sorted, h, plan, stream);
        if (!experts_read_plan_back(rows)) {  // a decode step: the chosen experts as GEMVs, the plan read where it lies
            const tensor_view<T, 2> hidden(detail::at_least(s.hidden, R * F), {R, F});
            moe_experts_swiglu_gemv(expert_out, tensor_view<const T, 2>(sorted), L.w1.view(), L.w3.view(),
                                    L.w2.view(), plan, hidden, stream);
        } else {  // cuBLAS GEMMs, sized from the plan's offsets read back to the host
            moe_experts_swiglu(expert_out, tensor_view<const T, 2>(sorted), L.w1.view(), L.w3.view(), L.w2.view(),
                               plan, s.experts_ws, handle_.get(), stream);
        }
        if (then) {  // combine v2: the combine, the residual add and the next norm in one launch (same bits)
            moe_combine_residual_rms_norm<T>(then->out, then->x, tensor_view<const T, 2>(expert_out),
                                             tensor_view<const float, 2>(weights), plan, then->w->view(), c.norm_eps,
                                             stream);
            return;
        }
        moe_combine(out, tensor_view<const T, 2>(expert_out), tensor_view<const float, 2>(weights), plan, stream);
    }

    model_config config_;
    checkpoint_layout layout_;  // the checkpoint's names and layout, given to the gradients
    detail::device_tensor<T, 2> embed_, positions_, lm_head_;
    std::vector<device_layer_weights<T>> layers_;
    detail::device_tensor<T, 1> final_norm_weight_, final_norm_bias_;
    rope_cache rope_;
    cublas_handle handle_;
    std::optional<quant_spec> quantization_;    // set when the matrices are quantized
    mutable device_buffer<T> dequantized_;      // v1's temporary W^ (float prompts of a quantized model)
};

// The logits of the last position of one prompt, on the host: a fresh session,
// one forward (what `tinyllm logits --device cuda` prints).
template <class T>
std::vector<float> last_logits(const model<T>& m, std::span<const token_id> prompt) {
    const index_t n = static_cast<index_t>(prompt.size());
    auto s = m.new_session(1, n);
    const tensor_view<const float, 2> logits = m.forward(s, tensor_view<const token_id, 2>(prompt.data(), {1, n}));
    std::vector<float> host(static_cast<std::size_t>(logits.extent(1)));
    TINYLLM_CUDA_CHECK(cudaMemcpy(host.data(), logits.data(), host.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
}

// Generate continuations of a batch of prompts of different lengths on the GPU:
// one prefill of the right-padded batch, then one token per row per step (each
// step a model::decode_step, replayed from a CUDA graph), the tokens chosen by
// cuda::sample (row r from Philox stream options.stream + r).
// The same tokens as cpu::generate_batch for the same logits; a row that
// produced an EOS stops (its output ends with the EOS). on_token(row, id) is
// called as each token is chosen.
template <class T>
std::vector<std::vector<token_id>> generate_batch(
    const model<T>& m, const std::vector<std::vector<token_id>>& prompts, const cpu::generation_options& options,
    const std::function<void(std::size_t, token_id)>& on_token = {}) {
    TINYLLM_EXPECT(!prompts.empty(), "cuda::generate_batch: no prompts");
    TINYLLM_EXPECT(options.max_new_tokens >= 0, "cuda::generate_batch: max_new_tokens = ", options.max_new_tokens,
                   " must not be negative");
    tinyllm::detail::check_params(options.sampling);
    const index_t B = static_cast<index_t>(prompts.size());
    index_t n = 0;
    for (std::size_t r = 0; r < prompts.size(); ++r) {
        TINYLLM_EXPECT(!prompts[r].empty(), "cuda::generate_batch: prompt ", r, " is empty");
        n = std::max<index_t>(n, static_cast<index_t>(prompts[r].size()));
    }
    std::vector<std::vector<token_id>> out(prompts.size());
    if (options.max_new_tokens == 0) return out;
    const auto& eos = options.eos_token_ids.empty() ? m.config().eos_token_ids : options.eos_token_ids;

    auto session = m.new_session(B, n + options.max_new_tokens, options.kv_cache);
    std::vector<token_id> padded(static_cast<std::size_t>(B * n), 0);
    std::vector<index_t> counts(static_cast<std::size_t>(B));
    for (index_t r = 0; r < B; ++r) {
        const auto& p = prompts[static_cast<std::size_t>(r)];
        std::copy(p.begin(), p.end(), padded.begin() + r * n);
        counts[static_cast<std::size_t>(r)] = static_cast<index_t>(p.size());
    }
    tensor_view<const float, 2> logits = m.forward(session, tensor_view<const token_id, 2>(padded.data(), {B, n}),
                                                   counts);
    device_buffer<token_id> chosen(static_cast<std::size_t>(B));
    std::vector<token_id> next(static_cast<std::size_t>(B));
    std::vector<bool> done(static_cast<std::size_t>(B), false);
    for (index_t step = 0; step < options.max_new_tokens; ++step) {
        sample(chosen.view(extents<1>{B}), logits, options.sampling, options.seed, static_cast<std::uint64_t>(step),
               options.stream);
        copy_to_host(std::span<token_id>(next), chosen);
        bool all_done = true;
        for (std::size_t r = 0; r < next.size(); ++r) {
            if (done[r]) continue;
            out[r].push_back(next[r]);
            if (on_token) on_token(r, next[r]);
            done[r] = std::find(eos.begin(), eos.end(), next[r]) != eos.end();
            all_done = all_done && done[r];
        }
        if (all_done || step + 1 == options.max_new_tokens) break;
        // Finished rows keep decoding (their tokens are ignored) so that the batch stays rectangular.
        // The step reads the chosen tokens where sample() wrote them, from a CUDA graph.
        logits = m.decode_step(session, tensor_view<const token_id, 1>(chosen.data(), {B}));
    }
    return out;
}

// One prompt: generate_batch of one row (Philox stream options.stream), the
// same tokens as cpu::generate for the same logits.
template <class T>
std::vector<token_id> generate(const model<T>& m, std::span<const token_id> prompt,
                               const cpu::generation_options& options,
                               const std::function<void(token_id)>& on_token = {}) {
    TINYLLM_EXPECT(!prompt.empty(), "generate: the prompt is empty");
    auto rows = generate_batch(m, {std::vector<token_id>(prompt.begin(), prompt.end())}, options,
                               [&](std::size_t, token_id id) {
                                   if (on_token) on_token(id);
                               });
    return std::move(rows.front());
}

}  // namespace tinyllm::cuda

// The paged sessions' members declared above (model::new_session(pool), fork, forward_batch).
#include <tinyllm/cuda/model_paged.cuh>
