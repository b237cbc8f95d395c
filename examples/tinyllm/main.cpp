// examples/tinyllm/main.cpp — the `tinyllm` command: info, tour, bench, and
// every subcommand the components register (see registry.hpp).
//
//     tinyllm info                 version, build options, GPUs
//     tinyllm tour [--chapter N]   a guided walk through the library
//     tinyllm bench [COMPONENT]    CPU reference vs every CUDA version: agreement and speed
//     tinyllm <command> --help     usage of any subcommand
#include "gpu.hpp"
#include "registry.hpp"

#include <tinyllm/tinyllm.hpp>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

using namespace tinyllm_cli;

namespace {

void print_overview(std::ostream& out) {
    out << "tinyllm " << TINYLLM_VERSION_STRING
        << " — transformer building blocks: readable CPU references beside verified CUDA kernels\n\n"
        << "usage: tinyllm <command> [options]      (tinyllm <command> --help for details; tinyllm --version)\n\n"
           "commands:\n";
    for (const auto& [name, cmd] : commands()) out << "  " << std::left << std::setw(18) << name << cmd.summary << "\n";
}

bool gpu_usable() { return !query_gpus().devices.empty(); }

}  // namespace

// ---- info --------------------------------------------------------------------
TINYLLM_COMMAND("info", "version, build options and the GPUs found",
                "usage: tinyllm info\n\nPrints the version, how this binary was built and the CUDA devices it can use.\n") {
    const auto a = parse_args(args, {}, {});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    const gpu_report gpu = query_gpus();
    out << "tinyllm " << TINYLLM_VERSION_STRING << "\n"
        << "  C++ compiler:  " << __VERSION__ << " (C++" << __cplusplus / 100 % 100 << ")\n"
#ifdef NDEBUG
        << "  build:         optimized (NDEBUG), tensor bounds checks " << (TINYLLM_BOUNDS_CHECK ? "on" : "off") << "\n"
#else
        << "  build:         debug, tensor bounds checks " << (TINYLLM_BOUNDS_CHECK ? "on" : "off") << "\n"
#endif
        << "  CUDA:          "
        << (gpu.simulated         ? "simulated GPU (CPU): the kernels run on tinyllm's simulator, see docs/simulator.md"
            : gpu.built_with_cuda ? "built with CUDA " + gpu.cuda_version + " for sm_" + gpu.architectures
                                  : "not built")
        << "\n";
    if (gpu.devices.empty()) {
        out << "  GPUs:          no GPU (" << gpu.why_none << ")\n";
    } else {
        for (const auto& d : gpu.devices) out << "  " << d << "\n";
    }
    return 0;
}

// ---- tour ----------------------------------------------------------------------
TINYLLM_COMMAND("tour", "a guided walk through what the library does",
                "usage: tinyllm tour [--chapter NAME] [--train-steps N] [--list]\n\n"
                "Walks through tinyllm on one sentence, printing what goes into each step and what\n"
                "comes out, with shapes.\n\n"
                "  --chapter NAME     run only this chapter\n"
                "  --train-steps N    steps of the training chapter (default 500, about a minute)\n"
                "  --list             list the chapters\n") {
    const auto a = parse_args(args, {"chapter", "train-steps"}, {"list"});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    auto all = chapters();
    std::stable_sort(all.begin(), all.end(), [](const chapter& x, const chapter& y) { return x.order < y.order; });
    if (a.has_flag("list")) {
        for (const auto& c : all) out << "  " << std::left << std::setw(14) << c.name << " " << c.title << "\n";
        return 0;
    }
    const std::string only = a.get("chapter");
    if (!only.empty() && std::none_of(all.begin(), all.end(), [&](const chapter& c) { return c.name == only; }))
        throw usage_error("no chapter named '" + only + "' (tinyllm tour --list shows them)");
    const long long train_steps = a.get_int("train-steps", tour_train_steps_default);
    if (train_steps < 1) throw usage_error("--train-steps must be at least 1");
    tour_context ctx{out, gpu_usable(), train_steps};
    out << "tinyllm tour — the sentence we follow through the library:\n\n    \"" << example_sentence << "\"\n";
    int number = 0;
    for (const auto& c : all) {
        ++number;
        if (!only.empty() && c.name != only) continue;
        const std::string heading = "Chapter " + std::to_string(number) + ": " + c.title;
        out << "\n" << heading << "\n" << std::string(heading.size(), '=') << "\n\n";
        c.run(ctx);
    }
    return 0;
}

