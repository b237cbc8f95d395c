// tinyllm/quantize.hpp — weight-only quantization: a weight matrix stored in 8
// or 4 bits per element with a few float scales, and the linear layer that
// uses it. The CPU reference of the int8 and int4 formats.
//
// Why. Decoding one token reads every weight of the model once for two flops
// per element, so its speed is the weights' bytes over the memory bandwidth.
// float32 weights take 4 bytes an element, bfloat16 2, int8 1 and int4 half a
// byte: 8x fewer bytes than float32 is up to 8x faster decoding, if the
// arithmetic (done in float after "dequantizing") keeps up, and if the model
// still predicts well with the rounded weights. The formats below are the two
// that most inference stacks ship (the int8 of LLM.int8()/bitsandbytes without
// its outlier path, and the group-wise int4 of GPTQ and AWQ checkpoints).
//
// A linear layer computes y = x W^T with W (N, K): N outputs ("output
// channels", rows of W), K inputs.
//
// int8, per output channel, symmetric ("absmax"). Row n gets one scale
//
//     s_n = max_k |W[n, k]| / 127,     q[n, k] = round(W[n, k] / s_n) in [-127, 127],
//     W^[n, k] = q[n, k] * s_n.
//
// Zero stays exactly zero; the error of an element is at most s_n / 2 (half a
// step), so the row's largest weight sets the precision of all the others: an
// outlier 100x larger than the rest leaves them ~1 step. That is why scales
// are per row and not per tensor.
//
// int4, group-wise, asymmetric ("int4-g128" = groups of 128 inputs). Four bits
// give only 16 levels, so the scale must follow the weights more closely: each
// row is cut into groups of G consecutive inputs, and each group gets its own
// scale and zero point. With lo = min(0, min W) and hi = max(0, max W) over the
// group (0 is always in range, so exact zeros stay exact):
//
//     s = (hi - lo) / 15,   z = round(-lo / s) in [0, 15],
//     q = clamp(round(W / s) + z, 0, 15),     W^ = (q - z) * s.
//
// Asymmetric levels spend all 16 values on [lo, hi] even when the group is
// mostly positive or negative. The error is again at most s / 2 per element.
// Storage per element: 4 bits + (32 bits of scale + 8 bits of zero point) / G,
// i.e. 4.31 bits at G = 128 and 5.25 bits at G = 32.
//
// The packing: two int4 values per byte, the even input in the low nibble:
//
//     inputs k:        0     1     2     3     4     5    ...
//     q:             [ 9 ] [ 3 ] [ 0 ] [15 ] [ 7 ] [ 8 ]
//                      \     /     \     /     \     /
//     byte:          0x39 = 0011 1001   0xF0    0x87 ...
//                          high  low
//                          k=1   k=0
//
// so row n occupies K / 2 bytes and byte j holds inputs 2j (bits 0-3) and
// 2j + 1 (bits 4-7). int8 rows are K signed bytes. Scales are float, (N, K/G)
// (int8: (N, 1)); int4 zero points are one byte each, (N, K/G). The element
// formulas live in quant:: below, callable from host and device code, so the
// CUDA kernels dequantize with the same arithmetic.
//
// Two ways to choose q:
//   * round to nearest (quantize_rtn): each weight independently, as above.
//   * GPTQ (quantize_gptq; Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate
//     Post-Training Quantization for Generative Pre-trained Transformers",
//     ICLR 2023, after Optimal Brain Surgeon). What matters is not the error
//     of each weight but the error of the layer's OUTPUT on real inputs X
//     (M rows of calibration activations): || X W^T - X W^^T ||^2. Per output
//     row that is a quadratic form (w - w^)^T H (w - w^) with H = 2 X^T X / M.
//     GPTQ quantizes the inputs one column at a time, left to right, and after
//     rounding column i it changes the NOT yet quantized columns j > i of the
//     same row to cancel, as far as H allows, the output error column i just
//     made:
//         e = (w_i - q_i) / U_ii,      w_j -= e U_ij   (j > i),
//     where U is the upper Cholesky factor of H^-1 (H^-1 = U^T U): row i of U
//     is exactly the optimal update after columns < i have been fixed. Inputs
//     that are correlated (they are, in a transformer) let one column's
//     rounding error be absorbed by the others. H gets a small damping,
//     percdamp * mean(diag H) on its diagonal, so it is invertible; inputs that
//     are always zero in X (H_ii = 0) cannot matter and are quantized as 0.
//     Group scales are chosen when the loop reaches each group's first column,
//     from the weights as updated so far (as the paper's implementation does).
//
// The layer: linear_quantized(out, x, w, bias) is the reference, dequantize to
// float then the float64-accumulating cpu::linear; the kernels (CPU and CUDA)
// are checked against it. cpu::linear_quantized_fused is the CPU kernel for
// decoding: it never materializes W^. Each weight row is read once, in its
// stored bytes, for every row of x, and dequantized in registers. Per group
// the scale comes out of the sum (and for int4 so does the zero point):
//
//     sum_k x_k (q_k - z) s = s (sum_k x_k q_k - z sum_k x_k),
//
// so the inner loop is a dot product of floats with small integers, beside a
// sum of x. Its float sums run in 8 lanes and 4 independent chains (which the
// compiler turns into SIMD with the latency of the multiply-adds hidden), so it
// agrees with the float64 reference to float rounding, not bit for bit. An
// AVX2 copy is chosen at run time on x86-64, as cpu::gemm's is.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/threads.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <string_view>
#include <vector>

