// tinyllm/tokenizer.hpp — a byte-level BPE tokenizer: text -> token ids -> text.
//
//     auto tok = tinyllm::load_tiktoken("r50k_base.tiktoken", tinyllm::pretokenizer::r50k,
//                                       {{"<|endoftext|>", 50256}});
//     std::vector<tinyllm::token_id> ids = tok.encode("hello world");   // {31373, 995}
//     std::string text = tok.decode(ids);                                // "hello world"
//
// Ids are tinyllm::token_id (std::int32_t, config.hpp), the type the model and
// the samplers take, so tok.encode(text) feeds model.forward directly, and
// decode takes any contiguous run of ids (std::span: a vector, an array, part
// of a generated sequence).
//
// Encoding is three steps:
//   1. special tokens: find the special tokens' strings ("<|endoftext|>") that
//      the caller allowed; they become their ids and split the text;
//   2. pre-tokenization (pretokenize.hpp): cut each stretch of ordinary text
//      into pieces — words with their leading space, digit groups, punctuation
//      runs, whitespace runs;
//   3. BPE (bpe.hpp): each piece's bytes are merged into tokens.
//
// Special tokens follow tiktoken's rule: text that contains a special token's
// string is an *error* unless the caller allowed that token (then it encodes
// as the special id) or asked to treat such strings as ordinary text
// (encode_ordinary, or special_handling::as_text). A tokenizer that silently
// turned user text "<|endoftext|>" into the end-of-text token would let
// anyone who controls the input end a document.
//
// Decoding concatenates the tokens' bytes. A token boundary can fall inside a
// UTF-8 character (emoji are often 2 tokens), so the bytes of one token alone
// need not be valid text: decode() replaces invalid sequences with U+FFFD, or
// returns the raw bytes on request; stream_decoder holds back an incomplete
// character until the token that completes it arrives.
//
// The same class also holds a SentencePiece-family tokenizer (Llama 2,
// Mistral, Unigram models; sentencepiece.hpp), as load_tokenizer reads it from
// a Hugging Face tokenizer.json: then steps 2 and 3 are the normalizer and the
// SentencePiece model, token_bytes(id) is what the token decodes to ("▁the" ->
// " the", "<0x0A>" -> "\n"), decode() drops the leading space that encoding
// added (as Hugging Face's decoder does), and encode_with_template() adds the
// ids of the file's post-processor ("<s>" in front, for Llama). For byte-level
// BPE the template is empty and nothing changes. A Unigram tokenizer can also
// draw a random segmentation (encode_sample: subword regularization).
//
// The tokenizer is immutable after construction: encode and decode are const
// and keep their scratch memory on the caller's stack, so one tokenizer can be
// shared by any number of threads.
#pragma once

#include <tinyllm/bpe.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/sentencepiece.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tinyllm {

struct special_token {
    std::string text;
    token_id id;
};

// Which special tokens encode() turns into their ids.
struct allowed_special {
    bool all = false;
    std::vector<std::string> names;

    allowed_special() = default;
    allowed_special(std::initializer_list<std::string> list) : names(list) {}
    explicit allowed_special(std::vector<std::string> list) : names(std::move(list)) {}
    static allowed_special everything() {
        allowed_special a;
        a.all = true;
        return a;
    }
    static allowed_special none() { return {}; }
    bool allows(std::string_view name) const {
        return all || std::find(names.begin(), names.end(), name) != names.end();
    }
};

// What encode() does with a special token's string that is not allowed.
enum class special_handling {
    error,    // throw tinyllm::error (tiktoken's default: disallowed_special="all")
    as_text,  // encode it as ordinary text
};

// What decode() does with bytes that are not valid UTF-8.
enum class decode_errors {
    replace,  // each invalid sequence becomes U+FFFD
    keep,     // return the raw bytes
};

class tokenizer {
public:
    tokenizer() = default;

