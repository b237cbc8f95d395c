// Tests for tinyllm/npy.hpp: round trips of every dtype at ranks 1 to 4 (strided
// views included), the files NumPy writes in other forms (versions 2.0 and 3.0,
// big-endian, Fortran order, scalars, empty arrays), and one error for each kind
// of malformed file.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/npy.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using tinyllm::index_t;

namespace {

// A fresh temporary folder for the files of one test.
struct temp_dir {
    fs::path path;
    temp_dir() {
        path = fs::temp_directory_path() /
               ("tinyllm_npy_test_" + std::to_string(tinyllm_test::test_seed()) + "_" + std::to_string(counter()++));
        fs::create_directories(path);
    }
    ~temp_dir() { fs::remove_all(path); }
    static int& counter() {
        static int n = 0;
        return n;
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}
void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
}

// A .npy file from its parts: version, header text (written as given), data.
std::string npy_bytes(int major, const std::string& header, const std::string& data) {
    std::string out = "\x93NUMPY";
    out += static_cast<char>(major);
    out += '\0';
    const std::size_t n = header.size();
    for (int i = 0; i < (major == 1 ? 2 : 4); ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
    return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)};
}

// Deterministic values that exercise the whole range of T (negative integers,
// high bits of unsigned ones, fractions for floats).
template <class T>
T value_for(index_t i) {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return static_cast<T>(0.37 * i - 5.25);
    else if constexpr (std::is_same_v<T, tinyllm::float16>) return tinyllm::float_to_fp16(0.37f * i - 5.25f);
    else return static_cast<T>(static_cast<std::uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull);
}

