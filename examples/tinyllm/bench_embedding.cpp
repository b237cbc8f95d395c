// examples/tinyllm/bench_embedding.cpp — CPU reference row of `tinyllm bench embedding`.
//
// Token embedding lookup out (B, T, D) = table[ids] with ids (4, T) into a float
// table (50257, 768) (GPT-2 small); --size sets T (default 512 here, 1024 with
// B = 8, D = 4096, bf16 for the CUDA rows in bench_embedding.cu). Bytes: each
// output row read from the table once and written once.
#include "registry.hpp"

#include <tinyllm/embedding.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace tinyllm_cli;

TINYLLM_BENCH("embedding", "token embedding lookup: CPU float (4, T) ids into (50257, 768); CUDA bf16 (8, T) into (50257, 4096); --size T (simulated GPU: CUDA T = 16 into (1031, 4096))", 0) {
    const long long B = 4, T = ctx.size > 0 ? ctx.size : 512, V = 50257, D = 768;
    std::vector<float> table(static_cast<std::size_t>(V * D));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(table.data(), {V * D}), 3, -1.0f, 1.0f);
    std::vector<tinyllm::token_id> ids(static_cast<std::size_t>(B * T));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<tinyllm::token_id>((i * 7919 + 13) % V);
    std::vector<float> out(static_cast<std::size_t>(B * T * D));
    const std::string shape = "B=4,T=" + std::to_string(T) + ",V=50257,D=768,f32";
    const double bytes = 2.0 * static_cast<double>(B * T * D) * sizeof(float);
    ctx.rows.push_back({"cpu reference (f32)", "cpu",
                        tinyllm::time_cpu("embedding/cpu_reference/" + shape,
                                          [&] {
                                              tinyllm::cpu::embedding(
                                                  tinyllm::tensor_view<float, 3>(out.data(), {B, T, D}),
                                                  tinyllm::tensor_view<const tinyllm::token_id, 2>(ids.data(), {B, T}),
                                                  tinyllm::tensor_view<const float, 2>(table.data(), {V, D}));
                                          },
                                          bytes, 0, 0, ctx.repeats),
                        "reference", true, false});
}
