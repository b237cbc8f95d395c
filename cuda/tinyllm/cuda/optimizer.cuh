// tinyllm/cuda/optimizer.cuh — the optimizer step on the GPU: fused AdamW
// (float master weights for bfloat16 parameters), SGD with momentum, the
// global gradient norm and clipping, gradient scaling, and dropout drawn from
// Philox. Same meaning, configurations and checks as <tinyllm/optimizer.hpp>
// (read it for the math); the launchers call its detail:: checks, so a bad lr,
// beta, eps, p or size gets the CPU's message before any launch.
//
// AdamW, v1 fused: one grid-stride pass, one thread per element, reads
// p (or its float master copy), g, m, v and writes p, m, v — 16 bytes read
// and 12 written per float element, the least an AdamW step can move; the
// per-step constants (1 - lr wd, lr / (1 - beta1^t), sqrt(1 - beta2^t)) are
// computed once on the host in double and passed as floats. All arithmetic is
// float (the CPU reference's is double: agreement within a few float ulps).
//
// bfloat16 parameters. A bfloat16 has 8 significant bits: an update smaller
// than 2^-9 of the weight rounds away and training stalls. So a bfloat16
// parameter has a float master copy (`master`, same size): the kernel updates
// the master in float and writes the parameter as its bfloat16 rounding (to
// nearest even). The forward and backward read the bfloat16 copy; the
// gradient is bfloat16 too (as the backward kernels write it), m and v are
// float. A bfloat16 parameter without a master is an error.
//
// Global gradient norm (clip_grad_norm, grad_norm): no float atomics, so the
// result does not depend on the schedule. Per tensor a fixed number of blocks
// G = min(ceil(n / 256), 1024) (a function of n only) each sums the squares of
// its grid-stride elements in double, and reduces them in shared memory by a
// fixed tree; each block also records its first non-finite index. The host
// copies the G partial sums of every tensor back and adds them in order, in
// double. It returns the norm, so it synchronizes the stream anyway; a NaN or
// infinity throws with the parameter, index, value and step (the CPU's
// message), before any gradient changes. When c = max_norm / (norm + 1e-6) < 1
// a scaling kernel multiplies every gradient by c as a float — the CPU's
// float, so the clipped gradients are the CPU's bit for bit for the same norm.
//
// Dropout: element i of a call is kept iff tinyllm::dropout_keep(seed, offset,
// i, p) — one Philox word per element, counter offset + i of stream
// dropout_stream. A thread takes one Philox block (4 counters) and decides the
// up to 4 elements it covers with tinyllm::dropout_keeps, the function the CPU
// loop calls: the masks are identical to the CPU's, and so are the outputs
// (x * scale is one correctly rounded multiply on both). The backward is the
// forward applied to dout with the same (seed, offset).
//
// Next rungs (not yet): 16-byte loads; one launch for all of a model's
// tensors (a table of pointers, as apex's multi_tensor_apply) instead of one
// per tensor; a norm that stays on the device (no synchronization) with the
// clipping factor read by the AdamW kernel.
//
// Tensors are device views, contiguous (stride 1). T = float or
// tinyllm::bfloat16. Every launcher takes a cudaStream_t last (adamw_step and
// sgd_step then, optionally, the parameter's name for their messages).
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/optimizer.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tinyllm::cuda {
namespace detail {

inline constexpr int optimizer_threads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, at most 4096.
inline int optimizer_blocks(index_t n) {
    const index_t blocks = ceil_div<index_t>(n, optimizer_threads);
    return static_cast<int>(blocks < 4096 ? blocks : 4096);
}

template <class T>
void expect_parameter_type() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, bfloat16>,
                  "tinyllm::cuda: optimizer parameters must be float or tinyllm::bfloat16");
}

template <class View>
void expect_flat(std::string_view op, std::string_view name, std::string_view what, const View& v) {
    TINYLLM_EXPECT(v.extent(0) <= 1 || v.stride(0) == 1, op, ": parameter '", name, "': ", what,
                   " must be contiguous; its stride is ", v.stride(0));
}

