// tinyllm/npy.hpp — reading and writing NumPy .npy files, so that tensors can
// go to and from Python (np.load / np.save) for inspection and comparison.
//
// A .npy file holds one array:
//
//     "\x93NUMPY"  major  minor  header length  header                     data
//      6 bytes     1 byte 1 byte 2 bytes (1.0)  ASCII, padded with spaces  numel * itemsize bytes
//                                4 bytes (2.0, 3.0)   and ended by '\n'
//
// The header is a Python dict literal, e.g.
//
//     {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
//
// `descr` is the dtype: a byte order ('<' little-endian, '>' big-endian, '|'
// not applicable) then a kind and a size in bytes: f8 double, f4 float, f2
// float16, i8 i4 i2 i1 signed and u8 u4 u2 u1 unsigned integers. `shape` is a
// tuple ("(5,)" for a vector, "()" for a scalar). The data follow in C order
// (row-major), or column-major when fortran_order is True. NumPy pads the
// header so that the data start at a multiple of 64 bytes. Version 2.0 only
// widens the header length to 4 bytes (for headers of 64 KiB or more); 3.0
// allows UTF-8 in the header.
//
// Reading (read_npy, load_npy) accepts versions 1.0, 2.0 and 3.0, either byte
// order (big-endian data are swapped) and either order of elements (Fortran
// order is copied into C order), and returns C-order little-endian elements.
// Anything malformed — bad magic, a truncated or unparseable header, an
// unsupported dtype (bool, complex, structured, Python objects), a shape whose
// size overflows, fewer data bytes than the shape needs — is a tinyllm::error
// naming the file and the problem, before any element is read. Bytes after the
// array are ignored (np.save can append several arrays to one open file).
//
// Writing (save_npy) takes a view of any strides and writes its elements in
// row-major order as version 1.0 (2.0 when the header would not fit), which
// np.load reads back.
//
//     tinyllm::save_npy("x.npy", x.view());                 // (B, T, D) floats
//     auto y = tinyllm::load_npy<float, 3>("x.npy");        // tensor<float, 3>
//     tinyllm::npy_array a = tinyllm::read_npy("any.npy");  // dtype, shape, bytes
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/tensor_io.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

namespace tinyllm {

static_assert(std::endian::native == std::endian::little,
              "tinyllm/npy.hpp: tinyllm assumes a little-endian host (x86-64, ARM64)");

// The element types a .npy file may hold for tinyllm.
enum class npy_dtype { f8, f4, f2, i8, i4, i2, i1, u8, u4, u2, u1 };

// The dtype as NumPy writes it ("<f4", "|u1"), its NumPy name ("float32"), the
// C++ type that holds it ("float") and its size in bytes.
inline std::string_view npy_descr(npy_dtype d) {
    constexpr std::string_view names[] = {"<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1"};
    return names[static_cast<int>(d)];
}
inline std::string_view npy_dtype_name(npy_dtype d) {
    constexpr std::string_view names[] = {"float64", "float32", "float16", "int64", "int32", "int16",
                                          "int8",    "uint64",  "uint32",  "uint16", "uint8"};
    return names[static_cast<int>(d)];
}
inline std::string_view npy_cpp_name(npy_dtype d) {
    constexpr std::string_view names[] = {"double",       "float",        "tinyllm::float16", "std::int64_t",
                                          "std::int32_t", "std::int16_t", "std::int8_t",      "std::uint64_t",
                                          "std::uint32_t", "std::uint16_t", "std::uint8_t"};
    return names[static_cast<int>(d)];
}
inline std::size_t npy_dtype_size(npy_dtype d) {
    constexpr std::size_t sizes[] = {8, 4, 2, 8, 4, 2, 1, 8, 4, 2, 1};
    return sizes[static_cast<int>(d)];
}

// The npy dtype of a C++ element type (const ignored): double, float,
// tinyllm::float16, or any integer type of 1, 2, 4 or 8 bytes.
template <class T>
constexpr npy_dtype npy_dtype_of() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, double>) return npy_dtype::f8;
    else if constexpr (std::is_same_v<U, float>) return npy_dtype::f4;
    else if constexpr (std::is_same_v<U, float16>) return npy_dtype::f2;
    else if constexpr (std::is_same_v<U, bool>)
        static_assert(sizeof(T) == 0, "tinyllm npy: bool arrays ('|b1') are not supported; use std::uint8_t");
    else if constexpr (std::is_same_v<U, bfloat16>)
        static_assert(sizeof(T) == 0, "tinyllm npy: NumPy has no bfloat16; convert to float, or use safetensors");
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>) {
        static_assert(sizeof(U) == 1 || sizeof(U) == 2 || sizeof(U) == 4 || sizeof(U) == 8);
        return sizeof(U) == 8 ? npy_dtype::i8 : sizeof(U) == 4 ? npy_dtype::i4 : sizeof(U) == 2 ? npy_dtype::i2 : npy_dtype::i1;
    } else if constexpr (std::is_integral_v<U>) {
        static_assert(sizeof(U) == 1 || sizeof(U) == 2 || sizeof(U) == 4 || sizeof(U) == 8);
        return sizeof(U) == 8 ? npy_dtype::u8 : sizeof(U) == 4 ? npy_dtype::u4 : sizeof(U) == 2 ? npy_dtype::u2 : npy_dtype::u1;
    } else {
        static_assert(sizeof(T) == 0, "tinyllm npy: element type must be double, float, float16 or an integer");
    }
}

