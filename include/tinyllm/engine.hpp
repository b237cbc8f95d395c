// tinyllm/engine.hpp — the loop behind a server: one continuous batcher
// (tinyllm/batching.hpp) stepping on its own thread, with requests submitted,
// read token by token and cancelled from any number of other threads.
//
// Why. A server answers each HTTP request on its own thread, but the model must
// see all of them together: that is what makes a decode step serve sixteen
// sequences for little more than the price of one. The engine is the meeting
// point. Request threads hand it work; one engine thread owns the batcher, the
// paged KV pool and the prefix cache, and runs
//
//     while running:
//         wait until some request is waiting or running
//         events = batcher.step()          (one forward over every chosen row)
//         hand each event (a token, or "finished") to its request's queue
//
// and each request thread reads its own queue, sending tokens to its client as
// they come. Everything the batcher guarantees holds here too: a request gives
// the same tokens as `cpu::generate` with the same seed, whatever else is in
// the batch.
//
// Threads. The batcher, pool and cache are touched only under the engine's
// mutex, which the loop holds for one step (one model forward). submit() and
// cancel() take it too: they announce themselves (`callers_`), and the loop lets
// them in between two steps before it steps again, so each waits at most one
// step. metrics() reads a snapshot under a mutex of its own, and each request's
// queue has its own mutex, so neither ever waits for the model.
//
// Lifetime. The engine must outlive the requests it hands out. Destroying it
// stops the loop and finishes every unfinished request as cancelled.
//
// The model. engine(cpu::model, options) makes a kv_block_pool of
// pool_blocks(config, options) blocks and runs the CPU model on it. The other
// constructor takes any batch_model (tinyllm/batch_model.hpp) with its pool
// already made — cuda::make_engine (cuda/tinyllm/cuda/batching.cuh) builds one
// on the CUDA model with a device pool of the same size — and owns it. The loop,
// the queues and the metrics are the same for both.
#pragma once

#include <tinyllm/batch_model.hpp>
#include <tinyllm/batching.hpp>
#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace tinyllm {

struct engine_options {
    batch_options batch{};
    index_t block_size = 16;           // positions per KV block
    index_t kv_blocks = 0;             // blocks in the pool; 0: room for batch.max_running sequences of
                                       // 512 positions (GPT-2's max_positions when smaller)
    index_t prefix_cache_blocks = -1;  // at most this many blocks cached; -1: a quarter of the pool; 0: no cache
};

// A snapshot of the engine, taken after each step (what /metrics reports).
struct engine_metrics {
    index_t running = 0, waiting = 0;       // requests in the batch / queued
    index_t kv_blocks = 0, kv_blocks_used = 0, block_size = 0;
    index_t prefix_cache_blocks = 0;        // blocks the prefix cache holds now
    prefix_cache_stats prefix{};            // lookups and hits since the start (zero without a cache)
    batch_stats batch{};                    // steps, prefill/decode tokens, preemptions since the start
    index_t submitted = 0;
    // How requests ended: an end-of-sequence token, max_new_tokens, their reader's
    // engine::stop (it had what it wanted, e.g. a stop string), engine::cancel or
    // shutdown, and failed (a model error, or the request's own parameters: the
    // event's `error` or engine_request::error() says which).
    index_t finished_eos = 0, finished_length = 0, finished_stop = 0, cancelled = 0, failed = 0;
    double tokens_per_second = 0.0;         // tokens generated per second over the last 10 s (at metrics())
};

class engine;

// One submitted request, as its reader sees it: a queue of events filled by the
// engine's thread. Read it with next() until an event says it has finished.
class engine_request {
public:
    index_t id() const { return id_; }

    // The next event (a token, then the last one with `finished` set), waiting
    // up to `timeout` for it; nullopt if none came in time. After the finished
    // event, nullopt at once.
    std::optional<batch_event> next(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait_for(lk, timeout, [&] { return !events_.empty() || read_done_; });
        if (events_.empty()) return std::nullopt;
        batch_event e = events_.front();
        events_.pop_front();
        if (e.finished != finish_reason::none) read_done_ = true;
        return e;
    }

    // Why the engine failed this request (a model error, or its own parameters:
    // batch_event::error), or empty.
    std::string error() const {
        std::lock_guard<std::mutex> lk(mu_);
        return error_;
    }

private:
    friend class engine;
    explicit engine_request(index_t id) : id_(id) {}

