// tinyllm/optimizer.hpp — stepping a model's parameters: AdamW and SGD with
// momentum, gradient clipping by global norm, the warmup + cosine learning-rate
// schedule, gradient accumulation, and dropout drawn from Philox.
//
// The backward pass (docs/training.md) gives dL/dp for every parameter p. The
// optimizer turns those gradients into a change of the parameters. This header
// is the CPU reference; <tinyllm/cuda/optimizer.cuh> has the kernels, checked
// against it.
//
// AdamW (Loshchilov & Hutter 2019), exactly as torch.optim.AdamW. Per
// parameter it keeps two running averages, m of the gradient and v of its
// square, and the number of steps taken, t. One step with gradient g:
//
//     t  = t + 1
//     p  = p (1 - lr wd)                       decoupled weight decay
//     m  = beta1 m + (1 - beta1) g             first moment
//     v  = beta2 v + (1 - beta2) g^2           second moment
//     m^ = m / (1 - beta1^t)                   bias corrections: m and v start
//     v^ = v / (1 - beta2^t)                   at 0, so early averages are too small
//     p  = p - lr m^ / (sqrt(v^) + eps)        eps added after the square root
//
// Each parameter moves by about lr in the direction of its averaged gradient's
// sign, whatever the gradient's scale. "Decoupled": the decay shrinks p
// directly instead of being added to g (which would let v^ rescale it, as in
// Adam with L2 regularization). PyTorch computes the update as
// (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps) with bc = 1 - beta^t: the same
// number, and the order used here.
//
// Which parameters decay. Weight decay pulls weights towards 0; for the
// weights of matrix multiplications that is the regularization wanted. For a
// norm's gain it pulls the scale towards 0 (not 1), for a bias towards an
// arbitrary point, and for an embedding it shrinks the rows of rare tokens,
// which get few gradient updates to push back. default_weight_decay(name,
// rank) is the usual rule (minGPT's, and most recipes'): a tensor decays
// unless it has rank < 2 (biases, norm weights, scalars) or its name contains
// "embed", "wte" or "wpe" (token and position embeddings: Llama's
// embed_tokens, GPT-2's wte and wpe). nanoGPT decays embeddings too; pass
// decay = true for them to get its rule.
//
// SGD, exactly as torch.optim.SGD, for teaching (the update every optimizer
// builds on). With momentum mu, dampening d and a buffer b per parameter:
//
//     g = g + wd p                             (L2 weight decay, coupled)
//     b = g                                    on the first step
//     b = mu b + (1 - d) g                     afterwards
//     g = g + mu b  (nesterov)  or  g = b
//     p = p - lr g
//
// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_: the
// total norm ||g|| = sqrt(sum over every element of every gradient of g^2)
// (here in double), and when c = max_norm / (||g|| + 1e-6) is below 1 every
// gradient is multiplied by c (rounded to float, as PyTorch's float c). One
// bad batch then cannot throw the parameters far. A non-finite norm is an
// error naming the first NaN or infinity (parameter, index, training step):
// stepping with it would make every parameter NaN.
//
// The learning rate schedule (nanoGPT's get_lr), a pure function of the step
// it = 0, 1, 2, ... with W = warmup_steps, D = decay_steps:
//
//     it <  W:       lr = max_lr (it + 1) / (W + 1)                   linear warmup
//     W <= it <= D:  r = (it - W) / (D - W),
//                    lr = min_lr + 0.5 (1 + cos(pi r)) (max_lr - min_lr)   cosine decay
//     it >  D:       lr = min_lr
//
// Warmup keeps the first steps small while Adam's v is still a poor estimate;
// the cosine lowers the rate smoothly so the last steps settle.
//
// Gradient accumulation. A batch too large for memory is split into K
// micro-batches; the backward functions add into the parameter gradients
// (accumulate = true), and since each micro-batch's loss is a mean, the sum of
// their gradients is K times the full batch's: scale_grads(params, 1.0 / K)
// before clipping and stepping gives the gradient of the mean over the whole
// batch (nanoGPT divides the loss by K instead: the same). zero_grads(params)
// starts the next batch.
//
// Dropout (Srivastava et al. 2014) with a counter-based generator. In
// training each element is zeroed with probability p and the kept ones scaled
// by 1 / (1 - p), so the expected output equals the input. Element i of a call
// is dropped iff
//
//     u_i = philox_uniform(seed, stream = dropout_stream (2), n = offset + i) < p
//
// a pure function of (seed, offset + i): dropout_keep below, one
// TINYLLM_HOST_DEVICE function that the CPU loop and the CUDA kernel both
// call, so CPU and GPU drop the same elements, bit for bit, in any thread
// order. The backward needs no stored mask: dx = dout where kept, scaled the
// same, 0 where dropped — the forward applied to dout with the same (seed,
// offset), which regenerates the decisions. A training loop gives each dropout
// call its own range of counters: offset advanced by the elements drawn (as
// PyTorch advances its Philox offset), or a new seed per step.
//
// How a model is passed: as a list of named_parameter, one per tensor of
// weights, each its values and its gradient flattened to one dimension
// (make_parameter checks the shapes and flattens), with its name (for errors
// and the decay rule) and whether it decays. The optimizer state (cpu::
// adamw_state, cpu::sgd_state) is a second list, made from the first and
// stepped with it, one entry per parameter — as torch.optim keeps a state per
// parameter. Every operation also exists for one tensor (the flattened views
// directly), which is what the CUDA kernels mirror.
//
// Arithmetic: the CPU references compute each element in double and round each
// stored result (p, m, v, the momentum buffer) once to float; the state is
// float, as PyTorch keeps it for float parameters.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/threads.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(__NVCOMPILER)
#include <immintrin.h>
#elif defined(__SSE2__) && !defined(__CUDACC__)
#include <emmintrin.h>
#endif

