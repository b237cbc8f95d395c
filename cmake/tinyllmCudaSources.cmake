# tinyllm_cuda_sources(<file.cu>...): in a build for tinyllm's simulated GPU
# (TINYLLM_CUDA_SIMULATED), .cu files are C++ for the host compiler; elsewhere
# this does nothing. Call it in the directory that adds the sources:
#
#   add_executable(my_kernels my_kernels.cu)
#   tinyllm_cuda_sources(my_kernels.cu)
#   target_link_libraries(my_kernels PRIVATE tinyllm::cuda)
function(tinyllm_cuda_sources)
  if(TINYLLM_CUDA_SIMULATED)
    set_source_files_properties(${ARGN} PROPERTIES LANGUAGE CXX)
  endif()
endfunction()
