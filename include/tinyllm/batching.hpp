// tinyllm/batching.hpp — continuous batching: many requests decoded together,
// each joining and leaving the batch at any step.
//
// Why. A decode step reads every weight of the model to produce one token per
// sequence in the batch, so a step of 16 sequences costs little more than a
// step of one: batching multiplies throughput. Static batching (pad a group
// of requests, run them until the longest finishes) wastes the slots of the
// ones that finished early and makes new requests wait for the whole group.
// Iteration-level scheduling (Orca: Yu et al., "Orca: A Distributed Serving
// System for Transformer-Based Generative Models", OSDI 2022; vLLM's
// scheduler) decides the batch again at every step: finished sequences leave
// at once, waiting ones join as soon as there is room.
//
// A step of continuous_batcher:
//   1. Every running sequence that has its whole prompt fed contributes its
//      newest token (a decode row); sequences still prefilling contribute their
//      next chunk of at most `prefill_chunk` prompt tokens, all within a budget
//      of `token_budget` rows per step (chunked prefill: a long prompt does not
//      stall the decodes of everyone else).
//   2. Waiting requests are admitted in arrival order while fewer than
//      `max_running` run and budget is left. With a prefix cache
//      (tinyllm/prefix_cache.hpp) a new sequence starts from its cached prefix.
//   3. The KV blocks the step needs must be free in the pool. If they are not,
//      the prefix cache gives back blocks nobody uses; if that is not enough,
//      the most recently admitted sequence is preempted: its blocks are freed
//      and it goes back to the front of the queue, to recompute its prompt and
//      the tokens generated so far when it is admitted again (recomputation,
//      not swapping).
//   4. One model.forward_batch over all chosen rows. Each sequence whose fed
//      rows reached the end of what it knows samples its next token, with its
//      own sampling parameters, seed and Philox stream, counter = the number of
//      tokens it has generated — exactly as cpu::generate draws them, so a
//      request gives the same tokens alone or in any batch. A request whose row
//      cannot be sampled (its temperature or penalties overflow a logit) finishes
//      as `failed`, its event holding the error; the others go on.
//      A request that asks for log-probabilities (batch_request::logprobs)
//      gets, with each token, log p(token) and the k most likely tokens, from
//      the model's own distribution at that step:
//          log p(t) = z_t - log sum_j exp(z_j)      (z: the row's logits)
//      before penalties, logit_bias, temperature and any filtering (what vLLM
//      reports by default), so they do not depend on how the token was drawn.
//   5. A sequence that produced an end-of-sequence token or reached its
//      max_new_tokens finishes: the whole blocks of what it computed (prompt and
//      generated tokens) go to the prefix cache, the rest back to the pool.
// cancel(id) ends a request at any time and frees its blocks; release(id)
// forgets a request (its tokens), which a long-running server does once it has
// read them.
//
// The model. The batcher schedules and samples; the step itself belongs to a
// batch_model (tinyllm/batch_model.hpp): the CPU model on a kv_block_pool (the
// constructor taking a cpu::model and its pool), or the CUDA model on a device
// pool (cuda::paged_batch_model, cuda/tinyllm/cuda/batching.cuh), whose logits
// are copied back to the host each step. Everything above is the same code for
// both: the sessions' block tables live in the model's pool() either way.
#pragma once

#include <tinyllm/batch_model.hpp>
#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tinyllm {

struct batch_request {
    std::vector<token_id> prompt;
    index_t max_new_tokens = 32;
    sampling::params sampling{0.0f, {}, {}, {}};  // temperature 0: greedy
    std::uint64_t seed = 0;                        // Philox seed and stream of every draw
    std::uint64_t stream = 0;
    std::vector<token_id> eos_token_ids;           // stop after one of these (empty: the model config's)
    cpu::logit_adjustments adjust;                 // penalties and biases, as generation_options::adjust
    index_t logprobs = -1;                         // -1: none; k >= 0: each token's log p and the top k (see the top)
};

struct batch_options {
    index_t token_budget = 256;  // rows (prefill tokens + decode tokens) per step
    index_t max_running = 32;    // sequences in the batch at once
    index_t prefill_chunk = 128; // prompt tokens one sequence feeds per step
};

// failed: the request's own parameters made its step's row unusable (a tiny
// temperature or a huge penalty overflowing a logit to +inf); it ends alone, with
// the error in its event, and every other request goes on.
enum class finish_reason { none, eos, length, cancelled, failed };

