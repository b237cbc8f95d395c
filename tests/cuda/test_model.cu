// CUDA tests for tinyllm/cuda/model.cuh: the whole decoder on the GPU.
//
//   * float32 weights on the HF fixtures (../shared/fixtures/hf): the last-position
//     logits within 1e-4 relative L2 of transformers', the sum of |logits| per
//     position within 1e-4, and the 24 greedy tokens identical;
//   * bfloat16 weights, teacher-forced over prompt + transformers' continuation:
//     the logits of EVERY position within 2e-2 relative L2 of the float model
//     (the CPU reference, itself ~1e-6 from transformers) — for Mixtral, one
//     position per case may be a routing flip (see the test);
//   * random models of other shapes (head dim 64, so the bf16 prompt takes the
//     tensor-core kernel; a Mixtral-shaped one), GPU against the CPU reference;
//   * KV-cache decoding equals the full forward; a batch of different-length
//     prompts equals the CPU running them one by one; bad input fails clearly.
// Every device output is produced into fresh buffers; the logits are compared
// with NaN never passing (tests/support/compare.hpp).
#include "support/catch.hpp"
#include "support/compare.hpp"
#include "support/cuda_small_models.hpp"
#include "support/fixtures.hpp"

#include <tinyllm/cuda/model.cuh>
#include <tinyllm/cuda/speculative.cuh>
#include <tinyllm/model.hpp>
#if defined(TINYLLM_SIMULATED_GPU)
#include <tinyllm/sim/executor.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace tc = tinyllm::cuda;
namespace cpu = tinyllm::cpu;
using tinyllm::bfloat16;
using tinyllm::index_t;
using tinyllm::tensor_view;
using tinyllm_test::contains;
using tinyllm_test::host_rows;
using tinyllm_test::small_config;
using tinyllm_test::small_model_config;
using tinyllm_test::tolerance;

namespace {

// All positions' logits of one sequence fed at once: (n, V) on the host.
template <class T>
std::vector<float> gpu_all_logits(const tc::model<T>& m, const std::vector<tinyllm::token_id>& seq) {
    const index_t n = static_cast<index_t>(seq.size());
    auto s = m.new_session(1, n);
    const auto logits = m.forward(s, tensor_view<const tinyllm::token_id, 2>(seq.data(), {1, n}), {}, true);
    return host_rows(logits, 0, n);
}

std::vector<double> cpu_all_logits(const cpu::model& m, const std::vector<tinyllm::token_id>& seq) {
    auto s = m.new_session(static_cast<index_t>(seq.size()));
    const auto logits = m.forward(s, seq);
    return {logits.values().begin(), logits.values().end()};
}

// Every position's logits within `rel_l2` of the reference (per position), except
// at most `outliers` positions, which must still be finite (NaN never passes) and
// within 0.4 rel-L2: a Mixtral token routed to another 2nd expert in one layer (the
// only reason for an outlier) moves its logits by 0.10-0.25 (measured here and with
// transformers; the random model's bf16 flips over 300 seeds on the simulated GPU:
// at most 4 positions of 77, none above 0.19), where a broken kernel moves them by
// about 1. Per element the bound is `element` (by default loose: a bf16 logit is ~3
// significant digits, and the criterion is the rel-L2).
void require_positions_close(const std::vector<float>& got, const std::vector<double>& want, index_t V, double rel_l2,
                             const std::string& what, index_t outliers = 0, tolerance element = tolerance{0.5, 0.1}) {
    REQUIRE(got.size() == want.size());
    const index_t n = static_cast<index_t>(got.size()) / V;
    index_t over = 0;
    double worst = 0;
    for (index_t t = 0; t < n; ++t) {
        const std::vector<float> g(got.begin() + t * V, got.begin() + (t + 1) * V);
        const std::vector<double> w(want.begin() + t * V, want.begin() + (t + 1) * V);
        const auto c = tinyllm_test::compare(g, w, tolerance{element.abs, element.rel, rel_l2},
                                             what + ", position " + std::to_string(t));
        INFO(c.report);
        REQUIRE(c.non_finite == 0);
        worst = std::max(worst, c.rel_l2_error);
        if (!c.passed) {
            ++over;
            std::printf("  %s\n", c.report.c_str());
            REQUIRE(c.rel_l2_error <= 0.4);
        }
    }
    std::printf("  %s: %lld positions, worst rel-L2 %.3g, %lld over %.0e (allowed %lld)\n", what.c_str(),
                static_cast<long long>(n), worst, static_cast<long long>(over), rel_l2, static_cast<long long>(outliers));
    REQUIRE(over <= outliers);
}

}  // namespace

TEST_CASE("cuda::model float32 reproduces transformers on the HF fixtures", "[model][conformance]") {
    for (const std::string name : {"gpt2", "llama", "mixtral"}) {
        const std::string dir = tinyllm_test::fixture_dir(name);
        if (dir.empty()) {
            WARN("../shared/fixtures/hf/" << name << " not found: conformance skipped");
            continue;
        }
        const auto m = tc::model<float>::load(dir);
        const auto expected = tinyllm::detail::read_json_file(dir + "/expected.json");
        for (const auto& c : expected.at("cases").as_array()) {
            const auto prompt = tinyllm_test::ids_of(c.at("prompt"));
            const index_t V = m.config().vocab_size, n = static_cast<index_t>(prompt.size());
            INFO(name << ", prompt of " << n << " tokens");
            const auto all = gpu_all_logits(m, prompt);  // (n, V)
            const std::vector<float> last(all.end() - V, all.end());
            TINYLLM_REQUIRE_CLOSE(last, tinyllm_test::doubles_of(c.at("last_logits")), tolerance{1e-3, 1e-3, 1e-4},
                                  name + " float32 GPU last-position logits");
            std::vector<float> sums;
            for (index_t t = 0; t < n; ++t) {
                double s = 0;
                for (index_t i = 0; i < V; ++i) s += std::fabs(all[static_cast<std::size_t>(t * V + i)]);
                sums.push_back(static_cast<float>(s));
            }
            TINYLLM_REQUIRE_CLOSE(sums, tinyllm_test::doubles_of(c.at("logits_sum_abs_per_pos")),
                                  tolerance{0, 1e-4, 1e-4}, name + " float32 GPU sum |logits| per position");

            cpu::generation_options greedy;
            greedy.max_new_tokens = 24;
            CHECK(tc::generate(m, prompt, greedy) == tinyllm_test::ids_of(c.at("greedy")));
        }
    }
}

