// tinyllm/timing.hpp — timing results, CPU timing, and the JSON that the
// benchmark tools read. (GPU timing with CUDA events: <tinyllm/cuda/timing.cuh>.)
//
// A result is a name ("component/version/shape", e.g. "copy/v2_vectorized/n=16777216"),
// the median time of several runs (the median shrugs off the odd slow run
// that a mean would absorb), and the work one run does: bytes moved (read once
// + written once) for memory-bound code, floating-point operations for
// compute-bound code. From those follow GB/s and TFLOP/s, the numbers that say
// how close code is to what the hardware can do.
//
// write_json() writes Google Benchmark's layout ("context" + "benchmarks",
// real_time in microseconds, bytes_per_second), so tools/bench-report reads
// the output of Google Benchmark programs and of `tinyllm bench --json` alike.
#pragma once

#include <tinyllm/error.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace tinyllm {

struct timing_result {
    std::string name;  // "component/version/shape"
    double median_us = 0, min_us = 0, max_us = 0;
    int repeats = 0;
    double bytes = 0;  // bytes one run moves; 0 when not meaningful
    double flops = 0;  // floating-point operations of one run; 0 when not meaningful

    double gb_per_s() const { return bytes > 0 && median_us > 0 ? bytes / (median_us * 1e3) : 0; }
    double tflop_per_s() const { return flops > 0 && median_us > 0 ? flops / (median_us * 1e6) : 0; }
};

// Median, min and max of the run times (microseconds) of one benchmark.
inline timing_result summarize(std::string name, std::vector<double> us, double bytes, double flops) {
    TINYLLM_EXPECT(!us.empty(), "summarize needs at least one run time");
    std::sort(us.begin(), us.end());
    timing_result r;
    r.name = std::move(name);
    const std::size_t n = us.size();
    r.median_us = n % 2 ? us[n / 2] : 0.5 * (us[n / 2 - 1] + us[n / 2]);
    r.min_us = us.front();
    r.max_us = us.back();
    r.repeats = static_cast<int>(n);
    r.bytes = bytes;
    r.flops = flops;
    return r;
}

// Time `work()` on the CPU: `warmup` untimed runs, then the median of `repeats`.
template <class Work>
timing_result time_cpu(std::string name, Work&& work, double bytes, double flops = 0, int warmup = 1,
                       int repeats = 5) {
    TINYLLM_EXPECT(repeats >= 1, "time_cpu needs at least one repeat; got ", repeats);
    for (int i = 0; i < warmup; ++i) work();
    std::vector<double> us;
    for (int r = 0; r < repeats; ++r) {
        const auto start = std::chrono::steady_clock::now();
        work();
        const auto stop = std::chrono::steady_clock::now();
        us.push_back(std::chrono::duration<double, std::micro>(stop - start).count());
    }
    return summarize(std::move(name), std::move(us), bytes, flops);
}

// A readable table: name, median time, GB/s, TFLOP/s.
inline void print_results(std::FILE* out, const std::vector<timing_result>& results) {
    std::fprintf(out, "%-52s %12s %10s %10s\n", "benchmark", "median us", "GB/s", "TFLOP/s");
    for (const auto& r : results)
        std::fprintf(out, "%-52s %12.2f %10.1f %10.3f\n", r.name.c_str(), r.median_us, r.gb_per_s(), r.tflop_per_s());
}

namespace detail {
inline std::string json_string(const std::string& s) {
    std::string q = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            q += '\\';
            q += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
            q += buf;
        } else {
            q += c;
        }
    }
    return q + "\"";
}
}  // namespace detail

// Results as JSON in Google Benchmark's layout; `context` pairs (e.g.
// {"device", "NVIDIA H100 80GB HBM3"}) go into the "context" object.
inline void write_json(std::ostream& out, const std::vector<timing_result>& results,
                       const std::vector<std::pair<std::string, std::string>>& context = {}) {
    out << "{\n  \"context\": {\"library\": \"tinyllm\", \"timer\": \"median of repeats\"";
    for (const auto& [key, value] : context) out << ", " << detail::json_string(key) << ": " << detail::json_string(value);
    out << "},\n  \"benchmarks\": [\n";
    for (std::size_t i = 0; i < results.size(); ++i) {
        const auto& r = results[i];
        out << "    {\"name\": " << detail::json_string(r.name) << ", \"run_type\": \"iteration\", \"iterations\": "
            << r.repeats << ", \"real_time\": " << r.median_us << ", \"cpu_time\": " << r.median_us
            << ", \"time_unit\": \"us\", \"min_time_us\": " << r.min_us << ", \"max_time_us\": " << r.max_us;
        if (r.bytes > 0 && r.median_us > 0) out << ", \"bytes_per_second\": " << r.bytes / (r.median_us * 1e-6);
        if (r.flops > 0 && r.median_us > 0) out << ", \"flops_per_second\": " << r.flops / (r.median_us * 1e-6);
        out << "}" << (i + 1 < results.size() ? "," : "") << "\n";
    }
    out << "  ]\n}\n";
}

}  // namespace tinyllm