    void push(const batch_event& e, std::string error = {}) {
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (done_) return;
            events_.push_back(e);
            if (e.finished != finish_reason::none) done_ = true, error_ = std::move(error);
        }
        cv_.notify_all();
    }

    index_t id_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<batch_event> events_;
    bool done_ = false;       // the finished event has been pushed
    bool read_done_ = false;  // ... and read
    std::string error_;
    finish_reason counted_ = finish_reason::none;  // how the engine counted its end (under the engine's mutex)
};

class engine {
public:
    // The CPU model; its pool of pool_blocks(model.config(), options) blocks is the engine's.
    engine(const cpu::model& model, engine_options options = {})
        : engine(std::make_unique<cpu_batch_model>(
                     model, std::make_unique<kv_block_pool>(make_pool(model.config(), options))),
                 options) {}
    // Any batch_model (e.g. the CUDA model's: cuda::make_engine), which the engine
    // owns; its pool() is the engine's pool (options.block_size and kv_blocks are
    // not used here: the model's pool was made with them, see pool_blocks; they
    // are checked like every option all the same).
    explicit engine(std::unique_ptr<batch_model> model, engine_options options = {})
        : o_(checked_options(options)),
          model_(checked(std::move(model))),
          pool_(model_->pool()),
          cache_(cache_capacity(options, pool_.blocks()) > 0
                     ? std::make_unique<prefix_cache>(pool_, cache_capacity(options, pool_.blocks()))
                     : nullptr),
          batcher_(*model_, options.batch, cache_.get()) {
        snapshot();
        thread_ = std::thread([this] { loop(); });
    }
    engine(const engine&) = delete;
    engine& operator=(const engine&) = delete;

    ~engine() {
        {
            caller_lock lk(*this);
            stop_ = true;
        }  // caller_lock wakes the loop, which sees stop_
        thread_.join();
        for (auto& [id, r] : open_) r->push({id, -1, finish_reason::cancelled, 0.0f, {}, {}});
    }

    const batch_model& model() const { return *model_; }
    const kv_block_pool& pool() const { return pool_; }

    // The blocks of the pool the engine makes for a model of config c:
    // options.kv_blocks, or (0) room for options.batch.max_running sequences of
    // 512 positions each (GPT-2: at most its position table).
    static index_t pool_blocks(const model_config& c, const engine_options& o) {
        checked_options(o);
        if (o.kv_blocks > 0) return o.kv_blocks;
        const index_t positions =
            c.arch == model_arch::gpt2 && c.max_positions > 0 ? std::min<index_t>(512, c.max_positions) : 512;
        const index_t per_sequence = positions / o.block_size + (positions % o.block_size != 0 ? 1 : 0);
        // At most 512 blocks a sequence, so the product is checked against the pool's limit by a division.
        TINYLLM_EXPECT(o.batch.max_running <= max_pool_blocks / per_sequence,
                       "engine: batch.max_running = ", o.batch.max_running, " sequences of ", positions, " positions (",
                       per_sequence, " blocks of ", o.block_size, ") need more than the ", max_pool_blocks,
                       " blocks a pool can have; set kv_blocks, or fewer running sequences");
        return o.batch.max_running * per_sequence;
    }

    // Queue a request. Bad requests (an empty prompt, a token outside the
    // vocabulary, more positions than the pool holds, bad sampling parameters)
    // throw here, on the caller's thread, naming what was wrong.
    std::shared_ptr<engine_request> submit(batch_request r) {
        std::shared_ptr<engine_request> handle;
        {
            caller_lock lk(*this);
            TINYLLM_EXPECT(!stop_, "engine::submit: the engine is shutting down");
            const index_t id = batcher_.submit(std::move(r));
            handle.reset(new engine_request(id));
            open_.emplace(id, handle);
            ++submitted_;
            snapshot();
        }  // caller_lock wakes the loop
        return handle;
    }

