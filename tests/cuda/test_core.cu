// CUDA tests for the foundation: error checks, device buffers, 16-bit
// conversions and Philox on the device, fill_uniform and the copy ladder
// against their CPU references, and the timing harness.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/copy.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timeline.cuh>
#include <tinyllm/cuda/timing.cuh>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <curand_kernel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

namespace tc = tinyllm::cuda;
using tinyllm::index_t;
using tinyllm_test::tolerance;

namespace {

__global__ void philox_kernel(tinyllm::philox_counter* out, const tinyllm::philox_counter* counters,
                              const tinyllm::philox_key* keys, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = tinyllm::philox4x32_10(counters[i], keys[i]);
}

// cuRAND's Philox4_32_10 with (seed, subsequence, offset 0): its first four
// outputs are Philox of counter (0, 0, subsequence lo, hi) with key = seed.
__global__ void curand_philox_kernel(std::uint32_t* out, unsigned long long seed, unsigned long long subsequence) {
    curandStatePhilox4_32_10_t state;
    curand_init(seed, subsequence, 0, &state);
    for (int j = 0; j < 4; ++j) out[j] = curand(&state);
}

__global__ void convert_kernel(const float* in, std::uint16_t* ours_bf16, std::uint16_t* cuda_bf16,
                               std::uint16_t* ours_fp16, std::uint16_t* cuda_fp16, float* back_bf16,
                               float* back_fp16, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    ours_bf16[i] = tinyllm::float_to_bf16(in[i]).bits;
    cuda_bf16[i] = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(in[i])).x;
    ours_fp16[i] = tinyllm::float_to_fp16(in[i]).bits;
    cuda_fp16[i] = static_cast<__half_raw>(__float2half_rn(in[i])).x;
    const std::uint16_t b = static_cast<std::uint16_t>(i & 0xffff);
    back_bf16[i] = tinyllm::bf16_to_float({b});
    back_fp16[i] = tinyllm::fp16_to_float({b});
}

std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

}  // namespace

TEST_CASE("CUDA failures throw cuda_error naming the error, the call and the place", "[cuda][error]") {
    try {
        TINYLLM_CUDA_CHECK(cudaSetDevice(1 << 20));
        FAIL("no exception was thrown");
    } catch (const tinyllm::cuda_error& e) {
        const std::string what = e.what();
        INFO(what);
        CHECK(e.code() == cudaErrorInvalidDevice);
        CHECK(what.find("cudaErrorInvalidDevice") != std::string::npos);
        CHECK(what.find("cudaSetDevice(1 << 20)") != std::string::npos);
        CHECK(what.find("tests/cuda/test_core.cu:") != std::string::npos);
    }
    // A bad launch configuration is reported by TINYLLM_CUDA_CHECK_LAUNCH.
    tc::device_buffer<tinyllm::philox_counter> out(1);
    tinyllm::cuda::launch(philox_kernel, 1, 4096, 0, nullptr, out.data(), nullptr, nullptr,
                          0);  // 4096 threads per block is too many
    CHECK_THROWS_AS(TINYLLM_CUDA_CHECK_LAUNCH(), tinyllm::cuda_error);
    // ... and the error is cleared, so the next call succeeds.
    CHECK_NOTHROW(TINYLLM_CUDA_CHECK(cudaDeviceSynchronize()));
    CHECK(tc::device_count() >= 1);
}

TEST_CASE("device_buffer round-trips data, moves, poisons to NaN and checks sizes", "[cuda][buffer]") {
    const auto host = tinyllm_test::random_floats(1000, 0);
    tc::device_buffer<float> a = tc::to_device(host);
    CHECK(a.size() == 1000);
    CHECK(tc::to_host(a) == host);

    tc::device_buffer<float> b = std::move(a);
    CHECK(a.data() == nullptr);
    CHECK(a.size() == 0);
    CHECK(tc::to_host(b) == host);

    b.poison();
    for (float x : tc::to_host(b)) REQUIRE(std::isnan(x));
    tc::device_buffer<tinyllm::bfloat16> h(10);
    h.poison();
    for (auto x : tc::to_host(h)) REQUIRE(std::isnan(tinyllm::to_float(x)));

    std::vector<float> wrong(999);
    CHECK_THROWS_AS(tc::copy_to_device(b, wrong), tinyllm::error);
    CHECK_THROWS_AS(tc::copy_to_host(std::span<float>(wrong), b), tinyllm::error);
    CHECK_THROWS_AS(b.view(tinyllm::extents<2>{10, 99}), tinyllm::error);
    CHECK(b.view(tinyllm::extents<2>{10, 100}).extent(1) == 100);
    tc::device_buffer<float> empty(0);
    CHECK(tc::to_host(empty).empty());
}

