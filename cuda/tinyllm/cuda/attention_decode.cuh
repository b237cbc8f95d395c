// tinyllm/cuda/attention_decode.cuh — split-K "flash-decoding" for one (or a
// few) new queries against a long KV cache, and a device KV cache.
//
// Two rungs: rung 1 (attention_decode_tiles, this file) runs v3's tile kernel
// over key splits; rung 2 (attention_decode_warps, attention_decode_warps.cuh,
// included at the end) maps the same algorithm onto every warp with 16-byte
// loads, and is what attention_decode runs (falling back to rung 1 where rung 2
// does not apply). What follows describes the algorithm both share, and rung 1.
//
// Decoding asks a different question from prefill. One new token per sequence
// means Tq = 1: the work is B*Hq dot products against L cached keys, ~4*B*Hq*L*D
// flops, while K and V are 2*B*L*Hkv*D elements that must all be read. Every
// byte of K/V is used for only Hq/Hkv * Tq multiply-adds, so decode is bound
// by memory bandwidth, and the goal is to read the cache once, at full speed:
//
//   * split-K: the prefill grid (query tiles x heads x batch) has only B*Hq
//     blocks here — 256 for B = 8, Hq = 32, too few to fill a GPU and each
//     walking 32768 keys alone. Flash-decoding (Dao et al. 2023) also splits
//     the KEYS: block (split, hkv, b) runs the online softmax of v3 over one
//     chunk of keys and writes its unnormalized o with its (m, l). A second,
//     tiny kernel merges the splits of each query row:
//         M = max_s m_s,   w_s = exp(m_s - M),
//         O = sum_s w_s o_s / sum_s w_s l_s
//     which is exactly the online-softmax update applied to whole chunks.
//   * GQA-aware: the rows of a block are ALL the query heads that share its KV
//     head (Hq/Hkv of them) times the Tq new queries, so each K/V element is
//     loaded from memory once and used for every one of them. A kernel that
//     maps blocks to query heads would read the cache Hq/Hkv times.
//
// Bytes moved: K and V once (2 * B*L*Hkv*D * sizeof(T)), plus Q, O and the
// partials (B*Hq*Tq*splits*(D+2) floats, written and read once) — for L = 32768
// the partials are well under 1% of the cache.
//
// Limits (rejected on the host): Hq/Hkv * Tq <= 32 rows per KV head, D <= 256.
// Every option of the CPU reference is supported. Causal alignment is bottom-
// right: the Tq queries are the last Tq positions of the cache.
#pragma once

#include <tinyllm/cuda/attention_common.cuh>
#include <tinyllm/cuda/attention_flash.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>

namespace tinyllm::cuda {

// Scratch memory for the split partial results, grown on demand and reused.
class attention_workspace {
public:
    float* floats(std::size_t n) {
        if (buffer_.size() < n) buffer_ = device_buffer<float>(n);
        return buffer_.data();
    }
    std::size_t size() const { return buffer_.size(); }

private:
    device_buffer<float> buffer_;
};

namespace detail {

inline constexpr int decode_rows = 32;     // query rows per KV head a block can hold
inline constexpr int decode_min_keys = 256;  // no split shorter than this

// Block per query row (b, h, i): merge the splits (see the top of this file).
template <class T>
__global__ void attention_decode_combine_kernel(attention_args<T> a, int splits, const float* part_o,
                                                const float* part_ml) {
    allow_next_grid();  // may be launched chained (launch.cuh): the partials are read after the wait
    wait_for_prior_grids();
    const index_t row = blockIdx.x;  // ((b * Hq + h) * Tq + i)
    const int i = static_cast<int>(row % a.Tq);
    const int h = static_cast<int>((row / a.Tq) % a.Hq);
    const int b = static_cast<int>(row / (static_cast<index_t>(a.Tq) * a.Hq));
    const float* ml = part_ml + row * splits * 2;
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, ml[2 * s]);
    float l = 0.0f;
    for (int s = 0; s < splits; ++s) l += exp_shifted(ml[2 * s], m) * ml[2 * s + 1];
    for (int d = threadIdx.x; d < a.D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) acc += exp_shifted(ml[2 * s], m) * part_o[(row * splits + s) * a.D + d];
        a.o_row(b, i, h)[d] = from_float<T>(l != 0.0f ? acc / l : 0.0f);
    }
}

