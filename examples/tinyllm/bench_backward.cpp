// examples/tinyllm/bench_backward.cpp — CPU reference rows of `tinyllm bench
// cross_entropy|rmsnorm_backward|layernorm_backward|swiglu_backward|linear_backward|embedding_backward`.
//
// The CUDA rows (bench_backward.cu) run the GPU shapes; these references are
// float and, to stay within a few seconds, run smaller ones (--size sets the
// same dimension as for the CUDA rows):
//
//   cross_entropy       (32, V) logits, V = 50257 and 128256, loss + gradient
//   rmsnorm_backward,   (1024, 4096): dx and dweight (and dbias)
//   layernorm_backward
//   swiglu_backward     (1024, 4096): dgate and dup
//   linear_backward     x (16, 768), weight (3072, 768), bias: dx, dweight, dbias (at most 3 repeats)
//   embedding_backward  ids (8, 1024) into (50257, 768)
//
// Bytes and FLOPs are counted as in the CUDA rows. (Google Benchmark rows of the
// same references: bench/cpu/bench_layers.cpp.)
#include "registry.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;
using tinyllm::token_id;

namespace {

constexpr float eps = 1e-5f;

std::vector<float> uniform(index_t n, std::uint64_t seed, float lo, float hi) {
    std::vector<float> v(static_cast<std::size_t>(n));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(v.data(), {n}), seed, lo, hi);
    return v;
}

void add_cpu_row(bench_context& ctx, const std::string& version, const std::string& name, double bytes, double flops,
                 int repeats, auto&& work) {
    ctx.rows.push_back(
        {version, "cpu", tinyllm::time_cpu(name, work, bytes, flops, 1, repeats), "reference", true, false});
}

// (rows, 4096) float, as the forward rows of bench_layers.cpp.
constexpr index_t D = 4096;
index_t layer_rows(const bench_context& ctx) { return ctx.size > 0 ? ctx.size : 1024; }
std::string layer_shape(index_t rows) { return std::to_string(rows) + "x" + std::to_string(D) + "_f32"; }

template <bool Layer>
void norm_backward_row(bench_context& ctx, const std::string& component) {
    const index_t rows = layer_rows(ctx), n = rows * D;
    const auto x = uniform(n, 1, -2, 2), dout = uniform(n, 2, -1, 1), w = uniform(D, 3, 0.5f, 1.5f);
    std::vector<float> dx(x.size()), dw(static_cast<std::size_t>(D)), db(dw.size());
    const tinyllm::tensor_view<const float, 2> X(x.data(), {rows, D}), G(dout.data(), {rows, D});
    const tinyllm::tensor_view<const float, 1> W(w.data(), {D});
    add_cpu_row(ctx, "cpu ref f32 " + std::to_string(rows) + " rows", component + "/cpu_reference/" + layer_shape(rows),
                (3.0 * static_cast<double>(n) + (Layer ? 3 : 2) * static_cast<double>(D)) * sizeof(float), 0,
                ctx.repeats, [&] {
                    if constexpr (Layer)
                        tinyllm::cpu::layer_norm_backward({dx.data(), {rows, D}}, {dw.data(), {D}}, {db.data(), {D}},
                                                          G, X, W, eps);
                    else
                        tinyllm::cpu::rms_norm_backward({dx.data(), {rows, D}}, {dw.data(), {D}}, G, X, W, eps);
                });
}

}  // namespace

TINYLLM_BENCH("cross_entropy", "fused softmax cross-entropy loss + dlogits of (rows, V) float logits, V = 50257 and 128256: --size rows; CUDA default 8192 (simulated GPU 4), CPU 32", 0) {
    const index_t rows = ctx.size > 0 ? ctx.size : 32;
    for (const index_t V : {index_t{50257}, index_t{128256}}) {
        const auto logits = uniform(rows * V, 50 + static_cast<std::uint64_t>(V), -4, 4);
        std::vector<float> dlogits(logits.size());
        std::vector<token_id> targets(static_cast<std::size_t>(rows));
        for (std::size_t r = 0; r < targets.size(); ++r) targets[r] = static_cast<token_id>((r * 7919 + 13) % V);
        const std::string v = "V=" + std::to_string(V);
        add_cpu_row(ctx, "cpu ref f32 " + v, "cross_entropy/cpu_reference/rows=" + std::to_string(rows) + "," + v + ",f32",
                    2.0 * static_cast<double>(rows * V) * sizeof(float), 0, ctx.repeats, [&] {
                        (void)tinyllm::cpu::cross_entropy({dlogits.data(), {rows, V}}, {logits.data(), {rows, V}},
                                                          {targets.data(), {rows}});
                    });
    }
}

