// tests/fuzz/fuzz_tokenizer.cpp — a libFuzzer target for the tokenizer: the
// encoder and decoder, the three pre-tokenizers, the JSON reader and every
// file loader (tiktoken ranks, Hugging Face tokenizer.json, tinyllm format).
//
// Build and run (clang with libFuzzer):
//     clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude tests/fuzz/fuzz_tokenizer.cpp -o fuzz_tokenizer
//     ./fuzz_tokenizer -max_total_time=60 tests/fixtures/tokenizer
//
// The first input byte picks what to exercise; the rest is the data. A
// tinyllm::error is an accepted outcome for a malformed file; anything else
// — a crash, a sanitizer report, another exception, or a broken invariant
// (pieces that do not cover the input, a round trip that changes the bytes,
// a streaming decode that differs from decode) — is a bug and aborts.
// tests/test_tokenizer_fuzz.cpp runs the same entry point as an ordinary test
// over a seed corpus, so the checks run without clang too.
#include <tinyllm/bpe_train.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace tinyllm_fuzz {

inline void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
        std::abort();
    }
}

// A small trained tokenizer (explicit merges) and a tiktoken-style one.
inline const tinyllm::tokenizer& trained() {
    static const tinyllm::tokenizer tok = [] {
        tinyllm::bpe_train_options opt;
        opt.vocab_size = 256 + 64 + 1;
        opt.pattern = tinyllm::pretokenizer::cl100k;
        opt.special_tokens = {"<|endoftext|>"};
        return tinyllm::train_bpe({"the quick brown fox jumps over the lazy dog; the dog sleeps. aaaa bbbb 1234 "
                                   "\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80\xF0\x9F\x98\x80"},
                                  opt);
    }();
    return tok;
}

inline const tinyllm::tokenizer& tiktoken_style() {
    static const tinyllm::tokenizer tok = [] {
        std::string ranks;
        tinyllm::token_id rank = 0;
        for (int b = 0; b < 256; ++b)
            ranks += tinyllm::detail::base64_encode(std::string(1, char(b))) + " " + std::to_string(rank++) + "\n";
        for (const char* t : {"aa", "aaaa", "ab", "th", "the", " the", "he", "\xC3\xA9"})
            ranks += tinyllm::detail::base64_encode(t) + " " + std::to_string(rank++) + "\n";
        return tinyllm::tokenizer(tinyllm::parse_tiktoken_ranks(ranks, "fuzz"), tinyllm::pretokenizer::o200k,
                                  {{"<|endoftext|>", rank}});
    }();
    return tok;
}

inline void check_encode_decode(const tinyllm::tokenizer& tok, std::string_view text) {
    const auto ids = tok.encode_ordinary(text);
    require(tok.decode(ids, tinyllm::decode_errors::keep) == text, "decode(encode(x)) == x");
    tinyllm::stream_decoder stream(tok);
    std::string streamed;
    for (const auto id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    require(streamed == tok.decode(ids), "streaming decode == decode");
    require(tinyllm::detail::is_valid_utf8(streamed), "decode gives valid UTF-8");
    try {
        const auto with = tok.encode(text, tinyllm::allowed_special::everything());
        require(tok.decode(with, tinyllm::decode_errors::keep) == text, "round trip with special tokens");
    } catch (const tinyllm::error&) {
        require(false, "encode with every special token allowed never throws");
    }
}

inline void check_pieces(std::string_view text) {
    for (const auto p : {tinyllm::pretokenizer::r50k, tinyllm::pretokenizer::cl100k, tinyllm::pretokenizer::o200k,
                         tinyllm::pretokenizer::llama3}) {
        std::size_t at = 0;
        tinyllm::for_each_piece(text, p, [&](std::string_view piece) {
            require(!piece.empty() && piece.data() == text.data() + at, "pieces are non-empty and contiguous");
            at += piece.size();
        });
        require(at == text.size(), "pieces cover the text");
    }
}

inline int one_input(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
    // Text (modes 0 and 1): any bytes are a valid input, so an error is a bug.
    if (data[0] % 6 < 2) {
        try {
            if (data[0] % 6 == 0) {
                check_pieces(body);
                check_encode_decode(trained(), body);
            } else {
                check_encode_decode(tiktoken_style(), body);
            }
        } catch (const tinyllm::error&) {
            require(false, "encoding and decoding text never throws");
        }
        return 0;
    }
    // Files (modes 2 to 5): a malformed one is reported with a tinyllm::error.
    try {
        switch (data[0] % 6) {
            case 2: {
                const auto v = tinyllm::json::parse(body, "fuzz.json");
                (void)v.size();
                break;
            }
            case 3: {
                const auto tok = tinyllm::tokenizer(tinyllm::parse_tiktoken_ranks(body, "fuzz.tiktoken"),
                                                    tinyllm::pretokenizer::r50k);
                check_encode_decode(tok, "hello world \xF0\x9F\x98\x80");
                break;
            }
            case 4: {
                const auto tok = tinyllm::parse_hf_tokenizer_json(body, "fuzz.json");
                check_encode_decode(tok, "hello world \xF0\x9F\x98\x80");
                break;
            }
            default: {
                const auto tok = tinyllm::parse_tokenizer(body, "fuzz.tinyllm");
                check_encode_decode(tok, "hello world \xF0\x9F\x98\x80");
                break;
            }
        }
    } catch (const tinyllm::error&) {
        // a malformed file, reported: fine
    }
    return 0;
}

}  // namespace tinyllm_fuzz

#ifndef TINYLLM_FUZZ_NO_ENTRY
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return tinyllm_fuzz::one_input(data, size);
}
#endif
