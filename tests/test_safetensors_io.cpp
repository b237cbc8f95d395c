// Tests for save_safetensors and to_tensor in tinyllm/safetensors.hpp: every
// dtype at ranks 1 to 4 (strided views included) written and read back through
// safetensors_file and safetensors_checkpoint, the layout Python's safetensors
// requires (8-byte aligned header, gapless data), metadata, and the errors.
#include "support/catch.hpp"
#include "support/compare.hpp"

#include <tinyllm/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using tinyllm::index_t;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir() {
        path = fs::temp_directory_path() / ("tinyllm_safetensors_io_test_" + std::to_string(tinyllm_test::test_seed()) +
                                            "_" + std::to_string(counter()++));
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

template <class T>
T value_for(index_t i) {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return static_cast<T>(0.37 * i - 5.25);
    else if constexpr (std::is_same_v<T, tinyllm::float16>) return tinyllm::float_to_fp16(0.37f * i - 5.25f);
    else if constexpr (std::is_same_v<T, tinyllm::bfloat16>) return tinyllm::float_to_bf16(0.37f * i - 5.25f);
    else if constexpr (std::is_same_v<T, bool>) return i % 3 == 1;
    else return static_cast<T>(static_cast<std::uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull);
}

template <class T, std::size_t Rank>
const T& element_at(tinyllm::tensor_view<const T, Rank> v, index_t flat) {
    index_t offset = 0;
    for (std::size_t d = Rank; d-- > 0;) {
        offset += (flat % v.extent(d)) * v.stride(d);
        flat /= v.extent(d);
    }
    return v.data()[offset];
}

template <class T, std::size_t Rank>
void check_read_back(const tinyllm::safetensors_file& f, const std::string& name, tinyllm::tensor_view<const T, Rank> x) {
    INFO("tensor " << name << ": shape " << tinyllm::to_string(x.shape()) << ", strides " << tinyllm::to_string(x.strides()));
    const tinyllm::safetensors_tensor* t = f.find(name);
    REQUIRE(t != nullptr);
    CHECK(t->dtype == tinyllm::st_dtype_of<T>());
    using Read = std::conditional_t<std::is_same_v<T, bool>, std::uint8_t, T>;  // BOOL reads as uint8
    const auto y = tinyllm::to_tensor<Read, Rank>(*t);
    REQUIRE(y.shape() == x.shape());
    std::size_t differing = 0;
    for (index_t i = 0; i < x.size(); ++i)
        differing += std::memcmp(&y.data()[i], &element_at(x, i), sizeof(T)) != 0;
    CHECK(differing == 0);
}

// Write contiguous, transposed and windowed views of T at ranks 1 to 4 to one file and read them back.
template <class T>
void check_dtype(const temp_dir& dir) {
    const std::size_t size = 4 * 5 * 6 * 7;
    const auto buffer = std::make_unique<T[]>(size);  // not std::vector: vector<bool> has no data()
    for (std::size_t i = 0; i < size; ++i) buffer[i] = value_for<T>(static_cast<index_t>(i));
    const T* p = buffer.get();
    const tinyllm::tensor_view<const T, 1> v1(p, {7});
    const tinyllm::tensor_view<const T, 1> v1s(p, {9}, {3});
    const tinyllm::tensor_view<const T, 2> m(p, {5, 6});
    const tinyllm::tensor_view<const T, 3> c(p, {4, 5, 6});
    const tinyllm::tensor_view<const T, 4> q(p, {4, 5, 6, 7});
    const tinyllm::tensor_view<const T, 2> empty(p, {0, 3});
    const std::string path = dir.file(std::string(tinyllm::st_dtype_name(tinyllm::st_dtype_of<T>())) + ".safetensors");
    tinyllm::save_safetensors(path, {{"v1", v1},
                                     {"v1.strided", v1s},
                                     {"m", m},
                                     {"m.t", m.transpose(0, 1)},
                                     {"empty", empty},
                                     {"c.window", c.narrow(1, 1, 3).transpose(0, 2)},
                                     {"q", q},
                                     {"q.window", q.transpose(1, 3).narrow(0, 1, 2)}});
    const tinyllm::safetensors_file f(path);
    CHECK(f.tensors().size() == 8);
    CHECK(f.metadata().empty());
    check_read_back(f, "v1", v1);
    check_read_back(f, "v1.strided", v1s);
    check_read_back(f, "m", m);
    check_read_back(f, "m.t", m.transpose(0, 1));
    check_read_back(f, "empty", empty);
    check_read_back(f, "c.window", c.narrow(1, 1, 3).transpose(0, 2));
    check_read_back(f, "q", q);
    check_read_back(f, "q.window", q.transpose(1, 3).narrow(0, 1, 2));
}

}  // namespace