TEST_CASE("cuda::model bfloat16: every teacher-forced position within 2e-2 relative L2", "[model][conformance]") {
    for (const std::string name : {"gpt2", "llama", "mixtral"}) {
        const std::string dir = tinyllm_test::fixture_dir(name);
        if (dir.empty()) {
            WARN("../shared/fixtures/hf/" << name << " not found: skipped");
            continue;
        }
        const auto host = cpu::model::load(dir);
        const tc::model<bfloat16> m(host);
        const auto expected = tinyllm::detail::read_json_file(dir + "/expected.json");
        for (const auto& c : expected.at("cases").as_array()) {
            // The prompt, then transformers' own greedy continuation (teacher forcing).
            auto seq = tinyllm_test::ids_of(c.at("prompt"));
            const auto continuation = tinyllm_test::ids_of(c.at("greedy"));
            seq.insert(seq.end(), continuation.begin(), continuation.end());
            INFO(name << ", " << seq.size() << " positions");
            // Mixtral: the float reference routes some tokens with the 2nd and 3rd experts within
            // 2.3e-5 … 1e-3 of each other in probability (measured with transformers), below bf16's
            // resolution; transformers' own bf16 model re-routes one of them (that position: 0.245
            // rel-L2). We keep the router's logits in float, which avoided it there, but allow one
            // such position per case rather than call a legitimate re-routing an error.
            require_positions_close(gpu_all_logits(m, seq), cpu_all_logits(host, seq), m.config().vocab_size, 2e-2,
                                    name + " bf16 GPU vs float reference", name == "mixtral" ? 1 : 0);
        }
    }
}

TEST_CASE("cuda::model on random models: the tensor-core prompt path, MoE, GPT-2", "[model]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::llama, model_arch::mixtral, model_arch::gpt2}) {
        tinyllm::model_config c = small_model_config(arch);
        const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + static_cast<int>(arch)));
        std::vector<tinyllm::token_id> seq;
        tinyllm::philox_generator g(tinyllm_test::test_seed(), 7);
        for (int i = 0; i < 77; ++i) seq.push_back(static_cast<tinyllm::token_id>(g.next_bits() % c.vocab_size));
        const auto want = cpu_all_logits(host, seq);
        const std::string what = std::string(arch == model_arch::llama ? "llama" : arch == model_arch::mixtral ? "mixtral" : "gpt2") +
                                 " (random, 77 positions)";
        // float: flash (v3) for the prompt; bf16: mma (v4, head dim 64). Mixtral in float may
        // still route one token differently: the GPU sums the router's logits in another order,
        // so a 2nd and 3rd expert within float rounding of each other can swap (seed
        // 3198995154288795877: one position at 0.10 rel-L2, every other under 1e-5).
        require_positions_close(gpu_all_logits(tc::model<float>(host), seq), want, c.vocab_size, 1e-5,
                                what + " float32", arch == model_arch::mixtral ? 1 : 0);
        // bf16 MoE: a token whose 2nd and 3rd experts are within bf16 rounding of each other may
        // be routed differently from the float reference (a legitimate flip, not an error), so a
        // few positions may exceed the bound there; the dense models must meet it everywhere.
        const index_t flips = arch == model_arch::mixtral ? 77 / 10 : 0;
        require_positions_close(gpu_all_logits(tc::model<bfloat16>(host), seq), want, c.vocab_size, 3e-2,
                                what + " bf16", flips);
    }
}

TEST_CASE("cuda::model on quantized weights gives the quantized CPU model's logits", "[model][quantize]") {
    using tinyllm::model_arch;
    for (const model_arch arch : {model_arch::llama, model_arch::gpt2, model_arch::mixtral}) {
        tinyllm::model_config c = small_model_config(arch);
        const auto weights = tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 20 + static_cast<int>(arch));
        const std::size_t dense_bytes = tc::model<float>(c, weights).weight_bytes();
        for (const char* format : {"int8", "int4-g32"}) {
            cpu::model host(c, weights);
            host.quantize_weights(tinyllm::parse_quant_spec(format));
            std::vector<tinyllm::token_id> seq;
            tinyllm::philox_generator g(tinyllm_test::test_seed(), 21);
            for (int i = 0; i < 40; ++i) seq.push_back(static_cast<tinyllm::token_id>(g.next_bits() % c.vocab_size));
            const auto want = cpu_all_logits(host, seq);
            const index_t V = c.vocab_size;
            const std::string what =
                std::string(arch == model_arch::llama ? "llama" : arch == model_arch::gpt2 ? "gpt2" : "mixtral") + " " +
                format;
            const tc::model<float> m(host);
            REQUIRE(m.quantized());
            CHECK(m.weight_bytes() < dense_bytes);
            // The prompt: v1 (dequantize + cuBLAS) in float, the CPU's float accuracy.
            require_positions_close(gpu_all_logits(m, seq), want, V, 1e-5, what + " float32 prompt",
                                    arch == model_arch::mixtral ? 1 : 0);  // a routing swap: see the random-model test
            // Decoding, one token at a time: v2, the fused GEMV. A step's hidden state comes from
            // other kernels than the prompt's (decode attention, the GEMVs), so its router logits
            // round differently again, and Mixtral may swap a 2nd and 3rd expert at a position
            // of its own: one step is allowed, as for the prompt.
            auto s = m.new_session(1, 40);
            m.forward(s, tensor_view<const tinyllm::token_id, 2>(seq.data(), {1, 9}));
            std::vector<float> steps;  // (31, V): row p is token 9 + p
            for (index_t t = 9; t < 40; ++t) {
                const auto one = host_rows(m.forward(s, tensor_view<const tinyllm::token_id, 2>(&seq[t], {1, 1})), 0, 1);
                steps.insert(steps.end(), one.begin(), one.end());
            }
            require_positions_close(steps, std::vector<double>(want.begin() + 9 * V, want.end()), V, 1e-5,
                                    what + " float32 decode steps (position p: token 9 + p)", arch == model_arch::mixtral ? 1 : 0,
                                    tolerance{1e-4, 1e-4});
            // bfloat16: the prompt through v3 (tensor cores), within the dense bf16 model's bound
            // (and, for Mixtral, its allowance for routing flips: see the random-model test).
            require_positions_close(gpu_all_logits(tc::model<bfloat16>(host), seq), want, V, 3e-2, what + " bf16 prompt",
                                    arch == model_arch::mixtral ? 40 / 10 : 0);
        }
    }
}