namespace tinyllm {

// ---- Configurations -------------------------------------------------------------------

// torch.optim.AdamW's hyperparameters and defaults.
struct adamw_config {
    double lr = 1e-3;            // learning rate, >= 0 (set it from the schedule each step)
    double beta1 = 0.9;          // decay of the first moment, in [0, 1)
    double beta2 = 0.999;        // decay of the second moment, in [0, 1)
    double eps = 1e-8;           // added to sqrt(v^), > 0
    double weight_decay = 1e-2;  // decoupled decay, >= 0 (for parameters with decay = true)
};

// torch.optim.SGD's hyperparameters and defaults (PyTorch requires lr; 1e-2 here).
struct sgd_config {
    double lr = 1e-2;            // >= 0
    double momentum = 0.0;       // mu, >= 0 (0: plain SGD, no buffer)
    double dampening = 0.0;      // d, in [0, 1]
    double weight_decay = 0.0;   // coupled L2 decay, >= 0 (for parameters with decay = true)
    bool nesterov = false;       // needs momentum > 0 and dampening = 0
};

// nanoGPT's warmup + cosine schedule (its defaults for GPT-2 124M).
struct lr_schedule {
    double max_lr = 6e-4;                 // reached at the end of warmup
    double min_lr = 6e-5;                 // from decay_steps on, 0 <= min_lr <= max_lr
    std::int64_t warmup_steps = 2000;     // W >= 0
    std::int64_t decay_steps = 600000;    // D > W: the step at which the cosine reaches min_lr
};

// ---- The model's parameters -------------------------------------------------------------

// One tensor of a model's weights, as the optimizer sees it: flattened.
// T is float on the CPU; on the GPU float or bfloat16 (then `master` holds the
// float master weights the optimizer updates, see <tinyllm/cuda/optimizer.cuh>).
template <class T = float>
struct named_parameter {
    std::string name;              // "h.0.attn.c_attn.weight": for errors and the decay rule
    tensor_view<T, 1> value;       // the weights (updated in place)
    tensor_view<T, 1> grad;        // d loss / d value, same size (clipping and accumulation scale it)
    tensor_view<float, 1> master;  // bfloat16 values on the GPU only; empty otherwise
    bool decay = true;             // weight decay applies (make_parameter: default_weight_decay)
};

// The default rule: does a tensor of this name and rank (before flattening)
// take weight decay? Not for rank < 2 (biases, norm weights, scalars), nor for
// a name containing "embed", "wte" or "wpe" (embeddings); every other tensor
// (the matrices of linear layers) does.
inline bool default_weight_decay(std::string_view name, std::size_t rank) {
    if (rank < 2) return false;
    for (std::string_view embedding : {"embed", "wte", "wpe"})
        if (name.find(embedding) != std::string_view::npos) return false;
    return true;
}

// A parameter from its value and gradient tensors (any rank, same shape,
// contiguous), flattened, with decay = default_weight_decay(name, rank).
template <class T, std::size_t R>
named_parameter<T> make_parameter(std::string name, tensor_view<T, R> value, std::type_identity_t<tensor_view<T, R>> grad) {
    if (value.shape() != grad.shape())
        throw error(detail::cat("tinyllm: make_parameter: '", name, "': value has shape ", to_string(value.shape()),
                                " but grad has shape ", to_string(grad.shape()), "; they must be equal"));
    TINYLLM_EXPECT(value.is_contiguous() && grad.is_contiguous(), "make_parameter: '", name,
                   "': value and grad must be contiguous; their strides are ", to_string(value.strides()), " and ",
                   to_string(grad.strides()));
    const extents<1> flat{value.size()};
    named_parameter<T> p;
    p.decay = default_weight_decay(name, R);
    p.name = std::move(name);
    p.value = tensor_view<T, 1>(value.data(), flat);
    p.grad = tensor_view<T, 1>(grad.data(), flat);
    return p;
}
template <class T, std::size_t R>
named_parameter<T> make_parameter(std::string name, tensor<T, R>& value, tensor<T, R>& grad) {
    return make_parameter(std::move(name), value.view(), grad.view());
}

// ---- Checks shared by the CPU references and the CUDA launchers -------------------------

namespace detail {

// The settings are doubles, but the CUDA kernels take them (and their products) as floats:
// each must be a float too, so that the CPU and the GPU refuse the same settings (an lr of
// 1e300 or an eps of 1e-50 became inf or 0 in float, and the GPU's steps NaN). eps must be a
// normal float, the largest settings at most FLT_MAX.
inline bool float_setting(double x) { return x <= static_cast<double>(std::numeric_limits<float>::max()); }

inline void expect_adamw_config(const adamw_config& c) {
    TINYLLM_EXPECT(std::isfinite(c.lr) && c.lr >= 0.0 && float_setting(c.lr), "adamw: lr = ", c.lr,
                   " must be finite and >= 0 (and a float)");
    TINYLLM_EXPECT(c.beta1 >= 0.0 && c.beta1 < 1.0, "adamw: beta1 = ", c.beta1, " must be in [0, 1)");
    TINYLLM_EXPECT(c.beta2 >= 0.0 && c.beta2 < 1.0, "adamw: beta2 = ", c.beta2, " must be in [0, 1)");
    TINYLLM_EXPECT(std::isfinite(c.eps) && c.eps > 0.0, "adamw: eps = ", c.eps, " must be finite and > 0");
    TINYLLM_EXPECT(c.eps >= std::numeric_limits<float>::min() && float_setting(c.eps), "adamw: eps = ", c.eps,
                   " must be a normal float (at least ", std::numeric_limits<float>::min(), "; 1e-8 is usual)");
    TINYLLM_EXPECT(std::isfinite(c.weight_decay) && c.weight_decay >= 0.0 && float_setting(c.weight_decay),
                   "adamw: weight_decay = ", c.weight_decay, " must be finite and >= 0 (and a float)");
    TINYLLM_EXPECT(float_setting(c.lr * c.weight_decay), "adamw: lr x weight_decay = ", c.lr * c.weight_decay,
                   " must be a float");
}

inline void expect_sgd_config(const sgd_config& c) {
    TINYLLM_EXPECT(std::isfinite(c.lr) && c.lr >= 0.0 && float_setting(c.lr), "sgd: lr = ", c.lr,
                   " must be finite and >= 0 (and a float)");
    TINYLLM_EXPECT(std::isfinite(c.momentum) && c.momentum >= 0.0 && float_setting(c.momentum),
                   "sgd: momentum = ", c.momentum, " must be finite and >= 0 (and a float)");
    TINYLLM_EXPECT(c.dampening >= 0.0 && c.dampening <= 1.0, "sgd: dampening = ", c.dampening, " must be in [0, 1]");
    TINYLLM_EXPECT(std::isfinite(c.weight_decay) && c.weight_decay >= 0.0 && float_setting(c.weight_decay),
                   "sgd: weight_decay = ", c.weight_decay, " must be finite and >= 0 (and a float)");
    TINYLLM_EXPECT(!c.nesterov || (c.momentum > 0.0 && c.dampening == 0.0),
                   "sgd: nesterov momentum needs momentum > 0 and dampening = 0; got momentum = ", c.momentum,
                   ", dampening = ", c.dampening);
}

inline void expect_step(std::string_view op, std::int64_t step) {
    TINYLLM_EXPECT(step >= 1, op, ": step = ", step, " must be >= 1 (the number of this step, counting from 1)");
}

// Two tensors of one parameter (value and grad, value and a state buffer) of equal size.
inline void expect_same_size(std::string_view op, std::string_view name, std::string_view a, index_t a_size,
                             std::string_view b, index_t b_size) {
    if (a_size != b_size)
        throw error(cat("tinyllm: ", op, ": parameter '", name, "': ", a, " has ", a_size, " elements but ", b, " has ",
                        b_size, "; they must be equal"));
}

// The state list belongs to the parameter list: same length, same names, in order.
inline void expect_state_list(std::string_view op, std::size_t params, std::size_t states) {
    if (params != states)
        throw error(cat("tinyllm: ", op, ": ", params, " parameters but ", states,
                        " optimizer states; make the state from the same parameter list"));
}
inline void expect_state_name(std::string_view op, std::size_t i, std::string_view param, std::string_view state) {
    if (param != state)
        throw error(cat("tinyllm: ", op, ": state ", i, " belongs to '", state, "' but parameter ", i, " is '", param,
                        "'; make the state from the same parameter list, in the same order"));
}

// The memory of one parameter's step. The value and each state tensor (AdamW's
// m and v, SGD's momentum buffer, a bfloat16 value's float master on the GPU)
// are written, grad is read. Each written tensor needs an address per element
// (a stride of 0 would step one element several times), and each must be apart
// from the others and from grad: m and v in one memory, or a momentum buffer
// over the value, would mix two quantities into one, and a gradient in the
// value's memory would be stepped as it is read. `states`: {name, view} pairs,
// an empty view for a state that is not used.
struct state_view {
    std::string_view name;
    tensor_view<float, 1> view;
};
template <class P, class G>
void expect_step_memory(std::string_view op, std::string_view name, const tensor_view<P, 1>& value,
                        const tensor_view<G, 1>& grad, std::initializer_list<state_view> states) {
    const auto check = [&](std::string_view where) {
        expect_distinct_elements(where, "value", value);
        expect_apart(where, "value", value, "grad", grad);
        for (auto s = states.begin(); s != states.end(); ++s) {
            expect_distinct_elements(where, s->name, s->view);
            expect_apart(where, s->name, s->view, "value", value);
            expect_apart(where, s->name, s->view, "grad", grad);
            for (auto t = states.begin(); t != s; ++t) expect_apart(where, s->name, s->view, t->name, t->view);
        }
    };
    if (name.empty()) return check(op);
    // Every step passes the checks: the parameter's name joins the message only when one fails.
    try {
        check(op);
    } catch (const error&) {
        check(cat(op, ": parameter '", name, "'"));
        throw;
    }
}

// Dropout's memory: out[i] is written right after x[i] is read (by one thread on
// the GPU), so out may be exactly x (in place) and must otherwise be apart from
// it (a shifted out would overwrite elements of x not yet read); the mask's
// bytes must be apart from both.
template <class O, class X, std::size_t R>
void expect_dropout_memory(std::string_view op, std::string_view out_name, const tensor_view<O, R>& out,
                           const tensor_view<std::uint8_t, R>& mask, std::string_view x_name,
                           const tensor_view<X, R>& x) {
    expect_distinct_elements(op, out_name, out);
    expect_in_place_or_apart(op, out_name, out, x_name, x);
    expect_distinct_elements(op, "mask", mask);
    expect_apart(op, "mask", mask, x_name, x);
    expect_apart(op, "mask", mask, out_name, out);
}

// Clipping and scaling multiply each gradient element once: a gradient whose
// elements share an address (a stride of 0) would be multiplied several times.
template <class T>
void expect_distinct_grads(std::string_view op, std::span<const named_parameter<T>> params) {
    for (const auto& p : params)
        if (!distinct_elements(p.grad)) expect_distinct_elements(op, cat("the gradient of '", p.name, "'"), p.grad);
}

// The tensors of one parameter list are updated one after another, each as if
// it were alone: two of them in one memory (a tensor listed twice, a value over
// another parameter's gradient) would be stepped or scaled twice, or read after
// another's update. Checked over the values and gradients (`with_values`) or
// the gradients alone (scaling, clipping): the address ranges, sorted, are swept,
// each compared with the one reaching furthest so far. A parameter's own value
// and gradient are the step's check (expect_step_memory).
template <class T>
void expect_parameters_apart(std::string_view op, std::span<const named_parameter<T>> params, bool with_values) {
    struct entry {
        const char* lo;
        const char* hi;
        std::size_t i;
        bool grad;
    };
    std::vector<entry> entries;
    entries.reserve(2 * params.size());
    for (std::size_t i = 0; i < params.size(); ++i)
        for (const bool grad : {false, true}) {
            if (!grad && !with_values) continue;
            const tensor_view<T, 1>& v = grad ? params[i].grad : params[i].value;
            if (v.size() == 0) continue;
            const auto [lo, hi] = address_range(v);
            entries.push_back({lo, hi, i, grad});
        }
    const std::less<const char*> before;
    std::sort(entries.begin(), entries.end(), [&](const entry& a, const entry& b) { return before(a.lo, b.lo); });
    const entry* furthest = nullptr;
    for (const entry& e : entries) {
        if (furthest && furthest->i != e.i && before(e.lo, furthest->hi)) {
            const named_parameter<T>& a = params[furthest->i];
            const named_parameter<T>& b = params[e.i];
            if (overlaps(furthest->grad ? a.grad : a.value, e.grad ? b.grad : b.value))
                throw error(cat("tinyllm: ", op, ": the ", furthest->grad ? "gradient" : "value", " of parameter '",
                                a.name, "' (#", furthest->i, ") and the ", e.grad ? "gradient" : "value",
                                " of parameter '", b.name, "' (#", e.i,
                                ") share memory; each tensor of the list must have its own"));
        }
        if (!furthest || before(furthest->hi, e.hi)) furthest = &e;
    }
}

inline void expect_max_norm(double max_norm) {
    TINYLLM_EXPECT(max_norm > 0.0, "clip_grad_norm: max_norm = ", max_norm, " must be > 0 (infinity: no clipping)");
}

inline void expect_dropout(std::string_view op, float p) {
    TINYLLM_EXPECT(p >= 0.0f && p < 1.0f, op, ": p = ", p, " must be in [0, 1)");
}

inline void expect_schedule(const lr_schedule& s, std::int64_t step) {
    TINYLLM_EXPECT(std::isfinite(s.max_lr) && s.max_lr >= 0.0, "learning_rate_at: max_lr = ", s.max_lr,
                   " must be finite and >= 0");
    TINYLLM_EXPECT(std::isfinite(s.min_lr) && s.min_lr >= 0.0 && s.min_lr <= s.max_lr, "learning_rate_at: min_lr = ",
                   s.min_lr, " must be in [0, max_lr = ", s.max_lr, "]");
    TINYLLM_EXPECT(s.warmup_steps >= 0, "learning_rate_at: warmup_steps = ", s.warmup_steps, " must be >= 0");
    TINYLLM_EXPECT(s.decay_steps > s.warmup_steps, "learning_rate_at: decay_steps = ", s.decay_steps,
                   " must be > warmup_steps = ", s.warmup_steps);
    TINYLLM_EXPECT(step >= 0, "learning_rate_at: step = ", step, " must be >= 0");
}

// The clipping factor c = max_norm / (norm + 1e-6) as the float every gradient
// is multiplied by, or 1 when c >= 1 (no clipping). norm is finite.
inline float clip_coefficient(double norm, double max_norm) {
    const double c = max_norm / (norm + 1e-6);
    return c < 1.0 ? static_cast<float>(c) : 1.0f;
}

// "clip_grad_norm: at step 12, the gradient of 'wte' (parameter 0 of 5) holds nan at index 17; ..."
inline std::string non_finite_message(std::string_view op, std::int64_t step, std::string_view name, std::size_t i,
                                      std::size_t count, index_t index, float value) {
    return cat(op, ": at step ", step, ", the gradient of '", name, "' (parameter ", i, " of ", count, ") holds ",
               value, " at index ", index, ": the gradient norm is not finite, and nothing was scaled");
}

}  // namespace detail

// ---- The learning-rate schedule ---------------------------------------------------------

// The learning rate at step `step` (0, 1, 2, ...): linear warmup, cosine decay
// to min_lr, then min_lr (the formula at the top; nanoGPT's get_lr).
inline double learning_rate_at(const lr_schedule& s, std::int64_t step) {
    detail::expect_schedule(s, step);
    if (step < s.warmup_steps)
        return s.max_lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps + 1);
    if (step > s.decay_steps) return s.min_lr;
    const double ratio =
        static_cast<double>(step - s.warmup_steps) / static_cast<double>(s.decay_steps - s.warmup_steps);
    const double pi = 3.14159265358979323846;
    const double coeff = 0.5 * (1.0 + std::cos(pi * ratio));  // 1 -> 0
    return s.min_lr + coeff * (s.max_lr - s.min_lr);
}

