// tinyllm/bpe_train.hpp — learn a byte-level BPE vocabulary from text.
//
// Training repeats one step until the vocabulary has the requested size:
// count every adjacent pair of tokens in the corpus, and make the most
// frequent pair a new token. The corpus is first pre-tokenized with the same
// pattern the encoder will use, so merges never cross a piece boundary, and
// identical pieces are counted once with a multiplicity ("the" may occur
// 50,000 times but is one word with count 50,000).
//
// Rescanning the corpus for every merge costs O(merges x corpus). The standard
// efficient algorithm (used by Hugging Face tokenizers and SentencePiece)
// keeps, across merges:
//   * words:       the distinct pieces, each as its current token sequence, with its count;
//   * pair counts: for every adjacent pair, how often it occurs (weighted by word counts);
//   * an index:    for every pair, the words that contain it;
//   * a max-heap:  of (count, pair). When a count changes, the new (count, pair)
//                  is pushed and the old entry stays behind; a popped entry whose
//                  count no longer matches is stale and skipped (lazy invalidation).
// A merge then touches only the words that contain the pair: their old pairs
// are subtracted, the pair is replaced left to right, the new pairs are added.
//
// Tie-break (documented, deterministic): the pair with the highest count
// wins; among equal counts, the pair whose (left bytes, right bytes) is
// lexicographically smallest. Hugging Face breaks ties by token id instead, so
// the two trainers may pick different merges on ties; loading a Hugging Face
// tokenizer.json (tokenizer_io.hpp) reproduces its ids exactly either way.
//
// The result: ids 0..255 are the single bytes (id = byte value), then one id
// per merge in the order learned, then the special tokens. It encodes with
// the learned merge ranks (no whole-piece lookup), so encoding a training
// piece replays exactly the merges training made on it.
#pragma once

#include <tinyllm/bpe.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstdint>
#include <functional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tinyllm {

struct bpe_train_options {
    // Bytes + merges + special tokens: an upper bound. Training stops early when the
    // text has no pair left to merge (every piece is one token); vocab_size() says.
    std::size_t vocab_size = 4096;
    pretokenizer pattern = pretokenizer::r50k;
    std::vector<std::string> special_tokens;  // removed from the training text; ids at the end
    // Called after each merge with (merges done, merges wanted); may be empty.
    std::function<void(std::size_t, std::size_t)> progress;
};

class bpe_trainer {
public:
    explicit bpe_trainer(bpe_train_options options) : options_(std::move(options)) {
        TINYLLM_EXPECT(options_.vocab_size >= 256 + options_.special_tokens.size(), "vocab_size ",
                       options_.vocab_size, " must be at least 256 (the bytes) + ", options_.special_tokens.size(),
                       " (the special tokens)");
        TINYLLM_EXPECT(options_.vocab_size <= 0x7FFFFFFFu, "vocab_size ", options_.vocab_size,
                       " does not fit token_id (int32: at most 2^31 - 1 ids)");
        // An empty special token would match everywhere and cut nothing (add_text would not advance).
        for (std::size_t i = 0; i < options_.special_tokens.size(); ++i)
            TINYLLM_EXPECT(!options_.special_tokens[i].empty(), "special_tokens[", i, "] is empty");
    }

    // Add text to the corpus (may be called many times, e.g. once per file).
    // Special tokens' strings are cut out: training never merges across them.
    void add_text(std::string_view text) {
        std::size_t at = 0;
        while (at < text.size()) {
            std::size_t next = std::string_view::npos, len = 0;
            for (const auto& s : options_.special_tokens) {
                const std::size_t p = text.find(s, at);
                if (p < next) next = p, len = s.size();
            }
            const std::string_view part = text.substr(at, next == std::string_view::npos ? text.size() - at : next - at);
            for_each_piece(part, options_.pattern, [&](std::string_view piece) { ++piece_counts_[std::string(piece)]; });
            if (next == std::string_view::npos) break;
            at = next + len;
        }
    }

    void add_file(const std::string& path) { add_text(detail::read_text_file(path)); }

    std::size_t distinct_pieces() const { return piece_counts_.size(); }