namespace tinyllm {

// The element formulas, shared by the CPU reference and the CUDA kernels.
namespace quant {

// The int4 value of input k from its row's packed bytes (even k: low nibble).
TINYLLM_HOST_DEVICE int int4_at(const std::uint8_t* row, index_t k) {
    const std::uint8_t byte = row[k / 2];
    return (k % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
}
// Two int4 values as one byte: `even` in bits 0-3, `odd` in bits 4-7.
TINYLLM_HOST_DEVICE std::uint8_t int4_pack(int even, int odd) {
    return static_cast<std::uint8_t>((even & 0x0F) | ((odd & 0x0F) << 4));
}
TINYLLM_HOST_DEVICE float dequantize_int8(std::int8_t q, float scale) { return static_cast<float>(q) * scale; }
TINYLLM_HOST_DEVICE float dequantize_int4(int q, float scale, int zero) { return static_cast<float>(q - zero) * scale; }

// The step s for `range` spread over `levels` steps: the smallest float with
// range / s <= levels (computed in double, as the range is), 0 for an empty
// range. Every quantizer's scale comes from here (int8 absmax: levels 127; int4
// min/max: 15).
TINYLLM_HOST_DEVICE float step_for(double range, double levels) {
    if (!(range > 0.0)) return 0.0f;
    float s = static_cast<float>(range / levels);
    if (s == 0.0f) s = 1.40129846e-45f;  // the smallest denormal
    while (range / s > levels) {         // one float up (s is positive and finite)
        std::uint32_t bits;
        std::memcpy(&bits, &s, sizeof bits);
        ++bits;
        std::memcpy(&s, &bits, sizeof bits);
    }
    return s;
}
// x as a symmetric int8 with step s: round(x / s) clamped to [-127, 127]; 0 when s is 0.
TINYLLM_HOST_DEVICE std::int8_t quantize_int8(float x, float s) {
    if (!(s > 0.0f)) return 0;
    const float r = ::roundf(x / s);
    if (r != r) return 0;  // x is NaN (callers check finiteness; this only keeps the cast defined)
    return static_cast<std::int8_t>(r < -127.0f ? -127.0f : r > 127.0f ? 127.0f : r);
}

}  // namespace quant

enum class quant_format { int8, int4 };

// What a quantized matrix is: int8 per output channel (group = 0, meaning the
// whole row) or int4 in groups of `group` inputs.
struct quant_spec {
    quant_format format = quant_format::int8;
    index_t group = 0;

    // "int8" or "int4-g128"; parse_quant_spec reads the same names.
    std::string name() const {
        return format == quant_format::int8 ? std::string("int8") : "int4-g" + std::to_string(group);
    }
    // The layout of one row of K inputs: its bytes of values (int8 one a byte,
    // int4 two), and its groups, each with a scale (int8: the whole row is one).
    index_t row_bytes(index_t K) const { return format == quant_format::int8 ? K : K / 2; }
    index_t groups(index_t K) const { return format == quant_format::int8 ? 1 : K / group; }
};

// "int8", "int4-g32", "int4-g64", "int4-g128" (any even group size >= 2).
inline quant_spec parse_quant_spec(std::string_view text) {
    if (text == "int8") return {quant_format::int8, 0};
    constexpr std::string_view prefix = "int4-g";
    if (text.substr(0, prefix.size()) == prefix && text.size() > prefix.size() && text.size() <= prefix.size() + 6) {
        index_t g = 0;
        bool digits = true;
        for (char c : text.substr(prefix.size())) {
            if (c < '0' || c > '9') digits = false;
            else g = g * 10 + (c - '0');
        }
        if (digits && g >= 2 && g % 2 == 0) return {quant_format::int4, g};
    }
    throw error(detail::cat("quantization format '", text,
                            "' is not one of int8, int4-gG (G an even group size such as 32, 64 or 128)"));
}

// A quantized weight W (rows, cols) = (N, K).
struct quantized_matrix {
    quant_spec spec;
    index_t rows = 0, cols = 0;
    std::vector<std::uint8_t> data;  // int8: (N, K) signed bytes; int4: (N, K/2) packed (see the top)
    tensor<float, 2> scales;         // (N, groups): int8 one per row, int4 one per group
    tensor<std::uint8_t, 2> zeros;   // (N, groups), int4 only (empty for int8)

