// tinyllm/cuda/tinyllm.cuh — everything in the CUDA half of tinyllm, in one include.
#pragma once

#include <tinyllm/tinyllm.hpp>

// Foundation: errors, memory, devices, 16-bit types, timing, cuBLAS.
#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/cublas.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/timing.cuh>
#include <tinyllm/cuda/timeline.cuh>

// The first ladders: copy (the bandwidth ceiling) and random numbers.
#include <tinyllm/cuda/copy.cuh>
#include <tinyllm/cuda/random.cuh>

// Components.
#include <tinyllm/cuda/activation.cuh>
#include <tinyllm/cuda/attention_backward.cuh>
#include <tinyllm/cuda/attention_backward_mma.cuh>
#include <tinyllm/cuda/attention_decode.cuh>
#include <tinyllm/cuda/attention_flash.cuh>
#include <tinyllm/cuda/attention_flash2.cuh>
#include <tinyllm/cuda/attention_tma.cuh>
#include <tinyllm/cuda/attention_wgmma.cuh>
#include <tinyllm/cuda/attention_mma.cuh>
#include <tinyllm/cuda/attention_naive.cuh>
#include <tinyllm/cuda/attention_paged.cuh>
#include <tinyllm/cuda/attention_tiled.cuh>
#include <tinyllm/cuda/bpe.cuh>
#include <tinyllm/cuda/decode_dataflow.cuh>
#include <tinyllm/cuda/embedding.cuh>
#include <tinyllm/cuda/ffn.cuh>
#include <tinyllm/cuda/loss.cuh>
#include <tinyllm/cuda/moe.cuh>
#include <tinyllm/cuda/norm.cuh>
#include <tinyllm/cuda/optimizer.cuh>
#include <tinyllm/cuda/positional.cuh>
#include <tinyllm/cuda/quantize.cuh>
#include <tinyllm/cuda/sampling.cuh>

// The decoder built from them.
#include <tinyllm/cuda/batching.cuh>
#include <tinyllm/cuda/model.cuh>
#include <tinyllm/cuda/speculative.cuh>
