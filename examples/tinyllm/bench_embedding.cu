// examples/tinyllm/bench_embedding.cu — CUDA rows of `tinyllm bench embedding`:
// v1 naive and v2 vectorized, bf16, ids (8, T) int32 into a table (50257, 4096)
// (--size T, default 1024; bench/baselines/embedding.py times PyTorch on the
// same shape). Bytes per run: each output row read from the table once and
// written once (2 * B*T*D * 2 bytes); the ids are not counted. Each row first
// runs once into a poisoned output and must match the CPU reference bit for bit.
// On the simulated GPU without --size: T = 16 ids into a (1031, 4096) table (the
// same 16-byte rows; the real table alone would take seconds to fill on the CPU).
#include "registry.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/dtype.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/random.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
namespace tc = tinyllm::cuda;

TINYLLM_BENCH("embedding", "token embedding lookup: CPU float (4, T) ids into (50257, 768); CUDA bf16 (8, T) into (50257, 4096); --size T (simulated GPU: CUDA T = 16 into (1031, 4096))", 1) {
    if (!ctx.gpu_available) return;
    const long long B = 8, T = ctx.size_or(1024, 16), V = ctx.simulated_default() ? 1031 : 50257, D = 4096;
    std::vector<float> f(static_cast<std::size_t>(V * D));
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(f.data(), {V * D}), 3, -1.0f, 1.0f);
    std::vector<tinyllm::bfloat16> table(f.size());
    for (std::size_t i = 0; i < f.size(); ++i) table[i] = tinyllm::float_to_bf16(f[i]);
    f = {};
    std::vector<tinyllm::token_id> ids(static_cast<std::size_t>(B * T));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<tinyllm::token_id>((i * 7919 + 13) % V);
    std::vector<tinyllm::bfloat16> want(static_cast<std::size_t>(B * T * D));
    tinyllm::cpu::embedding(tinyllm::tensor_view<tinyllm::bfloat16, 3>(want.data(), {B, T, D}),
                            tinyllm::tensor_view<const tinyllm::token_id, 2>(ids.data(), {B, T}),
                            tinyllm::tensor_view<const tinyllm::bfloat16, 2>(table.data(), {V, D}));
    auto d_table = tc::to_device(table);
    auto d_ids = tc::to_device(ids);
    tc::device_buffer<tinyllm::bfloat16> d_out(want.size());
    const tinyllm::tensor_view<const tinyllm::bfloat16, 2> tv(d_table.data(), {V, D});
    const tinyllm::tensor_view<const tinyllm::token_id, 2> iv(d_ids.data(), {B, T});
    const auto ov = d_out.view(tinyllm::extents<3>{B, T, D});
    const std::string shape = "B=8,T=" + std::to_string(T) + ",V=" + std::to_string(V) + ",D=4096,bf16";
    const double bytes = 2.0 * static_cast<double>(B * T * D) * sizeof(tinyllm::bfloat16);
    tc::timing_options options;
    options.repeats = ctx.repeats;
    auto run = [&](const char* version, const char* key, bool baseline, tc::embedding_version v) {
        d_out.poison();
        tc::embedding(ov, iv, tv, 1.0f, v);
        const auto got = tc::to_host(d_out);
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < got.size(); ++i) wrong += got[i].bits != want[i].bits;
        std::ostringstream check;
        check << (wrong == 0 ? "bit-exact" : std::to_string(wrong) + " elements differ");
        // Timed without the id check's synchronization (ids were just validated).
        auto timing = tc::time_gpu(std::string("embedding/") + key + "/" + shape,
                                   [&] { tc::embedding(ov, iv, tv, 1.0f, v, false); }, bytes, 0, options);
        ctx.rows.push_back({version, "cuda", timing, check.str(), wrong == 0, baseline});
    };
    run("v1 naive", "v1_naive", true, tc::embedding_version::naive);
    run("v2 vectorized", "v2_vectorized", false, tc::embedding_version::vectorized);
}