template <class T>
bool same_bits(const T& a, const T& b) {
    return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Element `flat` (in row-major order) of a view of any strides, by index arithmetic.
template <class T, std::size_t Rank>
const T& element_at(tinyllm::tensor_view<T, Rank> v, index_t flat) {
    index_t offset = 0;
    for (std::size_t d = Rank; d-- > 0;) {
        offset += (flat % v.extent(d)) * v.stride(d);
        flat /= v.extent(d);
    }
    return v.data()[offset];
}

// Save a view, load it back, and compare every element's bits and the shape.
template <class T, std::size_t Rank>
void check_round_trip(const temp_dir& dir, tinyllm::tensor_view<const T, Rank> x, const std::string& what) {
    const std::string path = dir.file("x.npy");
    tinyllm::save_npy(path, x);
    const auto y = tinyllm::load_npy<T, Rank>(path);
    INFO(what << ": shape " << tinyllm::to_string(x.shape()) << ", strides " << tinyllm::to_string(x.strides()));
    REQUIRE(y.shape() == x.shape());
    std::size_t differing = 0;
    for (index_t i = 0; i < x.size(); ++i) differing += !same_bits(y.values()[static_cast<std::size_t>(i)], element_at(x, i));
    CHECK(differing == 0);
    // The data start at a multiple of 64 bytes and the file is exactly header + data.
    const std::string bytes = read_bytes(path);
    REQUIRE(bytes.size() >= 10);
    const std::size_t header_length = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    CHECK(bytes[6] == 1);
    CHECK((10 + header_length) % 64 == 0);
    CHECK(bytes.size() == 10 + header_length + static_cast<std::size_t>(x.size()) * sizeof(T));
    CHECK(bytes[10 + header_length - 1] == '\n');
}

template <class T>
void check_all_ranks(const temp_dir& dir) {
    const std::string type(tinyllm::npy_dtype_name(tinyllm::npy_dtype_of<T>()));
    // A buffer large enough for the largest shape below, with its slack.
    std::vector<T> buffer(4 * 5 * 6 * 7);
    for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = value_for<T>(static_cast<index_t>(i));
    const T* p = buffer.data();

    check_round_trip<T, 1>(dir, {p, {7}}, type + " rank 1");
    check_round_trip<T, 1>(dir, {p, {9}, {3}}, type + " rank 1, every third");
    check_round_trip<T, 1>(dir, {p, {0}}, type + " rank 1, empty");
    const tinyllm::tensor_view<const T, 2> m(p, {5, 6});
    check_round_trip<T, 2>(dir, m, type + " rank 2");
    check_round_trip<T, 2>(dir, m.transpose(0, 1), type + " rank 2, transposed");
    check_round_trip<T, 2>(dir, m.narrow(1, 1, 4).narrow(0, 2, 3), type + " rank 2, a window");
    const tinyllm::tensor_view<const T, 3> c(p, {4, 5, 6});
    check_round_trip<T, 3>(dir, c, type + " rank 3");
    check_round_trip<T, 3>(dir, c.transpose(0, 2), type + " rank 3, transposed");
    check_round_trip<T, 3>(dir, {p + 10, {3, 2, 4}, {40, -6, 2}}, type + " rank 3, negative and gapped strides");
    const tinyllm::tensor_view<const T, 4> q(p, {4, 5, 6, 7});
    check_round_trip<T, 4>(dir, q, type + " rank 4");
    check_round_trip<T, 4>(dir, q.transpose(1, 3).narrow(0, 1, 2), type + " rank 4, transposed window");
    check_round_trip<T, 4>(dir, {p, {2, 0, 3, 1}}, type + " rank 4, empty");
}

std::string error_of(const std::string& path) {
    try {
        tinyllm::read_npy(path);
    } catch (const tinyllm::error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("npy: every dtype round-trips at ranks 1 to 4, strided views in row-major order", "[npy]") {
    temp_dir dir;
    check_all_ranks<double>(dir);
    check_all_ranks<float>(dir);
    check_all_ranks<tinyllm::float16>(dir);
    check_all_ranks<std::int64_t>(dir);
    check_all_ranks<std::int32_t>(dir);
    check_all_ranks<std::int16_t>(dir);
    check_all_ranks<std::int8_t>(dir);
    check_all_ranks<std::uint64_t>(dir);
    check_all_ranks<std::uint32_t>(dir);
    check_all_ranks<std::uint16_t>(dir);
    check_all_ranks<std::uint8_t>(dir);
}

TEST_CASE("npy: the header is the dict NumPy writes", "[npy]") {
    temp_dir dir;
    tinyllm::tensor<float, 2> x({2, 3});
    for (index_t i = 0; i < 6; ++i) x.values()[static_cast<std::size_t>(i)] = static_cast<float>(i);
    tinyllm::save_npy(dir.file("x.npy"), x);  // an owning tensor
    const std::string bytes = read_bytes(dir.file("x.npy"));
    CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
    CHECK(bytes.substr(10, 60).rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 0) == 0);
    CHECK(bytes.size() == 128 + 24);  // as np.save writes it: 128 bytes of header
    tinyllm::tensor<std::uint8_t, 1> v({5});
    tinyllm::save_npy(dir.file("v.npy"), v);
    CHECK(read_bytes(dir.file("v.npy")).substr(10, 64).rfind("{'descr': '|u1', 'fortran_order': False, 'shape': (5,), }", 0) == 0);
    const tinyllm::npy_array a = tinyllm::read_npy(dir.file("x.npy"));
    CHECK(a.dtype == tinyllm::npy_dtype::f4);
    CHECK(a.shape == std::vector<index_t>{2, 3});
    CHECK(a.description() == "'<f4' (float32) of shape (2, 3)");
    CHECK(a.data.size() == 24);
}

TEST_CASE("npy: versions 2.0 and 3.0, big-endian data, Fortran order, scalars and trailing bytes read", "[npy]") {
    temp_dir dir;
    const std::vector<float> six = {0, 1, 2, 3, 4, 5};
    const std::string f32_header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
    for (int major : {2, 3}) {
        write_bytes(dir.file("v.npy"), npy_bytes(major, f32_header, bytes_of(six)));
        const auto t = tinyllm::load_npy<float, 2>(dir.file("v.npy"));
        CHECK(t.values() == six);
    }
    // Big-endian: the bytes of each element reversed.
    std::string big;
    for (float f : six) {
        char b[4];
        std::memcpy(b, &f, 4);
        for (int i = 3; i >= 0; --i) big += b[i];
    }
    write_bytes(dir.file("big.npy"), npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }\n", big));
    CHECK(tinyllm::load_npy<float, 1>(dir.file("big.npy")).values() == six);
    const std::vector<std::int16_t> shorts = {1, -2, 300};
    std::string big16;
    for (std::int16_t s : shorts) big16 += {static_cast<char>((s >> 8) & 0xff), static_cast<char>(s & 0xff)};
    write_bytes(dir.file("big16.npy"), npy_bytes(1, "{'descr': '>i2', 'fortran_order': False, 'shape': (3,), }\n", big16));
    CHECK(tinyllm::load_npy<std::int16_t, 1>(dir.file("big16.npy")).values() == shorts);
    // Fortran order: (2, 3) stored column by column: 0 3 1 4 2 5 is [[0, 1, 2], [3, 4, 5]].
    write_bytes(dir.file("f.npy"), npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
                                             bytes_of(std::vector<float>{0, 3, 1, 4, 2, 5})));
    CHECK(tinyllm::load_npy<float, 2>(dir.file("f.npy")).values() == six);
    // Fortran order at rank 3: (2, 3, 4), element (i, j, k) stored at i + 2j + 6k.
    std::vector<std::int32_t> fortran(24), want(24);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            for (int k = 0; k < 4; ++k) {
                fortran[static_cast<std::size_t>(i + 2 * j + 6 * k)] = 100 * i + 10 * j + k;
                want[static_cast<std::size_t>(12 * i + 4 * j + k)] = 100 * i + 10 * j + k;
            }
    write_bytes(dir.file("f3.npy"), npy_bytes(1, "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3, 4), }\n",
                                              bytes_of(fortran)));
    CHECK(tinyllm::load_npy<std::int32_t, 3>(dir.file("f3.npy")).values() == want);
    // A scalar: shape (), one element; read_npy reads it, load_npy<T, 1> says what it is.
    write_bytes(dir.file("s.npy"), npy_bytes(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }\n",
                                             bytes_of(std::vector<double>{2.5})));
    const tinyllm::npy_array s = tinyllm::read_npy(dir.file("s.npy"));
    CHECK(s.shape.empty());
    CHECK(s.numel() == 1);
    CHECK_THROWS_WITH((tinyllm::load_npy<double, 1>(dir.file("s.npy"))),
                      tinyllm_test::contains("holds '<f8' (float64) of shape () but load_npy<double, 1> needs 1 dimension"));
    // Other spellings NumPy has used: double quotes, Python 2 longs, no trailing comma, keys in another order;
    // and bytes after the array (a second np.save into the same file) are ignored.
    write_bytes(dir.file("o.npy"),
                npy_bytes(1, "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<f4\"}", bytes_of(six) + "more"));
    CHECK(tinyllm::load_npy<float, 2>(dir.file("o.npy")).values() == six);
    // Empty arrays.
    write_bytes(dir.file("e.npy"), npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (0, 3), }\n", ""));
    CHECK(tinyllm::load_npy<float, 2>(dir.file("e.npy")).shape() == tinyllm::extents<2>{0, 3});
}

