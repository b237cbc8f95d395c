// tests/support/session.hpp — run Catch2's test session: the one call the two main()s
// of the test programs (main.cpp for the CPU tests, cuda_main.cpp for the CUDA tests)
// make. Catch2's implementation is compiled once, in session.cpp, for both.
#pragma once

namespace tinyllm_test {

// Catch::Session().run(argc, argv): the test cases selected by the command line, the
// exit code Catch2 gives (the number of failed test cases, at most 255).
int run_tests(int argc, char* argv[]);

}  // namespace tinyllm_test
