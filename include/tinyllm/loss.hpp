// tinyllm/loss.hpp — the training loss of a language model: softmax
// cross-entropy of the next token, from the logits, with its gradient.
//
// A language model is trained to predict, at every position, the token that
// comes next. Its last layer gives V logits z (one per vocabulary entry); the
// softmax turns them into probabilities
//
//     p_j = exp(z_j) / sum_k exp(z_k)
//
// and the loss of a position whose true next token is t is the negative log
// probability the model gave it (the "negative log-likelihood"):
//
//     nll = -log p_t = lse(z) - z_t,        lse(z) = log sum_k exp(z_k)
//
// Label smoothing (Szegedy et al. 2016) trains against a target that puts
// 1 - eps on t and spreads eps evenly over all V entries (t included), so the
// model is never pushed to make one logit infinitely larger than the rest.
// As PyTorch defines it (torch.nn.functional.cross_entropy):
//
//     loss = (1 - eps) nll + eps mean_j(-log p_j) = (1 - eps) (lse - z_t) + eps (lse - mean_j z_j)
//
// Positions whose target is ignore_index (-100 by default, as PyTorch) are
// padding or a prompt that is not trained on: they add nothing to the loss and
// get zero gradient. The reduction is the mean over the n valid (not ignored)
// positions, or the sum.
//
// The gradient. d lse / d z_j = p_j and d z_t / d z_j = [j = t], so
//
//     d loss / d z_j = p_j - (1 - eps) [j = t] - eps / V        (divided by n for the mean)
//
// — the predicted distribution minus the target distribution: no exponentials
// beyond the softmax the loss already needs. That is why the forward and the
// backward are one fused function here: computing the loss and its gradient
// in one pass over the (rows, V) logits reads them once. (llm.c, and training
// loops at scale, do the same.)
//
// If every position is ignored, n = 0: PyTorch's mean is then 0/0 = NaN.
// tinyllm returns a loss of 0 and zero gradients instead — a batch that is all
// padding teaches nothing, and a NaN would poison the optimizer's state.
//
// Numerical care. lse is computed stably, as m + log sum_k exp(z_k - m) with
// m = max_k z_k (no exp overflows; the largest term is exp(0) = 1), and every
// sum is in double; each gradient element is rounded to float once. A
// non-finite logit is an error naming its position: a NaN there means the
// forward pass has already gone wrong, and the loss would hide where.
//
// Shapes: logits (..., V) — (B, T, V) or (rows, V) — and targets (...), the
// same leading dimensions (a (B, T) tensor of token ids for (B, T, V) logits).
// dlogits is (..., V) like logits, or empty for the loss alone (evaluation).
// dlogits may be the logits' own memory: the gradient overwrites the logits in
// place, which saves a (rows, V) buffer — at V = 50257 or 128256 the largest
// activation of the model — once the logits are no longer needed (every row's
// statistics are taken before any element is written).
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace tinyllm {

// How the per-position losses are combined: their mean over the valid
// (not ignored) positions, or their sum.
enum class loss_reduction { mean, sum };

struct cross_entropy_options {
    token_id ignore_index = -100;   // targets equal to this add no loss and get zero gradient
    double label_smoothing = 0.0;   // eps, 0 <= eps < 1 (PyTorch's definition, above)
    loss_reduction reduction = loss_reduction::mean;
};

namespace detail {

// "(1, 2)": the position of flat row r in a tensor of leading shape `shape`.
template <std::size_t Rank>
std::string position_string(const extents<Rank>& shape, index_t r) {
    index_t idx[Rank] = {};
    for (std::size_t d = Rank; d-- > 0;) {
        const index_t n = shape[d] > 0 ? shape[d] : 1;
        idx[d] = r % n;
        r /= n;
    }
    std::string s = "(";
    for (std::size_t d = 0; d < Rank; ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
    return s + ")";
}

// "position (r)": how errors name row r of (rows, V) logits.
inline std::string flat_position(index_t r) { return cat("position (", r, ")"); }

// Shared by the CPU reference and the CUDA launcher: logits (..., V) and targets (...)
// of token ids with the logits' leading dimensions.
template <class L, class T>
void expect_cross_entropy_targets(const L& logits, const T& targets) {
    constexpr std::size_t R = L::rank;
    static_assert(R >= 2, "tinyllm: cross_entropy: logits must be (..., V) with at least one leading dimension");
    static_assert(T::rank == R - 1, "tinyllm: cross_entropy: targets must have one dimension fewer than logits "
                                    "(the leading dimensions of logits)");
    static_assert(std::is_same_v<std::remove_const_t<typename T::element_type>, token_id>,
                  "tinyllm: cross_entropy: targets must hold tinyllm::token_id (int32)");
    for (std::size_t d = 0; d + 1 < R; ++d)
        if (targets.extent(d) != logits.extent(d))
            throw error(cat("tinyllm: cross_entropy: targets have shape ", to_string(targets.shape()),
                            " but logits have shape ", to_string(logits.shape()),
                            "; targets must have the logits' leading dimensions"));
}

// The (rows, V) checks shared by the CPU reference and the CUDA launcher.
template <class L, class T>
void expect_cross_entropy_rows(const L& logits, const T& targets, const cross_entropy_options& options) {
    const double eps = options.label_smoothing;
    TINYLLM_EXPECT(std::isfinite(eps) && eps >= 0.0 && eps < 1.0, "cross_entropy: label_smoothing = ", eps,
                   " must be in [0, 1)");
    TINYLLM_EXPECT(logits.extent(1) >= 1, "cross_entropy: logits have shape ", to_string(logits.shape()),
                   "; a row needs at least one vocabulary entry");
    TINYLLM_EXPECT(targets.extent(0) == logits.extent(0), "cross_entropy: ", targets.extent(0), " targets for ",
                   logits.extent(0), " rows of logits");
}

// The memory of the (rows, V) call, shared by the CPU reference and the CUDA
// launcher. dlogits (unless empty) is written only after its row of logits has
// been read (the CPU reads every row first; a GPU block reads its row before a
// barrier that precedes its writes), so it may be exactly the logits (in
// place); otherwise it must be apart from them (a shifted dlogits would
// overwrite logits not yet read), apart from the targets, and have an address
// per element.
template <class D, class L, class T>
void expect_cross_entropy_memory(const D& dlogits, const L& logits, const T& targets) {
    if (dlogits.size() == 0) return;
    expect_distinct_elements("cross_entropy", "dlogits", dlogits);
    expect_in_place_or_apart("cross_entropy", "dlogits", dlogits, "logits", logits);
    expect_apart("cross_entropy", "dlogits", dlogits, "targets", targets);
}

}  // namespace detail

namespace cpu {

// The cross-entropy of logits (rows, V) against targets (rows): returns the
// loss (mean over valid rows, or sum) and, unless dlogits is empty, writes its
// gradient d loss / d logits to dlogits (rows, V), which may be logits itself
// (exactly; otherwise apart from the logits and the targets). `where(r)` names
// row r in errors. Any rank: below.
template <class Where>
double cross_entropy(tensor_view<float, 2> dlogits, tensor_view<const float, 2> logits,
                     tensor_view<const token_id, 1> targets, const cross_entropy_options& options, Where&& where) {
    const index_t rows = logits.extent(0), V = logits.extent(1);
    const double eps = options.label_smoothing;
    tinyllm::detail::expect_cross_entropy_rows(logits, targets, options);
    const bool want_grad = dlogits.size() != 0;
    if (want_grad && dlogits.shape() != logits.shape())
        throw error(tinyllm::detail::cat("tinyllm: cross_entropy: dlogits has shape ", to_string(dlogits.shape()),
                                         " but logits has shape ", to_string(logits.shape()),
                                         "; they must be equal (or dlogits empty)"));
    tinyllm::detail::expect_cross_entropy_memory(dlogits, logits, targets);

    // Pass 1: validate every target and logit and take each row's statistics,
    // before anything is written (dlogits may be logits).
    std::vector<double> lse(static_cast<std::size_t>(rows));
    double total = 0;
    index_t valid = 0;
    for (index_t r = 0; r < rows; ++r) {
        const token_id t = targets(r);
        if (t == options.ignore_index) continue;
        TINYLLM_EXPECT(t >= 0 && t < V, "cross_entropy: the target at ", where(r), " is ", t,
                       ", outside the vocabulary [0, V = ", V, ") and not ignore_index = ", options.ignore_index);
        double m = logits(r, 0);
        for (index_t j = 0; j < V; ++j) {
            const float z = logits(r, j);
            TINYLLM_EXPECT(std::isfinite(z), "cross_entropy: the logits at ", where(r), " (row ", r,
                           ") hold a non-finite value, ", z, " at vocabulary index ", j);
            if (z > m) m = z;
        }
        double sum = 0, sum_z = 0;
        for (index_t j = 0; j < V; ++j) {
            sum += std::exp(logits(r, j) - m);
            sum_z += logits(r, j);
        }
        const double l = m + std::log(sum);
        lse[static_cast<std::size_t>(r)] = l;
        total += (1.0 - eps) * (l - logits(r, t)) + eps * (l - sum_z / static_cast<double>(V));
        ++valid;
    }
    const double scale = options.reduction == loss_reduction::sum ? 1.0 : valid > 0 ? 1.0 / valid : 0.0;

    // Pass 2: the gradient, (p_j - (1 - eps) [j = t] - eps / V) * scale; ignored rows get 0.
    if (want_grad) {
        for (index_t r = 0; r < rows; ++r) {
            const token_id t = targets(r);
            if (t == options.ignore_index) {
                for (index_t j = 0; j < V; ++j) dlogits(r, j) = 0.0f;
                continue;
            }
            const double l = lse[static_cast<std::size_t>(r)];
            for (index_t j = 0; j < V; ++j) {
                double g = std::exp(logits(r, j) - l) - eps / static_cast<double>(V);
                if (j == t) g -= 1.0 - eps;
                dlogits(r, j) = static_cast<float>(g * scale);
            }
        }
    }
    return total * scale;
}

inline double cross_entropy(tensor_view<float, 2> dlogits /*(rows, V) or empty*/,
                            tensor_view<const float, 2> logits /*(rows, V)*/,
                            tensor_view<const token_id, 1> targets /*(rows)*/,
                            const cross_entropy_options& options = {}) {
    return cross_entropy(dlogits, logits, targets, options, tinyllm::detail::flat_position);
}

// ---- Any number of leading dimensions: logits (..., V), targets (...) -------------------

// The loss of logits (..., V) against targets (...) (token ids, the leading
// dimensions of logits), and its gradient into dlogits (..., V) unless dlogits
// is {} (empty). dlogits may be logits (in place).
template <tensor_like D = tensor_view<float, 2>, tensor_like L, tensor_like T>
double cross_entropy(D&& dlogits /*(..., V) or empty*/, const L& logits /*(..., V)*/, const T& targets /*(...)*/,
                     const cross_entropy_options& options = {}) {
    const auto lv = as_view(logits);
    const auto tv = as_view(targets);
    constexpr std::size_t R = decltype(lv)::rank;
    tinyllm::detail::expect_cross_entropy_targets(lv, tv);
    tensor_view<float, 2> d2;  // empty: the loss alone
    if (as_view(dlogits).size() != 0) {
        expect_equal_shapes(dlogits, logits, "cross_entropy", "dlogits", "logits");
        d2 = as_rows<float>(dlogits, "cross_entropy: dlogits");
    }
    const auto l2 = as_rows<const float>(logits, "cross_entropy: logits");
    // The targets in row order, copied (rows ids: small beside the (rows, V) logits), so any strides do.
    std::vector<token_id> ids;
    ids.reserve(static_cast<std::size_t>(l2.extent(0)));
    if constexpr (R == 2) {
        for (index_t r = 0; r < tv.extent(0); ++r) ids.push_back(tv(r));
    } else {
        const auto t2 = as_rows<const token_id>(targets, "cross_entropy: targets");  // (rows / last, last)
        for (index_t a = 0; a < t2.extent(0); ++a)
            for (index_t b = 0; b < t2.extent(1); ++b) ids.push_back(t2(a, b));
    }
    extents<R - 1> leading;
    for (std::size_t d = 0; d + 1 < R; ++d) leading[d] = lv.extent(d);
    return cross_entropy(d2, l2, tensor_view<const token_id, 1>(ids.data(), extents<1>{l2.extent(0)}), options,
                         [&](index_t r) { return tinyllm::detail::position_string(leading, r); });
}

// ---- knowledge distillation -------------------------------------------------------
//
// A student learns from a teacher's full distribution instead of the one true
// token alone (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a
// Neural Network"). Both logits are softened by a temperature tau,
//
//     q_j = softmax(t / tau)_j   (the teacher),      p_j = softmax(s / tau)_j   (the student),
//
// and the loss of a row is tau^2 times the Kullback–Leibler divergence
//
//     tau^2 KL(q || p) = tau^2 sum_j q_j (log q_j - log p_j),
//
// averaged over the rows. Its gradient needs no new exponentials either:
// d/ds_j of sum_j q_j (-log p_j) is (p_j - q_j) / tau, so
//
//     d loss / d s_j = tau (p_j - q_j)            (divided by the rows for the mean)
//
// The tau^2 keeps the gradient's size independent of tau (Hinton et al.'s
// reason for it), so the loss can be mixed with the hard-label cross-entropy
// at a fixed weight: training minimizes (1 - alpha) CE + alpha tau^2 KL.
// tau > 1 spreads the teacher's mass over its second choices ("dark
// knowledge"), which is what a student learns from beyond the label.
//
// distillation_loss(dlogits, student, teacher, tau, grad_scale) returns the mean
// loss over the (rows, V) logits and, unless dlogits is empty, ADDS grad_scale
// times its gradient to dlogits (rows, V) (so the cross-entropy's gradient can
// be written there first); dlogits must be apart from both logits. Sums
// in double; a non-finite logit is an error naming its row.
}  // namespace cpu

namespace detail {
// The temperatures distillation accepts: far wider than the 1 to 20 that is used, and
// narrow enough that z / tau and the tau^2 scale stay finite in float on the GPU as in
// double on the CPU (1e-40 overflowed the GPU's z / tau; 1e300 gave NaN on both).
inline constexpr double distillation_temperature_min = 1e-3;
inline constexpr double distillation_temperature_max = 1e3;
template <class D, class S, class T>
void expect_distillation_args(const D& dlogits, const S& student, const T& teacher, double temperature,
                              double grad_scale, const char* who) {
    TINYLLM_EXPECT(temperature >= distillation_temperature_min && temperature <= distillation_temperature_max, who,
                   ": temperature = ", temperature, " must be positive, in [1e-3, 1e3] (distillation uses 1 to 20)");
    TINYLLM_EXPECT(std::isfinite(grad_scale), who, ": grad_scale = ", grad_scale, " must be finite");
    TINYLLM_EXPECT(student.shape() == teacher.shape(), who, ": student logits ", to_string(student.shape()),
                   " and teacher logits ", to_string(teacher.shape()), " must have the same shape");
    TINYLLM_EXPECT(student.extent(1) >= 1, who, ": logits need at least one vocabulary entry");
    TINYLLM_EXPECT(dlogits.size() == 0 || dlogits.shape() == student.shape(), who, ": dlogits has shape ",
                   to_string(dlogits.shape()), " but the logits ", to_string(student.shape()));
}
// dlogits is added to (read, then written) while both logits are read again
// for the gradient: it must be apart from them, not only another pointer (a
// shifted dlogits would change logits not yet read), and have an address per
// element (an element written twice would be added to twice).
template <class D, class S, class T>
void expect_distillation_memory(const D& dlogits, const S& student, const T& teacher, const char* who) {
    expect_distinct_elements(who, "dlogits", dlogits);
    expect_apart(who, "dlogits", dlogits, "the student logits", student);
    expect_apart(who, "dlogits", dlogits, "the teacher logits", teacher);
}
}  // namespace detail

namespace cpu {

inline double distillation_loss(tensor_view<float, 2> dlogits /*(rows, V) or empty; added to*/,
                                tensor_view<const float, 2> student /*(rows, V)*/,
                                tensor_view<const float, 2> teacher /*(rows, V)*/, double temperature,
                                double grad_scale = 1.0) {
    tinyllm::detail::expect_distillation_args(dlogits, student, teacher, temperature, grad_scale, "distillation_loss");
    TINYLLM_EXPECT(dlogits.size() == 0 || (static_cast<const void*>(dlogits.data()) != student.data() &&
                                           static_cast<const void*>(dlogits.data()) != teacher.data()),
                   "distillation_loss: dlogits must not be the logits' memory (the gradient is added to it)");
    tinyllm::detail::expect_distillation_memory(dlogits, student, teacher, "distillation_loss");
    const index_t rows = student.extent(0), V = student.extent(1);
    const double tau = temperature;
    std::vector<double> p(static_cast<std::size_t>(V)), q(static_cast<std::size_t>(V));
    // softmax(z / tau) of a row into out, returning log sum exp(z / tau - m).
    const auto soften = [&](tensor_view<const float, 2> z, index_t r, std::vector<double>& out, const char* whose) {
        double m = -INFINITY;
        for (index_t j = 0; j < V; ++j) {
            TINYLLM_EXPECT(std::isfinite(z(r, j)), "distillation_loss: the ", whose, " logits of row ", r,
                           " hold a non-finite value, ", z(r, j), " at vocabulary index ", j);
            m = std::max(m, z(r, j) / tau);
        }
        double sum = 0;
        for (index_t j = 0; j < V; ++j) sum += out[static_cast<std::size_t>(j)] = std::exp(z(r, j) / tau - m);
        for (double& x : out) x /= sum;
        return m + std::log(sum);  // log of the normalizer
    };
    double total = 0;
    for (index_t r = 0; r < rows; ++r) {
        const double lse_s = soften(student, r, p, "student");
        const double lse_t = soften(teacher, r, q, "teacher");
        double kl = 0;  // sum_j q_j (log q_j - log p_j), log q_j = t_j/tau - lse_t; q_j = 0 adds nothing
        for (index_t j = 0; j < V; ++j) {
            const double qj = q[static_cast<std::size_t>(j)];
            if (qj > 0) kl += qj * ((teacher(r, j) / tau - lse_t) - (student(r, j) / tau - lse_s));
        }
        total += tau * tau * kl;
    }
    const double mean = rows > 0 ? 1.0 / static_cast<double>(rows) : 0.0;
    if (dlogits.size() != 0) {
        for (index_t r = 0; r < rows; ++r) {
            soften(student, r, p, "student");
            soften(teacher, r, q, "teacher");
            for (index_t j = 0; j < V; ++j) {
                const double g = tau * (p[static_cast<std::size_t>(j)] - q[static_cast<std::size_t>(j)]) * mean;
                dlogits(r, j) = static_cast<float>(dlogits(r, j) + grad_scale * g);
            }
        }
    }
    return total * mean;
}

}  // namespace cpu
}  // namespace tinyllm
