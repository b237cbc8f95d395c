// tinyllm/paged_kv.hpp — the paged KV cache: keys and values in fixed-size
// blocks of one shared pool, and attention that reads them through a block table.
//
// Why. kv_cache (tinyllm/attention.hpp) gives a sequence one contiguous
// (capacity, Hkv, D) slab per layer, sized for the longest the sequence might
// grow. A server holding many sequences at once then reserves memory for tokens
// that never come, and two requests that share a system prompt store it twice.
// PagedAttention (Kwon et al., "Efficient Memory Management for Large Language
// Model Serving with PagedAttention", SOSP 2023) manages the cache as an
// operating system manages memory: in pages.
//
// What. A kv_block_pool holds `blocks` blocks of `block_size` positions; block
// i of layer l is keys(l)[i] and values(l)[i], each (block_size, Hkv, D). One
// block id serves every layer. A sequence owns a kv_block_table: the ids of its
// blocks in order, and its length. Position p lives in block table[p / bs] at
// offset p % bs. Blocks are taken one at a time as a sequence grows (at most one
// partly filled block per sequence) and go back to the pool when it ends.
//
// Sharing. Blocks carry reference counts. fork() gives a second table with the
// same blocks, each count + 1: two sequences with a common prefix hold it once.
// A block is written only while its count is 1. Before a sequence appends into
// a shared, partly filled last block, reserve() copies that block into a fresh
// one (copy-on-write). Full shared blocks are never written again, so they stay
// shared. With block_size 4:
//
//     pool:             [0] [1] [2] [3] [4] [5] ...
//     A, length 10:     table [3, 0, 5]     positions 0-3 in block 3, 4-7 in 0, 8-9 in 5
//     B = A.fork():     table [3, 0, 5]     counts: 3 -> 2, 0 -> 2, 5 -> 2
//     B.reserve(1):     table [3, 0, 1]     block 5 is shared and half full: copied to 1
//                                           counts: 3 -> 2, 0 -> 2, 5 -> 1, 1 -> 1
//
// Where the numbers live. By default (kv_storage::host) the pool holds every
// block's keys and values itself, as float32. With kv_storage::elsewhere it
// keeps only the bookkeeping — the block ids, the reference counts, the free
// list — and another owner holds the numbers under the same ids: the CUDA
// model's device pool (cuda::paged_kv_pool, cuda/tinyllm/cuda/model_paged.cuh)
// keeps them in GPU memory. Tables, forks, reserve, truncate and the prefix
// cache work unchanged on such a pool; keys(), values(), write and gather
// refuse (there is nothing on the host to read or write). The one place the
// bookkeeping moves numbers is copy-on-write, so copy_block calls a hook
// (set_copy_hook) after its own copy, and the owner copies its block there:
//
//     reserve -> allocate c, copy_block(c, s) -> host copy (if held)
//                                             -> hook(c, s)  (device copy)
//
// Attention. cpu::attention_paged computes exactly what cpu::attention
// computes (the shared mask and logit helpers of attention.hpp, in double) for
// B sequences of different lengths, reading key j of sequence b from block
// block_tables(b, j / bs), offset j % bs. Its arguments are raw views — the
// pool's (blocks, bs, Hkv, D) tensors, a (B, max_blocks) table of block ids and
// the (B) lengths — as a kernel takes them. Sequence b's Tq queries are its
// last Tq positions (lengths[b] - Tq ... lengths[b] - 1), so causal masks are
// aligned to each sequence's own length.
#pragma once

#include <tinyllm/attention.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

