# Including tinyllm's CUDA headers compiles none of their kernels: a kernel is
# compiled in the programs that call its launcher (see "What including a header
# costs" in cuda/tinyllm/cuda/launch.cuh). PTX is the PTX of a translation unit
# that includes every CUDA header of tinyllm and nothing else; it must hold no
# tinyllm kernel (an .entry whose name has tinyllm's namespace).
#
#   cmake -DPTX=every_header.ptx -P no_kernels_until_called.cmake
if(NOT EXISTS "${PTX}")
  message(FATAL_ERROR "no PTX at '${PTX}'")
endif()
file(STRINGS "${PTX}" version REGEX "^\\.version ")
if(NOT version)
  message(FATAL_ERROR "${PTX} is not PTX (no .version line)")
endif()
file(STRINGS "${PTX}" entries REGEX "\\.entry ")
set(ours "")
foreach(line IN LISTS entries)
  if(line MATCHES "\\.entry +([A-Za-z0-9_]*7tinyllm[A-Za-z0-9_]*)")
    list(APPEND ours "${CMAKE_MATCH_1}")
  endif()
endforeach()
list(LENGTH entries n_entries)
list(LENGTH ours n_ours)
if(n_ours GREATER 0)
  list(JOIN ours "\n  " names)
  message(FATAL_ERROR "including the CUDA headers compiled ${n_ours} tinyllm kernels that nothing calls "
                      "(a function outside any template names them; make it a template: launch.cuh):\n  ${names}")
endif()
message(STATUS "no tinyllm kernel compiled by including the headers (${n_entries} kernels of other libraries)")