TEST_CASE("cuda::model int8 KV cache: the CPU int8 session's bytes and logits", "[model][quantize]") {
    using tinyllm::model_arch;
    using kv_dtype = cpu::model::kv_dtype;
    for (const model_arch arch : {model_arch::llama, model_arch::gpt2}) {
        const tinyllm::model_config c = small_model_config(arch);
        const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 30 + static_cast<int>(arch)));
        const tc::model<float> m(host);
        const std::string what = arch == model_arch::llama ? "llama" : "gpt2";
        std::vector<tinyllm::token_id> seq;
        tinyllm::philox_generator g(tinyllm_test::test_seed(), 31);
        for (int i = 0; i < 32; ++i) seq.push_back(static_cast<tinyllm::token_id>(g.next_bits() % c.vocab_size));
        const index_t n = 32, prefill = 7;

        auto cs = host.new_session(n, kv_dtype::int8);
        auto gs = m.new_session(1, n, kv_dtype::int8);
        CHECK(gs.cache_bytes() * 7 < m.new_session(1, n).cache_bytes() * 2);  // under 2/7: 3.6x less at Dh = 64
        // The cache after `length` positions: the CPU's bytes and steps. The GPU's keys
        // differ from the CPU's by float rounding (about 1e-5 relative per element), so
        // the steps agree to 1e-4, and now and then an element lands on the other side
        // of a half step: its byte is one apart ("flipped"). Returns the flips so far.
        const index_t per_layer = n * c.num_kv_heads * c.head_dim;
        const auto flips = [&](index_t length) {
            index_t differ = 0;
            std::vector<std::pair<std::vector<float>, const tinyllm::tensor<float, 3>*>> steps;
            for (index_t l = 0; l < c.num_layers; ++l) {
                const auto& cache = cs.caches_int8[static_cast<std::size_t>(l)];
                for (const bool keys : {true, false}) {
                    std::vector<std::int8_t> q(static_cast<std::size_t>(per_layer));
                    tc::copy_to_host(std::span<std::int8_t>(q), keys ? gs.keys8[l] : gs.values8[l]);
                    const auto& want_q = keys ? cache.key_values() : cache.value_values();
                    for (index_t i = 0; i < length * c.num_kv_heads * c.head_dim; ++i) {
                        const int d = std::abs(int{q[static_cast<std::size_t>(i)]} - int{want_q.data()[i]});
                        REQUIRE(d <= 1);
                        differ += d;
                    }
                    steps.emplace_back(std::vector<float>(static_cast<std::size_t>(n * c.num_kv_heads)),
                                       keys ? &cache.key_scales() : &cache.value_scales());
                    tc::copy_to_host(std::span<float>(steps.back().first), keys ? gs.key_steps[l] : gs.value_steps[l]);
                }
            }
            // After a flip, the layers above see inputs one step apart: steps within 1e-2.
            const float rel = differ == 0 ? 1e-4f : 1e-2f;
            for (const auto& [got, want] : steps)
                for (index_t i = 0; i < length * c.num_kv_heads; ++i) {
                    INFO("step " << i << ": " << got[static_cast<std::size_t>(i)] << " vs " << want->data()[i]);
                    REQUIRE(std::fabs(got[static_cast<std::size_t>(i)] - want->data()[i]) <= rel * want->data()[i]);
                }
            return differ;
        };
        // The logits: the float model's bound (1e-5 relative L2) while the bytes are the
        // CPU's; after a flip, one step in one element shifts them by up to ~3e-4
        // (observed), so 2e-3.
        index_t exact = 0, after_flip = 0;
        double worst_exact = 0;
        const auto check_logits = [&](const std::vector<float>& got, const tinyllm::tensor<float, 2>& want, index_t length,
                                      const std::string& step) {
            const std::vector<double> w(want.values().begin(), want.values().end());
            const bool same_bytes = flips(length) == 0;
            const tolerance tol = same_bytes ? tolerance{1e-4, 1e-4, 1e-5} : tolerance{2e-2, 2e-2, 2e-3};
            TINYLLM_REQUIRE_CLOSE(got, w, tol, what + " int8 KV " + step + (same_bytes ? "" : " (after a flip)"));
            if (same_bytes) {
                ++exact;
                worst_exact = std::max(worst_exact, tinyllm_test::compare(got, w, tolerance{}, "").rel_l2_error);
            } else {
                ++after_flip;
            }
        };
        // The prompt, then one token at a time: every position's logits against the CPU's.
        const auto cpu_prompt = host.forward(cs, std::span<const tinyllm::token_id>(seq.data(), prefill));
        check_logits(host_rows(m.forward(gs, tensor_view<const tinyllm::token_id, 2>(seq.data(), {1, prefill}), {},
                                         true), 0, prefill),
                     cpu_prompt, prefill, "prompt");
        for (index_t t = prefill; t < n; ++t) {
            const auto want = host.forward(cs, std::span<const tinyllm::token_id>(&seq[t], 1));
            check_logits(host_rows(m.forward(gs, tensor_view<const tinyllm::token_id, 2>(&seq[t], {1, 1})), 0, 1),
                         want, t + 1, "decode step " + std::to_string(t));
        }
        const index_t differ = flips(n);
        std::printf("  %s: %lld of %lld cached int8 values one apart from the CPU's; %lld forwards with the CPU's "
                    "bytes (worst rel-L2 %.2g), %lld after a flip\n",
                    what.c_str(), static_cast<long long>(differ), static_cast<long long>(2 * c.num_layers * per_layer),
                    static_cast<long long>(exact), worst_exact, static_cast<long long>(after_flip));
        CHECK(differ * 200 < 2 * c.num_layers * per_layer);  // under 0.5% (observed at most 0.13%)
    }
    // Generation: the same tokens as cpu::generate with an int8 cache, greedy and sampled.
    const tinyllm::model_config c = small_config(model_arch::llama);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 33));
    const tc::model<float> m(host);
    for (const bool sampled : {false, true}) {
        cpu::generation_options o;
        o.max_new_tokens = 10;
        o.kv_cache = kv_dtype::int8;
        if (sampled) o.sampling = {1.0f, 20, 0.95f, {}};
        o.seed = tinyllm_test::test_seed();
        o.eos_token_ids = {-1};
        const std::vector<tinyllm::token_id> prompt = {3, 14, 15, 92, 65};
        INFO((sampled ? "sampled" : "greedy"));
        CHECK(tc::generate(m, prompt, o) == cpu::generate(host, prompt, o));
    }
}

TEST_CASE("cuda::model KV-cache decoding equals the full forward", "[model]") {
    const tinyllm::model_config c = small_config(tinyllm::model_arch::llama);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed()));
    const tc::model<float> m(host);
    std::vector<tinyllm::token_id> seq;
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 3);
    for (int i = 0; i < 40; ++i) seq.push_back(static_cast<tinyllm::token_id>(g.next_bits() % c.vocab_size));
    const auto whole = gpu_all_logits(m, seq);
    const index_t V = c.vocab_size;

    auto s = m.new_session(1, 40);
    m.forward(s, tensor_view<const tinyllm::token_id, 2>(seq.data(), {1, 9}));  // a prefill of 9
    for (index_t t = 9; t < 40; ++t) {
        const auto one = host_rows(m.forward(s, tensor_view<const tinyllm::token_id, 2>(&seq[t], {1, 1})), 0, 1);
        const std::vector<double> want(whole.begin() + t * V, whole.begin() + (t + 1) * V);
        TINYLLM_REQUIRE_CLOSE(one, want, tolerance{1e-4, 1e-4, 1e-5}, "decode step " + std::to_string(t));
    }
    CHECK(s.lengths[0] == 40);
}

