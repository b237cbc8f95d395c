// examples/tinyllm/cmd_serve.cpp — `tinyllm serve`: a checkpoint served over
// HTTP with the OpenAI API (completions, chat completions, streaming), on the
// continuous-batching engine of <tinyllm/engine.hpp>.
//
// How a request flows. The HTTP library (cpp-httplib) runs each connection on a
// thread of its pool. The handler reads the JSON body, checks every field (a bad
// one is a 400 naming it, in OpenAI's error format), encodes the prompt with the
// model's tokenizer and submits it to the engine. The engine's one thread steps
// the batcher — every running request advances one token per step — and puts
// each new token in its request's queue. The handler turns the tokens into text
// as they come (stream_decoder: a character split across tokens waits for its
// last byte), watches for the request's stop strings, and either collects the
// whole answer or sends each piece as a server-sent event. A client that goes
// away mid-stream is noticed at the next write; its request is cancelled and
// its KV blocks go back to the pool.
//
// The chat template (a checkpoint's own Jinja template is not run): each message
// becomes "<Role>: <content>\n" with the roles System, User and Assistant, and
// the prompt ends with "Assistant:", so that the reply is what follows it. The
// reply stops at "\nUser:" besides the request's own stop strings.
//
// --device cuda runs the engine's step on the CUDA model, its KV blocks on the
// device (gpu_serve.cu, cuda/tinyllm/cuda/batching.cuh); everything here is the
// same for both devices, since the engine is the same type.
//
// docs/serving.md has the endpoints, what each field does here, and the curl and
// openai-client examples.
#include "gpu.hpp"
#include "paths.hpp"
#include "registry.hpp"

#ifdef TINYLLM_HAVE_HTTPLIB

#include <tinyllm/detail/json.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/engine.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/quantize.hpp>
#include <tinyllm/tokenizer.hpp>
#include <tinyllm/tokenizer_io.hpp>

#include <httplib.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace tinyllm_cli;
namespace json = tinyllm::json;
using tinyllm::index_t;
using tinyllm::token_id;

namespace {

// ---- errors in OpenAI's shape -------------------------------------------------------
// {"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}
struct api_error : std::runtime_error {
    api_error(int status, std::string message, std::string param = {}, std::string type = "invalid_request_error",
              std::string code = {})
        : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)),
          code(std::move(code)) {}
    int status;
    std::string param, type, code;
};

std::string error_body(const std::string& message, const std::string& type, const std::string& param,
                       const std::string& code) {
    return "{\"error\":{\"message\":" + json::quote(message) + ",\"type\":" + json::quote(type) +
           ",\"param\":" + (param.empty() ? "null" : json::quote(param)) +
           ",\"code\":" + (code.empty() ? "null" : json::quote(code)) + "}}";
}

// A library error as a client reads it: without the "tinyllm: " prefix and the source
// location, and a failed precondition ("precondition failed: COND (MESSAGE)") as its MESSAGE
// alone — the C++ condition means nothing to an HTTP client.
std::string client_message(std::string m) {
    if (m.rfind("tinyllm: ", 0) == 0) m.erase(0, 9);
    if (const auto at = m.find("\n  at "); at != std::string::npos) m.resize(at);
    constexpr std::string_view failed = "precondition failed: ";
    if (m.rfind(failed, 0) == 0 && !m.empty() && m.back() == ')') {
        int depth = 0;  // the '(' that the last ')' closes
        for (std::size_t i = m.size(); i-- > failed.size();) {
            depth += m[i] == ')' ? 1 : m[i] == '(' ? -1 : 0;
            if (depth == 0) {
                if (i > failed.size() && m[i - 1] == ' ') m = m.substr(i + 1, m.size() - i - 2);
                break;
            }
        }
    }
    return m;
}
std::string client_message(const tinyllm::error& e) { return client_message(std::string(e.what())); }

void send_error(httplib::Response& res, const api_error& e) {
    res.status = e.status;
    res.set_content(error_body(e.what(), e.type, e.param, e.code), "application/json");
}

// ---- reading request fields -----------------------------------------------------------
const json::value* field(const json::value& body, const char* name) {
    const json::value* v = body.find(name);
    return v && !v->is_null() ? v : nullptr;  // null means "not given", as in OpenAI's API
}

double number_field(const json::value& body, const char* name, double fallback, double lo, double hi,
                    const char* range) {
    const json::value* v = field(body, name);
    if (!v) return fallback;
    if (!v->is_number()) throw api_error(400, std::string("'") + name + "' must be a number", name);
    const double x = v->as_double();
    if (!(x >= lo && x <= hi))
        throw api_error(400, std::string("'") + name + "' = " + v->number_text() + " must be " + range, name);
    return x;
}

std::optional<long long> int_field(const json::value& body, const char* name, long long lo, long long hi,
                                   const char* range) {
    const json::value* v = field(body, name);
    if (!v) return std::nullopt;
    long long x = 0;
    try {
        x = v->as_int64();
    } catch (const std::exception&) {
        throw api_error(400, std::string("'") + name + "' must be an integer", name);
    }
    if (x < lo || x > hi)
        throw api_error(400, std::string("'") + name + "' = " + std::to_string(x) + " must be " + range, name);
    return x;
}

bool bool_field(const json::value& body, const char* name) {
    const json::value* v = field(body, name);
    if (!v) return false;
    if (!v->is_bool()) throw api_error(400, std::string("'") + name + "' must be true or false", name);
    return v->as_bool();
}

// A field tinyllm does not implement: accepted when it asks for the default, refused by name otherwise.
void refuse_unless_default(const json::value& body, const char* name, const std::string& why) {
    const json::value* v = field(body, name);
    if (!v) return;
    const bool is_default = (v->is_number() && v->as_double() == 0.0) || (v->is_bool() && !v->as_bool()) ||
                            (v->is_object() && v->size() == 0);
    if (!is_default) throw api_error(400, std::string("'") + name + "' is not supported by tinyllm serve: " + why, name);
}

// ---- the served model ----------------------------------------------------------------
struct served_model {
    std::string name;
    std::unique_ptr<tinyllm::cpu::model> model;  // --device cpu's (the CUDA engine holds its own)
    std::unique_ptr<tinyllm::tokenizer> tok;
    std::unique_ptr<tinyllm::engine> engine;
    index_t max_positions = 0;  // prompt + new tokens of one request (the pool's size; GPT-2's positions)
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    std::atomic<long long> http_requests{0}, prompt_tokens{0}, completion_tokens{0}, disconnects{0};
};

