// tinyllm/cuda/model_paged.cuh — the CUDA model on paged sessions: one step of
// continuous batching (cpu::model::forward_batch) on the GPU, the keys and
// values in blocks of a device pool read through each sequence's block table.
//
// Where things live. The paged KV cache of tinyllm/paged_kv.hpp has two halves:
// the bookkeeping (block ids, reference counts, the free list, each sequence's
// kv_block_table, fork, copy-on-write decisions, the prefix cache) and the
// numbers (each block's keys and values). paged_kv_pool<T> keeps the first on
// the host, in an ordinary kv_block_pool made with kv_storage::elsewhere, and
// the second on the device, one (blocks, bs, Hkv, Dh) tensor of T per layer for
// keys and one for values, indexed by the same block ids:
//
//     host:    kv_block_pool (ids, counts, free list)    tables [3, 0, 5], [3, 0, 1], ...
//     device:  keys[l], values[l]   (blocks, bs, Hkv, Dh)   block b of layer l at b * bs * Hkv * Dh
//
// So a paged session here is the CPU's own cpu::model::session (its table in
// pool.host()), and everything that only moves ids — fork, truncate, reserve,
// prefix_cache::match/insert, the batcher's preemption — works unchanged. The
// one place the bookkeeping moves numbers is copy-on-write: reserve() copies a
// shared, partly filled last block before a sequence appends to it. The pool
// mirrors it with kv_block_pool's copy hook, which it sets to a device-to-device
// copy of the block in every layer. The hook was chosen over detecting table
// changes on the device side (diffing each table against a shadow copy) because
// the copy then happens exactly where the CPU's does, in stream order before
// the step's writes, and nothing can be missed: a table can change in many
// places (reserve, adopt, truncate), but numbers move only in copy_block.
//
// A step, forward_batch(pool, sessions, tokens): session i feeds n_i tokens (a
// chunk of its prompt or its newest token). As on the CPU, the blocks every
// session needs are counted first (a pool too small is an error before anything
// changes), then each table reserves its positions (copy-on-write included).
// The N = sum n_i rows are stacked, the one-token sessions first:
//
//     rows:  [d_0][d_1]...[d_k] [chunk of s_a ......][chunk of s_b ...]
//              decode rows         prompt chunks
//
//     x = embed(ids) (+ positions)          embedding.cuh, learned positions at each row's own position (N, D)
//     for each layer:
//         h = norm1(x)                      norm.cuh (fused with the residual add)
//         qkv = h Wqkv^T (+ b)              ONE GEMM over all N rows (the model's project: dense or quantized)
//         q, k = rope(q, k, pos_r)          ONE kernel, positional.cuh's rope_write_cache: the rotation at each
//         block(r) = k_r, v_r               row's own position, then k, v into block_tables(seq_r, pos_r / bs), row pos_r % bs
//                                           (N <= 8 rows of dense weights: the three are ONE kernel, RoPE v4)
//         a = attention                     decode rows: ONE attention_paged call (B = k + 1, Tq = 1);
//                                           a chunk with Hq/Hkv * n <= 32 rows: attention_paged (B = 1, Tq = n);
//                                           a longer chunk: paged prefill rung 1 (below)
//         x, h = x + a Wo^T, norm2(...)     one GEMM, residual_add_*_norm
//         delta = ffn(h)                    the model's ffn (GPT-2 MLP, SwiGLU, MoE) over all N rows
//     logits = norm_f(x_last) W_lm^T        each session's last row gathered, (S, V) float
//
// Paged prefill, rung 1: gather, then contiguous attention. attention_paged
// holds at most 32 query rows per KV head (Hq/Hkv * Tq <= 32), which a prompt
// chunk exceeds. For such a chunk of n new positions after L cached ones,
// gather_paged_kernel copies the sequence's first L + n keys and values out of
// its blocks into a contiguous (1, L + n, Hkv, Dh) temporary, and the model's
// attend() runs on it — attention_flash (or attention_mma for a bf16 model with
// head dim 64/128), causal and aligned bottom-right, exactly as model.cuh runs a
// prompt over its contiguous cache. The gather costs a read and a write of the
// sequence's cache per layer, small beside attention over n queries (it is
// O((L + n) Hkv Dh) against O(n (L + n) Hq Dh)); a later rung would read the
// blocks inside the flash kernel instead (a paged flash-attention).
//
// CUDA graphs. Once every sequence is generating, a step feeds one token per
// session, and a small model's step is then about a dozen short launches per
// layer that the GPU finishes sooner than the host can issue them (the case
// model::decode_step makes for a contiguous session). Such a decode-only step
// of a dense model replays a CUDA graph kept by the pool, one per step shape:
// the number of sessions S and the block-table width, which is rounded up to a
// power of two (detail::table_width; the extra entries are -1 and never read).
// Everything else a step changes is data the host uploads before the launch
// (three asynchronous copies on the graphs' stream): the tables, the lengths,
// each row's slot and position, the ids. So a step is three copies and one
// cudaGraphLaunch, instead of a dozen launches per layer plus the copies. As in
// decode_step, a new shape's first step runs eagerly (sizing the scratch, since
// nothing may be allocated inside a capture) and is then captured; the graphs
// are dropped if a scratch buffer moves (a larger step grew it); eager and
// graphed steps round alike, so they run the same kernels and give the same
// logits bit for bit. Steps with a prompt chunk (their attention is a loop over
// chunks of host-known sizes) run eagerly, and so do Mixtral's of more than 8
// sessions (model::experts_read_plan_back: their experts are GEMMs sized from the
// dispatch plan read back to the host). vLLM captures its decode steps the same
// way, padding the batch to a few sizes; here S is exact, since a serving batch
// changes size rarely and a graph per size costs only its instantiation.
//
// Output: the logits stay on the device (as model::forward's), (S, V) float in
// the order of `sessions`, valid until the pool's next forward_batch (they live
// in the pool's scratch). Element type: the blocks hold T (bf16 for a bf16
// model), like the contiguous session's cache.
//
// Verified on the simulated GPU (tests/cuda/test_model_paged.cu) against
// cpu::model::forward_batch on the same schedule; unmeasured on a real GPU.
//
// One pool, its sessions and its model belong to one host thread; the pool
// must outlive the sessions whose tables are in it.
#pragma once