    // add_prefix_space: prepend " " to text that does not start with one before
    // encoding (Hugging Face ByteLevel's add_prefix_space; GPT-2 style models
    // trained with it see "hello" as " hello").
    tokenizer(bpe_vocab vocab, pretokenizer pattern, std::vector<special_token> specials = {},
              bool add_prefix_space = false)
        : vocab_(std::move(vocab)), pattern_(pattern), specials_(std::move(specials)),
          add_prefix_space_(add_prefix_space) {
        for (const auto& s : specials_) {
            TINYLLM_EXPECT(s.id >= 0, "special token \"", s.text, "\" has id ", s.id, "; token ids must be >= 0");
            TINYLLM_EXPECT(!s.text.empty(), "special token ", s.id, " has empty text");
            TINYLLM_EXPECT(!vocab_.contains(s.id) || vocab_.bytes(s.id) == s.text, "special token \"", s.text,
                           "\" has id ", s.id, ", which the vocabulary already uses for a different token");
            for (const auto& t : specials_)
                TINYLLM_EXPECT(&t == &s || (t.text != s.text && t.id != s.id), "special tokens \"", s.text,
                               "\" (", s.id, ") and \"", t.text, "\" (", t.id, ") share a string or an id");
        }
        std::sort(specials_.begin(), specials_.end(),
                  [](const special_token& a, const special_token& b) { return a.id < b.id; });
    }

    // A SentencePiece-family tokenizer (sentencepiece.hpp). A special token may
    // share its id with the model's piece of the same text ("<s>" in Llama).
    explicit tokenizer(sentencepiece_model model, std::vector<special_token> specials = {})
        : tokenizer(bpe_vocab(), pretokenizer::r50k, std::move(specials)) {
        for (const auto& s : specials_)
            TINYLLM_EXPECT(!model.contains(s.id) || model.piece(s.id) == s.text, "special token \"", s.text,
                           "\" has id ", s.id, ", which the SentencePiece model uses for the piece \"",
                           model.piece(s.id), "\"");
        sentencepiece_ = std::make_shared<const sentencepiece_model>(std::move(model));
        for (const auto* list : {&sentencepiece_->options().template_before, &sentencepiece_->options().template_after})
            for (const token_id id : *list)
                TINYLLM_EXPECT(sentencepiece_->contains(id) || is_special(id), "the post-processor's template has "
                               "token id ", id, ", which is neither a piece nor a special token");
    }

    // The SentencePiece model, or nullptr for a byte-level BPE tokenizer.
    const sentencepiece_model* sentencepiece() const { return sentencepiece_.get(); }

    const bpe_vocab& vocab() const { return vocab_; }
    pretokenizer pattern() const { return pattern_; }
    const std::vector<special_token>& specials() const { return specials_; }
    bool add_prefix_space() const { return add_prefix_space_; }

    // One past the largest id (ordinary or special): the embedding table's rows.
    std::size_t vocab_size() const {
        std::size_t n = sentencepiece_ ? sentencepiece_->size() : vocab_.size();
        for (const auto& s : specials_) n = std::max<std::size_t>(n, static_cast<std::size_t>(s.id) + 1);
        return n;
    }

    std::optional<token_id> special_id(std::string_view text) const {
        for (const auto& s : specials_)
            if (s.text == text) return s.id;
        return std::nullopt;
    }
    bool is_special(token_id id) const {
        for (const auto& s : specials_)
            if (s.id == id) return true;
        return false;
    }

    // The bytes of one token (special tokens: their text).
    std::string_view token_bytes(token_id id) const {
        TINYLLM_EXPECT(id >= 0, "token id ", id, " is negative; token ids are in [0, ", vocab_size(), ")");
        for (const auto& s : specials_)
            if (s.id == id) return s.text;
        if (sentencepiece_) {
            TINYLLM_EXPECT(sentencepiece_->contains(id), "token id ", id, " is not in the vocabulary (size ",
                           vocab_size(), ")");
            return sentencepiece_->token_bytes(id);
        }
        TINYLLM_EXPECT(vocab_.contains(id), "token id ", id, " is not in the vocabulary (size ", vocab_size(), ")");
        return vocab_.bytes(id);
    }

