// tests/support/generate_alone.hpp — what a batched request must equal: the
// same request run alone by cpu::generate, with its sampling parameters, seed,
// Philox stream, end-of-sequence ids and logit adjustments.
#pragma once

#include <tinyllm/batching.hpp>
#include <tinyllm/model.hpp>

#include <vector>

namespace tinyllm_test {

inline std::vector<tinyllm::token_id> generate_alone(const tinyllm::cpu::model& m, const tinyllm::batch_request& r) {
    tinyllm::cpu::generation_options o;
    o.max_new_tokens = r.max_new_tokens;
    o.sampling = r.sampling;
    o.seed = r.seed;
    o.stream = r.stream;
    o.eos_token_ids = r.eos_token_ids;
    o.adjust = r.adjust;
    return tinyllm::cpu::generate(m, r.prompt, o);
}

}  // namespace tinyllm_test