// What one request asks for, after every field has been checked.
struct generation_request {
    std::vector<token_id> prompt;
    tinyllm::batch_request batch;
    std::vector<std::string> stop;
    bool stream = false, include_usage = false, chat = false;
};

// The template's ids before a text ("<s>" for a Llama tokenizer.json; none for byte-level BPE), then
// the text's, as `tinyllm generate` encodes a prompt.
std::vector<token_id> encode(const served_model& s, const std::string& text) {
    std::vector<token_id> ids(s.tok->template_before().begin(), s.tok->template_before().end());
    const std::vector<token_id> text_ids = s.tok->encode(text);
    if (text_ids.empty()) throw api_error(400, "the prompt is empty", "prompt");
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
    return ids;
}

// The request's "model": checked first, so that a request for another model is told so
// (404) whatever else is wrong with it.
void check_model(const served_model& s, const json::value& body) {
    const json::value* model = field(body, "model");
    if (!model) throw api_error(400, "'model' is required: the served model is '" + s.name + "'", "model");
    if (!model->is_string())
        throw api_error(400, "'model' must be a string: the served model is '" + s.name + "'", "model");
    if (model->as_string() != s.name)
        throw api_error(404, "the model '" + model->as_string() + "' does not exist; this server has '" + s.name + "'",
                        "model", "invalid_request_error", "model_not_found");
}

// The fields completions and chat completions share: sampling, length, stop strings, streaming.
void read_common(const served_model& s, const json::value& body, generation_request& g, index_t default_max_tokens) {
    if (const auto n = int_field(body, "n", 1, 1, "1 (one choice per request)")) (void)n;
    if (const auto n = int_field(body, "best_of", 1, 1, "1 (one choice per request)")) (void)n;
    auto& adjust = g.batch.adjust;
    adjust.presence_penalty = static_cast<float>(number_field(body, "presence_penalty", 0.0, -2.0, 2.0, "in [-2, 2]"));
    adjust.frequency_penalty =
        static_cast<float>(number_field(body, "frequency_penalty", 0.0, -2.0, 2.0, "in [-2, 2]"));
    if (const json::value* bias = field(body, "logit_bias")) {  // {"token id": bias in [-100, 100], ...}
        if (!bias->is_object()) throw api_error(400, "'logit_bias' must be an object of token ids to biases", "logit_bias");
        const index_t vocab = s.engine->model().config().vocab_size;
        for (const auto& [key, v] : bias->as_object()) {
            long long id = -1;
            const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
            if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id >= vocab)
                throw api_error(400, "'logit_bias' key '" + key + "' is not a token id in [0, " +
                                         std::to_string(vocab) + ")", "logit_bias");
            if (!v.is_number() || !(v.as_double() >= -100.0 && v.as_double() <= 100.0))
                throw api_error(400, "'logit_bias' for token " + key + " must be a number in [-100, 100]",
                                "logit_bias");
            adjust.logit_bias[static_cast<token_id>(id)] = static_cast<float>(v.as_double());
        }
    }
    // Log-probabilities (batching.hpp: the model's own distribution, before penalties, bias and
    // temperature). Completions: "logprobs": k, the top k with each token (k in [0, 20]); chat:
    // "logprobs": true, and "top_logprobs": k alongside.
    if (g.chat) {
        const bool wanted = bool_field(body, "logprobs");
        const auto k = int_field(body, "top_logprobs", 0, 20, "in [0, 20]");
        if (k && !wanted) throw api_error(400, "'top_logprobs' needs \"logprobs\": true", "top_logprobs");
        if (wanted) g.batch.logprobs = k ? static_cast<index_t>(*k) : 0;
    } else {
        if (field(body, "top_logprobs"))
            throw api_error(400, "'top_logprobs' belongs to chat completions; completions take \"logprobs\": k",
                            "top_logprobs");
        if (const auto k = int_field(body, "logprobs", 0, 20, "in [0, 20]")) g.batch.logprobs = static_cast<index_t>(*k);
    }
    refuse_unless_default(body, "echo", "the prompt is not echoed");
    if (field(body, "suffix")) throw api_error(400, "'suffix' (insertion) is not supported by tinyllm serve", "suffix");

    auto& p = g.batch.sampling;
    // The samplers take floats: a positive value that a float rounds to 0 (or to a denormal,
    // which divides a logit to +inf) is refused here rather than read as another one.
    const double temperature = number_field(body, "temperature", 1.0, 0.0, 2.0, "in [0, 2]");
    p.temperature = static_cast<float>(temperature);
    if (temperature > 0.0 && !(p.temperature >= std::numeric_limits<float>::min()))
        throw api_error(400,
                        "'temperature' = " + field(body, "temperature")->number_text() +
                            " is too small for the sampler's float; use 0 for greedy decoding",
                        "temperature");
    const double top_p = number_field(body, "top_p", 1.0, 0.0, 1.0, "in (0, 1]");
    if (!(static_cast<float>(top_p) > 0.0f))
        throw api_error(
            400, "'top_p' = " + field(body, "top_p")->number_text() + " must be in (0, 1] (and above 0 as a float)",
            "top_p");
    if (top_p < 1.0) p.top_p = static_cast<float>(top_p);
    // Beyond OpenAI's fields, as vLLM accepts them (the openai client sends them through extra_body).
    if (const auto k = int_field(body, "top_k", -1, 1 << 30, "-1 (off) or at least 1"); k && *k != -1) {
        if (*k == 0) throw api_error(400, "'top_k' = 0 must be -1 (off) or at least 1", "top_k");
        p.top_k = static_cast<index_t>(*k);
    }
    if (const double min_p = number_field(body, "min_p", 0.0, 0.0, 1.0, "in [0, 1]"); min_p > 0.0)
        p.min_p = static_cast<float>(min_p);
    // vLLM's ignore_eos: run to max_tokens (or a stop string) even past an end-of-sequence token.
    if (bool_field(body, "ignore_eos")) g.batch.eos_token_ids = {-1};  // an id no model produces
    if (const auto seed = int_field(body, "seed", INT64_MIN, INT64_MAX, "an integer"))
        g.batch.seed = static_cast<std::uint64_t>(*seed);
    else
        g.batch.seed = std::random_device{}() * 0x100000000ull + std::random_device{}();  // no seed: a fresh draw

    if (const json::value* stop = field(body, "stop")) {
        const auto add = [&](const json::value& v) {
            if (!v.is_string()) throw api_error(400, "'stop' must be a string or an array of strings", "stop");
            if (!v.as_string().empty()) g.stop.push_back(v.as_string());
        };
        if (stop->is_array()) {
            if (stop->size() > 4) throw api_error(400, "'stop' has " + std::to_string(stop->size()) +
                                                           " strings; at most 4 are allowed", "stop");
            for (const json::value& v : stop->as_array()) add(v);
        } else {
            add(*stop);
        }
    }
    g.stream = bool_field(body, "stream");
    if (const json::value* so = field(body, "stream_options")) {
        if (!so->is_object()) throw api_error(400, "'stream_options' must be an object", "stream_options");
        if (!g.stream) throw api_error(400, "'stream_options' is only allowed with \"stream\": true", "stream_options");
        if (const json::value* u = field(*so, "include_usage"); u && !u->is_bool())
            throw api_error(400, "'stream_options.include_usage' must be true or false",
                            "stream_options.include_usage");
        g.include_usage = bool_field(*so, "include_usage");
    }

    const index_t room = s.max_positions - static_cast<index_t>(g.prompt.size());
    if (room < 1)
        throw api_error(400, "the prompt has " + std::to_string(g.prompt.size()) + " tokens; this server holds at most " +
                                 std::to_string(s.max_positions) + " positions per request, prompt and reply together",
                        g.chat ? "messages" : "prompt");
    // A chat reply has at least one token (OpenAI and vLLM refuse 0); a completion of 0 tokens is
    // allowed, as the legacy API allows it.
    const long long least = g.chat ? 1 : 0;
    const char* least_text = g.chat ? "at least 1" : "at least 0";
    std::optional<long long> max_tokens = int_field(body, "max_tokens", least, 1 << 30, least_text);
    if (const auto m = int_field(body, "max_completion_tokens", least, 1 << 30, least_text)) max_tokens = m;
    if (max_tokens && *max_tokens > room)
        throw api_error(400, "'max_tokens' = " + std::to_string(*max_tokens) + " with a prompt of " +
                                 std::to_string(g.prompt.size()) + " tokens exceeds the " +
                                 std::to_string(s.max_positions) + " positions this server holds per request",
                        "max_tokens");
    g.batch.max_new_tokens = max_tokens ? static_cast<index_t>(*max_tokens) : std::min(default_max_tokens, room);
    g.batch.prompt = g.prompt;
}

