// tinyllm/cuda/positional.cuh — positional encodings on the GPU: RoPE in place
// on (B, T, H, D), and the sinusoidal / learned absolute encodings added to x.
// The math (inverse frequencies, angles, the rotation, PE values) is the one in
// <tinyllm/positional.hpp>, shared with the CPU reference.
//
// RoPE is memory-bound: every element of q and k is read once and written once,
// with a handful of multiply-adds in between. What costs is (1) the bytes, (2)
// the sines and cosines. The ladder varies where the sines and cosines come from,
// then what else the launch does; every rung shares the same rotation loop:
//
//   v1 on_the_fly  one block per token (b, t). The block first computes the
//                  rotary_dim/2 pairs (cos, sin) of its position — the inverse
//                  frequency from rope_inverse_frequency() and sincosf of
//                  pos * w_i — into shared memory, then all H heads of the token
//                  use them. Nothing but q/k is read from memory; the cost is
//                  rotary_dim/2 sincosf calls per token.
//   v2 cached      the same, but the (cos, sin) row of the position is read from a
//                  table built once (make_rope_cache: (max_positions, rotary_dim/2)
//                  floats each, a kernel running the same sincosf on the same
//                  angles, so v1 and v2 give the same values). The row is 2*R/2
//                  floats shared by all heads of a token (and by q and k, and by
//                  every layer), so it costs little bandwidth; it trades the
//                  sincosf work for those reads. Positions outside the table fall
//                  back to computing, so an undersized cache is slower, never wrong.
//
//   v3 with the     what a decoder layer does with its rotated keys: store them.
//   cache write    cuda::model rotates q and k in a row of its fused qkv and then
//                  copies k and v into the KV cache; detail::rope_write_cache does
//                  both in one launch (a block per token: v2's rotation, a
//                  __syncthreads, the copy), the destination row given by a
//                  functor (a session's contiguous cache, or a paged pool's
//                  block tables). Same rotation code, so the same bits as v2; the
//                  saving is a launch per layer, which is what a decode step's
//                  tiny kernels cost (`tinyllm bench rope_cache`).
//   v4 in the      one step further back: for a few rows (decoding),
//   projection's   detail::qkv_rope_write_cache computes qkv = h Wqkv^T (+ b)
//   epilogue       itself, a GEMV with a warp per rotation pair (the two rows of
//                  Wqkv whose outputs RoPE turns together), and rotates and
//                  stores the results from registers: q and k never make the
//                  round trip through memory between the product and the
//                  rotation, and the step loses the rotation's launch too.
//                  Not v3's bits (q, k are rounded once, not twice), within a
//                  rounding of them (`tinyllm bench qkv_rope_cache`).
//
// All rungs rotate with 16-byte vector loads and stores (8 bf16/fp16 or 4 floats)
// when the layout allows it — head dim contiguous, pointer and strides multiples
// of the vector width, and the pairs of one vector contiguous (rotate_half:
// rotary_dim/2 a multiple of the width; interleaved: rotary_dim a multiple) — and
// otherwise one pair per thread step with scalar loads, which handles any size.
//
// Sinusoidal and learned additions are one block per token, one thread per
// feature (they run once per forward pass, on the embeddings).
//
// Build without --use_fast_math: it turns sincosf into __sincosf, whose error
// grows with the angle, i.e. with the position (the tests use positions up to
// 10^5 and expect a few ulp).
//
// Positions come as a (B, T) device tensor of ids, or — apply_rope(x, cfg,
// position_offset) — as a run: token t of every row is at position_offset + t
// (0..T-1 for a prompt, the cache length when decoding), computed in the kernel.
//
// Position ids live on the device and cannot be checked by the host without a
// copy: a learned position outside the table writes NaN to that token (loud,
// never a read out of bounds); RoPE accepts any position (a rotation is defined
// for every angle; positions are exact as float up to 2^24).
//
// Aliasing, refused on the host before a launch: a rotated x (or dx) whose
// elements share addresses (a head stride of 0: one head rotated twice), x over
// the positions or (learned) the table, and q and k of apply_rope(q, k, ...)
// sharing an element (rotated once by each launch). q and k may be heads side
// by side in the rows of one fused buffer.
//
// Backward: RoPE's, apply_rope_backward, is the same kernels rotating by
// -angle (the transpose of the rotation; see "Backward" below). The learned
// table's gradient, learned_positions_backward, is the
// embedding backward's deterministic scatter-add (embedding.cuh) with the
// positions as ids; x's gradient is dout itself (an addition passes it on).
#pragma once

#include <tinyllm/cuda/activation.cuh>  // detail::load_floats
#include <tinyllm/cuda/attention_common.cuh>  // detail::warp_sum
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/cuda/gemv.cuh>  // detail::pair_gemv_kernel (RoPE v4)
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>
#include <type_traits>