// bfloat16 needs its float master copy (same size); float has none.
template <class T>
void expect_master(std::string_view op, std::string_view name, index_t n, tensor_view<float, 1> master) {
    if constexpr (std::is_same_v<T, float>) {
        TINYLLM_EXPECT(master.size() == 0, op, ": parameter '", name,
                       "' is float: it is its own master copy; pass master = {} (got ", master.extent(0),
                       " elements)");
    } else {
        TINYLLM_EXPECT(master.size() != 0, op, ": parameter '", name,
                       "' is bfloat16 and needs a float master copy (master = {}): updates below 2^-9 of a weight "
                       "would round away in bfloat16");
        tinyllm::detail::expect_same_size(op, name, "value", n, "master", master.extent(0));
        expect_flat(op, name, "master", master);
    }
}

// The per-step constants of AdamW, computed in double and rounded to float.
struct adamw_factors {
    float shrink;                 // 1 - lr wd (1 without decay)
    float beta1, one_minus_beta1;
    float beta2, one_minus_beta2;
    float step_size;              // lr / (1 - beta1^t)
    float bias_correction2_sqrt;  // sqrt(1 - beta2^t)
    float eps;
};

inline adamw_factors make_adamw_factors(const adamw_config& c, std::int64_t step, bool decay) {
    const double t = static_cast<double>(step);
    // lr / (1 - beta1^t) grows as beta1 nears 1: a float too (the settings themselves are, by
    // expect_adamw_config), or the kernel's step would be inf and the parameters NaN.
    const double step_size = c.lr / (1.0 - std::pow(c.beta1, t));
    TINYLLM_EXPECT(std::isfinite(static_cast<float>(step_size)), "adamw_step: lr / (1 - beta1^t) = ", step_size,
                   " at step ", step, " (lr = ", c.lr, ", beta1 = ", c.beta1, ") is not finite as a float");
    return {static_cast<float>(1.0 - c.lr * (decay ? c.weight_decay : 0.0)),
            static_cast<float>(c.beta1),
            static_cast<float>(1.0 - c.beta1),
            static_cast<float>(c.beta2),
            static_cast<float>(1.0 - c.beta2),
            static_cast<float>(step_size),
            static_cast<float>(std::sqrt(1.0 - std::pow(c.beta2, t))),
            static_cast<float>(c.eps)};
}

// v1 fused AdamW: one pass over p (or master), g, m, v.
template <class T>
__global__ void adamw_kernel(T* param, float* master, float* m, float* v, const T* grad, index_t n, adamw_factors f) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        const float g = to_float(grad[i]);
        float p = master ? master[i] : to_float(param[i]);
        p *= f.shrink;
        const float mi = f.beta1 * m[i] + f.one_minus_beta1 * g;
        const float vi = f.beta2 * v[i] + f.one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        p -= f.step_size * (mi / (sqrtf(vi) / f.bias_correction2_sqrt + f.eps));
        if (master) master[i] = p;
        param[i] = store_as<T>(p);
    }
}

struct sgd_factors {
    float lr, weight_decay, momentum, one_minus_dampening;
    bool use_momentum, nesterov, first_step;
};

template <class T>
__global__ void sgd_kernel(T* param, float* master, float* buffer, const T* grad, index_t n, sgd_factors f) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x) {
        float g = to_float(grad[i]);
        float p = master ? master[i] : to_float(param[i]);
        if (f.weight_decay != 0.0f) g += f.weight_decay * p;
        if (f.use_momentum) {
            const float b = f.first_step ? g : f.momentum * buffer[i] + f.one_minus_dampening * g;
            buffer[i] = b;
            g = f.nesterov ? g + f.momentum * b : b;
        }
        p -= f.lr * g;
        if (master) master[i] = p;
        param[i] = store_as<T>(p);
    }
}

