// tinyllm/detail/json.hpp — a small, complete JSON reader (RFC 8259).
//
// tinyllm reads a few JSON files: Hugging Face tokenizer.json and
// config.json, GPT-2's encoder.json, safetensors headers. This parser turns a
// document into a tree of json::value (null, bool, number, string, array,
// object) and reports any syntax error with the byte offset, line and column
// where it happened and what was expected:
//
//     auto doc = tinyllm::json::parse(text, "tokenizer.json");
//     const auto& merges = doc.at("model").at("merges").as_array();
//
// Strings are stored as UTF-8: \uXXXX escapes are decoded, including UTF-16
// surrogate pairs (\ud83d\ude00 is U+1F600); a lone surrogate is an error.
// Numbers keep their text and convert on request (as_double, as_int64), so an
// integer such as a token id or a tensor offset above 2^53 loses nothing; the
// conversions ignore the process's locale (strtod would read "0.001" as 0
// where the decimal point is a comma), and format_number writes numbers the
// same way in every locale.
// Object members keep their file order; a key given twice keeps its last value,
// in its first place, as Python's json (transformers) and Hugging Face's
// tokenizers read it (or, with duplicate_keys::keep, both members stay, for a
// reader that refuses such files: the safetensors header). Lookups are linear per member list (files here have few
// keys per object, except vocabularies, which callers iterate rather than look up).
#pragma once