// How many key splits: enough blocks for about `blocks_per_sm` per SM, never
// chunks under `min_keys` keys. Rung 1 aims at 4 blocks per SM with splits of
// at least 256 keys (decode_min_keys); rung 2 (attention_decode_warps.cuh), whose
// blocks are lighter, at 64 per SM with splits of at least 64 keys.
inline int decode_splits(index_t tk, index_t blocks_without_split, int sms, index_t blocks_per_sm = 4,
                         index_t min_keys = decode_min_keys) {
    index_t want = ceil_div<index_t>(blocks_per_sm * static_cast<index_t>(sms),
                                     blocks_without_split > 0 ? blocks_without_split : 1);
    const index_t most = ceil_div<index_t>(tk > 0 ? tk : 1, min_keys);
    if (want > most) want = most;
    if (want < 1) want = 1;
    return static_cast<int>(want);
}

// The limit both rungs share: the Hq/Hkv * Tq query rows of a KV head fit one block.
template <class Args>
void expect_decode_rows(const Args& a, const char* op) {
    const index_t rows_per_head = static_cast<index_t>(a.group) * a.Tq;  // 64 bits: Tq may be near 2^30
    TINYLLM_EXPECT(rows_per_head <= decode_rows, op, ": Hq/Hkv * Tq = ", a.group, " * ", a.Tq, " = ", rows_per_head,
                   " query rows share each KV head; at most ", decode_rows,
                   " are supported (use attention_flash or attention_mma for prefill)");
}

}  // namespace detail

// Rung 1 (tiles): out (B, Tq, Hq, D) = attention of the Tq new queries q over
// k, v (B, Tk, Hkv, D) with v3's tile kernel per key split. splits = 0 picks
// the number of key splits from the GPU size. Messages name attention_decode:
// it is what attention_decode falls back to.
template <class T>
void attention_decode_tiles(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q,
                            std::type_identity_t<tensor_view<const T, 4>> k,
                            std::type_identity_t<tensor_view<const T, 4>> v, const attention_options& opts,
                            attention_workspace& workspace, int splits = 0, cudaStream_t stream = nullptr) {
    auto a = detail::make_attention_args<T>(out, q, k, v, opts, "attention_decode");
    // Every product of sizes below is taken in 64 bits: group * Tq, say, passes 2^31 for Tq near 2^30.
    detail::expect_decode_rows(a, "attention_decode");
    TINYLLM_EXPECT(a.D <= 256, "attention_decode supports head dims up to 256, got ", a.D);
    TINYLLM_EXPECT(splits >= 0, "attention_decode: splits = ", splits, " must be >= 0 (0: automatic)");
    TINYLLM_EXPECT(a.B <= 65535 && a.Hkv <= 65535, "attention_decode: B = ", a.B, " and Hkv = ", a.Hkv,
                   " must be at most 65535 (grid limits)");
    if (out.size() == 0) return;
    // The combine kernel has a block per query row: check its grid before allocating anything.
    const index_t rows = static_cast<index_t>(a.B) * a.Hq * a.Tq;
    const dim3 combine_grid = detail::checked_grid(
        rows, 1, 1, "attention_decode",
        tinyllm::detail::cat("B * Hq * Tq = ", rows, " query rows (a block each in the combine kernel)"));
    if (splits == 0) {
        splits = detail::decode_splits(a.Tk, static_cast<index_t>(a.B) * a.Hkv, current_multiprocessors());
    }
    // Keys per split, a multiple of the tile; then drop splits that would be empty.
    index_t per_split = ceil_div<index_t>(a.Tk > 0 ? a.Tk : 1, splits);
    per_split = ceil_div<index_t>(per_split, detail::flash_bk) * detail::flash_bk;
    splits = static_cast<int>(ceil_div<index_t>(a.Tk > 0 ? a.Tk : 1, per_split));
    TINYLLM_EXPECT(splits <= 65535, "attention_decode: ", splits, " splits exceed the grid limit");
    // The kernel takes the keys per split as an int. Rounded up to the tile, one split over
    // Tk > 2^31 - 32 keys would be 2^31; it only has to cover Tk (< 2^31 - 1), so cap it.
    if (per_split > 2147483647) per_split = 2147483647;
    const dim3 split_grid =
        detail::checked_grid(splits, a.Hkv, a.B, "attention_decode",
                             tinyllm::detail::cat("(splits, Hkv, B) = (", splits, ", ", a.Hkv, ", ", a.B, ")"));

    // Partial results: (rows, splits, D) outputs, then (rows, splits, 2) (m, l) pairs.
    const index_t partials = rows * splits;
    float* part_o = workspace.floats(static_cast<std::size_t>(partials * (a.D + 2)));
    float* part_ml = part_o + partials * a.D;

    const auto layout = detail::flash_smem::make(detail::decode_rows, a.D);
    const std::size_t bytes = sizeof(float) * static_cast<std::size_t>(layout.total);
    auto kernel = detail::attention_flash_kernel<T, detail::decode_rows>;
    detail::set_shared_memory(kernel, bytes, "attention_decode");
    launch(kernel, split_grid, detail::flash_threads, bytes, stream, a, static_cast<int>(per_split), part_o, part_ml,
           tensor_view<float, 3>{});
    TINYLLM_CUDA_CHECK_LAUNCH();
    launch_chained(detail::attention_decode_combine_kernel<T>, combine_grid, 128, 0, stream, a, splits, part_o, part_ml);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

}  // namespace tinyllm::cuda

