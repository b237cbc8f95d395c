// examples/tinyllm/registry.cpp — the registries and the option parser.
#include "registry.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

namespace tinyllm_cli {

std::vector<chapter>& chapters() {
    static std::vector<chapter> all;
    return all;
}
std::map<std::string, command>& commands() {
    static std::map<std::string, command> all;
    return all;
}
std::vector<bench_component>& bench_components() {
    static std::vector<bench_component> all;
    return all;
}

namespace detail {
registrar::registrar(int order, const char* name, const char* title, void (*fn)(tour_context&)) {
    chapters().push_back({order, name, title, fn});
}
registrar::registrar(const char* name, const char* summary, const char* usage,
                     int (*fn)(const std::vector<std::string>&, std::ostream&)) {
    commands()[name] = {name, summary, usage, fn};
}
registrar::registrar(const char* name, const char* description, int order, void (*fn)(bench_context&)) {
    bench_components().push_back({name, description, order, fn});
}
}  // namespace detail

bool parsed_args::has_flag(const std::string& f) const {
    return std::find(flags.begin(), flags.end(), f) != flags.end();
}

std::string parsed_args::get(const std::string& name, const std::string& fallback) const {
    const auto it = options.find(name);
    return it == options.end() ? fallback : it->second;
}

long long parsed_args::get_int(const std::string& name, long long fallback) const {
    const auto it = options.find(name);
    if (it == options.end()) return fallback;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0') throw usage_error("--" + name + " needs an integer, got '" + it->second + "'");
    if (errno == ERANGE)  // strtoll saturates at +-2^63 and says so only here
        throw usage_error("--" + name + " " + it->second + " is outside the 64-bit integers");
    return v;
}

double parsed_args::get_double(const std::string& name, double fallback) const {
    const auto it = options.find(name);
    if (it == options.end()) return fallback;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0') throw usage_error("--" + name + " needs a number, got '" + it->second + "'");
    return v;
}

parsed_args parse_args(const std::vector<std::string>& args, const std::vector<std::string>& value_options,
                       const std::vector<std::string>& flag_options) {
    auto is_in = [](const std::vector<std::string>& list, const std::string& s) {
        return std::find(list.begin(), list.end(), s) != list.end();
    };
    parsed_args parsed;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--") {  // the end of the options: what follows is positional, dashes and all
            parsed.positional.insert(parsed.positional.end(), args.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                     args.end());
            break;
        }
        if (a.size() < 2 || a[0] != '-') {
            parsed.positional.push_back(a);
            continue;
        }
        std::string name = a.substr(a[1] == '-' ? 2 : 1), value;
        const auto eq = name.find('=');
        const bool inline_value = eq != std::string::npos;
        if (inline_value) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
        }
        if (is_in(value_options, name)) {
            if (!inline_value) {
                if (i + 1 >= args.size()) throw usage_error("option --" + name + " needs a value");
                value = args[++i];
            }
            parsed.options[name] = value;
        } else if (is_in(flag_options, name)) {
            if (inline_value) throw usage_error("option --" + name + " takes no value (got '" + a + "')");
            parsed.flags.push_back(name);
        } else {
            throw usage_error("unknown option '" + a + "'");
        }
    }
    return parsed;
}

double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
        const double d = static_cast<double>(got[i]) - want[i];
        num += d * d;
        den += static_cast<double>(want[i]) * want[i];
    }
    if (!std::isfinite(num) || !std::isfinite(den)) return INFINITY;
    return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

bench_agreement rel_l2_agreement(const std::vector<float>& got, const std::vector<float>& want, double bound) {
    if (got.size() != want.size())
        return {"got " + std::to_string(got.size()) + " values for " + std::to_string(want.size()), false};
    double max_abs = 0.0;
    for (std::size_t i = 0; i < want.size(); ++i)
        max_abs = std::max(max_abs, std::fabs(static_cast<double>(got[i]) - want[i]));
    const double e = rel_l2(got, want);
    const bool finite = std::isfinite(e);
    std::ostringstream text;
    text << (finite ? "" : "non-finite values; ") << "max-abs " << max_abs << ", rel-L2 " << e;
    return {text.str(), finite && e <= bound};
}

std::vector<tinyllm::token_id> parse_token_ids(const std::string& text) {
    std::vector<tinyllm::token_id> ids;
    std::istringstream in(text);
    std::string word;
    while (in >> word) {
        char* end = nullptr;
        const long long v = std::strtoll(word.c_str(), &end, 10);
        if (*end != '\0' || v < 0 || v > 0x7fffffff) throw usage_error("--prompt-ids: '" + word + "' is not a token id");
        ids.push_back(static_cast<tinyllm::token_id>(v));
    }
    if (ids.empty()) throw usage_error("--prompt-ids holds no ids");
    return ids;
}

void require_input_file(const parsed_args& a, const std::string& flag) {
    if (!a.options.count(flag)) return;
    const std::string file = a.get(flag);
    if (!std::filesystem::exists(file)) throw usage_error("--" + flag + " " + file + ": no such file");
    if (std::filesystem::is_directory(file)) throw usage_error("--" + flag + " " + file + ": a folder, not a file");
    if (std::filesystem::is_character_file(file) || std::filesystem::is_block_file(file) ||
        std::filesystem::is_socket(file))
        throw usage_error("--" + flag + " " + file + ": a device or socket, not a file (it may never end)");
}

void require_checkpoint(const parsed_args& a, const std::string& flag) {
    if (!a.options.count(flag)) return;
    const std::string dir = a.get(flag);
    if (!std::filesystem::is_directory(dir)) throw usage_error("--" + flag + " " + dir + ": no such folder");
    if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json"))
        throw usage_error("--" + flag + " " + dir + " has no config.json (a Hugging Face checkpoint folder has one)");
}

void require_output_folder(const std::string& flag, const std::string& file) {
    const std::filesystem::path folder = std::filesystem::path(file).parent_path();
    if (!folder.empty() && !std::filesystem::is_directory(folder))
        throw usage_error(flag + " " + file + ": the folder " + folder.string() + " does not exist");
}

}  // namespace tinyllm_cli
