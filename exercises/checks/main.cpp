// exercises/checks/main.cpp — the main() of the CPU check program, built twice: against
// the exercises as edited (exercises_cpu) and against the reference answers
// (exercises_cpu_solutions, TINYLLM_EXERCISE_SOLUTIONS=1).
#include "harness.hpp"

int main(int argc, char** argv) {
    return exercises::check::run_checks(argc, argv, "exercises_cpu", TINYLLM_EXERCISE_SOLUTIONS != 0);
}