namespace {
// decode_step against forward() on two sessions fed the same tokens (see the test below).
// chained: the graphed session's steps are launched (and captured) with programmatic
// dependent launch on (launch.cuh), the eager session's without.
template <class T>
void check_decode_graph(tinyllm::model_arch arch, cpu::model::kv_dtype kv, bool chained = false) {
    using tinyllm::model_arch;
    using tinyllm::token_id;
    {
        const bool moe = arch == model_arch::mixtral;
        INFO("arch " << static_cast<int>(arch) << (kv == cpu::model::kv_dtype::int8 ? ", int8 cache" : "")
                     << (std::is_same_v<T, float> ? ", float32" : ", bfloat16")
                     << (chained ? ", programmatic dependent launch" : ""));
        const tinyllm::model_config c = small_model_config(arch);
        const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 21));
        const tc::model<T> m(host);
        // Prompts of 50, 41 and 46 tokens: the decode steps' keys (the longest row's
        // plus one) pass 64 at step 14, so that a dense model's steps take two shapes
        // (decode_keys: 64, then the capacity, 100), and MoE's 12 steps stay in one.
        const index_t B = 3, P = 50, V = c.vocab_size, capacity = 100, steps = moe ? 12 : 24;
        const index_t between = moe ? -1 : 8;  // the step at which forward() feeds the graphed session
        const std::vector<index_t> counts = {P, 41, 46};
        tinyllm::philox_generator g(tinyllm_test::test_seed(), 7);
        std::vector<token_id> prompts(static_cast<std::size_t>(B * P), 0);  // (B, P), right-padded
        for (index_t b = 0; b < B; ++b)
            for (index_t t = 0; t < counts[static_cast<std::size_t>(b)]; ++t)
                prompts[static_cast<std::size_t>(b * P + t)] = static_cast<token_id>(g.next_bits() % static_cast<std::uint64_t>(V));
        auto eager = m.new_session(B, capacity, kv), graphed = m.new_session(B, capacity, kv);
        m.forward(eager, tensor_view<const token_id, 2>(prompts.data(), {B, P}), counts);
        {
            const tc::programmatic_launch_scope pdl(chained);
            m.forward(graphed, tensor_view<const token_id, 2>(prompts.data(), {B, P}), counts);
        }
        tc::device_buffer<token_id> ids(static_cast<std::size_t>(B));
        std::vector<token_id> next(static_cast<std::size_t>(B));
#if defined(TINYLLM_SIMULATED_GPU)
        std::size_t replays_checked = 0;
#endif
        for (index_t step = 0; step < steps; ++step) {
            for (auto& id : next) id = static_cast<token_id>(g.next_bits() % static_cast<std::uint64_t>(V));
            const auto want = host_rows(m.forward(eager, tensor_view<const token_id, 2>(next.data(), {B, 1})), 0, B);
            if (step == between) {  // forward() on the graphed session in between: the graphs follow its lengths
                const tc::programmatic_launch_scope pdl(chained);
                REQUIRE(m.forward(graphed, tensor_view<const token_id, 2>(next.data(), {B, 1})).data() != nullptr);
                continue;
            }
            TINYLLM_CUDA_CHECK(cudaMemcpy(ids.data(), next.data(), next.size() * sizeof(token_id), cudaMemcpyHostToDevice));
#if defined(TINYLLM_SIMULATED_GPU)
            const auto before = tinyllm::sim::stats();
            const std::size_t replays_before = graphed.graph_replays();
#endif
            std::vector<float> got;
            {
                const tc::programmatic_launch_scope pdl(chained);
                got = host_rows(m.decode_step(graphed, tensor_view<const token_id, 1>(ids.data(), {B})), 0, B);
            }
#if defined(TINYLLM_SIMULATED_GPU)
            if (graphed.graph_replays() > replays_before) {
                // A replayed step allocates nothing and waits for nothing (the one wait is host_rows' copy).
                const auto after = tinyllm::sim::stats();
                CHECK(after.allocations == before.allocations);
                CHECK(after.synchronizations == before.synchronizations);
                ++replays_checked;
            }
#endif
            INFO("step " << step);
            REQUIRE(got.size() == want.size());
            const auto bits = tinyllm_test::compare_bits(got, want);
            CHECK(bits.non_finite == 0);
            CHECK(bits.differ == 0);
        }
        CHECK(graphed.lengths == eager.lengths);
        CHECK(graphed.graph_failure() == "");
        if (moe) {
            // 12 steps keep the keys under 64: one shape, captured once (the experts of a
            // decode step are GEMVs that read the dispatch plan on the device).
            CHECK(graphed.graph_captures() == 1);
            CHECK(graphed.graph_replays() == static_cast<std::size_t>(steps - 1));
#if defined(TINYLLM_SIMULATED_GPU)
            CHECK(replays_checked == graphed.graph_replays());
#endif
        } else {
            // Keys rounded to 64 for the first steps, then to the capacity (100): two
            // shapes; the forward() in between moved no buffer, so no capture again.
            CHECK(graphed.graph_captures() == 2);
            CHECK(graphed.graph_replays() == static_cast<std::size_t>(steps - 1 - 2));
#if defined(TINYLLM_SIMULATED_GPU)
            CHECK(replays_checked == graphed.graph_replays());
#endif
        }
    }
}
}  // namespace

TEST_CASE("cuda::model::decode_step replays captured CUDA graphs: forward's logits, bit for bit", "[model][graph]") {
    using tinyllm::model_arch;
    check_decode_graph<float>(model_arch::gpt2, cpu::model::kv_dtype::float32);
    check_decode_graph<float>(model_arch::llama, cpu::model::kv_dtype::float32);
    check_decode_graph<float>(model_arch::llama, cpu::model::kv_dtype::int8);
    check_decode_graph<float>(model_arch::mixtral, cpu::model::kv_dtype::float32);
    check_decode_graph<tinyllm::bfloat16>(model_arch::gpt2, cpu::model::kv_dtype::float32);
    check_decode_graph<tinyllm::bfloat16>(model_arch::llama, cpu::model::kv_dtype::float32);
}

// On an sm_90 GPU the chained kernels of a step (the GEMVs, the norms, decode attention)
// start before the previous one ends and wait inside; the logits must not change. (The
// simulated GPU runs kernels one after another: there this is the test above again.)
TEST_CASE("cuda::model::decode_step with programmatic dependent launch: the same logits, bit for bit",
          "[model][graph][pdl]") {
    using tinyllm::model_arch;
    check_decode_graph<float>(model_arch::gpt2, cpu::model::kv_dtype::float32, true);
    check_decode_graph<tinyllm::bfloat16>(model_arch::llama, cpu::model::kv_dtype::float32, true);
    check_decode_graph<tinyllm::bfloat16>(model_arch::mixtral, cpu::model::kv_dtype::float32, true);
}

