// tinyllm/version.hpp — the library's version, in one place.
//
// CMake reads these three numbers to set the package version, so a
// header-only user and a find_package() user always see the same value.
#pragma once

#define TINYLLM_VERSION_MAJOR 0
#define TINYLLM_VERSION_MINOR 1
#define TINYLLM_VERSION_PATCH 0

#define TINYLLM_VERSION_STRING "0.1.0"