// Blocks of the gradient-norm kernel for a tensor of n elements: a function of n only.
inline int grad_norm_blocks(index_t n) {
    const index_t blocks = ceil_div<index_t>(n, optimizer_threads);
    return static_cast<int>(blocks < 1024 ? blocks : 1024);
}

// Per block: the sum of squares (double) of its grid-stride elements, and the
// smallest index of a non-finite one (n if none), reduced by a fixed tree.
template <class T, int Threads>
__global__ void grad_norm_kernel(double* sums, index_t* first_bad, const T* grad, index_t n) {
    __shared__ double s[Threads];
    __shared__ index_t bad[Threads];
    double acc = 0.0;
    index_t first = n;
    for (index_t i = blockIdx.x * static_cast<index_t>(Threads) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * Threads) {
        const float x = to_float(grad[i]);
        if (::isfinite(x)) {
            acc += static_cast<double>(x) * x;
        } else if (i < first) {
            first = i;
        }
    }
    s[threadIdx.x] = acc;
    bad[threadIdx.x] = first;
    __syncthreads();
    for (int half = Threads / 2; half > 0; half /= 2) {
        if (static_cast<int>(threadIdx.x) < half) {
            s[threadIdx.x] += s[threadIdx.x + half];
            if (bad[threadIdx.x + half] < bad[threadIdx.x]) bad[threadIdx.x] = bad[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = s[0];
        first_bad[blockIdx.x] = bad[0];
    }
}

template <class T>
__global__ void scale_kernel(T* x, index_t n, float factor) {
    for (index_t i = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<index_t>(gridDim.x) * blockDim.x)
        x[i] = store_as<T>(to_float(x[i]) * factor);
}

// Dropout: thread t takes Philox block first_block + t (grid-stride), whose 4
// words are the counters 4 block .. 4 block + 3, i.e. elements counter - offset.
template <class T>
__global__ void dropout_kernel(T* out, std::uint8_t* mask, const T* x, index_t n, float p, float scale,
                               std::uint64_t seed, std::uint64_t offset) {
    const std::uint64_t first_block = offset >> 2;
    const std::uint64_t blocks = ((offset + static_cast<std::uint64_t>(n) - 1) >> 2) - first_block + 1;
    for (std::uint64_t b = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; b < blocks;
         b += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
        const std::uint64_t block = first_block + b;
        const philox_counter words = philox_block(seed, dropout_stream, block);
        for (int j = 0; j < 4; ++j) {
            const std::uint64_t counter = 4 * block + static_cast<std::uint64_t>(j);
            if (counter < offset || counter - offset >= static_cast<std::uint64_t>(n)) continue;
            const auto i = static_cast<index_t>(counter - offset);
            const bool keep = dropout_keeps(words.v[j], p);
            out[i] = store_as<T>(keep ? to_float(x[i]) * scale : 0.0f);
            if (mask) mask[i] = keep ? 1 : 0;
        }
    }
}

// The global norm's partial sums for every parameter, copied back and added on
// the host in order. Throws (naming op) on a non-finite element.
template <class T>
double global_grad_norm(std::span<const named_parameter<T>> params, std::int64_t step, std::string_view op,
                        cudaStream_t stream) {
    expect_parameter_type<T>();
    std::vector<std::size_t> first(params.size() + 1, 0);
    for (std::size_t i = 0; i < params.size(); ++i) {
        expect_flat(op, params[i].name, "grad", params[i].grad);
        first[i + 1] = first[i] + static_cast<std::size_t>(grad_norm_blocks(params[i].grad.extent(0)));
    }
    const std::size_t blocks = first.back();
    if (blocks == 0) return 0.0;
    auto* sums = static_cast<double*>(stream_workspace(blocks * (sizeof(double) + sizeof(index_t)), stream));
    auto* bad = reinterpret_cast<index_t*>(sums + blocks);
    for (std::size_t i = 0; i < params.size(); ++i) {
        const index_t n = params[i].grad.extent(0);
        if (n == 0) continue;
        launch(grad_norm_kernel<T, optimizer_threads>, grad_norm_blocks(n), optimizer_threads, 0, stream,
               sums + first[i], bad + first[i], params[i].grad.data(), n);
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
    std::vector<double> host_sums(blocks);
    std::vector<index_t> host_bad(blocks);
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(host_sums.data(), sums, blocks * sizeof(double), cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(host_bad.data(), bad, blocks * sizeof(index_t), cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    double total = 0.0;
    for (std::size_t i = 0; i < params.size(); ++i) {
        const index_t n = params[i].grad.extent(0);
        index_t first_bad = n;
        for (std::size_t b = first[i]; b < first[i + 1]; ++b) {
            total += host_sums[b];
            if (host_bad[b] < first_bad) first_bad = host_bad[b];
        }
        if (first_bad < n) {
            T value;
            TINYLLM_CUDA_CHECK(cudaMemcpy(&value, params[i].grad.data() + first_bad, sizeof(T), cudaMemcpyDeviceToHost));
            throw error("tinyllm: " + tinyllm::detail::non_finite_message(op, step, params[i].name, i, params.size(),
                                                                           first_bad, to_float(value)));
        }
    }
    return std::sqrt(total);
}

}  // namespace detail

// ---- AdamW ------------------------------------------------------------------------------

// One AdamW step of one tensor on the device: param (float, or bfloat16 with
// its float `master`), m and v (float) updated in place from grad (param's
// type). step: the number of this step, from 1. For float, pass master = {}.
// The five are apart in memory (tinyllm::detail::expect_step_memory).
template <class T>
void adamw_step(tensor_view<T, 1> param, tensor_view<float, 1> master, tensor_view<float, 1> m, tensor_view<float, 1> v,
                detail::const_view<T, 1> grad, const adamw_config& config, std::int64_t step, bool decay = true,
                cudaStream_t stream = nullptr, std::string_view name = "") {
    detail::expect_parameter_type<T>();
    tinyllm::detail::expect_adamw_config(config);
    tinyllm::detail::expect_step("adamw_step", step);
    const index_t n = param.extent(0);
    tinyllm::detail::expect_same_size("adamw_step", name, "value", n, "grad", grad.extent(0));
    tinyllm::detail::expect_same_size("adamw_step", name, "value", n, "m", m.extent(0));
    tinyllm::detail::expect_same_size("adamw_step", name, "value", n, "v", v.extent(0));
    detail::expect_master<T>("adamw_step", name, n, master);
    detail::expect_flat("adamw_step", name, "value", param);
    detail::expect_flat("adamw_step", name, "grad", grad);
    detail::expect_flat("adamw_step", name, "m", m);
    detail::expect_flat("adamw_step", name, "v", v);
    tinyllm::detail::expect_step_memory("adamw_step", name, param, grad, {{"master", master}, {"m", m}, {"v", v}});
    if (n == 0) return;
    launch(detail::adamw_kernel<T>, detail::optimizer_blocks(n), detail::optimizer_threads, 0, stream, param.data(),
           master.size() ? master.data() : nullptr, m.data(), v.data(), grad.data(), n,
           detail::make_adamw_factors(config, step, decay));
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The float version with the CPU's signature (no master).
template <class = void>  // compiled only where called (launch.cuh)
inline void adamw_step(tensor_view<float, 1> param, tensor_view<float, 1> m, tensor_view<float, 1> v,
                       tensor_view<const float, 1> grad, const adamw_config& config, std::int64_t step,
                       bool decay = true, cudaStream_t stream = nullptr) {
    adamw_step<float>(param, {}, m, v, grad, config, step, decay, stream);
}

// The AdamW state of one parameter, in device memory.
struct adamw_state {
    std::string name;
    device_buffer<float> m, v;  // zero at the start
    std::int64_t step = 0;
};

// A zero state for each parameter of the list.
template <class T>
std::vector<adamw_state> make_adamw_state(std::span<const named_parameter<T>> params, cudaStream_t stream = nullptr) {
    std::vector<adamw_state> state(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
        const auto n = static_cast<std::size_t>(params[i].value.extent(0));
        state[i].name = params[i].name;
        state[i].m = device_buffer<float>(n);
        state[i].v = device_buffer<float>(n);
        if (n) {
            TINYLLM_CUDA_CHECK(cudaMemsetAsync(state[i].m.data(), 0, n * sizeof(float), stream));
            TINYLLM_CUDA_CHECK(cudaMemsetAsync(state[i].v.data(), 0, n * sizeof(float), stream));
        }
    }
    return state;
}
template <class T>
std::vector<adamw_state> make_adamw_state(const std::vector<named_parameter<T>>& params, cudaStream_t stream = nullptr) {
    return make_adamw_state(std::span<const named_parameter<T>>(params), stream);
}

// One AdamW step of every parameter of a model (one launch per tensor); state[i] belongs to params[i].
template <class T>
void adamw_step(std::span<const named_parameter<T>> params, std::span<adamw_state> state, const adamw_config& config,
                cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_adamw_config(config);
    tinyllm::detail::expect_state_list("adamw_step", params.size(), state.size());
    tinyllm::detail::expect_parameters_apart("adamw_step", params, true);
    for (std::size_t i = 0; i < params.size(); ++i) {
        tinyllm::detail::expect_state_name("adamw_step", i, params[i].name, state[i].name);
        tinyllm::detail::expect_same_size("adamw_step", params[i].name, "value", params[i].value.extent(0),
                                          "the state", static_cast<index_t>(state[i].m.size()));
        tinyllm::detail::expect_same_size("adamw_step", params[i].name, "value", params[i].value.extent(0),
                                          "the state", static_cast<index_t>(state[i].v.size()));
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
        const auto n = static_cast<index_t>(state[i].m.size());
        adamw_step<T>(params[i].value, params[i].master, state[i].m.view(extents<1>{n}), state[i].v.view(extents<1>{n}),
                      params[i].grad, config, state[i].step + 1, params[i].decay, stream, params[i].name);
        ++state[i].step;
    }
}
template <class T>
void adamw_step(const std::vector<named_parameter<T>>& params, std::vector<adamw_state>& state,
                const adamw_config& config, cudaStream_t stream = nullptr) {
    adamw_step(std::span<const named_parameter<T>>(params), std::span<adamw_state>(state), config, stream);
}

// ---- SGD --------------------------------------------------------------------------------

// One SGD step of one tensor on the device (the CPU's sgd_step; master as in adamw_step).
template <class T>
void sgd_step(tensor_view<T, 1> param, tensor_view<float, 1> master, tensor_view<float, 1> momentum_buffer,
              detail::const_view<T, 1> grad, const sgd_config& config, bool first_step, bool decay = true,
              cudaStream_t stream = nullptr, std::string_view name = "") {
    detail::expect_parameter_type<T>();
    tinyllm::detail::expect_sgd_config(config);
    const index_t n = param.extent(0);
    tinyllm::detail::expect_same_size("sgd_step", name, "value", n, "grad", grad.extent(0));
    const bool use_momentum = config.momentum != 0.0;
    if (use_momentum) {
        tinyllm::detail::expect_same_size("sgd_step", name, "value", n, "the momentum buffer", momentum_buffer.extent(0));
        detail::expect_flat("sgd_step", name, "the momentum buffer", momentum_buffer);
    }
    detail::expect_master<T>("sgd_step", name, n, master);
    detail::expect_flat("sgd_step", name, "value", param);
    detail::expect_flat("sgd_step", name, "grad", grad);
    const tensor_view<float, 1> buffer = use_momentum ? momentum_buffer : tensor_view<float, 1>{};
    tinyllm::detail::expect_step_memory("sgd_step", name, param, grad,
                                        {{"master", master}, {"the momentum buffer", buffer}});
    if (n == 0) return;
    const detail::sgd_factors f{static_cast<float>(config.lr), static_cast<float>(decay ? config.weight_decay : 0.0),
                                static_cast<float>(config.momentum), static_cast<float>(1.0 - config.dampening),
                                use_momentum, config.nesterov, first_step};
    launch(detail::sgd_kernel<T>, detail::optimizer_blocks(n), detail::optimizer_threads, 0, stream, param.data(),
           master.size() ? master.data() : nullptr, use_momentum ? momentum_buffer.data() : nullptr, grad.data(), n, f);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// The float version with the CPU's signature.
template <class = void>  // compiled only where called (launch.cuh)
inline void sgd_step(tensor_view<float, 1> param, tensor_view<float, 1> momentum_buffer,
                     tensor_view<const float, 1> grad, const sgd_config& config, bool first_step, bool decay = true,
                     cudaStream_t stream = nullptr) {
    sgd_step<float>(param, {}, momentum_buffer, grad, config, first_step, decay, stream);
}

// ---- Gradient norm, clipping, accumulation ----------------------------------------------

// The global L2 norm of every gradient of the list (deterministic, see the top);
// synchronizes the stream. A NaN or infinity throws, naming the parameter, the
// index and `step`.
template <class T>
double grad_norm(std::span<const named_parameter<T>> params, std::int64_t step = 0, cudaStream_t stream = nullptr) {
    return detail::global_grad_norm(params, step, "grad_norm", stream);
}
template <class T>
double grad_norm(const std::vector<named_parameter<T>>& params, std::int64_t step = 0, cudaStream_t stream = nullptr) {
    return grad_norm(std::span<const named_parameter<T>>(params), step, stream);
}

// torch.nn.utils.clip_grad_norm_ on the device: returns the norm before
// clipping; when max_norm / (norm + 1e-6) < 1 every gradient is multiplied by
// it (as a float). Synchronizes the stream; nothing is scaled after a NaN or infinity.
template <class T>
double clip_grad_norm(std::span<const named_parameter<T>> params, double max_norm, std::int64_t step = 0,
                      cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_max_norm(max_norm);
    tinyllm::detail::expect_parameters_apart("clip_grad_norm", params, false);
    const double norm = detail::global_grad_norm(params, step, "clip_grad_norm", stream);
    const float c = tinyllm::detail::clip_coefficient(norm, max_norm);
    if (c < 1.0f) {
        for (const auto& p : params) {
            const index_t n = p.grad.extent(0);
            if (n == 0) continue;
            launch(detail::scale_kernel<T>, detail::optimizer_blocks(n), detail::optimizer_threads, 0, stream,
                   p.grad.data(), n, c);
            TINYLLM_CUDA_CHECK_LAUNCH();
        }
    }
    return norm;
}
template <class T>
double clip_grad_norm(const std::vector<named_parameter<T>>& params, double max_norm, std::int64_t step = 0,
                      cudaStream_t stream = nullptr) {
    return clip_grad_norm(std::span<const named_parameter<T>>(params), max_norm, step, stream);
}

// Multiply every gradient by `factor` (as a float): 1.0 / K after K accumulated micro-batches.
template <class T>
void scale_grads(std::span<const named_parameter<T>> params, double factor, cudaStream_t stream = nullptr) {
    detail::expect_parameter_type<T>();
    TINYLLM_EXPECT(std::isfinite(factor) && std::isfinite(static_cast<float>(factor)), "scale_grads: factor = ", factor,
                   " must be finite as a float");
    tinyllm::detail::expect_parameters_apart("scale_grads", params, false);
    for (const auto& p : params) {
        detail::expect_flat("scale_grads", p.name, "grad", p.grad);
        const index_t n = p.grad.extent(0);
        if (n == 0) continue;
        launch(detail::scale_kernel<T>, detail::optimizer_blocks(n), detail::optimizer_threads, 0, stream,
               p.grad.data(), n, static_cast<float>(factor));
        TINYLLM_CUDA_CHECK_LAUNCH();
    }
}
template <class T>
void scale_grads(const std::vector<named_parameter<T>>& params, double factor, cudaStream_t stream = nullptr) {
    scale_grads(std::span<const named_parameter<T>>(params), factor, stream);
}

// Set every gradient to 0.
template <class T>
void zero_grads(std::span<const named_parameter<T>> params, cudaStream_t stream = nullptr) {
    detail::expect_parameter_type<T>();
    for (const auto& p : params) {
        detail::expect_flat("zero_grads", p.name, "grad", p.grad);
        if (p.grad.extent(0) > 0)
            TINYLLM_CUDA_CHECK(cudaMemsetAsync(p.grad.data(), 0, static_cast<std::size_t>(p.grad.extent(0)) * sizeof(T), stream));
    }
}
template <class T>
void zero_grads(const std::vector<named_parameter<T>>& params, cudaStream_t stream = nullptr) {
    zero_grads(std::span<const named_parameter<T>>(params), stream);
}

// ---- Dropout ----------------------------------------------------------------------------

// cpu::dropout on the device: out[i] = x[i] / (1 - p) where kept, 0 where
// dropped, the same elements as the CPU; mask (or {}) gets 1 / 0. out may be x
// (exactly: each thread reads x[i] before it writes out[i]; otherwise apart from it).
template <class T, std::size_t R>
void dropout(tensor_view<T, R> out, std::type_identity_t<tensor_view<std::uint8_t, R>> mask,
             std::type_identity_t<tensor_view<const T, R>> x, float p, std::uint64_t seed, std::uint64_t offset = 0,
             cudaStream_t stream = nullptr) {
    detail::expect_parameter_type<T>();
    tinyllm::detail::expect_dropout("dropout", p);
    expect_equal_shapes(out, x, "dropout", "out", "x");
    if (mask.size() != 0) expect_equal_shapes(mask, x, "dropout", "mask", "x");
    TINYLLM_EXPECT(out.is_contiguous() && x.is_contiguous() && (mask.size() == 0 || mask.is_contiguous()),
                   "dropout: out, mask and x must be contiguous; their strides are ", to_string(out.strides()), ", ",
                   to_string(mask.strides()), " and ", to_string(x.strides()));
    tinyllm::detail::expect_dropout_memory("dropout", "out", out, mask, "x", x);
    const index_t n = x.size();
    if (n == 0) return;
    const std::uint64_t blocks = ((offset + static_cast<std::uint64_t>(n) - 1) >> 2) - (offset >> 2) + 1;
    launch(detail::dropout_kernel<T>, detail::optimizer_blocks(static_cast<index_t>(blocks)),
           detail::optimizer_threads, 0, stream, out.data(), mask.size() ? mask.data() : nullptr, x.data(), n, p,
           dropout_scale(p), seed, offset);
    TINYLLM_CUDA_CHECK_LAUNCH();
}

// cpu::dropout_backward on the device: dx = dout / (1 - p) where the forward
// kept, 0 where it dropped (decisions regenerated from seed and offset). dx may be
// dout (exactly; otherwise apart from it).
template <class T, std::size_t R>
void dropout_backward(tensor_view<T, R> dx, std::type_identity_t<tensor_view<const T, R>> dout, float p,
                      std::uint64_t seed, std::uint64_t offset = 0, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_dropout("dropout_backward", p);
    expect_equal_shapes(dx, dout, "dropout_backward", "dx", "dout");
    tinyllm::detail::expect_dropout_memory("dropout_backward", "dx", dx, tensor_view<std::uint8_t, R>{}, "dout", dout);
    dropout<T, R>(dx, {}, dout, p, seed, offset, stream);
}

}  // namespace tinyllm::cuda
