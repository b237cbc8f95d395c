# tinyllm_cuda_sources(<file.cu>...): in a build for tinyllm's simulated GPU
# (a tinyllm configured, or installed, with TINYLLM_CUDA=SIM), .cu files are C++
# for the host compiler; elsewhere this does nothing. Call it in the directory
# that adds the sources:
#
#   add_executable(my_kernels my_kernels.cu)
#   tinyllm_cuda_sources(my_kernels.cu)
#   target_link_libraries(my_kernels PRIVATE tinyllm::cuda)
#
# (A global property, so that it also holds in a parent project that added
# tinyllm with add_subdirectory or FetchContent.) Kernels say `#pragma unroll` to
# nvcc, which the host compiler does not know: these files, and only these, are
# compiled with -Wno-unknown-pragmas, so that a .cpp file of the same target keeps the
# exact command line it has in a build without the simulator (a compiler cache then
# serves both builds with one compilation).
function(tinyllm_cuda_sources)
  get_property(_simulated GLOBAL PROPERTY TINYLLM_CUDA_SIMULATED)
  if(_simulated)
    set_source_files_properties(${ARGN} PROPERTIES LANGUAGE CXX)
    set_property(SOURCE ${ARGN} APPEND PROPERTY COMPILE_OPTIONS -Wno-unknown-pragmas)
  endif()
endfunction()