// One array read from a .npy file, before it is given a C++ type.
struct npy_array {
    npy_dtype dtype = npy_dtype::f4;
    std::vector<index_t> shape;   // () for a scalar
    std::vector<std::byte> data;  // numel * itemsize bytes, C order, little-endian

    index_t numel() const {
        index_t n = 1;
        for (index_t s : shape) n *= s;
        return n;
    }
    // "'<f4' (float32) of shape (2, 3)": for messages.
    std::string description() const {
        return detail::cat("'", npy_descr(dtype), "' (", npy_dtype_name(dtype), ") of shape ", detail::tuple_string(shape));
    }
};

namespace detail {

// ---- the header: a Python dict literal with string, bool and int-tuple values ----

struct npy_header {
    std::string descr;
    bool descr_is_string = true;
    bool fortran_order = false;
    std::vector<index_t> shape;
    bool has_descr = false, has_fortran_order = false, has_shape = false;
};

class npy_header_parser {
public:
    npy_header_parser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

    npy_header parse() {
        npy_header h;
        expect('{');
        while (true) {
            skip_ws();
            if (peek() == '}') break;
            const std::string key = string_literal();
            expect(':');
            skip_ws();
            if (key == "descr") {
                h.has_descr = true;
                if (peek() == '\'' || peek() == '"') {
                    h.descr = string_literal();
                } else {
                    h.descr_is_string = false;  // a list: a structured dtype
                    skip_value();
                }
            } else if (key == "fortran_order") {
                h.has_fortran_order = true;
                h.fortran_order = boolean();
            } else if (key == "shape") {
                h.has_shape = true;
                h.shape = int_tuple();
            } else {
                fail("the key '" + key + "' (NumPy reads a header with exactly descr, fortran_order and shape)");
            }
            skip_ws();
            if (peek() == ',') {
                ++i_;
                continue;
            }
            skip_ws();
            if (peek() != '}') fail("expected ',' or '}'");
        }
        ++i_;
        skip_ws();  // NumPy pads with spaces and ends the header with '\n'
        if (i_ != s_.size()) fail("text after the closing '}'");
        return h;
    }

private:
    [[noreturn]] void fail(std::string_view what) const {
        TINYLLM_FAIL("npy file '", path_, "': the header is not a dict NumPy writes (", what, " at offset ", i_,
                     " of: ", s_, ")");
    }
    char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
    void skip_ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    void expect(char c) {
        skip_ws();
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++i_;
    }
    std::string string_literal() {
        skip_ws();
        const char quote = peek();
        if (quote != '\'' && quote != '"') fail("expected a quoted string");
        ++i_;
        std::string out;
        while (i_ < s_.size() && s_[i_] != quote) {
            if (s_[i_] == '\\') fail("escapes in strings are not supported");
            out += s_[i_++];
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        return out;
    }
    bool boolean() {
        if (s_.substr(i_, 4) == "True") return i_ += 4, true;
        if (s_.substr(i_, 5) == "False") return i_ += 5, false;
        fail("expected True or False");
    }
    std::vector<index_t> int_tuple() {
        expect('(');
        std::vector<index_t> out;
        while (true) {
            skip_ws();
            if (peek() == ')') break;
            if (peek() == '-') fail("negative extent in the shape");
            if (peek() < '0' || peek() > '9') fail("expected an integer in the shape");
            index_t v = 0;
            while (peek() >= '0' && peek() <= '9') {
                const index_t digit = peek() - '0';
                if (v > (INT64_MAX - digit) / 10) fail("extent too large");
                v = v * 10 + digit;
                ++i_;
            }
            if (peek() == 'L') ++i_;  // Python 2 longs: "3L"
            out.push_back(v);
            skip_ws();
            if (peek() == ',') {
                ++i_;
                continue;
            }
            skip_ws();
            if (peek() != ')') fail("expected ',' or ')' in the shape");
        }
        ++i_;
        return out;
    }
    // Skip one value of any kind: a string, or a bracketed value, or a bare word.
    void skip_value() {
        skip_ws();
        if (peek() == '\'' || peek() == '"') {
            string_literal();
            return;
        }
        int depth = 0;
        while (i_ < s_.size()) {
            const char c = s_[i_];
            if (c == '\'' || c == '"') {
                string_literal();
                continue;
            }
            if (c == '(' || c == '[' || c == '{') ++depth;
            if (c == ')' || c == ']' || c == '}') {
                if (depth == 0) return;
                --depth;
            }
            if (c == ',' && depth == 0) return;
            ++i_;
        }
        fail("unterminated value");
    }

    std::string_view s_;
    const std::string& path_;
    std::size_t i_ = 0;
};

// The dtype of a descr string, and whether its data are big-endian.
inline npy_dtype parse_npy_descr(const std::string& descr, const std::string& path, bool& big_endian) {
    auto fail = [&](const auto&... why) { TINYLLM_FAIL("npy file '", path, "' has dtype '", descr, "': ", why...); };
    if (descr.size() < 3) fail("not a dtype NumPy writes");
    const char order = descr[0];
    const std::string kind_size = descr.substr(1);
    if (order != '<' && order != '>' && order != '|' && order != '=') fail("unknown byte order '", order, "'");
    if (kind_size == "b1") fail("bool arrays are not supported; save as uint8 (a.astype(np.uint8))");
    if (kind_size[0] == 'O') fail("it holds Python objects (pickled); tinyllm reads numeric arrays only");
    if (kind_size[0] == 'c') fail("complex numbers are not supported");
    constexpr npy_dtype all[] = {npy_dtype::f8, npy_dtype::f4, npy_dtype::f2, npy_dtype::i8, npy_dtype::i4, npy_dtype::i2,
                                 npy_dtype::i1, npy_dtype::u8, npy_dtype::u4, npy_dtype::u2, npy_dtype::u1};
    for (npy_dtype d : all) {
        if (npy_descr(d).substr(1) != kind_size) continue;
        if (order == '|' && npy_dtype_size(d) != 1) fail("'|' (no byte order) is only valid for one-byte types");
        big_endian = order == '>' && npy_dtype_size(d) > 1;
        return d;
    }
    TINYLLM_FAIL("npy file '", path, "' has dtype '", descr,
                 "': unsupported; tinyllm reads f8, f4, f2, i8, i4, i2, i1, u8, u4, u2 and u1");
}

}  // namespace detail

// Read the array in a .npy file (see the top for what is accepted).
inline npy_array read_npy(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) TINYLLM_FAIL("cannot open '", path, "': ", std::strerror(errno));
    // A directory opens too, and its "size" is nonsense (2^63 - 1 on ext4).
    if (std::error_code ec; !std::filesystem::is_regular_file(path, ec))
        TINYLLM_FAIL("npy file '", path, "' is not a regular file",
                     std::filesystem::is_directory(path, ec) ? " (it is a directory)" : "");
    in.seekg(0, std::ios::end);
    const auto file_size = static_cast<std::uint64_t>(in.tellg());
    in.seekg(0);
    auto fail = [&](const auto&... why) { TINYLLM_FAIL("npy file '", path, "': ", why...); };

