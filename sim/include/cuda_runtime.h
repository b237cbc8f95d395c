// cuda_runtime.h — tinyllm's simulated GPU: everything a .cu file gets from
// the CUDA runtime header, for the host C++ compiler.
//
// Stands in for the CUDA toolkit's cuda_runtime.h when tinyllm is built with
// -DTINYLLM_CUDA=SIM: the runtime API (cuda_runtime_api.h), the device
// built-ins (tinyllm/sim/device_functions.hpp) and the launch machinery
// (tinyllm/sim/executor.hpp). Code that needs to know tests
// TINYLLM_SIMULATED_GPU; see docs/simulator.md.
#pragma once

#define TINYLLM_SIMULATED_GPU 1

#include <cuda_runtime_api.h>
#include <tinyllm/sim/device_functions.hpp>
#include <tinyllm/sim/executor.hpp>
#include <tinyllm/sim/ptx.hpp>