TEST_CASE("Philox gives the same words on the device as on the host, and as cuRAND", "[cuda][philox]") {
    const int n = 4099;
    std::vector<tinyllm::philox_counter> counters(n);
    std::vector<tinyllm::philox_key> keys(n);
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 99);
    for (int i = 0; i < n; ++i) {
        for (auto& w : counters[i].v) w = g.next_bits();
        for (auto& w : keys[i].v) w = g.next_bits();
    }
    counters[0] = {{0, 0, 0, 0}};
    keys[0] = {{0, 0}};
    auto d_counters = tc::to_device(counters);
    auto d_keys = tc::to_device(keys);
    tc::device_buffer<tinyllm::philox_counter> d_out(n);
    d_out.poison();
    tinyllm::cuda::launch(philox_kernel, tinyllm::ceil_div(n, 256), 256, 0, nullptr, d_out.data(), d_counters.data(),
                          d_keys.data(), n);
    TINYLLM_CUDA_CHECK_LAUNCH();
    const auto out = tc::to_host(d_out);
    std::size_t wrong = 0;
    for (int i = 0; i < n; ++i) {
        const auto want = tinyllm::philox4x32_10(counters[i], keys[i]);
        for (int j = 0; j < 4; ++j) wrong += out[i].v[j] != want.v[j];
    }
    CHECK(wrong == 0);
    CHECK(out[0].v[0] == 0x6627e8d5u);

    const unsigned long long seed = tinyllm_test::test_seed(), subsequence = 12345;
    tc::device_buffer<std::uint32_t> d_curand(4);
    tinyllm::cuda::launch(curand_philox_kernel, 1, 1, 0, nullptr, d_curand.data(), seed, subsequence);
    TINYLLM_CUDA_CHECK_LAUNCH();
    const auto from_curand = tc::to_host(d_curand);
    for (std::uint64_t j = 0; j < 4; ++j) CHECK(from_curand[j] == tinyllm::philox_bits(seed, subsequence, j));
}

TEST_CASE("fill_uniform on the device is bit-identical to the CPU reference", "[cuda][random]") {
    for (index_t n : {index_t{1}, index_t{3}, index_t{4}, index_t{1023}, index_t{1} << 20, (index_t{1} << 22) + 5}) {
        const std::uint64_t seed = tinyllm_test::test_seed() + static_cast<std::uint64_t>(n);
        tc::device_buffer<float> d(static_cast<std::size_t>(n));
        d.poison();
        tc::fill_uniform(d.view(tinyllm::extents<1>{n}), seed, -3.0f, 5.0f);
        std::vector<float> want(static_cast<std::size_t>(n));
        tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(want.data(), {n}), seed, -3.0f, 5.0f);
        const auto got = tc::to_host(d);
        std::size_t differing = 0;
        for (std::size_t i = 0; i < got.size(); ++i) differing += bits_of(got[i]) != bits_of(want[i]);
        INFO("n = " << n);
        CHECK(differing == 0);
        TINYLLM_REQUIRE_CLOSE(got, want, tolerance{0, 0, 0}, "fill_uniform cuda vs cpu");
    }
    // A misaligned start (offset by one float) takes the scalar path and still matches.
    tc::device_buffer<float> d(1001);
    d.poison();
    tc::fill_uniform(tinyllm::tensor_view<float, 1>(d.data() + 1, {1000}), 5, 0.0f, 1.0f);
    std::vector<float> want(1000);
    tinyllm::cpu::fill_uniform(tinyllm::tensor_view<float, 1>(want.data(), {1000}), 5, 0.0f, 1.0f);
    const auto got = tc::to_host(d);
    CHECK(std::isnan(got[0]));
    CHECK(std::equal(want.begin(), want.end(), got.begin() + 1));
}

