// tinyllm/bpe.hpp — the core of byte-level BPE: a vocabulary of byte strings,
// a table of merges, and the merge loop that turns one pre-tokenized piece
// into token ids.
//
// Byte-level BPE starts every piece as its bytes (256 base tokens, so any input
// can be encoded) and then repeatedly merges the adjacent pair of tokens with
// the *lowest merge rank* into one token, the leftmost such pair when several
// share that rank, until no adjacent pair has a merge:
//
//     "lower"   l o w e r        ranks: (l,o)=0 ... (lo,w)=3 (e,r)=5 (low,er)=9
//               lo w e r         merge (l,o), rank 0
//               low e r          merge (lo,w), rank 3
//               low er           merge (e,r),  rank 5
//               lower            merge (low,er), rank 9
//
// Two conventions for "the rank of a pair" exist and this file supports both
// with one table, pair (left id, right id) -> (rank, merged id):
//   * tiktoken: the rank of a pair is the rank (= id) of the token that the two
//     byte strings concatenate to, if that token exists. The table holds every
//     split of every token into two tokens.
//   * Hugging Face / GPT-2 merges lists: the rank is the line number of the
//     pair "a b" in the merges list; only listed pairs merge.
// tiktoken also looks the whole piece up first: a piece that is itself a token
// is emitted as one id without merging ("whole-piece lookup"; Hugging Face
// calls it ignore_merges).
//
// Cost: a piece of n bytes takes at most n-1 merges. Short pieces (the usual
// case: words are a few bytes) use a flat array and rescan it, O(n^2) with a
// tiny constant. Long pieces (a 1 MB base64 blob has no spaces to split it)
// use a doubly linked list of tokens and a min-heap of candidate pairs keyed
// by (rank, position): each merge pops the best pair, relinks two nodes and
// pushes the at most two new pairs it created, so a piece costs O(n log n).
// Heap entries that a merge made stale are recognized by version numbers and
// skipped ("lazy invalidation").
//
// All tables are immutable after construction, so any number of threads may
// encode with one shared vocabulary.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tinyllm {

// token_id (std::int32_t) is defined in config.hpp.

namespace detail {

// The little-endian 64-bit word made of bytes s[0, n), n <= 8 (missing high bytes 0).
TINYLLM_HOST_DEVICE std::uint64_t load_le_word(const unsigned char* s, std::size_t n) {
    std::uint64_t w = 0;
#if TINYLLM_ON_DEVICE
    for (std::size_t k = n; k > 0; --k) w = (w << 8) | s[k - 1];
#else
    std::memcpy(&w, s, n);  // one load on the little-endian hosts tinyllm targets (x86-64, ARM64)
#endif
    return w;
}

// A fast, non-cryptographic hash of a byte string (8 bytes at a time). The
// CUDA BPE encoder probes the same hash tables on the device with it.
TINYLLM_HOST_DEVICE std::uint64_t hash_bytes(const unsigned char* s, std::size_t n) {
    constexpr std::uint64_t m = 0x9E3779B97F4A7C15ull;
    std::uint64_t h = 0x243F6A8885A308D3ull ^ (n * m);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = (h ^ load_le_word(s + i, 8)) * m;
        h ^= h >> 29;
    }
    h = (h ^ load_le_word(s + i, n - i)) * m;
    h ^= h >> 32;
    return h * 0xD6E8FEB86659FD93ull;
}
inline std::uint64_t hash_bytes(std::string_view s) {
    return hash_bytes(reinterpret_cast<const unsigned char*>(s.data()), s.size());
}

TINYLLM_HOST_DEVICE std::uint64_t hash_u64(std::uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    x ^= x >> 33;
    return x;
}

// The merge table's key of the pair (left, right): left in the high 32 bits,
// right in the low ones (ids are >= 0 here, so the casts lose nothing).
TINYLLM_HOST_DEVICE std::uint64_t merge_key(token_id left, token_id right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

inline std::size_t table_size_for(std::size_t n) {
    std::size_t size = 16;
    while (size < n * 2) size <<= 1;  // load factor <= 1/2
    return size;
}

}  // namespace detail

