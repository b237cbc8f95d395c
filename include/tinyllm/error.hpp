// tinyllm/error.hpp — one exception type for every library error, and the
// precondition checks that produce it.
//
// A user who passes a wrong shape, a malformed file or an impossible parameter
// gets a `tinyllm::error` whose message says *what* was wrong and *where*:
//
//     tinyllm: precondition failed: k >= 1 (top_k: k = 0 must be at least 1)
//       at include/tinyllm/sampling.hpp:42 in top_k()
//
// Usage in library code:
//
//     TINYLLM_EXPECT(q.extent(3) == k.extent(3),
//                    "head dims of q and k differ: ", q.extent(3), " vs ", k.extent(3));
//     TINYLLM_FAIL("unknown architecture '", name, "' in ", path);
//
// The message parts are streamed with operator<<, so numbers and strings mix
// freely. These macros are host-only: device code cannot throw, and kernels
// report problems through their host-side launchers, which validate inputs
// before launching.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace tinyllm {

// The base of every exception thrown by tinyllm. Catch `tinyllm::error` to
// handle anything the library reports; `what()` is the full message.
class error : public std::runtime_error {
public:
    explicit error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {

// Concatenate any streamable values into a string: cat("k = ", 3) == "k = 3".
template <class... Parts>
std::string cat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}

// Keep only the path from the project root on ("include/tinyllm/x.hpp"), so
// messages are short and do not depend on where the checkout lives.
inline std::string_view short_path(std::string_view file) {
    for (std::string_view root : {"include/tinyllm/", "cuda/tinyllm/", "examples/", "tests/", "bench/"}) {
        if (auto at = file.rfind(root); at != std::string_view::npos) return file.substr(at);
    }
    return file;
}

template <class... Parts>
[[noreturn]] void fail(const char* file, int line, const char* function, const Parts&... parts) {
    throw error(cat("tinyllm: ", parts..., "\n  at ", short_path(file), ":", line, " in ", function, "()"));
}

}  // namespace detail
}  // namespace tinyllm

// Throw tinyllm::error with a message built from the arguments.
#define TINYLLM_FAIL(...) ::tinyllm::detail::fail(__FILE__, __LINE__, __func__, __VA_ARGS__)

// Check a precondition; on failure throw tinyllm::error naming the condition
// and the explanation built from the remaining arguments.
#define TINYLLM_EXPECT(condition, ...)                                                      \
    do {                                                                                    \
        if (!(condition)) {                                                                 \
            TINYLLM_FAIL("precondition failed: " #condition " (", __VA_ARGS__, ")");        \
        }                                                                                   \
    } while (false)