// ---- Dropout's decision, shared by the CPU and the GPU ----------------------------------

// The Philox stream dropout draws from (fill_uniform uses 0, fill_normal 1).
inline constexpr std::uint64_t dropout_stream = 2;

// Keep an element whose random word is `bits`: iff its uniform in [0, 1) is >= p.
// (The uniforms are multiples of 2^-24, so an element is dropped with
// probability ceil(p 2^24) / 2^24, p to within 6e-8.)
TINYLLM_HOST_DEVICE bool dropout_keeps(std::uint32_t bits, float p) { return uniform_float(bits) >= p; }

// Is element i of a dropout call with (seed, offset) kept? Word offset + i of
// stream dropout_stream: the same answer on the CPU and in a kernel.
TINYLLM_HOST_DEVICE bool dropout_keep(std::uint64_t seed, std::uint64_t offset, std::uint64_t i, float p) {
    return dropout_keeps(philox_bits(seed, dropout_stream, offset + i), p);
}

// The factor kept elements are multiplied by, 1 / (1 - p) rounded to float.
inline float dropout_scale(float p) { return static_cast<float>(1.0 / (1.0 - static_cast<double>(p))); }

namespace detail {

// The per-step constants of an AdamW update (cpu::adamw_step's names).
struct adamw_coefficients {
    double shrink, b1, b1c, b2, b2c, step_size, bias_correction2_sqrt, eps;  // b1c = 1 - b1, b2c = 1 - b2
};

// sqrt of each of x[0..n), in place. A compiler will not vectorize std::sqrt
// in a loop unless told that it need not set errno (-fno-math-errno, a flag of
// the user's build, not of a header), so on x86-64 this loop takes two at a time
// with SSE2's sqrtpd (four with AVX's, below): the same correctly rounded
// results as std::sqrt.
inline void sqrt_in_place(double* x, index_t n) {
    index_t i = 0;
#if defined(__SSE2__) && !defined(__CUDACC__)
    for (; i + 2 <= n; i += 2) _mm_storeu_pd(x + i, _mm_sqrt_pd(_mm_loadu_pd(x + i)));
#endif
    for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

// One block (len <= 256) of cpu::adamw_step's loop on adjacent elements: the
// same operations in the same order, in three passes (the moments, the square
// roots, the update) so that each pass is a loop of vector instructions.
template <class SqrtInPlace>
[[gnu::always_inline]] inline void adamw_block(float* param, float* m, float* v, const float* grad, index_t len,
                                               const adamw_coefficients& k, const SqrtInPlace& sqrt_in_place_of) {
    double root[256];  // sqrt(v_i)
    for (index_t i = 0; i < len; ++i) {
        const double g = grad[i];
        m[i] = static_cast<float>(k.b1 * m[i] + k.b1c * g);
        v[i] = static_cast<float>(k.b2 * v[i] + k.b2c * g * g);
        root[i] = static_cast<double>(v[i]);
    }
    sqrt_in_place_of(root, len);
    for (index_t i = 0; i < len; ++i) {
        const double denom = root[i] / k.bias_correction2_sqrt + k.eps;
        param[i] = static_cast<float>(static_cast<double>(param[i]) * k.shrink -
                                      k.step_size * static_cast<double>(m[i]) / denom);
    }
}

// On x86-64 (GCC, Clang; not in code nvcc compiles) a second copy of the block
// for CPUs with AVX2, chosen at run time: four doubles per instruction instead of
// two. No FMA: a fused multiply-add rounds once where the reference rounds
// twice, and every copy gives the reference's bits. TINYLLM_NO_X86_DISPATCH
// keeps the SSE2 copy everywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(__NVCOMPILER) && \
    !defined(TINYLLM_NO_X86_DISPATCH)
#define TINYLLM_ADAMW_X86_DISPATCH 1
__attribute__((target("avx2"))) inline void sqrt_in_place_avx2(double* x, index_t n) {
    index_t i = 0;
    for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, _mm256_sqrt_pd(_mm256_loadu_pd(x + i)));
    for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}
__attribute__((target("avx2"))) inline void adamw_block_avx2(float* param, float* m, float* v, const float* grad,
                                                             index_t len, const adamw_coefficients& k) {
    adamw_block(param, m, v, grad, len, k, [](double* x, index_t n) { sqrt_in_place_avx2(x, n); });
}
#else
#define TINYLLM_ADAMW_X86_DISPATCH 0
#endif

// cpu::adamw_step's loop on adjacent elements, in blocks of 256 over
// cpu::num_threads() threads when `threaded`.
inline void adamw_update_contiguous(float* param, float* m, float* v, const float* grad, index_t n,
                                    const adamw_coefficients& k, [[maybe_unused]] bool threaded) {
    constexpr index_t block = 256;
    const index_t blocks = (n + block - 1) / block;
#if TINYLLM_ADAMW_X86_DISPATCH
    static const bool avx2 = __builtin_cpu_supports("avx2");
#endif
    TINYLLM_OMP(parallel for schedule(static) if (threaded) num_threads(cpu::num_threads()))
    for (index_t b = 0; b < blocks; ++b) {
        const index_t i0 = b * block, len = std::min(block, n - i0);
#if TINYLLM_ADAMW_X86_DISPATCH
        if (avx2) {
            adamw_block_avx2(param + i0, m + i0, v + i0, grad + i0, len, k);
            continue;
        }
#endif
        adamw_block(param + i0, m + i0, v + i0, grad + i0, len, k, [](double* x, index_t c) { sqrt_in_place(x, c); });
    }
}

}  // namespace detail