#include <tinyllm/cuda/attention_paged.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/model.cuh>
#include <tinyllm/paged_kv.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace tinyllm::cuda {
namespace detail {

// k_out, v_out (positions, Hkv, Dh) contiguous = one sequence's first positions,
// read from its blocks: position p from block table[p / bs], row p % bs. Grid (positions).
template <class T>
__global__ void gather_paged_kernel(T* k_out, T* v_out, const T* keys, const T* values, const std::int32_t* table,
                                    index_t block_size, index_t width) {
    const index_t p = blockIdx.x;
    const index_t at = (static_cast<index_t>(table[p / block_size]) * block_size + p % block_size) * width;
    for (index_t i = threadIdx.x; i < width; i += blockDim.x) {
        k_out[p * width + i] = keys[at + i];
        v_out[p * width + i] = values[at + i];
    }
}

// One forward_batch step's rows: S sessions, N stacked rows, the first
// `decoders` of them one-token sessions; block tables max_blocks wide; a long
// chunk's keys gathered into at most `gathered` contiguous positions; and each
// chunk (slot j = its place among the sessions' rows, first_row, rows, and the
// keys it attends after the step).
struct paged_step {
    struct chunk {
        index_t slot, first_row, rows, keys;
    };
    index_t S = 0, N = 0, decoders = 0, max_blocks = 0, gathered = 0;
    std::vector<chunk> chunks;
};

// A decode-only step's block-table width: the widest table rounded up to a power
// of two (at least 4, at most the pool's blocks). The table's extra entries are
// -1 and never read (each row stops at its length), and attention_paged cuts its
// splits from the width, so rounding keeps a step's kernels the same for many
// steps and one captured graph serves them (as decode_keys does for a session).
inline index_t table_width(index_t widest, index_t pool_blocks) {
    index_t w = 4;
    while (w < widest) w *= 2;
    return std::max(widest, std::min(w, pool_blocks));
}

}  // namespace detail

