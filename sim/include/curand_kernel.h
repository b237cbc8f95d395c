// curand_kernel.h — tinyllm's simulated GPU: cuRAND's Philox4_32_10 generator
// in device code, as far as tinyllm uses it.
//
// Stands in for the CUDA toolkit's header of the same name (-DTINYLLM_CUDA=SIM).
// The generator is tinyllm's own philox4x32_10 (tinyllm/philox.hpp), driven
// the way cuRAND documents for curand_init(seed, subsequence, offset): key =
// the seed's two 32-bit halves, a 128-bit counter whose high 64 bits are the
// subsequence and whose low 64 bits count blocks of four outputs, and
// curand() handing out the four words of each block in turn.
#pragma once

#include <cuda_runtime.h>
#include <tinyllm/philox.hpp>

#include <cstdint>

struct curandStatePhilox4_32_10 {
    tinyllm::philox_counter ctr;
    tinyllm::philox_counter output;
    tinyllm::philox_key key;
    unsigned STATE;
};
typedef struct curandStatePhilox4_32_10 curandStatePhilox4_32_10_t;

namespace tinyllm::sim::detail {
// Adds n to the 128-bit counter (word 0 least significant).
inline void philox_counter_add(philox_counter& c, std::uint64_t n, int first_word) {
    std::uint64_t carry = n;
    for (int w = first_word; w < 4 && carry; ++w) {
        const std::uint64_t sum = static_cast<std::uint64_t>(c.v[w]) + (carry & 0xffffffffu);
        c.v[w] = static_cast<std::uint32_t>(sum);
        carry = (carry >> 32) + (sum >> 32);
    }
}
}  // namespace tinyllm::sim::detail

inline void curand_init(unsigned long long seed, unsigned long long subsequence, unsigned long long offset,
                        curandStatePhilox4_32_10_t* state) {
    state->ctr = {{0u, 0u, 0u, 0u}};
    state->key = {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}};
    tinyllm::sim::detail::philox_counter_add(state->ctr, subsequence, 2);
    tinyllm::sim::detail::philox_counter_add(state->ctr, offset / 4, 0);
    state->STATE = static_cast<unsigned>(offset % 4);
    state->output = tinyllm::philox4x32_10(state->ctr, state->key);
}
inline unsigned int curand(curandStatePhilox4_32_10_t* state) {
    const unsigned int value = state->output.v[state->STATE++];
    if (state->STATE == 4) {
        tinyllm::sim::detail::philox_counter_add(state->ctr, 1, 0);
        state->output = tinyllm::philox4x32_10(state->ctr, state->key);
        state->STATE = 0;
    }
    return value;
}
// A float in (0, 1], as cuRAND's curand_uniform.
inline float curand_uniform(curandStatePhilox4_32_10_t* state) {
    return static_cast<float>(curand(state)) * 2.3283064e-10f + 1.1641532e-10f;
}