#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/error.hpp>

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tinyllm::json {

enum class kind { null, boolean, number, string, array, object };

// A key given twice in one object: `last` keeps its last value (in the first's place);
// `keep` keeps both members, for the caller to refuse.
enum class duplicate_keys { last, keep };

inline const char* kind_name(kind k) {
    switch (k) {
        case kind::null: return "null";
        case kind::boolean: return "a boolean";
        case kind::number: return "a number";
        case kind::string: return "a string";
        case kind::array: return "an array";
        case kind::object: return "an object";
    }
    return "?";
}

class value {
public:
    using array_t = std::vector<value>;
    using object_t = std::vector<std::pair<std::string, value>>;

    value() = default;
    static value make_bool(bool b) { value v; v.kind_ = kind::boolean; v.bool_ = b; return v; }
    static value make_number(std::string text) { value v; v.kind_ = kind::number; v.text_ = std::move(text); return v; }
    static value make_string(std::string text) { value v; v.kind_ = kind::string; v.text_ = std::move(text); return v; }
    static value make_array(array_t a) { value v; v.kind_ = kind::array; v.array_ = std::move(a); return v; }
    static value make_object(object_t o) { value v; v.kind_ = kind::object; v.object_ = std::move(o); return v; }

    kind type() const { return kind_; }
    bool is_null() const { return kind_ == kind::null; }
    bool is_bool() const { return kind_ == kind::boolean; }
    bool is_number() const { return kind_ == kind::number; }
    bool is_string() const { return kind_ == kind::string; }
    bool is_array() const { return kind_ == kind::array; }
    bool is_object() const { return kind_ == kind::object; }

    bool as_bool() const { expect(kind::boolean); return bool_; }
    const std::string& as_string() const { expect(kind::string); return text_; }
    const std::string& number_text() const { expect(kind::number); return text_; }
    // The nearest double; beyond a double's range, +-inf (too large) or +-0 (too small), as strtod gives.
    double as_double() const {
        expect(kind::number);
        double v = 0.0;
        const auto [end, ec] = std::from_chars(text_.data(), text_.data() + text_.size(), v);
        if (ec == std::errc()) return v;
        // Out of range: the decimal exponent of the first nonzero digit says which way.
        // text_ is a JSON number: -?digits(.digits)?([eE][+-]?digits)?
        const bool negative = text_[0] == '-';
        const std::size_t e = text_.find_first_of("eE");
        const std::string_view mantissa = std::string_view(text_).substr(negative, e - negative);
        const std::size_t point = std::min(mantissa.find('.'), mantissa.size());
        const std::size_t first = mantissa.find_first_not_of("0.");
        if (first == std::string_view::npos) return negative ? -0.0 : 0.0;
        long long magnitude =
            first < point ? static_cast<long long>(point - first) - 1 : -static_cast<long long>(first - point);
        if (e != std::string::npos) {
            const char* from = text_.data() + e + 1;
            if (*from == '+') ++from;
            long long exponent = 0;
            const auto r = std::from_chars(from, text_.data() + text_.size(), exponent);
            if (r.ec != std::errc()) exponent = *from == '-' ? -(1LL << 40) : 1LL << 40;  // beyond any double
            magnitude += std::clamp(exponent, -(1LL << 40), 1LL << 40);
        }
        const double out = magnitude > 0 ? std::numeric_limits<double>::infinity() : 0.0;
        return negative ? -out : out;
    }
    std::int64_t as_int64() const {
        const std::optional<std::int64_t> v = to_int64();
        TINYLLM_EXPECT(v.has_value(), "JSON number ", text_, " is not an integer that fits in 64 bits");
        return *v;
    }
    // The number as an exact 64-bit integer, or nothing (2.0, 1e30, 2^64): for a
    // caller that names the file and field in its own error.
    std::optional<std::int64_t> to_int64() const {
        expect(kind::number);
        std::int64_t v = 0;
        const auto [end, ec] = std::from_chars(text_.data(), text_.data() + text_.size(), v);
        if (ec != std::errc() || end != text_.data() + text_.size()) return std::nullopt;
        return v;
    }
    const array_t& as_array() const { expect(kind::array); return array_; }
    const object_t& as_object() const { expect(kind::object); return object_; }

    // Object member by key: nullptr when absent (or when this is not an object).
    const value* find(std::string_view key) const {
        if (kind_ != kind::object) return nullptr;
        for (const auto& [k, v] : object_)
            if (k == key) return &v;
        return nullptr;
    }
    const value& at(std::string_view key) const {
        expect(kind::object);
        const value* v = find(key);
        if (!v) TINYLLM_FAIL("JSON object has no member \"", key, "\"");
        return *v;
    }
    const value& at(std::size_t i) const {
        expect(kind::array);
        TINYLLM_EXPECT(i < array_.size(), "JSON array index ", i, " out of range (size ", array_.size(), ")");
        return array_[i];
    }
    std::size_t size() const {
        return kind_ == kind::array ? array_.size() : kind_ == kind::object ? object_.size() : 0;
    }

private:
    void expect(kind k) const {
        if (kind_ != k) TINYLLM_FAIL("JSON value is ", kind_name(kind_), ", expected ", kind_name(k));
    }
    kind kind_ = kind::null;
    bool bool_ = false;
    std::string text_;
    array_t array_;
    object_t object_;
};

namespace detail {

class parser {
public:
    parser(std::string_view text, std::string_view source, duplicate_keys duplicates)
        : s_(text), source_(source), duplicates_(duplicates) {}

    value parse_document() {
        skip_ws();
        value v = parse_value(0);
        skip_ws();
        if (i_ != s_.size()) fail("unexpected text after the JSON value");
        return v;
    }

private:
    static constexpr int max_depth = 512;

    [[noreturn]] void fail(std::string_view what) const {
        std::size_t line = 1, col = 1;
        for (std::size_t k = 0; k < i_ && k < s_.size(); ++k) {
            if (s_[k] == '\n') ++line, col = 1;
            else ++col;
        }
        TINYLLM_FAIL("malformed JSON in ", source_, " at byte ", i_, " (line ", line, ", column ", col, "): ", what);
    }

    // A byte as an error message shows it: itself if printable ASCII, else 0xNN (a
    // message holds no raw byte that would make it invalid UTF-8, e.g. in a JSON reply).
    static std::string shown(char c) {
        const auto b = static_cast<unsigned char>(c);
        if (b >= 0x20 && b < 0x7F) return std::string("'") + c + "'";
        static constexpr char hex[] = "0123456789ABCDEF";
        return std::string("0x") + hex[b >> 4] + hex[b & 15];
    }

    void skip_ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }

    bool consume(std::string_view word) {
        if (s_.substr(i_, word.size()) != word) return false;
        i_ += word.size();
        return true;
    }

    value parse_value(int depth) {
        if (depth > max_depth) fail("nesting deeper than 512 levels");
        if (i_ >= s_.size()) fail("unexpected end of input, expected a value");
        const char c = s_[i_];
        if (c == '{') return parse_object(depth);
        if (c == '[') return parse_array(depth);
        if (c == '"') return value::make_string(parse_string());
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        if (consume("true")) return value::make_bool(true);
        if (consume("false")) return value::make_bool(false);
        if (consume("null")) return value{};
        fail("unexpected character " + shown(c) + ", expected a value");
    }

    value parse_object(int depth) {
        ++i_;  // {
        value::object_t members;
        std::unordered_map<std::string, std::size_t> place;  // each key's member
        skip_ws();
        if (i_ < s_.size() && s_[i_] == '}') {
            ++i_;
            return value::make_object(std::move(members));
        }
        for (;;) {
            skip_ws();
            if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string key in object");
            std::string key = parse_string();
            skip_ws();
            if (i_ >= s_.size() || s_[i_] != ':') fail("expected ':' after object key");
            ++i_;
            skip_ws();
            value member = parse_value(depth + 1);
            if (duplicates_ == duplicate_keys::keep) {
                members.emplace_back(std::move(key), std::move(member));
            } else if (const auto [it, added] = place.emplace(key, members.size()); added) {
                members.emplace_back(std::move(key), std::move(member));
            } else {
                members[it->second].second = std::move(member);  // a repeated key: its last value wins
            }
            skip_ws();
            if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
            if (i_ < s_.size() && s_[i_] == '}') { ++i_; break; }
            fail("expected ',' or '}' in object");
        }
        return value::make_object(std::move(members));
    }

    value parse_array(int depth) {
        ++i_;  // [
        value::array_t items;
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ']') {
            ++i_;
            return value::make_array(std::move(items));
        }
        for (;;) {
            skip_ws();
            items.push_back(parse_value(depth + 1));
            skip_ws();
            if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
            if (i_ < s_.size() && s_[i_] == ']') { ++i_; break; }
            fail("expected ',' or ']' in array");
        }
        return value::make_array(std::move(items));
    }

    value parse_number() {
        const std::size_t start = i_;
        auto digits = [&] {
            const std::size_t d = i_;
            while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
            return i_ - d;
        };
        if (s_[i_] == '-') ++i_;
        if (i_ < s_.size() && s_[i_] == '0') {
            ++i_;
        } else if (digits() == 0) {
            fail("expected digits in number");
        }
        if (i_ < s_.size() && s_[i_] == '.') {
            ++i_;
            if (digits() == 0) fail("expected digits after '.' in number");
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (digits() == 0) fail("expected digits in exponent");
        }
        return value::make_number(std::string(s_.substr(start, i_ - start)));
    }

    unsigned hex4() {
        if (i_ + 4 > s_.size()) fail("truncated \\u escape");
        unsigned v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = s_[i_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= unsigned(c - '0');
            else if (c >= 'a' && c <= 'f') v |= unsigned(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= unsigned(c - 'A' + 10);
            else { --i_; fail("bad hex digit in \\u escape"); }
        }
        return v;
    }

    std::string parse_string() {
        ++i_;  // "
        std::string out;
        for (;;) {
            if (i_ >= s_.size()) fail("unterminated string");
            const auto c = static_cast<unsigned char>(s_[i_]);
            if (c == '"') { ++i_; return out; }
            if (c < 0x20) fail("control character in string (must be escaped)");
            if (c != '\\') {
                // Copy a run of plain bytes; check that it is valid UTF-8.
                std::uint32_t cp;
                const int n = tinyllm::detail::decode_utf8(s_, i_, cp);
                if (cp == tinyllm::detail::invalid_code_point) fail("invalid UTF-8 in string");
                out.append(s_.substr(i_, static_cast<std::size_t>(n)));
                i_ += static_cast<std::size_t>(n);
                continue;
            }
            ++i_;
            if (i_ >= s_.size()) fail("unterminated escape");
            const char e = s_[i_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    std::uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (!(consume("\\u"))) fail("high surrogate not followed by a \\u low surrogate");
                        const unsigned lo = hex4();
                        if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate followed by a non-low surrogate");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        fail("lone low surrogate in \\u escape");
                    }
                    tinyllm::detail::encode_utf8(cp, out);
                    break;
                }
                default:
                    --i_;
                    fail("unknown escape: a backslash before " + shown(e));
            }
        }
    }

    std::string_view s_;
    std::string_view source_;
    duplicate_keys duplicates_;
    std::size_t i_ = 0;
};

