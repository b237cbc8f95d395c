// tests/support/temp_dir.hpp — a fresh temporary folder for a test's files,
// removed with everything in it when the test case ends.
#pragma once

#include "support/compare.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace tinyllm_test {

struct temp_dir {
    std::filesystem::path path;
    explicit temp_dir(const std::string& prefix) {
        path = std::filesystem::temp_directory_path() /
               (prefix + "_" + std::to_string(test_seed()) + "_" + std::to_string(counter()++));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    std::string file(const std::string& name) const { return (path / name).string(); }
    static int& counter() {
        static int n = 0;
        return n;
    }
};

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

inline void write_text(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

}  // namespace tinyllm_test