// ---- bench -----------------------------------------------------------------------
TINYLLM_COMMAND("bench", "run each component's CPU reference and CUDA versions: agreement and speed",
                "usage: tinyllm bench [COMPONENT...] [--size N] [--repeats N] [--l2-flush MODE] [--json FILE] [--list]\n\n"
                "For each component, runs the CPU reference and (when a GPU is present) every CUDA\n"
                "version on the same inputs, checks that they agree with the reference, and prints\n"
                "the median time, GB/s or TFLOP/s and the speed-up over the baseline (the naive\n"
                "version). Exits with status 1 if any version disagrees.\n\n"
                "  COMPONENT     only these components (default: all)\n"
                "  --size N      problem size (elements; each component documents its meaning). Without\n"
                "                it, a simulated build runs small default shapes (each component says which)\n"
                "  --repeats N   timed runs per version (default 10; the median is reported)\n"
                "  --l2-flush MODE  how the GPU's L2 is emptied before each timed run: read (default; a\n"
                "                buffer twice its size is read), write (it is written, which leaves dirty\n"
                "                lines the timed run pays to write back: runs A to E of docs/gpu.md) or\n"
                "                none (warm). Also TINYLLM_BENCH_L2_FLUSH\n"
                "  --json FILE   also write every timing as JSON (Google Benchmark layout)\n"
                "  --list        list the components\n") {
    const auto a = parse_args(args, {"size", "repeats", "json", "l2-flush"}, {"list"});
    std::vector<std::string> names;
    for (const auto& c : bench_components())
        if (std::find(names.begin(), names.end(), c.name) == names.end()) names.push_back(c.name);
    if (a.has_flag("list")) {
        for (const auto& n : names) {
            const auto it = std::find_if(bench_components().begin(), bench_components().end(),
                                         [&](const bench_component& c) { return c.name == n; });
            out << "  " << std::left << std::setw(18) << n << " " << it->description << "\n";
        }
        return 0;
    }
    for (const auto& p : a.positional)
        if (std::find(names.begin(), names.end(), p) == names.end())
            throw usage_error(
                "no benchmark component named '" + p + "' in this build (tinyllm bench --list shows them; " +
                (query_gpus().built_with_cuda ? std::string("check the spelling)")
                                              : std::string("components of CUDA kernels alone, such as model, "
                                                            "rope_cache or mlp_swiglu_gemv, exist only in CUDA and "
                                                            "simulated-GPU builds)")));
    const long long repeats = a.get_int("repeats", 10);
    if (repeats < 1) throw usage_error("--repeats must be at least 1");
    const long long size = a.get_int("size", 0);
    if (size < 0) throw usage_error("--size must be positive");
    // The CUDA timing harness reads the mode from the environment (cuda/tinyllm/cuda/timing.cuh):
    // --l2-flush sets it, and whichever gave the mode, it is checked here, before anything runs.
    if (const std::string flush = a.get("l2-flush"); !flush.empty()) ::setenv("TINYLLM_BENCH_L2_FLUSH", flush.c_str(), 1);
    const char* flush_env = std::getenv("TINYLLM_BENCH_L2_FLUSH");
    const std::string l2_flush = flush_env && *flush_env ? flush_env : "read";
    if (l2_flush != "read" && l2_flush != "write" && l2_flush != "none")
        throw usage_error("--l2-flush (or TINYLLM_BENCH_L2_FLUSH) must be read, write or none; got '" + l2_flush + "'");

    const bool gpu = gpu_usable();
    const gpu_report report = query_gpus();
    // On the simulated GPU the CUDA rows' agreement checks are real; their times are the simulator's.
    const bool simulated = report.simulated;
    out << (simulated ? "SIMULATED GPU (the CUDA rows run on the CPU simulator: their agreement checks are real, "
                        "their times are not GPU times; rows marked 'sim')"
            : gpu     ? "GPU: " + report.devices.front()
                      : "no GPU: CPU reference rows only")
        << "\n";
    if (gpu) out << "L2 flush before each timed GPU run: " << l2_flush << "\n";
    std::vector<tinyllm::timing_result> all_timings;
    bool all_agree = true;
    std::string stopped_component;  // a component that failed before its last rows
    for (const auto& name : names) {
        if (!a.positional.empty() && std::find(a.positional.begin(), a.positional.end(), name) == a.positional.end())
            continue;
        std::vector<bench_component> parts;
        for (const auto& c : bench_components())
            if (c.name == name) parts.push_back(c);
        std::stable_sort(parts.begin(), parts.end(), [](const auto& x, const auto& y) { return x.order < y.order; });
        bench_context ctx{out, size, static_cast<int>(repeats), gpu, simulated, {}};
        out << "\n== " << name << ": " << parts.front().description << "\n";
        // A version that fails (a CUDA error, a kernel that traps) ends the component, but
        // the rows measured before it are still printed and written: on a GPU run the
        // versions measured so far are the result. The components after it do not run (a
        // CUDA error may leave the context unusable); tools/gpu-check runs one per process.
        std::optional<std::string> stopped;  // the error that ended the component, if one did
        try {
            for (const auto& p : parts) p.run(ctx);
        } catch (const std::exception& e) {
            stopped = e.what();
        }
        const bench_row* base = nullptr;
        for (const auto& r : ctx.rows)
            if (r.baseline && !base) base = &r;
        out << std::left << std::setw(26) << "version" << std::setw(6) << "dev" << std::right << std::setw(12)
            << "median us" << std::setw(10) << "GB/s" << std::setw(10) << "TFLOP/s" << std::setw(10) << "speed-up"
            << "  check\n";
        for (const auto& r : ctx.rows) {
            std::ostringstream speedup;
            if (base) speedup << std::fixed << std::setprecision(2) << base->timing.median_us / r.timing.median_us << "x";
            const std::string device = simulated && r.device == "cuda" ? "sim" : r.device;
            out << std::left << std::setw(26) << (r.version + " ") << std::setw(6) << device << std::right << std::fixed
                << std::setprecision(2) << std::setw(12) << r.timing.median_us << std::setprecision(1)
                << std::setw(10) << r.timing.gb_per_s() << std::setprecision(3) << std::setw(10)
                << r.timing.tflop_per_s() << std::setw(10) << speedup.str() << "  " << (r.agrees ? "" : "DISAGREES: ")
                << r.check << "\n";
            out.unsetf(std::ios::fixed);
            all_agree = all_agree && r.agrees;
            all_timings.push_back(r.timing);
        }
        if (base) out << "(speed-up over " << base->version << ")\n";
        if (stopped) {
            out << name << " STOPPED after " << ctx.rows.size() << " rows: " << *stopped << "\n";
            stopped_component = name;
            break;
        }
    }
    if (const std::string path = a.get("json"); !path.empty()) {
        // Its folder is made if missing (docs write out/NAME.json, and out/ is not in a fresh clone).
        if (const auto folder = std::filesystem::path(path).parent_path(); !folder.empty()) {
            std::error_code ec;
            std::filesystem::create_directories(folder, ec);
        }
        std::ofstream file(path);
        if (!file) throw tinyllm::error("tinyllm bench: cannot write " + path);
        tinyllm::write_json(file, all_timings,
                            {{"device", simulated ? "simulated GPU (CPU): not GPU times"
                                        : gpu     ? report.devices.front()
                                                  : "cpu"},
                             {"l2_flush", gpu ? l2_flush : "none (CPU)"}});
        out << "\nwrote " << path << "\n";
    }
    if (!all_agree) out << "\nSome versions DISAGREE with the CPU reference.\n";
    if (!stopped_component.empty()) out << "\n" << stopped_component << " STOPPED before its last rows (above).\n";
    return all_agree && stopped_component.empty() ? 0 : 1;
}