// A paged KV cache for cuda::model<T>: the block bookkeeping on the host
// (host(), a kv_block_pool without storage), the keys and values on the device.
// Not copyable or movable: the bookkeeping's copy hook points at this object.
template <class T>
class paged_kv_pool {
public:
    // `blocks` blocks of `block_size` positions for a model of config c, zeroed
    // (a masked key's value still meets a weight of exactly 0, and 0 * NaN is NaN).
    paged_kv_pool(const model_config& c, index_t blocks, index_t block_size)
        : host_(c.num_layers, blocks, block_size, c.num_kv_heads, c.head_dim, kv_storage::elsewhere) {
        const std::size_t n = static_cast<std::size_t>(blocks * block_elements());
        for (index_t l = 0; l < c.num_layers; ++l)
            for (auto* buffers : {&keys_, &values_}) {
                buffers->emplace_back(n);
                TINYLLM_CUDA_CHECK(cudaMemset(buffers->back().data(), 0, buffers->back().bytes()));
            }
        // The memsets ran on the legacy default stream, which does not order them before a
        // non-blocking stream's kernels: the pool is zero before it is used.
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        host_.set_copy_hook([this](index_t dst, index_t src) { copy_block(dst, src); });
    }
    paged_kv_pool(const paged_kv_pool&) = delete;
    paged_kv_pool& operator=(const paged_kv_pool&) = delete;
    ~paged_kv_pool() { host_.set_copy_hook({}); }

    // The bookkeeping: block tables, forks and the prefix cache use it as a CPU pool.
    kv_block_pool& host() { return host_; }
    const kv_block_pool& host() const { return host_; }

    // Layer l's blocks on the device: (blocks, block_size, Hkv, Dh).
    tensor_view<T, 4> keys(index_t layer) { return {keys_[layer_index(layer)].data(), shape()}; }
    tensor_view<T, 4> values(index_t layer) { return {values_[layer_index(layer)].data(), shape()}; }
    tensor_view<const T, 4> keys(index_t layer) const { return {keys_[layer_index(layer)].data(), shape()}; }
    tensor_view<const T, 4> values(index_t layer) const { return {values_[layer_index(layer)].data(), shape()}; }

    // Device bytes of the blocks (keys and values, all layers).
    std::size_t bytes() const {
        std::size_t n = 0;
        for (const auto& b : keys_) n += 2 * b.bytes();
        return n;
    }

    // CUDA graphs for decode-only steps (model::forward_batch; on by default):
    // off, every step runs eagerly. How they ran so far: graphs captured and
    // replayed, and why capture failed, if it did (the steps then run eagerly).
    void use_graphs(bool on) { graphs_on_ = on; }
    std::size_t graph_captures() const { return graphs_ ? graphs_->captures : 0; }
    std::size_t graph_replays() const { return graphs_ ? graphs_->replays : 0; }
    std::string graph_failure() const { return graphs_ ? graphs_->failure : std::string(); }

private:
    template <class>
    friend class model;

    index_t block_elements() const { return host_.block_size() * host_.kv_heads() * host_.head_dim(); }
    extents<4> shape() const { return {host_.blocks(), host_.block_size(), host_.kv_heads(), host_.head_dim()}; }
    std::size_t layer_index(index_t layer) const {
        TINYLLM_EXPECT(layer >= 0 && layer < host_.layers(), "cuda::paged_kv_pool: layer ", layer,
                       " is outside [0, ", host_.layers(), ")");
        return static_cast<std::size_t>(layer);
    }
    // Copy-on-write's device half: block dst := block src in every layer (stream-ordered).
    void copy_block(index_t dst, index_t src) {
        const index_t n = block_elements();
        for (std::size_t l = 0; l < keys_.size(); ++l)
            for (auto* buffers : {&keys_, &values_}) {
                T* base = (*buffers)[l].data();
                TINYLLM_CUDA_CHECK(cudaMemcpy(base + dst * n, base + src * n, static_cast<std::size_t>(n) * sizeof(T),
                                              cudaMemcpyDeviceToDevice));
            }
    }