// What a step did for one request.
struct batch_event {
    index_t id = 0;
    token_id token = -1;  // the token generated this step (-1: none, e.g. a cancelled or empty request)
    finish_reason finished = finish_reason::none;
    // When the request asked for them (batch_request::logprobs = k >= 0): log p of
    // `token`, and the k most likely tokens with theirs, most likely first (ties:
    // the smaller id first).
    float logprob = 0.0f;
    std::vector<std::pair<token_id, float>> top_logprobs;
    std::string error;  // finished == failed: what was wrong
};

// The log-probabilities of one row of logits z (V): log p(token), and the k most
// likely tokens with theirs into *top (most likely first; ties: smaller id first;
// top may be null when k = 0).
// In double, like the samplers' reference softmax; a non-finite logit is an error.
inline float token_logprobs(std::span<const float> z, token_id token, index_t k,
                            std::vector<std::pair<token_id, float>>* top) {
    const index_t V = static_cast<index_t>(z.size());
    TINYLLM_EXPECT(token >= 0 && token < V, "token_logprobs: token ", token, " is outside [0, ", V, ")");
    TINYLLM_EXPECT(k >= 0 && k <= V, "token_logprobs: k = ", k, " must be in [0, ", V, "]");
    TINYLLM_EXPECT(top != nullptr || k == 0, "token_logprobs: k = ", k,
                   " top tokens need somewhere to go (top is null)");
    double m = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < V; ++j) {
        TINYLLM_EXPECT(std::isfinite(z[static_cast<std::size_t>(j)]), "token_logprobs: logit ", j, " is ",
                       z[static_cast<std::size_t>(j)]);
        m = std::max(m, static_cast<double>(z[static_cast<std::size_t>(j)]));
    }
    double sum = 0.0;
    for (const float x : z) sum += std::exp(static_cast<double>(x) - m);
    const double lse = m + std::log(sum);
    const auto logp = [&](token_id t) { return static_cast<float>(z[static_cast<std::size_t>(t)] - lse); };
    if (top) top->clear();
    if (k > 0) {
        std::vector<token_id> ids(static_cast<std::size_t>(V));
        for (index_t j = 0; j < V; ++j) ids[static_cast<std::size_t>(j)] = static_cast<token_id>(j);
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](token_id a, token_id b) {
            const float za = z[static_cast<std::size_t>(a)], zb = z[static_cast<std::size_t>(b)];
            return za > zb || (za == zb && a < b);
        });
        for (index_t j = 0; j < k; ++j) top->emplace_back(ids[static_cast<std::size_t>(j)], logp(ids[static_cast<std::size_t>(j)]));
    }
    return logp(token);
}

struct batch_stats {
    index_t steps = 0;
    index_t prefill_tokens = 0;   // prompt (and recomputed) positions fed
    index_t decode_tokens = 0;    // decode rows fed
    index_t generated = 0;        // tokens sampled
    index_t preemptions = 0;
    index_t max_batch_rows = 0;   // the most rows one step fed
};

class continuous_batcher {
public:
    // The CPU model on `pool` (both must outlive the batcher).
    continuous_batcher(const cpu::model& model, kv_block_pool& pool, batch_options options = {},
                       prefix_cache* cache = nullptr)
        : own_(checked_cpu_model(model, pool)), m_(*own_), pool_(pool), o_(options), cache_(cache) {
        check_options();
        check_cache();
    }
    // Any batch_model, e.g. the CUDA model's (cuda::paged_batch_model); its pool()
    // holds the block tables and the prefix cache's blocks. It must outlive the batcher.
    explicit continuous_batcher(batch_model& model, batch_options options = {}, prefix_cache* cache = nullptr)
        : m_(model), pool_(model.pool()), o_(options), cache_(cache) {
        check_options();
        check_cache();
    }