namespace tinyllm::cuda {

// The cos/sin table of a RoPE config for positions 0 .. max_positions-1:
// cos(p, i) = cos(p * w_i), sin(p, i) = sin(p * w_i), each (max_positions, rotary_dim/2).
struct rope_cache {
    rope_config config;  // resolved: rotary_dim > 0
    index_t max_positions = 0;
    device_buffer<float> cos;  // (max_positions, rotary_dim/2)
    device_buffer<float> sin;  // (max_positions, rotary_dim/2)
};

namespace detail {

// The largest rotary_dim the kernels' shared-memory table holds (2 * R/2 floats).
inline constexpr index_t rope_max_rotary_dim = 8192;

template <class F>
__global__ void rope_cache_kernel(F* cos_out, F* sin_out, index_t max_positions, rope_config cfg) {
    const index_t pairs = cfg.rotary_dim / 2;
    const index_t n = max_positions * pairs;
    for (index_t idx = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const index_t p = idx / pairs, i = idx % pairs;
        float s, c;
        tinyllm::detail::sin_cos(rope_angle(rope_inverse_frequency(cfg, i), p), &s, &c);
        cos_out[idx] = c;
        sin_out[idx] = s;
    }
}

// The 16-byte vector of V elements of T that a thread loads and stores at once.
template <class T, int V>
struct alignas(16) rope_vector {
    T v[V];
};

// The cosine and sine of pair i at position pos: from the table (cache_cos,
// cache_sin: (cache_rows, rotary_dim/2)) when it holds pos, else computed with
// the table's own sincosf, so both give the same values. cfg is resolved.
__device__ inline void rope_angle_of(float* cos_out, float* sin_out, index_t pos, index_t i, const rope_config& cfg,
                                     const float* cache_cos, const float* cache_sin, index_t cache_rows) {
    const index_t pairs = cfg.rotary_dim / 2;
    if (cache_cos != nullptr && pos >= 0 && pos < cache_rows) {
        *cos_out = cache_cos[pos * pairs + i];
        *sin_out = cache_sin[pos * pairs + i];
    } else {
        tinyllm::detail::sin_cos(rope_angle(rope_inverse_frequency(cfg, i), pos), sin_out, cos_out);
    }
}

// Block-wide: s_cos[i], s_sin[i] = the rotation of pair i at position pos, for
// the rotary_dim/2 pairs of cfg (resolved), then a __syncthreads. cache_cos ==
// nullptr: v1 (compute); otherwise v2 (read the table; a position outside it is
// computed). sin_sign: +1 rotates by +angle (the forward), -1 by -angle (the
// backward: R(-angle) = R(angle)^T); negating the sine is exact, so the backward
// uses the forward's own cosines and sines.
__device__ inline void rope_load_angles(float* s_cos, float* s_sin, index_t pos, const rope_config& cfg,
                                        const float* cache_cos, const float* cache_sin, index_t cache_rows,
                                        float sin_sign) {
    for (index_t i = threadIdx.x; i < cfg.rotary_dim / 2; i += blockDim.x) {
        rope_angle_of(&s_cos[i], &s_sin[i], pos, i, cfg, cache_cos, cache_sin, cache_rows);
        s_sin[i] *= sin_sign;
    }
    __syncthreads();
}

// Block-wide: rotates heads 0 .. heads-1 of one token in place (head h at
// row + h * stride_h, its features contiguous) by the angles in s_cos, s_sin.
// V == 1: one pair per step, scalar loads, any layout. V > 1: V-element 16-byte
// vectors (the launcher checked alignment: rope_vectorizable).
template <class T, int V>
__device__ void rope_rotate_token(T* row, index_t heads, index_t stride_h, const rope_config& cfg, const float* s_cos,
                                  const float* s_sin) {
    const index_t pairs = cfg.rotary_dim / 2;
    if constexpr (V == 1) {
        for (index_t idx = threadIdx.x; idx < heads * pairs; idx += blockDim.x) {
            const index_t h = idx / pairs, i = idx % pairs;
            index_t f0, f1;
            rope_pair_features(cfg.pairing, cfg.rotary_dim, i, &f0, &f1);
            T* head = row + h * stride_h;
            float a = to_float(head[f0]), c = to_float(head[f1]);
            rope_rotate(&a, &c, s_cos[i], s_sin[i]);
            head[f0] = from_float<T>(a);
            head[f1] = from_float<T>(c);
        }
    } else if (cfg.pairing == rope_pairing::rotate_half) {
        // A unit is V consecutive pairs i0 .. i0+V-1: features [i0, i0+V) and [i0+R/2, i0+R/2+V).
        const index_t units = pairs / V;
        for (index_t idx = threadIdx.x; idx < heads * units; idx += blockDim.x) {
            const index_t h = idx / units, i0 = (idx % units) * V;
            T* lo = row + h * stride_h + i0;
            T* hi = lo + pairs;
            rope_vector<T, V> a = *reinterpret_cast<const rope_vector<T, V>*>(lo);
            rope_vector<T, V> c = *reinterpret_cast<const rope_vector<T, V>*>(hi);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                float fa = to_float(a.v[j]), fc = to_float(c.v[j]);
                rope_rotate(&fa, &fc, s_cos[i0 + j], s_sin[i0 + j]);
                a.v[j] = from_float<T>(fa);
                c.v[j] = from_float<T>(fc);
            }
            *reinterpret_cast<rope_vector<T, V>*>(lo) = a;
            *reinterpret_cast<rope_vector<T, V>*>(hi) = c;
        }
    } else {
        // A unit is V consecutive features e0 .. e0+V-1 = pairs e0/2 .. e0/2 + V/2 - 1.
        const index_t units = cfg.rotary_dim / V;
        for (index_t idx = threadIdx.x; idx < heads * units; idx += blockDim.x) {
            const index_t h = idx / units, e0 = (idx % units) * V;
            T* p = row + h * stride_h + e0;
            rope_vector<T, V> a = *reinterpret_cast<const rope_vector<T, V>*>(p);
#pragma unroll
            for (int j = 0; j < V / 2; ++j) {
                float f0 = to_float(a.v[2 * j]), f1 = to_float(a.v[2 * j + 1]);
                rope_rotate(&f0, &f1, s_cos[e0 / 2 + j], s_sin[e0 / 2 + j]);
                a.v[2 * j] = from_float<T>(f0);
                a.v[2 * j + 1] = from_float<T>(f1);
            }
            *reinterpret_cast<rope_vector<T, V>*>(p) = a;
        }
    }
}

// One block per token (b, t): its angles into shared memory, then all its heads
// rotated. positions == nullptr: token t is at position_offset + t (every row).
// cfg is resolved (rotary_dim > 0); cache_cos and sin_sign: rope_load_angles.
template <class T, class P, int V>
__global__ void rope_kernel(T* x, index_t seq_len, index_t heads, index_t stride_b, index_t stride_t,
                            index_t stride_h, const P* positions, index_t pos_stride_b, index_t pos_stride_t,
                            index_t position_offset, rope_config cfg, const float* cache_cos, const float* cache_sin,
                            index_t cache_rows, float sin_sign) {
    float* rope_shared = dynamic_shared<float>();  // cos[pairs], sin[pairs]
    float* s_cos = rope_shared;
    float* s_sin = rope_shared + cfg.rotary_dim / 2;
    const index_t token = blockIdx.x;
    const index_t b = token / seq_len, t = token % seq_len;
    const index_t pos = positions != nullptr ? static_cast<index_t>(positions[b * pos_stride_b + t * pos_stride_t])
                                             : position_offset + t;
    rope_load_angles(s_cos, s_sin, pos, cfg, cache_cos, cache_sin, cache_rows, sin_sign);
    rope_rotate_token<T, V>(x + b * stride_b + t * stride_t, heads, stride_h, cfg, s_cos, s_sin);
}

template <class T, class P>
__global__ void add_sinusoidal_kernel(T* x, index_t seq_len, index_t dim, index_t stride_b, index_t stride_t,
                                      index_t stride_d, const P* positions, index_t pos_stride_b,
                                      index_t pos_stride_t, float base) {
    const index_t token = blockIdx.x;
    const index_t b = token / seq_len, t = token % seq_len;
    const index_t pos = static_cast<index_t>(positions[b * pos_stride_b + t * pos_stride_t]);
    T* row = x + b * stride_b + t * stride_t;
    for (index_t j = threadIdx.x; j < dim; j += blockDim.x)
        row[j * stride_d] = from_float<T>(to_float(row[j * stride_d]) + sinusoidal_value(pos, j, dim, base));
}

template <class T, class P>
__global__ void add_learned_kernel(T* x, index_t seq_len, index_t dim, index_t stride_b, index_t stride_t,
                                   index_t stride_d, const T* table, index_t table_rows, index_t table_stride_p,
                                   index_t table_stride_d, const P* positions, index_t pos_stride_b,
                                   index_t pos_stride_t) {
    const index_t token = blockIdx.x;
    const index_t b = token / seq_len, t = token % seq_len;
    const index_t pos = static_cast<index_t>(positions[b * pos_stride_b + t * pos_stride_t]);
    const bool valid = pos >= 0 && pos < table_rows;
    T* row = x + b * stride_b + t * stride_t;
    for (index_t j = threadIdx.x; j < dim; j += blockDim.x) {
        const float add = valid ? to_float(table[pos * table_stride_p + j * table_stride_d]) : __int_as_float(0x7fc00000);
        row[j * stride_d] = from_float<T>(to_float(row[j * stride_d]) + add);
    }
}

// Checks x and cfg; returns cfg resolved against x's head dim. x (named `name`:
// "x", or "dx" for the backward) is rotated in place, each pair read and then
// written by one thread: its elements need addresses of their own (a head stride
// of 0 would rotate one head twice, from two threads at once).
template <class T>
rope_config expect_rope_args(tensor_view<T, 4> x, const rope_config& cfg, const char* op, std::string_view name = "x") {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>,
                  "RoPE kernels take float, tinyllm::bfloat16 or tinyllm::float16");
    const rope_config r = resolve_rope(cfg, x.extent(3));
    TINYLLM_EXPECT(r.rotary_dim <= rope_max_rotary_dim, op, ": rotary_dim = ", r.rotary_dim,
                   " is larger than the kernel's table (", rope_max_rotary_dim, ")");
    TINYLLM_EXPECT(x.stride(3) == 1 || x.extent(3) == 1, op, ": the head dim of x must be contiguous (stride 1); got strides ",
                   to_string(x.strides()));
    tinyllm::detail::expect_distinct_elements(op, name, x);
    return r;
}

