// examples/tinyllm/tour_layers.cpp — the tour's chapter on the layers between
// attention blocks: LayerNorm and RMSNorm, the activations, the SwiGLU MLP and
// the residual stream, on random activations for the example sentence.
#include "registry.hpp"

#include <tinyllm/activation.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

using namespace tinyllm_cli;
using tinyllm::index_t;

namespace {

std::vector<std::string> words_of(const std::string& sentence) {
    std::istringstream in(sentence);
    std::vector<std::string> words;
    for (std::string w; in >> w;) words.push_back(w);
    return words;
}

struct row_stats {
    double mean = 0, var = 0, rms = 0;
};

row_stats stats(tinyllm::tensor_view<const float, 1> row) {
    row_stats s;
    const auto n = static_cast<double>(row.extent(0));
    for (index_t j = 0; j < row.extent(0); ++j) s.mean += row(j);
    s.mean /= n;
    for (index_t j = 0; j < row.extent(0); ++j) {
        s.var += (row(j) - s.mean) * (row(j) - s.mean);
        s.rms += static_cast<double>(row(j)) * row(j);
    }
    s.var /= n;
    s.rms = std::sqrt(s.rms / n);
    return s;
}

void print_row(std::ostream& out, const std::string& label, tinyllm::tensor_view<const float, 1> row) {
    const auto s = stats(row);
    out << "    " << std::left << std::setw(10) << label << std::right << " [";
    for (index_t j = 0; j < row.extent(0); ++j) out << std::setw(7) << std::fixed << std::setprecision(3) << row(j);
    out << " ]  mean " << std::setw(6) << std::setprecision(3) << s.mean << "  var " << std::setw(6) << s.var
        << "  rms " << std::setw(6) << s.rms << "\n";
    out.unsetf(std::ios::fixed);
}

}  // namespace