// A merge: left + right -> merged, applied in increasing rank.
struct bpe_merge {
    token_id left, right, merged;
    std::uint32_t rank;
};

// A byte-level BPE vocabulary and its merges (no pre-tokenization, no special
// tokens: see tokenizer.hpp for those).
class bpe_vocab {
public:
    static constexpr token_id none = -1;                 // no such token (empty hash slot, no merge)
    static constexpr std::uint32_t no_rank = 0xFFFFFFFFu;  // no such merge (empty merge slot)

    bpe_vocab() = default;

    // tokens[id] = the bytes of token id; `present[id]` false marks a hole in
    // the id space (allowed: some vocabularies skip ids). Every single byte
    // must be a token. With tiktoken_merges, every split of a token into two
    // tokens is a merge ranked by the merged token's id; otherwise `merges`
    // lists them explicitly.
    bpe_vocab(std::vector<std::string> tokens, std::vector<bool> present, std::vector<bpe_merge> merges,
              bool tiktoken_merges, bool whole_piece_lookup)
        : tokens_(std::move(tokens)), present_(std::move(present)), whole_piece_lookup_(whole_piece_lookup),
          tiktoken_merges_(tiktoken_merges) {
        TINYLLM_EXPECT(present_.size() == tokens_.size(), "present has ", present_.size(), " entries for ",
                       tokens_.size(), " tokens");
        TINYLLM_EXPECT(tokens_.size() <= 0x7FFFFFFFu, "a vocabulary of ", tokens_.size(),
                       " tokens does not fit token_id (int32: at most 2^31 - 1 ids)");
        build_token_table();
        for (int b = 0; b < 256; ++b) {
            const std::string s(1, static_cast<char>(b));
            byte_id_[b] = find(s);
            TINYLLM_EXPECT(byte_id_[b] != none, "byte-level BPE needs every byte as a token; byte ", b,
                           " is missing");
        }
        if (tiktoken_merges) {
            merges.clear();
            for (token_id id = 0; id < size_as_id(); ++id) {
                if (!present_[static_cast<std::size_t>(id)]) continue;
                const std::string_view t = tokens_[static_cast<std::size_t>(id)];
                for (std::size_t k = 1; k < t.size(); ++k) {
                    const token_id a = find(t.substr(0, k)), b = find(t.substr(k));
                    if (a != none && b != none) merges.push_back({a, b, id, static_cast<std::uint32_t>(id)});
                }
            }
        }
        build_merge_table(merges);
    }

    std::size_t size() const { return tokens_.size(); }  // one past the largest id
    bool contains(token_id id) const {
        return id >= 0 && static_cast<std::size_t>(id) < tokens_.size() && present_[static_cast<std::size_t>(id)];
    }
    std::string_view bytes(token_id id) const { return tokens_[static_cast<std::size_t>(id)]; }  // id: contains(id)
    bool whole_piece_lookup() const { return whole_piece_lookup_; }
    bool tiktoken_merges() const { return tiktoken_merges_; }
    token_id byte_token(unsigned char b) const { return byte_id_[b]; }
    const std::vector<bool>& present() const { return present_; }
    const std::vector<std::string>& tokens() const { return tokens_; }

    // The id of the token with exactly these bytes, or `none`.
    token_id find(std::string_view s) const {
        if (token_slots_.empty()) return none;
        const std::size_t mask = token_slots_.size() - 1;
        for (std::size_t at = detail::hash_bytes(s) & mask;; at = (at + 1) & mask) {
            const token_id id = token_slots_[at];
            if (id == none) return none;
            if (tokens_[static_cast<std::size_t>(id)] == s) return id;
        }
    }

    // The merge of (left, right): {rank, merged id}, {no_rank, none} if there is none.
    std::pair<std::uint32_t, token_id> merge_of(token_id left, token_id right) const {
        const std::uint64_t key = detail::merge_key(left, right);
        const std::size_t mask = merge_slots_.size() - 1;
        for (std::size_t at = detail::hash_u64(key) & mask;; at = (at + 1) & mask) {
            const merge_slot& s = merge_slots_[at];
            if (s.rank == no_rank) return {no_rank, none};
            if (s.key == key) return {s.rank, s.merged};
        }
    }