// The same, and the positions: (B, T), apart from x (other blocks read them while x is written).
template <class T, class P>
rope_config expect_rope_args(tensor_view<T, 4> x, tensor_view<P, 2> positions, const rope_config& cfg, const char* op,
                             std::string_view name = "x") {
    static_assert(tinyllm::detail::is_position_type_v<P>, "positions must be int32 or int64");
    const rope_config r = expect_rope_args(x, cfg, op, name);
    TINYLLM_EXPECT(positions.extent(0) == x.extent(0) && positions.extent(1) == x.extent(1), op,
                   ": positions has shape ", to_string(positions.shape()), " but x ", to_string(x.shape()),
                   " needs (B, T) = (", x.extent(0), ", ", x.extent(1), ")");
    tinyllm::detail::expect_apart(op, name, x, "positions", positions);
    return r;
}

// Whether rope_rotate_token<T, 16 / sizeof(T)> may rotate x's heads: 16-byte
// aligned, strides multiples of the vector, and the pairs of one vector
// contiguous (rotate_half: rotary_dim/2 a multiple of the width; interleaved:
// rotary_dim a multiple). cfg is resolved.
template <class T>
bool rope_vectorizable(tensor_view<T, 4> x, const rope_config& cfg) {
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const bool pairs_fit =
        cfg.pairing == rope_pairing::rotate_half ? (cfg.rotary_dim / 2) % V == 0 : cfg.rotary_dim % V == 0;
    return pairs_fit && reinterpret_cast<std::uintptr_t>(x.data()) % 16 == 0 && x.stride(0) % V == 0 &&
           x.stride(1) % V == 0 && x.stride(2) % V == 0;
}

