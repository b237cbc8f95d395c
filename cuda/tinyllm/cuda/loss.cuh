// tinyllm/cuda/loss.cuh — softmax cross-entropy on the GPU: the training loss
// of the next token and its gradient d loss / d logits in one fused pass. Same
// meaning and options as tinyllm::cpu::cross_entropy in <tinyllm/loss.hpp>
// (read it for the math): ignore_index, label_smoothing (PyTorch's
// definition), mean or sum, and a loss of 0 with zero gradients when every
// position is ignored.
//
// Per row (one position, V logits z, target t, eps = label_smoothing):
//
//     lse  = log sum_j exp(z_j)
//     loss = (1 - eps) (lse - z_t) + eps (lse - mean_j z_j)
//     d loss / d z_j = (exp(z_j - lse) - eps / V - (1 - eps) [j = t]) * scale
//
// with scale = 1 / (number of valid rows) for the mean, 1 for the sum.
//
// The ladder:
//
//   v1 online   (cross_entropy) one block per row, walking the row in chunks
//               of blockDim consecutive elements (coalesced; V up to 128256
//               and beyond, any V — no multiple of the block or of a vector
//               width is needed). Pass 1 keeps, per thread, a running maximum
//               m and a running sum s of exp(z - m) — the online
//               log-sum-exp (Milakov & Gimelshein 2018): a new maximum
//               rescales the sum by exp(m_old - m_new), so one read of the
//               row gives both — plus the sum of z (label smoothing) and a
//               finiteness flag. The block merges the (m, s) pairs with warp
//               shuffles and one round through shared memory:
//                   m = max(m1, m2),  s = s1 exp(m1 - m) + s2 exp(m2 - m).
//               Pass 2 re-reads the row (from L2 at these sizes) and writes
//               the gradient, which may overwrite the logits (in place): every
//               element of the row has been read by pass 1 and the block has
//               met at a barrier before the first write. So the logits are
//               read twice and written once; a single-read version would
//               have to keep the row on chip (V = 128256 bf16 is 250 KB,
//               beyond one SM's shared memory).
//   next rung   16-byte loads of the row (8 bf16) when V and the row stride
//               allow; several rows per block for small V.
//
// Determinism. No float atomics anywhere: each row's loss is written to its
// slot of `losses` (rows), and a second one-block kernel adds them in a fixed
// order (strided per-thread sums, then a fixed shuffle tree), so the loss is
// bit-identical from run to run and under any block schedule. The count of
// valid rows comes from a fixed-order one-block reduction too, run first, so
// the gradient pass already knows the scale 1 / n.
//
// Errors. The targets are device memory (where a training loop has them), so
// they are validated on the device: the first kernel counts the valid rows and
// finds the first target outside [0, V) that is not ignore_index; if there is
// one, the gradient kernel writes nothing (as the CPU: no output changes). A
// non-finite logit is found by the row's block, which writes nothing to that
// row and records the row (atomicMin of an int: deterministic). The launcher
// copies these status words back with the loss (it returns the loss, so it
// synchronizes `stream` anyway) and throws tinyllm::error naming the position
// and the value. After a non-finite-logit error the other rows' gradients may
// already be written. Shapes, strides and options are checked on the host
// before any launch, with the CPU's messages.
//
// Tensors (device views): logits (rows, V) of float or tinyllm::bfloat16 with
// contiguous rows (stride(1) == 1) and any row stride; dlogits the same shape
// and type, or empty ({}) for the loss alone; dlogits may be logits. targets
// (rows) token ids, contiguous. losses (rows) float, contiguous: each row's
// loss (unscaled, 0 for an ignored row), or empty to use an internal
// workspace. All arithmetic in float. The (..., V) overload takes logits
// (B, T, V) and targets (B, T), like the CPU.
//
// Distillation (distillation_loss, at the end): tau^2 KL(softmax(t / tau) ||
// softmax(s / tau)) of student logits s against teacher logits t, mean over
// the rows, with its gradient tau (p - q) / rows ADDED (times grad_scale) to
// dlogits — the same meaning as tinyllm::cpu::distillation_loss. v1: one block
// per row; pass 1 takes the online log-sum-exp of s / tau and of t / tau
// together (one read of both rows); pass 2 re-reads them for the row's KL sum
// and the gradient. Per-row losses and a fixed-order reduction, as above, so
// the loss is deterministic; a non-finite logit is reported by its row.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/error.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/tensor.hpp>

