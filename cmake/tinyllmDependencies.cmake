# The CPU half's optional dependencies, found the same way when tinyllm is built and
# when an installed tinyllm is loaded by find_package (tinyllmConfig.cmake includes
# this file from the package's cmake folder).
#
# tinyllm_find_openblas(<found-var>): OpenBLAS with its cblas.h, as the imported target
# tinyllm::blas (its library and include folder). First pkg-config's `openblas` (Debian's
# libopenblas-dev installs /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h and
# an openblas.pc that names that folder), else FindBLAS with BLA_VENDOR=OpenBLAS and
# cblas.h searched for beside it.
include_guard(GLOBAL)

macro(tinyllm_find_openblas _tinyllm_found)
  set(${_tinyllm_found} FALSE)
  if(TARGET tinyllm::blas)
    set(${_tinyllm_found} TRUE)
  else()
    set(_tinyllm_blas_libraries "")
    set(_tinyllm_blas_hints "")
    find_package(PkgConfig QUIET)
    if(PKG_CONFIG_FOUND)
      pkg_check_modules(TINYLLM_PC_OPENBLAS QUIET openblas)
    endif()
    if(TINYLLM_PC_OPENBLAS_FOUND AND TINYLLM_PC_OPENBLAS_LINK_LIBRARIES)
      set(_tinyllm_blas_libraries ${TINYLLM_PC_OPENBLAS_LINK_LIBRARIES})
      set(_tinyllm_blas_hints ${TINYLLM_PC_OPENBLAS_INCLUDE_DIRS})
    else()
      set(_tinyllm_saved_vendor "${BLA_VENDOR}")
      set(BLA_VENDOR OpenBLAS)
      find_package(BLAS QUIET)
      set(BLA_VENDOR "${_tinyllm_saved_vendor}")
      if(BLAS_FOUND)
        set(_tinyllm_blas_libraries ${BLAS_LIBRARIES})
      endif()
    endif()
    if(_tinyllm_blas_libraries)
      find_path(TINYLLM_CBLAS_INCLUDE_DIR cblas.h
        HINTS ${_tinyllm_blas_hints}
        PATH_SUFFIXES openblas openblas-pthread openblas-openmp
                      ${CMAKE_LIBRARY_ARCHITECTURE}/openblas-pthread ${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp
        DOC "The folder of OpenBLAS's cblas.h")
      if(TINYLLM_CBLAS_INCLUDE_DIR)
        add_library(tinyllm::blas INTERFACE IMPORTED GLOBAL)
        set_target_properties(tinyllm::blas PROPERTIES
          INTERFACE_INCLUDE_DIRECTORIES "${TINYLLM_CBLAS_INCLUDE_DIR}"
          INTERFACE_LINK_LIBRARIES "${_tinyllm_blas_libraries}")
        set(${_tinyllm_found} TRUE)
      endif()
    endif()
  endif()
endmacro()
