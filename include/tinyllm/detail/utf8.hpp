// tinyllm/detail/utf8.hpp — UTF-8 decoding and encoding, and the Unicode
// character classes of a code point.
//
// UTF-8 writes a code point in 1 to 4 bytes:
//
//     U+0000..U+007F     0xxxxxxx
//     U+0080..U+07FF     110xxxxx 10xxxxxx
//     U+0800..U+FFFF     1110xxxx 10xxxxxx 10xxxxxx           (not U+D800..U+DFFF)
//     U+10000..U+10FFFF  11110xxx 10xxxxxx 10xxxxxx 10xxxxxx
//
// A byte-level tokenizer accepts *any* bytes, so the decoder must say what an
// invalid sequence is. We follow the Unicode standard's "maximal subpart" rule
// (also what Python's `bytes.decode(errors="replace")` does): an invalid
// sequence is the longest prefix of something that could have started a valid
// sequence, at least one byte; each becomes one U+FFFD when decoding to text.
#pragma once

#include <tinyllm/detail/unicode_tables.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tinyllm::detail {

// Returned by decode_utf8 for an invalid sequence.
inline constexpr std::uint32_t invalid_code_point = 0xFFFFFFFFu;
inline constexpr std::uint32_t replacement_character = 0xFFFD;

// Decode the code point starting at p (p < end). Sets cp (invalid_code_point on
// an invalid sequence) and returns the number of bytes it covers (>= 1).
inline int decode_utf8(const unsigned char* p, const unsigned char* end, std::uint32_t& cp) {
    const unsigned b0 = p[0];
    if (b0 < 0x80) {
        cp = b0;
        return 1;
    }
    int need;
    std::uint32_t value;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1, value = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2, value = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
        if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3, value = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;  // no overlong forms
        if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        cp = invalid_code_point;
        return 1;
    }
    int i = 1;
    for (; i <= need; ++i) {
        if (p + i >= end) break;
        const unsigned b = p[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
        value = (value << 6) | (b & 0x3F);
    }
    if (i <= need) {
        cp = invalid_code_point;
        return i;  // the maximal subpart: the lead byte and the continuation bytes that fit
    }
    cp = value;
    return need + 1;
}

inline int decode_utf8(std::string_view s, std::size_t at, std::uint32_t& cp) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    return decode_utf8(p + at, p + s.size(), cp);
}

// Append the UTF-8 encoding of cp (a Unicode scalar value) to out.
inline void encode_utf8(std::uint32_t cp, std::string& out) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

inline bool is_valid_utf8(std::string_view s) {
    for (std::size_t i = 0; i < s.size();) {
        std::uint32_t cp;
        i += static_cast<std::size_t>(decode_utf8(s, i, cp));
        if (cp == invalid_code_point) return false;
    }
    return true;
}

// Replace every invalid sequence (maximal subpart) by U+FFFD.
inline std::string replace_invalid_utf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size();) {
        std::uint32_t cp;
        const int n = decode_utf8(s, i, cp);
        if (cp == invalid_code_point)
            encode_utf8(replacement_character, out);
        else
            out.append(s.substr(i, static_cast<std::size_t>(n)));
        i += static_cast<std::size_t>(n);
    }
    return out;
}

// How many bytes at the end of s are an incomplete (but so far valid) UTF-8
// sequence that more bytes could complete: 0 to 3. A streaming decoder holds
// these back until the next token arrives.
inline std::size_t incomplete_utf8_suffix(std::string_view s) {
    const std::size_t n = s.size();
    for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
        const auto b = static_cast<unsigned char>(s[n - back]);
        if ((b & 0xC0) == 0x80) continue;  // a continuation byte: look further back
        std::uint32_t cp;
        const int len = decode_utf8(s, n - back, cp);
        // Incomplete: the decoder stopped at the end of the string, not at a bad byte.
        if (cp == invalid_code_point && static_cast<std::size_t>(len) == back && b >= 0xC2 && b <= 0xF4) return back;
        return 0;
    }
    return 0;
}

namespace unicode {

// The class bits (class_bits in unicode_tables.hpp) of a code point; 0 for an
// invalid sequence. The Basic Multilingual Plane is looked up in a 64 KiB table
// built once (thread-safe static initialization); the rest by binary search.
inline std::uint8_t lookup_ranges(std::uint32_t cp) {
    int lo = 0, hi = class_range_count - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (cp < class_ranges[mid].first)
            hi = mid - 1;
        else if (cp > class_ranges[mid].last)
            lo = mid + 1;
        else
            return class_ranges[mid].bits;
    }
    return 0;
}

inline const std::array<std::uint8_t, 0x10000>& bmp_table() {
    static const std::array<std::uint8_t, 0x10000> table = [] {
        std::array<std::uint8_t, 0x10000> t{};
        for (const auto& r : class_ranges) {
            if (r.first >= 0x10000) break;
            for (std::uint32_t c = r.first; c <= r.last && c < 0x10000; ++c) t[c] = r.bits;
        }
        return t;
    }();
    return table;
}

inline std::uint8_t classes(std::uint32_t cp) {
    if (cp < 0x10000) return bmp_table()[cp];
    if (cp == invalid_code_point) return 0;
    return lookup_ranges(cp);
}

}  // namespace unicode
}  // namespace tinyllm::detail