generation_request read_completion(const served_model& s, const json::value& body) {
    generation_request g;
    check_model(s, body);
    const json::value* prompt = field(body, "prompt");
    if (!prompt) throw api_error(400, "'prompt' is required", "prompt");
    // A string, or token ids; an array of one of either (one prompt per request here).
    const json::value* one = prompt;
    if (prompt->is_array() && prompt->size() >= 1 && (prompt->at(0).is_string() || prompt->at(0).is_array())) {
        if (prompt->size() != 1)
            throw api_error(400, "'prompt' holds " + std::to_string(prompt->size()) +
                                     " prompts; tinyllm serve takes one per request (send them concurrently)",
                            "prompt");
        one = &prompt->at(0);
    }
    if (one->is_string()) {
        g.prompt = encode(s, one->as_string());
    } else if (one->is_array()) {
        const index_t vocab = s.engine->model().config().vocab_size;
        for (const json::value& v : one->as_array()) {
            long long id = -1;
            try {
                id = v.as_int64();
            } catch (const std::exception&) {
                throw api_error(400, "'prompt' must be a string or an array of token ids", "prompt");
            }
            if (id < 0 || id >= vocab)
                throw api_error(400, "'prompt' token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                         std::to_string(vocab) + ")", "prompt");
            g.prompt.push_back(static_cast<token_id>(id));
        }
        if (g.prompt.empty()) throw api_error(400, "the prompt is empty", "prompt");
    } else {
        throw api_error(400, "'prompt' must be a string or an array of token ids", "prompt");
    }
    read_common(s, body, g, 16);  // OpenAI's default max_tokens for completions
    return g;
}

// The documented template (top of this file).
std::string chat_prompt(const json::value& body) {
    const json::value* messages = field(body, "messages");
    if (!messages || !messages->is_array() || messages->size() == 0)
        throw api_error(400, "'messages' must be a non-empty array of {\"role\", \"content\"}", "messages");
    std::string text;
    for (std::size_t i = 0; i < messages->size(); ++i) {
        const json::value& m = messages->at(i);
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (!m.is_object()) throw api_error(400, where + " must be an object", where);
        const json::value* role = field(m, "role");
        if (!role || !role->is_string()) throw api_error(400, where + ".role must be a string", where + ".role");
        const std::string& r = role->as_string();
        const char* name = r == "system" || r == "developer" ? "System"
                           : r == "user"                     ? "User"
                           : r == "assistant"                ? "Assistant"
                                                             : nullptr;
        if (!name)
            throw api_error(400, where + ".role '" + r + "' must be system, developer, user or assistant",
                            where + ".role");
        const json::value* content = field(m, "content");
        std::string piece;
        if (content && content->is_string()) {
            piece = content->as_string();
        } else if (content && content->is_array()) {  // [{"type": "text", "text": ...}, ...]
            for (const json::value& part : content->as_array()) {
                const json::value* type = part.is_object() ? field(part, "type") : nullptr;
                const json::value* t = part.is_object() ? field(part, "text") : nullptr;
                if (!type || !type->is_string() || type->as_string() != "text" || !t || !t->is_string())
                    throw api_error(400, where + ".content parts must be {\"type\": \"text\", \"text\": ...}",
                                    where + ".content");
                piece += t->as_string();
            }
        } else {
            throw api_error(400, where + ".content must be a string or an array of text parts", where + ".content");
        }
        text += std::string(name) + ": " + piece + "\n";
    }
    return text + "Assistant:";
}