// ---- dispatch -------------------------------------------------------------------------
int main(int argc, char* argv[]) {
#if defined(__GLIBC__)
    // Keep freed memory in the process. A training step allocates its activations and
    // gradients afresh (tens of MB; the logits of 16 x 128 tokens over 4096 entries alone
    // are 32 MB), and glibc serves large blocks with fresh pages from the kernel (mmap, or
    // the heap grown again after a trim), each zeroed and faulted in one by one: 9% of a
    // training step's CPU time was the kernel's, and steps ran 20% faster without it
    // (docs/training.md). No mmap for allocations, no trimming of the heap's top.
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        print_overview(std::cout);
        return args.empty() ? 2 : 0;
    }
    if (args[0] == "--version") {
        std::cout << "tinyllm " << TINYLLM_VERSION_STRING << "\n";
        return 0;
    }
    const auto it = commands().find(args[0]);
    if (it == commands().end()) {
        std::cerr << "tinyllm: unknown command '" << args[0] << "'\n\n";
        print_overview(std::cerr);
        return 2;
    }
    const command& cmd = it->second;
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (std::find(rest.begin(), rest.end(), "--help") != rest.end() ||
        std::find(rest.begin(), rest.end(), "-h") != rest.end()) {
        std::cout << cmd.usage;
        return 0;
    }
    try {
        return cmd.run(rest, std::cout);
    } catch (const usage_error& e) {
        std::cerr << "tinyllm " << cmd.name << ": " << e.what() << "\n\n" << cmd.usage;
        return 2;
    } catch (const std::exception& e) {
        std::cerr << e.what() << "\n";
        return 1;
    }
}