#include <tinyllm/cuda/attention_decode_warps.cuh>

namespace tinyllm::cuda {

// ---- device KV cache -------------------------------------------------------------

// tinyllm::kv_cache (tinyllm/attention.hpp) with its storage on the device:
// (B, capacity, Hkv, D) for K and for V, one per layer, a length shared by the
// batch rows. append() copies (B, Tn, Hkv, D) device tensors into positions
// [length, length + Tn) with one strided copy each; keys()/values() are the
// first `length` positions, ready for attention_decode.
template <class T>
class kv_cache {
public:
    kv_cache() = default;
    kv_cache(index_t batch, index_t capacity, index_t kv_heads, index_t head_dim)
        : shape_{batch, capacity, kv_heads, head_dim} {
        TINYLLM_EXPECT(batch >= 1 && capacity >= 1 && kv_heads >= 1 && head_dim >= 1, "cuda::kv_cache: batch = ", batch,
                       ", capacity = ", capacity, ", kv_heads = ", kv_heads, ", head_dim = ", head_dim,
                       " must all be at least 1");
        k_ = device_buffer<T>(static_cast<std::size_t>(shape_.product()));
        v_ = device_buffer<T>(static_cast<std::size_t>(shape_.product()));
    }

    index_t batch() const { return shape_[0]; }
    index_t capacity() const { return shape_[1]; }
    index_t kv_heads() const { return shape_[2]; }
    index_t head_dim() const { return shape_[3]; }
    index_t length() const { return length_; }

    // k_new, v_new: (B, Tn, Hkv, D), contiguous, on the device.
    void append(tensor_view<const T, 4> k_new, tensor_view<const T, 4> v_new, cudaStream_t stream = nullptr) {
        const extents<4> want{batch(), k_new.extent(1), kv_heads(), head_dim()};
        expect_shape(k_new, want, "cuda::kv_cache::append: k_new");
        expect_shape(v_new, want, "cuda::kv_cache::append: v_new");
        TINYLLM_EXPECT(k_new.is_contiguous() && v_new.is_contiguous(), "cuda::kv_cache::append: k_new and v_new must be contiguous");
        const index_t n = k_new.extent(1);
        TINYLLM_EXPECT(length_ + n <= capacity(), "cuda::kv_cache::append: ", n, " new positions after ", length_,
                       " exceed the capacity ", capacity());
        if (n == 0) return;
        // B rows of n*Hkv*D elements, each landing at position `length` of its batch row.
        const std::size_t row = static_cast<std::size_t>(n * kv_heads() * head_dim()) * sizeof(T);
        const std::size_t pitch = static_cast<std::size_t>(capacity() * kv_heads() * head_dim()) * sizeof(T);
        const std::size_t offset = static_cast<std::size_t>(length_ * kv_heads() * head_dim());
        TINYLLM_CUDA_CHECK(cudaMemcpy2DAsync(k_.data() + offset, pitch, k_new.data(), row, row,
                                             static_cast<std::size_t>(batch()), cudaMemcpyDeviceToDevice, stream));
        TINYLLM_CUDA_CHECK(cudaMemcpy2DAsync(v_.data() + offset, pitch, v_new.data(), row, row,
                                             static_cast<std::size_t>(batch()), cudaMemcpyDeviceToDevice, stream));
        length_ += n;
    }

    // (B, length, Hkv, D) device views (batch stride capacity * Hkv * D).
    tensor_view<const T, 4> keys() const { return storage(k_).narrow(1, 0, length_); }
    tensor_view<const T, 4> values() const { return storage(v_).narrow(1, 0, length_); }
    void clear() { length_ = 0; }

private:
    tensor_view<const T, 4> storage(const device_buffer<T>& buf) const { return {buf.data(), shape_}; }

    extents<4> shape_{};
    device_buffer<T> k_, v_;
    index_t length_ = 0;
};

// Decode against a device cache: q (B, Tn, Hq, D) are its last Tn positions.
template <class T>
void attention_decode(tensor_view<T, 4> out, std::type_identity_t<tensor_view<const T, 4>> q, const kv_cache<T>& cache,
                      const attention_options& opts, attention_workspace& workspace, cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(q.extent(1) <= cache.length(), "attention_decode over a kv_cache: ", q.extent(1),
                   " queries but the cache holds only ", cache.length(), " positions (append first)");
    attention_decode<T>(out, q, cache.keys(), cache.values(), opts, workspace, 0, stream);
}

}  // namespace tinyllm::cuda