    kv_block_pool host_;
    std::vector<device_buffer<T>> keys_, values_;  // per layer (blocks, bs, Hkv, Dh)
    // forward_batch's scratch, grown on demand and reused.
    typename model<T>::session step_;    // the model's activations, MoE and attention workspaces
    device_buffer<T> gathered_k_, gathered_v_;  // a long chunk's keys and values, contiguous
    bool graphs_on_ = true;
    std::unique_ptr<detail::decode_graphs> graphs_;  // by (sessions, table width), created at the first decode-only step
};

template <class T>
cpu::model::session model<T>::new_session(paged_kv_pool<T>& pool) const {
    const kv_block_pool& p = pool.host();
    TINYLLM_EXPECT(p.layers() == config_.num_layers && p.kv_heads() == config_.num_kv_heads &&
                       p.head_dim() == config_.head_dim,
                   "cuda::model::new_session: the block pool has ", p.layers(), " layers of ", p.kv_heads(),
                   " KV heads of ", p.head_dim(), "; the model has ", config_.num_layers, " of ",
                   config_.num_kv_heads, " of ", config_.head_dim);
    cpu::model::session s;
    s.paged = kv_block_table(pool.host());
    s.max_length =
        config_.arch == model_arch::gpt2 ? config_.max_positions : std::numeric_limits<std::int32_t>::max();
    return s;
}

template <class T>
cpu::model::session model<T>::fork(const cpu::model::session& s) const {
    TINYLLM_EXPECT(s.is_paged(), "cuda::model::fork: only a paged session's blocks can be shared");
    cpu::model::session f;
    f.paged = s.paged.fork();
    f.length = f.paged.length();
    f.max_length = s.max_length;
    return f;
}

