// Reference answer to exercise model/02_cross_entropy — the next-token loss a model is trained on, and its gradient.
//
// A language model's output for each position is a row of V logits z; the target is the
// token that actually came next. The loss is the mean, over the rows whose target is not
// ignored, of the negative log-probability of the target (include/tinyllm/loss.hpp,
// cpu::cross_entropy):
//
//     loss_r = -log softmax(z_r)[target_r] = logsumexp(z_r) - z_r[target_r]
//     loss   = (1 / N) sum over the N rows with target_r != -100 of loss_r
//
// (-100 marks padding, as in PyTorch's ignore_index.) Its gradient, the start of every
// backward pass:
//
//     dlogits(r, v) = (softmax(z_r)_v - [v == target_r]) / N,   and 0 for ignored rows.
//
// Return the loss and write dlogits (rows, V). At least one row has a target.
//
// Hint: logsumexp(z) = m + log(sum_v exp(z_v - m)) with m = max_v z_v: subtracting the
// maximum keeps exp from overflowing (the check uses logits up to 1000, and exp(1000)
// overflows even a double). Count N first.
//
// Check: exercises_cpu model/02_cross_entropy (compared with tinyllm::cpu::cross_entropy).
#include "exercises.hpp"

#include <algorithm>
#include <cmath>

namespace exercises::model {

double cross_entropy(std::span<float> dlogits /*(rows, V)*/, std::span<const float> logits /*(rows, V)*/,
                     std::span<const int> targets /*(rows)*/, int rows, int V) {
    int n = 0;
    for (int r = 0; r < rows; ++r) n += targets[r] != -100;
    double loss = 0;
    for (int r = 0; r < rows; ++r) {
        const float* z = logits.data() + static_cast<std::size_t>(r) * V;
        float* dz = dlogits.data() + static_cast<std::size_t>(r) * V;
        if (targets[r] == -100) {
            std::fill(dz, dz + V, 0.0f);
            continue;
        }
        const double m = *std::max_element(z, z + V);
        double sum = 0;
        for (int v = 0; v < V; ++v) sum += std::exp(z[v] - m);
        const double lse = m + std::log(sum);
        loss += lse - z[targets[r]];
        for (int v = 0; v < V; ++v)
            dz[v] = static_cast<float>((std::exp(z[v] - lse) - (v == targets[r] ? 1.0 : 0.0)) / n);
    }
    return loss / n;
}

}  // namespace exercises::model