// Chat fields that would change what the reply must be (a tool call, a JSON object): refused by
// name rather than ignored, unless they ask for what tinyllm does anyway (no tools, plain text).
void refuse_chat_features(const json::value& body) {
    for (const char* name : {"tools", "functions"})
        if (const json::value* v = field(body, name); v && !(v->is_array() && v->size() == 0))
            throw api_error(
                400, std::string("'") + name + "' is not supported by tinyllm serve: the model has no tool calling",
                name);
    for (const char* name : {"tool_choice", "function_call"})
        if (const json::value* v = field(body, name);
            v && !(v->is_string() && (v->as_string() == "none" || v->as_string() == "auto")))
            throw api_error(400,
                            std::string("'") + name +
                                "' is not supported by tinyllm serve: only \"none\" or \"auto\" (no tools) is accepted",
                            name);
    if (const json::value* v = field(body, "response_format")) {
        const json::value* type = v->is_object() ? field(*v, "type") : nullptr;
        if (!type || !type->is_string() || type->as_string() != "text")
            throw api_error(400,
                            "'response_format' is not supported by tinyllm serve beyond {\"type\": \"text\"}: "
                            "replies are not constrained to JSON",
                            "response_format");
    }
}

generation_request read_chat(const served_model& s, const json::value& body) {
    generation_request g;
    g.chat = true;
    check_model(s, body);
    refuse_chat_features(body);
    g.prompt = encode(s, chat_prompt(body));
    read_common(s, body, g, 256);  // a reply without max_tokens: at most 256 tokens
    g.stop.push_back("\nUser:");
    return g;
}

// ---- tokens to text, with stop strings -------------------------------------------------
// Text is released only when no stop string can begin in it: the longest end
// of the unreleased text that begins a stop string is held back until the next
// token settles it.
class text_stream {
public:
    text_stream(const tinyllm::tokenizer& tok, std::vector<std::string> stop) : dec_(tok), stop_(std::move(stop)) {}

    // Feed a token; returns the text that is now final. *stopped: a stop string
    // was completed (the text before it has been returned; nothing follows).
    std::string push(token_id id, bool* stopped) {
        text_ += dec_.push(id);
        return release(false, stopped);
    }
    // End of the stream: everything held back.
    std::string finish() {
        text_ += dec_.finish();
        bool stopped = false;
        return release(true, &stopped);
    }
    const std::string& text() const { return text_; }

private:
    std::string release(bool at_end, bool* stopped) {
        std::size_t cut = std::string::npos;
        for (const std::string& s : stop_) cut = std::min(cut, text_.find(s, sent_));
        if (cut != std::string::npos) {
            *stopped = true;
            std::string out = text_.substr(sent_, cut - sent_);
            text_.resize(cut);
            sent_ = cut;
            return out;
        }
        std::size_t hold = 0;
        if (!at_end)
            for (const std::string& s : stop_)
                for (std::size_t k = std::min(s.size() - 1, text_.size() - sent_); k > hold; --k)
                    if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
                        hold = k;
                        break;
                    }
        std::string out = text_.substr(sent_, text_.size() - hold - sent_);
        sent_ = text_.size() - hold;
        return out;
    }

    tinyllm::stream_decoder dec_;
    std::vector<std::string> stop_;
    std::string text_;
    std::size_t sent_ = 0;
};

const char* openai_finish(tinyllm::finish_reason r, bool stopped) {
    if (stopped || r == tinyllm::finish_reason::eos) return "stop";
    return "length";
}

std::string random_id(const char* prefix) {
    static std::atomic<unsigned long long> counter{0};
    static const unsigned long long base = std::random_device{}();
    char buf[48];
    std::snprintf(buf, sizeof buf, "%s-%llx%06llx", prefix, base, counter++);
    return buf;
}

std::string usage_json(std::size_t prompt, std::size_t completion) {
    return "{\"prompt_tokens\":" + std::to_string(prompt) + ",\"completion_tokens\":" + std::to_string(completion) +
           ",\"total_tokens\":" + std::to_string(prompt + completion) + "}";
}

// Set by SIGINT or SIGTERM (signal_stopper, below): the requests still running end at
// their next wait with a 503, so that stopping does not wait for a long generation.
std::atomic<bool> stop_requested{false};

// One request running in the engine, read by its handler (or its stream).
struct running_request {
    served_model& s;
    generation_request g;
    std::shared_ptr<tinyllm::engine_request> handle;
    text_stream text;
    std::string id;
    long long created = static_cast<long long>(std::time(nullptr));
    std::size_t completion_tokens = 0;
    bool finished = false, stopped = false;
    tinyllm::finish_reason reason = tinyllm::finish_reason::none;
    // With log-probabilities asked for: the events of the reply's tokens (an end-of-sequence
    // token, which adds no text, is left out), and how many of them were sent already.
    std::vector<tinyllm::batch_event> token_events;
    std::size_t events_sent = 0;

    running_request(served_model& s_, generation_request g_)
        : s(s_), g(std::move(g_)), text(*s_.tok, g.stop), id(random_id(g.chat ? "chatcmpl" : "cmpl")) {
        handle = s.engine->submit(g.batch);
        s.prompt_tokens += static_cast<long long>(g.prompt.size());
    }
    ~running_request() {
        if (!finished) s.engine->cancel(*handle);  // the client left: free the blocks
    }

    // The text the next event releases ("" if none came within the wait), until finished.
    std::string next(std::chrono::milliseconds wait) {
        if (stop_requested.load()) {
            s.engine->cancel(*handle);
            finished = true;
            throw api_error(503, "the server is shutting down", "", "server_error");
        }
        const auto e = handle->next(wait);
        if (!e) return {};
        std::string out;
        if (e->token >= 0) {
            ++completion_tokens, ++s.completion_tokens;
            if (e->finished != tinyllm::finish_reason::eos) {
                out = text.push(e->token, &stopped);
                if (g.batch.logprobs >= 0) token_events.push_back(*e);
            }
        }
        if (stopped) {  // the rest is not wanted: end it in the engine now
            s.engine->stop(*handle);
            finished = true;
            reason = tinyllm::finish_reason::eos;
            return out;
        }
        if (e->finished != tinyllm::finish_reason::none) {
            finished = true;
            reason = e->finished;
            if (const std::string error = handle->error(); !error.empty()) {
                // The request's own parameters (a logit its temperature or penalties overflowed)
                // or, for every request in the step, the model.
                if (e->finished == tinyllm::finish_reason::failed)
                    throw api_error(400, "the request's sampling failed: " + client_message(error));
                throw api_error(500, "the model failed: " + client_message(error), "", "server_error");
            }
            out += text.finish();
        }
        return out;
    }
};