namespace cpu {

// ---- AdamW ------------------------------------------------------------------------------

// One AdamW step of one tensor: param, m and v (same size) are updated in
// place from grad; the four are apart in memory, and each written one has an
// address per element. step: the number of this step, from 1 (torch's
// state['step'] after its increment). decay = false skips the weight decay.
inline void adamw_step(tensor_view<float, 1> param, tensor_view<float, 1> m, tensor_view<float, 1> v,
                       tensor_view<const float, 1> grad, const adamw_config& config, std::int64_t step,
                       bool decay = true, std::string_view name = "") {
    tinyllm::detail::expect_adamw_config(config);
    tinyllm::detail::expect_step("adamw_step", step);
    const index_t n = param.extent(0);
    tinyllm::detail::expect_same_size("adamw_step", name, "value", n, "grad", grad.extent(0));
    tinyllm::detail::expect_same_size("adamw_step", name, "value", n, "m", m.extent(0));
    tinyllm::detail::expect_same_size("adamw_step", name, "value", n, "v", v.extent(0));
    tinyllm::detail::expect_step_memory("adamw_step", name, param, grad, {{"m", m}, {"v", v}});

    const double lr = config.lr, b1 = config.beta1, b2 = config.beta2;
    const double shrink = 1.0 - lr * (decay ? config.weight_decay : 0.0);
    const double t = static_cast<double>(step);
    const double bias_correction1 = 1.0 - std::pow(b1, t);
    const double bias_correction2 = 1.0 - std::pow(b2, t);
    const double step_size = lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    // Each element on its own, over cpu::num_threads() threads for a large
    // tensor: the same result as in order.
    [[maybe_unused]] const bool threaded = n >= (index_t{1} << 16);
    const double b1c = 1.0 - b1, b2c = 1.0 - b2;
    if (param.stride(0) == 1 && m.stride(0) == 1 && v.stride(0) == 1 && grad.stride(0) == 1) {
        const tinyllm::detail::adamw_coefficients k{shrink, b1, b1c, b2, b2c, step_size, bias_correction2_sqrt,
                                                    config.eps};
        tinyllm::detail::adamw_update_contiguous(param.data(), m.data(), v.data(), grad.data(), n, k, threaded);
        return;
    }
    TINYLLM_OMP(parallel for schedule(static) if (threaded) num_threads(num_threads()))
    for (index_t i = 0; i < n; ++i) {
        const double g = grad(i);
        const double p = static_cast<double>(param(i)) * shrink;
        m(i) = static_cast<float>(b1 * m(i) + b1c * g);
        v(i) = static_cast<float>(b2 * v(i) + b2c * g * g);
        const double denom = std::sqrt(static_cast<double>(v(i))) / bias_correction2_sqrt + config.eps;
        param(i) = static_cast<float>(p - step_size * static_cast<double>(m(i)) / denom);
    }
}

// The AdamW state of one parameter: the moments and the steps taken.
struct adamw_state {
    std::string name;        // the parameter's (checked at each step)
    tensor<float, 1> m, v;   // zero at the start
    std::int64_t step = 0;   // steps taken
};

// A zero state for each parameter of the list.
inline std::vector<adamw_state> make_adamw_state(std::span<const named_parameter<float>> params) {
    std::vector<adamw_state> state(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
        state[i].name = params[i].name;
        state[i].m = tensor<float, 1>(extents<1>{params[i].value.extent(0)});
        state[i].v = tensor<float, 1>(extents<1>{params[i].value.extent(0)});
    }
    return state;
}

// One AdamW step of every parameter of a model; state[i] belongs to params[i].
inline void adamw_step(std::span<const named_parameter<float>> params, std::span<adamw_state> state,
                       const adamw_config& config) {
    tinyllm::detail::expect_adamw_config(config);
    tinyllm::detail::expect_state_list("adamw_step", params.size(), state.size());
    tinyllm::detail::expect_parameters_apart("adamw_step", params, true);
    for (std::size_t i = 0; i < params.size(); ++i) {
        tinyllm::detail::expect_state_name("adamw_step", i, params[i].name, state[i].name);
        tinyllm::detail::expect_same_size("adamw_step", params[i].name, "value", params[i].value.extent(0), "grad",
                                          params[i].grad.extent(0));
        tinyllm::detail::expect_same_size("adamw_step", params[i].name, "value", params[i].value.extent(0),
                                          "the state", state[i].m.extent(0));
        tinyllm::detail::expect_same_size("adamw_step", params[i].name, "value", params[i].value.extent(0),
                                          "the state", state[i].v.extent(0));
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
        adamw_step(params[i].value, state[i].m.view(), state[i].v.view(), params[i].grad, config, state[i].step + 1,
                   params[i].decay, params[i].name);
        ++state[i].step;
    }
}

// ---- SGD --------------------------------------------------------------------------------

// One SGD step of one tensor: param updated in place from grad; with momentum,
// `momentum_buffer` (same size) is the buffer b, set to the gradient when
// first_step and updated after, apart from param and grad. Without momentum
// it is unused and may be empty.
inline void sgd_step(tensor_view<float, 1> param, tensor_view<float, 1> momentum_buffer,
                     tensor_view<const float, 1> grad, const sgd_config& config, bool first_step, bool decay = true,
                     std::string_view name = "") {
    tinyllm::detail::expect_sgd_config(config);
    const index_t n = param.extent(0);
    tinyllm::detail::expect_same_size("sgd_step", name, "value", n, "grad", grad.extent(0));
    const bool use_momentum = config.momentum != 0.0;
    if (use_momentum)
        tinyllm::detail::expect_same_size("sgd_step", name, "value", n, "the momentum buffer",
                                          momentum_buffer.extent(0));
    const tensor_view<float, 1> buffer = use_momentum ? momentum_buffer : tensor_view<float, 1>{};
    tinyllm::detail::expect_step_memory("sgd_step", name, param, grad, {{"the momentum buffer", buffer}});
    const double wd = decay ? config.weight_decay : 0.0, mu = config.momentum;
    for (index_t i = 0; i < n; ++i) {
        const double p = param(i);
        double g = grad(i);
        if (wd != 0.0) g += wd * p;  // as PyTorch: no term at all without decay (0 * inf would be NaN)
        if (use_momentum) {
            const double b = first_step ? g : mu * momentum_buffer(i) + (1.0 - config.dampening) * g;
            momentum_buffer(i) = static_cast<float>(b);
            g = config.nesterov ? g + mu * static_cast<double>(momentum_buffer(i)) : static_cast<double>(momentum_buffer(i));
        }
        param(i) = static_cast<float>(p - config.lr * g);
    }
}

// The SGD state of one parameter: the momentum buffer (empty without momentum).
struct sgd_state {
    std::string name;
    tensor<float, 1> momentum_buffer;
    std::int64_t step = 0;
};

// A state for each parameter; the buffers are allocated only when config.momentum != 0.
inline std::vector<sgd_state> make_sgd_state(std::span<const named_parameter<float>> params, const sgd_config& config) {
    std::vector<sgd_state> state(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
        state[i].name = params[i].name;
        if (config.momentum != 0.0) state[i].momentum_buffer = tensor<float, 1>(extents<1>{params[i].value.extent(0)});
    }
    return state;
}

// One SGD step of every parameter of a model; state[i] belongs to params[i].
inline void sgd_step(std::span<const named_parameter<float>> params, std::span<sgd_state> state,
                     const sgd_config& config) {
    tinyllm::detail::expect_sgd_config(config);
    tinyllm::detail::expect_state_list("sgd_step", params.size(), state.size());
    tinyllm::detail::expect_parameters_apart("sgd_step", params, true);
    for (std::size_t i = 0; i < params.size(); ++i) {
        tinyllm::detail::expect_state_name("sgd_step", i, params[i].name, state[i].name);
        tinyllm::detail::expect_same_size("sgd_step", params[i].name, "value", params[i].value.extent(0), "grad",
                                          params[i].grad.extent(0));
        if (config.momentum != 0.0)
            tinyllm::detail::expect_same_size("sgd_step", params[i].name, "value", params[i].value.extent(0),
                                              "the momentum buffer", state[i].momentum_buffer.extent(0));
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
        sgd_step(params[i].value, state[i].momentum_buffer.view(), params[i].grad, config, state[i].step == 0,
                 params[i].decay, params[i].name);
        ++state[i].step;
    }
}

// ---- Gradient norm, clipping, accumulation ----------------------------------------------

// The global L2 norm of every gradient of the list, in double. A NaN or
// infinity throws, naming the parameter, the index and `step` (the training
// step, for the message only).
inline double grad_norm(std::span<const named_parameter<float>> params, std::int64_t step = 0,
                        std::string_view op = "grad_norm") {
    double sum = 0.0;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const tensor_view<float, 1> g = params[i].grad;
        for (index_t j = 0; j < g.extent(0); ++j) {
            const float x = g(j);
            if (!std::isfinite(x))
                throw error("tinyllm: " +
                            tinyllm::detail::non_finite_message(op, step, params[i].name, i, params.size(), j, x));
            sum += static_cast<double>(x) * x;
        }
    }
    return std::sqrt(sum);
}