// positions.data() == nullptr: positions position_offset + t. cfg is resolved.
// sin_sign: +1 the forward rotation, -1 its transpose (the backward).
template <class T, class P>
void launch_rope(tensor_view<T, 4> x, tensor_view<P, 2> positions, index_t position_offset, const rope_config& cfg,
                 const float* cache_cos, const float* cache_sin, index_t cache_rows, cudaStream_t stream,
                 float sin_sign = 1.0f) {
    using position_type = std::remove_const_t<P>;
    const index_t tokens = x.extent(0) * x.extent(1);
    if (tokens == 0 || x.extent(2) == 0) return;
    TINYLLM_EXPECT(tokens <= 0x7fffffff, "rope: B * T = ", tokens, " tokens exceed the grid limit 2^31 - 1");
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    const index_t pairs = cfg.rotary_dim / 2;
    const bool vectorized = rope_vectorizable(x, cfg);
    const int threads = 128;
    const std::size_t shared = 2 * static_cast<std::size_t>(pairs) * sizeof(float);
    const position_type* pos = positions.data();
    if (vectorized) {
        launch(rope_kernel<T, position_type, V>, static_cast<unsigned>(tokens), threads, shared, stream, x.data(),
               x.extent(1), x.extent(2), x.stride(0), x.stride(1), x.stride(2), pos, positions.stride(0),
               positions.stride(1), position_offset, cfg, cache_cos, cache_sin, cache_rows, sin_sign);
    } else {
        launch(rope_kernel<T, position_type, 1>, static_cast<unsigned>(tokens), threads, shared, stream, x.data(),
               x.extent(1), x.extent(2), x.stride(0), x.stride(1), x.stride(2), pos, positions.stride(0),
               positions.stride(1), position_offset, cfg, cache_cos, cache_sin, cache_rows, sin_sign);
    }
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// RoPE on q and k, and the cache write, fused: one block per token r of qkv
// (rows `stride` apart: Hq heads of q, Hkv of k, Hkv of v, each Dh wide)
//   1. rotates q's and k's heads in place at position positions[r]
//      (rope_load_angles and rope_rotate_token above, the same code
//      and so the same bits as apply_rope_cached; skipped when rotate is false,
//      GPT-2), then
//   2. copies the rotated k and v into cache row at = rows(r) (a row holds
//      width = Hkv * Dh elements; rows(r) < 0: a padding token, not kept).
// Unfused, these were two launches per layer (apply_rope_cached, then a copy
// kernel that read the rotated keys back); here the block copies keys it has
// just rotated itself, so a layer of a RoPE model spends one launch on them, as
// GPT-2's (copy only) always did. During a decode step each launch is a few
// microseconds of tiny work, so a launch saved is most of the time saved.
// V: rope_rotate_token's vector width, also the copy's (16 / sizeof(T) when the
// launcher found everything aligned, else 1).
// Rows: contiguous_cache_rows (a session) or paged_cache_rows (a paged pool), below.
template <class T, int V, class Rows>
__global__ void rope_write_cache_kernel(T* keys, T* values, Rows rows, T* qkv, index_t stride, index_t q_heads,
                                        index_t kv_heads, index_t head_dim, bool rotate, const std::int64_t* positions,
                                        rope_config cfg, const float* cache_cos, const float* cache_sin,
                                        index_t cache_rows) {
    const index_t r = blockIdx.x;
    T* row = qkv + r * stride;
    if (rotate) {
        float* s_cos = dynamic_shared<float>();  // cos[pairs], sin[pairs]
        float* s_sin = s_cos + cfg.rotary_dim / 2;
        rope_load_angles(s_cos, s_sin, static_cast<index_t>(positions[r]), cfg, cache_cos, cache_sin, cache_rows, 1.0f);
        rope_rotate_token<T, V>(row, q_heads + kv_heads, head_dim, cfg, s_cos, s_sin);
        __syncthreads();  // the keys other threads of the block rotated are copied below
    }
    const index_t at = rows(r);
    if (at < 0) return;
    const index_t width = kv_heads * head_dim;
    const T* k = row + q_heads * head_dim;
    const T* v = k + width;
    T* to_k = keys + at * width;
    T* to_v = values + at * width;
    if constexpr (V == 1) {
        for (index_t i = threadIdx.x; i < width; i += blockDim.x) {
            to_k[i] = k[i];
            to_v[i] = v[i];
        }
    } else {  // 16-byte vectors (rope_vector<T, 1> would be 16 bytes too: alignas)
        using vec = rope_vector<T, V>;
        for (index_t i = threadIdx.x; i < width / V; i += blockDim.x) {
            reinterpret_cast<vec*>(to_k)[i] = reinterpret_cast<const vec*>(k)[i];
            reinterpret_cast<vec*>(to_v)[i] = reinterpret_cast<const vec*>(v)[i];
        }
    }
}

// A session's cache rows: token r = b * n + t goes to row b * capacity +
// start[b] + t when t < count[b] (right padding is not kept).
struct contiguous_cache_rows {
    index_t n = 1, capacity = 0;
    const std::int32_t* start = nullptr;  // (B) first cache position written
    const std::int32_t* count = nullptr;  // (B) tokens kept
    __device__ index_t operator()(index_t r) const {
        const index_t b = r / n, t = r % n;
        return t < count[b] ? b * capacity + start[b] + t : -1;
    }
};

// A paged step's cache rows (model_paged.cuh): stacked row r belongs to
// sequence seq[r] at position pos[r], which lives in block
// block_tables(seq[r], pos[r] / bs) at row pos[r] % bs of the pool's layer
// (blocks, bs, Hkv, Dh).
struct paged_cache_rows {
    const std::int32_t* block_tables = nullptr;  // (S, max_blocks)
    index_t max_blocks = 0, block_size = 0;
    const std::int32_t* seq = nullptr;  // (N) slot of each row
    const std::int32_t* pos = nullptr;  // (N) position of each row
    __device__ index_t operator()(index_t r) const {
        const index_t p = pos[r];
        return static_cast<index_t>(block_tables[static_cast<index_t>(seq[r]) * max_blocks + p / block_size]) *
                   block_size +
               p % block_size;
    }
};

// Launches rope_write_cache_kernel over the `tokens` rows of qkv (row r at
// qkv + r * stride, positions[r] its position); rope == nullptr: no rotation.
template <class T, class Rows>
void rope_write_cache(T* keys, T* values, Rows rows, T* qkv, index_t tokens, index_t stride, index_t q_heads,
                      index_t kv_heads, index_t head_dim, const std::int64_t* positions, const rope_cache* rope,
                      cudaStream_t stream) {
    if (tokens == 0) return;
    constexpr int W = 16 / static_cast<int>(sizeof(T));
    const rope_config cfg = rope != nullptr ? rope->config : rope_config{};
    const auto aligned = [](const T* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
    // The 16-byte path: the rotation's conditions on q and k (rope_vectorizable), whole vectors per
    // cache row, and every pointer aligned.
    const bool vectorized =
        (rope == nullptr || rope_vectorizable(tensor_view<T, 4>(qkv, {1, tokens, q_heads + kv_heads, head_dim},
                                                                {tokens * stride, stride, head_dim, 1}),
                                              cfg)) &&
        stride % W == 0 && head_dim % W == 0 && aligned(qkv) && aligned(keys) && aligned(values);
    const std::size_t shared = rope != nullptr ? static_cast<std::size_t>(cfg.rotary_dim) * sizeof(float) : 0;
    const float* cos = rope != nullptr ? rope->cos.data() : nullptr;
    const float* sin = rope != nullptr ? rope->sin.data() : nullptr;
    const index_t table = rope != nullptr ? rope->max_positions : 0;
    if (vectorized)
        launch(rope_write_cache_kernel<T, W, Rows>, static_cast<unsigned>(tokens), 128, shared, stream, keys, values,
               rows, qkv, stride, q_heads, kv_heads, head_dim, rope != nullptr, positions, cfg, cos, sin, table);
    else
        launch(rope_write_cache_kernel<T, 1, Rows>, static_cast<unsigned>(tokens), 128, shared, stream, keys, values,
               rows, qkv, stride, q_heads, kv_heads, head_dim, rope != nullptr, positions, cfg, cos, sin, table);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// ---- v4: RoPE in the QKV projection's epilogue ---------------------------------
//
// A decode step computes qkv = h Wqkv^T (+ b) for a few rows of h, then v3
// rotates and stores. v4 does the projection itself, as a GEMV (gemv.cuh's
// pair_gemv_kernel: two weight rows per warp, at most 8 rows of h), and rotates
// the results while they are still in registers:
//
//     a warp per rotation pair: the two features (f0, f1) that RoPE turns
//     together (rotate_half: i and i + R/2 of a head; interleaved: 2i, 2i + 1)
//     are two rows of Wqkv. The warp reads both rows once (16-byte vectors,
//     four loads of each row in flight per lane: a Llama-3.2-1B step has only
//     ~12 of these warps per SM of an H100), dots them with every row m of h,
//     and then lane m adds the bias, rotates (f0, f1) by row m's angle (the
//     table's value, or the same sincosf past it) and writes them: to qkv, and
//     for k and v also to the token's cache row (the same functors as v3).
//
// Features RoPE leaves alone (v's heads, a partial rotary's tail, GPT-2's
// everything) go two neighbours per warp through the same code, unrotated.
// What it saves against cuBLAS + v3: one launch per layer, and q and k
// rounded once instead of twice (after the product, then after the rotation):
// the result is not v3's bits but within a rounding of them. Like any GEMV at
// a few rows, the weights' bytes set its time: 12.6 MB for Llama-3.2-1B's
// Wqkv in bf16, about 3 µs at 4 TB/s, against a few µs per launch it removes
// (expected; measured on an H200, 2026-12-04: 13.6 µs against 14.9 µs for
// cuBLAS + rope_write_cache at one row, `tinyllm bench qkv_rope_cache`).
inline constexpr int qkv_gemv_max_rows = pair_gemv_max_rows;  // rows of h per launch

// The features (n0, n1) of a row of qkv that warp `unit` computes, and the RoPE
// pair that rotates them (pair < 0: none). unit = head * ceil(Dh / 2) + j; the
// first rotated_heads heads (q's and k's) rotate their first rotary_dim / 2
// units. n1 < 0: an odd head dim's last feature, alone.
struct qkv_unit {
    index_t n0, n1, pair;
};

__device__ inline qkv_unit qkv_unit_of(index_t unit, index_t rotated_heads, index_t head_dim, bool rotate,
                                       const rope_config& cfg) {
    const index_t per_head = (head_dim + 1) / 2;
    const index_t h = unit / per_head, j = unit % per_head;
    const index_t pairs = rotate && h < rotated_heads ? cfg.rotary_dim / 2 : 0;
    index_t f0, f1, pair = -1;
    if (j < pairs) {
        rope_pair_features(cfg.pairing, cfg.rotary_dim, j, &f0, &f1);
        pair = j;
    } else {  // the unrotated features, two neighbours at a time
        f0 = 2 * pairs + 2 * (j - pairs);
        f1 = f0 + 1 < head_dim ? f0 + 1 : -1;
    }
    return {h * head_dim + f0, f1 < 0 ? -1 : h * head_dim + f1, pair};
}

// v4's epilogue for pair_gemv_kernel (gemv.cuh): qkv (m_rows, (Hq + 2 Hkv) Dh) =
// x (m_rows, K) w^T (+ bias), rotated, k and v also into the cache rows rows(m);
// see above.
template <class T, class Rows>
struct qkv_rope_epilogue {
    T* qkv;
    T* keys;
    T* values;
    Rows rows;
    const T* bias;  // (Nqkv) or null
    index_t q_heads, kv_heads, head_dim;
    bool rotate;
    const std::int64_t* positions;  // (m_rows)
    rope_config cfg;
    const float* cache_cos;
    const float* cache_sin;
    index_t cache_rows;

    struct unit_state {
        index_t n0, n1;  // the rows of Wqkv read (both rows of Wqkv)
        qkv_unit u;
    };

    __device__ unit_state unit(index_t unit) const {
        const qkv_unit u = qkv_unit_of(unit, q_heads + kv_heads, head_dim, rotate, cfg);
        // A lone feature reads its row twice, and drops the copy.
        return {u.n0, u.n1 >= 0 ? u.n1 : u.n0, u};
    }

    index_t units() const { return (q_heads + 2 * kv_heads) * ((head_dim + 1) / 2); }

    __device__ void finish(const unit_state& state, int m, float f0, float f1) const {
        const qkv_unit& u = state.u;
        const bool two = u.n1 >= 0;
        const index_t heads = q_heads + 2 * kv_heads, h = u.n0 / head_dim, width = kv_heads * head_dim;
        f0 += bias != nullptr ? to_float(bias[u.n0]) : 0.0f;
        f1 += bias != nullptr && two ? to_float(bias[u.n1]) : 0.0f;
        if (u.pair >= 0) {
            float c, s;
            rope_angle_of(&c, &s, static_cast<index_t>(positions[m]), u.pair, cfg, cache_cos, cache_sin, cache_rows);
            rope_rotate(&f0, &f1, c, s);
        }
        T* out = qkv + m * heads * head_dim;
        out[u.n0] = from_float<T>(f0);
        if (two) out[u.n1] = from_float<T>(f1);
        if (h < q_heads) return;  // q stays in qkv
        const index_t at = rows(m);
        if (at < 0) return;  // a padding token
        const bool key = h < q_heads + kv_heads;
        const index_t first = (key ? q_heads : q_heads + kv_heads) * head_dim;  // the part's first feature in qkv
        T* to = (key ? keys : values) + at * width;
        to[u.n0 - first] = from_float<T>(f0);
        if (two) to[u.n1 - first] = from_float<T>(f1);
    }
};

// v4's epilogue for tokens rows (checked on the host): qkv (tokens, (Hq + 2 Hkv)
// Dh, contiguous), q and k rotated at positions[r] (rope == nullptr: not
// rotated), bias (Nqkv) or nullptr added first, k and v stored into cache row
// rows(r). tokens <= qkv_gemv_max_rows. The product itself is the caller's:
// qkv_rope_write_cache below for dense weights, quantize.cuh's
// launch_quantized_pair_gemv for quantized ones.
template <class T, class Rows>
qkv_rope_epilogue<T, Rows> make_qkv_rope_epilogue(T* qkv, T* keys, T* values, Rows rows, index_t tokens,
                                                  const std::type_identity_t<T>* bias, index_t q_heads,
                                                  index_t kv_heads, index_t head_dim, const std::int64_t* positions,
                                                  const rope_cache* rope) {
    constexpr const char* op = "qkv_rope_write_cache";
    TINYLLM_EXPECT(tokens >= 0 && tokens <= qkv_gemv_max_rows, op, ": ", tokens,
                   " rows; the GEMV takes at most ", qkv_gemv_max_rows, " (cuBLAS and rope_write_cache take more)");
    TINYLLM_EXPECT(q_heads >= 1 && kv_heads >= 1 && head_dim >= 1, op, ": heads ", q_heads, "/", kv_heads,
                   ", head_dim ", head_dim, " must all be positive");
    if (rope != nullptr)
        TINYLLM_EXPECT(rope->config.rotary_dim <= head_dim, op, ": rotary_dim ", rope->config.rotary_dim,
                       " is larger than head_dim ", head_dim);
    return {qkv,
            keys,
            values,
            rows,
            bias,
            q_heads,
            kv_heads,
            head_dim,
            rope != nullptr,
            positions,
            rope != nullptr ? rope->config : rope_config{},
            rope != nullptr ? rope->cos.data() : nullptr,
            rope != nullptr ? rope->sin.data() : nullptr,
            rope != nullptr ? rope->max_positions : 0};
}

// Launches v4 (pair_gemv_kernel with qkv_rope_epilogue): qkv = x (tokens, K,
// contiguous) w^T + bias (w: (Nqkv, K) contiguous; bias may be nullptr), then
// as make_qkv_rope_epilogue says.
template <class T, class Rows>
void qkv_rope_write_cache(T* qkv, T* keys, T* values, Rows rows, const std::type_identity_t<T>* x, index_t tokens,
                          const std::type_identity_t<T>* w, const std::type_identity_t<T>* bias, index_t K,
                          index_t q_heads, index_t kv_heads, index_t head_dim, const std::int64_t* positions,
                          const rope_cache* rope, cudaStream_t stream) {
    const qkv_rope_epilogue<T, Rows> epi =
        make_qkv_rope_epilogue<T>(qkv, keys, values, rows, tokens, bias, q_heads, kv_heads, head_dim, positions, rope);
    TINYLLM_EXPECT(K >= 1, "qkv_rope_write_cache: K = ", K, " must be positive");
    launch_pair_gemv<T>("qkv_rope_write_cache", epi, x, tokens, w, w, K, epi.units(), stream);
}

}  // namespace detail

// The most entries (positions x rotary_dim/2) a rope_cache table may hold.
inline constexpr index_t rope_cache_max_entries = index_t{1} << 32;

// Build the cos/sin table of `cfg` for positions [0, max_positions) on the device.
// The table's width is rotary_dim/2, so rotary_dim must be explicit: for the
// default (0, the whole head dim) pass resolve_rope(cfg, head_dim).
template <class = void>  // compiled only where called (launch.cuh)
inline rope_cache make_rope_cache(const rope_config& config, index_t max_positions, cudaStream_t stream = nullptr) {
    const rope_config cfg = tinyllm::detail::resolve_rope_without_head_dim(config, "make_rope_cache");
    TINYLLM_EXPECT(max_positions >= 1, "make_rope_cache: max_positions = ", max_positions, " must be at least 1");
    // Each table holds max_positions x rotary_dim/2 floats: bounded (2^32 entries, 16 GiB a table)
    // before the product is formed, so that it cannot wrap into a small table that is then read
    // far past its end.
    TINYLLM_EXPECT(max_positions <= rope_cache_max_entries / (cfg.rotary_dim / 2), "make_rope_cache: max_positions = ",
                   max_positions, " x rotary_dim/2 = ", cfg.rotary_dim / 2, " exceeds the ", rope_cache_max_entries,
                   " entries a table may hold");
    rope_cache cache;
    cache.config = cfg;
    cache.max_positions = max_positions;
    const index_t n = max_positions * (cfg.rotary_dim / 2);
    cache.cos = device_buffer<float>(static_cast<std::size_t>(n));
    cache.sin = device_buffer<float>(static_cast<std::size_t>(n));
    const int threads = 256;
    const index_t blocks = ceil_div<index_t>(n, threads);
    launch(detail::rope_cache_kernel<float>, static_cast<unsigned>(blocks < 65535 ? blocks : 65535), threads, 0, stream,
           cache.cos.data(), cache.sin.data(), max_positions, cfg);
    TINYLLM_CUDA_CHECK_LAUNCH();
    return cache;
}

// v1: RoPE in place on x (q or k), sines and cosines computed per token.
// Same meaning as tinyllm::cpu::apply_rope. T: float, bfloat16 or float16 (math
// in float); P: int32 or int64 position ids on the device.
template <class T, class P>
void apply_rope_on_the_fly(tensor_view<T, 4> x /*(B, T, H, D)*/, tensor_view<P, 2> positions /*(B, T)*/,
                           const rope_config& cfg, cudaStream_t stream = nullptr) {
    const rope_config r = detail::expect_rope_args(x, positions, cfg, "apply_rope_on_the_fly");
    detail::launch_rope(x, positions, 0, r, nullptr, nullptr, 0, stream);
}

// v1 with the positions of a contiguous run: token t of every row is at
// position_offset + t (no position ids to upload).
template <class T>
void apply_rope_on_the_fly(tensor_view<T, 4> x /*(B, T, H, D)*/, const rope_config& cfg, index_t position_offset = 0,
                           cudaStream_t stream = nullptr) {
    const rope_config r = detail::expect_rope_args(x, cfg, "apply_rope_on_the_fly");
    tinyllm::detail::expect_position_offset(position_offset, x.extent(1), "apply_rope_on_the_fly");
    detail::launch_rope(x, tensor_view<const std::int32_t, 2>{}, position_offset, r, nullptr, nullptr, 0, stream);
}

namespace detail {
inline void expect_rope_cache(const rope_cache& cache) {
    TINYLLM_EXPECT(cache.max_positions >= 1 && cache.config.rotary_dim > 1 &&
                       cache.max_positions <= rope_cache_max_entries / (cache.config.rotary_dim / 2) &&
                       cache.cos.size() == static_cast<std::size_t>(cache.max_positions * (cache.config.rotary_dim / 2)),
                   "apply_rope_cached: the cache is empty or inconsistent; build it with make_rope_cache");
}
}  // namespace detail

// v2: RoPE in place on x, sines and cosines read from `cache` (positions beyond
// the cache are computed instead).
template <class T, class P>
void apply_rope_cached(tensor_view<T, 4> x /*(B, T, H, D)*/, tensor_view<P, 2> positions /*(B, T)*/,
                       const rope_cache& cache, cudaStream_t stream = nullptr) {
    detail::expect_rope_cache(cache);
    const rope_config r = detail::expect_rope_args(x, positions, cache.config, "apply_rope_cached");
    detail::launch_rope(x, positions, 0, r, cache.cos.data(), cache.sin.data(), cache.max_positions, stream);
}

// v2 with positions position_offset + t.
template <class T>
void apply_rope_cached(tensor_view<T, 4> x /*(B, T, H, D)*/, const rope_cache& cache, index_t position_offset = 0,
                       cudaStream_t stream = nullptr) {
    detail::expect_rope_cache(cache);
    const rope_config r = detail::expect_rope_args(x, cache.config, "apply_rope_cached");
    tinyllm::detail::expect_position_offset(position_offset, x.extent(1), "apply_rope_cached");
    detail::launch_rope(x, tensor_view<const std::int32_t, 2>{}, position_offset, r, cache.cos.data(),
                        cache.sin.data(), cache.max_positions, stream);
}

// The default spelling, matching tinyllm::cpu::apply_rope: v1 (needs no cache).
template <class T, class P>
void apply_rope(tensor_view<T, 4> x /*(B, T, H, D)*/, tensor_view<P, 2> positions /*(B, T)*/, const rope_config& cfg,
                cudaStream_t stream = nullptr) {
    apply_rope_on_the_fly(x, positions, cfg, stream);
}

// Positions position_offset + t: apply_rope(x, cfg) for a prompt, apply_rope(x,
// cfg, cache_length) when decoding.
template <class T>
void apply_rope(tensor_view<T, 4> x /*(B, T, H, D)*/, const rope_config& cfg, index_t position_offset = 0,
                cudaStream_t stream = nullptr) {
    apply_rope_on_the_fly(x, cfg, position_offset, stream);
}

// q and k together.
template <class T, class P>
void apply_rope(tensor_view<T, 4> q /*(B, T, Hq, D)*/, tensor_view<T, 4> k /*(B, T, Hk, D)*/,
                tensor_view<P, 2> positions /*(B, T)*/, const rope_config& cfg, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_rope_pair("apply_rope", q, k);  // two launches: an element of both would turn twice
    apply_rope_on_the_fly(q, positions, cfg, stream);
    apply_rope_on_the_fly(k, positions, cfg, stream);
}
template <class T>
void apply_rope(tensor_view<T, 4> q /*(B, T, Hq, D)*/, tensor_view<T, 4> k /*(B, T, Hk, D)*/, const rope_config& cfg,
                index_t position_offset = 0, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_rope_pair("apply_rope", q, k);
    apply_rope_on_the_fly(q, cfg, position_offset, stream);
    apply_rope_on_the_fly(k, cfg, position_offset, stream);
}

// ---- Backward -----------------------------------------------------------------
//
// RoPE rotates each pair (a, b) of a head by angle = pos * w_i, a linear map
// with an orthogonal matrix R(angle); its gradient flows back through the
// transpose, which is the rotation by -angle:
//
//     da = da' cos + db' sin,   db = db' cos - da' sin
//
// The kernels are the forward's (v1, sines computed per token; v2, read from a
// cache) with the sine negated as it enters shared memory — an exact negation,
// so the backward uses the forward's cosines and sines bit for bit, and gives
// the same values as cpu::apply_rope_backward (the same TINYLLM_HOST_DEVICE
// inverse frequency, angle and rotation). Every pairing, scaling and
// rotary_dim of the forward is supported; features beyond rotary_dim are left
// as they are (their gradient passes through). dx is rotated in place.

// The backward of apply_rope(x, positions, cfg): dx (B, T, H, D) holds the
// gradient of the rotated x on entry and the gradient of x on return.
// T: float, bfloat16 or float16 (math in float); P: int32 or int64 on the device.
template <class T, class P>
void apply_rope_backward(tensor_view<T, 4> dx /*(B, T, H, D)*/, tensor_view<P, 2> positions /*(B, T)*/,
                         const rope_config& cfg, cudaStream_t stream = nullptr) {
    const rope_config r = detail::expect_rope_args(dx, positions, cfg, "apply_rope_backward", "dx");
    detail::launch_rope(dx, positions, 0, r, nullptr, nullptr, 0, stream, -1.0f);
}

// The backward of apply_rope(x, cfg, position_offset): token t at position_offset + t.
template <class T>
void apply_rope_backward(tensor_view<T, 4> dx /*(B, T, H, D)*/, const rope_config& cfg, index_t position_offset = 0,
                         cudaStream_t stream = nullptr) {
    const rope_config r = detail::expect_rope_args(dx, cfg, "apply_rope_backward", "dx");
    tinyllm::detail::expect_position_offset(position_offset, dx.extent(1), "apply_rope_backward");
    detail::launch_rope(dx, tensor_view<const std::int32_t, 2>{}, position_offset, r, nullptr, nullptr, 0, stream,
                        -1.0f);
}

// The backward of apply_rope_cached(x, cache, position_offset), reading the
// cosines and sines from `cache` (positions beyond it are computed).
template <class T>
void apply_rope_backward_cached(tensor_view<T, 4> dx /*(B, T, H, D)*/, const rope_cache& cache,
                                index_t position_offset = 0, cudaStream_t stream = nullptr) {
    detail::expect_rope_cache(cache);
    const rope_config r = detail::expect_rope_args(dx, cache.config, "apply_rope_backward_cached", "dx");
    tinyllm::detail::expect_position_offset(position_offset, dx.extent(1), "apply_rope_backward_cached");
    detail::launch_rope(dx, tensor_view<const std::int32_t, 2>{}, position_offset, r, cache.cos.data(),
                        cache.sin.data(), cache.max_positions, stream, -1.0f);
}

// x(b, t, :) += PE(positions(b, t), :) (the sinusoidal table, computed in place).
template <class T, class P>
void add_sinusoidal(tensor_view<T, 3> x /*(B, T, D)*/, tensor_view<P, 2> positions /*(B, T)*/, float base = 10000.0f,
                    cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_add_sinusoidal_args(x, positions, base);  // positional.hpp, the CPU's checks
    const index_t tokens = x.extent(0) * x.extent(1);
    if (tokens == 0 || x.extent(2) == 0) return;
    TINYLLM_EXPECT(tokens <= 0x7fffffff, "add_sinusoidal: B * T = ", tokens, " tokens exceed the grid limit");
    launch(detail::add_sinusoidal_kernel<T, std::remove_const_t<P>>, static_cast<unsigned>(tokens), 128, 0, stream,
           x.data(), x.extent(1), x.extent(2), x.stride(0), x.stride(1), x.stride(2), positions.data(),
           positions.stride(0), positions.stride(1), base);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// x(b, t, :) += table(positions(b, t), :) (GPT-2's learned positions). A
// position outside [0, P_max) turns that token's row into NaN.
template <class T, class P>
void add_learned_positions(tensor_view<T, 3> x /*(B, T, D)*/, std::type_identity_t<tensor_view<const T, 2>> table /*(P_max, D)*/,
                           tensor_view<P, 2> positions /*(B, T)*/, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_add_learned_args(x, table, positions);  // positional.hpp, the CPU's checks
    const index_t tokens = x.extent(0) * x.extent(1);
    if (tokens == 0 || x.extent(2) == 0) return;
    TINYLLM_EXPECT(tokens <= 0x7fffffff, "add_learned_positions: B * T = ", tokens, " tokens exceed the grid limit");
    launch(detail::add_learned_kernel<T, std::remove_const_t<P>>, static_cast<unsigned>(tokens), 128, 0, stream,
           x.data(), x.extent(1), x.extent(2), x.stride(0), x.stride(1), x.stride(2), table.data(), table.extent(0),
           table.stride(0), table.stride(1), positions.data(), positions.stride(0), positions.stride(1));
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The backward of add_learned_positions for the table: dtable(p, :) (+)= the
// sum of dout's rows at position p, deterministic (embedding.cuh's scatter-add,
// the CPU's order). dtable (P_max, D) with contiguous rows, overwritten or, with
// `accumulate`, added to; dout (B, T, D); positions (B, T) int32 or int64, as
// given to the forward. The workspace must hold B * T tokens and P_max rows.
// check: validate the positions first, waiting for the stream, and throw
// naming the first one outside the table before anything is written.
template <class T, class P>
void learned_positions_backward(tensor_view<T, 2> dtable /*(P_max, D)*/,
                                std::type_identity_t<tensor_view<const T, 3>> dout /*(B, T, D)*/,
                                tensor_view<P, 2> positions /*(B, T)*/, bool accumulate,
                                embedding_backward_workspace& ws, bool check = true, cudaStream_t stream = nullptr) {
    static_assert(tinyllm::detail::is_position_type_v<P>, "positions must be int32 or int64");
    using Id = std::remove_const_t<P>;
    detail::scatter_add_rows<T, Id>(dtable, tensor_view<const Id, 2>(positions), dout, 1.0f, accumulate, ws, check,
                                    stream, "learned_positions_backward", "positions", "the table's");
}

// The same with a temporary workspace: it allocates, and waits for `stream`.
template <class T, class P>
void learned_positions_backward(tensor_view<T, 2> dtable /*(P_max, D)*/,
                                std::type_identity_t<tensor_view<const T, 3>> dout /*(B, T, D)*/,
                                tensor_view<P, 2> positions /*(B, T)*/, bool accumulate = false,
                                cudaStream_t stream = nullptr) {
    embedding_backward_workspace ws(positions.extent(0) * positions.extent(1), dtable.extent(0));
    learned_positions_backward<T, P>(dtable, dout, positions, accumulate, ws, true, stream);
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace tinyllm::cuda