namespace {
// decode_step_dataflow against forward() on two sessions fed the same tokens: B rows
// of different lengths, 20 steps. float32 within 1e-5 relative L2 per row (the sums
// of the norms and of attention run in another order); bf16 within 2e-2 (a norm's
// output rounded to bf16 may land one unit apart, and the caches drift apart by as
// much). After every step the launch has left its counters at zero. vocab: the
// vocabulary's size, when not the small model's 1000 (5000: at batch 1 the logits
// phase's warps take two units each on a GPU of 132 SMs, as the simulated one
// reports; with more rows one each).
// P: the longest prompt (300: attention's warps take two chunks of 32 positions).
template <class T>
void check_decode_dataflow(tinyllm::model_arch arch, index_t B, index_t vocab = 0, index_t P = 40, index_t steps = 20) {
    using tinyllm::token_id;
    constexpr bool bf16 = std::is_same_v<T, bfloat16>;
    INFO("arch " << static_cast<int>(arch) << ", " << B << " rows, " << (bf16 ? "bfloat16" : "float32"));
    tinyllm::model_config c = small_model_config(arch);
    if (vocab > 0) c.vocab_size = vocab;
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 31));
    const tc::model<T> m(host);
    const index_t V = c.vocab_size, capacity = P + steps;
    std::vector<index_t> counts;
    for (index_t b = 0; b < B; ++b) counts.push_back(P - 7 * b);
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 17);
    std::vector<token_id> prompts(static_cast<std::size_t>(B * P), 0);
    for (index_t b = 0; b < B; ++b)
        for (index_t t = 0; t < counts[static_cast<std::size_t>(b)]; ++t)
            prompts[static_cast<std::size_t>(b * P + t)] = static_cast<token_id>(g.next_bits() % static_cast<std::uint64_t>(V));
    auto eager = m.new_session(B, capacity), flow = m.new_session(B, capacity);
    m.forward(eager, tensor_view<const token_id, 2>(prompts.data(), {B, P}), counts);
    m.forward(flow, tensor_view<const token_id, 2>(prompts.data(), {B, P}), counts);
    tc::device_buffer<token_id> ids(static_cast<std::size_t>(B));
    std::vector<token_id> next(static_cast<std::size_t>(B));
    double worst = 0;
    for (index_t step = 0; step < steps; ++step) {
        INFO("step " << step);
        for (auto& id : next) id = static_cast<token_id>(g.next_bits() % static_cast<std::uint64_t>(V));
        const auto want = host_rows(m.forward(eager, tensor_view<const token_id, 2>(next.data(), {B, 1})), 0, B);
        TINYLLM_CUDA_CHECK(cudaMemcpy(ids.data(), next.data(), next.size() * sizeof(token_id), cudaMemcpyHostToDevice));
        {
            // Poisoned first: every logit of the step must be written by this launch.
            std::vector<float> nan(static_cast<std::size_t>(B * V), std::nanf(""));
            float* logits = flow.logits.data();
            if (logits != nullptr && flow.logits.size() >= nan.size())
                TINYLLM_CUDA_CHECK(cudaMemcpy(logits, nan.data(), nan.size() * sizeof(float), cudaMemcpyHostToDevice));
        }
        flow.dataflow_trace = step == steps - 1;  // the last step traced: the same logits, and a profile
        const auto got = host_rows(m.decode_step_dataflow(flow, tensor_view<const token_id, 1>(ids.data(), {B})), 0, B);
        for (index_t b = 0; b < B; ++b) {
            const std::vector<float> g_row(got.begin() + b * V, got.begin() + (b + 1) * V);
            const std::vector<double> w_row(want.begin() + b * V, want.begin() + (b + 1) * V);
            const auto r = tinyllm_test::compare(g_row, w_row, bf16 ? tolerance{0.5, 0.1, 2e-2} : tolerance{1e-4, 1e-4, 1e-5},
                                                 "dataflow step " + std::to_string(step) + ", row " + std::to_string(b));
            INFO(r.report);
            REQUIRE(r.non_finite == 0);
            REQUIRE(r.passed);
            worst = std::max(worst, r.rel_l2_error);
        }
        std::vector<unsigned> counters(flow.dataflow->counters.size());
        TINYLLM_CUDA_CHECK(cudaMemcpy(counters.data(), flow.dataflow->counters.data(), counters.size() * sizeof(unsigned),
                                      cudaMemcpyDeviceToHost));
        CHECK(std::all_of(counters.begin(), counters.end(), [](unsigned v) { return v == 0; }));
    }
    CHECK(flow.lengths == eager.lengths);
    // The traced step's phases: the embedding, five per layer in chain order, the
    // logits, each with its blocks and a time on the chain that is not negative.
    const auto profile = m.dataflow_profile(flow);
    REQUIRE(profile.size() == static_cast<std::size_t>(2 + 5 * c.num_layers));
    using kind = tc::detail::dataflow_kind;
    CHECK(profile.front().kind == kind::embed);
    CHECK(profile.front().blocks == static_cast<unsigned>(B));
    CHECK(profile.back().kind == kind::logits);
    for (std::size_t p = 1; p + 1 < profile.size(); ++p) {
        CHECK(static_cast<int>(profile[p].kind) == 1 + static_cast<int>((p - 1) % 5));
        CHECK(profile[p].layer == static_cast<int>((p - 1) / 5));
    }
    for (const auto& ph : profile) {
        CHECK(ph.blocks > 0);
        CHECK(ph.chain_us >= 0.0);
        CHECK(ph.waited_us >= 0.0);
    }
    flow.dataflow_trace = false;
    std::printf("  decode_step_dataflow, arch %d, %lld rows, %s: worst rel-L2 %.3g over %lld steps\n",
                static_cast<int>(arch), static_cast<long long>(B), bf16 ? "bf16" : "fp32", worst,
                static_cast<long long>(steps));
}
}  // namespace

TEST_CASE("cuda::model::decode_step_dataflow: a step in one launch gives forward's logits", "[model][dataflow]") {
    using tinyllm::model_arch;
    check_decode_dataflow<float>(model_arch::gpt2, 1, 5000);
    check_decode_dataflow<float>(model_arch::gpt2, 3);
    check_decode_dataflow<float>(model_arch::gpt2, 2, 5000);  // more rows: one unit per warp, more blocks
    check_decode_dataflow<float>(model_arch::llama, 1);
    check_decode_dataflow<float>(model_arch::llama, 3);
    check_decode_dataflow<float>(model_arch::llama, 2, 0, 300, 4);
    check_decode_dataflow<bfloat16>(model_arch::gpt2, 1);
    check_decode_dataflow<bfloat16>(model_arch::llama, 2);
}

// The real checkpoints: the prompt by forward(), then 24 greedy tokens, each step
// in one launch, equal to transformers' greedy continuation.
TEST_CASE("cuda::model::decode_step_dataflow: transformers' greedy tokens on the HF fixtures",
          "[model][dataflow][conformance]") {
    for (const std::string name : {"gpt2", "llama"}) {
        const std::string dir = tinyllm_test::fixture_dir(name);
        if (dir.empty()) {
            WARN("../shared/fixtures/hf/" << name << " not found: skipped");
            continue;
        }
        const auto m = tc::model<float>::load(dir);
        const auto expected = tinyllm::detail::read_json_file(dir + "/expected.json");
        for (const auto& c : expected.at("cases").as_array()) {
            const auto prompt = tinyllm_test::ids_of(c.at("prompt"));
            const auto want = tinyllm_test::ids_of(c.at("greedy"));
            const index_t n = static_cast<index_t>(prompt.size()), V = m.config().vocab_size;
            INFO(name << ", prompt of " << n << " tokens");
            auto s = m.new_session(1, n + static_cast<index_t>(want.size()));
            auto logits = host_rows(m.forward(s, tensor_view<const tinyllm::token_id, 2>(prompt.data(), {1, n})), 0, 1);
            tc::device_buffer<tinyllm::token_id> id(1);
            std::vector<tinyllm::token_id> got;
            while (got.size() < want.size()) {
                const auto best = std::max_element(logits.begin(), logits.end()) - logits.begin();
                got.push_back(static_cast<tinyllm::token_id>(best));
                if (got.size() == want.size()) break;
                TINYLLM_CUDA_CHECK(cudaMemcpy(id.data(), &got.back(), sizeof(tinyllm::token_id), cudaMemcpyHostToDevice));
                logits = host_rows(m.decode_step_dataflow(s, tensor_view<const tinyllm::token_id, 1>(id.data(), {1})), 0, 1);
                REQUIRE(static_cast<index_t>(logits.size()) == V);
            }
            CHECK(got == want);
        }
    }
}

