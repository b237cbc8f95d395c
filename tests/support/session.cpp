// tests/support/session.cpp — Catch2's implementation (Catch2 v2's single header with
// CATCH_CONFIG_RUNNER; v3's compiled library), shared by the CPU and CUDA test programs:
// it is the largest unit of the tests to compile (about 27 s at -O2 on the 2-core
// development machine), so it is compiled once rather than once per main().
#if __has_include(<catch2/catch_all.hpp>)
#  include <catch2/catch_session.hpp>
#else
#  define CATCH_CONFIG_RUNNER
#  include <catch2/catch.hpp>
#endif

#include "session.hpp"

int tinyllm_test::run_tests(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