namespace tinyllm {

// Where a kv_block_pool's keys and values live (see the top).
enum class kv_storage {
    host,       // in the pool, float32 (blocks, block_size, Hkv, D) per layer
    elsewhere,  // with another owner (a device pool); the pool keeps the bookkeeping only
};

class kv_block_pool {
public:
    kv_block_pool(index_t layers, index_t blocks, index_t block_size, index_t kv_heads, index_t head_dim,
                  kv_storage storage = kv_storage::host)
        : layers_(layers),
          block_size_(block_size),
          kv_heads_(kv_heads),
          head_dim_(head_dim),
          storage_(storage),
          refs_(checked_blocks(layers, blocks, block_size, kv_heads, head_dim, storage), 0) {
        if (storage == kv_storage::host)
            for (index_t l = 0; l < layers; ++l) {
                k_.emplace_back(extents<4>{blocks, block_size, kv_heads, head_dim}, 0.0f);
                v_.emplace_back(extents<4>{blocks, block_size, kv_heads, head_dim}, 0.0f);
            }
        // Handed out lowest id first.
        for (index_t b = blocks - 1; b >= 0; --b) free_.push_back(static_cast<std::int32_t>(b));
    }

    index_t layers() const { return layers_; }
    index_t blocks() const { return static_cast<index_t>(refs_.size()); }
    index_t block_size() const { return block_size_; }
    index_t kv_heads() const { return kv_heads_; }
    index_t head_dim() const { return head_dim_; }
    kv_storage storage() const { return storage_; }
    index_t free_blocks() const { return static_cast<index_t>(free_.size()); }
    index_t used_blocks() const { return blocks() - free_blocks(); }
    index_t ref_count(index_t block) const {
        expect_block(block, "kv_block_pool::ref_count");
        return refs_[static_cast<std::size_t>(block)];
    }
    // Bytes of one block across all layers (keys and values, float32).
    index_t block_bytes() const {
        return 2 * layers() * block_size_ * kv_heads() * head_dim() * static_cast<index_t>(sizeof(float));
    }

    // Layer l's blocks: (blocks, block_size, Hkv, D).
    tensor_view<float, 4> keys(index_t layer) { return k_[layer_index(layer)].view(); }
    tensor_view<float, 4> values(index_t layer) { return v_[layer_index(layer)].view(); }
    tensor_view<const float, 4> keys(index_t layer) const { return k_[layer_index(layer)].view(); }
    tensor_view<const float, 4> values(index_t layer) const { return v_[layer_index(layer)].view(); }