// A token's text for the log-probabilities: its bytes when they are UTF-8 on their own,
// else "bytes:\\xNN..." (a token that holds part of a character), as OpenAI writes them.
std::string token_text(const tinyllm::tokenizer& tok, token_id id) {
    const std::string_view b = tok.token_bytes(id);
    if (tinyllm::detail::is_valid_utf8(b)) return std::string(b);
    std::string out = "bytes:";
    char buf[8];
    for (const unsigned char c : b) {
        std::snprintf(buf, sizeof buf, "\\x%02x", c);
        out += buf;
    }
    return out;
}

std::string bytes_json(std::string_view b) {
    std::string out = "[";
    for (std::size_t i = 0; i < b.size(); ++i) {
        if (i) out += ',';
        out += std::to_string(static_cast<unsigned char>(b[i]));
    }
    out += ']';
    return out;
}

std::string number_json(float x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
    return buf;
}

// The "logprobs" object of a choice for the token events [from, to) of the reply, or null
// when none were asked for. Chat: {"content": [{token, logprob, bytes, top_logprobs}]};
// completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, the offsets in
// characters of the reply's text (counted from the tokens' decoded bytes).
std::string logprobs_json(const running_request& r, std::size_t from, std::size_t to) {
    if (r.g.batch.logprobs < 0) return "null";
    const tinyllm::tokenizer& tok = *r.s.tok;
    const auto& ev = r.token_events;
    if (r.g.chat) {
        std::string content;
        for (std::size_t i = from; i < to; ++i) {
            const auto entry = [&](std::string& out, token_id id, float lp) {
                out += "\"token\":";
                out += json::quote(token_text(tok, id));
                out += ",\"logprob\":";
                out += number_json(lp);
                out += ",\"bytes\":";
                out += bytes_json(tok.token_bytes(id));
            };
            content += i > from ? ",{" : "{";
            entry(content, ev[i].token, ev[i].logprob);
            content += ",\"top_logprobs\":[";
            for (std::size_t j = 0; j < ev[i].top_logprobs.size(); ++j) {
                content += j ? ",{" : "{";
                entry(content, ev[i].top_logprobs[j].first, ev[i].top_logprobs[j].second);
                content += '}';
            }
            content += "]}";
        }
        return "{\"content\":[" + content + "],\"refusal\":null}";
    }
    // Each token's offset in characters of the reply's text, which is the tokens' bytes with
    // every invalid sequence (a maximal subpart) made one U+FFFD: each unit of the UTF-8 walk
    // below is one character. A token that starts inside a character gets that character's.
    std::string bytes;
    std::vector<std::size_t> first_byte;  // of each token up to `to`
    for (std::size_t i = 0; i < to; ++i) {
        first_byte.push_back(bytes.size());
        bytes += tok.token_bytes(ev[i].token);
    }
    std::vector<std::size_t> char_of(bytes.size() + 1);  // the character each byte belongs to
    std::size_t chars = 0;
    for (std::size_t b = 0; b < bytes.size(); ++chars) {
        std::uint32_t cp;
        const std::size_t n = static_cast<std::size_t>(tinyllm::detail::decode_utf8(bytes, b, cp));
        for (std::size_t k = b; k < b + n; ++k) char_of[k] = chars;
        b += n;
    }
    char_of[bytes.size()] = chars;
    std::string tokens, logprobs, tops, offsets;
    for (std::size_t i = from; i < to; ++i) {
        const char* sep = i > from ? "," : "";
        tokens += sep;
        tokens += json::quote(token_text(tok, ev[i].token));
        logprobs += sep;
        logprobs += number_json(ev[i].logprob);
        tops += sep;
        tops += '{';
        for (std::size_t j = 0; j < ev[i].top_logprobs.size(); ++j) {
            if (j) tops += ',';
            tops += json::quote(token_text(tok, ev[i].top_logprobs[j].first));
            tops += ':';
            tops += number_json(ev[i].top_logprobs[j].second);
        }
        tops += '}';
        offsets += sep;
        offsets += std::to_string(char_of[first_byte[i]]);
    }
    return "{\"tokens\":[" + tokens + "],\"token_logprobs\":[" + logprobs + "],\"top_logprobs\":[" + tops +
           "],\"text_offset\":[" + offsets + "]}";
}

std::string completion_chunk(const running_request& r, const std::string& delta, const char* finish, bool role,
                             const std::string& logprobs = "null") {
    std::string head = "{\"id\":" + json::quote(r.id) + ",\"object\":" +
                       (r.g.chat ? "\"chat.completion.chunk\"" : "\"text_completion\"") +
                       ",\"created\":" + std::to_string(r.created) + ",\"model\":" + json::quote(r.s.name) +
                       ",\"choices\":[{\"index\":0,";
    std::string fin = finish ? json::quote(finish) : "null";
    if (r.g.chat) {
        std::string d = role ? "{\"role\":\"assistant\",\"content\":" + json::quote(delta) + "}"
                        : finish && delta.empty() ? "{}"
                                                  : "{\"content\":" + json::quote(delta) + "}";
        return head + "\"delta\":" + d + ",\"logprobs\":" + logprobs + ",\"finish_reason\":" + fin + "}]}";
    }
    return head + "\"text\":" + json::quote(delta) + ",\"logprobs\":" + logprobs + ",\"finish_reason\":" + fin +
           "}]}";
}

