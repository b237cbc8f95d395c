// examples/tinyllm/bench_layers.cpp — CPU reference rows of `tinyllm bench
// rmsnorm|layernorm|residual_rmsnorm|swiglu`.
//
// The CUDA rows (bench_layers.cu) run (16384, 4096) bfloat16 by default (64 rows
// on the simulated GPU; this CPU row keeps its default there). The
// CPU reference is float and, to stay within a few seconds, defaults to 1024
// rows of 4096; --size ROWS sets the rows of both.
#include "registry.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/timing.hpp>

#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

constexpr index_t features = 4096;           // D
constexpr long long cpu_default_rows = 1024;  // the CUDA rows default to 16384

struct cpu_inputs {
    index_t rows;
    std::vector<float> x, y, w, out, out2;
    explicit cpu_inputs(const bench_context& ctx)
        : rows(ctx.size > 0 ? ctx.size : cpu_default_rows),
          x(static_cast<std::size_t>(rows * features)),
          y(x.size()),
          w(static_cast<std::size_t>(features)),
          out(x.size()),
          out2(x.size()) {
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(x.data(), {static_cast<index_t>(x.size())}), 1, -2, 2);
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(y.data(), {static_cast<index_t>(y.size())}), 2, -2, 2);
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(w.data(), {features}), 3, 0.5f, 1.5f);
    }
    tinyllm::tensor_view<float, 2> view(std::vector<float>& v) { return {v.data(), {rows, features}}; }
    tinyllm::tensor_view<const float, 1> weight() const { return {w.data(), {features}}; }
    std::string shape() const { return std::to_string(rows) + "x" + std::to_string(features) + "_f32"; }
    double tensor_bytes() const { return 4.0 * static_cast<double>(rows * features); }
};

void add_cpu_row(bench_context& ctx, const std::string& component, const cpu_inputs& in, double tensors_moved,
                 auto&& work) {
    ctx.rows.push_back({"cpu ref f32 " + std::to_string(in.rows) + " rows", "cpu",
                        tinyllm::time_cpu(component + "/cpu_reference/" + in.shape(), work,
                                          tensors_moved * in.tensor_bytes(), 0, 1, ctx.repeats),
                        "reference", true, false});
}

}  // namespace

TINYLLM_BENCH("rmsnorm", "RMSNorm of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    cpu_inputs in(ctx);
    add_cpu_row(ctx, "rmsnorm", in, 2, [&] { tinyllm::cpu::rms_norm(in.view(in.out), in.view(in.x), in.weight(), 1e-5f); });
}

TINYLLM_BENCH("layernorm", "LayerNorm of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    cpu_inputs in(ctx);
    add_cpu_row(ctx, "layernorm", in, 2,
                [&] { tinyllm::cpu::layer_norm(in.view(in.out), in.view(in.x), in.weight(), in.weight(), 1e-5f); });
}

TINYLLM_BENCH("residual_rmsnorm",
              "residual add + RMSNorm of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    cpu_inputs in(ctx);
    add_cpu_row(ctx, "residual_rmsnorm", in, 4, [&] {
        tinyllm::cpu::residual_add_rms_norm(in.view(in.out), in.view(in.out2), in.view(in.x), in.view(in.y), in.weight(),
                                            1e-5f);
    });
}

TINYLLM_BENCH("swiglu", "silu(gate) * up of (rows, 4096): --size rows; CUDA bf16 default 16384 rows (simulated GPU 64), CPU float 1024", 0) {
    cpu_inputs in(ctx);
    add_cpu_row(ctx, "swiglu", in, 3, [&] { tinyllm::cpu::swiglu(in.view(in.out), in.view(in.x), in.view(in.y)); });
}
