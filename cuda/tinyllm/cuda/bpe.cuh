// tinyllm/cuda/bpe.cuh — byte-level BPE encoding of a batch of documents on
// the GPU, producing exactly the ids of tinyllm::tokenizer::encode_ordinary.
//
// Data preparation tokenizes millions of documents; every piece merges
// independently of all others, so the merge step parallelizes perfectly:
//
//   1. host:   pre-tokenize every document (pretokenize.hpp; O(n), cheap) and
//              concatenate the documents' bytes; record each piece's
//              (start, length);
//   2. device: one thread per piece runs the same merge loop as the CPU's
//              short-piece path (bpe.hpp merge_short): whole-piece lookup first
//              (tiktoken vocabularies), then repeatedly merge the adjacent pair
//              with the lowest rank, leftmost on ties. The vocabulary lives on
//              the device as the CPU's own hash tables, copied verbatim: token
//              bytes -> id and (left, right) -> (rank, merged id), open
//              addressing probed with the CPU's own host/device hash functions
//              (tinyllm::detail::hash_bytes / hash_u64 in <tinyllm/bpe.hpp>);
//   3. host:   pieces longer than bpe_vocab::short_piece_bytes (rare: a run of
//              base64 or of one character) are merged on the CPU with the
//              linked-list + heap path, and the ids are gathered per document.
//
// One thread per piece is the simple design: pieces are short (a word is a
// few bytes), so a thread's arrays stay small (local memory), and threads of
// a warp mostly finish together. Special tokens are not recognised (this is
// encode_ordinary).
//
// On a GPU: tests/cuda/test_bpe.cu, which compares it with the CPU encoder,
// passed on an H200 (runs B and D, memcheck clean); `tinyllm bench bpe` has not
// been timed on a GPU yet.
#pragma once

#include <tinyllm/bpe.hpp>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/math.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/tokenizer.hpp>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tinyllm::cuda {

namespace detail {

inline constexpr int bpe_max_piece = static_cast<int>(bpe_vocab::short_piece_bytes);

// The vocabulary's tables as raw device pointers (passed to the kernel by value).
struct bpe_tables {
    const token_id* token_slots;
    std::uint64_t token_mask;
    const std::uint64_t* token_offsets;  // token id -> [offsets[id], offsets[id+1]) in token_bytes
    const unsigned char* token_bytes;
    const std::uint64_t* merge_keys;
    const std::uint32_t* merge_ranks;
    const token_id* merge_ids;
    std::uint64_t merge_mask;
    const token_id* byte_ids;  // 256
    bool whole_piece_lookup;
};

TINYLLM_DEVICE token_id device_find(const bpe_tables& t, const unsigned char* s, std::size_t n) {
    for (std::uint64_t at = tinyllm::detail::hash_bytes(s, n) & t.token_mask;; at = (at + 1) & t.token_mask) {
        const token_id id = t.token_slots[at];
        if (id == bpe_vocab::none) return bpe_vocab::none;
        const std::uint64_t b = t.token_offsets[id], e = t.token_offsets[id + 1];  // id >= 0 here
        if (e - b != n) continue;
        bool same = true;
        for (std::size_t k = 0; k < n && same; ++k) same = t.token_bytes[b + k] == s[k];
        if (same) return id;
    }
}

TINYLLM_DEVICE void device_merge_of(const bpe_tables& t, token_id left, token_id right, std::uint32_t& rank,
                                    token_id& merged) {
    const std::uint64_t key = tinyllm::detail::merge_key(left, right);
    for (std::uint64_t at = tinyllm::detail::hash_u64(key) & t.merge_mask;; at = (at + 1) & t.merge_mask) {
        rank = t.merge_ranks[at];
        if (rank == bpe_vocab::no_rank) return;
        if (t.merge_keys[at] == key) {
            merged = t.merge_ids[at];
            return;
        }
    }
}

// One thread per piece. Piece p covers bytes [starts[p], starts[p] + lengths[p]);
// its ids go to out[starts[p] ...] (a piece of n bytes has at most n tokens),
// their number to counts[p]. Pieces longer than bpe_max_piece get count -1
// (the host encodes them).
template <int MaxPiece>
__global__ void bpe_pieces_kernel(bpe_tables t, const unsigned char* text, const std::uint64_t* starts,
                                  const std::int32_t* lengths, std::int64_t n_pieces, token_id* out,
                                  std::int32_t* counts) {
    const std::int64_t p = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
    if (p >= n_pieces) return;
    const unsigned char* s = text + starts[p];
    const int n = lengths[p];
    token_id* dst = out + starts[p];
    if (n > MaxPiece) {
        counts[p] = -1;
        return;
    }
    if (n == 1) {
        dst[0] = t.byte_ids[s[0]];
        counts[p] = 1;
        return;
    }
    if (t.whole_piece_lookup) {
        const token_id id = device_find(t, s, static_cast<std::size_t>(n));
        if (id != bpe_vocab::none) {
            dst[0] = id;
            counts[p] = 1;
            return;
        }
    }
    token_id ids[MaxPiece];
    std::uint32_t ranks[MaxPiece];
    int m = n;
    for (int i = 0; i < m; ++i) ids[i] = t.byte_ids[s[i]];
    token_id unused;
    for (int i = 0; i + 1 < m; ++i) device_merge_of(t, ids[i], ids[i + 1], ranks[i], unused);
    for (;;) {
        std::uint32_t best = bpe_vocab::no_rank;
        int at = 0;
        for (int i = 0; i + 1 < m; ++i)
            if (ranks[i] < best) best = ranks[i], at = i;
        if (best == bpe_vocab::no_rank) break;
        std::uint32_t r;
        token_id merged = bpe_vocab::none;
        device_merge_of(t, ids[at], ids[at + 1], r, merged);
        ids[at] = merged;
        for (int i = at + 1; i + 1 < m; ++i) ids[i] = ids[i + 1];  // remove ids[at + 1]
        for (int i = at; i + 2 < m; ++i) ranks[i] = ranks[i + 1];  // remove ranks[at]
        --m;
        if (at > 0) device_merge_of(t, ids[at - 1], ids[at], ranks[at - 1], unused);
        if (at + 1 < m) device_merge_of(t, ids[at], ids[at + 1], ranks[at], unused);
    }
    for (int i = 0; i < m; ++i) dst[i] = ids[i];
    counts[p] = m;
}

}  // namespace detail