void answer(served_model& s, generation_request g, httplib::Response& res) {
    if (!g.stream) {
        running_request r(s, std::move(g));
        std::string text;
        while (!r.finished) text += r.next(std::chrono::milliseconds(200));
        const char* finish = openai_finish(r.reason, r.stopped);
        std::string body = "{\"id\":" + json::quote(r.id) + ",\"object\":" +
                           (r.g.chat ? "\"chat.completion\"" : "\"text_completion\"") +
                           ",\"created\":" + std::to_string(r.created) + ",\"model\":" + json::quote(s.name) +
                           ",\"choices\":[{\"index\":0,";
        if (r.g.chat)
            body += "\"message\":{\"role\":\"assistant\",\"content\":" + json::quote(text) + "},";
        else
            body += "\"text\":" + json::quote(text) + ",";
        body += "\"logprobs\":" + logprobs_json(r, 0, r.token_events.size()) +
                ",\"finish_reason\":" + json::quote(finish) + "}],\"usage\":" +
                usage_json(r.g.prompt.size(), r.completion_tokens) + "}";
        res.set_content(body, "application/json");
        return;
    }
    // Streaming: the request is submitted now (so that a bad one is a 400, not a broken stream),
    // read by the content provider, and cancelled if the client goes away.
    auto r = std::make_shared<running_request>(s, std::move(g));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [r](std::size_t, httplib::DataSink& sink) {
            const auto send = [&](const std::string& json_text) {
                const std::string event = "data: " + json_text + "\n\n";
                if (sink.write(event.data(), event.size())) return true;
                ++r->s.disconnects;
                return false;
            };
            if (r->g.chat && !send(completion_chunk(*r, "", nullptr, true))) return false;
            while (!r->finished) {
                std::string delta;
                try {
                    delta = r->next(std::chrono::milliseconds(200));
                } catch (const api_error& e) {
                    send(error_body(e.what(), e.type, e.param, e.code));
                    return false;
                }
                // A chunk per released text, with the log-probabilities of the tokens read since the last.
                if (!delta.empty()) {
                    const std::size_t from = r->events_sent;
                    r->events_sent = r->token_events.size();
                    if (!send(completion_chunk(*r, delta, nullptr, false, logprobs_json(*r, from, r->events_sent))))
                        return false;
                }
            }
            if (r->events_sent < r->token_events.size() && r->g.batch.logprobs >= 0) {
                // Tokens whose text was held back for a stop string and then dropped: their entries still go out.
                const std::size_t from = r->events_sent;
                r->events_sent = r->token_events.size();
                if (!send(completion_chunk(*r, "", nullptr, false, logprobs_json(*r, from, r->events_sent)))) return false;
            }
            if (!send(completion_chunk(*r, "", openai_finish(r->reason, r->stopped), false))) return false;
            if (r->g.include_usage) {
                const std::string usage = "{\"id\":" + json::quote(r->id) + ",\"object\":" +
                                          (r->g.chat ? "\"chat.completion.chunk\"" : "\"text_completion\"") +
                                          ",\"created\":" + std::to_string(r->created) +
                                          ",\"model\":" + json::quote(r->s.name) + ",\"choices\":[],\"usage\":" +
                                          usage_json(r->g.prompt.size(), r->completion_tokens) + "}";
                if (!send(usage)) return false;
            }
            const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
            sink.done();
            return true;
        });
}

json::value parse_body(const httplib::Request& req) {
    try {
        json::value body = json::parse(req.body, "the request body");
        if (!body.is_object()) throw api_error(400, "the request body must be a JSON object");
        return body;
    } catch (const tinyllm::error& e) {
        throw api_error(400, "the request body is not valid JSON: " + client_message(e));
    }
}

std::string metrics_text(const served_model& s) {
    const tinyllm::engine_metrics m = s.engine->metrics();
    std::ostringstream o;
    const auto metric = [&](const char* name, const char* type, const char* help, auto value) {
        o << "# HELP tinyllm_" << name << ' ' << help << "\n# TYPE tinyllm_" << name << ' ' << type << "\ntinyllm_"
          << name << ' ' << value << '\n';
    };
    metric("requests_running", "gauge", "Requests in the batch.", m.running);
    metric("requests_waiting", "gauge", "Requests queued for the batch.", m.waiting);
    metric("kv_blocks_used", "gauge", "KV-cache blocks in use (sequences and prefix cache).", m.kv_blocks_used);
    metric("kv_blocks_total", "gauge", "KV-cache blocks in the pool.", m.kv_blocks);
    metric("kv_block_size", "gauge", "Positions per KV-cache block.", m.block_size);
    metric("prefix_cache_blocks", "gauge", "Blocks the prefix cache holds.", m.prefix_cache_blocks);
    metric("prefix_cache_lookup_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
           m.prefix.lookup_tokens);
    metric("prefix_cache_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache.", m.prefix.hit_tokens);
    metric("prefix_cache_hit_rate", "gauge", "Fraction of looked-up prompt tokens found in the prefix cache.",
           m.prefix.hit_rate());
    metric("generation_tokens_per_second", "gauge", "Tokens generated per second over the last 10 seconds.",
           m.tokens_per_second);
    metric("generation_tokens_total", "counter", "Tokens generated.", m.batch.generated);
    metric("prefill_tokens_total", "counter", "Prompt positions computed (cached ones not counted).",
           m.batch.prefill_tokens);
    metric("prompt_tokens_total", "counter", "Prompt tokens of the requests received.", s.prompt_tokens.load());
    metric("steps_total", "counter", "Batched model steps.", m.batch.steps);
    metric("preemptions_total", "counter", "Sequences preempted (recomputed later) for want of KV blocks.",
           m.batch.preemptions);
    metric("requests_submitted_total", "counter", "Requests accepted.", m.submitted);
    o << "# HELP tinyllm_requests_finished_total Requests finished, by reason.\n"
         "# TYPE tinyllm_requests_finished_total counter\n"
      << "tinyllm_requests_finished_total{reason=\"stop\"} " << m.finished_eos + m.finished_stop << '\n'
      << "tinyllm_requests_finished_total{reason=\"length\"} " << m.finished_length << '\n'
      << "tinyllm_requests_finished_total{reason=\"cancelled\"} " << m.cancelled << '\n'
      << "tinyllm_requests_finished_total{reason=\"error\"} " << m.failed << '\n';
    metric("client_disconnects_total", "counter", "Streams whose client went away.", s.disconnects.load());
    metric("http_requests_total", "counter", "HTTP requests received.", s.http_requests.load());
    return o.str();
}

// SIGINT or SIGTERM stops the server: the handler only raises a flag (all a
// signal handler may safely do), and a watcher thread stops the server when it sees it.
// (stop_requested is declared above: the requests read it too.)
extern "C" void on_stop_signal(int) { stop_requested.store(true); }

struct signal_stopper {
    std::atomic<bool> done{false};
    std::thread watcher;
    explicit signal_stopper(httplib::Server& svr) {
        struct sigaction sa {};
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, nullptr);
        sigaction(SIGTERM, &sa, nullptr);
        watcher = std::thread([this, &svr] {
            while (!done.load()) {
                // Only once the server listens: httplib's stop() does nothing before listen
                // has started (it checks is_running()), so a signal that came between
                // installing the handler and listen_after_bind() would be lost and the
                // server would never stop. If listening fails, `done` ends this loop.
                if (stop_requested.load() && svr.is_running()) {
                    std::cerr << "tinyllm serve: stopping\n";
                    svr.stop();
                    return;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
        });
    }
    ~signal_stopper() {
        done.store(true);
        watcher.join();
    }
};

}  // namespace