TEST_CASE("save_safetensors: every dtype round-trips at ranks 1 to 4, strided views in row-major order",
          "[safetensors][io]") {
    temp_dir dir;
    check_dtype<double>(dir);
    check_dtype<float>(dir);
    check_dtype<tinyllm::float16>(dir);
    check_dtype<tinyllm::bfloat16>(dir);
    check_dtype<std::int64_t>(dir);
    check_dtype<std::int32_t>(dir);
    check_dtype<std::int16_t>(dir);
    check_dtype<std::int8_t>(dir);
    check_dtype<std::uint8_t>(dir);
    check_dtype<bool>(dir);
}

TEST_CASE("save_safetensors: the layout of the reference implementation, metadata, and a checkpoint folder",
          "[safetensors][io]") {
    temp_dir dir;
    tinyllm::tensor<float, 2> w({3, 2});
    tinyllm::tensor<tinyllm::bfloat16, 1> b({3});
    for (index_t i = 0; i < 6; ++i) w.values()[static_cast<std::size_t>(i)] = static_cast<float>(i) - 2.5f;
    for (index_t i = 0; i < 3; ++i) b.values()[static_cast<std::size_t>(i)] = tinyllm::float_to_bf16(0.5f * static_cast<float>(i));
    const std::string path = dir.file("model.safetensors");
    tinyllm::save_safetensors(path, {{"lm_head.weight", w}, {"lm_head.bias", b.view()}},
                              {{"format", "pt"}, {"note", "quotes \" and \\ and\nnewlines"}});
    const std::string bytes = read_bytes(path);
    REQUIRE(bytes.size() >= 8);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
    CHECK(n % 8 == 0);
    CHECK(bytes[8] == '{');
    const std::string header = bytes.substr(8, n);
    CHECK(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":", 0) == 0);
    CHECK_THAT(header, tinyllm_test::contains("\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,24]}"));
    CHECK_THAT(header, tinyllm_test::contains("\"lm_head.bias\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[24,30]}"));
    CHECK(header.find_last_not_of(' ') == header.rfind('}'));  // padded with spaces
    CHECK(bytes.size() == 8 + n + 30);                         // data back to back, no gaps

    const tinyllm::safetensors_file f(path);
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.metadata().at("note") == "quotes \" and \\ and\nnewlines");
    CHECK(f.tensors()[0].name == "lm_head.weight");  // in the order given
    CHECK(tinyllm::to_float_vector(*f.find("lm_head.bias")) == std::vector<float>{0.0f, 0.5f, 1.0f});
    // The folder reads as a checkpoint.
    const tinyllm::safetensors_checkpoint ckpt(dir.path.string());
    CHECK(ckpt.load("lm_head.weight", tinyllm::extents<2>{3, 2}).values() == w.values());

    // No tensors at all is a valid (empty) file.
    tinyllm::save_safetensors(dir.file("empty.safetensors"), {});
    CHECK(read_bytes(dir.file("empty.safetensors")) == std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
    CHECK(tinyllm::safetensors_file(dir.file("empty.safetensors")).tensors().empty());
}

// An empty tensor starts where the next one does ([x, x) beside [x, y)); the overlap check
// sorted the ranges by their start alone, so with enough tensors the two could come out in
// either order and a valid file (one save_safetensors wrote) was refused as overlapping.
TEST_CASE("safetensors: empty tensors between others read back, in any number", "[safetensors][io]") {
    temp_dir dir;
    for (const int n : {3, 17, 30}) {
        CAPTURE(n);
        std::vector<tinyllm::tensor<float, 1>> ts;
        for (int i = 0; i < n; ++i) {
            ts.emplace_back(tinyllm::extents<1>{i % 7 == 0 ? 0 : i});
            for (index_t j = 0; j < ts.back().extent(0); ++j) ts.back()(j) = static_cast<float>(100 * i + j);
        }
        std::vector<tinyllm::safetensors_entry> named;
        for (int i = 0; i < n; ++i)
            named.emplace_back("t" + std::to_string(100 + i), ts[static_cast<std::size_t>(i)].view());
        const std::string path = dir.file("empty_between.safetensors");
        tinyllm::save_safetensors(path, named);
        const tinyllm::safetensors_file f(path);
        REQUIRE(f.tensors().size() == static_cast<std::size_t>(n));
        for (int i = 0; i < n; ++i)
            CHECK(tinyllm::to_float_vector(*f.find("t" + std::to_string(100 + i))) ==
                  std::vector<float>(ts[static_cast<std::size_t>(i)].values().begin(),
                                     ts[static_cast<std::size_t>(i)].values().end()));
    }
}