#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>

namespace tinyllm::cuda {
namespace detail {

// What the kernels tell the host (device memory, in the stream's workspace).
struct cross_entropy_status {
    int valid;           // rows whose target is not ignore_index
    int bad_target_row;  // the first row whose target is outside [0, V) and not ignored; rows if none
    int bad_target;      // that row's target
    int bad_logit_row;   // the first row found holding a NaN or infinite logit; rows if none
    float loss;          // the reduced loss
};

inline constexpr int cross_entropy_reduce_threads = 256;

// One block of Threads: count the valid targets and find the first bad one
// (integers: exact in any order). A template, as every kernel in a header.
template <int Threads>
__global__ void cross_entropy_targets_kernel(cross_entropy_status* status, const token_id* targets, int rows, int V,
                                             token_id ignore_index) {
    __shared__ int counts[Threads];
    __shared__ int firsts[Threads];
    int count = 0, first = rows;
    for (int r = static_cast<int>(threadIdx.x); r < rows; r += static_cast<int>(blockDim.x)) {
        const token_id t = targets[r];
        if (t == ignore_index) continue;
        if (t < 0 || t >= V) {
            if (r < first) first = r;
            continue;
        }
        ++count;
    }
    counts[threadIdx.x] = count;
    firsts[threadIdx.x] = first;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < static_cast<int>(blockDim.x); ++i) {
            count += counts[i];
            if (firsts[i] < first) first = firsts[i];
        }
        status->valid = count;
        status->bad_target_row = first;
        status->bad_target = first < rows ? targets[first] : 0;
        status->bad_logit_row = rows;
        status->loss = 0.0f;
    }
}

// A running log-sum-exp: the maximum m and the sum s of exp(z - m).
struct online_lse {
    float m, s;
};

