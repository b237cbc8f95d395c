// tinyllm/kv_cache_int8.hpp — a KV cache that stores keys and values in 8 bits.
//
// What it computes. A decoder keeps, for every layer, the keys and values of
// every position it has seen (kv_cache, tinyllm/attention.hpp). At long
// contexts that cache, not the weights, fills the memory: 2 · layers · Hkv · D
// numbers per position, per sequence. kv_cache_int8 holds the same positions
// with each key vector and each value vector of one position and one KV head —
// D numbers x — as D signed bytes q and one float scale s:
//
//     s = max_d |x_d| / 127,      q_d = round(x_d / s) in [-127, 127],      x_d ≈ s · q_d
//
// symmetric absmax, as int8 weights are quantized per output row
// (tinyllm/quantize.hpp, whose step and element formulas this reuses). Per
// element the error is at most s / 2. One scale per position and head (not
// one per head for the whole cache) because a new position's keys arrive one
// at a time and their ranges differ from token to token; it costs 4 bytes
// beside D. Memory per position, layer and KV head: 2 (D + 4) bytes against
// 8 D in float32 — 3.6x less at D = 32, 3.8x at D = 64.
//
// How attention reads it. The reference dequantizes the stored positions into
// float (dequantize) and runs the float attention kernels on them: the result
// is exactly attention over the rounded keys and values, which is what the
// quality measurement needs. The float copy is a per-layer temporary, so the
// memory the cache keeps between tokens is the int8 one. (A kernel that reads
// the bytes directly inside attention would be the next rung.)
//
//     kv_cache_int8 cache(1, 512, Hkv, D);
//     cache.append(k_new, v_new);                       // (1, Tn, Hkv, D) floats each
//     tensor<float, 4> k({1, cache.length(), Hkv, D}), v(k.shape());
//     cache.dequantize(k.view(), v.view());             // the keys and values as stored
#pragma once

#include <tinyllm/error.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tinyllm {

class kv_cache_int8 {
public:
    kv_cache_int8() = default;
    kv_cache_int8(index_t batch, index_t capacity, index_t kv_heads, index_t head_dim)
        : k_(checked_shape(batch, capacity, kv_heads, head_dim)), v_(k_.shape()),
          k_scale_(extents<3>{batch, capacity, kv_heads}), v_scale_(k_scale_.shape()) {}

    index_t batch() const { return k_.extent(0); }
    index_t capacity() const { return k_.extent(1); }
    index_t kv_heads() const { return k_.extent(2); }
    index_t head_dim() const { return k_.extent(3); }
    index_t length() const { return length_; }
    // Bytes of storage for the whole capacity: the int8 values and the float scales.
    index_t bytes() const {
        return 2 * (k_.size() * static_cast<index_t>(sizeof(std::int8_t)) +
                    k_scale_.size() * static_cast<index_t>(sizeof(float)));
    }

    // Quantize and store the keys and values of the next Tn positions: (B, Tn, Hkv, D) each.
    void append(tensor_view<const float, 4> k_new, tensor_view<const float, 4> v_new) {
        const extents<4> want{batch(), k_new.extent(1), kv_heads(), head_dim()};
        expect_shape(k_new, want, "kv_cache_int8::append: k_new");
        expect_shape(v_new, want, "kv_cache_int8::append: v_new");
        const index_t n = k_new.extent(1);
        TINYLLM_EXPECT(n <= capacity() - length_, "kv_cache_int8::append: ", n, " new positions after ", length_,
                       " exceed the capacity ", capacity());
        for (index_t b = 0; b < batch(); ++b)
            for (index_t t = 0; t < n; ++t)
                for (index_t h = 0; h < kv_heads(); ++h) {
                    store(k_, k_scale_, k_new, b, t, h, "key");
                    store(v_, v_scale_, v_new, b, t, h, "value");
                }
        length_ += n;
    }

    // out_k, out_v (B, length, Hkv, D) = the stored keys and values, s · q.
    void dequantize(tensor_view<float, 4> out_k, tensor_view<float, 4> out_v) const {
        const extents<4> want{batch(), length_, kv_heads(), head_dim()};
        expect_shape(out_k, want, "kv_cache_int8::dequantize: out_k");
        expect_shape(out_v, want, "kv_cache_int8::dequantize: out_v");
        for (index_t b = 0; b < batch(); ++b)
            for (index_t t = 0; t < length_; ++t)
                for (index_t h = 0; h < kv_heads(); ++h) {
                    const float sk = k_scale_(b, t, h), sv = v_scale_(b, t, h);
                    for (index_t d = 0; d < head_dim(); ++d) {
                        out_k(b, t, h, d) = quant::dequantize_int8(k_(b, t, h, d), sk);
                        out_v(b, t, h, d) = quant::dequantize_int8(v_(b, t, h, d), sv);
                    }
                }
    }

    // The stored integers and scales (B, capacity, Hkv, D) and (B, capacity, Hkv);
    // positions from length() on are unused.
    const tensor<std::int8_t, 4>& key_values() const { return k_; }
    const tensor<std::int8_t, 4>& value_values() const { return v_; }
    const tensor<float, 3>& key_scales() const { return k_scale_; }
    const tensor<float, 3>& value_scales() const { return v_scale_; }

    // Forget everything (the storage stays allocated).
    void clear() { length_ = 0; }

    // Keep the first `length` positions (speculative decoding's rollback).
    void truncate(index_t length) {
        TINYLLM_EXPECT(length >= 0 && length <= length_, "kv_cache_int8::truncate: length ", length,
                       " is outside [0, ", length_, "]");
        length_ = length;
    }

private:
    static extents<4> checked_shape(index_t b, index_t cap, index_t h, index_t d) {
        TINYLLM_EXPECT(b >= 1 && cap >= 1 && h >= 1 && d >= 1, "kv_cache_int8: batch = ", b, ", capacity = ", cap,
                       ", kv_heads = ", h, ", head_dim = ", d, " must all be at least 1");
        return {b, cap, h, d};
    }

    // Row (b, t, h) of x, the D numbers of one position and head, into position length_ + t.
    void store(tensor<std::int8_t, 4>& q, tensor<float, 3>& scales, tensor_view<const float, 4> x, index_t b,
               index_t t, index_t h, const char* what) {
        const index_t D = head_dim(), at = length_ + t;
        float amax = 0.0f;
        for (index_t d = 0; d < D; ++d) {
            const float xd = x(b, t, h, d);
            TINYLLM_EXPECT(std::isfinite(xd), "kv_cache_int8::append: ", what, " (", b, ", ", t, ", ", h, ", ", d,
                           ") is ", xd, "; only finite numbers can be quantized");
            amax = std::max(amax, std::fabs(xd));
        }
        const float s = quant::step_for(amax, 127.0);
        scales(b, at, h) = s;
        for (index_t d = 0; d < D; ++d) q(b, at, h, d) = quant::quantize_int8(x(b, t, h, d), s);
    }

    tensor<std::int8_t, 4> k_, v_;       // (B, capacity, Hkv, D)
    tensor<float, 3> k_scale_, v_scale_;  // (B, capacity, Hkv)
    index_t length_ = 0;
};

}  // namespace tinyllm
