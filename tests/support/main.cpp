// tests/support/main.cpp — the main() of every CPU test program (Catch2 itself is in session.cpp).
#include "session.hpp"

int main(int argc, char* argv[]) { return tinyllm_test::run_tests(argc, argv); }