    // All merges, in increasing rank.
    std::vector<bpe_merge> merges() const {
        std::vector<bpe_merge> out;
        for (const auto& s : merge_slots_)
            if (s.rank != no_rank)
                out.push_back({static_cast<token_id>(s.key >> 32), static_cast<token_id>(s.key & 0xFFFFFFFFu), s.merged,
                               s.rank});
        std::sort(out.begin(), out.end(), [](const bpe_merge& a, const bpe_merge& b) {
            return a.rank != b.rank ? a.rank < b.rank : a.left < b.left;
        });
        return out;
    }

    // Append the ids of one piece to out. `scratch` is reused between calls
    // (one per thread) to avoid allocations.
    struct scratch_space {
        std::vector<token_id> ids;
        std::vector<std::uint32_t> ranks;
        struct node {
            token_id id;
            std::int32_t prev, next;
            std::uint32_t version;
        };
        std::vector<node> nodes;
    };

    void encode_piece(std::string_view piece, std::vector<token_id>& out, scratch_space& scratch) const {
        if (piece.empty()) return;
        if (piece.size() == 1) {
            out.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
            return;
        }
        if (whole_piece_lookup_) {
            const token_id id = find(piece);
            if (id != none) {
                out.push_back(id);
                return;
            }
        }
        if (piece.size() <= short_piece_bytes)
            merge_short(piece, out, scratch);
        else
            merge_long(piece, out, scratch);
    }

    std::vector<token_id> encode_piece(std::string_view piece) const {
        std::vector<token_id> out;
        scratch_space scratch;
        encode_piece(piece, out, scratch);
        return out;
    }

    // The raw hash tables (open addressing, linear probing; sizes are powers
    // of two), for copying to a GPU (cuda/bpe.cuh). token_slots()[h] is an id
    // or `none`, probed from detail::hash_bytes(bytes); merge_slots() entries
    // have key detail::merge_key(left, right), probed from detail::hash_u64(key),
    // and rank `no_rank` when empty.
    struct merge_slot {
        std::uint64_t key;
        std::uint32_t rank;
        token_id merged;
    };
    const std::vector<token_id>& token_slots() const { return token_slots_; }
    const std::vector<merge_slot>& merge_slots() const { return merge_slots_; }
    static constexpr std::size_t short_piece_bytes = 96;  // longer pieces use merge_long

private:
    token_id size_as_id() const { return static_cast<token_id>(tokens_.size()); }

    void build_token_table() {
        std::size_t count = 0;
        for (bool p : present_) count += p;
        token_slots_.assign(detail::table_size_for(count), none);
        const std::size_t mask = token_slots_.size() - 1;
        for (token_id id = 0; id < size_as_id(); ++id) {
            const std::string& bytes_of_id = tokens_[static_cast<std::size_t>(id)];
            if (!present_[static_cast<std::size_t>(id)]) continue;
            std::size_t at = detail::hash_bytes(bytes_of_id) & mask;
            for (;; at = (at + 1) & mask) {
                const token_id other = token_slots_[at];
                if (other == none) break;
                TINYLLM_EXPECT(tokens_[static_cast<std::size_t>(other)] != bytes_of_id, "tokens ", other, " and ", id,
                               " have the same bytes (a vocabulary maps each byte string to one id)");
            }
            token_slots_[at] = id;
        }
    }

    void build_merge_table(const std::vector<bpe_merge>& merges) {
        merge_slots_.assign(detail::table_size_for(merges.size()), merge_slot{0, no_rank, none});
        const std::size_t mask = merge_slots_.size() - 1;
        for (const auto& m : merges) {
            TINYLLM_EXPECT(contains(m.left) && contains(m.right) && contains(m.merged), "merge (", m.left, ", ",
                           m.right, ") -> ", m.merged, " names an id that is not in the vocabulary");
            TINYLLM_EXPECT(m.rank != no_rank, "merge rank ", m.rank, " is reserved");
            const std::uint64_t key = detail::merge_key(m.left, m.right);
            std::size_t at = detail::hash_u64(key) & mask;
            bool duplicate = false;
            for (;; at = (at + 1) & mask) {
                if (merge_slots_[at].rank == no_rank) break;
                if (merge_slots_[at].key == key) { duplicate = true; break; }
            }
            if (duplicate) continue;  // the first (lowest-rank) listing of a pair wins
            merge_slots_[at] = {key, m.rank, m.merged};
        }
    }

