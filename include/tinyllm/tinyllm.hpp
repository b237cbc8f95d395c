// tinyllm/tinyllm.hpp — everything in the CPU half of tinyllm, in one include.
//
// The CPU half compiles with any C++20 compiler and needs no CUDA. The CUDA
// half lives under <tinyllm/cuda/...> (see cuda/tinyllm/cuda/tinyllm.cuh).
#pragma once

// Foundation: tensors, numbers, randomness, errors, timing.
#include <tinyllm/config.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/threads.hpp>
#include <tinyllm/timing.hpp>
#include <tinyllm/version.hpp>

// Tokens in: byte-level BPE and embeddings.
#include <tinyllm/bpe.hpp>
#include <tinyllm/bpe_train.hpp>
#include <tinyllm/embedding.hpp>
#include <tinyllm/pretokenize.hpp>
#include <tinyllm/sentencepiece_train.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

// The blocks: positions, norms, activations, FFN, attention, mixture of experts.
#include <tinyllm/activation.hpp>
#include <tinyllm/attention.hpp>
#include <tinyllm/attention_tiled.hpp>
#include <tinyllm/ffn.hpp>
#include <tinyllm/gemm.hpp>
#include <tinyllm/kv_cache_int8.hpp>
#include <tinyllm/loss.hpp>
#include <tinyllm/moe.hpp>
#include <tinyllm/norm.hpp>
#include <tinyllm/positional.hpp>
#include <tinyllm/vectorized.hpp>

// Training: the optimizer, clipping, the schedule, dropout.
#include <tinyllm/data.hpp>
#include <tinyllm/optimizer.hpp>

// Tokens out: samplers, best-of-n and beam search.
#include <tinyllm/batching.hpp>
#include <tinyllm/engine.hpp>
#include <tinyllm/beam_search.hpp>
#include <tinyllm/sampling.hpp>
#include <tinyllm/sampling_math.hpp>

// The model: checkpoints and generation.
#include <tinyllm/model.hpp>
#include <tinyllm/npy.hpp>
#include <tinyllm/paged_kv.hpp>
#include <tinyllm/prefix_cache.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/quantize_model.hpp>
#include <tinyllm/safetensors.hpp>
#include <tinyllm/speculative.hpp>

// Training a model: the loop, its checkpoints, resuming.
#include <tinyllm/train.hpp>
