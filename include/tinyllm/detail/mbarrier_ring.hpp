// tinyllm/detail/mbarrier_ring.hpp — which buffer of a ring, and which phase
// of its barriers, the i-th tile of a producer/consumer pipeline uses (attention
// v7, cuda/tinyllm/cuda/attention_tma.cuh; the exercise attention/05_ring_parity).
//
// A ring of S buffers (stages) carries tiles 0, 1, 2, ... from a producer to
// its consumers: tile i goes into stage i mod S. Each stage has two mbarriers.
// "full" completes one phase per tile put into the stage (the producer's
// arrival plus the copy's bytes); "empty" one phase per tile taken out (the
// consumers' arrivals). A barrier's phases are numbered 0, 1, 2, ... from its
// initialisation, and a thread waits for a phase by its parity alone
// (mbarrier.try_wait.parity p returns once the phase of parity p before the
// current one has completed, i.e. when the barrier's current phase has parity
// 1 - p).
//
// Tile i is the n-th use of its stage, n = i div S, so:
//   the consumers wait on full[i mod S] for phase n:      parity n mod 2;
//   the producer, before writing tile i, waits on empty[i mod S] for the
//   phase that freed the stage's previous tile (i - S), phase n - 1:
//   parity (n - 1) mod 2 = (n mod 2) xor 1. For the first S tiles that is
//   "phase -1" — parity 1 on a barrier in phase 0, which counts as complete,
//   so the producer's first S waits pass at once, as they must.
// Parity is enough because the producer never runs more than S tiles ahead:
// a wait cannot confuse phase n with phase n - 2.
#pragma once

#include <tinyllm/config.hpp>

namespace tinyllm::detail {

struct ring_slot {
    int stage;                  // i mod S
    unsigned full_parity;       // the consumers' wait on full[stage]
    unsigned empty_parity;      // the producer's wait on empty[stage]
};

TINYLLM_HOST_DEVICE constexpr ring_slot mbarrier_ring_slot(int i, int stages) {
    const unsigned use = static_cast<unsigned>(i / stages) & 1u;
    return {i % stages, use, use ^ 1u};
}

}  // namespace tinyllm::detail