    // A free block, its count set to 1. An empty pool is an error saying so
    // (kv_block_table::reserve checks first, so that it fails before changing anything).
    index_t allocate() {
        TINYLLM_EXPECT(!free_.empty(), "kv_block_pool::allocate: all ", blocks(), " blocks are in use");
        const index_t b = free_.back();
        free_.pop_back();
        refs_[static_cast<std::size_t>(b)] = 1;
        return b;
    }
    // One more holder of `block`.
    void retain(index_t block) {
        expect_held(block, "kv_block_pool::retain");
        ++refs_[static_cast<std::size_t>(block)];
    }
    // One holder fewer; at zero the block is free again.
    void release(index_t block) {
        expect_held(block, "kv_block_pool::release");
        if (--refs_[static_cast<std::size_t>(block)] == 0) free_.push_back(static_cast<std::int32_t>(block));
    }
    // Block dst := block src, in every layer (copy-on-write): the host copy when
    // the pool holds the numbers, then the copy hook, if one is set.
    void copy_block(index_t dst, index_t src) {
        expect_held(dst, "kv_block_pool::copy_block");
        expect_held(src, "kv_block_pool::copy_block");
        for (std::size_t l = 0; l < k_.size(); ++l) {
            const index_t n = block_size_ * kv_heads() * head_dim();
            std::copy_n(k_[l].data() + src * n, n, k_[l].data() + dst * n);
            std::copy_n(v_[l].data() + src * n, n, v_[l].data() + dst * n);
        }
        if (copy_hook_) copy_hook_(dst, src);
    }
    // hook(dst, src) runs at every copy_block, after the host copy: how the owner
    // of kv_storage::elsewhere numbers mirrors copy-on-write. An empty function
    // removes the hook.
    void set_copy_hook(std::function<void(index_t dst, index_t src)> hook) { copy_hook_ = std::move(hook); }

private:
    // The pool's shape, checked before anything is allocated (the member
    // initializers call this first): every count at least 1, block ids that fit
    // the int32 of a block table, and the bytes of all keys and values
    // (2 x layers x blocks x block_size x Hkv x D floats) countable in index_t,
    // so that no size computed from them (block_bytes, a layer's elements, a
    // table's positions) overflows. A pool that holds them on the host has at
    // most 2^40 bytes of them (1 TiB, the bound of model::new_session's cache),
    // so that a size no machine has is an error that says so, not a bad_alloc.
    // Returns the number of blocks.
    static std::size_t checked_blocks(index_t layers, index_t blocks, index_t block_size, index_t kv_heads,
                                      index_t head_dim, kv_storage storage) {
        TINYLLM_EXPECT(layers >= 1 && blocks >= 1 && block_size >= 1 && kv_heads >= 1 && head_dim >= 1,
                       "kv_block_pool: layers = ", layers, ", blocks = ", blocks, ", block_size = ", block_size,
                       ", kv_heads = ", kv_heads, ", head_dim = ", head_dim, " must all be at least 1");
        TINYLLM_EXPECT(blocks <= std::numeric_limits<std::int32_t>::max(), "kv_block_pool: ", blocks,
                       " blocks do not fit the int32 ids of a block table");
        const std::initializer_list<index_t> factors = {
            2 * static_cast<index_t>(sizeof(float)), layers, blocks, block_size, kv_heads, head_dim};
        TINYLLM_EXPECT(detail::nonzero_product_at_most(std::numeric_limits<index_t>::max(), factors),
                       "kv_block_pool: layers = ", layers, ", blocks = ", blocks, ", block_size = ", block_size,
                       ", kv_heads = ", kv_heads, ", head_dim = ", head_dim,
                       ": the keys and values of so many positions are more bytes than an index_t counts");
        index_t bytes = 1;
        for (const index_t factor : factors) bytes *= factor;
        TINYLLM_EXPECT(storage != kv_storage::host || bytes <= (index_t{1} << 40), "kv_block_pool: layers = ", layers,
                       ", blocks = ", blocks, ", block_size = ", block_size, ", kv_heads = ", kv_heads,
                       ", head_dim = ", head_dim, ": their keys and values are ", bytes,
                       " bytes, more than the 2^40 (1 TiB) a pool holds on the host");
        return static_cast<std::size_t>(blocks);
    }
    std::size_t layer_index(index_t layer) const {
        TINYLLM_EXPECT(storage_ == kv_storage::host, "kv_block_pool: the blocks' keys and values are not held on the "
                       "host (kv_storage::elsewhere: a device pool holds them), so they cannot be read or written "
                       "here");
        TINYLLM_EXPECT(layer >= 0 && layer < layers(), "kv_block_pool: layer ", layer, " is outside [0, ", layers(),
                       ")");
        return static_cast<std::size_t>(layer);
    }
    void expect_block(index_t block, const char* op) const {
        TINYLLM_EXPECT(block >= 0 && block < blocks(), op, ": block ", block, " is outside [0, ", blocks(), ")");
    }
    void expect_held(index_t block, const char* op) const {
        expect_block(block, op);
        TINYLLM_EXPECT(refs_[static_cast<std::size_t>(block)] > 0, op, ": block ", block, " is free");
    }

    index_t layers_, block_size_, kv_heads_, head_dim_;
    kv_storage storage_;
    std::vector<tensor<float, 4>> k_, v_;  // per layer (blocks, block_size, Hkv, D); empty when held elsewhere
    std::function<void(index_t, index_t)> copy_hook_;  // copy_block's mirror (set_copy_hook)
    std::vector<index_t> refs_;            // per block: how many tables hold it
    std::vector<std::int32_t> free_;       // free block ids, next one at the back
};

// One sequence's blocks in a pool, and its length. Move-only: it releases its
// blocks when it is destroyed or reset.
class kv_block_table {
public:
    kv_block_table() = default;
    explicit kv_block_table(kv_block_pool& pool) : pool_(&pool) {}
    kv_block_table(const kv_block_table&) = delete;
    kv_block_table& operator=(const kv_block_table&) = delete;
    kv_block_table(kv_block_table&& o) noexcept
        : pool_(std::exchange(o.pool_, nullptr)), blocks_(std::move(o.blocks_)), length_(std::exchange(o.length_, 0)) {
        o.blocks_.clear();
    }
    kv_block_table& operator=(kv_block_table&& o) noexcept {
        if (this != &o) {
            reset();
            pool_ = std::exchange(o.pool_, nullptr);
            blocks_ = std::move(o.blocks_);
            o.blocks_.clear();
            length_ = std::exchange(o.length_, 0);
        }
        return *this;
    }
    ~kv_block_table() { reset(); }

