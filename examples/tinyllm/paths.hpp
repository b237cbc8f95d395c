// examples/tinyllm/paths.hpp — where the command finds its defaults: the
// corpus tools/bootstrap writes (data/kjv.txt) and the model `tinyllm train`
// trains from it with no arguments (models/kjv), both in the source tree and
// git-ignored. `tinyllm generate` without --model uses the latter.
#pragma once

#include <filesystem>
#include <string>

#ifndef TINYLLM_SOURCE_DIR
#define TINYLLM_SOURCE_DIR "."
#endif

namespace tinyllm_cli {

inline std::string default_corpus() { return (std::filesystem::path(TINYLLM_SOURCE_DIR) / "data" / "kjv.txt").string(); }
inline std::string default_model_dir() { return (std::filesystem::path(TINYLLM_SOURCE_DIR) / "models" / "kjv").string(); }

}  // namespace tinyllm_cli