    // Queue a request; returns its id (0, 1, 2, ... in submission order). A
    // request the pool could never hold, or with bad parameters, is refused here.
    index_t submit(batch_request r) {
        const model_config& c = m_.config();
        TINYLLM_EXPECT(!r.prompt.empty(), "continuous_batcher::submit: the prompt is empty");
        TINYLLM_EXPECT(r.max_new_tokens >= 0, "continuous_batcher::submit: max_new_tokens = ", r.max_new_tokens,
                       " must not be negative");
        for (std::size_t t = 0; t < r.prompt.size(); ++t)
            TINYLLM_EXPECT(r.prompt[t] >= 0 && r.prompt[t] < c.vocab_size, "continuous_batcher::submit: token id ",
                           r.prompt[t], " at prompt position ", t, " is outside the vocabulary [0, ", c.vocab_size,
                           ")");
        detail::check_params(r.sampling);
        TINYLLM_EXPECT(r.logprobs >= -1 && r.logprobs <= c.vocab_size, "continuous_batcher::submit: logprobs = ",
                       r.logprobs, " must be -1 (none) or a count of top tokens in [0, ", c.vocab_size, "]");
        TINYLLM_EXPECT(std::isfinite(r.adjust.presence_penalty) && std::isfinite(r.adjust.frequency_penalty),
                       "continuous_batcher::submit: presence_penalty = ", r.adjust.presence_penalty,
                       " and frequency_penalty = ", r.adjust.frequency_penalty, " must be finite");
        for (const auto& [t, b] : r.adjust.logit_bias)
            TINYLLM_EXPECT(t >= 0 && t < c.vocab_size && std::isfinite(b), "continuous_batcher::submit: logit_bias ",
                           b, " for token ", t, " needs a token in [0, ", c.vocab_size, ") and a finite bias");
        // prompt + max_new_tokens positions: checked before they are added, as the sum may not fit index_t.
        const index_t prompt = static_cast<index_t>(r.prompt.size()), bs = pool_.block_size();
        TINYLLM_EXPECT(r.max_new_tokens <= std::numeric_limits<index_t>::max() - prompt,
                       "continuous_batcher::submit: ", prompt, " prompt + max_new_tokens = ", r.max_new_tokens,
                       " new tokens are more positions than the whole pool's ", pool_.blocks(), " blocks of ", bs,
                       " hold");
        const index_t total = prompt + r.max_new_tokens;
        TINYLLM_EXPECT(c.arch != model_arch::gpt2 || total <= c.max_positions, "continuous_batcher::submit: ",
                       r.prompt.size(), " prompt + ", r.max_new_tokens, " new tokens exceed GPT-2's ", c.max_positions,
                       " positions");
        const index_t blocks = total / bs + (total % bs != 0 ? 1 : 0);
        TINYLLM_EXPECT(blocks <= pool_.blocks(), "continuous_batcher::submit: ", total, " positions need ", blocks,
                       " blocks; the whole pool has ", pool_.blocks());
        auto seq = std::make_unique<sequence>();
        seq->id = next_id_++;
        seq->request = std::move(r);
        seq->eos = seq->request.eos_token_ids.empty() ? c.eos_token_ids : seq->request.eos_token_ids;
        waiting_.push_back(seq.get());
        const index_t id = seq->id;
        all_.emplace(id, std::move(seq));
        return id;
    }

    // End request `id` now: finished as cancelled, its blocks freed. Unknown or finished: nothing happens.
    void cancel(index_t id) {
        sequence* s = find(id);
        if (!s || s->done != finish_reason::none) return;
        s->done = finish_reason::cancelled;
        s->session.reset();
        waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
        running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
        cancelled_.push_back({id, -1, finish_reason::cancelled, 0.0f, {}, {}});
    }

    // Forget request `id` (cancelled first if it has not finished): tokens(id)
    // and finished(id) no longer know it. Unknown ids are ignored.
    void release(index_t id) {
        cancel(id);
        all_.erase(id);
    }