// Merge two running log-sum-exps. Symmetric in a and b (bit for bit), so a
// butterfly gives every lane the same result.
TINYLLM_DEVICE online_lse merge_lse(online_lse a, online_lse b) {
    if (a.m == -INFINITY) return b;
    if (b.m == -INFINITY) return a;
    const float m = a.m > b.m ? a.m : b.m;
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

TINYLLM_DEVICE online_lse warp_lse(online_lse v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const online_lse o{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
        v = merge_lse(v, o);
    }
    return v;
}

// The block's log-sum-exp, returned to every thread; blockDim.x a multiple of
// 32. `pm`, `ps`: 32 floats of shared memory each.
TINYLLM_DEVICE online_lse block_lse(online_lse v, float* pm, float* ps) {
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    const int warps = static_cast<int>(blockDim.x) >> 5;
    v = warp_lse(v);
    __syncthreads();
    if (lane == 0) {
        pm[warp] = v.m;
        ps[warp] = v.s;
    }
    __syncthreads();
    return warp_lse(lane < warps ? online_lse{pm[lane], ps[lane]} : online_lse{-INFINITY, 0.0f});
}

// v1: one block per row (grid-stride over rows), two passes over the row.
template <class T>
__global__ void cross_entropy_online_kernel(T* dlogits, index_t dlogits_stride, float* losses,
                                            cross_entropy_status* status, const T* logits,
                                            index_t logits_stride, const token_id* targets, index_t rows, index_t V,
                                            token_id ignore_index, float eps, bool sum_reduction) {
    __shared__ float pm[32], ps[32], partial[32];
    if (status->bad_target_row < rows) return;  // a bad target: write nothing (the host throws)
    const float scale = sum_reduction ? 1.0f : 1.0f / static_cast<float>(status->valid);
    const float smooth = eps / static_cast<float>(V);
    for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const token_id t = targets[r];
        T* drow = dlogits ? dlogits + r * dlogits_stride : nullptr;
        if (t == ignore_index) {  // no loss, zero gradient
            if (drow)
                for (index_t j = threadIdx.x; j < V; j += blockDim.x) drow[j] = store_as<T>(0.0f);
            if (threadIdx.x == 0) losses[r] = 0.0f;
            continue;
        }
        const T* row = logits + r * logits_stride;
        const float zt = to_float(row[t]);  // read before the barrier that precedes any write

        // Pass 1: the online log-sum-exp, the sum of z and the count of non-finite values.
        online_lse acc{-INFINITY, 0.0f};
        float sum_z = 0.0f, bad = 0.0f;
        for (index_t j = threadIdx.x; j < V; j += blockDim.x) {
            const float z = to_float(row[j]);
            if (!::isfinite(z)) {
                bad += 1.0f;
                continue;
            }
            if (z > acc.m) {
                acc.s = acc.s * expf(acc.m - z) + 1.0f;
                acc.m = z;
            } else {
                acc.s += expf(z - acc.m);
            }
            sum_z += z;
        }
        acc = block_lse(acc, pm, ps);
        sum_z = row_block_sum(sum_z, partial);
        bad = row_block_sum(bad, partial);
        if (bad > 0.0f) {  // uniform across the block
            if (threadIdx.x == 0) {
                atomicMin(&status->bad_logit_row, static_cast<int>(r));
                losses[r] = 0.0f;
            }
            continue;
        }
        const float lse = acc.m + logf(acc.s);
        if (threadIdx.x == 0)
            losses[r] = (1.0f - eps) * (lse - zt) + eps * (lse - sum_z / static_cast<float>(V));

        // Pass 2: the gradient (every read of the row happened before the barriers above).
        if (drow) {
            for (index_t j = threadIdx.x; j < V; j += blockDim.x) {
                float g = expf(to_float(row[j]) - lse) - smooth;
                if (j == t) g -= 1.0f - eps;
                drow[j] = store_as<T>(g * scale);
            }
        }
    }
}

// One block: loss = (sum of the rows' losses) * scale, in a fixed order.
template <int Threads>
__global__ void cross_entropy_reduce_kernel(cross_entropy_status* status, const float* losses, index_t rows,
                                            bool sum_reduction) {
    __shared__ float partial[32];
    float acc = 0.0f;
    for (index_t r = threadIdx.x; r < rows; r += blockDim.x) acc += losses[r];
    acc = row_block_sum(acc, partial);
    if (threadIdx.x == 0) {
        const int n = status->valid;
        status->loss = sum_reduction ? acc : (n > 0 ? acc / static_cast<float>(n) : 0.0f);
    }
}

