// examples/tinyllm/tour_foundation.cpp — the tour's first chapters: tensors,
// 16-bit numbers and reproducible random numbers.
#include "gpu.hpp"
#include "registry.hpp"

#include <tinyllm/tinyllm.hpp>

#include <cstdio>
#include <cstring>
#include <iomanip>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

template <class T>
void print_matrix(std::ostream& out, tinyllm::tensor_view<T, 2> m, int width = 7, int precision = 3) {
    for (tinyllm::index_t i = 0; i < m.extent(0); ++i) {
        out << "    [";
        for (tinyllm::index_t j = 0; j < m.extent(1); ++j)
            out << std::setw(width) << std::fixed << std::setprecision(precision) << m(i, j);
        out << " ]\n";
    }
    out.unsetf(std::ios::fixed);
}

std::string hex(std::uint32_t v, int digits) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%0*x", digits, v);
    return buf;
}

}  // namespace

TINYLLM_TOUR_CHAPTER(10, "tensors", "Tensors: a pointer, a shape and strides") {
    auto& out = ctx.out;
    const std::string sentence = example_sentence;
    out << "Everything in tinyllm reads and writes tensor views: a pointer, a shape and a stride\n"
           "per dimension. Element (i, j) of a 2-D view lives at data[i*stride0 + j*stride1].\n\n"
           "The sentence is "
        << sentence.size() << " bytes. As a 1-D tensor of bytes: shape (" << sentence.size() << "), stride (1).\n";

    // The first 24 bytes viewed as a (4, 6) matrix: no copy, just a shape.
    std::vector<float> bytes(sentence.begin(), sentence.end());
    tinyllm::tensor_view<float, 2> m(bytes.data(), {4, 6});  // (4, 6)
    out << "\nThe first 24 bytes viewed as a (4, 6) matrix (shape " << tinyllm::to_string(m.shape()) << ", strides "
        << tinyllm::to_string(m.strides()) << "):\n";
    print_matrix(out, m, 6, 0);
    out << "    row 1 as text: \"" << sentence.substr(6, 6) << "\"\n";

    auto t = m.transpose(0, 1);  // (6, 4)
    out << "\nIts transpose is the same memory with the strides swapped: shape " << tinyllm::to_string(t.shape())
        << ", strides " << tinyllm::to_string(t.strides()) << ", contiguous: " << (t.is_contiguous() ? "yes" : "no")
        << "\n";
    print_matrix(out, t, 6, 0);

    auto column = m.slice(1, 0);  // (4,)
    out << "\nm.slice(1, 0) picks column 0: shape " << tinyllm::to_string(column.shape()) << ", stride "
        << column.stride(0) << " -> the bytes '";
    for (tinyllm::index_t i = 0; i < column.extent(0); ++i) out << static_cast<char>(column(i));
    out << "' (every 6th character)\n";

    out << "\nA transformer's activations are (B, T, D): batch, tokens, features; attention splits D\n"
           "into heads, (B, T, H, D/H), by viewing the same memory with one more dimension.\n";
    tinyllm::tensor<float, 3> x({1, 14, 64});        // (B=1, T=14, D=64)
    auto heads = tinyllm::tensor_view<float, 4>(x.data(), {1, 14, 4, 16});  // (B, T, H=4, D/H=16)
    out << "    x: " << tinyllm::to_string(x.shape()) << "  ->  heads: " << tinyllm::to_string(heads.shape())
        << ", strides " << tinyllm::to_string(heads.strides()) << "\n";

    out << "\nNumbers in 16 bits: models are stored in bfloat16 (float's range, 8 bits of precision)\n"
           "or float16 (more precision, range only up to 65504); arithmetic happens in float.\n";
    for (float v : {3.14159265f, 0.1f, 70000.0f}) {
        const auto b = tinyllm::float_to_bf16(v);
        const auto h = tinyllm::float_to_fp16(v);
        out << std::setprecision(9) << "    " << std::setw(11) << v << " -> bfloat16 0x" << hex(b.bits, 4) << " = "
            << std::setw(11) << tinyllm::to_float(b) << "   float16 0x" << hex(h.bits, 4) << " = "
            << tinyllm::to_float(h) << "\n";
    }
}

TINYLLM_TOUR_CHAPTER(11, "random", "Random numbers that agree on CPU and GPU") {
    auto& out = ctx.out;
    out << "Sampling and noisy routing need random numbers that are the same on the CPU and the GPU.\n"
           "Philox4x32-10 is a pure function (counter, key) -> 4 random words, so thread i of a\n"
           "kernel and iteration i of a CPU loop compute the same value without sharing state.\n\n";
    const tinyllm::philox_counter c{{0, 0, 0, 0}};
    const tinyllm::philox_key k{{42, 0}};
    const auto w = tinyllm::philox4x32_10(c, k);
    out << "    philox(counter = (0,0,0,0), key = (42,0)) = " << hex(w.v[0], 8) << " " << hex(w.v[1], 8) << " "
        << hex(w.v[2], 8) << " " << hex(w.v[3], 8) << "\n";
    out << "    the top 24 bits of a word / 2^24 give a uniform float in [0, 1): " << std::setprecision(8)
        << tinyllm::uniform_float(w.v[0]) << "\n\n";

    tinyllm::tensor<float, 2> r({3, 6});  // (3, 6)
    tinyllm::cpu::fill_uniform(r.view(), 42);
    out << "A (3, 6) tensor filled with seed 42 (element i uses counter i / 4, word i % 4):\n";
    print_matrix(out, r.view(), 8, 4);

    tinyllm::tensor<float, 2> again({3, 6});
    tinyllm::cpu::fill_uniform(again.view(), 42);
    out << "Filled again with seed 42: " << (again.values() == r.values() ? "identical" : "DIFFERENT") << ".\n";

    const auto gpu = gpu_fill_uniform(r.size(), 42);
    if (gpu.empty()) {
        out << "No GPU here; on a GPU, tinyllm::cuda::fill_uniform gives these exact bits (a CUDA test checks it;\n"
               "`cmake --preset sim` builds a tinyllm whose simulated GPU runs it here).\n";
    } else {
        const bool same = std::memcmp(gpu.data(), r.data(), gpu.size() * sizeof(float)) == 0;
        out << "The same fill on the " << (query_gpus().simulated ? "simulated GPU" : "GPU")
            << " (tinyllm::cuda::fill_uniform): " << (same ? "bit-identical" : "DIFFERENT") << ".\n";
    }
}
