// tinyllm/data.hpp — a training corpus as token ids on disk, and the batches a
// training loop draws from it.
//
// Tokenizing a corpus is slow beside reading it back, so a training run
// tokenizes its text once into a *token file* and memory-maps it afterwards.
// The file carries a fingerprint of what it was made from (the text and the
// tokenizer), so a later run can tell whether it may reuse it. Layout, all
// little-endian:
//
//     offset  size  field
//          0     8  magic "TLTOKENS"
//          8     4  version (1)
//         12     4  bytes per token: 2 (every id < 65536) or 4
//         16     8  number of tokens n
//         24     8  fingerprint (the caller's: e.g. fnv1a64 of the text and the tokenizer)
//         32     8  vocabulary size (one past the largest id the tokenizer can produce)
//         40    24  zero
//         64        n ids
//
// Batches. A language model learns from windows of T + 1 consecutive tokens:
// inputs are the first T, targets the last T (each position's next token).
// Window b of step s starts at a position drawn from Philox — the 64 bits of
// counters 2(sB + b) and 2(sB + b) + 1 of stream data_stream under the run's
// seed, modulo the number of possible starts — so a run is reproducible from
// its seed, and a resumed run draws exactly the batches it would have drawn.
// The last `validation_fraction` of the tokens are held out for evaluation: a
// split is a contiguous range, and a window never crosses from one into the other.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/files.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/safetensors.hpp>
#include <tinyllm/tensor.hpp>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

namespace tinyllm {

// The Philox stream batch positions are drawn from (fill_uniform uses 0,
// fill_normal 1, dropout 2).
inline constexpr std::uint64_t data_stream = 3;

// 64-bit FNV-1a of `bytes`, continuing from `hash`: a fingerprint of the inputs
// a token file was made from (not a cryptographic hash).
inline std::uint64_t fnv1a64(std::string_view bytes, std::uint64_t hash = 0xcbf29ce484222325ull) {
    for (const char c : bytes) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 0x100000001b3ull;
    }
    return hash;
}

namespace detail {

inline constexpr char token_file_magic[8] = {'T', 'L', 'T', 'O', 'K', 'E', 'N', 'S'};
inline constexpr std::size_t token_file_header_bytes = 64;

template <class T>
void put_le(char* out, T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff);
}
template <class T>
T get_le(const std::byte* in) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
    return static_cast<T>(v);
}

}  // namespace detail

// Write ids to `path` as a token file (above), through a temporary file renamed
// into place. Every id must be in [0, vocab_size).
inline void write_token_file(const std::string& path, std::span<const token_id> ids, std::uint64_t fingerprint,
                             index_t vocab_size) {
    TINYLLM_EXPECT(vocab_size >= 1, "write_token_file('", path, "'): vocab_size = ", vocab_size, " must be positive");
    for (std::size_t i = 0; i < ids.size(); ++i)
        TINYLLM_EXPECT(ids[i] >= 0 && ids[i] < vocab_size, "write_token_file('", path, "'): id ", ids[i],
                       " at position ", i, " is outside [0, ", vocab_size, ")");
    const std::uint32_t width = vocab_size <= 65536 ? 2 : 4;
    std::string bytes(detail::token_file_header_bytes + ids.size() * width, '\0');  // the header's padding: zero
    char* header = bytes.data();
    std::memcpy(header, detail::token_file_magic, 8);
    detail::put_le<std::uint32_t>(header + 8, 1);
    detail::put_le<std::uint32_t>(header + 12, width);
    detail::put_le<std::uint64_t>(header + 16, ids.size());
    detail::put_le<std::uint64_t>(header + 24, fingerprint);
    detail::put_le<std::uint64_t>(header + 32, static_cast<std::uint64_t>(vocab_size));
    char* body = header + detail::token_file_header_bytes;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (width == 2) detail::put_le<std::uint16_t>(body + 2 * i, static_cast<std::uint16_t>(ids[i]));
        else detail::put_le<std::uint32_t>(body + 4 * i, static_cast<std::uint32_t>(ids[i]));
    }
    detail::write_file_replacing(path, bytes, "write_token_file");
}

// A token file, memory-mapped and checked: the magic, the version, the width,
// that the size matches the count, and (on reading each id) nothing past the
// vocabulary.
class token_file {
public:
    explicit token_file(const std::string& path) : file_(path) {
        const auto fail = [&](const auto&... why) { TINYLLM_FAIL("token file '", path, "': ", why...); };
        if (file_.size() < detail::token_file_header_bytes) fail("shorter than its 64-byte header");
        const std::byte* h = file_.data();
        if (std::memcmp(h, detail::token_file_magic, 8) != 0) fail("not a token file (no TLTOKENS magic)");
        if (const auto v = detail::get_le<std::uint32_t>(h + 8); v != 1) fail("version ", v, " (this reader knows 1)");
        width_ = detail::get_le<std::uint32_t>(h + 12);
        if (width_ != 2 && width_ != 4) fail(width_, " bytes per token (2 or 4 expected)");
        count_ = detail::get_le<std::uint64_t>(h + 16);
        fingerprint_ = detail::get_le<std::uint64_t>(h + 24);
        vocab_size_ = detail::get_le<std::uint64_t>(h + 32);
        if (vocab_size_ == 0 || vocab_size_ > 0x7fffffffu) fail("vocabulary size ", vocab_size_);
        // Compared by division: count_ * width_ wraps for a count near 2^64.
        const std::uint64_t body = file_.size() - detail::token_file_header_bytes;
        if (body % width_ != 0 || body / width_ != count_)
            fail(count_, " tokens of ", width_, " bytes announced but ", body,
                 " bytes follow the header (truncated or damaged)");
    }

