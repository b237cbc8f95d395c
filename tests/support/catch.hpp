// tests/support/catch.hpp — one include for Catch2 v2 (Debian 12: 2.13) and v3.
//
// Tests include this instead of a Catch2 header, and use only what both
// versions offer (TEST_CASE, SECTION, REQUIRE, CHECK, INFO, Approx via
// tinyllm_test::Approx, the string matchers tinyllm_test::contains and
// tinyllm_test::starts_with, GENERATE).
#pragma once

#include <string>

#if __has_include(<catch2/catch_all.hpp>)
#  include <catch2/catch_all.hpp>
#  define TINYLLM_CATCH_VERSION 3
namespace tinyllm_test {
using Catch::Approx;
// A matcher for "the message contains this text" (v3 renamed Contains).
inline auto contains(const std::string& text) { return Catch::Matchers::ContainsSubstring(text); }
inline auto starts_with(const std::string& text) { return Catch::Matchers::StartsWith(text); }
}
#elif __has_include(<catch2/catch.hpp>)
#  include <catch2/catch.hpp>
#  define TINYLLM_CATCH_VERSION 2
namespace tinyllm_test {
using Catch::Detail::Approx;
inline auto contains(const std::string& text) { return Catch::Matchers::Contains(text); }
inline auto starts_with(const std::string& text) { return Catch::Matchers::StartsWith(text); }
}
#else
#  error "tinyllm tests need Catch2 (v2.13 or v3): apt-get install catch2"
#endif