template <class T>
tensor_view<const float, 2> model<T>::forward_batch(paged_kv_pool<T>& pool,
                                                    std::span<cpu::model::session* const> sessions,
                                                    std::span<const std::span<const token_id>> tokens) const {
    const model_config& c = config_;
    const char* op = "cuda::model::forward_batch";
    const index_t S = static_cast<index_t>(sessions.size()), Dh = c.head_dim, V = c.vocab_size;
    const index_t Hkv = c.num_kv_heads, group = c.num_heads / Hkv;
    kv_block_pool& blocks = pool.host();
    TINYLLM_EXPECT(blocks.layers() == c.num_layers && blocks.kv_heads() == Hkv && blocks.head_dim() == Dh, op,
                   ": the pool has ", blocks.layers(), " layers of ", blocks.kv_heads(), " KV heads of ",
                   blocks.head_dim(), "; the model has ", c.num_layers, " of ", Hkv, " of ", Dh);
    TINYLLM_EXPECT(S >= 1 && static_cast<index_t>(tokens.size()) == S, op, ": ", S, " sessions and ", tokens.size(),
                   " token lists");
    const auto count_of = [&](index_t i) { return static_cast<index_t>(tokens[static_cast<std::size_t>(i)].size()); };

    // Every check before anything changes (cpu::model::forward_batch's, and the pool's).
    index_t need = 0, N = 0;
    for (index_t i = 0; i < S; ++i) {
        const cpu::model::session* s = sessions[static_cast<std::size_t>(i)];
        TINYLLM_EXPECT(s != nullptr, op, ": session ", i, " is null");
        TINYLLM_EXPECT(s->is_paged(), op, ": session ", i, " is not paged (new_session(pool))");
        TINYLLM_EXPECT(s->paged.pool() == &blocks, op, ": session ", i,
                       "'s blocks are in another pool (not this paged_kv_pool's)");
        for (index_t j = 0; j < i; ++j)
            TINYLLM_EXPECT(sessions[static_cast<std::size_t>(j)] != s, op, ": session ", i, " is also session ", j);
        const index_t n = count_of(i);
        TINYLLM_EXPECT(n >= 1, op, ": no tokens for session ", i);
        TINYLLM_EXPECT(s->length + n <= s->capacity(), op, ": session ", i, ": ", s->length, " + ", n,
                       " positions exceed its capacity ", s->capacity());
        for (const token_id id : tokens[static_cast<std::size_t>(i)])
            TINYLLM_EXPECT(id >= 0 && id < V, op, ": session ", i, ": token id ", id,
                           " is outside the vocabulary [0, ", V, ")");
        need += s->paged.blocks_needed(n);
        N += n;
    }
    TINYLLM_EXPECT(need <= blocks.free_blocks(), op, ": the step needs ", need, " free blocks; the pool has ",
                   blocks.free_blocks(), " of ", blocks.blocks());
    TINYLLM_EXPECT(N <= std::numeric_limits<std::int32_t>::max(), op, ": ", N, " rows do not fit int32 row ids");
    // Copy-on-write happens here: the pool's hook copies the device blocks.
    for (index_t i = 0; i < S; ++i) sessions[static_cast<std::size_t>(i)]->paged.reserve(count_of(i));

    // The order of the stacked rows: the one-token sessions first, so that their
    // queries and outputs are the first `decoders` rows (one attention_paged call).
    std::vector<index_t> order;
    for (index_t i = 0; i < S; ++i)
        if (count_of(i) == 1) order.push_back(i);
    detail::paged_step step;
    step.S = S;
    step.N = N;
    step.decoders = static_cast<index_t>(order.size());
    for (index_t i = 0; i < S; ++i)
        if (count_of(i) > 1) order.push_back(i);
    step.max_blocks = 1;
    for (index_t i = 0; i < S; ++i) {
        const cpu::model::session& s = *sessions[static_cast<std::size_t>(i)];
        step.max_blocks = std::max<index_t>(step.max_blocks, static_cast<index_t>(s.paged.blocks().size()));
        if (group * count_of(i) > detail::decode_rows) step.gathered = std::max(step.gathered, s.length + count_of(i));
    }
    const bool decode_only = step.decoders == S;
    if (decode_only) step.max_blocks = detail::table_width(step.max_blocks, blocks.blocks());
    const index_t max_blocks = step.max_blocks;

    // Host bookkeeping, in the order of the rows (slot j = session order[j]):
    //   tables (S, max_blocks), lengths (S), row seq (N), row pos (N), last row (S, by session)
    std::vector<std::int32_t> ints(static_cast<std::size_t>(S * max_blocks + S + 2 * N + S), -1);
    std::int32_t* tables = ints.data();
    std::int32_t* lengths = tables + S * max_blocks;
    std::int32_t* row_seq = lengths + S;
    std::int32_t* row_pos = row_seq + N;
    std::int32_t* last_row = row_pos + N;
    std::vector<token_id> ids(static_cast<std::size_t>(N));
    std::vector<std::int64_t> pos(static_cast<std::size_t>(N));
    for (index_t j = 0, r = 0; j < S; ++j) {
        const index_t i = order[static_cast<std::size_t>(j)], n = count_of(i);
        const cpu::model::session& s = *sessions[static_cast<std::size_t>(i)];
        const std::vector<std::int32_t>& t = s.paged.blocks();
        std::copy(t.begin(), t.end(), tables + j * max_blocks);
        lengths[j] = static_cast<std::int32_t>(s.length + n);
        if (j >= step.decoders) step.chunks.push_back({j, r, n, s.length + n});
        for (index_t k = 0; k < n; ++k, ++r) {
            ids[static_cast<std::size_t>(r)] = tokens[static_cast<std::size_t>(i)][static_cast<std::size_t>(k)];
            pos[static_cast<std::size_t>(r)] = s.length + k;
            row_seq[r] = static_cast<std::int32_t>(j);
            row_pos[r] = static_cast<std::int32_t>(s.length + k);
        }
        last_row[i] = static_cast<std::int32_t>(r - 1);
    }

    // A decode-only step replays the pool's graph of its shape (S, max_blocks), unless
    // its experts read the dispatch plan back to the host (a graph cannot hold that);
    // any other step runs eagerly on the default stream.
    const bool graphed = decode_only && pool.graphs_on_ && !experts_read_plan_back(N) &&
                         (!pool.graphs_ || pool.graphs_->failure.empty());
    if (graphed && !pool.graphs_) pool.graphs_ = std::make_unique<detail::decode_graphs>();
    const cudaStream_t stream = graphed ? pool.graphs_->stream : nullptr;
    typename model<T>::session& w = pool.step_;
    // The bookkeeping goes up in stream order, ahead of the step that reads it.
    std::int32_t* d_ints = detail::at_least(w.row_info, static_cast<index_t>(ints.size()));
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_ints, ints.data(), ints.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream));
    token_id* d_ids = detail::at_least(w.ids, N);
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_ids, ids.data(), ids.size() * sizeof(token_id), cudaMemcpyHostToDevice, stream));
    std::int64_t* d_pos = detail::at_least(w.positions, N);
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_pos, pos.data(), pos.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice, stream));

    tensor_view<const float, 2> logits;
    if (!graphed) {
        logits = forward_batch_device(pool, step, nullptr);
    } else {
        detail::decode_graphs& g = *pool.graphs_;
        const auto scratch = [&] {  // what a graph captured: the step's buffers and this model's weights
            std::vector<const void*> b = scratch_of(w);
            b.push_back(this);
            return b;
        };
        const detail::decode_graphs::shape key{S, max_blocks};
        g.follow(scratch());
        if (const cudaGraphExec_t exec = g.find(key)) {
            g.replay(exec);
            logits = tensor_view<const float, 2>(w.logits.data(), {S, V});
        } else {
            logits = forward_batch_device(pool, step, stream);  // eagerly, sizing the buffers
            g.follow(scratch());
            g.capture(key, [&] { (void)forward_batch_device(pool, step, stream); });
        }
    }
    for (index_t i = 0; i < S; ++i) {
        cpu::model::session& s = *sessions[static_cast<std::size_t>(i)];
        s.length += count_of(i);
        s.paged.advance(count_of(i));
    }
    return logits;
}