TEST_CASE("cuda::model::decode_step_dataflow refuses what it does not take, with the reason", "[model][dataflow][errors]") {
    using tinyllm::model_arch;
    tc::device_buffer<tinyllm::token_id> ids(9);
    TINYLLM_CUDA_CHECK(cudaMemset(ids.data(), 0, ids.bytes()));
    const auto one = [&](index_t B) { return tensor_view<const tinyllm::token_id, 1>(ids.data(), {B}); };
    {
        const tinyllm::model_config c = small_config(model_arch::mixtral);
        const tc::model<float> m(c, tinyllm::random_model_weights(c, 2));
        auto s = m.new_session(1, 8);
        CHECK_THROWS_WITH(m.decode_step_dataflow(s, one(1)), contains("8 experts per layer"));
    }
    const tinyllm::model_config c = small_config(model_arch::llama);
    cpu::model host(c, tinyllm::random_model_weights(c, 3));
    {
        const tc::model<float> m(host);
        auto int8 = m.new_session(1, 8, cpu::model::kv_dtype::int8);
        CHECK_THROWS_WITH(m.decode_step_dataflow(int8, one(1)), contains("int8 KV cache"));
        auto nine = m.new_session(9, 8);
        CHECK_THROWS_WITH(m.decode_step_dataflow(nine, one(9)), contains("9 rows; the step takes at most 8"));
        auto s = m.new_session(2, 1);
        CHECK_THROWS_WITH(m.decode_step_dataflow(s, one(1)), contains("1 ids for 2 rows"));
        (void)m.decode_step_dataflow(s, one(2));
        CHECK(s.lengths == std::vector<index_t>{1, 1});
        CHECK_THROWS_WITH(m.dataflow_profile(s), contains("was not traced"));
        CHECK_THROWS_WITH(m.decode_step_dataflow(s, one(2)), contains("exceeds the session's capacity 1"));
    }
    host.quantize_weights(tinyllm::quant_spec{});
    const tc::model<float> q(host);
    auto s = q.new_session(1, 8);
    CHECK_THROWS_WITH(q.decode_step_dataflow(s, one(1)), contains("quantized"));
}

TEST_CASE("cuda::model::decode_step runs a Mixtral step of more than 8 rows eagerly, without a failed capture",
          "[model][graph][moe]") {
    // Nine rows: the experts are cuBLAS GEMMs sized from the plan read back to the host,
    // which a graph cannot hold; the step runs as forward() does, with the same logits.
    const tinyllm::model_config c = small_model_config(tinyllm::model_arch::mixtral);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 23));
    const tc::model<float> m(host);
    const index_t B = 9;
    using tinyllm::token_id;
    auto eager = m.new_session(B, 8), graphed = m.new_session(B, 8);
    std::vector<token_id> next(static_cast<std::size_t>(B));
    tc::device_buffer<token_id> ids(static_cast<std::size_t>(B));
    for (int step = 0; step < 3; ++step) {
        for (index_t b = 0; b < B; ++b) next[static_cast<std::size_t>(b)] = static_cast<token_id>(5 * b + step + 1);
        const auto want = host_rows(m.forward(eager, tensor_view<const token_id, 2>(next.data(), {B, 1})), 0, B);
        TINYLLM_CUDA_CHECK(cudaMemcpy(ids.data(), next.data(), next.size() * sizeof(token_id), cudaMemcpyHostToDevice));
        const auto got = host_rows(m.decode_step(graphed, tensor_view<const token_id, 1>(ids.data(), {B})), 0, B);
        INFO("step " << step);
        const auto bits = tinyllm_test::compare_bits(got, want);
        CHECK(bits.non_finite == 0);
        CHECK(bits.differ == 0);
    }
    CHECK(graphed.lengths == eager.lengths);
    CHECK(graphed.graph_captures() == 0);
    CHECK(graphed.graph_failure() == "");
}

namespace {
// The nodes one decode step's graph holds per layer: the difference between
// the graphs of the same model with 2 and 1 layers (the embedding, the final
// norm, the logits and the step's bookkeeping cancel). `format`: "" dense, or
// a quantization of the matrices.
template <class T>
std::size_t decode_nodes_per_layer(tinyllm::model_arch arch, const std::string& format) {
    std::size_t nodes[2] = {};
    for (index_t layers = 1; layers <= 2; ++layers) {
        tinyllm::model_config c = small_model_config(arch);
        c.num_layers = layers;
        cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 31));
        if (!format.empty()) host.quantize_weights(tinyllm::parse_quant_spec(format));
        const tc::model<T> m(host);
        auto s = m.new_session(1, 64);
        const std::vector<tinyllm::token_id> prompt = {1, 2, 3};
        m.forward(s, tensor_view<const tinyllm::token_id, 2>(prompt.data(), {1, 3}));
        tc::device_buffer<tinyllm::token_id> ids(1);
        const std::vector<tinyllm::token_id> next = {4};
        TINYLLM_CUDA_CHECK(cudaMemcpy(ids.data(), next.data(), sizeof(tinyllm::token_id), cudaMemcpyHostToDevice));
        for (int step = 0; step < 2; ++step)  // the first runs eagerly and captures, the second replays
            (void)m.decode_step(s, tensor_view<const tinyllm::token_id, 1>(ids.data(), {1}));
        REQUIRE(s.graph_failure() == "");
        REQUIRE(s.graph_captures() == 1);
        nodes[layers - 1] = s.graph_nodes();
    }
    const char* name = arch == tinyllm::model_arch::gpt2      ? "gpt2"
                       : arch == tinyllm::model_arch::mixtral ? "mixtral"
                                                              : "llama";
    std::printf("  decode graph, %s%s%s: %zu nodes with 1 layer, %zu with 2\n", name,
                std::is_same_v<T, float> ? " float32" : " bf16",
                format.empty() ? "" : (" " + format).c_str(), nodes[0], nodes[1]);
    REQUIRE(nodes[1] > nodes[0]);
    return nodes[1] - nodes[0];
}
}  // namespace