TEST_CASE("npy: load_npy names the file, what it holds and what was asked for", "[npy]") {
    temp_dir dir;
    tinyllm::tensor<double, 2> x({2, 3});
    tinyllm::save_npy(dir.file("x.npy"), x);
    CHECK_THROWS_WITH((tinyllm::load_npy<float, 2>(dir.file("x.npy"))),
                      tinyllm_test::contains("x.npy' holds '<f8' (float64) of shape (2, 3) but load_npy<float, 2> "
                                             "needs '<f4' (float32)"));
    CHECK_THROWS_WITH((tinyllm::load_npy<double, 3>(dir.file("x.npy"))),
                      tinyllm_test::contains("of shape (2, 3) but load_npy<double, 3> needs 3 dimensions"));
    CHECK_THROWS_WITH((tinyllm::load_npy<std::int32_t, 2>(dir.file("x.npy"))),
                      tinyllm_test::contains("load_npy<std::int32_t, 2> needs '<i4' (int32)"));
    CHECK_THROWS_WITH((tinyllm::load_npy<float, 1>(dir.file("missing.npy"))),
                      tinyllm_test::contains("cannot open '" + dir.file("missing.npy") + "'"));
    CHECK_THROWS_WITH((tinyllm::save_npy(dir.file("no/such/folder/x.npy"), x)),
                      tinyllm_test::contains("cannot open '" + dir.file("no/such/folder/x.npy") + "' for writing"));
}