    // ---- encoding -------------------------------------------------------------

    // All of text as ordinary text: special tokens' strings are not special.
    void encode_ordinary(std::string_view text, std::vector<token_id>& out) const {
        encode_stretch(text, out, true);
    }
    std::vector<token_id> encode_ordinary(std::string_view text) const {
        std::vector<token_id> out;
        out.reserve(text.size() / 3 + 1);
        encode_ordinary(text, out);
        return out;
    }

    // Text with the allowed special tokens recognised; any other special
    // token's string is an error (or ordinary text with special_handling::as_text).
    std::vector<token_id> encode(std::string_view text, const allowed_special& allowed = {},
                                 special_handling others = special_handling::error) const {
        return encode_split(text, allowed, others, [&](std::string_view stretch, std::vector<token_id>& out,
                                                       bool text_start) { encode_stretch(stretch, out, text_start); });
    }

    // A SentencePiece Unigram tokenizer: one segmentation drawn at random
    // (subword regularization; sentencepiece.hpp, "Sampling"), special tokens
    // as in encode. The words are counted across the whole text, so a
    // (seed, stream) gives one reproducible sample of it. Refused for
    // byte-level and SentencePiece BPE, and for alpha not finite and > 0.
    std::vector<token_id> encode_sample(std::string_view text, const subword_sampling& sampling,
                                        const allowed_special& allowed = {},
                                        special_handling others = special_handling::error) const {
        TINYLLM_EXPECT(sentencepiece_ != nullptr,
                       "encode_sample draws SentencePiece Unigram segmentations (subword regularization), but this "
                       "is a byte-level BPE tokenizer: use encode");
        sentencepiece_->check_sampling(sampling);
        std::uint64_t word = 0;
        return encode_split(text, allowed, others,
                            [&](std::string_view stretch, std::vector<token_id>& out, bool text_start) {
                                word = sentencepiece_->encode_sample(stretch, out, sampling, text_start, word);
                            });
    }

    // The ids the tokenizer.json's post-processor puts before and after a text
    // (detail::hf_post_processor_template): Llama's {"<s>"} before, nothing
    // after; Llama 3's {"<|begin_of_text|>"}; RoBERTa's {"<s>"} and {"</s>"}.
    // Empty for files without a template (GPT-2's), tiktoken and GPT-2 files.
    std::span<const token_id> template_before() const {
        return sentencepiece_ ? std::span<const token_id>(sentencepiece_->options().template_before)
                              : std::span<const token_id>(template_before_);
    }
    std::span<const token_id> template_after() const {
        return sentencepiece_ ? std::span<const token_id>(sentencepiece_->options().template_after)
                              : std::span<const token_id>(template_after_);
    }

    // Set a byte-level tokenizer's template (a SentencePiece tokenizer's comes
    // with its model). Every id must be a token of the vocabulary or a special token.
    void set_template(std::vector<token_id> before, std::vector<token_id> after) {
        TINYLLM_EXPECT(!sentencepiece_, "a SentencePiece tokenizer's template comes from its tokenizer.json");
        for (const auto* ids : {&before, &after})
            for (const token_id id : *ids)
                TINYLLM_EXPECT(vocab_.contains(id) || is_special(id), "the template's id ", id,
                               " is neither a token of the vocabulary nor a special token");
        template_before_ = std::move(before);
        template_after_ = std::move(after);
    }

