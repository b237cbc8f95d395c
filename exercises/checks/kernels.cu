// exercises/checks/kernels.cu — the checks of the kernel exercises: the student's kernel
// runs (on a GPU, or on the simulated GPU, docs/simulator.md) on fresh random inputs,
// each followed by NaNs in memory and its output poisoned with NaN first, so that an
// element it never writes, or one computed from a read past an input's end, cannot pass;
// it is compared with the library's CPU reference.
#include "harness.hpp"
#include "kernels.hpp"

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/ffn.hpp>
#include <tinyllm/sampling.hpp>

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

namespace tc = tinyllm::cuda;
using namespace exercises::check;

namespace exercises::check::kernel_checks {

// x on the device followed by `padding` NaNs: a kernel that reads past the end of its
// input gets NaN, which then shows in its output.
tc::device_buffer<float> to_device_padded(const std::vector<float>& x, std::size_t padding) {
    std::vector<float> padded = x;
    padded.resize(x.size() + padding, std::nanf(""));
    return tc::to_device(padded);
}

// expect_close, with a hint when the output holds NaN.
void expect_close_kernel(const context& ctx, std::string_view what, const std::vector<float>& got,
                         const std::vector<double>& want, const std::vector<std::size_t>& shape, double abs,
                         double rel) {
    try {
        expect_close(ctx, what, got, want, shape, abs, rel);
    } catch (const wrong_answer& e) {
        bool nan = false;
        for (float v : got) nan = nan || std::isnan(v);
        if (!nan) throw;
        throw wrong_answer(std::string(e.what()) +
                           ". The output was NaN before the kernel ran and each input is followed by NaNs in memory: "
                           "NaN here means an element not written, or a read past the end of an input");
    }
}

}  // namespace exercises::check::kernel_checks

using namespace exercises::check::kernel_checks;

TINYLLM_EXERCISE_CHECK("kernels/01_warp_softmax") {
    const int shapes[][2] = {{1, 1}, {3, 7}, {2, 32}, {4, 33}, {5, 100}, {2, 300}};
    for (int c = 0; c < 8; ++c) {
        const int rows = c < 6 ? shapes[c][0] : ctx.integer(1, 6), cols = c < 6 ? shapes[c][1] : ctx.integer(1, 200);
        const float spread = c % 2 ? 100.0f : 4.0f;  // exp(100) overflows float: the max must be subtracted
        ctx.case_label = "case " + std::to_string(c) + ": rows " + std::to_string(rows) + ", cols " +
                         std::to_string(cols) + ", values in [-" + std::to_string(static_cast<int>(spread)) + ", " +
                         std::to_string(static_cast<int>(spread)) + "]";
        const std::vector<float> x = ctx.floats(static_cast<std::size_t>(rows) * cols, -spread, spread);
        std::vector<double> want;
        for (int r = 0; r < rows; ++r) {
            const auto p =
                tinyllm::cpu::softmax_row(std::span<const float>(x).subspan(static_cast<std::size_t>(r) * cols, cols));
            want.insert(want.end(), p.begin(), p.end());
        }
        const tc::device_buffer<float> d_in = to_device_padded(x, 64);
        tc::device_buffer<float> d_out(x.size());
        d_out.poison();  // NaN: an element the kernel does not write fails
        exercises::kernels::row_softmax(d_out.data(), d_in.data(), rows, cols);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> got = tc::to_host(d_out);
        expect_close_kernel(ctx, "out", got, want, {std::size_t(rows), std::size_t(cols)}, 1e-6, 1e-4);
    }
}

TINYLLM_EXERCISE_CHECK("kernels/02_tiled_matmul") {
    const int shapes[][3] = {{16, 16, 16}, {32, 48, 32}, {1, 1, 1}, {17, 5, 33}, {40, 23, 7}};
    for (int c = 0; c < 7; ++c) {
        const int M = c < 5 ? shapes[c][0] : ctx.integer(1, 50), N = c < 5 ? shapes[c][1] : ctx.integer(1, 50),
                  K = c < 5 ? shapes[c][2] : ctx.integer(1, 50);
        ctx.case_label = "case " + std::to_string(c) + ": M " + std::to_string(M) + ", N " + std::to_string(N) +
                         ", K " + std::to_string(K);
        const std::vector<float> a = ctx.floats(static_cast<std::size_t>(M) * K);
        const std::vector<float> b = ctx.floats(static_cast<std::size_t>(K) * N);
        std::vector<float> want(static_cast<std::size_t>(M) * N);
        tinyllm::cpu::matmul(tinyllm::tensor_view<float, 2>(want.data(), {M, N}),
                             tinyllm::tensor_view<const float, 2>(a.data(), {M, K}),
                             tinyllm::tensor_view<const float, 2>(b.data(), {K, N}));
        const tc::device_buffer<float> d_a = to_device_padded(a, 256), d_b = to_device_padded(b, 256);
        tc::device_buffer<float> d_c(want.size());
        d_c.poison();
        exercises::kernels::tiled_matmul(d_c.data(), d_a.data(), d_b.data(), M, N, K);
        TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> got = tc::to_host(d_c);
        const std::vector<double> want_double(want.begin(), want.end());
        expect_close_kernel(ctx, "c", got, want_double, {std::size_t(M), std::size_t(N)}, 1e-5, 1e-5);
    }
}

TINYLLM_EXERCISE_CHECK("kernels/03_last_block_sum") {
    const int sizes[] = {1, 5, 1024, 1025, 4096, 5000, 100000};
    for (int c = 0; c < 9; ++c) {
        const int n = c < 7 ? sizes[c] : ctx.integer(1, 300000);
        const int blocks = exercises::kernels::grid_sum_blocks(n);
        ctx.case_label = "case " + std::to_string(c) + ": n " + std::to_string(n) + " (" + std::to_string(blocks) +
                         (blocks == 1 ? " block)" : " blocks)");
        const std::vector<float> x = ctx.floats(static_cast<std::size_t>(n), -1.0f, 1.0f);
        double want = 0.0, magnitude = 0.0;
        for (const float v : x) {
            want += v;
            magnitude += std::fabs(v);
        }
        const tc::device_buffer<float> d_x = to_device_padded(x, 64);
        tc::device_buffer<float> d_out(1), d_partials(static_cast<std::size_t>(blocks));
        tc::device_buffer<unsigned> d_arrivals(1);
        TINYLLM_CUDA_CHECK(cudaMemset(d_arrivals.data(), 0, sizeof(unsigned)));
        // Twice with the same counter: the first call must leave it at zero for the second.
        for (const char* call : {"out (first call)", "out (second call, the same counter)"}) {
            d_out.poison();
            d_partials.poison();
            exercises::kernels::grid_sum(d_out.data(), d_x.data(), n, d_partials.data(), d_arrivals.data());
            TINYLLM_CUDA_CHECK(cudaDeviceSynchronize());
            // A float sum of n terms in another order: within a few roundings of sum |x|.
            expect_scalar(ctx, call, tc::to_host(d_out)[0], want, 1e-5 * magnitude + 1e-6, 0.0);
        }
        const unsigned left = tc::to_host(d_arrivals)[0];
        if (left != 0)
            ctx.fail("the arrival counter is " + std::to_string(left) +
                     " after the calls; the last block must set it back to 0 for the next launch");
    }
}
