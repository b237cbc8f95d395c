// tinyllm/detail/files.hpp — reading a whole file, and writing one so that it
// is either whole or not there.
//
// Reading: a folder opens on Linux and reads as nothing, and a device such as
// /dev/zero reads without end; both are refused by name instead of being taken
// for an empty file or filling the memory. Pipes (`--vocab <(...)`) are read.
//
// Writing: the bytes go to FILE.tmp, which is renamed to FILE only once written
// and closed without error. A rename within one file system is atomic, so an
// interrupted save (Ctrl-C, a full disk) never leaves a half-written file under
// the real name, and an older complete file stays until the new one replaces it.
#pragma once

#include <tinyllm/error.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

namespace tinyllm::detail {

// The bytes of the file at `path`. `what` names the kind of file in errors ("a JSON file").
inline std::string read_whole_file(const std::string& path, std::string_view what = "a file") {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (fs::is_directory(st)) TINYLLM_FAIL("'", path, "' is a folder, not ", what);
    if (fs::is_character_file(st) || fs::is_block_file(st) || fs::is_socket(st))
        TINYLLM_FAIL("'", path, "' is a device or socket, not ", what, " (it may never end)");
    std::ifstream in(path, std::ios::binary);
    if (!in) TINYLLM_FAIL("cannot open '", path, "'");
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) TINYLLM_FAIL("reading '", path, "' failed");
    return ss.str();
}

// Move the written `tmp` to `path`, replacing it. `who` names the caller in errors.
inline void rename_into_place(const std::string& tmp, const std::string& path, std::string_view who) {
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    TINYLLM_EXPECT(!ec, who, ": cannot move '", tmp, "' to '", path, "': ", ec.message());
}

// Write `bytes` to path + ".tmp", then rename it to `path`.
inline void write_file_replacing(const std::string& path, std::string_view bytes, std::string_view who) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        out.close();
        TINYLLM_EXPECT(out.good(), who, ": cannot write '", tmp, "' (disk full, or no permission?)");
    }
    rename_into_place(tmp, path, who);
}

}  // namespace tinyllm::detail