// torch.nn.utils.clip_grad_norm_: the global norm of the gradients; when
// max_norm / (norm + 1e-6) < 1 every gradient is multiplied by that factor
// (as a float). Returns the norm before clipping. A NaN or infinity in a
// gradient throws, naming the parameter, the index and `step`, before any
// gradient changes. max_norm = infinity computes the norm only.
inline double clip_grad_norm(std::span<const named_parameter<float>> params, double max_norm, std::int64_t step = 0) {
    tinyllm::detail::expect_max_norm(max_norm);
    tinyllm::detail::expect_distinct_grads("clip_grad_norm", params);
    tinyllm::detail::expect_parameters_apart("clip_grad_norm", params, false);
    const double norm = grad_norm(params, step, "clip_grad_norm");
    const float c = tinyllm::detail::clip_coefficient(norm, max_norm);
    if (c < 1.0f)
        for (const auto& p : params)
            for (index_t j = 0; j < p.grad.extent(0); ++j) p.grad(j) = p.grad(j) * c;
    return norm;
}

// Multiply every gradient by `factor` (rounded to float, as PyTorch's g.mul_(factor)):
// 1.0 / K after accumulating K micro-batches.
inline void scale_grads(std::span<const named_parameter<float>> params, double factor) {
    TINYLLM_EXPECT(std::isfinite(factor) && std::isfinite(static_cast<float>(factor)), "scale_grads: factor = ", factor,
                   " must be finite as a float");
    tinyllm::detail::expect_distinct_grads("scale_grads", params);
    tinyllm::detail::expect_parameters_apart("scale_grads", params, false);
    const float f = static_cast<float>(factor);
    for (const auto& p : params)
        for (index_t j = 0; j < p.grad.extent(0); ++j) p.grad(j) = p.grad(j) * f;
}