    unsigned char prelude[12] = {};
    const std::uint64_t got = std::min<std::uint64_t>(file_size, 8);
    in.read(reinterpret_cast<char*>(prelude), static_cast<std::streamsize>(got));
    if (got < 6 || std::memcmp(prelude, "\x93NUMPY", 6) != 0)
        fail("does not start with the .npy magic \"\\x93NUMPY\" — not a .npy file (", file_size, " bytes)");
    if (got < 8) fail("is ", file_size, " bytes: truncated inside the version");
    const int major = prelude[6], minor = prelude[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0)
        fail("format version ", major, ".", minor, " is not supported (1.0, 2.0 and 3.0 are)");
    const std::size_t length_bytes = major == 1 ? 2 : 4;
    if (file_size < 8 + length_bytes) fail("is ", file_size, " bytes: truncated inside the header length");
    in.read(reinterpret_cast<char*>(prelude + 8), static_cast<std::streamsize>(length_bytes));
    std::uint64_t header_length = 0;
    for (std::size_t i = length_bytes; i-- > 0;) header_length = (header_length << 8) | prelude[8 + i];
    const std::uint64_t data_start = 8 + length_bytes + header_length;
    if (data_start > file_size)
        fail("the header of ", header_length, " bytes runs past the end of the file (", file_size, " bytes): truncated");
    std::string header(static_cast<std::size_t>(header_length), '\0');
    in.read(header.data(), static_cast<std::streamsize>(header_length));
    if (!in) fail("reading the header failed");

