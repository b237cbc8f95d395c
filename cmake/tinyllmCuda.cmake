# Decide whether to build the CUDA half, from TINYLLM_CUDA = AUTO | ON | OFF | SIM.
#
# Sets TINYLLM_CUDA_ENABLED (ON/OFF) and, when ON with a CUDA compiler, enables
# the CUDA language and finds the CUDA toolkit (targets CUDA::cudart, CUDA::cublas).
#
# SIM builds the CUDA half for tinyllm's simulated GPU (sim/, docs/simulator.md):
# the same .cu/.cuh sources compiled by the host C++ compiler against the
# stand-in headers in sim/include, linked with the simulator (tinyllm::sim).
# No CUDA toolkit and no GPU are needed; TINYLLM_CUDA_SIMULATED is ON.
#
# GPU architectures: CMAKE_CUDA_ARCHITECTURES chooses which GPUs the kernels are
# compiled for. tinyllm's default, "80;90a", covers A100 (sm_80) and H100/H200
# (sm_90a: sm_90 plus the Hopper-only wgmma instructions of attention v6; its
# code runs on compute capability 9.0 only, and newer GPUs run the sm_80 PTX);
# every extra architecture adds compile time. Pick yours with e.g.
#   -DCMAKE_CUDA_ARCHITECTURES=90a     (H100/H200 only: the fastest build for them)
#   -DCMAKE_CUDA_ARCHITECTURES=native  (whatever GPU this machine has)
#   -DCMAKE_CUDA_ARCHITECTURES="80;86;89;90"
# or set the environment variable CUDAARCHS (CMake's own convention) before configuring.
string(TOUPPER "${TINYLLM_CUDA}" _tinyllm_cuda_mode)
if(NOT _tinyllm_cuda_mode MATCHES "^(AUTO|ON|OFF|SIM)$")
  message(FATAL_ERROR "TINYLLM_CUDA must be AUTO, ON, OFF or SIM (got '${TINYLLM_CUDA}')")
endif()

set(TINYLLM_CUDA_ENABLED OFF)
set(TINYLLM_CUDA_SIMULATED OFF)
set(TINYLLM_CUDA_SUMMARY "")
if(_tinyllm_cuda_mode STREQUAL "SIM")
  set(TINYLLM_CUDA_ENABLED ON)
  set(TINYLLM_CUDA_SIMULATED ON)
  set_property(GLOBAL PROPERTY TINYLLM_CUDA_SIMULATED ON)
  set(TINYLLM_CUDA_SUMMARY " (simulated GPU: the kernels run on the CPU)")
elseif(NOT _tinyllm_cuda_mode STREQUAL "OFF")
  # nvcc is often installed in /usr/local/cuda without being on PATH.
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS "/usr/local/cuda/bin/nvcc")
    set(CMAKE_CUDA_COMPILER "/usr/local/cuda/bin/nvcc" CACHE FILEPATH "CUDA compiler")
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
      set(CMAKE_CUDA_ARCHITECTURES 80 90a CACHE STRING "GPU architectures to compile for")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(TINYLLM_CUDA_ENABLED ON)
    set(TINYLLM_CUDA_SUMMARY " (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(_tinyllm_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR
      "TINYLLM_CUDA=ON but no CUDA compiler was found. Install the CUDA toolkit, put nvcc on PATH "
      "or pass -DCMAKE_CUDA_COMPILER=/path/to/nvcc; or configure with -DTINYLLM_CUDA=AUTO or OFF.")
  else()
    set(TINYLLM_CUDA_SUMMARY " (no CUDA compiler found)")
  endif()
endif()

include(${CMAKE_CURRENT_LIST_DIR}/tinyllmCudaSources.cmake)