// A bpe_vocab copied to the device (tables as on the host).
class bpe_device_vocab {
public:
    explicit bpe_device_vocab(const bpe_vocab& v) : host_(&v) {
        std::vector<std::uint64_t> offsets(v.size() + 1, 0);
        std::string bytes;
        for (std::size_t id = 0; id < v.size(); ++id) {
            if (v.contains(static_cast<token_id>(id))) bytes.append(v.bytes(static_cast<token_id>(id)));
            offsets[id + 1] = bytes.size();
        }
        std::vector<std::uint64_t> keys;
        std::vector<std::uint32_t> ranks;
        std::vector<token_id> merged;
        for (const auto& s : v.merge_slots()) {
            keys.push_back(s.key);
            ranks.push_back(s.rank);
            merged.push_back(s.merged);
        }
        std::vector<token_id> byte_ids(256);
        for (int b = 0; b < 256; ++b) byte_ids[std::size_t(b)] = v.byte_token(static_cast<unsigned char>(b));
        token_slots_ = to_device(v.token_slots());
        token_offsets_ = to_device(offsets);
        token_bytes_ = to_device(std::vector<unsigned char>(bytes.begin(), bytes.end()));
        merge_keys_ = to_device(keys);
        merge_ranks_ = to_device(ranks);
        merge_ids_ = to_device(merged);
        byte_ids_ = to_device(byte_ids);
        tables_ = {token_slots_.data(), v.token_slots().size() - 1, token_offsets_.data(), token_bytes_.data(),
                   merge_keys_.data(), merge_ranks_.data(), merge_ids_.data(), keys.size() - 1, byte_ids_.data(),
                   v.whole_piece_lookup()};
        // The uploads ran on the legacy default stream and may still be landing; wait, so that
        // encode_batch on any stream (a non-blocking one too) reads complete tables.
        TINYLLM_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    }

    const detail::bpe_tables& tables() const { return tables_; }
    const bpe_vocab& host() const { return *host_; }

private:
    const bpe_vocab* host_;
    device_buffer<token_id> token_slots_;
    device_buffer<std::uint64_t> token_offsets_;
    device_buffer<unsigned char> token_bytes_;
    device_buffer<std::uint64_t> merge_keys_;
    device_buffer<std::uint32_t> merge_ranks_;
    device_buffer<token_id> merge_ids_;
    device_buffer<token_id> byte_ids_;
    detail::bpe_tables tables_{};
};