template <class T>
tensor_view<const float, 2> model<T>::forward_batch_device(paged_kv_pool<T>& pool, const detail::paged_step& step,
                                                           cudaStream_t stream) const {
    const model_config& c = config_;
    const index_t S = step.S, N = step.N, decoders = step.decoders, max_blocks = step.max_blocks;
    const index_t D = c.hidden_size, Dh = c.head_dim;
    const index_t Hq = c.num_heads, Hkv = c.num_kv_heads, q_out = Hq * Dh, kv_out = Hkv * Dh;
    const index_t qkv_out = q_out + 2 * kv_out;
    typename model<T>::session& w = pool.step_;
    const index_t block_size = pool.host().block_size();
    const std::int32_t* d_tables = w.row_info.data();            // (S, max_blocks)
    const std::int32_t* d_lengths = d_tables + S * max_blocks;   // (S) keys after this step
    const std::int32_t* d_row_seq = d_lengths + S;               // (N) slot of each row
    const std::int32_t* d_row_pos = d_row_seq + N;               // (N) position of each row
    const std::int32_t* d_last_row = d_row_pos + N;              // (S) by session: its last row
    const tensor_view<const std::int64_t, 2> pos_v(w.positions.data(), {1, N});

    const tensor_view<T, 2> x(detail::at_least(w.x, N * D), {N, D});  // (N, D)
    const tensor_view<T, 2> h(detail::at_least(w.h, N * D), {N, D});
    const tensor_view<T, 2> delta(detail::at_least(w.delta, N * D), {N, D});
    const tensor_view<T, 2> qkv(detail::at_least(w.qkv, N * qkv_out), {N, qkv_out});
    const tensor_view<T, 2> attn(detail::at_least(w.attn, N * q_out), {N, q_out});
    T* gathered_k = step.gathered > 0 ? detail::at_least(pool.gathered_k_, step.gathered * kv_out) : nullptr;
    T* gathered_v = step.gathered > 0 ? detail::at_least(pool.gathered_v_, step.gathered * kv_out) : nullptr;

    attention_options opts;
    opts.causal = true;

    // Each layer's attention, from h through qkv into attn (the decoder around it: run_decoder, with
    // each row's own position for RoPE and GPT-2's learned positions).
    const auto attend_layer = [&](index_t l) {
        // qkv = h Wqkv^T; q, k = rope(q, k) at each row's position; each row's k, v into its block
        // (one kernel for a step of at most 8 rows: RoPE v4).
        project_qkv_write_cache(qkv, h, layers_[static_cast<std::size_t>(l)], pool.keys(l).data(),
                                pool.values(l).data(),
                                detail::paged_cache_rows{d_tables, max_blocks, block_size, d_row_seq, d_row_pos},
                                w.positions.data(), stream);
        const tensor_view<const T, 4> keys_l = pool.keys(l), values_l = pool.values(l);

        // Decode rows: one call over the first `decoders` rows.             q, out (decoders, 1, Hq, Dh)
        if (decoders > 0)
            attention_paged<T>(tensor_view<T, 4>(attn.data(), {decoders, 1, Hq, Dh}, {q_out, q_out, Dh, 1}),
                               tensor_view<const T, 4>(qkv.data(), {decoders, 1, Hq, Dh}, {qkv_out, qkv_out, Dh, 1}),
                               keys_l, values_l, tensor_view<const std::int32_t, 2>(d_tables, {decoders, max_blocks}),
                               tensor_view<const std::int32_t, 1>(d_lengths, {decoders}), opts, w.attention_ws, 0,
                               stream);
        // Chunks: each on its own.                                            q, out (1, n, Hq, Dh)
        for (const detail::paged_step::chunk& ch : step.chunks) {
            const index_t j = ch.slot, n = ch.rows, r0 = ch.first_row;
            const tensor_view<const T, 4> qj(qkv.data() + r0 * qkv_out, {1, n, Hq, Dh}, {n * qkv_out, qkv_out, Dh, 1});
            const tensor_view<T, 4> oj(attn.data() + r0 * q_out, {1, n, Hq, Dh});
            if ((Hq / Hkv) * n <= detail::decode_rows) {
                attention_paged<T>(oj, qj, keys_l, values_l,
                                   tensor_view<const std::int32_t, 2>(d_tables + j * max_blocks, {1, max_blocks}),
                                   tensor_view<const std::int32_t, 1>(d_lengths + j, {1}), opts, w.attention_ws, 0,
                                   stream);
            } else {  // paged prefill rung 1: gather the sequence's keys and values, then contiguous attention
                launch(detail::gather_paged_kernel<T>, static_cast<unsigned>(ch.keys), 128, 0, stream, gathered_k,
                       gathered_v, keys_l.data(), values_l.data(), d_tables + j * max_blocks, block_size, kv_out);
                TINYLLM_CUDA_CHECK_LAUNCH();
                attend(oj, qj, tensor_view<const T, 4>(gathered_k, {1, ch.keys, Hkv, Dh}),
                       tensor_view<const T, 4>(gathered_v, {1, ch.keys, Hkv, Dh}), opts, w.attention_ws, stream);
            }
        }
    };
    run_decoder(w, x, h, delta, attn, tensor_view<const token_id, 2>(w.ids.data(), {1, N}), pos_v, attend_layer,
                stream);
    // Each session's last row, in the order of `sessions`, through the output projection.  (S, D) -> (S, V)
    // In a decode-only step row j is session j's one token already (the one-token sessions come
    // first, in their order): no gather, one node less per step, as forward_device's n == 1.
    return logits_of(w, h, decoders == S && N == S ? nullptr : d_last_row, S, stream);
}

}  // namespace tinyllm::cuda