    std::uint64_t size() const { return count_; }
    std::uint64_t fingerprint() const { return fingerprint_; }
    index_t vocab_size() const { return static_cast<index_t>(vocab_size_); }
    const std::string& path() const { return file_.path(); }

    // Id i; a position past the end, or an id outside the vocabulary, is an
    // error naming the position. (One comparison each: cheap beside the read.)
    token_id operator[](std::uint64_t i) const {
        TINYLLM_EXPECT(i < count_, "token file '", file_.path(), "': position ", i, " is past its ", count_, " tokens");
        const std::byte* p = file_.data() + detail::token_file_header_bytes + i * width_;
        const std::uint32_t id = width_ == 2 ? detail::get_le<std::uint16_t>(p) : detail::get_le<std::uint32_t>(p);
        TINYLLM_EXPECT(id < vocab_size_, "token file '", file_.path(), "': id ", id, " at position ", i,
                       " is outside its vocabulary of ", vocab_size_);
        return static_cast<token_id>(id);
    }

private:
    detail::mapped_file file_;
    std::uint32_t width_ = 0;
    std::uint64_t count_ = 0, fingerprint_ = 0, vocab_size_ = 0;
};

// The train and validation ranges of a corpus of n tokens: the last
// round(n * validation_fraction) tokens are the validation split (at least
// T + 1 of them when the fraction is above 0), the rest training. Each split
// must hold at least one window of T + 1 tokens.
struct data_splits {
    std::uint64_t train_begin = 0, train_end = 0, val_begin = 0, val_end = 0;
};

inline data_splits split_tokens(std::uint64_t n, index_t T, double validation_fraction) {
    TINYLLM_EXPECT(T >= 1, "split_tokens: context T = ", T, " must be at least 1");
    TINYLLM_EXPECT(validation_fraction >= 0.0 && validation_fraction < 1.0, "split_tokens: validation_fraction = ",
                   validation_fraction, " must be in [0, 1)");
    const auto window = static_cast<std::uint64_t>(T) + 1;
    std::uint64_t val = static_cast<std::uint64_t>(static_cast<double>(n) * validation_fraction + 0.5);
    if (val > n) val = n;  // (n near 2^64: the double's rounding)
    if (validation_fraction > 0.0 && val < window) val = window;
    // n >= val + window, asked without the sum (a context near index_t's top would wrap it).
    TINYLLM_EXPECT(val <= n && n - val >= window, "the corpus has ", n, " tokens: too few for a context of ", T, " (",
                   window, " tokens per window)", (val ? " plus a validation split of " : ""),
                   (val ? std::to_string(val) : ""), (val ? " tokens" : ""));
    return {0, n - val, n - val, n};
}

// Batch `step` of B windows of T + 1 tokens from tokens [begin, end) of `file`,
// drawn with Philox (seed, data_stream) as described at the top: tokens (B, T)
// the inputs, targets (B, T) the next tokens.
inline void draw_batch(tensor_view<token_id, 2> tokens, tensor_view<token_id, 2> targets, const token_file& file,
                       std::uint64_t begin, std::uint64_t end, std::uint64_t seed, std::uint64_t step) {
    const index_t B = tokens.extent(0), T = tokens.extent(1);
    TINYLLM_EXPECT(targets.shape() == tokens.shape(), "draw_batch: targets ", to_string(targets.shape()),
                   " and tokens ", to_string(tokens.shape()), " must have the same shape (B, T)");
    detail::expect_distinct_elements("draw_batch", "tokens", tokens);
    detail::expect_distinct_elements("draw_batch", "targets", targets);
    detail::expect_apart("draw_batch", "targets", targets, "tokens", tokens);
    TINYLLM_EXPECT(begin <= end && end <= file.size(), "draw_batch: range [", begin, ", ", end,
                   ") is not inside the file's ", file.size(), " tokens");
    const auto window = static_cast<std::uint64_t>(T) + 1;
    TINYLLM_EXPECT(end - begin >= window, "draw_batch: ", end - begin, " tokens hold no window of ", window);
    const std::uint64_t starts = end - begin - window + 1;
    for (index_t b = 0; b < B; ++b) {
        const std::uint64_t k = 2 * (step * static_cast<std::uint64_t>(B) + static_cast<std::uint64_t>(b));
        const std::uint64_t r = (static_cast<std::uint64_t>(philox_bits(seed, data_stream, k)) << 32) |
                                philox_bits(seed, data_stream, k + 1);
        const std::uint64_t start = begin + r % starts;
        for (index_t t = 0; t < T; ++t) {
            tokens(b, t) = file[start + static_cast<std::uint64_t>(t)];
            targets(b, t) = file[start + static_cast<std::uint64_t>(t) + 1];
        }
    }
}

}  // namespace tinyllm
