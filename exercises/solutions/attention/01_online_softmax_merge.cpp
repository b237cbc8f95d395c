// Reference answer to exercise attention/01_online_softmax_merge — the online softmax of flash attention.
//
// Attention's output for one query is o = sum_j softmax(s)_j v_j over the keys j, with
// scores s_j = q . k_j / sqrt(D). Flash attention never holds all the scores: it walks
// the keys in blocks and keeps, for the keys seen so far, three running numbers
// (include/tinyllm/cuda/attention_flash.cuh):
//
//     m = max_j s_j,     l = sum_j exp(s_j - m),     o = sum_j exp(s_j - m) v_j   (D)
//
// The final output is o / l. Two partial results a and b over disjoint sets of keys
// combine exactly, because exp(s - m_a) = exp(s - m) exp(m - m_a) for any m:
//
//     m = max(m_a, m_b)
//     l = l_a exp(m_a - m) + l_b exp(m_b - m)
//     o = o_a exp(m_a - m) + o_b exp(m_b - m)
//
// Return the merged partial. An empty part has m = -infinity, l = 0, o = 0 (all D
// zeros); merging with it must give the other part unchanged, never NaN: careful with
// exp(-inf - (-inf)). (Both parts empty is not asked.)
//
// Hint: compute the two scale factors exp(m_a - m) and exp(m_b - m) once.
//
// Check: exercises_cpu attention/01_online_softmax_merge (o / l compared with
// tinyllm::cpu::attention over all the keys).
#include "exercises.hpp"

#include <algorithm>
#include <cmath>

namespace exercises::attention {

partial_attention merge_partials(const partial_attention& a, const partial_attention& b) {
    partial_attention out;
    out.m = std::max(a.m, b.m);
    // exp(-inf - m) = 0 for a finite m: an empty part contributes nothing.
    const double scale_a = a.l > 0 ? std::exp(a.m - out.m) : 0.0;
    const double scale_b = b.l > 0 ? std::exp(b.m - out.m) : 0.0;
    out.l = a.l * scale_a + b.l * scale_b;
    out.o.resize(a.o.size());
    for (std::size_t d = 0; d < a.o.size(); ++d) out.o[d] = a.o[d] * scale_a + b.o[d] * scale_b;
    return out;
}

}  // namespace exercises::attention