// Validate, launch the three kernels, read the status back, throw or return
// the loss. `where(r)` names row r in errors.
template <class T, class Where>
float cross_entropy_rows(tensor_view<T, 2> dlogits, tensor_view<float, 1> losses, tensor_view<const T, 2> logits,
                         tensor_view<const token_id, 1> targets, const cross_entropy_options& options,
                         cudaStream_t stream, Where&& where) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, bfloat16>,
                  "tinyllm::cuda::cross_entropy: logits must be float or tinyllm::bfloat16");
    const index_t rows = logits.extent(0), V = logits.extent(1);
    const double eps = options.label_smoothing;
    tinyllm::detail::expect_cross_entropy_rows(logits, targets, options);
    TINYLLM_EXPECT(rows < (index_t{1} << 31) && V < (index_t{1} << 31), "cross_entropy: logits have shape ",
                   to_string(logits.shape()), "; rows and V must be below 2^31");
    const bool want_grad = dlogits.size() != 0;
    if (want_grad && dlogits.shape() != logits.shape())
        throw error(tinyllm::detail::cat("tinyllm: cross_entropy: dlogits has shape ", to_string(dlogits.shape()),
                                         " but logits has shape ", to_string(logits.shape()),
                                         "; they must be equal (or dlogits empty)"));
    tinyllm::detail::expect_cross_entropy_memory(dlogits, logits, targets);
    TINYLLM_EXPECT(losses.size() == 0 || losses.extent(0) == rows, "cross_entropy: losses has ", losses.extent(0),
                   " entries but logits have ", rows, " rows (one per row, or empty)");
    TINYLLM_EXPECT(losses.size() <= 1 || losses.stride(0) == 1, "cross_entropy: losses must be contiguous");
    TINYLLM_EXPECT(targets.size() <= 1 || targets.stride(0) == 1, "cross_entropy: targets must be contiguous");
    expect_unit_column_stride(logits, "cross_entropy", "logits");
    if (want_grad) expect_unit_column_stride(dlogits, "cross_entropy", "dlogits");
    // Each row's loss is written while other blocks still read their rows (and targets).
    tinyllm::detail::expect_apart_from("cross_entropy", "losses", losses, "logits", logits, "dlogits", dlogits,
                                       "targets", targets);
    if (rows == 0) return 0.0f;

    // The workspace: the status words, then (when the caller passes none) the per-row losses.
    const std::size_t status_bytes = 256;
    const std::size_t bytes = status_bytes + (losses.size() ? 0 : static_cast<std::size_t>(rows) * sizeof(float));
    auto* base = static_cast<unsigned char*>(stream_workspace(bytes, stream));
    auto* status = reinterpret_cast<cross_entropy_status*>(base);
    float* row_losses = losses.size() ? losses.data() : reinterpret_cast<float*>(base + status_bytes);
    const bool sum_reduction = options.reduction == loss_reduction::sum;

    launch(cross_entropy_targets_kernel<cross_entropy_reduce_threads>, 1, cross_entropy_reduce_threads, 0, stream, status, targets.data(),
           static_cast<int>(rows), static_cast<int>(V), options.ignore_index);
    TINYLLM_CUDA_CHECK_LAUNCH();
    // Enough threads for a few elements each, 32..512, whole warps.
    const index_t wanted = ceil_div<index_t>(V, 32) * 32;
    const int threads = static_cast<int>(wanted > 512 ? 512 : wanted);
    const unsigned blocks = static_cast<unsigned>(rows < (index_t{1} << 30) ? rows : (index_t{1} << 30));
    launch(cross_entropy_online_kernel<T>, blocks, threads, 0, stream, want_grad ? dlogits.data() : nullptr,
           want_grad ? norm_row_stride(dlogits) : index_t{0}, row_losses, status, logits.data(),
           norm_row_stride(logits), targets.data(), rows, V, options.ignore_index, static_cast<float>(eps),
           sum_reduction);
    TINYLLM_CUDA_CHECK_LAUNCH();
    launch(cross_entropy_reduce_kernel<cross_entropy_reduce_threads>, 1, cross_entropy_reduce_threads, 0, stream, status, row_losses, rows,
           sum_reduction);
    TINYLLM_CUDA_CHECK_LAUNCH();

    cross_entropy_status s{};
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(&s, status, sizeof s, cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (s.bad_target_row < rows)
        TINYLLM_FAIL("cross_entropy: the target at ", where(s.bad_target_row), " is ", s.bad_target,
                     ", outside the vocabulary [0, V = ", V, ") and not ignore_index = ", options.ignore_index,
                     " (checked on the device; nothing was written)");
    if (s.bad_logit_row < rows)
        TINYLLM_FAIL("cross_entropy: the logits at ", where(s.bad_logit_row), " (row ", s.bad_logit_row,
                     ") hold a non-finite value (NaN or infinity); that row of dlogits was not written, other rows "
                     "may have been");
    return s.loss;
}

// ---- distillation ----------------------------------------------------------------