TINYLLM_TOUR_CHAPTER(35, "layers", "Between the blocks: norms, activations, the MLP and the residual stream") {
    auto& out = ctx.out;
    const auto words = words_of(example_sentence);
    const index_t T = static_cast<index_t>(words.size()), D = 8;

    out << "Each token of the sentence is carried through the model as one vector, the residual\n"
           "stream. Every block reads a normalized copy of it and adds its result back:\n\n"
           "    x = x + attention(norm(x))\n"
           "    x = x + mlp(norm(x))\n\n"
           "Here: random activations x of shape (B=1, T="
        << T << ", D=" << D
        << "), one row per word, values in [-1, 3)\n"
           "(a stream whose mean has drifted away from 0, as it does in a real model).\n\n";

    tinyllm::tensor<float, 2> x({T, D});  // (B*T, D) = (14, 8)
    tinyllm::cpu::fill_uniform(x.view(), 35, -1.0f, 3.0f);
    tinyllm::tensor<float, 2> ln({T, D}), rms({T, D});  // (T, D)
    tinyllm::cpu::layer_norm(ln.view(), x.view(), 1e-5f);
    tinyllm::cpu::rms_norm(rms.view(), x.view(), 1e-5f);

    out << "LayerNorm subtracts the row's mean and divides by its standard deviation; RMSNorm\n"
           "(Llama) only divides by the root mean square. Without affine parameters (weight 1, bias 0):\n\n";
    const tinyllm::tensor_view<const float, 2> xv = x.view(), lnv = ln.view(), rmsv = rms.view();
    for (index_t t : {index_t{0}, index_t{1}, T - 1}) {
        out << "  \"" << words[static_cast<std::size_t>(t)] << "\" (row " << t << ")\n";
        print_row(out, "x", xv.slice(0, t));
        print_row(out, "LayerNorm", lnv.slice(0, t));
        print_row(out, "RMSNorm", rmsv.slice(0, t));
    }
    out << "\nLayerNorm rows have mean 0 and variance 1; RMSNorm rows have rms 1 but keep the sign of\n"
           "their mean. A learned weight (and, for LayerNorm, bias) per feature then rescales them.\n\n";

    out << "Activations, the non-linearity inside the MLP:\n\n";
    out << "    " << std::setw(6) << "x" << std::setw(11) << "ReLU" << std::setw(11) << "GELU(erf)" << std::setw(11)
        << "GELU(tanh)" << std::setw(11) << "SiLU" << "\n";
    for (float v : {-3.0f, -2.0f, -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 2.0f, 3.0f}) {
        out << "    " << std::fixed << std::setprecision(2) << std::setw(6) << v << std::setprecision(5) << std::setw(11)
            << tinyllm::relu(v) << std::setw(11) << tinyllm::gelu_erf(v) << std::setw(11) << tinyllm::gelu_tanh(v)
            << std::setw(11) << tinyllm::silu(v) << "\n";
    }
    out.unsetf(std::ios::fixed);
    out << "\nReLU cuts negatives to 0. GELU = x * P(N(0,1) < x) and SiLU = x * sigmoid(x) are smooth\n"
           "versions that let small negative values through (both dip below 0 near x = -1).\n"
           "GPT-2 uses the tanh fit of GELU; its checkpoint must be run with that form.\n\n";

    const index_t H = 24;  // ~8/3 * D, rounded up to a multiple of 8, as Llama does
    out << "Llama's SwiGLU MLP on the RMSNorm'd rows, D = " << D << ", hidden H = " << H << ":\n\n";
    tinyllm::tensor<float, 2> wg({H, D}), wu({H, D}), wd({D, H});  // (out_features, in_features)
    const float sd = 1.0f / std::sqrt(static_cast<float>(D)), sh = 1.0f / std::sqrt(static_cast<float>(H));
    tinyllm::cpu::fill_uniform(wg.view(), 1, -sd, sd);
    tinyllm::cpu::fill_uniform(wu.view(), 2, -sd, sd);
    tinyllm::cpu::fill_uniform(wd.view(), 3, -sh, sh);
    tinyllm::tensor<float, 2> gate({T, H}), up({T, H}), y({T, D});  // (T, H), (T, H), (T, D)
    tinyllm::cpu::linear(gate.view(), rms.view(), wg.view(), {});
    tinyllm::cpu::linear(up.view(), rms.view(), wu.view(), {});
    out << "    norm(x)               " << tinyllm::to_string(rms.shape()) << "\n"
        << "    gate = norm(x) Wg^T   " << tinyllm::to_string(gate.shape()) << "    Wg " << tinyllm::to_string(wg.shape())
        << "\n"
        << "    up   = norm(x) Wu^T   " << tinyllm::to_string(up.shape()) << "    Wu " << tinyllm::to_string(wu.shape())
        << "\n";
    tinyllm::cpu::swiglu(gate.view(), gate.view(), up.view());
    tinyllm::cpu::linear(y.view(), gate.view(), wd.view(), {});
    out << "    silu(gate) * up       " << tinyllm::to_string(gate.shape()) << "    element-wise: the gate\n"
        << "    mlp = (...) Wd^T      " << tinyllm::to_string(y.shape()) << "     Wd " << tinyllm::to_string(wd.shape())
        << "\n";
    const index_t params = 3 * H * D;
    out << "    parameters: 3 * H * D = " << params << " (a GPT-2 style MLP with H = 4D has 2 * 4D * D = "
        << 8 * D * D << ")\n\n";

    tinyllm::tensor<float, 2> next({T, D});  // (T, D)
    tinyllm::cpu::add(next.view(), x.view(), y.view());
    out << "The residual add x + mlp(norm(x)) for \"" << words[1] << "\": the stream changes a little, it is\n"
           "never replaced, so early information (and the gradient) passes straight through:\n";
    print_row(out, "x", xv.slice(0, 1));
    print_row(out, "mlp", tinyllm::tensor_view<const float, 2>(y.view()).slice(0, 1));
    print_row(out, "x + mlp", tinyllm::tensor_view<const float, 2>(next.view()).slice(0, 1));
    out << "\nOn the GPU the add and the next norm run as one kernel (residual_add_rms_norm), and\n"
           "silu(gate) * up as one pass over memory: see `tinyllm bench residual_rmsnorm|swiglu`.\n";
}