    // One iteration (see the top); returns what happened to each request this step.
    std::vector<batch_event> step() {
        std::vector<batch_event> events;
        std::swap(events, cancelled_);
        // Requests with nothing to generate finish at once.
        for (auto it = waiting_.begin(); it != waiting_.end();) {
            if ((*it)->request.max_new_tokens == 0) {
                (*it)->done = finish_reason::length;
                events.push_back({(*it)->id, -1, finish_reason::length, 0.0f, {}, {}});
                it = waiting_.erase(it);
            } else {
                ++it;
            }
        }
        std::vector<sequence*> batch;
        std::vector<std::span<const token_id>> feeds;
        bool admit = true;  // no new admissions once this step has had to preempt
        for (;;) {
            plan(batch, feeds, admit);
            if (batch.empty()) return events;
            index_t need = 0;
            for (std::size_t i = 0; i < batch.size(); ++i)
                need += batch[i]->session->paged.blocks_needed(static_cast<index_t>(feeds[i].size()));
            if (need <= pool_.free_blocks()) break;
            if (cache_ && cache_->evict(need - pool_.free_blocks()) > 0) continue;
            preempt_newest();
            admit = false;
        }
        std::vector<cpu::model::session*> sessions;
        for (sequence* s : batch) sessions.push_back(s->session.get());
        tensor<float, 2> logits = m_.forward_batch(sessions, feeds);  // (S, V)
        ++stats_.steps;
        index_t rows = 0;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            sequence& s = *batch[i];
            const index_t fed = static_cast<index_t>(feeds[i].size());
            rows += fed;
            // A decode row feeds the newest generated token; anything else is prefill (or recomputation).
            const bool decode = fed == 1 && !s.generated.empty() && s.prefilled == s.context_length() - 1 &&
                                s.prefilled >= static_cast<index_t>(s.request.prompt.size());
            (decode ? stats_.decode_tokens : stats_.prefill_tokens) += fed;
            s.prefilled += fed;
            if (s.prefilled < s.context_length()) continue;  // mid-prompt: nothing to sample yet
            // Draw the next token as cpu::generate does: counter = tokens generated so far.
            token_id token = 0;
            batch_event e{s.id, token, finish_reason::none, 0.0f, {}, {}};
            try {
                std::vector<float> raw;  // the row before the adjustments, for the log-probabilities
                if (s.request.logprobs >= 0) {
                    const float* row = logits.data() + static_cast<index_t>(i) * logits.extent(1);
                    raw.assign(row, row + logits.extent(1));
                }
                if (s.request.adjust.active())
                    cpu::adjust_logits(logits.view().narrow(0, static_cast<index_t>(i), 1), s.generated,
                                       s.request.adjust);
                cpu::sample(tensor_view<token_id, 1>(&token, {1}),
                            tensor_view<const float, 2>(logits.view()).narrow(0, static_cast<index_t>(i), 1),
                            s.request.sampling, s.request.seed, static_cast<std::uint64_t>(s.generated.size()),
                            s.request.stream);
                if (s.request.logprobs >= 0)
                    e.logprob = token_logprobs(
                        raw, token, std::min<index_t>(s.request.logprobs, m_.config().vocab_size), &e.top_logprobs);
            } catch (const error& err) {
                // This request's row could not be sampled (its penalties or temperature overflowed a
                // logit, or its logits are not finite): it fails alone; the others in the step go on.
                finish(s, finish_reason::failed);
                events.push_back({s.id, -1, finish_reason::failed, 0.0f, {}, err.what()});
                continue;
            }
            e.token = token;
            s.generated.push_back(token);
            ++stats_.generated;
            if (std::find(s.eos.begin(), s.eos.end(), token) != s.eos.end()) e.finished = finish_reason::eos;
            else if (static_cast<index_t>(s.generated.size()) >= s.request.max_new_tokens)
                e.finished = finish_reason::length;
            if (e.finished != finish_reason::none) finish(s, e.finished);
            events.push_back(e);
        }
        stats_.max_batch_rows = std::max(stats_.max_batch_rows, rows);
        return events;
    }

    // Run steps until every request has finished.
    void run() {
        while (!idle()) step();
    }

    bool idle() const { return waiting_.empty() && running_.empty(); }
    index_t running() const { return static_cast<index_t>(running_.size()); }
    index_t waiting() const { return static_cast<index_t>(waiting_.size()); }
    const batch_stats& stats() const { return stats_; }
    // Request id's generated tokens so far, and how it finished (none: not yet).
    const std::vector<token_id>& tokens(index_t id) const { return expect(id)->generated; }
    finish_reason finished(index_t id) const { return expect(id)->done; }