TINYLLM_BENCH("rmsnorm_backward", "RMSNorm backward (dx, dweight) of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    norm_backward_row<false>(ctx, "rmsnorm_backward");
}

TINYLLM_BENCH("layernorm_backward", "LayerNorm backward (dx, dweight, dbias) of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    norm_backward_row<true>(ctx, "layernorm_backward");
}

TINYLLM_BENCH("swiglu_backward", "backward of silu(gate) * up (dgate, dup) of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    const index_t rows = layer_rows(ctx), n = rows * D;
    const auto g = uniform(n, 1, -4, 4), u = uniform(n, 2, -2, 2), dout = uniform(n, 3, -1, 1);
    std::vector<float> dg(g.size()), du(g.size());
    add_cpu_row(ctx, "cpu ref f32 " + std::to_string(rows) + " rows", "swiglu_backward/cpu_reference/" + layer_shape(rows),
                5.0 * static_cast<double>(n) * sizeof(float), 0, ctx.repeats, [&] {
                    tinyllm::cpu::swiglu_backward({dg.data(), {rows, D}}, {du.data(), {rows, D}},
                                                  {dout.data(), {rows, D}}, {g.data(), {rows, D}}, {u.data(), {rows, D}});
                });
}

TINYLLM_BENCH("linear_backward", "linear backward (dx, dweight, dbias; cuBLAS) of GPT-2's c_fc, x (rows, 768), weight (3072, 768), float and bf16: --size rows; CUDA default 8192 (simulated GPU: (128, 64) x (256, 64)), CPU float 16", 0) {
    const index_t rows = ctx.size > 0 ? ctx.size : 16, K = 768, N = 3072;
    const auto x = uniform(rows * K, 1, -1, 1), w = uniform(N * K, 2, -0.1f, 0.1f), dout = uniform(rows * N, 3, -1, 1);
    std::vector<float> dx(x.size()), dw(w.size()), db(static_cast<std::size_t>(N));
    const std::string shape = std::to_string(rows) + "x768_x_3072x768_f32";
    add_cpu_row(ctx, "cpu ref f32 " + std::to_string(rows) + " rows", "linear_backward/cpu_reference/" + shape, 0,
                4.0 * static_cast<double>(rows * N * K), ctx.repeats < 3 ? ctx.repeats : 3, [&] {
                    tinyllm::cpu::linear_backward({dx.data(), {rows, K}}, {dw.data(), {N, K}}, {db.data(), {N}},
                                                  {dout.data(), {rows, N}}, {x.data(), {rows, K}}, {w.data(), {N, K}});
                });
}

TINYLLM_BENCH("embedding_backward", "embedding backward (deterministic sort-based scatter-add) of ids (8, T) into (50257, 768), float and bf16: --size T; CUDA default 1024 (simulated GPU: T = 16 into (4099, 768)), CPU float 1024", 0) {
    const index_t B = 8, T = ctx.size > 0 ? ctx.size : 1024, V = 50257, Dm = 768;
    const auto dout = uniform(B * T * Dm, 5, -1, 1);
    std::vector<token_id> ids(static_cast<std::size_t>(B * T));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<token_id>((i * 7919 + 13) % V);
    std::vector<float> dtable(static_cast<std::size_t>(V * Dm));
    add_cpu_row(ctx, "cpu ref f32", "embedding_backward/cpu_reference/B=8,T=" + std::to_string(T) + ",V=50257,D=768,f32",
                static_cast<double>(B * T * Dm + V * Dm) * sizeof(float), 0, ctx.repeats, [&] {
                    tinyllm::cpu::embedding_backward<float, token_id>(
                        tinyllm::tensor_view<float, 2>(dtable.data(), {V, Dm}),
                        tinyllm::tensor_view<const token_id, 2>(ids.data(), {B, T}),
                        tinyllm::tensor_view<const float, 3>(dout.data(), {B, T, Dm}));
                });
}