    kv_block_pool* pool() const { return pool_; }
    index_t length() const { return length_; }
    const std::vector<std::int32_t>& blocks() const { return blocks_; }

    // How many free blocks reserve(n) takes: new blocks for positions past the
    // last block, plus one copy when the last block is shared and partly filled.
    index_t blocks_needed(index_t n) const {
        expect_pool("kv_block_table::blocks_needed");
        TINYLLM_EXPECT(n >= 0, "kv_block_table::blocks_needed: n = ", n, " must not be negative");
        if (n == 0) return 0;
        // Positions past what the held blocks leave room for, in whole blocks (never
        // length + n, which a huge n would overflow).
        const index_t room = reserved() - length_;
        const index_t fresh = n <= room ? 0 : blocks_for(n - room, pool_->block_size());
        return fresh + (last_block_shared_and_partial() ? 1 : 0);
    }

    // Make positions [length, length + n) writable: copy a shared, partly filled
    // last block (copy-on-write), then take new blocks. If the pool cannot give
    // blocks_needed(n), it is an error and nothing changes.
    void reserve(index_t n) {
        const index_t need = blocks_needed(n);
        TINYLLM_EXPECT(need <= pool_->free_blocks(), "kv_block_table::reserve: ", n, " more positions after ",
                       length_, " need ", need, " free blocks of ", pool_->block_size(), " positions; the pool has ",
                       pool_->free_blocks(), " of ", pool_->blocks());
        if (n == 0) return;
        index_t fresh = need;
        if (last_block_shared_and_partial()) {
            std::int32_t& slot = blocks_[static_cast<std::size_t>(length_ / pool_->block_size())];
            const index_t copy = pool_->allocate();
            pool_->copy_block(copy, slot);
            pool_->release(slot);
            slot = static_cast<std::int32_t>(copy);
            --fresh;
        }
        for (; fresh > 0; --fresh) blocks_.push_back(static_cast<std::int32_t>(pool_->allocate()));
    }

    // Write layer l's keys and values of positions first .. first + n - 1,
    // (n, Hkv, D) each, into reserved blocks the table holds alone.
    void write(index_t layer, index_t first, tensor_view<const float, 3> k_new, tensor_view<const float, 3> v_new) {
        expect_pool("kv_block_table::write");
        const index_t n = k_new.extent(0), bs = pool_->block_size();
        const extents<3> want{n, pool_->kv_heads(), pool_->head_dim()};
        expect_shape(k_new, want, "kv_block_table::write: k_new");
        expect_shape(v_new, want, "kv_block_table::write: v_new");
        TINYLLM_EXPECT(first >= 0 && first <= reserved() && n <= reserved() - first, "kv_block_table::write: ", n,
                       " positions from ", first, " are not reserved (", blocks_.size(), " blocks of ", bs, ")");
        tensor_view<float, 4> keys = pool_->keys(layer), values = pool_->values(layer);
        for (index_t t = 0; t < n; ++t) {
            const index_t block = blocks_[static_cast<std::size_t>((first + t) / bs)], at = (first + t) % bs;
            TINYLLM_EXPECT(pool_->ref_count(block) == 1, "kv_block_table::write: block ", block,
                           " is shared (reserve copies a shared block before it is written)");
            for (index_t h = 0; h < want[1]; ++h)
                for (index_t d = 0; d < want[2]; ++d) {
                    keys(block, at, h, d) = k_new(t, h, d);
                    values(block, at, h, d) = v_new(t, h, d);
                }
        }
    }