TEST_CASE("a decode step's graph has the nodes per layer that its fusions promise (RoPE v4, the MLP's GEMVs, "
          "the residual adds and norms in the projections' GEMVs)",
          "[model][graph]") {
    using tinyllm::model_arch;
    const std::size_t llama = decode_nodes_per_layer<float>(model_arch::llama, "");
    const std::size_t llama_int8 = decode_nodes_per_layer<float>(model_arch::llama, "int8");
    const std::size_t gpt2 = decode_nodes_per_layer<float>(model_arch::gpt2, "");
    const std::size_t gpt2_int8 = decode_nodes_per_layer<float>(model_arch::gpt2, "int8");
    const std::size_t llama_bf16 = decode_nodes_per_layer<tinyllm::bfloat16>(model_arch::llama, "");
    const std::size_t mixtral = decode_nodes_per_layer<float>(model_arch::mixtral, "");
    std::printf("  nodes per layer: mixtral %zu\n", mixtral);
    std::printf("  nodes per layer: llama %zu (int8 weights %zu), gpt2 %zu (int8 weights %zu), llama bf16 %zu\n", llama,
                llama_int8, gpt2, gpt2_int8, llama_bf16);
#if defined(TINYLLM_SIMULATED_GPU)
    // On the simulated GPU a cuBLAS call is one node, so the counts are the model's own
    // (a real GPU's cuBLAS may launch more than one kernel per call: printed only).
    // A Llama layer of a decode step, dense weights: qkv_rope_write_cache (RoPE v4),
    //   attention_decode (one split at these lengths), Wo (cuBLAS), residual add +
    //   RMSNorm, swiglu_gemv (gate, up and SwiGLU), down (cuBLAS), residual add + the
    //   next RMSNorm = 7. (Norm v3 would fold each residual add + norm into its
    //   projection, 5 nodes, but measured slower on an H200: model.cuh,
    //   project_residual_norm.)
    CHECK(llama == 7);
    CHECK(llama_bf16 == llama);
    // Quantized weights keep norm v3 on the quantized GEMV (quantize.cuh's
    // quantized_pair_gemv_kernel with the same epilogues): Wo and down each one node, 5.
    CHECK(llama_int8 == 5);
    // A GPT-2 layer, dense weights: RoPE v4 (no rotation), attention_decode, Wo,
    // its bias + residual add + LayerNorm, bias_activate_gemv (fc, its bias and GELU),
    // proj, its bias + residual add + the next LayerNorm = 7.
    CHECK(gpt2 == 7);
    CHECK(gpt2_int8 == 5);
    // A Mixtral layer: the attention half as Llama's (4), then the router's GEMM, the
    // gating kernel, the dispatch plan (one tile: one launch), gather, the experts' two
    // grouped GEMVs (gate/up + SwiGLU, down), and combine with the residual add and the
    // next RMSNorm (combine v2) = 4 + 7 = 11.
    CHECK(mixtral == 11);
#endif
}

TEST_CASE("cuda::generate_batch: different-length prompts give the CPU's tokens", "[model]") {
    const std::string dir = tinyllm_test::fixture_dir("llama");
    const tinyllm::model_config c = small_config(tinyllm::model_arch::llama);
    const cpu::model host = dir.empty() ? cpu::model(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed()))
                                        : cpu::model::load(dir);
    const tc::model<float> m(host);
    const std::vector<std::vector<tinyllm::token_id>> prompts = {{5}, {10, 20, 30, 40, 50, 60, 70}, {7, 8, 9}};
    for (const bool sampled : {false, true}) {
        cpu::generation_options o;
        o.max_new_tokens = 8;
        if (sampled) o.sampling = {1.0f, 20, 0.95f, {}};
        o.seed = tinyllm_test::test_seed();
        o.eos_token_ids = {-1};  // never stop early: compare all 8 tokens
        const auto gpu = tc::generate_batch(m, prompts, o);
        const auto want = cpu::generate_batch(host, prompts, o);
        REQUIRE(gpu.size() == prompts.size());
        for (std::size_t r = 0; r < prompts.size(); ++r) {
            INFO("row " << r << (sampled ? ", sampled" : ", greedy"));
            CHECK(gpu[r] == want[r]);
            CHECK(gpu[r].size() == 8);
        }
    }
}

TEST_CASE("cuda speculative decoding: greedy gives the CUDA model's own greedy tokens; rollback on the device",
          "[model][speculative]") {
    const tinyllm::model_config c = small_config(tinyllm::model_arch::llama);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed()));
    const tc::model<float> target(host);
    const tc::model<float> poor(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 1));
    cpu::model close = cpu::model(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed()));
    close.quantize_weights(tinyllm::quant_spec{tinyllm::quant_format::int8, 0});  // a CPU draft near the target
    const std::vector<tinyllm::token_id> prompt{5, 9, 2, 7, 5, 9};
    cpu::generation_options g;
    g.max_new_tokens = 20;
    g.eos_token_ids = {-1};
    const auto want = tc::generate_batch(target, {prompt}, g)[0];
    REQUIRE(want.size() == 20);
    for (const index_t k : {1, 3, 5}) {
        tinyllm::speculative_options o;
        o.draft_tokens = k;
        o.max_new_tokens = 20;
        o.eos_token_ids = {-1};
        const auto by_poor = tc::generate_speculative(target, poor, prompt, o);
        const auto by_close = tc::generate_speculative(target, close, prompt, o);
        const auto by_lookup = tc::generate_prompt_lookup(target, prompt, 2, o);
        INFO("k = " << k << ": poor draft accepts " << by_poor.accepted << " / " << by_poor.drafted << ", close "
                    << by_close.accepted << " / " << by_close.drafted);
        CHECK(by_poor.tokens == want);
        CHECK(by_close.tokens == want);
        CHECK(by_lookup.tokens == want);
        CHECK(by_close.accepted > 0);
        CHECK(by_close.rounds < 20);
        for (const auto* r : {&by_poor, &by_close, &by_lookup})
            CHECK(static_cast<index_t>(r->tokens.size()) == r->accepted + r->rounds);
    }
    // Sampling: the budget is kept and the bookkeeping adds up.
    tinyllm::speculative_options o;
    o.draft_tokens = 4;
    o.max_new_tokens = 17;
    o.sampling = {0.9f, index_t{20}, {}, {}};
    o.seed = tinyllm_test::test_seed();
    o.eos_token_ids = {-1};
    const auto sampled = tc::generate_speculative(target, poor, prompt, o);
    CHECK(sampled.tokens.size() == 17);
    CHECK(static_cast<index_t>(sampled.tokens.size()) == sampled.accepted + sampled.rounds);
    const tinyllm::model_config other = [&] {
        tinyllm::model_config w = c;
        w.vocab_size = c.vocab_size + 8;
        return w;
    }();
    const tc::model<float> wide(other, tinyllm::random_model_weights(other, 3));
    CHECK_THROWS_WITH(tc::generate_speculative(target, wide, prompt, o),
                      tinyllm_test::contains("a draft must share the target's tokenizer"));
}