struct distillation_status {
    int bad_row;  // the first row found holding a NaN or infinite logit (student or teacher); rows if none
    float loss;   // the reduced loss
};

// v1: one block per row (grid-stride over rows). student, teacher (rows, V) of T =
// float with unit column stride; dlogits the same or null (the loss alone). A
// template, as every kernel in a header.
template <class T>
__global__ void distillation_kernel(T* dlogits, index_t dlogits_stride, float* losses, distillation_status* status,
                                    const T* student, index_t student_stride, const T* teacher,
                                    index_t teacher_stride, index_t rows, index_t V, float tau, float grad_scale) {
    __shared__ float pm_s[32], ps_s[32], pm_t[32], ps_t[32], partial[32];
    const float inv_tau = 1.0f / tau, scale = grad_scale * tau / static_cast<float>(rows);
    for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* s = student + r * student_stride;
        const T* t = teacher + r * teacher_stride;
        // Pass 1: log sum exp of s / tau and of t / tau, and the non-finite count.
        online_lse as{-INFINITY, 0.0f}, at{-INFINITY, 0.0f};
        float bad = 0.0f;
        for (index_t j = threadIdx.x; j < V; j += blockDim.x) {
            const float zs = s[j] * inv_tau, zt = t[j] * inv_tau;
            if (!::isfinite(zs) || !::isfinite(zt)) {
                bad += 1.0f;
                continue;
            }
            as = merge_lse(as, online_lse{zs, 1.0f});
            at = merge_lse(at, online_lse{zt, 1.0f});
        }
        as = block_lse(as, pm_s, ps_s);
        at = block_lse(at, pm_t, ps_t);
        bad = row_block_sum(bad, partial);
        if (bad > 0.0f) {  // uniform across the block
            if (threadIdx.x == 0) {
                atomicMin(&status->bad_row, static_cast<int>(r));
                losses[r] = 0.0f;
            }
            continue;
        }
        const float lse_s = as.m + logf(as.s), lse_t = at.m + logf(at.s);
        // Pass 2: sum_j q_j (log q_j - log p_j), and the gradient tau (p_j - q_j) / rows.
        float kl = 0.0f;
        T* d = dlogits ? dlogits + r * dlogits_stride : nullptr;
        for (index_t j = threadIdx.x; j < V; j += blockDim.x) {
            const float log_p = s[j] * inv_tau - lse_s, log_q = t[j] * inv_tau - lse_t;
            const float q = expf(log_q);
            kl += q * (log_q - log_p);
            if (d) d[j] += grad_scale == 0.0f ? 0.0f : scale * (expf(log_p) - q);
        }
        kl = row_block_sum(kl, partial);
        if (threadIdx.x == 0) losses[r] = tau * tau * kl;
    }
}

// One block: loss = (sum of the rows' losses) / rows, in a fixed order.
template <int Threads>
__global__ void distillation_reduce_kernel(distillation_status* status, const float* losses, index_t rows) {
    __shared__ float partial[32];
    float acc = 0.0f;
    for (index_t r = threadIdx.x; r < rows; r += blockDim.x) acc += losses[r];
    acc = row_block_sum(acc, partial);
    if (threadIdx.x == 0) status->loss = acc / static_cast<float>(rows);
}

template <int Rows = 0>
__global__ void distillation_status_init_kernel(distillation_status* status, int rows) {
    status->bad_row = rows;
    status->loss = 0.0f;
}

}  // namespace detail