inline void write_string(std::string& out, std::string_view s) {
    out += '"';
    std::size_t plain = 0;  // the start of the run of characters that need no escape
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        out.append(s, plain, i - plain);
        plain = i + 1;
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default: {  // the other control characters
                static const char* hex = "0123456789abcdef";
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 15];
            }
        }
    }
    out.append(s, plain, s.size() - plain);
    out += '"';
}

}  // namespace detail

// Parse a JSON document. `source` names it in error messages (a file name).
inline value parse(std::string_view text, std::string_view source = "<json>",
                   duplicate_keys duplicates = duplicate_keys::last) {
    return detail::parser(text, source, duplicates).parse_document();
}

// Append s as a JSON string literal (quotes and escapes; s must be UTF-8).
inline std::string quote(std::string_view s) {
    std::string out;
    detail::write_string(out, s);
    return out;
}

// x (a float or a double) as JSON text, the same in every locale: the fewest
// significant digits (at least 6, as printf's %g) that read back — as a double,
// then rounded to x's type, the way the readers here take numbers — to x itself,
// and always with a point or an exponent, so that Python reads a float (1e-05
// for the float nearest 1e-5, not 9.999999747378752e-06; 2.0, not 2). JSON has
// no inf or NaN: those are an error.
template <class T>
std::string format_number(T x) {
    static_assert(std::is_floating_point_v<T>);
    TINYLLM_EXPECT(x == x && x - x == 0, "json::format_number: ", x, " has no JSON form");
    constexpr int max_digits = std::numeric_limits<T>::max_digits10;
    char buf[40];
    char* end = buf;
    for (int digits = 6; digits <= max_digits; ++digits) {
        end = std::to_chars(buf, buf + sizeof buf, static_cast<double>(x), std::chars_format::general, digits).ptr;
        double back = 0.0;
        std::from_chars(buf, end, back);
        if (static_cast<T>(back) == x) break;
    }
    std::string out(buf, end);
    if (out.find_first_of(".e") == std::string::npos) out += ".0";
    return out;
}

}  // namespace tinyllm::json