    // encode() inside the template: what Hugging Face's encode(text) returns
    // (add_special_tokens=True), and what a Llama model expects as a prompt.
    std::vector<token_id> encode_with_template(std::string_view text, const allowed_special& allowed = {},
                                               special_handling others = special_handling::error) const {
        std::vector<token_id> out(template_before().begin(), template_before().end());
        const std::vector<token_id> ids = encode(text, allowed, others);
        out.insert(out.end(), ids.begin(), ids.end());
        out.insert(out.end(), template_after().begin(), template_after().end());
        return out;
    }

    // ---- decoding -------------------------------------------------------------

    // The concatenated bytes of the tokens (may be invalid UTF-8). ids: a
    // std::vector<token_id>, an array, or any span of them.
    // SentencePiece: the leading space that encoding added is dropped.
    std::string decode_bytes(std::span<const token_id> ids) const {
        std::string out;
        for (const token_id id : ids) out.append(token_bytes(id));
        if (sentencepiece_ && !ids.empty()) sentencepiece_->text_start_fix(ids.front(), is_special(ids.front()), out);
        return out;
    }

    // The text of the tokens; an id outside the vocabulary (negative included) is an error.
    // SentencePiece with byte fallback, as Hugging Face's ByteFallback decoder:
    // a run of <0xNN> tokens whose bytes are not valid UTF-8 becomes one U+FFFD
    // per token (stream_decoder and decode_errors::keep use the bytes as they are).
    std::string decode(std::span<const token_id> ids, decode_errors errors = decode_errors::replace) const {
        if (sentencepiece_ && errors == decode_errors::replace) return decode_sentencepiece(ids);
        std::string bytes = decode_bytes(ids);
        if (errors == decode_errors::keep) return bytes;
        if (detail::is_valid_utf8(bytes)) return bytes;
        return detail::replace_invalid_utf8(bytes);
    }
    // decode({id}) and decode({a, b, c}).
    std::string decode(std::initializer_list<token_id> ids, decode_errors errors = decode_errors::replace) const {
        return decode(std::span<const token_id>(ids.begin(), ids.size()), errors);
    }

private:
    // encode's loop over special tokens; stretch(text, out, text_start) encodes
    // each stretch of ordinary text between them.
    template <class Stretch>
    std::vector<token_id> encode_split(std::string_view text, const allowed_special& allowed,
                                       special_handling others, Stretch&& stretch) const {
        std::vector<token_id> out;
        out.reserve(text.size() / 3 + 1);
        std::size_t at = 0;
        // Next occurrence of each special token at or after `at` (found lazily,
        // so a long text is scanned once per special token, not once per hit).
        std::vector<std::size_t> next(specials_.size(), 0);
        std::vector<bool> searched(specials_.size(), false);
        while (at < text.size()) {
            // The next special token string that is either allowed or an error
            // (leftmost; the longest when several start at the same byte).
            std::size_t best = std::string_view::npos;
            const special_token* which = nullptr;
            for (std::size_t k = 0; k < specials_.size(); ++k) {
                const special_token& s = specials_[k];
                if (!allowed.allows(s.text) && others == special_handling::as_text) continue;
                if (!searched[k] || (next[k] != std::string_view::npos && next[k] < at)) {
                    next[k] = text.find(s.text, at);
                    searched[k] = true;
                }
                const std::size_t p = next[k];
                if (p == std::string_view::npos) continue;
                if (p < best || (p == best && s.text.size() > which->text.size())) best = p, which = &s;
            }
            if (!which) {
                stretch(text.substr(at), out, at == 0);
                break;
            }
            if (!allowed.allows(which->text))
                TINYLLM_FAIL("the text contains the special token \"", which->text, "\" at byte ", best,
                             ", which is not allowed: allow it (allowed_special{\"", which->text,
                             "\"}) to encode it as id ", which->id,
                             ", or use encode_ordinary / special_handling::as_text to encode it as text");
            stretch(text.substr(at, best - at), out, at == 0);
            out.push_back(which->id);
            at = best + which->text.size();
        }
        return out;
    }