    // The written positions now count: length += n (within the reserved blocks).
    void advance(index_t n) {
        expect_pool("kv_block_table::advance");
        TINYLLM_EXPECT(n >= 0 && n <= reserved() - length_, "kv_block_table::advance: ", length_, " + ", n,
                       " positions exceed the ", blocks_.size(), " reserved blocks");
        length_ += n;
    }

    // Keep the first `length` positions; blocks past them go back to the pool.
    void truncate(index_t length) {
        TINYLLM_EXPECT(length >= 0 && length <= length_, "kv_block_table::truncate: length ", length,
                       " is outside [0, ", length_, "]");
        if (!pool_) return;
        const index_t keep = blocks_for(length, pool_->block_size());
        while (static_cast<index_t>(blocks_.size()) > keep) {
            pool_->release(blocks_.back());
            blocks_.pop_back();
        }
        length_ = length;
    }

    // Copy layer l's first n positions out of the blocks, contiguous: k_out,
    // v_out (1, n, Hkv, D). What a kernel written for a contiguous cache (the
    // tiled CPU attention) reads; n may include positions written but not yet
    // counted (advance comes after a step's layers).
    void gather(index_t layer, index_t n, tensor_view<float, 4> k_out, tensor_view<float, 4> v_out) const {
        expect_pool("kv_block_table::gather");
        const index_t bs = pool_->block_size(), H = pool_->kv_heads(), D = pool_->head_dim();
        expect_shape(k_out, extents<4>{1, n, H, D}, "kv_block_table::gather: k_out");
        expect_shape(v_out, extents<4>{1, n, H, D}, "kv_block_table::gather: v_out");
        TINYLLM_EXPECT(n >= 0 && n <= reserved(), "kv_block_table::gather: ", n, " positions but the table holds ",
                       blocks_.size(), " blocks of ", bs);
        const tensor_view<const float, 4> keys = std::as_const(*pool_).keys(layer);
        const tensor_view<const float, 4> values = std::as_const(*pool_).values(layer);
        for (index_t p = 0; p < n; ++p) {
            const index_t block = blocks_[static_cast<std::size_t>(p / bs)], row = p % bs;
            for (index_t h = 0; h < H; ++h)
                for (index_t d = 0; d < D; ++d) {
                    k_out(0, p, h, d) = keys(block, row, h, d);
                    v_out(0, p, h, d) = values(block, row, h, d);
                }
        }
    }

    // A second table holding the same written blocks (each count + 1) and length.
    kv_block_table fork() const {
        expect_pool("kv_block_table::fork");
        kv_block_table t(*pool_);
        const index_t written = blocks_for(length_, pool_->block_size());
        t.blocks_.assign(blocks_.begin(), blocks_.begin() + written);
        for (const std::int32_t b : t.blocks_) pool_->retain(b);
        t.length_ = length_;
        return t;
    }

    // Hold `blocks` (each retained here) as positions [0, length) of this empty
    // table: how a prefix cache hands a sequence the blocks of its cached prefix.
    // Every block must be held already; all are checked before any is retained,
    // so a refused list changes nothing.
    void adopt(const std::vector<std::int32_t>& blocks, index_t length) {
        expect_pool("kv_block_table::adopt");
        TINYLLM_EXPECT(blocks_.empty() && length_ == 0, "kv_block_table::adopt: the table already holds ",
                       blocks_.size(), " blocks");
        const index_t bs = pool_->block_size(), n = static_cast<index_t>(blocks.size());
        TINYLLM_EXPECT(n <= pool_->blocks(), "kv_block_table::adopt: ", n, " blocks, more than the pool's ",
                       pool_->blocks());
        TINYLLM_EXPECT(length >= 0 && blocks_for(length, bs) == n, "kv_block_table::adopt: ", n, " blocks of ", bs,
                       " cannot hold exactly ", length, " positions");
        for (std::size_t i = 0; i < blocks.size(); ++i) {
            const std::int32_t b = blocks[i];
            TINYLLM_EXPECT(b >= 0 && b < pool_->blocks(), "kv_block_table::adopt: block ", b, " (entry ", i,
                           ") is outside the pool's [0, ", pool_->blocks(), ")");
            TINYLLM_EXPECT(pool_->ref_count(b) > 0, "kv_block_table::adopt: block ", b, " (entry ", i,
                           ") is free; only blocks something holds can be shared");
        }
        for (const std::int32_t b : blocks) pool_->retain(b);
        blocks_ = blocks;
        length_ = length;
    }

