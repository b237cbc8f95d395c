// tinyllm/tinyllm.hpp — everything in the CPU half of tinyllm, in one include.
//
// The CPU half compiles with any C++20 compiler and needs no CUDA. The CUDA
// half lives under <tinyllm/cuda/...> (see cuda/tinyllm/cuda/).
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/math.hpp>
#include <tinyllm/philox.hpp>
#include <tinyllm/random.hpp>
#include <tinyllm/tensor.hpp>
#include <tinyllm/timing.hpp>
#include <tinyllm/version.hpp>