    // One stretch of ordinary text; text_start: it begins the whole text.
    void encode_stretch(std::string_view text, std::vector<token_id>& out, bool text_start) const {
        if (sentencepiece_) {
            sentencepiece_->encode(text, out, text_start);
            return;
        }
        bpe_vocab::scratch_space scratch;
        std::string prefixed;
        if (add_prefix_space_ && !text.empty() && text.front() != ' ') {
            prefixed.reserve(text.size() + 1);
            prefixed = " ";
            prefixed.append(text);
            text = prefixed;
        }
        for_each_piece(text, pattern_, [&](std::string_view piece) { vocab_.encode_piece(piece, out, scratch); });
    }

    // Hugging Face's decoders for a SentencePiece tokenizer (see decode).
    std::string decode_sentencepiece(std::span<const token_id> ids) const {
        std::string text, run;  // run: the bytes of consecutive <0xNN> tokens
        const auto flush = [&] {
            if (detail::is_valid_utf8(run)) {
                text += run;
            } else {
                for (std::size_t k = 0; k < run.size(); ++k) detail::encode_utf8(detail::replacement_character, text);
            }
            run.clear();
        };
        for (const token_id id : ids) {
            const int byte = is_special(id) ? -1 : sentencepiece_->byte_value(id);
            if (byte >= 0) {
                run += static_cast<char>(byte);
            } else {
                flush();
                text.append(token_bytes(id));
            }
        }
        flush();
        if (!ids.empty()) sentencepiece_->text_start_fix(ids.front(), is_special(ids.front()), text);
        return text;
    }

    bpe_vocab vocab_;
    std::shared_ptr<const sentencepiece_model> sentencepiece_;
    pretokenizer pattern_ = pretokenizer::r50k;
    std::vector<special_token> specials_;
    bool add_prefix_space_ = false;
    std::vector<token_id> template_before_, template_after_;  // byte-level BPE's (set_template)
};

// Where a stream of tokens sits in its text.
enum class stream_start {
    continues_text,  // after text already shown (a prompt): every space is kept
    starts_text,     // the tokens begin the text: decode()'s leading-space rule applies
};

// Decode a stream of tokens (as a model generates them) into text that is
// always valid UTF-8: bytes of a character split across tokens are held back
// until the character is complete. Concatenating everything push() and
// finish() return gives exactly tokenizer::decode(all ids), with two
// exceptions for SentencePiece tokenizers: by default (continues_text) the
// stream keeps the leading space that decode() drops — generated tokens follow
// a prompt, and " jumped" must stay " jumped" — and <0xNN> byte tokens that do
// not form valid UTF-8 become U+FFFD per invalid sequence, not per token.
class stream_decoder {
public:
    explicit stream_decoder(const tokenizer& tok, stream_start start = stream_start::continues_text)
        : tok_(&tok), at_start_(start == stream_start::starts_text) {}

    // The text that this token completes (possibly empty).
    std::string push(token_id id) {
        if (at_start_ && tok_->sentencepiece()) {
            std::string first(tok_->token_bytes(id));
            tok_->sentencepiece()->text_start_fix(id, tok_->is_special(id), first);
            pending_.append(first);
        } else {
            pending_.append(tok_->token_bytes(id));
        }
        at_start_ = false;
        const std::size_t hold = detail::incomplete_utf8_suffix(pending_);
        std::string ready = detail::replace_invalid_utf8(std::string_view(pending_).substr(0, pending_.size() - hold));
        pending_.erase(0, pending_.size() - hold);
        return ready;
    }

    // Bytes still held back (an incomplete character).
    std::size_t pending_bytes() const { return pending_.size(); }

    // End of the stream: an incomplete character left over becomes U+FFFD.
    std::string finish() {
        std::string rest = detail::replace_invalid_utf8(pending_);
        pending_.clear();
        return rest;
    }

private:
    const tokenizer* tok_;
    bool at_start_ = false;
    std::string pending_;
};

}  // namespace tinyllm
