// tests/python/io_crosscheck.cpp — the C++ half of the NumPy / safetensors
// cross-check run by tests/python/npy_roundtrip.py (CTest: python_io_crosscheck).
//
//     io_crosscheck write <dir>   writes the .npy and .safetensors files that Python checks
//     io_crosscheck check <dir>   reads the files Python wrote and checks every element
//
// Both sides compute the expected arrays from the same formula (see value_for
// and npy_roundtrip.py's base): element i (row-major) of a float array is
// 0.37 i - 5.25 rounded to the type through float32 (float64: directly), and of
// an integer array the low bits of (i + 1) * 0x9E3779B97F4A7C15 mod 2^64.
// Exit status 0 when everything matches, 1 with a message on the first mismatch.
#include <tinyllm/npy.hpp>
#include <tinyllm/safetensors.hpp>

#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tinyllm::index_t;

template <class T>
T value_for(index_t i) {
    if constexpr (std::is_same_v<T, double>) return 0.37 * static_cast<double>(i) - 5.25;
    else if constexpr (std::is_same_v<T, float>) return static_cast<float>(0.37 * static_cast<double>(i) - 5.25);
    else if constexpr (std::is_same_v<T, tinyllm::float16>)
        return tinyllm::float_to_fp16(static_cast<float>(0.37 * static_cast<double>(i) - 5.25));
    else if constexpr (std::is_same_v<T, tinyllm::bfloat16>)
        return tinyllm::float_to_bf16(static_cast<float>(0.37 * static_cast<double>(i) - 5.25));
    else if constexpr (std::is_same_v<T, bool>) return i % 3 == 1;
    else return static_cast<T>(static_cast<std::uint64_t>(i + 1) * 0x9E3779B97F4A7C15ull);
}

// The base array of a shape: value_for(i) at row-major position i.
template <class T, std::size_t Rank>
tinyllm::tensor<T, Rank> base(const tinyllm::extents<Rank>& shape) {
    tinyllm::tensor<T, Rank> t(shape);
    for (index_t i = 0; i < t.size(); ++i) t.data()[i] = value_for<T>(i);
    return t;
}

const tinyllm::extents<1> shape1{7};
const tinyllm::extents<2> shape2{3, 4};
const tinyllm::extents<3> shape3{2, 3, 4};
const tinyllm::extents<4> shape4{2, 3, 4, 5};

std::string code(tinyllm::npy_dtype d) { return std::string(tinyllm::npy_descr(d).substr(1)); }

[[noreturn]] void mismatch(const std::string& what) {
    throw std::runtime_error("io_crosscheck: " + what);
}

template <class T, std::size_t Rank>
void expect_equal(const tinyllm::tensor<T, Rank>& got, const tinyllm::tensor<T, Rank>& want, const std::string& what) {
    if (got.shape() != want.shape())
        mismatch(what + ": shape " + tinyllm::to_string(got.shape()) + ", expected " + tinyllm::to_string(want.shape()));
    for (index_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got.data()[i], &want.data()[i], sizeof(T)) != 0)
            mismatch(what + ": element " + std::to_string(i) + " differs");
}

// C++ -> Python: <code>_r<rank>.npy (C order), and strided views: <code>_r2_t.npy = base(3, 4).T,
// <code>_r3_w.npy = base(2, 3, 4)[:, 1:3, :], <code>_r4_t.npy = base(2, 3, 4, 5).swapaxes(1, 3).
template <class T>
void write_npy_files(const std::string& dir) {
    const std::string c = dir + "/" + code(tinyllm::npy_dtype_of<T>());
    const auto b1 = base<T>(shape1);
    const auto b2 = base<T>(shape2);
    const auto b3 = base<T>(shape3);
    const auto b4 = base<T>(shape4);
    tinyllm::save_npy(c + "_r1.npy", b1);
    tinyllm::save_npy(c + "_r2.npy", b2);
    tinyllm::save_npy(c + "_r3.npy", b3);
    tinyllm::save_npy(c + "_r4.npy", b4);
    tinyllm::save_npy(c + "_r2_t.npy", b2.view().transpose(0, 1));
    tinyllm::save_npy(c + "_r3_w.npy", b3.view().narrow(1, 1, 2));
    tinyllm::save_npy(c + "_r4_t.npy", b4.view().transpose(1, 3));
}

// Python -> C++: py_<code>_r<rank>.npy (np.save), py_<code>_r2_fortran.npy
// (np.asfortranarray), py_<code>_r3_big.npy (big-endian), all of the base arrays.
template <class T>
void check_npy_files(const std::string& dir) {
    const std::string c = dir + "/py_" + code(tinyllm::npy_dtype_of<T>());
    expect_equal(tinyllm::load_npy<T, 1>(c + "_r1.npy"), base<T>(shape1), c + "_r1.npy");
    expect_equal(tinyllm::load_npy<T, 2>(c + "_r2.npy"), base<T>(shape2), c + "_r2.npy");
    expect_equal(tinyllm::load_npy<T, 3>(c + "_r3.npy"), base<T>(shape3), c + "_r3.npy");
    expect_equal(tinyllm::load_npy<T, 4>(c + "_r4.npy"), base<T>(shape4), c + "_r4.npy");
    expect_equal(tinyllm::load_npy<T, 2>(c + "_r2_fortran.npy"), base<T>(shape2), c + "_r2_fortran.npy");
    expect_equal(tinyllm::load_npy<T, 3>(c + "_r3_big.npy"), base<T>(shape3), c + "_r3_big.npy");
}

