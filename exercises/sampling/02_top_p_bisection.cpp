// Exercise sampling/02_top_p_bisection — top-p (nucleus) filtering without sorting.
//
// Top-p (Holtzman et al. 2020) keeps the smallest set of most probable tokens whose
// probabilities sum to at least p, and sets every other logit to -infinity
// (include/tinyllm/sampling.hpp, cpu::top_p, which sorts). Sorting V = 50,000 logits per
// step is the slow part on a GPU; a threshold avoids it. With q = softmax(logits):
//
//     mass(tau) = sum of q_i over the tokens with q_i >= tau
//
// falls as tau rises. The kept set is {i : q_i >= tau*}, where tau* is the LARGEST
// threshold with mass(tau*) >= p. Find it by bisection on tau in [0, max q]: if
// mass(mid) >= p the answer is at least mid (lo = mid), else it is below (hi = mid).
// Each step is one pass over the vocabulary, no sort. Stop when lo and hi are so close
// that no probability lies between them (60 halvings in double are plenty), then keep
// q_i >= lo. p is in (0, 1]; with p = 1 keep everything.
//
// Hint: compute q in double. After the loop, every probability is either >= lo (kept)
// or < lo; the check picks p so that the answer is never a matter of rounding.
//
// Check: exercises_cpu sampling/02_top_p_bisection (compared with tinyllm::cpu::top_p).
#include "exercises.hpp"

namespace exercises::sampling {

void top_p(std::span<float> logits /*(V)*/, float p) {
    // TODO: bisect on the threshold tau, then set logits below it to -infinity.
    (void)logits, (void)p;
}

}  // namespace exercises::sampling
