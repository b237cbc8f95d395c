// tinyllm/cuda/batching.cuh — continuous batching on the CUDA model: the
// batcher and the engine of tinyllm/batching.hpp and tinyllm/engine.hpp, their
// step run by cuda::model::forward_batch (tinyllm/cuda/model_paged.cuh).
//
// paged_batch_model<T> is the CUDA model as a tinyllm::batch_model
// (tinyllm/batch_model.hpp): it holds the model and a paged_kv_pool<T>, whose
// host() half (block ids, counts, free list) is the pool the batcher and the
// prefix cache work on, while the keys and values stay in the device blocks.
// All the scheduling — admission, chunked prefill, preemption, the prefix cache,
// cancellation — is the batcher's own code, unchanged; only the step differs:
//
//     host:    plan rows ─► forward_batch ────────────────► sample each row ─► events
//     device:               embed, layers, paged attention,
//                           lm head: logits (S, V) float ──► copied to the host
//
// First rung: the sampling stays on the host. Each step copies the (S, V) float
// logits back, S * V * 4 bytes (16 sequences of a 32k vocabulary: 2 MiB per
// step), and samples with cpu::sample exactly as the CPU batcher does, so the
// per-request penalties, logit biases and log-probabilities are the same code.
// A later rung would sample on the device (cuda::sample, one Philox stream per
// row) and copy back S token ids.
//
// Tokens. A request gives the tokens cuda::generate gives it alone whenever the
// two forwards' logits pick the same token: for a float model both follow the
// CPU model closely (the paged step within 1e-5 relative L2 on the simulated
// GPU, tests/cuda/test_model_paged.cu), and cpu::sample and cuda::sample draw
// the same token from the same logits. A draw that falls
// within that rounding of a boundary between two tokens could differ. A bfloat16
// model rounds more, so a near tie can flip between the two paths: its tokens
// are not compared, only its schedule (tests/cuda/test_batching.cu).
//
// One thread drives the model, its pool and its sessions at a time (the
// engine's thread, or the caller's for a bare batcher).
#pragma once

#include <tinyllm/batch_model.hpp>
#include <tinyllm/batching.hpp>
#include <tinyllm/cuda/model.cuh>
#include <tinyllm/cuda/model_paged.cuh>
#include <tinyllm/engine.hpp>

#include <cuda_runtime.h>

#include <memory>
#include <span>
#include <utility>

namespace tinyllm::cuda {

template <class T>
class paged_batch_model final : public tinyllm::batch_model {
public:
    // The model `m` (which must outlive this), with a device pool of `blocks`
    // blocks of `block_size` positions.
    paged_batch_model(const model<T>& m, index_t blocks, index_t block_size)
        : m_(&m), pool_(checked(m.config(), blocks, block_size), blocks, block_size) {}
    // The same, owning the model (what an engine built on it holds).
    paged_batch_model(std::unique_ptr<const model<T>> m, index_t blocks, index_t block_size)
        : owned_(not_null(std::move(m))), m_(owned_.get()),
          pool_(checked(owned_->config(), blocks, block_size), blocks, block_size) {}

    const model<T>& cuda_model() const { return *m_; }
    paged_kv_pool<T>& device_pool() { return pool_; }
    const paged_kv_pool<T>& device_pool() const { return pool_; }

    const model_config& config() const override { return m_->config(); }
    kv_block_pool& pool() override { return pool_.host(); }
    const kv_block_pool& pool() const override { return pool_.host(); }
    cpu::model::session new_session() override { return m_->new_session(pool_); }
    cpu::model::session new_session(kv_block_table prefix) override {
        TINYLLM_EXPECT(prefix.pool() == &pool_.host(), "cuda::paged_batch_model::new_session: the prefix's blocks ",
                       "are in another pool (not this model's paged_kv_pool)");
        cpu::model::session s = m_->new_session(pool_);
        s.length = prefix.length();
        s.paged = std::move(prefix);
        return s;
    }
    // The device step, then its (S, V) logits copied to the host.
    tensor<float, 2> forward_batch(std::span<cpu::model::session* const> sessions,
                                   std::span<const std::span<const token_id>> feeds) override {
        const tensor_view<const float, 2> d = m_->forward_batch(pool_, sessions, feeds);  // (S, V) on the device
        tensor<float, 2> logits(extents<2>{d.extent(0), d.extent(1)});
        TINYLLM_CUDA_CHECK(cudaMemcpy(logits.data(), d.data(),
                                      static_cast<std::size_t>(d.extent(0) * d.extent(1)) * sizeof(float),
                                      cudaMemcpyDeviceToHost));
        return logits;
    }

private:
    static const model_config& checked(const model_config& c, index_t blocks, index_t block_size) {
        TINYLLM_EXPECT(blocks >= 1 && block_size >= 1, "cuda::paged_batch_model: blocks = ", blocks,
                       " and block_size = ", block_size, " must be at least 1");
        return c;
    }
    static std::unique_ptr<const model<T>> not_null(std::unique_ptr<const model<T>> m) {
        TINYLLM_EXPECT(m != nullptr, "cuda::paged_batch_model: the model is null");
        return m;
    }

    std::unique_ptr<const model<T>> owned_;  // set by the owning constructor
    const model<T>* m_;
    paged_kv_pool<T> pool_;
};

// An engine (tinyllm/engine.hpp) on the CUDA model `m`: its pool sized from
// `options` exactly as the CPU engine's (engine::pool_blocks), on the device.
template <class T>
std::unique_ptr<tinyllm::engine> make_engine(std::unique_ptr<const model<T>> m, const engine_options& options) {
    TINYLLM_EXPECT(m != nullptr, "cuda::make_engine: the model is null");
    const index_t blocks = tinyllm::engine::pool_blocks(m->config(), options);
    return std::make_unique<tinyllm::engine>(
        std::make_unique<paged_batch_model<T>>(std::move(m), blocks, options.block_size), options);
}

}  // namespace tinyllm::cuda