// v1 distillation loss: tau^2 KL(softmax(teacher / tau) || softmax(student / tau)),
// the mean over the rows of student and teacher logits (rows, V) (device, float,
// unit column stride); unless dlogits is empty, ADDS grad_scale * tau (p - q) / rows
// to dlogits (rows, V), which must be apart from both logits. Returns the loss
// (synchronizes `stream`). The CPU reference is tinyllm::cpu::distillation_loss.
template <class = void>  // compiled only where called (launch.cuh)
inline float distillation_loss(tensor_view<float, 2> dlogits /*(rows, V) or empty; added to*/,
                               tensor_view<const float, 2> student /*(rows, V)*/,
                               tensor_view<const float, 2> teacher /*(rows, V)*/, double temperature,
                               double grad_scale = 1.0, cudaStream_t stream = nullptr) {
    tinyllm::detail::expect_distillation_args(dlogits, student, teacher, temperature, grad_scale, "distillation_loss");
    TINYLLM_EXPECT(dlogits.size() == 0 || (static_cast<const void*>(dlogits.data()) != student.data() &&
                                           static_cast<const void*>(dlogits.data()) != teacher.data()),
                   "distillation_loss: dlogits must not be the logits' memory (the gradient is added to it)");
    tinyllm::detail::expect_distillation_memory(dlogits, student, teacher, "distillation_loss");
    const index_t rows = student.extent(0), V = student.extent(1);
    TINYLLM_EXPECT(rows < (index_t{1} << 31) && V < (index_t{1} << 31), "distillation_loss: logits have shape ",
                   to_string(student.shape()), "; rows and V must be below 2^31");
    detail::expect_unit_column_stride(student, "distillation_loss", "student");
    detail::expect_unit_column_stride(teacher, "distillation_loss", "teacher");
    if (dlogits.size() != 0) detail::expect_unit_column_stride(dlogits, "distillation_loss", "dlogits");
    if (rows == 0) return 0.0f;

    const std::size_t status_bytes = 256;
    auto* base = static_cast<unsigned char*>(
        detail::stream_workspace(status_bytes + static_cast<std::size_t>(rows) * sizeof(float), stream));
    auto* status = reinterpret_cast<detail::distillation_status*>(base);
    float* losses = reinterpret_cast<float*>(base + status_bytes);
    launch(detail::distillation_status_init_kernel<>, 1, 1, 0, stream, status, static_cast<int>(rows));
    TINYLLM_CUDA_CHECK_LAUNCH();
    const index_t wanted = ceil_div<index_t>(V, 32) * 32;
    const int threads = static_cast<int>(wanted > 512 ? 512 : wanted);
    const unsigned blocks = static_cast<unsigned>(rows < (index_t{1} << 30) ? rows : (index_t{1} << 30));
    const bool want_grad = dlogits.size() != 0;
    launch(detail::distillation_kernel<float>, blocks, threads, 0, stream, want_grad ? dlogits.data() : nullptr,
           want_grad ? detail::norm_row_stride(dlogits) : index_t{0}, losses, status, student.data(),
           detail::norm_row_stride(student), teacher.data(), detail::norm_row_stride(teacher), rows, V,
           static_cast<float>(temperature), static_cast<float>(grad_scale));
    TINYLLM_CUDA_CHECK_LAUNCH();
    launch(detail::distillation_reduce_kernel<detail::cross_entropy_reduce_threads>, 1,
           detail::cross_entropy_reduce_threads, 0, stream, status, losses, rows);
    TINYLLM_CUDA_CHECK_LAUNCH();
    detail::distillation_status st{};
    TINYLLM_CUDA_CHECK(cudaMemcpyAsync(&st, status, sizeof st, cudaMemcpyDeviceToHost, stream));
    TINYLLM_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (st.bad_row < rows)
        TINYLLM_FAIL("distillation_loss: the student or teacher logits of row ", st.bad_row,
                     " hold a non-finite value (NaN or infinity); that row of dlogits was not written, other rows "
                     "may have been");
    return st.loss;
}

