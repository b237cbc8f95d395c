// examples/tinyllm/cmd_exercise.cpp — `tinyllm exercise`: the course of exercises
// (exercises/README.md). With no argument it lists them, in course order, with their
// one-line statements and the command that checks each; with a name it prints that
// exercise's statement, the comment at the top of its file.
//
// The list is exercises/checks/catalog.hpp, compiled in, so the command works without
// the sources; the full statement is read from the source tree when it is there.
#include "paths.hpp"
#include "registry.hpp"

#include "../../exercises/checks/catalog.hpp"

#include <filesystem>
#include <fstream>
#include <iomanip>
#include <string>
#include <string_view>
#include <vector>

using namespace tinyllm_cli;

namespace {

// The directory the check programs are in: this program's own (bin/ of the build).
std::string program_dir() {
    std::error_code ec;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::string("bin") : self.parent_path().string();
}

// "layers/01_rms_norm" answers to itself, "layers/rms_norm" and "rms_norm".
bool matches(std::string_view full, std::string_view query) {
    if (query == full) return true;
    const std::size_t slash = full.find('/');
    const std::string_view component = full.substr(0, slash), stem = full.substr(slash + 1);
    const std::string_view bare = stem.size() > 3 && stem[2] == '_' ? stem.substr(3) : stem;
    return query == bare || query == std::string(component) + "/" + std::string(bare);
}

std::string check_command(const exercises::exercise_info& e) { return program_dir() + "/" + e.program + " " + e.name; }

}  // namespace

TINYLLM_COMMAND("exercise", "the exercises, per component, and how to check them",
                "usage: tinyllm exercise [NAME]\n\n"
                "Without NAME: every exercise in course order, with its one-line statement and the command that\n"
                "checks it. With NAME (e.g. layers/01_rms_norm, layers/rms_norm or rms_norm): its statement.\n"
                "Edit exercises/<component>/<nn>_<name>.cpp (.cu for kernels), rebuild the check program\n"
                "(cmake --build build --target exercises_cpu, or exercises_cuda), run the command shown.\n"
                "Reference answers: exercises/solutions/. See exercises/README.md.\n") {
    const auto a = parse_args(args, {}, {});
    if (a.positional.size() > 1) throw usage_error("give at most one exercise NAME");
    if (a.positional.empty()) {
        out << "Exercises (exercises/README.md): edit the file, rebuild its check program, run the check.\n";
        std::string component;
        for (const auto& e : exercises::catalog) {
            const std::string_view name = e.name;
            const std::string c(name.substr(0, name.find('/')));
            if (c != component) out << "\n" << (component = c) << "\n";
            out << "  " << std::left << std::setw(36) << e.name << e.summary << "\n"
                << "  " << std::setw(36) << ""
                << "check: " << check_command(e) << "\n";
        }
        out << "\nThe kernel exercises run on the simulated GPU in a -DTINYLLM_CUDA=SIM build (no NVIDIA card "
               "needed).\n";
        return 0;
    }
    const std::string& query = a.positional.front();
    for (const auto& e : exercises::catalog) {
        if (!matches(e.name, query)) continue;
        const std::filesystem::path file = std::filesystem::path(TINYLLM_SOURCE_DIR) / "exercises" / e.file;
        std::ifstream in(file);
        std::string line;
        bool printed = false;
        while (in && std::getline(in, line) && line.rfind("//", 0) == 0) {
            out << (line.size() > 3 ? line.substr(3) : std::string()) << "\n";
            printed = true;
        }
        if (!printed)
            out << e.name << ": " << e.summary << "\n(the full statement is at the top of exercises/" << e.file
                << ")\n";
        out << "\nfile:     exercises/" << e.file << "\nanswer:   exercises/solutions/" << e.file
            << "\ncheck:    " << check_command(e) << "\n";
        return 0;
    }
    throw usage_error("no exercise named '" + query + "' (tinyllm exercise lists them)");
}