    // Flat array version: ids[i] are the current tokens, ranks[i] the rank of
    // the pair (ids[i], ids[i+1]). Each step finds the minimum (leftmost on
    // ties), merges and updates the two neighbouring ranks.
    void merge_short(std::string_view piece, std::vector<token_id>& out, scratch_space& s) const {
        auto& ids = s.ids;
        auto& ranks = s.ranks;
        ids.clear();
        ranks.clear();
        for (const char c : piece) ids.push_back(byte_id_[static_cast<unsigned char>(c)]);
        for (std::size_t i = 0; i + 1 < ids.size(); ++i) ranks.push_back(merge_of(ids[i], ids[i + 1]).first);
        for (;;) {
            std::uint32_t best = no_rank;
            std::size_t at = 0;
            for (std::size_t i = 0; i < ranks.size(); ++i)
                if (ranks[i] < best) best = ranks[i], at = i;
            if (best == no_rank) break;
            ids[at] = merge_of(ids[at], ids[at + 1]).second;
            ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(at) + 1);
            ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(at));
            if (at > 0) ranks[at - 1] = merge_of(ids[at - 1], ids[at]).first;
            if (at < ranks.size()) ranks[at] = merge_of(ids[at], ids[at + 1]).first;
        }
        out.insert(out.end(), ids.begin(), ids.end());
    }

    // Linked list + min-heap version for long pieces.
    void merge_long(std::string_view piece, std::vector<token_id>& out, scratch_space& s) const {
        using node = scratch_space::node;
        auto& nodes = s.nodes;
        const auto n = static_cast<std::int32_t>(piece.size());
        nodes.resize(piece.size());
        for (std::int32_t i = 0; i < n; ++i)
            nodes[i] = node{byte_id_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1, 0};
        struct candidate {
            std::uint32_t rank;
            std::int32_t left, right;
            std::uint32_t left_version, right_version;
            bool operator>(const candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
        };
        std::vector<candidate> storage;
        storage.reserve(piece.size());
        std::priority_queue<candidate, std::vector<candidate>, std::greater<candidate>> heap(
            std::greater<candidate>(), std::move(storage));
        auto push = [&](std::int32_t left) {
            if (left < 0) return;
            const std::int32_t right = nodes[left].next;
            if (right < 0) return;
            const std::uint32_t rank = merge_of(nodes[left].id, nodes[right].id).first;
            if (rank != no_rank) heap.push({rank, left, right, nodes[left].version, nodes[right].version});
        };
        for (std::int32_t i = 0; i + 1 < n; ++i) push(i);
        while (!heap.empty()) {
            const candidate c = heap.top();
            heap.pop();
            node& l = nodes[c.left];
            if (l.version != c.left_version || l.next != c.right || nodes[c.right].version != c.right_version)
                continue;  // stale: one side was merged since this pair was pushed
            node& r = nodes[c.right];
            l.id = merge_of(l.id, r.id).second;
            ++l.version;
            ++r.version;
            r.id = none;
            l.next = r.next;
            if (r.next >= 0) nodes[r.next].prev = c.left;
            push(l.prev);
            push(c.left);
        }
        for (std::int32_t i = 0; i >= 0; i = nodes[i].next) out.push_back(nodes[i].id);
    }

    std::vector<std::string> tokens_;
    std::vector<bool> present_;
    std::vector<token_id> token_slots_;
    std::vector<merge_slot> merge_slots_{16, merge_slot{0, no_rank, none}};
    token_id byte_id_[256]{};
    bool whole_piece_lookup_ = true;
    bool tiktoken_merges_ = true;
};

}  // namespace tinyllm