    index_t group_size() const { return spec.format == quant_format::int8 ? cols : spec.group; }
    index_t groups() const { return scales.extent(1); }
    index_t row_bytes() const { return spec.row_bytes(cols); }
    // Bytes of storage: the values, the scales and the zero points.
    index_t bytes() const {
        return static_cast<index_t>(data.size()) + scales.size() * static_cast<index_t>(sizeof(float)) + zeros.size();
    }
    // The stored integer of element (n, k): int8 in [-127, 127], int4 in [0, 15].
    int value(index_t n, index_t k) const {
        const std::uint8_t* row = data.data() + n * row_bytes();
        return spec.format == quant_format::int8 ? static_cast<int>(static_cast<std::int8_t>(row[k]))
                                                 : quant::int4_at(row, k);
    }
    // The dequantized element W^[n, k].
    float weight(index_t n, index_t k) const {
        const index_t g = k / group_size();
        return spec.format == quant_format::int8
                   ? quant::dequantize_int8(static_cast<std::int8_t>(value(n, k)), scales(n, g))
                   : quant::dequantize_int4(value(n, k), scales(n, g), zeros(n, g));
    }
    // The format's error bound for element (n, k): half a step of its scale, plus
    // float rounding (|q| <= 127 steps, each product and quotient rounded once).
    double error_bound(index_t n, index_t k) const {
        return static_cast<double>(scales(n, k / group_size())) * (0.5 + std::ldexp(1.0, -16));
    }
};

namespace detail {

inline void expect_quantizable(tensor_view<const float, 2> w, const quant_spec& spec, const char* what) {
    const index_t N = w.extent(0), K = w.extent(1);
    TINYLLM_EXPECT(N >= 1 && K >= 1, what, ": the weight is ", N, " x ", K, "; it needs at least one element");
    if (spec.format == quant_format::int4) {
        TINYLLM_EXPECT(spec.group >= 2 && spec.group % 2 == 0, what, ": int4 group size ", spec.group,
                       " must be even and at least 2");
        TINYLLM_EXPECT(K % spec.group == 0, what, ": the group size ", spec.group, " does not divide the ", K,
                       " inputs of the weight (", N, " x ", K, ")");
    } else {
        TINYLLM_EXPECT(spec.group == 0, what, ": int8 is per output channel (group 0), got group ", spec.group);
    }
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k)
            TINYLLM_EXPECT(std::isfinite(w(n, k)) && std::fabs(w(n, k)) <= 1e36f, what, ": weight (", n, ", ", k,
                           ") is ", w(n, k), "; quantized weights must be finite and at most 1e36 in magnitude (a",
                           " step of the range times 15 must not overflow)");
}

// The smallest float s with range / s <= levels, near range / levels (0 for a zero
// range). A quotient that underflows or rounds down would otherwise push the
// largest weight past the last level. The range is a double: max - min of two
// floats can exceed the largest float.
inline float step_for(double range, double levels) { return quant::step_for(range, levels); }

inline quantized_matrix empty_quantized(index_t N, index_t K, const quant_spec& spec) {
    quantized_matrix q;
    q.spec = spec;
    q.rows = N;
    q.cols = K;
    const index_t groups = spec.groups(K);
    q.data.assign(static_cast<std::size_t>(N * q.row_bytes()), 0);
    q.scales = tensor<float, 2>({N, groups});
    if (spec.format == quant_format::int4) q.zeros = tensor<std::uint8_t, 2>({N, groups});
    return q;
}

// Choose the scale (and zero point) of group g of row n from the weights w[k0, k0 + G).
inline void choose_group_scale(quantized_matrix& q, index_t n, index_t g, const float* w, index_t G) {
    if (q.spec.format == quant_format::int8) {
        float amax = 0.0f;
        for (index_t k = 0; k < G; ++k) amax = std::max(amax, std::fabs(w[k]));
        q.scales(n, g) = step_for(amax, 127.0);
        return;
    }
    float lo = 0.0f, hi = 0.0f;
    for (index_t k = 0; k < G; ++k) {
        lo = std::min(lo, w[k]);
        hi = std::max(hi, w[k]);
    }
    const float s = step_for(static_cast<double>(hi) - static_cast<double>(lo), 15.0);
    q.scales(n, g) = s;
    q.zeros(n, g) = static_cast<std::uint8_t>(s > 0.0f ? std::clamp(std::round(-lo / s), 0.0f, 15.0f) : 0.0f);
}

// Round one weight with its group's scale: the stored integer.
inline int round_weight(const quantized_matrix& q, index_t n, index_t g, float w) {
    const float s = q.scales(n, g);
    if (q.spec.format == quant_format::int8) return s > 0.0f ? static_cast<int>(std::clamp(std::round(w / s), -127.0f, 127.0f)) : 0;
    const int z = q.zeros(n, g);
    if (!(s > 0.0f)) return z;
    return static_cast<int>(std::clamp(std::round(w / s) + static_cast<float>(z), 0.0f, 15.0f));
}

inline void store(quantized_matrix& q, index_t n, index_t k, int value) {
    std::uint8_t* row = q.data.data() + n * q.row_bytes();
    if (q.spec.format == quant_format::int8) {
        row[k] = static_cast<std::uint8_t>(static_cast<std::int8_t>(value));
    } else {
        const std::uint8_t byte = row[k / 2];
        row[k / 2] = (k % 2 == 0) ? quant::int4_pack(value, byte >> 4) : quant::int4_pack(byte & 0x0F, value);
    }
}

// Cholesky factor in place: a (n, n) symmetric positive definite -> lower L with a = L L^T.
// Returns false when a pivot is not positive.
inline bool cholesky_lower(std::vector<double>& a, index_t n) {
    for (index_t j = 0; j < n; ++j) {
        double d = a[j * n + j];
        for (index_t p = 0; p < j; ++p) d -= a[j * n + p] * a[j * n + p];
        if (!(d > 0.0)) return false;
        const double l = std::sqrt(d);
        a[j * n + j] = l;
        for (index_t i = j + 1; i < n; ++i) {
            double v = a[i * n + j];
            for (index_t p = 0; p < j; ++p) v -= a[i * n + p] * a[j * n + p];
            a[i * n + j] = v / l;
        }
        for (index_t i = 0; i < j; ++i) a[i * n + j] = 0.0;  // upper part: zero
    }
    return true;
}

}  // namespace detail

// Round to nearest: each weight on its own, as described at the top.
inline quantized_matrix quantize_rtn(tensor_view<const float, 2> w /*(N, K)*/, const quant_spec& spec) {
    detail::expect_quantizable(w, spec, "quantize_rtn");
    const index_t N = w.extent(0), K = w.extent(1);
    quantized_matrix q = detail::empty_quantized(N, K, spec);
    const index_t G = q.group_size();
    std::vector<float> row(static_cast<std::size_t>(K));
    for (index_t n = 0; n < N; ++n) {
        for (index_t k = 0; k < K; ++k) row[static_cast<std::size_t>(k)] = w(n, k);
        for (index_t g = 0; g < K / G; ++g) {
            detail::choose_group_scale(q, n, g, row.data() + g * G, G);
            for (index_t k = g * G; k < (g + 1) * G; ++k)
                detail::store(q, n, k, detail::round_weight(q, n, g, row[static_cast<std::size_t>(k)]));
        }
    }
    return q;
}

struct gptq_options {
    double percdamp = 0.01;  // damping added to H's diagonal, as a fraction of its mean
};

// GPTQ's calibration statistics for one layer input: the sum X^T X over the M
// rows of input activations seen so far, accumulated batch by batch (a model's
// calibration runs many windows through a layer), H = 2 X^T X / M.
class gptq_hessian {
public:
    explicit gptq_hessian(index_t inputs) : K_(checked(inputs)), sum_(allocated(K_)) {}
    // Add the rows of x (M, K): sum += x^T x (its lower triangle, in double).
    void add(tensor_view<const float, 2> x) {
        TINYLLM_EXPECT(x.extent(1) == K_, "gptq_hessian::add: the calibration inputs have ", x.extent(1),
                       " columns; the layer takes ", K_, " inputs");
        for (index_t m = 0; m < x.extent(0); ++m)
            for (index_t i = 0; i < K_; ++i) {
                const double xi = x(m, i);
                TINYLLM_EXPECT(std::isfinite(xi), "quantize_gptq: calibration input (", rows_ + m, ", ", i, ") is ", xi);
                if (xi == 0.0) continue;
                double* row = sum_.data() + i * K_;
                for (index_t j = 0; j <= i; ++j) row[j] += xi * x(m, j);
            }
        rows_ += x.extent(0);
    }
    index_t inputs() const { return K_; }
    index_t rows() const { return rows_; }
    // H = 2 X^T X / M, both triangles.                                              (K, K)
    std::vector<double> hessian() const {
        std::vector<double> h(sum_.size());
        for (index_t i = 0; i < K_; ++i)
            for (index_t j = 0; j <= i; ++j) {
                const double v = sum_[static_cast<std::size_t>(i * K_ + j)] * 2.0 / static_cast<double>(rows_);
                h[static_cast<std::size_t>(i * K_ + j)] = v;
                h[static_cast<std::size_t>(j * K_ + i)] = v;
            }
        return h;
    }

private:
    // Checked before the (K, K) sum is allocated from it.
    // The sum is K^2 doubles: 2^16 inputs (more than any layer of today's models:
    // Llama 3 70B's widest takes 28672) are already 32 GiB.
    static index_t checked(index_t inputs) {
        TINYLLM_EXPECT(inputs >= 1 && inputs <= (index_t{1} << 16), "gptq_hessian: ", inputs,
                       " inputs (a layer takes between 1 and 2^16: the (K, K) statistics are 8 K^2 bytes)");
        return inputs;
    }
    static std::vector<double> allocated(index_t K) {
        try {
            return std::vector<double>(static_cast<std::size_t>(K * K), 0.0);
        } catch (const std::bad_alloc&) {
            TINYLLM_FAIL("gptq_hessian: the (K, K) statistics of ", K, " inputs need ", 8 * K * K,
                         " bytes, more than this machine could allocate");
        }
    }