    const detail::npy_header h = detail::npy_header_parser(header, path).parse();
    if (!h.has_descr || !h.has_fortran_order || !h.has_shape)
        fail("the header lacks ", !h.has_descr ? "'descr'" : !h.has_fortran_order ? "'fortran_order'" : "'shape'",
             " (it needs descr, fortran_order and shape): ", header);
    if (!h.descr_is_string) fail("holds a structured dtype (a record array); tinyllm reads plain arrays only");
    bool big_endian = false;
    npy_array a;
    a.dtype = detail::parse_npy_descr(h.descr, path, big_endian);
    a.shape = h.shape;

    // Size: numel * itemsize, refusing overflow, then against the bytes there are.
    // The bound applies to the product of the nonzero extents, so that a shape
    // such as (0, 2^62, 2^62) (no elements) cannot overflow the strides
    // computed from it later.
    const std::uint64_t itemsize = npy_dtype_size(a.dtype);
    std::vector<index_t> factors = a.shape;
    factors.push_back(static_cast<index_t>(itemsize));
    if (!detail::nonzero_product_at_most(index_t{1} << 62, factors))
        fail("shape ", detail::tuple_string(a.shape), " of ", npy_descr(a.dtype), " is too large (its size overflows)");
    std::uint64_t bytes = 1;  // 0 when an extent is 0
    for (const index_t f : factors) bytes *= static_cast<std::uint64_t>(f);
    if (bytes > file_size - data_start)
        fail("shape ", detail::tuple_string(a.shape), " of '", npy_descr(a.dtype), "' needs ", bytes,
             " bytes of data but the file has ", file_size - data_start, " after the header: truncated");
    a.data.resize(static_cast<std::size_t>(bytes));
    in.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(bytes));
    if (!in) fail("reading ", bytes, " bytes of data failed");

    if (big_endian)
        for (std::size_t i = 0; i < a.data.size(); i += itemsize) std::reverse(&a.data[i], &a.data[i] + itemsize);
    if (h.fortran_order && a.shape.size() > 1) {
        // Column-major: element (i0, i1, ...) is at i0 + n0 * (i1 + n1 * (...)). View it in C order and gather.
        detail::byte_view f{a.data.data(), a.shape, std::vector<index_t>(a.shape.size()), itemsize};
        index_t stride = 1;
        for (std::size_t d = 0; d < a.shape.size(); ++d) {
            f.strides[d] = stride;
            stride *= a.shape[d];
        }
        std::vector<std::byte> c_order(a.data.size());
        detail::gather_row_major(c_order.data(), f);
        a.data = std::move(c_order);
    }
    return a;
}