private:
    struct sequence {
        index_t id = 0;
        batch_request request;
        std::vector<token_id> eos;
        std::vector<token_id> generated;
        std::unique_ptr<cpu::model::session> session;  // while running
        index_t prefilled = 0;                         // positions of prompt + generated the session holds
        finish_reason done = finish_reason::none;
        // What the sequence knows: its prompt, then the tokens it generated. The
        // session holds the first `prefilled` of them; the newest generated token
        // is fed at the next step (its keys and values are not computed yet).
        index_t context_length() const { return static_cast<index_t>(request.prompt.size() + generated.size()); }
        token_id at(index_t p) const {
            const index_t n = static_cast<index_t>(request.prompt.size());
            return p < n ? request.prompt[static_cast<std::size_t>(p)] : generated[static_cast<std::size_t>(p - n)];
        }
    };

    // The rows of this step: decodes first, then prefill chunks, then new admissions.
    void plan(std::vector<sequence*>& batch, std::vector<std::span<const token_id>>& feeds, bool admit_new) {
        batch.clear(), feeds.clear(), feed_storage_.clear();
        index_t budget = o_.token_budget;
        const auto add = [&](sequence* s) {
            const index_t left = s->context_length() - s->prefilled;
            const index_t n = std::min({left, o_.prefill_chunk, budget});
            if (n <= 0) return false;
            std::vector<token_id> rows;
            for (index_t p = s->prefilled; p < s->prefilled + n; ++p) rows.push_back(s->at(p));
            feed_storage_.push_back(std::move(rows));
            batch.push_back(s);
            budget -= n;
            return true;
        };
        for (sequence* s : running_)  // decodes (one row each) before prefill chunks
            if (s->context_length() - s->prefilled == 1 && budget > 0) add(s);
        for (sequence* s : running_)
            if (s->context_length() - s->prefilled > 1 && budget > 0) add(s);
        while (admit_new && !waiting_.empty() && budget > 0 && static_cast<index_t>(running_.size()) < o_.max_running) {
            sequence* s = waiting_.front();
            waiting_.pop_front();
            admit(*s);
            running_.push_back(s);
            add(s);
        }
        for (const auto& rows : feed_storage_) feeds.emplace_back(rows);
    }

    void admit(sequence& s) {
        s.prefilled = 0;
        if (cache_) {
            // The cached prefix of what it knows, leaving at least one position to compute.
            std::vector<token_id> known;
            for (index_t p = 0; p + 1 < s.context_length(); ++p) known.push_back(s.at(p));
            s.session = std::make_unique<cpu::model::session>(m_.new_session(cache_->match(known)));
            s.prefilled = s.session->length;
        } else {
            s.session = std::make_unique<cpu::model::session>(m_.new_session());
        }
    }

    // Free the most recently admitted running sequence's blocks and queue it first again.
    void preempt_newest() {
        TINYLLM_EXPECT(!running_.empty(), "continuous_batcher: the pool's ", pool_.blocks(),
                       " blocks cannot hold even one sequence's step");
        sequence* s = running_.back();
        running_.pop_back();
        s->session.reset();
        s->prefilled = 0;
        waiting_.push_front(s);
        ++stats_.preemptions;
    }

    void finish(sequence& s, finish_reason why) {
        s.done = why;
        if (cache_) {
            // Everything the session computed: the prompt and the generated tokens fed so far
            // (a chat's next turn begins with them).
            std::vector<token_id> known;
            for (index_t p = 0; p < s.session->length; ++p) known.push_back(s.at(p));
            cache_->insert(known, s.session->paged);
        }
        s.session.reset();
        running_.erase(std::remove(running_.begin(), running_.end(), &s), running_.end());
    }

    void check_options() const {
        TINYLLM_EXPECT(o_.token_budget >= 1 && o_.max_running >= 1 && o_.prefill_chunk >= 1,
                       "continuous_batcher: token_budget = ", o_.token_budget, ", max_running = ", o_.max_running,
                       " and prefill_chunk = ", o_.prefill_chunk, " must all be at least 1");
    }
    // The prefix cache's blocks must be in the pool the sessions use: the cache
    // hands its blocks to their tables, and the step counts free blocks there.
    void check_cache() const {
        TINYLLM_EXPECT(!cache_ || cache_->pool() == &pool_,
                       "continuous_batcher: the prefix cache is on another "
                       "kv_block_pool than the model's; it must cache blocks of the pool the sequences use");
    }
    static std::unique_ptr<batch_model> checked_cpu_model(const cpu::model& model, kv_block_pool& pool) {
        TINYLLM_EXPECT(pool.layers() == model.config().num_layers && pool.kv_heads() == model.config().num_kv_heads &&
                           pool.head_dim() == model.config().head_dim,
                       "continuous_batcher: the block pool does not have the model's layers, KV heads and head dim");
        return std::make_unique<cpu_batch_model>(model, pool);
    }

    sequence* find(index_t id) const {
        const auto it = all_.find(id);
        return it == all_.end() ? nullptr : it->second.get();
    }
    const sequence* expect(index_t id) const {
        const sequence* s = find(id);
        TINYLLM_EXPECT(s, "continuous_batcher: no request ", id);
        return s;
    }

    std::unique_ptr<batch_model> own_;  // the CPU constructor's adapter
    batch_model& m_;
    kv_block_pool& pool_;               // m_.pool()
    batch_options o_;
    prefix_cache* cache_;
    std::unordered_map<index_t, std::unique_ptr<sequence>> all_;  // every request not released, by id
    std::deque<sequence*> waiting_;
    std::vector<sequence*> running_;  // in admission order
    std::vector<batch_event> cancelled_;
    std::vector<std::vector<token_id>> feed_storage_;
    batch_stats stats_;
    index_t next_id_ = 0;
};

}  // namespace tinyllm