TEST_CASE("npy: each kind of malformed file has its own error", "[npy]") {
    temp_dir dir;
    const std::string path = dir.file("bad.npy");
    auto error_for = [&](const std::string& bytes) {
        write_bytes(path, bytes);
        return error_of(path);
    };
    auto header = [](const std::string& descr, const std::string& fortran, const std::string& shape) {
        return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }\n";
    };
    const std::string six = bytes_of(std::vector<float>{0, 1, 2, 3, 4, 5});
    const std::string good = npy_bytes(1, header("<f4", "False", "(2, 3)"), six);
    REQUIRE(error_for(good) == "(no error)");

    // The frame: magic, version, header length.
    CHECK_THAT(error_for(""), tinyllm_test::contains("does not start with the .npy magic"));
    CHECK_THAT(error_for("PK\x03\x04 a zip file"), tinyllm_test::contains("not a .npy file"));
    CHECK_THAT(error_for(good.substr(0, 7)), tinyllm_test::contains("truncated inside the version"));
    CHECK_THAT(error_for(good.substr(0, 9)), tinyllm_test::contains("truncated inside the header length"));
    CHECK_THAT(error_for(good.substr(0, 40)), tinyllm_test::contains("runs past the end of the file"));
    std::string v4 = good;
    v4[6] = 4;
    CHECK_THAT(error_for(v4), tinyllm_test::contains("format version 4.0 is not supported"));
    std::string v11 = good;
    v11[7] = 1;
    CHECK_THAT(error_for(v11), tinyllm_test::contains("format version 1.1 is not supported"));

    // The header dict.
    CHECK_THAT(error_for(npy_bytes(1, "not a dict", six)), tinyllm_test::contains("expected '{'"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,)}", six)),
               tinyllm_test::contains("expected True or False"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)", six)),
               tinyllm_test::contains("expected ',' or '}'"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4, 'fortran_order': False}", six)),
               tinyllm_test::contains("the header is not a dict NumPy writes"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}", six)),
               tinyllm_test::contains("expected an integer in the shape"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", six)),
               tinyllm_test::contains("negative extent in the shape"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", six)),
               tinyllm_test::contains("extent too large"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'shape': (6,)}", six)),
               tinyllm_test::contains("the header lacks 'fortran_order'"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False}", six)),
               tinyllm_test::contains("the header lacks 'shape'"));
    // NumPy refuses a key it does not know and text after the dict ("does not contain the correct
    // keys", "Cannot parse header"): a file it would not read is not read here either.
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1, }", six)),
               tinyllm_test::contains("the key 'x' (NumPy reads a header with exactly descr, fortran_order and shape)"));
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), } junk", six)),
               tinyllm_test::contains("text after the closing '}'"));

    // The dtype.
    CHECK_THAT(error_for(npy_bytes(1, "{'descr': [('x', '<f4'), ('y', '<i4')], 'fortran_order': False, 'shape': (3,), }",
                                   six)),
               tinyllm_test::contains("structured dtype"));
    CHECK_THAT(error_for(npy_bytes(1, header("|b1", "False", "(6,)"), six)), tinyllm_test::contains("bool arrays are not supported"));
    CHECK_THAT(error_for(npy_bytes(1, header("|O", "False", "(6,)"), six)), tinyllm_test::contains("not a dtype NumPy writes"));
    CHECK_THAT(error_for(npy_bytes(1, header("|O8", "False", "(6,)"), six)), tinyllm_test::contains("Python objects"));
    CHECK_THAT(error_for(npy_bytes(1, header("<c8", "False", "(3,)"), six)), tinyllm_test::contains("complex numbers"));
    CHECK_THAT(error_for(npy_bytes(1, header("<U5", "False", "(1,)"), six)), tinyllm_test::contains("unsupported"));
    CHECK_THAT(error_for(npy_bytes(1, header("|f4", "False", "(6,)"), six)),
               tinyllm_test::contains("only valid for one-byte types"));
    CHECK_THAT(error_for(npy_bytes(1, header("!f4", "False", "(6,)"), six)), tinyllm_test::contains("unknown byte order"));

    // The data: fewer bytes than the shape needs; a shape whose size overflows.
    CHECK_THAT(error_for(npy_bytes(1, header("<f4", "False", "(2, 4)"), six)),
               tinyllm_test::contains("shape (2, 4) of '<f4' needs 32 bytes of data but the file has 24 after the header: "
                                      "truncated"));
    CHECK_THAT(error_for(good.substr(0, good.size() - 1)), tinyllm_test::contains("truncated"));
    CHECK_THAT(error_for(npy_bytes(1, header("<f8", "False", "(4294967296, 4294967296)"), six)),
               tinyllm_test::contains("is too large (its size overflows)"));
    // No elements, but nonzero extents whose product would overflow the strides
    // computed from them (either order of elements); modest ones read as empty.
    for (const char* fortran : {"False", "True"}) {
        CHECK_THAT(error_for(npy_bytes(1, header("<f4", fortran, "(0, 4611686018427387904, 4611686018427387904)"), "")),
                   tinyllm_test::contains("is too large (its size overflows)"));
        CHECK(error_for(npy_bytes(1, header("<f4", fortran, "(0, 1048576, 1048576)"), "")) == "(no error)");
    }
    // Every error names the file.
    CHECK_THAT(error_for(""), tinyllm_test::contains(path));
    // A directory opens as a stream, with a nonsense size: it is not a regular file.
    CHECK_THAT(error_of(dir.path.string()), tinyllm_test::contains("is not a regular file (it is a directory)"));
}
