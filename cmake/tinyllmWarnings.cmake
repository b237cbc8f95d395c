# tinyllm_project_options(<target>): the warnings, sanitizers and output folder
# for the project's own programs (tests, benchmarks, examples). The library
# targets themselves impose nothing on their users.
function(tinyllm_project_options target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(TINYLLM_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Werror>
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
  if(TINYLLM_SANITIZE)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${TINYLLM_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
    target_link_options(${target} PRIVATE -fsanitize=${TINYLLM_SANITIZE})
    # GCC 12 reports false "maybe-uninitialized" warnings inside libstdc++ (std::regex,
    # std::function) when sanitizers change inlining; they are not about our code.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
    endif()
  endif()
  set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/bin")
endfunction()

# tinyllm_checking_program(<target>): a program that checks rather than measures (the
# tests, and the GPU rows of the tinyllm command whose timings are taken on the GPU).
# Compile time is most of CI, so in an optimized build these compile at lower levels:
#   - C++ at -O2 instead of CMake's Release -O3 (about 30% less compile time; the
#     benchmarks and the command's CPU code keep -O3);
#   - with nvcc, the host code of .cu files at -O1: nvcc's -O sets only the host
#     compiler's level; cicc and ptxas run the same at every -O (their command lines
#     under `nvcc --dryrun` are identical), so the kernels are the same machine code.
#     The host side of such a program sets up inputs, launches and compares, and g++
#     spends three quarters of a CUDA test's compile time on it at -O3 (nvcc --time).
# Builds that are not optimized (Debug, the sanitizer presets at -O1) are left alone.
function(tinyllm_checking_program target)
  target_compile_options(${target} PRIVATE
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:Release>>:-O2>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<CONFIG:Release,RelWithDebInfo,MinSizeRel>>:-O1>)
endfunction()