    // End a request now: its reader gets a cancelled event (unless it had
    // finished already) and its KV blocks are freed.
    void cancel(const engine_request& r) {
        caller_lock lk(*this);  // wakes the loop when it goes, also when there was nothing to do
        end_open(r, cancelled_);
    }
    // The same, for a reader that has what it wanted (a stop string matched):
    // counted in metrics().finished_stop, not as cancelled. Also when the engine
    // had finished the request already (by eos or length, its last events not yet
    // read): the reader's ending is the one its client sees, so the request moves
    // to finished_stop.
    void stop(engine_request& r) {
        caller_lock lk(*this);  // wakes the loop when it goes
        if (end_open(r, finished_stop_)) return;
        if (r.counted_ == finish_reason::eos || r.counted_ == finish_reason::length) {
            --(r.counted_ == finish_reason::eos ? finished_eos_ : finished_length_);
            ++finished_stop_;
            r.counted_ = finish_reason::none;  // once
            snapshot();
        }
    }

    engine_metrics metrics() const {
        std::lock_guard<std::mutex> lk(snapshot_mu_);
        engine_metrics s = metrics_;
        // Tokens of the steps that ended in the last 10 s (or since the start, when that is shorter).
        const auto now = std::chrono::steady_clock::now();
        const double window = std::min(10.0, std::chrono::duration<double>(now - start_).count());
        index_t tokens = 0;
        for (const auto& [when, n] : rate_)
            if (now - when <= std::chrono::seconds(10)) tokens += n;
        s.tokens_per_second = window > 0.0 ? static_cast<double>(tokens) / window : 0.0;
        return s;
    }

private:
    // cancel() and stop() under the mutex: end request r if it is open (a cancelled event
    // for its reader, its blocks freed), counted in `count`; false if it was not open.
    bool end_open(const engine_request& r, index_t& count) {
        const auto it = open_.find(r.id());
        if (it == open_.end()) return false;
        batcher_.release(r.id());
        it->second->push({r.id(), -1, finish_reason::cancelled, 0.0f, {}, {}});
        open_.erase(it);
        ++count;
        snapshot();
        return true;
    }

    // The engine's mutex for a thread other than the loop's: counted in
    // callers_ while it waits, so that the loop steps aside for it.
    //
    // The release always wakes the loop, on every way out of the caller's block
    // (a submit that throws, a cancel of a request that had finished already).
    // The loop waits on cv_ for callers_ to reach 0 when a caller arrives during
    // a step; a caller that left without notifying would leave it asleep with
    // work to do, every running request stalled until some other call came.
    struct caller_lock {
        explicit caller_lock(engine& e) : e_(e) {
            ++e.callers_;
            e.mu_.lock();
            --e.callers_;
        }
        ~caller_lock() {
            e_.mu_.unlock();
            e_.cv_.notify_all();
        }
        caller_lock(const caller_lock&) = delete;
        caller_lock& operator=(const caller_lock&) = delete;
        engine& e_;
    };

    // The most blocks a kv_block_pool can have (its block ids are int32).
    static constexpr index_t max_pool_blocks = std::numeric_limits<std::int32_t>::max();

    // The options, each checked with a message naming it, before anything is
    // made from them (both constructors; pool_blocks too).
    static const engine_options& checked_options(const engine_options& o) {
        const batch_options& b = o.batch;
        TINYLLM_EXPECT(b.max_running >= 1, "engine: batch.max_running = ", b.max_running, " must be at least 1");
        TINYLLM_EXPECT(b.token_budget >= 1, "engine: batch.token_budget = ", b.token_budget, " must be at least 1");
        TINYLLM_EXPECT(b.prefill_chunk >= 1, "engine: batch.prefill_chunk = ", b.prefill_chunk, " must be at least 1");
        TINYLLM_EXPECT(o.block_size >= 1, "engine: block_size = ", o.block_size, " must be at least 1");
        TINYLLM_EXPECT(o.kv_blocks >= 0 && o.kv_blocks <= max_pool_blocks, "engine: kv_blocks = ", o.kv_blocks,
                       " must be 0 (sized from batch.max_running) or a block count up to ", max_pool_blocks);
        TINYLLM_EXPECT(o.prefix_cache_blocks >= -1, "engine: prefix_cache_blocks = ", o.prefix_cache_blocks,
                       " must be -1 (a quarter of the pool), 0 (no cache) or a block count");
        return o;
    }
    static kv_block_pool make_pool(const model_config& c, const engine_options& o) {
        return kv_block_pool(c.num_layers, pool_blocks(c, o), o.block_size, c.num_kv_heads, c.head_dim);
    }
    static std::unique_ptr<batch_model> checked(std::unique_ptr<batch_model> m) {
        TINYLLM_EXPECT(m != nullptr, "engine: the model is null");
        return m;
    }
    static index_t cache_capacity(const engine_options& o, index_t blocks) {
        TINYLLM_EXPECT(o.prefix_cache_blocks >= -1, "engine: prefix_cache_blocks = ", o.prefix_cache_blocks,
                       " must be -1 (a quarter of the pool), 0 (no cache) or a block count");
        return o.prefix_cache_blocks < 0 ? blocks / 4 : o.prefix_cache_blocks;
    }