TEST_CASE("16-bit conversions on the device match the host and CUDA's intrinsics", "[cuda][dtype]") {
    const int n = 1 << 20;
    std::vector<float> in(n);
    tinyllm::philox_generator g(tinyllm_test::test_seed(), 3);
    for (int i = 0; i < n; ++i) {
        std::uint32_t u = g.next_bits();
        if (i % 2) u = (u & 0x80000000u) | (0x33000000u + (u & 0x0fffffffu) % 0x14800000u);
        float f;
        std::memcpy(&f, &u, 4);
        in[i] = std::isnan(f) ? 1.0f : f;
    }
    auto d_in = tc::to_device(in);
    tc::device_buffer<std::uint16_t> ob(n), cb(n), oh(n), ch(n);
    tc::device_buffer<float> bb(n), bh(n);
    tinyllm::cuda::launch(convert_kernel, n / 256, 256, 0, nullptr, d_in.data(), ob.data(), cb.data(), oh.data(),
                          ch.data(), bb.data(), bh.data(), n);
    TINYLLM_CUDA_CHECK_LAUNCH();
    const auto ours_b = tc::to_host(ob), cuda_b = tc::to_host(cb), ours_h = tc::to_host(oh), cuda_h = tc::to_host(ch);
    const auto back_b = tc::to_host(bb), back_h = tc::to_host(bh);
    std::size_t bad_b = 0, bad_h = 0, bad_host = 0, bad_back = 0;
    for (int i = 0; i < n; ++i) {
        bad_b += ours_b[i] != cuda_b[i];
        bad_h += ours_h[i] != cuda_h[i];
        bad_host += ours_b[i] != tinyllm::float_to_bf16(in[i]).bits || ours_h[i] != tinyllm::float_to_fp16(in[i]).bits;
        const std::uint16_t b = static_cast<std::uint16_t>(i & 0xffff);
        const float hb = tinyllm::bf16_to_float({b}), hh = tinyllm::fp16_to_float({b});
        bad_back += !(bits_of(back_b[i]) == bits_of(hb) || (std::isnan(back_b[i]) && std::isnan(hb)));
        bad_back += !(bits_of(back_h[i]) == bits_of(hh) || (std::isnan(back_h[i]) && std::isnan(hh)));
    }
    CHECK(bad_b == 0);
    CHECK(bad_h == 0);
    CHECK(bad_host == 0);
    CHECK(bad_back == 0);
}

TEST_CASE("the copy ladder copies every element, at every size", "[cuda][copy]") {
    for (index_t n : {index_t{1}, index_t{5}, index_t{1023}, index_t{4096}, (index_t{1} << 22) + 3}) {
        const auto host = tinyllm_test::random_floats(static_cast<std::size_t>(n), 7);
        auto in = tc::to_device(host);
        tc::device_buffer<float> out(static_cast<std::size_t>(n));
        tinyllm::extents<1> shape{n};

        out.poison();
        tc::copy_naive(out.view(shape), in.view(shape));
        TINYLLM_REQUIRE_CLOSE(tc::to_host(out), host, tolerance{0, 0, 0}, "copy_naive n=" + std::to_string(n));

        out.poison();
        tc::copy_vectorized(out.view(shape), in.view(shape));
        TINYLLM_REQUIRE_CLOSE(tc::to_host(out), host, tolerance{0, 0, 0}, "copy_vectorized n=" + std::to_string(n));
    }
    tc::device_buffer<float> a(8), b(9);
    CHECK_THROWS_AS(tc::copy_naive(a.view(tinyllm::extents<1>{8}), b.view(tinyllm::extents<1>{9})), tinyllm::error);
    CHECK_THROWS_AS(tc::copy_vectorized(tinyllm::tensor_view<float, 1>(a.data() + 1, {4}),
                                        tinyllm::tensor_view<const float, 1>(b.data(), {4})),
                    tinyllm::error);
    // out one element past in, sharing the rest: the threads would read elements
    // already overwritten (1979 of 2000 came out wrong before this was refused).
    tc::device_buffer<float> shared(2001);
    CHECK_THROWS_WITH(tc::copy_naive(tinyllm::tensor_view<float, 1>(shared.data() + 1, {2000}),
                                     tinyllm::tensor_view<const float, 1>(shared.data(), {2000})),
                      tinyllm_test::contains("out and in overlap without being the same memory"));
    tc::copy_naive(shared.view(tinyllm::extents<1>{2001}),
                   shared.view(tinyllm::extents<1>{2001}));  // the same: allowed
}

