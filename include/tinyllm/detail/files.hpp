// tinyllm/detail/files.hpp — writing a file so that it is either whole or not
// there: the bytes go to FILE.tmp, which is renamed to FILE only once written
// and closed without error. A rename within one file system is atomic, so an
// interrupted save (Ctrl-C, a full disk) never leaves a half-written file under
// the real name, and an older complete file stays until the new one replaces it.
#pragma once

#include <tinyllm/error.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace tinyllm::detail {

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
