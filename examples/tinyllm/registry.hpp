// examples/tinyllm/registry.hpp — how the parts of the `tinyllm` command find
// each other.
//
// The command is assembled from small files, one per component, that register
// themselves when the program starts; no central list needs editing when a
// component lands. A file can register:
//
//   * a tour chapter    TINYLLM_TOUR_CHAPTER(order, "name", "Title") { ... }
//   * a subcommand      TINYLLM_COMMAND("tokenize", "one-line summary", usage_text) { ... }
//   * benchmark rows    TINYLLM_BENCH("component", "one-line description") { ... }
//
// Each body receives a context (below) and writes to ctx.out.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/timing.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace tinyllm_cli {

// The sentence every tour chapter works on.
inline constexpr const char* example_sentence =
    "The tiger jumped out of a tree to get a drink because it was thirsty.";

// ---- tour chapters ------------------------------------------------------------
// The training chapter's steps unless `tinyllm tour --train-steps` says otherwise: about a minute.
inline constexpr long long tour_train_steps_default = 500;
struct tour_context {
    std::ostream& out;
    bool gpu_available = false;  // a CUDA device is usable (chapters may show GPU results)
    long long train_steps = tour_train_steps_default;  // the training chapter's steps
};
struct chapter {
    int order;  // chapters run in increasing order: foundation 10, tokenize 20, positional 30, ...
    std::string name;
    std::string title;
    std::function<void(tour_context&)> run;
};
std::vector<chapter>& chapters();

// ---- subcommands ----------------------------------------------------------------
// args: the words after the subcommand name. Return the exit status. Throw
// usage_error for bad options (the caller prints it with the usage text, exit 2).
struct command {
    std::string name;
    std::string summary;
    std::string usage;
    std::function<int(const std::vector<std::string>& args, std::ostream& out)> run;
};
std::map<std::string, command>& commands();

// ---- benchmark rows -------------------------------------------------------------
// One row per implementation run on the same inputs. The first row marked
// `baseline` is what speed-ups are measured against (the naive version).
struct bench_row {
    std::string version;        // "cpu reference", "v1 naive", "v2 vectorized", "cudaMemcpy", ...
    std::string device;         // "cpu" or "cuda"
    tinyllm::timing_result timing;
    std::string check;          // how it agreed with the CPU reference, e.g. "bit-exact" or "max-abs 3e-7"
    bool agrees = true;         // false fails `tinyllm bench`
    bool baseline = false;
};
struct bench_context {
    std::ostream& out;
    long long size = 0;         // problem size requested with --size (0: the component's default)
    int repeats = 10;
    bool gpu_available = false;
    bool simulated = false;     // the CUDA rows run on the simulated GPU (docs/simulator.md)
    std::vector<bench_row> rows;  // the component appends here

    // No --size on the simulated GPU: components use small default shapes that still run every
    // version, dtype and code path of the real ones (the real defaults would take minutes to hours).
    bool simulated_default() const { return simulated && size == 0; }
    // --size, else the component's default: the real one, or the small one on the simulated GPU.
    long long size_or(long long real_default, long long simulated_default_size) const {
        return size > 0 ? size : simulated ? simulated_default_size : real_default;
    }
};
struct bench_component {
    std::string name;
    std::string description;
    // Several registrations may share a component name (e.g. one in a .cpp for
    // the CPU reference and one in a .cu for the CUDA versions); they run in
    // registration order of their `order` field.
    int order = 0;
    std::function<void(bench_context&)> run;
};
std::vector<bench_component>& bench_components();

// |got - want| / |want| over the vectors (the same length); infinity when a value
// is not finite; |got - want| when want is all zeros.
double rel_l2(const std::vector<float>& got, const std::vector<float>& want);

// A bench row's check when the version is expected within a tolerance of the
// reference, not its bits: "max-abs A, rel-L2 R" of got against want (the same
// length), and ok when every value is finite and rel-L2 <= bound.
struct bench_agreement {
    std::string text;
    bool ok = false;
};
bench_agreement rel_l2_agreement(const std::vector<float>& got, const std::vector<float>& want, double bound);

struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- helpers for subcommands ------------------------------------------------------
// A tiny option parser: `--name value`, `--name=value` and `--flag`.
struct parsed_args {
    std::map<std::string, std::string> options;  // --name value
    std::vector<std::string> flags;              // --flag
    std::vector<std::string> positional;
    bool has_flag(const std::string& f) const;
    std::string get(const std::string& name, const std::string& fallback = "") const;
    long long get_int(const std::string& name, long long fallback) const;
    double get_double(const std::string& name, double fallback) const;
};
// value_options: options that take a value; flag_options: options that don't.
// Anything else starting with "-" is a usage_error naming the option; "--" ends
// the options (what follows is positional, so a text may start with "-").
parsed_args parse_args(const std::vector<std::string>& args, const std::vector<std::string>& value_options,
                       const std::vector<std::string>& flag_options);
// "ID ID ..." (the value of --prompt-ids) as token ids; a usage_error when a word is not one.
std::vector<tinyllm::token_id> parse_token_ids(const std::string& text);
// A usage_error when FILE, the value of FLAG (an output), names a folder that does not
// exist: said before a command spends time on what it would write there.
void require_output_folder(const std::string& flag, const std::string& file);
// A usage_error naming the flag when --FLAG was given and its value names no file
// (require_input_file) or no checkpoint folder, one with a config.json
// (require_checkpoint): said before a command spends time on anything else.
void require_input_file(const parsed_args& a, const std::string& flag);
void require_checkpoint(const parsed_args& a, const std::string& flag);

namespace detail {
struct registrar {
    registrar(int order, const char* name, const char* title, void (*fn)(tour_context&));
    registrar(const char* name, const char* summary, const char* usage,
              int (*fn)(const std::vector<std::string>&, std::ostream&));
    registrar(const char* name, const char* description, int order, void (*fn)(bench_context&));
};
}  // namespace detail

}  // namespace tinyllm_cli

#define TINYLLM_CLI_CONCAT2(a, b) a##b
#define TINYLLM_CLI_CONCAT(a, b) TINYLLM_CLI_CONCAT2(a, b)

// Each registration defines a function and a registrar named after __COUNTER__, which is
// unique within a translation unit even when several source files are compiled as one
// (the command's unity build, examples/CMakeLists.txt).
#define TINYLLM_TOUR_CHAPTER(order, name, title) \
    TINYLLM_CLI_TOUR_CHAPTER(order, name, title, TINYLLM_CLI_CONCAT(tour_chapter_, __COUNTER__))
#define TINYLLM_CLI_TOUR_CHAPTER(order, name, title, fn)                                           \
    static void fn(::tinyllm_cli::tour_context&);                                                  \
    static const ::tinyllm_cli::detail::registrar TINYLLM_CLI_CONCAT(fn, _registrar)(order, name, title, &fn); \
    static void fn(::tinyllm_cli::tour_context & ctx)

#define TINYLLM_COMMAND(name, summary, usage) \
    TINYLLM_CLI_COMMAND(name, summary, usage, TINYLLM_CLI_CONCAT(command_, __COUNTER__))
#define TINYLLM_CLI_COMMAND(name, summary, usage, fn)                                              \
    static int fn(const std::vector<std::string>&, std::ostream&);                                 \
    static const ::tinyllm_cli::detail::registrar TINYLLM_CLI_CONCAT(fn, _registrar)(name, summary, usage, &fn); \
    static int fn(const std::vector<std::string>& args, std::ostream& out)

#define TINYLLM_BENCH(component, description, order) \
    TINYLLM_CLI_BENCH(component, description, order, TINYLLM_CLI_CONCAT(bench_, __COUNTER__))
#define TINYLLM_CLI_BENCH(component, description, order, fn)                                       \
    static void fn(::tinyllm_cli::bench_context&);                                                 \
    static const ::tinyllm_cli::detail::registrar TINYLLM_CLI_CONCAT(fn, _registrar)(component, description, order, &fn); \
    static void fn(::tinyllm_cli::bench_context & ctx)
