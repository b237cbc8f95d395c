// tinyllm/cuda/tinyllm.cuh — everything in the CUDA half of tinyllm, in one include.
#pragma once

#include <tinyllm/tinyllm.hpp>

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/copy.cuh>
#include <tinyllm/cuda/device.cuh>
#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/cuda/dtype.cuh>
#include <tinyllm/cuda/random.cuh>
#include <tinyllm/cuda/timing.cuh>