    // Release every block; length 0.
    void reset() {
        if (pool_)
            for (const std::int32_t b : blocks_) pool_->release(b);
        blocks_.clear();
        length_ = 0;
    }

private:
    void expect_pool(const char* op) const {
        TINYLLM_EXPECT(pool_ != nullptr, op, ": the table has no pool (construct it with kv_block_table(pool))");
    }
    // Blocks for `positions` positions: ceil(positions / bs), without positions + bs - 1.
    static index_t blocks_for(index_t positions, index_t bs) { return positions / bs + (positions % bs != 0 ? 1 : 0); }
    // Positions the held blocks have room for. It fits index_t: reserve takes at
    // most the pool's blocks, adopt at most as many again, and the positions of
    // the whole pool are a small part of index_t (checked_blocks).
    index_t reserved() const { return static_cast<index_t>(blocks_.size()) * pool_->block_size(); }
    // Whether the block the next position goes to is partly written and shared.
    bool last_block_shared_and_partial() const {
        const index_t bs = pool_->block_size(), i = length_ / bs;
        return length_ % bs != 0 && i < static_cast<index_t>(blocks_.size()) &&
               pool_->ref_count(blocks_[static_cast<std::size_t>(i)]) > 1;
    }

    kv_block_pool* pool_ = nullptr;
    std::vector<std::int32_t> blocks_;
    index_t length_ = 0;
};

namespace cpu {

// out (B, Tq, Hq, D) = attention of each sequence's last Tq positions over its
// first lengths[b] positions, the keys and values read through block tables:
//   q               (B, Tq, Hq, D)
//   keys, values    (blocks, block_size, Hkv, D), Hq % Hkv == 0 (a pool layer's)
//   block_tables    (B, max_blocks): sequence b's position j is in block
//                   block_tables(b, j / block_size), offset j % block_size
//   lengths         (B): each in [Tq, max_blocks * block_size]
// Options as cpu::attention's (causal, window, ALiBi, soft-cap, scale), each
// sequence's queries aligned to its own length; key_lengths is refused (the
// lengths say it). Computed in double, as cpu::attention.
inline void attention_paged(tensor_view<float, 4> out, tensor_view<const float, 4> q, tensor_view<const float, 4> keys,
                            tensor_view<const float, 4> values, tensor_view<const std::int32_t, 2> block_tables,
                            tensor_view<const std::int32_t, 1> lengths, const attention_options& opts = {}) {
    const char* op = "attention_paged";
    const index_t B = q.extent(0), Tq = q.extent(1), Hq = q.extent(2), D = q.extent(3);
    const index_t blocks = keys.extent(0), bs = keys.extent(1), Hkv = keys.extent(2);
    expect_shape(out, q.shape(), "attention_paged: out");
    expect_shape(values, keys.shape(), "attention_paged: values");
    TINYLLM_EXPECT(keys.extent(3) == D, op, ": q has head dim ", D, " but the blocks hold ", keys.extent(3));
    TINYLLM_EXPECT(bs >= 1, op, ": the blocks hold ", bs, " positions each; at least 1 is needed");
    TINYLLM_EXPECT(Hkv >= 1 && Hq % Hkv == 0, op, ": the query heads (Hq = ", Hq,
                   ") must be a multiple of the key/value heads (Hkv = ", Hkv, ")");
    TINYLLM_EXPECT(block_tables.extent(0) == B && lengths.extent(0) == B, op, ": ", B, " sequences but ",
                   block_tables.extent(0), " block tables and ", lengths.extent(0), " lengths");
    TINYLLM_EXPECT(opts.key_lengths.data() == nullptr, op, ": key_lengths is not taken; the lengths give each "
                   "sequence's keys");
    // cpu::attention's option checks, on a (B, Tq, Hq, D) query and a stand-in key shape,
    // and its memory rules: out exactly q (each query row is read before its output is
    // written) or apart from it, and apart from the blocks, the tables and the lengths.
    tinyllm::detail::check_attention_options(opts, q, q, op);
    tinyllm::detail::check_attention_host_views(opts, 0, op);
    tinyllm::detail::check_attention_out(out, q, keys, values, opts, op, true);
    tinyllm::detail::expect_apart(op, "out", out, "block_tables", block_tables);
    tinyllm::detail::expect_apart(op, "out", out, "lengths", lengths);
    for (index_t b = 0; b < B; ++b) {
        const index_t n = lengths(b);
        // n <= max_blocks * bs, without the product (a view's extents may be anything).
        TINYLLM_EXPECT(n >= Tq && (n == 0 || (n - 1) / bs < block_tables.extent(1)), op, ": sequence ", b,
                       " has length ", n, "; it must hold its ", Tq, " queries and fit its ", block_tables.extent(1),
                       " blocks of ", bs);
        for (index_t i = 0; i < n / bs + (n % bs != 0 ? 1 : 0); ++i)
            TINYLLM_EXPECT(block_tables(b, i) >= 0 && block_tables(b, i) < blocks, op, ": sequence ", b,
                           "'s block ", i, " is ", block_tables(b, i), ", outside the pool's [0, ", blocks, ")");
    }

    const index_t group = Hq / Hkv;
    const double scale = tinyllm::detail::attention_scale(opts, D);
    const double softcap = opts.softcap ? *opts.softcap : 0.0;
    std::vector<double> s, o(static_cast<std::size_t>(D));
    for (index_t b = 0; b < B; ++b) {
        const index_t Tk = lengths(b);
        const attention_mask mask = tinyllm::detail::make_attention_mask(opts, Tq, Tk);
        s.assign(static_cast<std::size_t>(Tk), 0.0);
        // Sequence b's key j: its block and the row within it.
        const auto block_of = [&](index_t j) { return static_cast<index_t>(block_tables(b, j / bs)); };
        for (index_t h = 0; h < Hq; ++h) {
            const index_t hkv = h / group;
            const double slope = tinyllm::detail::has_view(opts.alibi_slopes) ? opts.alibi_slopes(h) : 0.0;
            for (index_t i = 0; i < Tq; ++i) {
                const key_range visible = attention_visible_keys(mask, i, Tk);
                const index_t pos = mask.query_position(i);
                double row_max = -std::numeric_limits<double>::infinity();
                for (index_t j = visible.begin; j < visible.end; ++j) {
                    double dot = 0.0;
                    for (index_t d = 0; d < D; ++d)
                        dot += static_cast<double>(q(b, i, h, d)) * keys(block_of(j), j % bs, hkv, d);
                    s[static_cast<std::size_t>(j)] = attention_logit(dot, scale, softcap, slope, pos, j);
                    row_max = std::max(row_max, s[static_cast<std::size_t>(j)]);
                }
                double sum = 0.0;
                for (index_t j = visible.begin; j < visible.end; ++j) {
                    double& x = s[static_cast<std::size_t>(j)];
                    x = std::exp(x - row_max);
                    sum += x;
                }
                std::fill(o.begin(), o.end(), 0.0);
                for (index_t j = visible.begin; j < visible.end; ++j) {
                    const double p = s[static_cast<std::size_t>(j)] / sum;
                    for (index_t d = 0; d < D; ++d)
                        o[static_cast<std::size_t>(d)] += p * values(block_of(j), j % bs, hkv, d);
                }
                for (index_t d = 0; d < D; ++d) out(b, i, h, d) = static_cast<float>(o[static_cast<std::size_t>(d)]);
            }
        }
    }
}

}  // namespace cpu
}  // namespace tinyllm
