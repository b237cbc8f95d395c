// Reference answer to exercise tokenization/01_most_frequent_pair — the counting step of BPE training.
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

#include <map>

namespace exercises::tokenization {

std::pair<int, int> most_frequent_pair(std::span<const weighted_word> words) {
    std::map<std::pair<int, int>, std::int64_t> freq;  // ordered: the tie-break's order
    for (const weighted_word& w : words)
        for (std::size_t i = 0; i + 1 < w.ids.size(); ++i) freq[{w.ids[i], w.ids[i + 1]}] += w.count;
    std::pair<int, int> best{-1, -1};
    std::int64_t best_count = 0;
    for (const auto& [pair, count] : freq)
        if (count > best_count) best = pair, best_count = count;  // strictly more: ties keep the smaller pair
    return best;
}

}  // namespace exercises::tokenization
