// Tests for tinyllm/error.hpp: messages say what was wrong and where.
#include "support/catch.hpp"

#include <tinyllm/error.hpp>

#include <string>

namespace {
int top_k_checked(int k) {
    TINYLLM_EXPECT(k >= 1, "top_k: k = ", k, " must be at least 1");
    return k;
}
}  // namespace

TEST_CASE("a failed precondition names the condition, the explanation and the place", "[error]") {
    CHECK(top_k_checked(3) == 3);
    try {
        top_k_checked(0);
        FAIL("no exception was thrown");
    } catch (const tinyllm::error& e) {
        const std::string what = e.what();
        INFO(what);
        CHECK(what.find("precondition failed: k >= 1") != std::string::npos);
        CHECK(what.find("top_k: k = 0 must be at least 1") != std::string::npos);
        CHECK(what.find("tests/test_error.cpp:") != std::string::npos);
        CHECK(what.find("top_k_checked") != std::string::npos);
    }
}

TEST_CASE("TINYLLM_FAIL throws tinyllm::error, which is a std::runtime_error", "[error]") {
    auto fail = [] { TINYLLM_FAIL("unknown architecture '", "Foo", "' in ", "config.json"); };
    CHECK_THROWS_AS(fail(), tinyllm::error);
    CHECK_THROWS_AS(fail(), std::runtime_error);
    CHECK_THROWS_WITH(fail(), tinyllm_test::starts_with("tinyllm: unknown architecture 'Foo' in config.json"));
}

TEST_CASE("message parts are streamed", "[error]") {
    CHECK(tinyllm::detail::cat("a", 1, ' ', 2.5, std::string("z")) == "a1 2.5z");
    CHECK(tinyllm::detail::short_path("/home/x/tinyllm/include/tinyllm/tensor.hpp") == "include/tinyllm/tensor.hpp");
    CHECK(tinyllm::detail::short_path("elsewhere.cpp") == "elsewhere.cpp");
}