    index_t K_;
    index_t rows_ = 0;
    std::vector<double> sum_;  // (K, K), lower triangle
};

// GPTQ (see the top): quantize w so that x W^^T stays close to x W^T on the
// calibration inputs whose statistics `calibration` holds (at least one row).
inline quantized_matrix quantize_gptq(tensor_view<const float, 2> w /*(N, K)*/, const gptq_hessian& calibration,
                                      const quant_spec& spec, const gptq_options& options = {}) {
    detail::expect_quantizable(w, spec, "quantize_gptq");
    const index_t N = w.extent(0), K = w.extent(1);
    TINYLLM_EXPECT(calibration.inputs() == K, "quantize_gptq: the calibration inputs have ", calibration.inputs(),
                   " columns; the weight (", N, " x ", K, ") takes ", K, " inputs");
    TINYLLM_EXPECT(calibration.rows() >= 1, "quantize_gptq: no calibration rows");
    TINYLLM_EXPECT(options.percdamp > 0.0 && std::isfinite(options.percdamp), "quantize_gptq: percdamp = ",
                   options.percdamp, " must be positive");
    std::vector<double> h = calibration.hessian();  // H = 2 X^T X / M                   (K, K)
    // Dead inputs (never non-zero): they cannot change the output; quantize them as 0.
    std::vector<float> work(static_cast<std::size_t>(N * K));  // the weights as GPTQ updates them
    for (index_t n = 0; n < N; ++n)
        for (index_t k = 0; k < K; ++k) work[static_cast<std::size_t>(n * K + k)] = w(n, k);
    double mean_diag = 0.0;
    for (index_t i = 0; i < K; ++i) {
        double& d = h[static_cast<std::size_t>(i * K + i)];
        if (d == 0.0) {
            d = 1.0;
            for (index_t n = 0; n < N; ++n) work[static_cast<std::size_t>(n * K + i)] = 0.0f;
        }
        mean_diag += d;
    }
    mean_diag /= static_cast<double>(K);
    for (index_t i = 0; i < K; ++i) h[static_cast<std::size_t>(i * K + i)] += options.percdamp * mean_diag;

    // U = the upper Cholesky factor of H^-1: H = L L^T, H^-1 = L^-T L^-1; its
    // Cholesky factor (lower) C then gives U = C^T with H^-1 = U^T U.
    TINYLLM_EXPECT(detail::cholesky_lower(h, K), "quantize_gptq: the calibration Hessian (", K, " x ", K,
                   ") is not positive definite even with damping ", options.percdamp, "; raise percdamp");
    std::vector<double> linv(static_cast<std::size_t>(K * K), 0.0);  // L^-1 (lower), by forward substitution
    for (index_t j = 0; j < K; ++j) {
        linv[static_cast<std::size_t>(j * K + j)] = 1.0 / h[static_cast<std::size_t>(j * K + j)];
        for (index_t i = j + 1; i < K; ++i) {
            double v = 0.0;
            for (index_t p = j; p < i; ++p) v += h[static_cast<std::size_t>(i * K + p)] * linv[static_cast<std::size_t>(p * K + j)];
            linv[static_cast<std::size_t>(i * K + j)] = -v / h[static_cast<std::size_t>(i * K + i)];
        }
    }
    std::vector<double> hinv(static_cast<std::size_t>(K * K), 0.0);  // H^-1 = L^-T L^-1
    for (index_t i = 0; i < K; ++i)
        for (index_t j = 0; j <= i; ++j) {
            double v = 0.0;
            for (index_t p = i; p < K; ++p)
                v += linv[static_cast<std::size_t>(p * K + i)] * linv[static_cast<std::size_t>(p * K + j)];
            hinv[static_cast<std::size_t>(i * K + j)] = v;
            hinv[static_cast<std::size_t>(j * K + i)] = v;
        }
    TINYLLM_EXPECT(detail::cholesky_lower(hinv, K), "quantize_gptq: the inverse Hessian (", K, " x ", K,
                   ") lost positive definiteness in rounding; raise percdamp");
    // hinv now holds C (lower); U[i][j] = C[j][i].
    auto U = [&](index_t i, index_t j) { return hinv[static_cast<std::size_t>(j * K + i)]; };

    quantized_matrix q = detail::empty_quantized(N, K, spec);
    const index_t G = q.group_size();
    for (index_t i = 0; i < K; ++i) {
        const index_t g = i / G;
        const double uii = U(i, i);
        for (index_t n = 0; n < N; ++n) {
            float* row = work.data() + n * K;
            if (i % G == 0) detail::choose_group_scale(q, n, g, row + i, G);
            const int v = detail::round_weight(q, n, g, row[i]);
            detail::store(q, n, i, v);
            const double err = (static_cast<double>(row[i]) - q.weight(n, i)) / uii;
            for (index_t j = i + 1; j < K; ++j) row[j] = static_cast<float>(row[j] - err * U(i, j));
        }
    }
    return q;
}

// GPTQ on calibration inputs given as rows: x (M, K), M >= 1 rows of this layer's input activations.
inline quantized_matrix quantize_gptq(tensor_view<const float, 2> w /*(N, K)*/,
                                      tensor_view<const float, 2> calibration /*(M, K)*/, const quant_spec& spec,
                                      const gptq_options& options = {}) {
    detail::expect_quantizable(w, spec, "quantize_gptq");
    TINYLLM_EXPECT(calibration.extent(1) == w.extent(1), "quantize_gptq: the calibration inputs have ",
                   calibration.extent(1), " columns; the weight (", w.extent(0), " x ", w.extent(1), ") takes ",
                   w.extent(1), " inputs");
    TINYLLM_EXPECT(calibration.extent(0) >= 1, "quantize_gptq: no calibration rows");
    gptq_hessian h(w.extent(1));
    h.add(calibration);
    return quantize_gptq(w, h, spec, options);
}

namespace detail {

// A quantized_matrix is a plain struct a caller may fill: its parts must agree
// with its rows, cols and format before anything indexes them.
inline void expect_consistent(const quantized_matrix& q, const char* op) {
    TINYLLM_EXPECT(q.rows >= 0 && q.cols >= 0, op, ": the quantized weight is ", q.rows, " x ", q.cols);
    index_t groups = 1;
    if (q.spec.format == quant_format::int4) {
        TINYLLM_EXPECT(q.spec.group >= 2 && q.spec.group % 2 == 0 && q.cols % q.spec.group == 0, op,
                       ": int4 group size ", q.spec.group, " must be even, at least 2, and divide the ", q.cols,
                       " columns");
        groups = q.cols / q.spec.group;
    } else {
        TINYLLM_EXPECT(q.spec.group == 0, op, ": int8 is per output channel (group 0), got group ", q.spec.group);
    }
    TINYLLM_EXPECT(static_cast<index_t>(q.data.size()) == q.rows * q.row_bytes(), op, ": the quantized weight (",
                   q.rows, " x ", q.cols, ", ", q.spec.name(), ") needs ", q.rows * q.row_bytes(),
                   " bytes of data, it has ", q.data.size());
    TINYLLM_EXPECT(q.scales.shape() == (extents<2>{q.rows, groups}) || (q.rows == 0 && q.scales.size() == 0), op,
                   ": the scales have shape ", to_string(q.scales.shape()), "; ", q.spec.name(), " needs (", q.rows,
                   ", ", groups, ")");
    const extents<2> zeros = q.spec.format == quant_format::int4 ? extents<2>{q.rows, groups} : extents<2>{};
    TINYLLM_EXPECT(q.zeros.size() == zeros.product() && (zeros.product() == 0 || q.zeros.shape() == zeros), op,
                   ": the zero points have shape ", to_string(q.zeros.shape()), "; ", q.spec.name(), " needs ",
                   q.spec.format == quant_format::int4 ? to_string(zeros) : std::string("none"));
    // The values, as a checkpoint's are checked when it is read (model_weights.hpp): a NaN or
    // negative scale, or a zero point past 15, would give wrong products without a word.
    for (index_t n = 0; n < q.scales.extent(0); ++n)
        for (index_t g = 0; g < q.scales.extent(1); ++g) {
            TINYLLM_EXPECT(std::isfinite(q.scales(n, g)) && q.scales(n, g) >= 0.0f, op, ": scale (", n, ", ", g,
                           ") is ", q.scales(n, g), "; scales are finite and >= 0");
            TINYLLM_EXPECT(q.zeros.size() == 0 || q.zeros(n, g) <= 15, op, ": zero point (", n, ", ", g, ") is ",
                           int(q.zeros(n, g)), "; int4 zero points are in [0, 15]");
        }
}

}  // namespace detail

// out (N, K) = W^, the dequantized weight.
inline void dequantize(tensor_view<float, 2> out, const quantized_matrix& q) {
    detail::expect_consistent(q, "dequantize");
    TINYLLM_EXPECT(out.extent(0) == q.rows && out.extent(1) == q.cols, "dequantize: out is ", out.extent(0), " x ",
                   out.extent(1), ", the quantized weight is ", q.rows, " x ", q.cols);
    for (index_t n = 0; n < q.rows; ++n)
        for (index_t k = 0; k < q.cols; ++k) out(n, k) = q.weight(n, k);
}

namespace detail {

inline void expect_quantized_linear_args(const char* op, tensor_view<float, 2> out, tensor_view<const float, 2> x,
                                         const quantized_matrix& w, tensor_view<const float, 1> bias) {
    expect_consistent(w, op);
    TINYLLM_EXPECT(x.extent(1) == w.cols, op, ": x ", to_string(x.shape()), " has ", x.extent(1),
                   " features, the quantized weight (", w.rows, " x ", w.cols, ") takes ", w.cols);
    TINYLLM_EXPECT(out.extent(0) == x.extent(0) && out.extent(1) == w.rows, op, ": out has shape ",
                   to_string(out.shape()), " but (rows of x, outputs) = (", x.extent(0), ", ", w.rows, ") is required");
    TINYLLM_EXPECT(bias.size() == 0 || bias.extent(0) == w.rows, op, ": bias has ", bias.extent(0),
                   " elements but the layer has ", w.rows, " outputs (or pass no bias)");
    // As linear's (and the CUDA rungs'): every output reads all of its row of x and one bias.
    expect_distinct_elements(op, "out", out);
    expect_apart_from(op, "out", out, "x", x, "bias", bias);
}

}  // namespace detail

// The reference quantized linear layer: out (rows, N) = x (rows, K) W^^T + bias (N or empty):
// dequantize, then cpu::linear (float64 accumulation).
inline void linear_quantized(tensor_view<float, 2> out, tensor_view<const float, 2> x, const quantized_matrix& w,
                             tensor_view<const float, 1> bias = {}) {
    detail::expect_quantized_linear_args("linear_quantized", out, x, w, bias);
    tensor<float, 2> dense({w.rows, w.cols});
    dequantize(dense.view(), w);
    cpu::linear(out, x, tensor_view<const float, 2>(dense.view()), bias);
}

namespace detail {

// Eight floats, eight int32, eight uint32 as GCC/Clang vector types: the compiler
// emits SIMD for them (one AVX2 register, or two SSE registers).
using v8f = float __attribute__((vector_size(32)));
using v8i = std::int32_t __attribute__((vector_size(32)));
using v8u = std::uint32_t __attribute__((vector_size(32)));

// (Vectors stay inside the functions: passing one by value to a function compiled
// without AVX would change the calling convention.)
template <class Scalar>
[[gnu::always_inline]] inline float sum_lanes(const Scalar (&lane)[8]) {
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// sum_k x[k] * q[k] over n int8 values, in 8 lanes (element k to lane k % 8) of four
// accumulators (element k to accumulator k / 8 % 4 within each 32), added at the end.
[[gnu::always_inline]] inline float dot_int8(const float* __restrict x, const std::int8_t* __restrict q, index_t n) {
    // Eight bytes as two little-endian words; byte i of a word is sign-extended by
    // shifting it to the top and back (an arithmetic shift of a signed lane).
    const v8i up = {24, 16, 8, 0, 24, 16, 8, 0};
    auto step = [&](v8f& lane, index_t k) {
        std::int32_t w[2];
        std::memcpy(w, q + k, sizeof w);
        const v8i words = {w[0], w[0], w[0], w[0], w[1], w[1], w[1], w[1]};
        const v8i values = (words << up) >> 24;
        v8f xv;
        std::memcpy(&xv, x + k, sizeof xv);
        lane += xv * __builtin_convertvector(values, v8f);
    };
    // Four accumulators: one multiply-add chain would wait on its own latency.
    v8f l0 = {}, l1 = {}, l2 = {}, l3 = {};
    index_t k = 0;
    for (; k + 32 <= n; k += 32) step(l0, k), step(l1, k + 8), step(l2, k + 16), step(l3, k + 24);
    for (; k + 8 <= n; k += 8) step(l0, k);
    const v8f lane = (l0 + l1) + (l2 + l3);
    float lanes[8];
    std::memcpy(lanes, &lane, sizeof lanes);
    float sum = sum_lanes(lanes);
    for (; k < n; ++k) sum += x[k] * static_cast<float>(q[k]);
    return sum;
}

// One int4 group of n inputs (n even) into 8 vector lanes:
//     acc += s (x_k q_k - z x_k) lane by lane (element k to lane k % 8),
// with the products and the sums of x in four independent chains each; inputs
// past the last multiple of 8 go to `tail`. Four bytes (a little-endian word)
// hold inputs k .. k + 7 at bits 4i .. 4i + 3: one variable shift per lane
// widens them in input order. Keeping the group's result in lanes, not summing
// it, saves a horizontal sum per group (most of the cost at groups of 32).
[[gnu::always_inline]] inline void dot_int4_group(v8f& acc, float& tail, const float* __restrict x,
                                                  const std::uint8_t* __restrict packed, index_t n, float s, float z) {
    const v8u shifts = {0, 4, 8, 12, 16, 20, 24, 28};
    auto step = [&](v8f& dot, v8f& xs, index_t k) {
        std::uint32_t word;
        std::memcpy(&word, packed + k / 2, sizeof word);
        const v8u q = (v8u{} + word) >> shifts & 0x0Fu;
        v8f xv;
        std::memcpy(&xv, x + k, sizeof xv);
        dot += xv * __builtin_convertvector(__builtin_convertvector(q, v8i), v8f);
        xs += xv;
    };
    v8f d0 = {}, d1 = {}, d2 = {}, d3 = {}, x0 = {}, x1 = {}, x2 = {}, x3 = {};
    index_t k = 0;
    for (; k + 32 <= n; k += 32) step(d0, x0, k), step(d1, x1, k + 8), step(d2, x2, k + 16), step(d3, x3, k + 24);
    for (; k + 8 <= n; k += 8) step(d0, x0, k);
    acc += s * (((d0 + d1) + (d2 + d3)) - z * ((x0 + x1) + (x2 + x3)));
    for (; k < n; k += 2) {
        const int b = packed[k / 2];
        tail += s * (x[k] * (static_cast<float>(b & 0x0F) - z) + x[k + 1] * (static_cast<float>(b >> 4) - z));
    }
}

// What one call of the fused kernel works on: x (M, K), contiguous.
struct quantized_rows_args {
    const float* x;
    index_t M, K, G, groups, row_bytes;
    bool int8;
};

// out[m] (stride N) = row n of W^ dotted with every row of x (no bias).
[[gnu::always_inline]] inline void quantized_output_body(float* out, index_t N, const quantized_rows_args& a,
                                                         const std::uint8_t* row, const float* scales,
                                                         const std::uint8_t* zeros) {
    for (index_t m = 0; m < a.M; ++m) {
        const float* xm = a.x + m * a.K;
        if (a.int8) {  // one group: the row's scale
            out[m * N] = scales[0] * dot_int8(xm, reinterpret_cast<const std::int8_t*>(row), a.K);
            continue;
        }
        v8f acc = {};
        float tail = 0.0f;
        for (index_t g = 0; g < a.groups; ++g)
            dot_int4_group(acc, tail, xm + g * a.G, row + g * a.G / 2, a.G, scales[g], static_cast<float>(zeros[g]));
        float lanes[8];
        std::memcpy(lanes, &acc, sizeof lanes);
        out[m * N] = sum_lanes(lanes) + tail;
    }
}

inline void quantized_output_generic(float* out, index_t N, const quantized_rows_args& a, const std::uint8_t* row,
                                     const float* scales, const std::uint8_t* zeros) {
    quantized_output_body(out, N, a, row, scales, zeros);
}
#if TINYLLM_GEMM_X86_DISPATCH
// The same loops compiled for AVX2 (8 floats per instruction, integer widening in one step).
__attribute__((target("avx2,fma"))) inline void quantized_output_avx2(float* out, index_t N,
                                                                      const quantized_rows_args& a,
                                                                      const std::uint8_t* row, const float* scales,
                                                                      const std::uint8_t* zeros) {
    quantized_output_body(out, N, a, row, scales, zeros);
}
#endif
using quantized_output_fn = void (*)(float*, index_t, const quantized_rows_args&, const std::uint8_t*, const float*,
                                     const std::uint8_t*);
inline quantized_output_fn pick_quantized_output() {
#if TINYLLM_GEMM_X86_DISPATCH
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2) return quantized_output_avx2;
#endif
    return quantized_output_generic;
}

}  // namespace detail

namespace cpu {

// out (rows, N) = x (rows, K) W^^T + bias: the fused CPU kernel (see the top),
// OpenMP over the outputs. Meant for few rows (decoding); any count works.
inline void linear_quantized_fused(tensor_view<float, 2> out, tensor_view<const float, 2> x, const quantized_matrix& w,
                                   tensor_view<const float, 1> bias = {}) {
    tinyllm::detail::expect_quantized_linear_args("linear_quantized_fused", out, x, w, bias);
    const index_t M = x.extent(0), N = w.rows, K = w.cols, G = w.group_size(), groups = w.groups();
    const bool int8 = w.spec.format == quant_format::int8;
    std::vector<float> xs(static_cast<std::size_t>(M * K));  // x, contiguous             (M, K)
    for (index_t m = 0; m < M; ++m)
        for (index_t k = 0; k < K; ++k) xs[static_cast<std::size_t>(m * K + k)] = x(m, k);
    std::vector<float> dots(static_cast<std::size_t>(M * N));  // (M, N) before the bias
    const tinyllm::detail::quantized_rows_args args{xs.data(), M, K, G, groups, w.row_bytes(), int8};
    const auto kernel = tinyllm::detail::pick_quantized_output();
    const std::uint8_t* zeros = int8 ? nullptr : w.zeros.data();
    TINYLLM_OMP(parallel for schedule(static) num_threads(num_threads()))
    for (index_t n = 0; n < N; ++n)
        kernel(dots.data() + n, N, args, w.data.data() + n * args.row_bytes, w.scales.data() + n * groups,
               zeros ? zeros + n * groups : nullptr);
    for (index_t m = 0; m < M; ++m)
        for (index_t n = 0; n < N; ++n)
            out(m, n) = dots[static_cast<std::size_t>(m * N + n)] + (bias.size() ? bias(n) : 0.0f);
}

}  // namespace cpu

}  // namespace tinyllm
