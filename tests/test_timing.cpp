// Tests for tinyllm/timing.hpp: medians, rates and the JSON the tools read.
#include "support/catch.hpp"

#include <tinyllm/timing.hpp>

#include <sstream>
#include <string>

TEST_CASE("summarize takes the median, min and max of the run times", "[timing]") {
    const auto odd = tinyllm::summarize("a/b/c", {5.0, 1.0, 100.0}, 2e6, 0);
    CHECK(odd.median_us == 5.0);
    CHECK(odd.min_us == 1.0);
    CHECK(odd.max_us == 100.0);
    CHECK(odd.repeats == 3);
    CHECK(odd.gb_per_s() == tinyllm_test::Approx(400.0));  // 2 MB in 5 us = 4e11 B/s
    CHECK(odd.tflop_per_s() == 0.0);
    const auto even = tinyllm::summarize("x", {4.0, 1.0, 2.0, 3.0}, 0, 8e6);
    CHECK(even.median_us == 2.5);
    CHECK(even.tflop_per_s() == tinyllm_test::Approx(8e6 / 2.5e-6 / 1e12));
    CHECK_THROWS_AS(tinyllm::summarize("x", {}, 0, 0), tinyllm::error);
}

TEST_CASE("time_cpu runs the work warmup + repeats times", "[timing]") {
    int calls = 0;
    const auto r = tinyllm::time_cpu("count", [&] { ++calls; }, 0, 0, 2, 7);
    CHECK(calls == 9);
    CHECK(r.repeats == 7);
    CHECK(r.min_us >= 0.0);
    CHECK_THROWS_AS(tinyllm::time_cpu("x", [] {}, 0, 0, 0, 0), tinyllm::error);
}

TEST_CASE("write_json writes Google Benchmark's layout with escaped names", "[timing]") {
    std::ostringstream out;
    tinyllm::write_json(out, {tinyllm::summarize("copy/v1_naive/n=4", {2.0}, 32, 0),
                              tinyllm::summarize("odd \"name\"\\", {1.0}, 0, 10)},
                        {{"device", "cpu"}});
    const std::string json = out.str();
    CHECK(json.find("\"context\": {\"library\": \"tinyllm\"") != std::string::npos);
    CHECK(json.find("\"device\": \"cpu\"") != std::string::npos);
    CHECK(json.find("\"name\": \"copy/v1_naive/n=4\"") != std::string::npos);
    CHECK(json.find("\"real_time\": 2") != std::string::npos);
    CHECK(json.find("\"time_unit\": \"us\"") != std::string::npos);
    CHECK(json.find("\"bytes_per_second\": 1.6e+07") != std::string::npos);
    CHECK(json.find("\"name\": \"odd \\\"name\\\"\\\\\"") != std::string::npos);
    CHECK(json.find("\"flops_per_second\": 1e+07") != std::string::npos);
}