// Encode every document as tok.encode_ordinary would (special tokens' strings
// are ordinary text). `dv` must have been made from tok.vocab().
template <class = void>  // compiled only where called (launch.cuh)
inline std::vector<std::vector<token_id>> encode_batch(const tokenizer& tok, const bpe_device_vocab& dv,
                                                       const std::vector<std::string>& documents,
                                                       cudaStream_t stream = nullptr) {
    TINYLLM_EXPECT(tok.sentencepiece() == nullptr, "encode_batch: the GPU encoder runs byte-level BPE; this is a "
                   "SentencePiece-family tokenizer (encode it with tokenizer::encode on the CPU)");
    TINYLLM_EXPECT(&dv.host() == &tok.vocab(), "encode_batch: the device vocabulary was made from another tokenizer");
    // 1. Pre-tokenize on the host into one byte buffer.
    std::string all;
    std::vector<std::uint64_t> starts;
    std::vector<std::int32_t> lengths;
    std::vector<std::size_t> doc_first_piece(documents.size() + 1, 0);
    for (std::size_t d = 0; d < documents.size(); ++d) {
        doc_first_piece[d] = starts.size();
        std::string text = documents[d];
        if (tok.add_prefix_space() && !text.empty() && text.front() != ' ') text.insert(text.begin(), ' ');
        const std::size_t base = all.size();
        all += text;
        std::size_t at = 0;
        for_each_piece(text, tok.pattern(), [&](std::string_view piece) {
            starts.push_back(base + at);
            TINYLLM_EXPECT(piece.size() < (std::size_t(1) << 31), "encode_batch: a piece of ", piece.size(),
                           " bytes is too long");
            lengths.push_back(static_cast<std::int32_t>(piece.size()));
            at += piece.size();
        });
    }
    doc_first_piece[documents.size()] = starts.size();
    std::vector<std::vector<token_id>> result(documents.size());
    if (starts.empty()) return result;

    // 2. Merge every piece on the device. Every copy is on `stream`, ordered with the
    //    kernel (a copy on the legacy default stream is not, when `stream` is a
    //    non-blocking stream), and one wait brings the ids back.
    device_buffer<unsigned char> d_text(all.size());
    device_buffer<std::uint64_t> d_starts(starts.size());
    device_buffer<std::int32_t> d_lengths(lengths.size());
    device_buffer<token_id> d_out(all.size());
    device_buffer<std::int32_t> d_counts(starts.size());
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(d_text.data(), all.data(), d_text.bytes(), cudaMemcpyHostToDevice, stream));
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_starts.data(), starts.data(), d_starts.bytes(), cudaMemcpyHostToDevice, stream));
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(d_lengths.data(), lengths.data(), d_lengths.bytes(), cudaMemcpyHostToDevice, stream));
    const auto n = static_cast<std::int64_t>(starts.size());
    const int threads = 128;
    launch(detail::bpe_pieces_kernel<detail::bpe_max_piece>, static_cast<unsigned>(ceil_div<std::int64_t>(n, threads)),
           threads, 0, stream, dv.tables(), d_text.data(), d_starts.data(), d_lengths.data(), n, d_out.data(),
           d_counts.data());
    TINYLLM_CUDA_CHECK_LAUNCH();
    std::vector<token_id> out(d_out.size());
    std::vector<std::int32_t> counts(d_counts.size());
    if (!out.empty())
        TINYLLM_CUDA_CHECK(cudaMemcpyAsync(out.data(), d_out.data(), d_out.bytes(), cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(
        cudaMemcpyAsync(counts.data(), d_counts.data(), d_counts.bytes(), cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));

    // 3. Gather per document; long pieces are merged on the host.
    bpe_vocab::scratch_space scratch;
    for (std::size_t d = 0; d < documents.size(); ++d) {
        auto& ids = result[d];
        for (std::size_t p = doc_first_piece[d]; p < doc_first_piece[d + 1]; ++p) {
            if (counts[p] < 0)
                tok.vocab().encode_piece(std::string_view(all).substr(starts[p], std::size_t(lengths[p])), ids, scratch);
            else
                ids.insert(ids.end(), out.begin() + static_cast<std::ptrdiff_t>(starts[p]),
                           out.begin() + static_cast<std::ptrdiff_t>(starts[p] + std::uint64_t(counts[p])));
        }
    }
    return result;
}

}  // namespace tinyllm::cuda