// v1: the cross-entropy of logits (rows, V) against targets (rows), both on
// the device: returns the loss (the mean over the valid rows, or the sum, as
// options say) and, unless dlogits is empty, writes d loss / d logits to
// dlogits (rows, V), which may be logits itself (in place; otherwise apart from
// it). losses (rows): each row's loss before the reduction (0 for an ignored
// row), or empty; apart from logits, dlogits and targets.
// Synchronizes `stream` (the loss is returned to the host).
template <class T>
float cross_entropy(tensor_view<T, 2> dlogits /*(rows, V) or empty*/, tensor_view<float, 1> losses /*(rows) or empty*/,
                    detail::const_view<T, 2> logits /*(rows, V)*/, tensor_view<const token_id, 1> targets /*(rows)*/,
                    const cross_entropy_options& options = {}, cudaStream_t stream = nullptr) {
    return detail::cross_entropy_rows<T>(dlogits, losses, logits, targets, options, stream,
                                         [](index_t r) { return tinyllm::detail::cat("position (", r, ")"); });
}

// ---- Any number of leading dimensions: logits (..., V), targets (...) -------------------

// The same on device views of any rank: logits (..., V), targets (...) (the
// leading dimensions of logits, contiguous), dlogits (..., V) or {}, losses
// (...) contiguous or {}. The element type is deduced from logits.
template <class T = detail::deduced, tensor_like L, tensor_like Tg,
          tensor_like D = tensor_view<detail::element_t<T, L>, 2>, tensor_like Lo = tensor_view<float, 1>>
float cross_entropy(D&& dlogits /*(..., V) or empty*/, Lo&& losses /*(...) or empty*/, const L& logits /*(..., V)*/,
                    const Tg& targets /*(...)*/, const cross_entropy_options& options = {},
                    cudaStream_t stream = nullptr) {
    using E = detail::element_t<T, L>;
    const auto lv = as_view(logits);
    const auto tv = as_view(targets);
    constexpr std::size_t R = decltype(lv)::rank;
    tinyllm::detail::expect_cross_entropy_targets(lv, tv);
    const auto l2 = as_rows<const E>(logits, "cross_entropy: logits");
    const index_t rows = l2.extent(0);
    tensor_view<E, 2> d2;  // empty: the loss alone
    if (as_view(dlogits).size() != 0) {
        expect_equal_shapes(dlogits, logits, "cross_entropy", "dlogits", "logits");
        d2 = as_rows<E>(dlogits, "cross_entropy: dlogits");
    }
    TINYLLM_EXPECT(tv.size() == 0 || tv.is_contiguous(), "cross_entropy: targets have shape ", to_string(tv.shape()),
                   " and strides ", to_string(tv.strides()), "; they must be contiguous");
    const tensor_view<const token_id, 1> t1(tv.data(), extents<1>{rows});
    tensor_view<float, 1> lo1;
    const auto lov = as_view(losses);
    if (lov.size() != 0) {
        static_assert(std::is_same_v<typename decltype(lov)::element_type, float>,
                      "tinyllm::cuda::cross_entropy: losses must be a view of float");
        if constexpr (decltype(lov)::rank == R - 1) {
            bool same_losses = true;
            for (std::size_t d = 0; d + 1 < R; ++d) same_losses = same_losses && lov.extent(d) == lv.extent(d);
            TINYLLM_EXPECT(same_losses, "cross_entropy: losses have shape ", to_string(lov.shape()),
                           " but logits have shape ", to_string(lv.shape()),
                           "; losses must have the logits' leading dimensions (or be empty)");
        } else {
            TINYLLM_EXPECT(decltype(lov)::rank == 1 && lov.size() == rows, "cross_entropy: losses have shape ",
                           to_string(lov.shape()), " but there are ", rows, " rows of logits");
        }
        TINYLLM_EXPECT(lov.is_contiguous(), "cross_entropy: losses must be contiguous");
        lo1 = tensor_view<float, 1>(lov.data(), extents<1>{rows});
    }
    extents<R - 1> leading;
    for (std::size_t d = 0; d + 1 < R; ++d) leading[d] = lv.extent(d);
    return detail::cross_entropy_rows<E>(d2, lo1, l2, t1, options, stream,
                                         [&](index_t r) { return tinyllm::detail::position_string(leading, r); });
}

}  // namespace tinyllm::cuda