TINYLLM_COMMAND("serve", "serve a checkpoint over HTTP with the OpenAI API (continuous batching)",
                "usage: tinyllm serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--name NAME]\n"
                "                     [--tokenizer FILE] [--encoding NAME] [--dtype float32|bfloat16|int8|int4-gG]\n"
                "                     [--max-batch 16] [--token-budget 256] [--prefill-chunk 128]\n"
                "                     [--kv-blocks N] [--block-size 16] [--prefix-cache-blocks N]\n"
                "                     [--http-threads 64] [--device cpu|cuda] [--reference]\n\n"
                "Serves the checkpoint DIR (default: the trained default model) on http://HOST:PORT with\n"
                "OpenAI's API: POST /v1/completions and /v1/chat/completions (\"stream\": true sends\n"
                "server-sent events), GET /v1/models, /health and /metrics (Prometheus text). Requests\n"
                "are decoded together by continuous batching: up to --max-batch sequences per step, at\n"
                "most --token-budget prompt and decode tokens per step, prompts fed --prefill-chunk\n"
                "tokens at a time; keys and values live in --kv-blocks blocks of --block-size positions\n"
                "(default: room for --max-batch sequences of 512 positions), of which the prefix cache\n"
                "keeps up to --prefix-cache-blocks (default a quarter; 0: off) for prompts that repeat.\n"
                "A request's tokens are those `tinyllm generate` gives with the same seed.\n"
                "--port 0 picks a free port. Binds to loopback unless --host says otherwise; the first\n"
                "line printed is the address. SIGINT or SIGTERM stops it. docs/serving.md has the\n"
                "fields, the chat template and client examples. --device cuda runs each step on the\n"
                "CUDA model (float32 or bfloat16 weights; the KV blocks on the GPU; the sampling stays\n"
                "on the CPU, the step's logits copied back). --tokenizer FILE (default DIR's tokenizer.json)\n"
                "with --encoding NAME names a tiktoken rank file's encoding; --reference runs the CPU's\n"
                "reference kernels (float32 only, slow) instead of the blocked ones.\n") {
    const auto a = parse_args(args,
                              {"model", "host", "port", "name", "tokenizer", "encoding", "dtype", "max-batch",
                               "token-budget", "prefill-chunk", "kv-blocks", "block-size", "prefix-cache-blocks",
                               "http-threads", "device"},
                              {"reference"});
    if (!a.positional.empty()) throw usage_error("unexpected argument '" + a.positional.front() + "'");
    require_checkpoint(a, "model");
    require_input_file(a, "tokenizer");
    const std::string device = a.get("device", "cpu");
    if (device != "cpu" && device != "cuda")
        throw usage_error("--device " + device + ": tinyllm serve runs on cpu or cuda");
    const std::string dir = a.get("model", default_model_dir());
    if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json"))
        throw usage_error(a.get("model").empty()
                              ? "no --model DIR, and the default model (" + dir +
                                    ") is not there yet: train it with `tinyllm train`, or pass --model DIR"
                              : "'" + dir + "' has no config.json");
    std::string tokenizer_path = a.get("tokenizer");
    if (tokenizer_path.empty()) {
        tokenizer_path = (std::filesystem::path(dir) / "tokenizer.json").string();
        if (!std::filesystem::exists(tokenizer_path))
            throw usage_error("the server needs a tokenizer to turn tokens into text: " + dir +
                              " has no tokenizer.json; pass --tokenizer FILE");
    }
    const auto positive = [&](const char* name, long long fallback, long long lo) {
        const long long v = a.get_int(name, fallback);
        if (v < lo) throw usage_error(std::string("--") + name + " = " + std::to_string(v) + " must be at least " +
                                      std::to_string(lo));
        return static_cast<index_t>(v);
    };
    tinyllm::engine_options eo;
    eo.batch.max_running = positive("max-batch", 16, 1);
    eo.batch.token_budget = positive("token-budget", 256, 1);
    eo.batch.prefill_chunk = positive("prefill-chunk", 128, 1);
    eo.kv_blocks = positive("kv-blocks", 0, 0);
    eo.block_size = positive("block-size", 16, 1);
    eo.prefix_cache_blocks = positive("prefix-cache-blocks", -1, -1);
    const int port = static_cast<int>(a.get_int("port", 8000));
    if (port < 0 || port > 65535) throw usage_error("--port must be in [0, 65535]");
    const index_t http_threads = positive("http-threads", 64, 2);

    served_model s;
    tinyllm::index_t kv_element_bytes = 4;  // the KV blocks' element: float32 (bfloat16 on the GPU for a bf16 model)
    s.name = a.get("name", std::filesystem::path(dir).lexically_normal().filename().string());
    if (s.name.empty() || s.name == ".") s.name = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
    {
        using tinyllm::cpu::model;
        const std::string dtype = a.get("dtype", "float32");
        std::optional<tinyllm::quant_spec> quantized;
        if (dtype != "float32" && dtype != "bfloat16") {
            try {
                quantized = tinyllm::parse_quant_spec(dtype);
            } catch (const tinyllm::error&) {
                throw usage_error("--dtype must be float32, bfloat16, int8 or int4-gG, got '" + dtype + "'");
            }
        }
        if (a.has_flag("reference") && dtype != "float32")
            throw usage_error("--reference runs float32 weights; --dtype " + dtype + " needs the blocked kernels");
        if (device == "cuda") {
            if (quantized)
                throw usage_error("--device cuda serves float32 or bfloat16 weights; --dtype " + dtype +
                                  " runs with --device cpu");
            if (a.has_flag("reference"))
                throw usage_error("--reference picks the CPU's kernels; not with --device cuda");
            gpu_weights w;
            w.dir = dir;
            w.bfloat16 = dtype == "bfloat16";
            s.engine = gpu_serve_engine(w, eo);
            kv_element_bytes = w.bfloat16 ? 2 : 4;
        } else {
            s.model = std::make_unique<model>(
                model::load(dir, dtype == "bfloat16" ? model::weight_dtype::bfloat16 : model::weight_dtype::float32));
            if (quantized && s.model->quantized())
                throw usage_error("'" + dir + "' is a quantized checkpoint; it runs as stored, without --dtype");
            if (quantized) s.model->quantize_weights(*quantized);
            s.model->set_kernels(a.has_flag("reference") ? model::kernels::reference : model::kernels::blocked);
            s.engine = std::make_unique<tinyllm::engine>(*s.model, eo);
        }
    }
    s.tok = std::make_unique<tinyllm::tokenizer>(tinyllm::load_tokenizer(tokenizer_path, a.get("encoding")));
    if (s.tok->vocab_size() < static_cast<std::size_t>(s.engine->model().config().vocab_size))
        std::cerr << "tinyllm serve: warning: the tokenizer has " << s.tok->vocab_size() << " tokens, the model "
                  << s.engine->model().config().vocab_size << "; tokens beyond the tokenizer's cannot be decoded\n";
    const tinyllm::kv_block_pool& pool = s.engine->pool();
    s.max_positions = pool.blocks() * pool.block_size();
    if (s.engine->model().config().arch == tinyllm::model_arch::gpt2)
        s.max_positions = std::min(s.max_positions, s.engine->model().config().max_positions);

    httplib::Server svr;
    svr.new_task_queue = [http_threads] { return new httplib::ThreadPool(static_cast<std::size_t>(http_threads)); };
    const auto handle = [&s](auto fn) {
        return [&s, fn](const httplib::Request& req, httplib::Response& res) {
            ++s.http_requests;
            try {
                fn(req, res);
            } catch (const api_error& e) {
                send_error(res, e);
            } catch (const tinyllm::error& e) {  // the library refused the request (its message says why)
                send_error(res, api_error(400, client_message(e)));
            }
        };
    };
    svr.Post("/v1/completions", handle([&s](const httplib::Request& req, httplib::Response& res) {
        answer(s, read_completion(s, parse_body(req)), res);
    }));
    svr.Post("/v1/chat/completions", handle([&s](const httplib::Request& req, httplib::Response& res) {
        answer(s, read_chat(s, parse_body(req)), res);
    }));
    const auto model_object = [&s] {
        const long long created = static_cast<long long>(std::time(nullptr));
        return "{\"id\":" + json::quote(s.name) + ",\"object\":\"model\",\"created\":" + std::to_string(created) +
               ",\"owned_by\":\"tinyllm\",\"max_model_len\":" + std::to_string(s.max_positions) + "}";
    };
    svr.Get("/v1/models", handle([model_object](const httplib::Request&, httplib::Response& res) {
                res.set_content("{\"object\":\"list\",\"data\":[" + model_object() + "]}", "application/json");
            }));
    svr.Get("/v1/models/(.+)", handle([&s, model_object](const httplib::Request& req, httplib::Response& res) {
                if (req.matches[1] != s.name)
                    throw api_error(404,
                                    "the model '" + std::string(req.matches[1]) +
                                        "' does not exist; this server has '" + s.name + "'",
                                    "model", "invalid_request_error", "model_not_found");
                res.set_content(model_object(), "application/json");
            }));
    svr.Get("/health", handle([](const httplib::Request&, httplib::Response& res) {
        res.set_content("{\"status\":\"ok\"}", "application/json");
    }));
    svr.Get("/metrics", handle([&s](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics_text(s), "text/plain; version=0.0.4");
    }));
    // A known route asked with the other method: 405, naming the one it takes.
    const auto wrong_method = [&handle](const char* allowed) {
        return handle([allowed](const httplib::Request& req, httplib::Response& res) {
            res.set_header("Allow", allowed);
            throw api_error(405, req.method + " " + req.path + " is not allowed; use " + allowed);
        });
    };
    for (const char* path : {"/v1/completions", "/v1/chat/completions"}) svr.Get(path, wrong_method("POST"));
    for (const char* path : {"/v1/models", "/health", "/metrics"}) svr.Post(path, wrong_method("GET"));
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours, already in shape
        // cpp-httplib's own refusals, before any handler ran: said in words.
        std::string what = "HTTP error " + std::to_string(res.status);
        if (res.status == 404)
            what = "no route " + req.method + " " + req.path +
                   " (POST /v1/completions, POST /v1/chat/completions, GET /v1/models, /v1/models/ID, /health, "
                   "/metrics)";
        else if (res.status == 400)
            what =
                "the HTTP request could not be read (a POST carries its JSON body with a Content-Length or in "
                "chunks)";
        else if (res.status == 413)
            what =
                "the request body is too large (a body sent without \"Content-Type: application/json\" is read "
                "as a form, at most 8192 bytes: send the JSON with that header)";
        else if (res.status == 414)
            what = "the request's URI is too long";
        res.set_content(error_body(what, "invalid_request_error", "", ""), "application/json");
        return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
            std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(error_body("internal error: " + what, "server_error", "", ""), "application/json");
    });

    const std::string host = a.get("host", "127.0.0.1");
    const int bound = port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
    if (bound < 0) throw usage_error("cannot listen on " + host + ":" + std::to_string(port) + " (in use?)");
    const tinyllm::model_config& c = s.engine->model().config();
    out << "tinyllm serve: http://" << host << ":" << bound << "  model '" << s.name << "' (" << dir << ", "
        << c.num_layers << " layers, hidden size " << c.hidden_size << ", vocabulary " << c.vocab_size << ")" << std::endl;
    std::cerr << "tinyllm serve: batch up to " << eo.batch.max_running << " sequences, " << eo.batch.token_budget
              << " tokens per step; " << pool.blocks() << " KV blocks of " << pool.block_size() << " positions ("
              << pool.blocks() * pool.block_bytes() / 4 * kv_element_bytes / (1 << 20) << " MiB"
              << (device == "cuda" ? " on the GPU" : "") << "), at most " << s.max_positions
              << " positions per request\n";
    signal_stopper stopper(svr);
    svr.listen_after_bind();
    return 0;
}

#else  // no cpp-httplib in this build

TINYLLM_COMMAND("serve", "serve a checkpoint over HTTP with the OpenAI API (needs cpp-httplib)",
                "usage: tinyllm serve [--model DIR] [--port 8000] ...\n\n"
                "This tinyllm was built without cpp-httplib, the HTTP library of `tinyllm serve`.\n"
                "Install it (tools/bootstrap does: apt-get install libcpp-httplib-dev) and build again.\n") {
    (void)args;
    (void)out;
    throw tinyllm_cli::usage_error("this tinyllm was built without cpp-httplib: install libcpp-httplib-dev "
                                   "(tools/bootstrap does) and build again");
}

#endif