template <class F>
void for_each_npy_type(F&& f) {
    f(double{});
    f(float{});
    f(tinyllm::float16{});
    f(std::int64_t{});
    f(std::int32_t{});
    f(std::int16_t{});
    f(std::int8_t{});
    f(std::uint64_t{});
    f(std::uint32_t{});
    f(std::uint16_t{});
    f(std::uint8_t{});
}

// C++ -> Python safetensors: cpp.safetensors holds <code>_r<rank> for f8 f4 f2 i8 i4 i2 i1 u1 and bool,
// and r2_t (base(3, 4).T as float32); cpp_bf16.safetensors holds bf16_r2 (numpy has no bfloat16).
void write_safetensors_files(const std::string& dir) {
    const auto f8 = base<double>(shape2);
    const auto f4 = base<float>(shape2);
    const auto f2 = base<tinyllm::float16>(shape3);
    const auto i8 = base<std::int64_t>(shape1);
    const auto i4 = base<std::int32_t>(shape4);
    const auto i2 = base<std::int16_t>(shape2);
    const auto i1 = base<std::int8_t>(shape1);
    const auto u1 = base<std::uint8_t>(shape3);
    const auto flags = std::make_unique<bool[]>(7);
    for (index_t i = 0; i < 7; ++i) flags[static_cast<std::size_t>(i)] = value_for<bool>(i);
    tinyllm::save_safetensors(dir + "/cpp.safetensors",
                              {{"f8_r2", f8}, {"f4_r2", f4}, {"f2_r3", f2}, {"i8_r1", i8}, {"i4_r4", i4},
                               {"i2_r2", i2}, {"i1_r1", i1}, {"u1_r3", u1},
                               {"bool_r1", tinyllm::tensor_view<const bool, 1>(flags.get(), shape1)},
                               {"f4_r2_t", f4.view().transpose(0, 1)}},
                              {{"format", "pt"}, {"origin", "tinyllm"}});
    const auto bf = base<tinyllm::bfloat16>(shape2);
    tinyllm::save_safetensors(dir + "/cpp_bf16.safetensors", {{"bf16_r2", bf}});
}

// Python -> C++: py.safetensors (safetensors.numpy.save_file) holds f4_r2, f8_r1, f2_r3, i8_r4, i4_r1,
// u1_r2 and bool_r1 of the base arrays, with metadata {"format": "np"}.
void check_safetensors_file(const std::string& dir) {
    const std::string path = dir + "/py.safetensors";
    const tinyllm::safetensors_file f(path);
    auto get = [&](const std::string& name) {
        const tinyllm::safetensors_tensor* t = f.find(name);
        if (!t) mismatch(path + " has no tensor " + name);
        return *t;
    };
    expect_equal(tinyllm::to_tensor<float, 2>(get("f4_r2")), base<float>(shape2), "f4_r2");
    expect_equal(tinyllm::to_tensor<double, 1>(get("f8_r1")), base<double>(shape1), "f8_r1");
    expect_equal(tinyllm::to_tensor<tinyllm::float16, 3>(get("f2_r3")), base<tinyllm::float16>(shape3), "f2_r3");
    expect_equal(tinyllm::to_tensor<std::int64_t, 4>(get("i8_r4")), base<std::int64_t>(shape4), "i8_r4");
    expect_equal(tinyllm::to_tensor<std::int32_t, 1>(get("i4_r1")), base<std::int32_t>(shape1), "i4_r1");
    expect_equal(tinyllm::to_tensor<std::uint8_t, 2>(get("u1_r2")), base<std::uint8_t>(shape2), "u1_r2");
    const auto flags = tinyllm::to_tensor<std::uint8_t, 1>(get("bool_r1"));
    for (index_t i = 0; i < 7; ++i)
        if (flags.data()[i] != (value_for<bool>(i) ? 1 : 0)) mismatch("bool_r1: element " + std::to_string(i) + " differs");
    if (f.metadata().count("format") == 0 || f.metadata().at("format") != "np") mismatch("py.safetensors: metadata lost");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3 || (std::string(argv[1]) != "write" && std::string(argv[1]) != "check")) {
        std::cerr << "usage: io_crosscheck write|check <dir>\n";
        return 2;
    }
    const std::string mode = argv[1], dir = argv[2];
    try {
        if (mode == "write") {
            for_each_npy_type([&](auto t) { write_npy_files<decltype(t)>(dir); });
            write_safetensors_files(dir);
        } else {
            for_each_npy_type([&](auto t) { check_npy_files<decltype(t)>(dir); });
            for (const char* v : {"v2", "v3"})
                expect_equal(tinyllm::load_npy<float, 2>(dir + "/py_f4_" + v + ".npy"), base<float>(shape2),
                             std::string("py_f4_") + v + ".npy");
            if (std::ifstream(dir + "/py.safetensors")) check_safetensors_file(dir);  // written when safetensors is installed
        }
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
    std::cout << "io_crosscheck " << mode << ": ok\n";
    return 0;
}