    void loop() {
        std::unique_lock<std::mutex> lk(mu_);
        for (;;) {
            // Step when there is work and no other thread is waiting for the mutex
            // (waiting releases it: they go first, and notify when done).
            cv_.wait(lk, [&] { return stop_ || (callers_.load() == 0 && !batcher_.idle()); });
            if (stop_) return;
            std::vector<batch_event> events;
            const index_t generated_before = batcher_.stats().generated;
            try {
                events = batcher_.step();
            } catch (const std::exception& e) {
                fail_all(e.what());
                continue;
            }
            for (const batch_event& e : events) {
                const auto it = open_.find(e.id);
                if (it == open_.end()) continue;  // cancelled by its reader already
                it->second->push(e, e.error);
                if (e.finished == finish_reason::none) continue;
                it->second->counted_ = e.finished;
                ++(e.finished == finish_reason::eos      ? finished_eos_
                   : e.finished == finish_reason::length ? finished_length_
                   : e.finished == finish_reason::failed ? failed_
                                                         : cancelled_);
                open_.erase(it);
                batcher_.release(e.id);
            }
            record_rate(batcher_.stats().generated - generated_before);
            snapshot();
        }
    }

    // A step threw (a model error): every open request ends, with the message.
    void fail_all(const std::string& what) {
        for (auto& [id, r] : open_) {
            batcher_.release(id);
            r->push({id, -1, finish_reason::cancelled, 0.0f, {}, {}}, what);
            ++failed_;
        }
        open_.clear();
        snapshot();
    }

    // (end time, tokens generated) of each step of the last 10 seconds.
    void record_rate(index_t generated) {
        const auto now = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lk(snapshot_mu_);
        rate_.emplace_back(now, generated);
        while (!rate_.empty() && now - rate_.front().first > std::chrono::seconds(10)) rate_.pop_front();
    }

    void snapshot() {
        engine_metrics s;
        s.running = batcher_.running();
        s.waiting = batcher_.waiting();
        s.kv_blocks = pool_.blocks();
        s.kv_blocks_used = pool_.used_blocks();
        s.block_size = pool_.block_size();
        if (cache_) s.prefix_cache_blocks = cache_->cached_blocks(), s.prefix = cache_->stats();
        s.batch = batcher_.stats();
        s.submitted = submitted_;
        s.finished_eos = finished_eos_;
        s.finished_length = finished_length_;
        s.finished_stop = finished_stop_;
        s.cancelled = cancelled_;
        s.failed = failed_;
        std::lock_guard<std::mutex> lk(snapshot_mu_);
        metrics_ = s;
    }

    engine_options o_;
    std::unique_ptr<batch_model> model_;
    kv_block_pool& pool_;  // model_->pool()
    std::unique_ptr<prefix_cache> cache_;
    continuous_batcher batcher_;

    std::mutex mu_;  // guards everything below but the snapshot
    std::condition_variable cv_;
    std::atomic<int> callers_{0};  // threads waiting for mu_ in submit() or cancel()
    bool stop_ = false;
    std::map<index_t, std::shared_ptr<engine_request>> open_;  // requests not yet finished, by id
    index_t submitted_ = 0, finished_eos_ = 0, finished_length_ = 0, finished_stop_ = 0, cancelled_ = 0, failed_ = 0;

    mutable std::mutex snapshot_mu_;  // guards the two below
    engine_metrics metrics_;
    std::deque<std::pair<std::chrono::steady_clock::time_point, index_t>> rate_;
    const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();

    std::thread thread_;  // last: starts once everything above exists
};

}  // namespace tinyllm