// The array as a tensor<T, Rank>; its dtype and rank must be T's and Rank
// (no conversions). `source` names it in messages (the file name).
template <class T, std::size_t Rank>
tensor<T, Rank> to_tensor(const npy_array& a, const std::string& source) {
    constexpr npy_dtype want = npy_dtype_of<T>();
    if (a.dtype != want || a.shape.size() != Rank) {
        std::string need = detail::cat("'", npy_descr(want), "' (", npy_dtype_name(want), ")");
        if (a.dtype == want) need = detail::cat(Rank, Rank == 1 ? " dimension" : " dimensions");
        TINYLLM_FAIL("'", source, "' holds ", a.description(), " but load_npy<", npy_cpp_name(want), ", ", Rank,
                     "> needs ", need);
    }
    extents<Rank> shape;
    for (std::size_t d = 0; d < Rank; ++d) shape[d] = a.shape[d];
    tensor<T, Rank> out(shape);
    if (!a.data.empty()) std::memcpy(static_cast<void*>(out.data()), a.data.data(), a.data.size());
    return out;
}

// Read a .npy file holding a Rank-dimensional array of T: load_npy<float, 2>("w.npy").
template <class T, std::size_t Rank>
tensor<T, Rank> load_npy(const std::string& path) {
    return to_tensor<T, Rank>(read_npy(path), path);
}

// Write x (any strides) to a .npy file: its elements in row-major order, with
// the dtype of T (see npy_dtype_of) and x's shape.
template <class T, std::size_t Rank>
void save_npy(const std::string& path, tensor_view<T, Rank> x) {
    constexpr npy_dtype dtype = npy_dtype_of<T>();
    std::vector<index_t> shape(Rank), strides(Rank);
    for (std::size_t d = 0; d < Rank; ++d) {
        TINYLLM_EXPECT(x.extent(d) >= 0, "save_npy('", path, "'): shape ", to_string(x.shape()), " has a negative extent");
        shape[d] = x.extent(d);
        strides[d] = x.stride(d);
    }
    std::string header = detail::cat("{'descr': '", npy_descr(dtype), "', 'fortran_order': False, 'shape': ",
                                     detail::tuple_string(shape), ", }");
    // Pad with spaces and end with '\n' so that the data start at a multiple of 64 bytes.
    // Version 1.0 (2-byte length) when the padded header fits, else 2.0 (4-byte length).
    auto padded = [&](std::size_t prelude) { return (prelude + header.size() + 1 + 63) / 64 * 64; };
    const std::size_t prelude = padded(10) - 10 <= 65535 ? 10 : 12;  // magic, version, header length
    const std::size_t total = padded(prelude);
    header.append(total - prelude - header.size() - 1, ' ');
    header += '\n';

    detail::output_file out(path);
    std::string start = "\x93NUMPY";
    start += static_cast<char>(prelude == 10 ? 1 : 2);
    start += '\0';
    const std::size_t n = header.size();
    for (std::size_t i = 0; i < prelude - 8; ++i) start += static_cast<char>((n >> (8 * i)) & 0xff);
    out.write(start);
    out.write(header);
    out.write_row_major({reinterpret_cast<const std::byte*>(x.data()), shape, strides, sizeof(T)});
    out.close();
}
template <class T, std::size_t Rank>
void save_npy(const std::string& path, const tensor<T, Rank>& x) {
    save_npy(path, x.view());
}

}  // namespace tinyllm
