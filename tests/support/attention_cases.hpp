// The attention tests' shared cases: a shape (B, Tq, Tk, Hq, Hkv, D), a variant of
// the options (causal, window, ALiBi, soft-cap, scale, padding), and the storage
// its views point to. Each test lists its own shapes and variants.
#pragma once

#include "compare.hpp"

#include <tinyllm/attention.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace tinyllm_test {

struct attention_shape {
    tinyllm::index_t B, Tq, Tk, Hq, Hkv, D;
};

inline std::string describe(const attention_shape& s) {
    std::ostringstream o;
    o << "B" << s.B << " Tq" << s.Tq << " Tk" << s.Tk << " Hq" << s.Hq << " Hkv" << s.Hkv << " D" << s.D;
    return o.str();
}

// Fresh uniform values in [lo, hi) (input number `which` of this run), as T.
template <class T>
tinyllm::tensor<T, 4> random_tensor(tinyllm::extents<4> s, std::uint64_t which, float lo = -1.0f, float hi = 1.0f) {
    const auto f = random_floats(static_cast<std::size_t>(s.product()), which, lo, hi);
    tinyllm::tensor<T, 4> t(s);
    for (std::size_t i = 0; i < f.size(); ++i) {
        if constexpr (std::is_floating_point_v<T>) t.values()[i] = static_cast<T>(f[i]);
        else t.values()[i] = tinyllm::from_float<T>(f[i]);
    }
    return t;
}

struct attention_variant {
    std::string name;
    bool causal = false;
    tinyllm::index_t window = 0;
    bool alibi = false;
    float softcap = 0;
    float scale = 0;
    bool padding = false;
};

// A variant's attention_options with the slopes and key lengths they point to.
// ALiBi: head h has slope alibi_base / (h + 1). Padding: batch row b keeps
// key_length(b, Tk) keys (0 leaves a row that sees nothing).
struct attention_case {
    std::vector<float> slopes;
    std::vector<std::int32_t> lengths;
    tinyllm::attention_options opts;

    template <class KeyLength>
    attention_case(const attention_variant& var, const attention_shape& s, float alibi_base, KeyLength key_length) {
        opts.causal = var.causal;
        if (var.window > 0) opts.window = var.window;
        if (var.softcap > 0) opts.softcap = var.softcap;
        if (var.scale > 0) opts.scale = var.scale;
        if (var.alibi) {
            for (tinyllm::index_t h = 0; h < s.Hq; ++h) slopes.push_back(alibi_base / static_cast<float>(h + 1));
            opts.alibi_slopes = {slopes.data(), {s.Hq}};
        }
        if (var.padding) {
            for (tinyllm::index_t b = 0; b < s.B; ++b) lengths.push_back(static_cast<std::int32_t>(key_length(b, s.Tk)));
            opts.key_lengths = {lengths.data(), {s.B}};
        }
    }
    attention_case(const attention_case&) = delete;  // opts points into this object
    attention_case& operator=(const attention_case&) = delete;
};

}  // namespace tinyllm_test
