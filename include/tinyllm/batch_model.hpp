// tinyllm/batch_model.hpp — what continuous batching needs from a model: one
// batched step over paged sessions, whatever runs it (the CPU model here, the
// CUDA model in cuda/tinyllm/cuda/batching.cuh).
//
// The batcher (tinyllm/batching.hpp) and the engine (tinyllm/engine.hpp) only
// schedule: they choose each step's rows, move block ids (admission, prefix
// cache, preemption, finishing) and sample each sequence's next token from its
// row of logits. Of the model they need five things:
//
//     config()                      the shapes and the vocabulary (checks, EOS ids)
//     pool()                        the block bookkeeping: ids, counts, free list
//     new_session()                 an empty paged session in that pool
//     new_session(prefix)           a session continuing a prefix_cache::match
//     forward_batch(sessions, feeds) -> (S, V) float logits on the host
//
// Two models have that step: cpu::model::forward_batch over a kv_block_pool that
// holds the keys and values, and cuda::model::forward_batch over a
// cuda::paged_kv_pool, whose host() pool holds the same bookkeeping while the
// numbers live on the device. In both the sessions are cpu::model::sessions
// whose block tables are in pool(), so everything that moves only block ids is
// the same code for both.
//
// Why an interface (virtual functions) and not a template parameter. The
// engine is a concrete class with its own thread, held by `tinyllm serve`
// through a std::unique_ptr<engine>; a template would make it engine<M> and
// pull the CUDA headers into every translation unit that names the engine.
// With the interface, the CLI's CUDA code (a .cu file) builds an engine on the
// CUDA model and hands back the same type as the CPU path, and the CPU-only
// build never sees a CUDA header. The price is one virtual call per step,
// nothing beside a forward over every weight of the model.
//
// The logits come back on the host because the sampling stays there (the
// per-request penalties, logit biases, log-probabilities and Philox draws of
// batching.hpp); for a device model that is a copy of S * V * 4 bytes per step.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/tensor.hpp>

#include <memory>
#include <span>
#include <utility>

namespace tinyllm {

class batch_model {
public:
    virtual ~batch_model() = default;

    virtual const model_config& config() const = 0;
    // The pool whose block tables the sessions use (for a device model: its host bookkeeping).
    virtual kv_block_pool& pool() = 0;
    virtual const kv_block_pool& pool() const = 0;
    // An empty paged session in pool().
    virtual cpu::model::session new_session() = 0;
    // A paged session continuing `prefix` (a table of pool(), e.g. prefix_cache::match's).
    virtual cpu::model::session new_session(kv_block_table prefix) = 0;
    // Session i is fed feeds[i] (a prompt chunk, or its newest token); returns
    // the float logits of each session's last fed position, on the host.  (S, V)
    virtual tensor<float, 2> forward_batch(std::span<cpu::model::session* const> sessions,
                                           std::span<const std::span<const token_id>> feeds) = 0;
};

// The CPU model on a kv_block_pool that holds the keys and values: a pool of
// the caller's (which must outlive the adapter, as must the model), or one the
// adapter owns (what the CPU engine runs on).
class cpu_batch_model final : public batch_model {
public:
    cpu_batch_model(const cpu::model& model, kv_block_pool& pool) : m_(model), pool_(checked(model, &pool)) {}
    cpu_batch_model(const cpu::model& model, std::unique_ptr<kv_block_pool> pool)
        : owned_(std::move(pool)), m_(model), pool_(checked(model, owned_.get())) {}

    const cpu::model& model() const { return m_; }
    const model_config& config() const override { return m_.config(); }
    kv_block_pool& pool() override { return pool_; }
    const kv_block_pool& pool() const override { return pool_; }
    cpu::model::session new_session() override { return m_.new_session(pool_); }
    cpu::model::session new_session(kv_block_table prefix) override { return m_.new_session(std::move(prefix)); }
    tensor<float, 2> forward_batch(std::span<cpu::model::session* const> sessions,
                                   std::span<const std::span<const token_id>> feeds) override {
        return m_.forward_batch(sessions, feeds);
    }

private:
    static kv_block_pool& checked(const cpu::model& m, kv_block_pool* pool) {
        TINYLLM_EXPECT(pool != nullptr, "cpu_batch_model: the block pool is null");
        const model_config& c = m.config();
        TINYLLM_EXPECT(pool->layers() == c.num_layers && pool->kv_heads() == c.num_kv_heads &&
                           pool->head_dim() == c.head_dim,
                       "cpu_batch_model: the block pool has ", pool->layers(), " layers of ", pool->kv_heads(),
                       " KV heads of ", pool->head_dim(), "; the model has ", c.num_layers, " of ", c.num_kv_heads,
                       " of ", c.head_dim);
        return *pool;
    }

    std::unique_ptr<kv_block_pool> owned_;  // set by the owning constructor
    const cpu::model& m_;
    kv_block_pool& pool_;
};

}  // namespace tinyllm