TEST_CASE("the timing harness reports a median and writes JSON", "[cuda][timing]") {
    const index_t n = 1 << 22;
    tc::device_buffer<float> in(n), out(n);
    tc::fill_uniform(in.view(tinyllm::extents<1>{n}), 1);
    const double bytes = 2.0 * n * sizeof(float);
    const auto r = tc::time_gpu(
        "copy/v2_vectorized/n=4194304",
        [&] { tc::copy_vectorized(out.view(tinyllm::extents<1>{n}), in.view(tinyllm::extents<1>{n})); }, bytes, 0,
        {.warmup = 2, .repeats = 5});
    CHECK(r.median_us > 0);
    CHECK(r.min_us <= r.median_us);
    CHECK(r.median_us <= r.max_us);
    CHECK(r.gb_per_s() > 0);
    std::ostringstream json;
    tinyllm::write_json(json, {r});
    CHECK(json.str().find("\"name\": \"copy/v2_vectorized/n=4194304\"") != std::string::npos);
    CHECK(json.str().find("\"bytes_per_second\"") != std::string::npos);
    CHECK_THROWS_AS(tc::time_gpu("x", [] {}, 0, 0, {.repeats = 0}), tinyllm::error);
}

TEST_CASE("the timing harness flushes the L2 by reading, by writing or not at all", "[cuda][timing]") {
    const index_t n = 1 << 16;
    tc::device_buffer<float> in(n), out(n);
    tc::fill_uniform(in.view(tinyllm::extents<1>{n}), 2);
    for (const auto mode : {tc::l2_flush::read, tc::l2_flush::write, tc::l2_flush::none}) {
        CAPTURE(tc::to_string(mode));
        out.poison();
        const auto r = tc::time_gpu(
            "copy/v2_vectorized/n=65536",
            [&] { tc::copy_vectorized(out.view(tinyllm::extents<1>{n}), in.view(tinyllm::extents<1>{n})); },
            2.0 * n * sizeof(float), 0, {.warmup = 1, .repeats = 2, .flush = mode});
        CHECK(r.median_us > 0);
        CHECK(tc::to_host(out) == tc::to_host(in));  // the flush does not touch the work's buffers
        CHECK(tc::parse_l2_flush(tc::to_string(mode)) == mode);
    }
    CHECK_THROWS_WITH(tc::parse_l2_flush("flush"), Catch::Contains("read, write or none") && Catch::Contains("'flush'"));

    // The default comes from TINYLLM_BENCH_L2_FLUSH (put back as it was afterwards).
    const char* before = std::getenv("TINYLLM_BENCH_L2_FLUSH");
    const std::string saved = before ? before : "";
    ::setenv("TINYLLM_BENCH_L2_FLUSH", "write", 1);
    CHECK(tc::timing_options{}.flush == tc::l2_flush::write);
    ::setenv("TINYLLM_BENCH_L2_FLUSH", "sometimes", 1);
    CHECK_THROWS_WITH(tc::timing_options{}, Catch::Contains("TINYLLM_BENCH_L2_FLUSH") && Catch::Contains("'sometimes'"));
    ::unsetenv("TINYLLM_BENCH_L2_FLUSH");
    CHECK(tc::timing_options{}.flush == tc::l2_flush::read);
    if (before) ::setenv("TINYLLM_BENCH_L2_FLUSH", saved.c_str(), 1);
}

namespace {
// Adds 1 to every element, after waiting for the kernel before it (launch.cuh).
template <class T>
__global__ void add_one_chained_kernel(T* data, index_t n) {
    tc::allow_next_grid();
    tc::wait_for_prior_grids();
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        data[i] += 1;
}
}  // namespace

TEST_CASE("launch_chained keeps a stream's order: each kernel sees the one before it", "[cuda][launch][pdl]") {
    // 40 launches of one read-modify-write: with programmatic dependent launch on, each
    // kernel starts early on an sm_90 GPU, and only its wait keeps the sum exact.
    const index_t n = 1 << 18;
    for (const bool chained : {false, true}) {
        CAPTURE(chained);
        const tc::programmatic_launch_scope pdl(chained);
        CHECK(tc::programmatic_launch() == chained);
        tc::device_buffer<std::int32_t> data(static_cast<std::size_t>(n));
        TINYLLM_CUDA_CHECK(cudaMemset(data.data(), 0, static_cast<std::size_t>(n) * sizeof(std::int32_t)));
        for (int k = 0; k < 40; ++k) {
            tc::launch_chained(add_one_chained_kernel<std::int32_t>, 64, 256, 0, nullptr, data.data(), n);
            TINYLLM_CUDA_CHECK_LAUNCH();
        }
        const auto got = tc::to_host(data);
        CHECK(std::count(got.begin(), got.end(), 40) == n);
    }
    CHECK_FALSE(tc::programmatic_launch());  // the scopes put the setting back
}