// Set every gradient to 0: the start of a batch whose backward passes accumulate.
inline void zero_grads(std::span<const named_parameter<float>> params) {
    for (const auto& p : params)
        for (index_t j = 0; j < p.grad.extent(0); ++j) p.grad(j) = 0.0f;
}

// ---- Dropout ----------------------------------------------------------------------------

// Training-time dropout: out[i] = x[i] / (1 - p) if element i is kept
// (dropout_keep(seed, offset, i, p)), else 0; i is the row-major index. mask
// (same shape, or empty {}) receives 1 for kept, 0 for dropped. out may be x
// (exactly; otherwise apart from it). Any rank; contiguous tensors.
template <std::size_t R>
void dropout(tensor_view<float, R> out, std::type_identity_t<tensor_view<std::uint8_t, R>> mask,
             std::type_identity_t<tensor_view<const float, R>> x, float p, std::uint64_t seed,
             std::uint64_t offset = 0) {
    tinyllm::detail::expect_dropout("dropout", p);
    expect_equal_shapes(out, x, "dropout", "out", "x");
    if (mask.size() != 0) expect_equal_shapes(mask, x, "dropout", "mask", "x");
    TINYLLM_EXPECT(out.is_contiguous() && x.is_contiguous() && (mask.size() == 0 || mask.is_contiguous()),
                   "dropout: out, mask and x must be contiguous; their strides are ", to_string(out.strides()), ", ",
                   to_string(mask.strides()), " and ", to_string(x.strides()));
    tinyllm::detail::expect_dropout_memory("dropout", "out", out, mask, "x", x);
    const float scale = dropout_scale(p);
    const index_t n = x.size();
    for (index_t i = 0; i < n; ++i) {
        const bool keep = dropout_keep(seed, offset, static_cast<std::uint64_t>(i), p);
        out.data()[i] = keep ? x.data()[i] * scale : 0.0f;
        if (mask.size() != 0) mask.data()[i] = keep ? 1 : 0;
    }
}

// The backward of dropout(out, mask, x, p, seed, offset): dx = dout / (1 - p)
// where the forward kept, 0 where it dropped — the decisions regenerated from
// (seed, offset), no mask needed. dx may be dout (exactly; otherwise apart from it).
template <std::size_t R>
void dropout_backward(tensor_view<float, R> dx, std::type_identity_t<tensor_view<const float, R>> dout, float p,
                      std::uint64_t seed, std::uint64_t offset = 0) {
    tinyllm::detail::expect_dropout("dropout_backward", p);
    expect_equal_shapes(dx, dout, "dropout_backward", "dx", "dout");
    tinyllm::detail::expect_dropout_memory("dropout_backward", "dx", dx, tensor_view<std::uint8_t, R>{}, "dout", dout);
    dropout(dx, {}, dout, p, seed, offset);
}

}  // namespace cpu
}  // namespace tinyllm
