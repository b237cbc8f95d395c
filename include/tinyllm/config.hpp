// tinyllm/config.hpp — compiler glue shared by the CPU and CUDA halves.
//
// tinyllm keeps each piece of math in exactly one place. A function such as
// `philox4x32_10` or `bf16_to_float` is written once and called from ordinary
// C++ on the host and from CUDA kernels on the device. Under nvcc it must be
// marked `__host__ __device__`; under g++ those words do not exist. The macro
// below hides the difference:
//
//     TINYLLM_HOST_DEVICE float square(float x) { return x * x; }
//
// compiles as `__host__ __device__ inline float square(...)` under nvcc and as
// `inline float square(...)` under plain g++/clang.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#  define TINYLLM_HOST_DEVICE __host__ __device__ inline
#  define TINYLLM_DEVICE __device__ inline
#elif defined(TINYLLM_SIM_CONTRACT) && TINYLLM_SIM_CONTRACT && defined(__GNUC__) && !defined(__clang__)
// The simulated GPU contracting device code as nvcc does (docs/simulator.md):
// shared functions are always inlined, so that in a kernel they take the
// kernel's contraction and in host code the host's, as nvcc compiles them
// once for each side; device-only ones contract wherever they are compiled.
#  define TINYLLM_HOST_DEVICE inline __attribute__((always_inline))
#  define TINYLLM_DEVICE inline __attribute__((always_inline, optimize("fp-contract=fast", "expensive-optimizations")))
#else
#  define TINYLLM_HOST_DEVICE inline
#  define TINYLLM_DEVICE inline
#endif

// True while compiling the device half of a CUDA translation unit. Host-only
// work (throwing, printing with iostreams) sits behind `#if !TINYLLM_ON_DEVICE`.
#if defined(__CUDA_ARCH__)
#  define TINYLLM_ON_DEVICE 1
#else
#  define TINYLLM_ON_DEVICE 0
#endif

// Bounds-checked tensor indexing is on in debug builds (no NDEBUG) and can be
// forced either way by defining TINYLLM_BOUNDS_CHECK to 0 or 1.
#ifndef TINYLLM_BOUNDS_CHECK
#  ifdef NDEBUG
#    define TINYLLM_BOUNDS_CHECK 0
#  else
#    define TINYLLM_BOUNDS_CHECK 1
#  endif
#endif

namespace tinyllm {

// Signed 64-bit index type for shapes, strides and offsets: signed so that
// differences and reverse loops are safe, 64-bit so that a (16384, 256000)
// logits tensor (4.2e9 elements) still indexes correctly.
using index_t = std::int64_t;

// A token id: the tokenizer's output and the model's, the embeddings' and the
// samplers' input and output, on the host and on the GPU — one type, so that
// model.forward(session, tokenizer.encode(text)) needs no conversion. Signed
// 32-bit: every vocabulary fits with room to spare (GPT-2 50257, Llama 3
// 128256, o200k about 200000 ids; the limit is 2^31 - 1), it is the index type
// of the model's and the samplers' kernels and of PyTorch's int32 exports, and
// a stray negative id stays visibly negative (rejected with an error naming
// it) instead of wrapping to a huge unsigned index. Code that needs unsigned
// arithmetic on ids (hash keys) converts locally.
using token_id = std::int32_t;

}  // namespace tinyllm
