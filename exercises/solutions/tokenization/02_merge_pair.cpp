// Reference answer to exercise tokenization/02_merge_pair — apply one BPE merge to a piece.
//
// A learned merge (left, right) -> new_id replaces adjacent occurrences of the pair in a
// sequence of token ids. Scan left to right: where ids[i] == left and ids[i+1] == right,
// emit new_id and skip both; otherwise emit ids[i]. Occurrences do not overlap, and the
// leftmost one wins:
//
//     ids {97, 97, 97}, merge (97, 97) -> 256:   {256, 97}      ("aaa" -> "aa" "a")
//     ids {97, 98, 97, 98}, merge (97, 98) -> 256:  {256, 256}
//
// This is what the encoder does with a vocabulary of one merge (with many merges it
// applies them by rank, each one like this).
//
// Hint: one loop with an index you advance by 1 or by 2.
//
// Check: exercises_cpu tokenization/02_merge_pair (compared with tinyllm::tokenizer::encode
// of a tokenizer trained to one merge).
#include "exercises.hpp"

namespace exercises::tokenization {

std::vector<int> merge_pair(std::span<const int> ids, int left, int right, int new_id) {
    std::vector<int> out;
    out.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size();) {
        if (i + 1 < ids.size() && ids[i] == left && ids[i + 1] == right) {
            out.push_back(new_id);
            i += 2;
        } else {
            out.push_back(ids[i]);
            i += 1;
        }
    }
    return out;
}

}  // namespace exercises::tokenization
