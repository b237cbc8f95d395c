// Exercise attention/05_ring_parity — which buffer and which barrier phase a tile of
// attention v7's pipeline uses.
//
// Attention v7 (cuda/tinyllm/cuda/attention_tma.cuh) hands K and V tiles from a producer
// warpgroup to two consumer warpgroups through a ring of S buffers ("stages"): tile i goes
// into stage i mod S. Each stage has two mbarriers. "full" completes one phase each time a
// tile has been copied into the stage; "empty" completes one phase each time the consumers
// are done with the stage's tile. A barrier's phases are numbered 0, 1, 2, ... and a thread
// waits for one by its *parity* only: mbarrier.try_wait.parity p returns once the most
// recent phase of parity p has completed — on a fresh barrier (phase 0 under way) p = 1
// returns at once, as if a "phase -1" had completed.
//
//   * The consumers, before reading tile i, wait on full[i mod S] for the phase that tile
//     i's copy completes.
//   * The producer, before copying tile i into its stage, waits on empty[i mod S] for the
//     phase in which the consumers released the stage's previous tile, i - S. The first S
//     tiles find their stages free: their waits must pass at once.
//
// Return the stage of tile i and the two parities.
//
// Hint: tile i is use number n = i div S of its stage; full's phase n and empty's phase n - 1.
//
// Check: exercises_cpu attention/05_ring_parity (compared with
// tinyllm::detail::mbarrier_ring_slot, include/tinyllm/detail/mbarrier_ring.hpp).
#include "exercises.hpp"

namespace exercises::attention {

ring_position ring_parity(int i, int stages) {
    const unsigned use = static_cast<unsigned>(i / stages) % 2u;  // parity of the stage's use number
    return {i % stages, use, use ^ 1u};
}

}  // namespace exercises::attention
