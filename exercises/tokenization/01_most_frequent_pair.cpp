// Exercise tokenization/01_most_frequent_pair — the counting step of BPE training.
//
// BPE training (include/tinyllm/bpe_train.hpp) repeats one step: count every adjacent
// pair of tokens in the corpus and make the most frequent pair a new token. The corpus
// is first cut into pieces (words) by the pre-tokenizer, and identical pieces are kept
// once with a count, so a pair's frequency is a weighted sum over the words:
//
//     freq(a, b) = sum over words w of  w.count * #{i : w.ids[i] = a and w.ids[i+1] = b}
//
// Overlapping occurrences count: the word "aaa" holds the pair (a, a) twice.
//
// Return the pair (a, b) with the highest frequency. Ties go to the smallest pair:
// the smaller a, then the smaller b (tinyllm's deterministic rule; for single bytes it
// is the lexicographic order of the bytes). Words of one token have no pair. Return
// {-1, -1} when there is no pair at all.
//
// Hint: a std::map<std::pair<int, int>, std::int64_t> keeps the pairs in exactly the
// order the tie-break wants, so the first pair with the highest count is the answer.
//
// Check: exercises_cpu tokenization/01_most_frequent_pair (compared with the first
// merge tinyllm::bpe_trainer learns from the same text).
#include "exercises.hpp"

namespace exercises::tokenization {

std::pair<int, int> most_frequent_pair(std::span<const weighted_word> words) {
    // TODO: count the pairs, weighted by each word's count, and return the most frequent.
    (void)words;
    return {-1, -1};
}

}  // namespace exercises::tokenization