namespace {
template <class T>
__global__ void scale_kernel(T* data, index_t n, T factor) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        data[i] *= factor;
}
}  // namespace

TEST_CASE("launch_timeline names and times every launch, eager and from a captured graph", "[cuda][launch][timeline]") {
    CHECK(tc::detail::short_kernel_name("void tinyllm::cuda::detail::f<tinyllm::bfloat16, 8>(tinyllm::index_t)") ==
          "f<bfloat16, 8>");
    CHECK(tc::detail::short_kernel_name("_ZN7tinyllm4cuda6detail1gEv") == "g");  // mangled: demangled first
    CHECK(tc::detail::short_kernel_name("void (anonymous namespace)::h<int>(int*, long)") == "h<int>");

    const index_t n = 1 << 16;
    tc::device_buffer<std::int32_t> data(static_cast<std::size_t>(n));
    TINYLLM_CUDA_CHECK(cudaMemset(data.data(), 0, static_cast<std::size_t>(n) * sizeof(std::int32_t)));
    cudaStream_t stream = nullptr;
    TINYLLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    {
        tc::launch_timeline outer;
        tc::launch(add_one_chained_kernel<std::int32_t>, 64, 256, 0, stream, data.data(), n);
        {
            tc::launch_timeline inner;  // records instead of outer while it exists
            tc::launch(scale_kernel<std::int32_t>, 64, 256, 0, stream, data.data(), n, 3);
            TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
            REQUIRE(inner.size() == 1);
            CHECK(inner.spans()[0].name == "scale_kernel<int>");
        }
        for (int k = 0; k < 3; ++k) tc::launch(add_one_chained_kernel<std::int32_t>, 64, 256, 0, stream, data.data(), n);
        TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
        const auto spans = outer.spans();
        REQUIRE(spans.size() == 4);
        double sum = 0;
        for (const auto& s : spans) {
            CHECK(s.name == "add_one_chained_kernel<int>");
            CHECK(s.us >= 0.0);
            CHECK_FALSE(s.captured);
            sum += s.us;
        }
        const auto groups = outer.groups();
        REQUIRE(groups.size() == 1);
        CHECK(groups[0].count == 4);
        CHECK(groups[0].us == Approx(sum));
        CHECK(outer.elapsed_us() >= spans.back().us);
        CHECK(outer.spans(true).empty());  // nothing was captured
    }
    // ((0 + 1) * 3 + 3) = 6 everywhere; then a graph of two launches, replayed twice.
    const auto eager = tc::to_host(data);
    CHECK(std::count(eager.begin(), eager.end(), 6) == n);
    {
        tc::launch_timeline timeline;
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        TINYLLM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        tc::launch(scale_kernel<std::int32_t>, 64, 256, 0, stream, data.data(), n, 2);
        tc::launch(add_one_chained_kernel<std::int32_t>, 64, 256, 0, stream, data.data(), n);
        TINYLLM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        TINYLLM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        for (int replay = 0; replay < 2; ++replay) {
            TINYLLM_CUDA_CHECK(cudaGraphLaunch(exec, stream));
            TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
            const auto spans = timeline.spans(true);  // the nodes of this replay
            REQUIRE(spans.size() == 2);
            CHECK(spans[0].name == "scale_kernel<int>");
            CHECK(spans[1].name == "add_one_chained_kernel<int>");
            CHECK(spans[0].captured);
            CHECK(timeline.elapsed_us(true) >= 0.0);
        }
        TINYLLM_CUDA_CHECK(cudaGraphExecDestroy(exec));
        TINYLLM_CUDA_CHECK(cudaGraphDestroy(graph));
    }
    // 6 -> 13 -> 27: the graph with its event nodes computed what the launches do.
    const auto got = tc::to_host(data);
    CHECK(std::count(got.begin(), got.end(), 27) == n);
    TINYLLM_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_CASE("device_info describes the GPU", "[cuda][device]") {
    const auto info = tc::get_device_info(0);
    CHECK_FALSE(info.name.empty());
    CHECK(info.major >= 7);
    CHECK(info.multiprocessors > 0);
    CHECK(info.global_memory > 0);
}