TEST_CASE("cuda::model rejects bad input with clear errors", "[model][errors]") {
    const tinyllm::model_config c = small_config(tinyllm::model_arch::llama);
    const tc::model<float> m(c, tinyllm::random_model_weights(c, 1));
    auto s = m.new_session(2, 8);
    const std::vector<tinyllm::token_id> bad = {1, 2, 1000, 3};
    CHECK_THROWS_WITH(m.forward(s, tensor_view<const tinyllm::token_id, 2>(bad.data(), {2, 2})),
                      contains("token id 1000 of row 1 at position 0 is outside the vocabulary [0, 1000)"));
    const std::vector<tinyllm::token_id> ok = {1, 2, 3, 4};
    const std::vector<index_t> counts = {2, 1};
    m.forward(s, tensor_view<const tinyllm::token_id, 2>(ok.data(), {2, 2}), counts);
    CHECK(s.lengths == std::vector<index_t>{2, 1});
    CHECK_THROWS_WITH(m.forward(s, tensor_view<const tinyllm::token_id, 2>(ok.data(), {2, 2})),
                      contains("several tokens per row can only be fed when every row has the same length"));
    const std::vector<tinyllm::token_id> many(2 * 8, 1);
    CHECK_THROWS_WITH(m.forward(s, tensor_view<const tinyllm::token_id, 2>(many.data(), {1, 8})),
                      contains("tokens has 1 rows but the session holds 2"));
    CHECK_THROWS_WITH(m.new_session(0, 4), contains("must be at least 1"));
    CHECK_THROWS_WITH(m.new_session(1, index_t{1} << 40),
                      contains("cuda::model::new_session: batch 1 x capacity 1099511627776 needs a KV cache of more than "
                               "2^40 bytes"));
}

TEST_CASE("cuda::model decode steps: an id outside the vocabulary gives NaN logits, host ids are refused",
          "[model][errors][dataflow]") {
    // The ids of a decode step stay on the device, unchecked by the host: a bad one must not
    // read outside the table (INT_MAX crashed the one-launch step) nor reuse an older row (the
    // graph's step returned plausible logits). Its row's logits are NaN, which a sampler refuses.
    const tinyllm::model_config c = small_config(tinyllm::model_arch::llama);
    const tc::model<float> m(c, tinyllm::random_model_weights(c, 4));
    const index_t V = c.vocab_size;
    const std::vector<tinyllm::token_id> prompt = {1, 2};
    for (const bool dataflow : {false, true})
        for (const tinyllm::token_id bad : {tinyllm::token_id(V), tinyllm::token_id(-1), std::numeric_limits<tinyllm::token_id>::max()}) {
            INFO((dataflow ? "decode_step_dataflow" : "decode_step") << ", id " << bad);
            auto s = m.new_session(2, 8);
            m.forward(s, tensor_view<const tinyllm::token_id, 2>(prompt.data(), {2, 1}));
            auto ids = tc::to_device(std::vector<tinyllm::token_id>{3, bad});
            const tensor_view<const tinyllm::token_id, 1> d_ids(ids.data(), {2});
            const auto logits = dataflow ? m.decode_step_dataflow(s, d_ids) : m.decode_step(s, d_ids);
            const auto host = host_rows(logits, 0, 2);
            CHECK(std::all_of(host.begin(), host.begin() + V, [](float x) { return std::isfinite(x); }));
            CHECK(std::all_of(host.begin() + V, host.end(), [](float x) { return std::isnan(x); }));
            tc::device_buffer<tinyllm::token_id> out(2);
            CHECK_THROWS_WITH(tc::greedy(out.view(tinyllm::extents<1>{2}), logits), contains("row 1 has a NaN"));
            const std::vector<tinyllm::token_id> on_host = {3, 4};
            const tensor_view<const tinyllm::token_id, 1> h_ids(on_host.data(), {2});
            CHECK_THROWS_WITH(dataflow ? m.decode_step_dataflow(s, h_ids) : m.decode_step(s, h_ids),
                              contains("ids point to host memory"));
        }
}

#if defined(TINYLLM_SIMULATED_GPU)
namespace {
// The explicit waits of one cuda::moe_plan on this GPU (none where CUB's scan does not
// wait for its stream, as on a GPU); the model's MoE layers each make one plan.
std::uint64_t moe_plan_waits() {
    const index_t T = 1, k = 2, E = 8;
    auto ids = tc::to_device(std::vector<tinyllm::token_id>{0, 1});
    tc::device_buffer<tinyllm::token_id> row_of(T * k), row_token(tinyllm::moe_max_rows(T, k, E, 1)), offsets(E + 1),
        counts(E);
    tc::moe_dispatch_workspace ws(T * k, E);
    const tinyllm::moe_plan_view plan{row_of.view(tinyllm::extents<2>{T, k}),
                                      row_token.view(tinyllm::extents<1>{static_cast<index_t>(row_token.size())}),
                                      offsets.view(tinyllm::extents<1>{E + 1}), counts.view(tinyllm::extents<1>{E})};
    const auto before = tinyllm::sim::stats();
    tc::moe_plan(plan, ids.view(tinyllm::extents<2>{T, k}), {}, ws);
    return tinyllm::sim::stats().synchronizations - before.synchronizations;
}
}  // namespace
#endif

TEST_CASE("cuda::model Mixtral decoding: warm steps allocate nothing and do not wait for the experts", "[model][moe]") {
    const tinyllm::model_config c = small_config(tinyllm::model_arch::mixtral);
    const cpu::model host(c, tinyllm::random_model_weights(c, tinyllm_test::test_seed() + 11));
    const tc::model<float> m(host);
    const std::vector<tinyllm::token_id> seq = {11, 22, 33, 44, 55, 66, 77};
    const auto want = cpu_all_logits(host, seq);
    const index_t V = c.vocab_size;

    auto s = m.new_session(1, 16);
    m.forward(s, tensor_view<const tinyllm::token_id, 2>(seq.data(), {1, 4}));  // a prefill of 4 sizes every buffer
#if defined(TINYLLM_SIMULATED_GPU)
    const std::uint64_t plan_waits = moe_plan_waits();
#endif
    for (index_t t = 4; t < 7; ++t) {
#if defined(TINYLLM_SIMULATED_GPU)
        const auto before = tinyllm::sim::stats();
#endif
        const auto logits = m.forward(s, tensor_view<const tinyllm::token_id, 2>(&seq[static_cast<std::size_t>(t)], {1, 1}));
#if defined(TINYLLM_SIMULATED_GPU)
        const auto after = tinyllm::sim::stats();
        INFO("decode step " << t);
        // The session's scratch (the experts' workspace included) was sized by the prefill, and
        // the only waits of a step are each MoE layer's plan's (see moe_plan_waits): a decode
        // step's experts are GEMVs that read the plan on the device, with nothing read back.
        CHECK(after.allocations == before.allocations);
        CHECK(after.synchronizations - before.synchronizations ==
              static_cast<std::uint64_t>(c.num_layers) * plan_waits);
#endif
        const std::vector<double> w(want.begin() + t * V, want.begin() + (t + 1) * V);
        TINYLLM_REQUIRE_CLOSE(host_rows(logits, 0, 1), w, tolerance{1e-4, 1e-4, 1e-5},
                              "decode step " + std::to_string(t));
    }
}