// A folder where a JSON file should be: a message naming it, not a standard-library error.
TEST_CASE("a folder named config.json or model.safetensors.index.json is refused by name", "[safetensors][io]") {
    temp_dir dir;
    fs::create_directory(dir.path / "model.safetensors.index.json");
    CHECK_THROWS_WITH(tinyllm::safetensors_checkpoint(dir.path.string()),
                      tinyllm_test::contains("model.safetensors.index.json' is not a file"));
}

TEST_CASE("save_safetensors and to_tensor refuse what they cannot do, naming it", "[safetensors][io]") {
    temp_dir dir;
    tinyllm::tensor<float, 1> x({4});
    const std::string path = dir.file("bad.safetensors");
    CHECK_THROWS_WITH(tinyllm::save_safetensors(path, {{"a", x}, {"b", x}, {"a", x}}),
                      tinyllm_test::contains("two tensors are called 'a'"));
    CHECK_THROWS_WITH(tinyllm::save_safetensors(path, {{"__metadata__", x}}),
                      tinyllm_test::contains("may not be called \"__metadata__\""));
    CHECK_THROWS_WITH(tinyllm::save_safetensors(path, {{std::string("bad\xff name"), x}}),
                      tinyllm_test::contains("is not valid UTF-8"));
    CHECK_THROWS_WITH(tinyllm::save_safetensors(path, {{"a", x}}, {{"k", "\xc3"}}),
                      tinyllm_test::contains("metadata entry 'k' is not valid UTF-8"));
    CHECK_THROWS_WITH(tinyllm::save_safetensors(dir.file("no/such/folder/x.safetensors"), {{"a", x}}),
                      tinyllm_test::contains("cannot open '" + dir.file("no/such/folder/x.safetensors") + "' for writing"));
    tinyllm::save_safetensors(path, {{"a", x}});
    const tinyllm::safetensors_file f(path);
    CHECK_THROWS_WITH((tinyllm::to_tensor<double, 1>(*f.find("a"))),
                      tinyllm_test::contains("tensor 'a' is F32 of shape (4) but to_tensor asks for F64 with 1 dimension"));
    CHECK_THROWS_WITH((tinyllm::to_tensor<float, 2>(*f.find("a"))),
                      tinyllm_test::contains("to_tensor asks for F32 with 2 dimensions"));
}

TEST_CASE("safetensors_file refuses headers that would overflow or mislead later, naming the tensor and field",
          "[safetensors][io][errors]") {
    temp_dir dir;
    const auto error_of = [&](const std::string& header, const std::string& data) {
        std::string bytes(8, '\0');
        for (int i = 0; i < 8; ++i)
            bytes[static_cast<std::size_t>(i)] = static_cast<char>((std::uint64_t{header.size()} >> (8 * i)) & 0xff);
        std::ofstream(dir.file("h.safetensors"), std::ios::binary) << bytes + header + data;
        try {
            const tinyllm::safetensors_file f(dir.file("h.safetensors"));
        } catch (const tinyllm::error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    // No elements, but extents whose product overflows the strides computed from them.
    CHECK_THAT(
        error_of(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})",
                 ""),
        tinyllm_test::contains("tensor 'a': the shape is absurdly large"));
    CHECK_THAT(error_of(R"({"a":{"dtype":"F32","shape":[0,1048576,1048576],"data_offsets":[0,0]}})", ""),
               tinyllm_test::contains("no error"));
    // Integers only, named by field.
    CHECK_THAT(error_of(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", std::string(8, 'x')),
               tinyllm_test::contains("tensor 'a': \"shape\" holds 2.0, not an integer"));
    CHECK_THAT(error_of(R"({"a":{"dtype":"F32","shape":[1e30],"data_offsets":[0,8]}})", std::string(8, 'x')),
               tinyllm_test::contains("tensor 'a': \"shape\" holds 1e30"));
    CHECK_THAT(
        error_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", std::string(8, 'x')),
        tinyllm_test::contains("tensor 'a': \"data_offsets\" holds 18446744073709551615, not an integer that fits"));
    // A name given twice would leave one of the two unreachable.
    CHECK_THAT(
        error_of(
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            std::string(8, 'x')),
        tinyllm_test::contains("tensor 'a': the header names this tensor twice"));
    // __metadata__ is a map of strings (or null), as the reference reads it.
    const std::string one = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
    CHECK_THAT(error_of("{\"__metadata__\":[1]," + one + "}", std::string(4, 'x')),
               tinyllm_test::contains("\"__metadata__\" is an array, not a map of strings"));
    CHECK_THAT(error_of("{\"__metadata__\":{\"step\":5}," + one + "}", std::string(4, 'x')),
               tinyllm_test::contains("\"__metadata__\" entry \"step\" is a number, not a string"));
    CHECK(error_of("{\"__metadata__\":null," + one + "}", std::string(4, 'x')) == "no error");
}