    tokenizer train() {
        // Tokens 0..255: the bytes.
        tokens_.clear();
        for (int b = 0; b < 256; ++b) tokens_.emplace_back(1, char(b));
        // Words in a deterministic order (sorted by bytes), as byte-id sequences.
        std::vector<std::pair<std::string, std::uint64_t>> sorted(piece_counts_.begin(), piece_counts_.end());
        std::sort(sorted.begin(), sorted.end());
        words_.clear();
        for (const auto& [piece, count] : sorted) {
            word w;
            w.count = count;
            for (const char c : piece) w.symbols.push_back(token_id(static_cast<unsigned char>(c)));
            words_.push_back(std::move(w));
        }
        // Initial pair counts and index.
        pair_counts_.clear();
        index_.clear();
        for (std::uint32_t wi = 0; wi < words_.size(); ++wi) add_pairs(wi);
        heap_ = decltype(heap_)(heap_order{&tokens_});
        for (const auto& [key, count] : pair_counts_)
            if (count > 0) heap_.push({count, key});

        const std::size_t wanted = options_.vocab_size - 256 - options_.special_tokens.size();
        std::vector<bpe_merge> merges;
        std::vector<std::uint32_t> seen(words_.size(), 0);
        std::uint32_t stamp = 0;
        while (merges.size() < wanted && !heap_.empty()) {
            const candidate top = heap_.top();
            heap_.pop();
            const auto it = pair_counts_.find(top.key);
            if (it == pair_counts_.end() || it->second != top.count || top.count == 0) continue;  // stale
            const token_id left = static_cast<token_id>(top.key >> 32);
            const token_id right = static_cast<token_id>(top.key & 0xFFFFFFFFu);
            const token_id id = static_cast<token_id>(tokens_.size());
            tokens_.push_back(tokens_[static_cast<std::size_t>(left)] + tokens_[static_cast<std::size_t>(right)]);
            merges.push_back({left, right, id, std::uint32_t(merges.size())});
            ++stamp;
            touched_.clear();
            const std::vector<std::uint32_t> affected = std::move(index_[top.key]);
            index_.erase(top.key);
            for (const std::uint32_t wi : affected) {
                if (seen[wi] == stamp) continue;  // listed twice
                seen[wi] = stamp;
                merge_word(wi, left, right, id);
            }
            for (const std::uint64_t key : touched_) {
                const auto c = pair_counts_.find(key);
                if (c != pair_counts_.end() && c->second > 0) heap_.push({c->second, key});
            }
            if (options_.progress) options_.progress(merges.size(), wanted);
        }
        std::vector<special_token> specials;
        for (const auto& s : options_.special_tokens) specials.push_back({s, static_cast<token_id>(tokens_.size() + specials.size())});
        return tokenizer(bpe_vocab(tokens_, std::vector<bool>(tokens_.size(), true), std::move(merges), false, false),
                         options_.pattern, std::move(specials));
    }

private:
    struct word {
        std::vector<token_id> symbols;
        std::uint64_t count = 0;
    };
    struct candidate {
        std::int64_t count;
        std::uint64_t key;
    };
    // Max-heap order: higher count first; on ties the lexicographically
    // smaller (left bytes, right bytes) first.
    struct heap_order {
        const std::vector<std::string>* tokens;
        bool operator()(const candidate& a, const candidate& b) const {  // true: a below b
            if (a.count != b.count) return a.count < b.count;
            const auto& t = *tokens;
            const std::string& al = t[a.key >> 32];
            const std::string& bl = t[b.key >> 32];
            if (al != bl) return al > bl;
            return t[a.key & 0xFFFFFFFFu] > t[b.key & 0xFFFFFFFFu];
        }
    };

    static std::uint64_t key_of(token_id a, token_id b) { return detail::merge_key(a, b); }

    void add_pairs(std::uint32_t wi) {
        const word& w = words_[wi];
        for (std::size_t i = 0; i + 1 < w.symbols.size(); ++i) {
            const std::uint64_t key = key_of(w.symbols[i], w.symbols[i + 1]);
            pair_counts_[key] += std::int64_t(w.count);
            index_[key].push_back(wi);
            touched_.push_back(key);
        }
    }
    void remove_pairs(std::uint32_t wi) {
        const word& w = words_[wi];
        for (std::size_t i = 0; i + 1 < w.symbols.size(); ++i) {
            const std::uint64_t key = key_of(w.symbols[i], w.symbols[i + 1]);
            pair_counts_[key] -= std::int64_t(w.count);
            touched_.push_back(key);
        }
    }

    void merge_word(std::uint32_t wi, token_id left, token_id right, token_id id) {
        word& w = words_[wi];
        bool contains = false;  // the index may list words that lost the pair to an earlier merge
        for (std::size_t i = 0; i + 1 < w.symbols.size() && !contains; ++i)
            contains = w.symbols[i] == left && w.symbols[i + 1] == right;
        if (!contains) return;
        remove_pairs(wi);
        std::vector<token_id> out;
        out.reserve(w.symbols.size());
        for (std::size_t i = 0; i < w.symbols.size(); ++i) {
            if (i + 1 < w.symbols.size() && w.symbols[i] == left && w.symbols[i + 1] == right) {
                out.push_back(id);
                ++i;
            } else {
                out.push_back(w.symbols[i]);
            }
        }
        w.symbols = std::move(out);
        add_pairs(wi);
    }

    bpe_train_options options_;
    std::unordered_map<std::string, std::uint64_t> piece_counts_;
    std::vector<std::string> tokens_;
    std::vector<word> words_;
    std::unordered_map<std::uint64_t, std::int64_t> pair_counts_;
    std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> index_;
    std::vector<std::uint64_t> touched_;
    std::priority_queue<candidate, std::vector<candidate>, heap_order> heap_{heap_order{nullptr}};
};

// Train on in-memory texts.
inline tokenizer train_bpe(const std::vector<std::string>& texts, const bpe_train_options& options) {
    bpe_trainer trainer(options);
    for (const auto& t : texts) trainer.add_text(t);
    return trainer.train();
}

// Train on the contents of text files.
inline tokenizer train_bpe_files(const std::vector<std::string>& paths, const bpe_train_options& options) {
    bpe_trainer trainer(options);
    for (const auto& p : paths) trainer.add_file(p);
    return trainer.train();
}

}  // namespace tinyllm
