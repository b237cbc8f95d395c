// tests/fuzz/fuzz_formats.cpp — a libFuzzer target for the file-format readers
// other than the tokenizer's (tests/fuzz/fuzz_tokenizer.cpp has those):
// safetensors files and shard indexes, .npy files and their header dicts,
// SentencePiece model protobufs, Hugging Face config.json (alone, against a
// fixed checkpoint, and with its model.safetensors as cpu::model::load reads
// them), token files and training-state files.
//
// Build and run (clang with libFuzzer):
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -Iinclude tests/fuzz/fuzz_formats.cpp -o fuzz_formats
//   TINYLLM_FUZZ_SEEDS=/tmp/seeds build/bin/test_formats_fuzz   # writes the seed corpus
//   mkdir -p /tmp/corpus-formats
//   UBSAN_OPTIONS=halt_on_error=1 ./fuzz_formats -max_total_time=60 -rss_limit_mb=2048 /tmp/corpus-formats /tmp/seeds
// (or the fuzz_formats target of a clang build, tests/CMakeLists.txt). UBSAN_OPTIONS
// makes undefined behaviour stop the run: without it UBSan reports and goes on.
//
// The first input byte picks the reader (see `reader` below; or the environment
// variable TINYLLM_FUZZ_READER=<its name> fixes one for the whole run); the rest
// is the file. Readers that only take a path get the bytes through a file in a
// temporary folder of this process. A tinyllm::error is the accepted outcome
// for a malformed file; anything else — a crash, a sanitizer report, an
// allocation sized by a number in the file (libFuzzer's -rss_limit_mb catches
// it), another exception, or a broken invariant (a tensor whose bytes are not
// its shape's, a file that does not read back as it was written, an id outside
// the vocabulary) — is a bug and aborts. tests/test_formats_fuzz.cpp runs the
// same entry point as an ordinary test over a seed corpus, so the checks run
// without clang too.
#include <tinyllm/data.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/model.hpp>
#include <tinyllm/npy.hpp>
#include <tinyllm/safetensors.hpp>
#include <tinyllm/sentencepiece_proto.hpp>
#include <tinyllm/train.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tinyllm_fuzz {

// What the first byte selects (modulo the count).
enum class reader : std::uint8_t {
    safetensors,        // a .safetensors file: safetensors_file, to_float_vector, to_tensor
    npy_header,         // the dict of a .npy header: npy_header_parser, parse_npy_descr (in memory)
    npy,                // a .npy file: read_npy, then a save_npy round trip
    sentencepiece,      // a ModelProto: parse_sentencepiece_proto, the processor, its tokenizer
    config,             // config.json: model_config_from_json, then model_config_json's text read back
    config_weights,     // config.json against a small checkpoint of its architecture: load_model_weights
    token_file,         // a token file: token_file, its ids, draw_batch
    training_state,     // training_state.json: read_training_state, read_train_options
    safetensors_index,  // model.safetensors.index.json beside one shard: safetensors_checkpoint
    checkpoint,         // config.json, a NUL byte, model.safetensors (float or quantized): cpu::model::load
    count
};
inline constexpr int reader_count = static_cast<int>(reader::count);

inline const char* reader_name(reader r) {
    constexpr const char* names[] = {
        "safetensors",    "npy_header",        "npy",       "sentencepiece", "config", "config_weights", "token_file",
        "training_state", "safetensors_index", "checkpoint"};
    return names[static_cast<int>(r) % reader_count];
}

inline void require(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
        std::abort();
    }
}

namespace fs = std::filesystem;

// This process's temporary folder, removed at exit; the readers that take a
// path read the input from a file there.
struct scratch_dir {
    fs::path path;
    scratch_dir() {
        path = fs::temp_directory_path() / ("tinyllm_fuzz_formats_" + std::to_string(std::random_device{}()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~scratch_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

inline const scratch_dir& scratch() {
    static const scratch_dir dir;
    return dir;
}

inline std::string write_file(const std::string& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    require(out.good(), "the scratch file is written");
    return path;
}

// ---- small valid files: the starting points (tests/test_formats_fuzz.cpp seeds from them) ----

// A tiny model of each architecture (config_weights loads fuzzed configs against
// these checkpoints): 2 layers, D = 8, 2 heads of 4, vocabulary 16.
inline tinyllm::model_config tiny_config(tinyllm::model_arch arch) {
    tinyllm::model_config c;
    c.arch = arch;
    c.architecture = arch == tinyllm::model_arch::gpt2    ? "GPT2LMHeadModel"
                     : arch == tinyllm::model_arch::llama ? "LlamaForCausalLM"
                                                          : "MixtralForCausalLM";
    c.vocab_size = 16;
    c.hidden_size = 8;
    c.num_layers = 2;
    c.num_heads = 2;
    c.num_kv_heads = arch == tinyllm::model_arch::gpt2 ? 2 : 1;
    c.head_dim = 4;
    c.intermediate_size = 12;
    c.max_positions = 8;
    c.tie_word_embeddings = arch == tinyllm::model_arch::gpt2;
    c.num_experts = arch == tinyllm::model_arch::mixtral ? 3 : 0;
    c.experts_per_token = arch == tinyllm::model_arch::mixtral ? 2 : 0;
    c.router_aux_loss_coef = arch == tinyllm::model_arch::mixtral ? 0.001 : 0.0;
    c.rope.rotary_dim = 4;
    c.rope.pairing = tinyllm::rope_pairing::rotate_half;
    c.eos_token_ids = {15};
    return c;
}

// The folder holding the tiny checkpoint of `arch` (written on first use).
inline const std::string& tiny_checkpoint(tinyllm::model_arch arch) {
    static const std::map<tinyllm::model_arch, std::string> dirs = [] {
        std::map<tinyllm::model_arch, std::string> d;
        for (const auto a : {tinyllm::model_arch::gpt2, tinyllm::model_arch::llama, tinyllm::model_arch::mixtral}) {
            const std::string dir = scratch().file("checkpoint_" + std::to_string(static_cast<int>(a)));
            const tinyllm::model_config c = tiny_config(a);
            tinyllm::save_model(dir, c, tinyllm::random_model_weights(c, 7));
            d[a] = dir;
        }
        return d;
    }();
    return dirs.at(arch);
}

inline std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A .safetensors file of a few small tensors of several dtypes (one empty), with metadata.
inline std::string sample_safetensors() {
    const std::string path = scratch().file("sample.safetensors");
    tinyllm::tensor<float, 2> a(tinyllm::extents<2>{2, 3}, 1.5f);
    tinyllm::tensor<tinyllm::bfloat16, 1> b(tinyllm::extents<1>{4});
    tinyllm::tensor<tinyllm::float16, 3> h(tinyllm::extents<3>{1, 2, 2});
    tinyllm::tensor<std::int32_t, 1> i(tinyllm::extents<1>{3}, 7);
    tinyllm::tensor<float, 2> empty(tinyllm::extents<2>{0, 5});
    tinyllm::save_safetensors(path, {{"a", a}, {"b", b}, {"h", h}, {"i", i}, {"empty", empty}}, {{"format", "pt"}});
    return read_bytes(path);
}

// .npy files: float32 (2, 3) as save_npy writes it, and a big-endian Fortran-order int16 (2, 2) by hand.
inline std::vector<std::string> sample_npy() {
    const std::string path = scratch().file("sample.npy");
    tinyllm::tensor<float, 2> a(tinyllm::extents<2>{2, 3}, 0.25f);
    tinyllm::save_npy(path, a);
    std::string fortran = "\x93NUMPY\x01";
    fortran += '\0';
    std::string header = "{'descr': '>i2', 'fortran_order': True, 'shape': (2, 2), }";
    header.append(128 - 10 - header.size() - 1, ' ');  // the data start at byte 128
    header += '\n';
    fortran += static_cast<char>(header.size());
    fortran += '\0';
    fortran += header;
    fortran += std::string("\x00\x01\x00\x02\x00\x03\x00\x04", 8);
    return {read_bytes(path), fortran};
}

inline std::string sample_token_file() {
    const std::string path = scratch().file("sample.tokens");
    const std::vector<tinyllm::token_id> ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    tinyllm::write_token_file(path, ids, 0x1234, 16);
    return read_bytes(path);
}

inline std::string sample_training_state() {
    return "{\"format\": \"tinyllm training state\", \"version\": 1, \"step\": 3, \"options\": {\"batch\": 2, "
           "\"context\": 4, \"steps\": 10, \"lr\": 0.001, \"warmup\": 2, \"weight_decay\": 0.1, \"beta1\": 0.9, "
           "\"beta2\": 0.95, \"eps\": 1e-08, \"clip\": 1.0, \"seed\": 18446744073709551615, \"eval_batches\": 2, "
           "\"aux_weight\": 0.0, \"distill_weight\": 0.5, \"distill_temperature\": 2.0}, \"data\": {\"fingerprint\": "
           "\"0000000000001234\", \"tokens\": 12, \"train\": [0, 10], \"validation\": [10, 12]}}";
}

// The shard safetensors_index's inputs point at, and an index naming its tensors.
inline const std::string& index_dir() {
    static const std::string dir = [] {
        const std::string d = scratch().file("sharded");
        fs::create_directories(d);
        write_file((fs::path(d) / "model-00001-of-00001.safetensors").string(), sample_safetensors());
        return d;
    }();
    return dir;
}

inline std::string sample_index() {
    return "{\"metadata\": {\"total_size\": 64}, \"weight_map\": {\"a\": \"model-00001-of-00001.safetensors\", "
           "\"b\": \"model-00001-of-00001.safetensors\", \"empty\": \"model-00001-of-00001.safetensors\"}}";
}

// A checkpoint as the `checkpoint` reader takes it: config.json, NUL (which no
// JSON text holds), model.safetensors.
inline std::string checkpoint_input(const std::string& dir) {
    return read_bytes((fs::path(dir) / "config.json").string()) + '\0' +
           read_bytes((fs::path(dir) / "model.safetensors").string());
}

// The tiny Llama quantized to int4 with groups of 4, saved as save_quantized_model writes it.
inline std::string quantized_checkpoint_input() {
    const std::string dir = scratch().file("quantized");
    const tinyllm::model_config c = tiny_config(tinyllm::model_arch::llama);
    tinyllm::cpu::model m(c, tinyllm::random_model_weights(c, 7));
    m.quantize_weights(tinyllm::parse_quant_spec("int4-g4"));
    tinyllm::cpu::save_quantized_model(dir, m);
    return checkpoint_input(dir);
}

// Every sample above under the reader it is for: the seed corpus
// (tests/test_formats_fuzz.cpp adds the fixture files).
inline std::vector<std::pair<reader, std::string>> seed_corpus() {
    std::vector<std::pair<reader, std::string>> seeds;
    seeds.emplace_back(reader::safetensors, sample_safetensors());
    for (const std::string& npy : sample_npy()) {
        seeds.emplace_back(reader::npy, npy);
        const std::size_t length_bytes = npy[6] == 1 ? 2 : 4;
        seeds.emplace_back(reader::npy_header, npy.substr(8 + length_bytes, npy.find('\n') - 8 - length_bytes));
    }
    for (const auto a : {tinyllm::model_arch::gpt2, tinyllm::model_arch::llama, tinyllm::model_arch::mixtral}) {
        tinyllm::model_config c = tiny_config(a);
        seeds.emplace_back(reader::config, tinyllm::model_config_json(c));
        seeds.emplace_back(reader::config_weights, tinyllm::model_config_json(c));
        seeds.emplace_back(reader::checkpoint, checkpoint_input(tiny_checkpoint(a)));
        if (a == tinyllm::model_arch::llama) {
            c.rope.scaling = tinyllm::rope_scaling::llama3;
            c.rope.factor = 8;
            c.quantization = tinyllm::parse_quant_spec("int4-g4");
            c.quantization_method = "gptq";
            seeds.emplace_back(reader::config, tinyllm::model_config_json(c));
        }
    }
    seeds.emplace_back(reader::token_file, sample_token_file());
    seeds.emplace_back(reader::training_state, sample_training_state());
    seeds.emplace_back(reader::safetensors_index, sample_index());
    seeds.emplace_back(reader::checkpoint, quantized_checkpoint_input());
    return seeds;
}

// ---- the checks per reader ----

inline void check_safetensors(std::string_view body) {
    const std::string path = write_file(scratch().file("fuzz.safetensors"), body);
    const tinyllm::safetensors_file f(path);
    for (const auto& t : f.tensors()) {
        require(static_cast<std::size_t>(t.numel()) * tinyllm::st_dtype_size(t.dtype) == t.bytes,
                "a tensor's bytes are its shape's");
        require(f.find(t.name) == &t, "find() finds each tensor");
        if (t.dtype == tinyllm::st_dtype::f32 || t.dtype == tinyllm::st_dtype::f16 ||
            t.dtype == tinyllm::st_dtype::bf16) {
            const std::vector<float> v = tinyllm::to_float_vector(t);
            require(v.size() == static_cast<std::size_t>(t.numel()), "to_float_vector gives numel values");
        }
        try {
            if (t.shape.size() == 1 && t.dtype == tinyllm::st_dtype::f32) {
                const auto x = tinyllm::to_tensor<float, 1>(t);
                require(x.size() == t.numel(), "to_tensor gives numel values");
            } else if (t.shape.size() == 2) {
                (void)tinyllm::to_tensor<std::uint8_t, 2>(t);  // U8 and BOOL read, the rest refused
            }
        } catch (const tinyllm::error&) {
        }
    }
}

inline void check_npy_header(std::string_view body) {
    const std::string path = "fuzz.npy";
    const tinyllm::detail::npy_header h = tinyllm::detail::npy_header_parser(body, path).parse();
    if (h.has_descr && h.descr_is_string) {
        bool big_endian = false;
        (void)tinyllm::detail::parse_npy_descr(h.descr, path, big_endian);
    }
}

template <std::size_t Rank>
void npy_round_trip(const tinyllm::npy_array& a) {
    const auto x = tinyllm::to_tensor<float, Rank>(a, "fuzz.npy");
    const std::string again = scratch().file("again.npy");
    tinyllm::save_npy(again, x);
    const tinyllm::npy_array b = tinyllm::read_npy(again);
    require(b.dtype == a.dtype && b.shape == a.shape && b.data == a.data, "a .npy file reads back as it was saved");
}

inline void check_npy(std::string_view body) {
    const tinyllm::npy_array a = tinyllm::read_npy(write_file(scratch().file("fuzz.npy"), body));
    require(a.data.size() == static_cast<std::size_t>(a.numel()) * tinyllm::npy_dtype_size(a.dtype),
            "an array's bytes are its shape's");
    if (a.dtype != tinyllm::npy_dtype::f4) return;
    switch (a.shape.size()) {
        case 1:
            npy_round_trip<1>(a);
            break;
        case 2:
            npy_round_trip<2>(a);
            break;
        case 3:
            npy_round_trip<3>(a);
            break;
        default:
            break;
    }
}

inline void check_ids(const std::vector<tinyllm::token_id>& ids, std::size_t vocab, const char* what) {
    for (const auto id : ids) require(id >= 0 && static_cast<std::size_t>(id) < vocab, what);
}

inline void check_sentencepiece(std::string_view body) {
    const std::string path = "fuzz.model";
    const tinyllm::sentencepiece_processor p(tinyllm::parse_sentencepiece_proto(body, path), path);
    for (const std::string_view text :
         {std::string_view("Hello  world, the cat!"), std::string_view(" \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80 \xFF"),
          std::string_view("")}) {
        const auto ids = p.encode(text);
        check_ids(ids, p.size(), "the processor's ids are in the vocabulary");
        (void)p.decode(ids);
        const auto tok_ids = p.tokenizer().encode_ordinary(text);
        check_ids(tok_ids, p.tokenizer().vocab_size(), "the tokenizer's ids are in the vocabulary");
        (void)p.tokenizer().decode(tok_ids);
    }
}

inline tinyllm::model_config parse_config(std::string_view body) {
    return tinyllm::model_config_from_json(tinyllm::json::parse(body, "config.json"), "config.json");
}

inline void check_config(std::string_view body) {
    const tinyllm::model_config c = parse_config(body);
    std::string text;
    try {
        text = tinyllm::model_config_json(c);  // refuses, by an error, what it cannot write
    } catch (const tinyllm::error&) {
        return;
    }
    const tinyllm::model_config d = parse_config(text);
    require(d.arch == c.arch && d.vocab_size == c.vocab_size && d.hidden_size == c.hidden_size &&
                d.num_layers == c.num_layers && d.num_heads == c.num_heads && d.num_kv_heads == c.num_kv_heads &&
                d.head_dim == c.head_dim && d.intermediate_size == c.intermediate_size &&
                d.max_positions == c.max_positions && d.norm_eps == c.norm_eps &&
                d.tie_word_embeddings == c.tie_word_embeddings && d.num_experts == c.num_experts &&
                d.experts_per_token == c.experts_per_token && d.eos_token_ids == c.eos_token_ids &&
                d.router_aux_loss_coef == c.router_aux_loss_coef && d.rope.rotary_dim == c.rope.rotary_dim &&
                d.rope.theta == c.rope.theta && d.rope.scaling == c.rope.scaling && d.rope.factor == c.rope.factor &&
                d.rope.low_freq_factor == c.rope.low_freq_factor &&
                d.rope.high_freq_factor == c.rope.high_freq_factor &&
                d.rope.original_max_position_embeddings == c.rope.original_max_position_embeddings &&
                d.quantization.has_value() == c.quantization.has_value() &&
                (!c.quantization ||
                 (d.quantization->name() == c.quantization->name() && d.quantization_method == c.quantization_method)),
            "model_config_json's text reads back to the same config");
}

inline void check_config_weights(std::string_view body) {
    const tinyllm::model_config c = parse_config(body);
    const tinyllm::safetensors_checkpoint ck(tiny_checkpoint(c.arch));
    const tinyllm::model_weights w = tinyllm::load_model_weights(c, ck);
    require(w.embed.extent(0) == c.vocab_size && w.embed.extent(1) == c.hidden_size &&
                w.layers.size() == static_cast<std::size_t>(c.num_layers),
            "loaded weights have the config's shapes");
}

inline void check_token_file(std::string_view body) {
    const tinyllm::token_file f(write_file(scratch().file("fuzz.tokens"), body));
    std::uint64_t read = 0;
    try {
        for (; read < f.size() && read < 4096; ++read) {
            const tinyllm::token_id id = f[read];
            require(id >= 0 && id < f.vocab_size(), "token ids are in the vocabulary");
        }
    } catch (const tinyllm::error&) {
        return;  // an id outside the vocabulary, reported
    }
    if (f.size() >= 3 && f.size() == read) {
        tinyllm::tensor<tinyllm::token_id, 2> tokens(tinyllm::extents<2>{2, 2}), targets(tinyllm::extents<2>{2, 2});
        tinyllm::draw_batch(tokens.view(), targets.view(), f, 0, f.size(), 1, 0);
    }
}

inline void check_training_state(std::string_view body) {
    const std::string dir = scratch().file("state");
    fs::create_directories(dir);
    write_file((fs::path(dir) / "training_state.json").string(), body);
    const tinyllm::json::value state = tinyllm::read_training_state(dir);
    const tinyllm::train_options o = tinyllm::read_train_options(state, "training_state.json");
    (void)tinyllm::detail::train_option_fields(o);
}

inline void check_safetensors_index(std::string_view body) {
    write_file((fs::path(index_dir()) / "model.safetensors.index.json").string(), body);
    const tinyllm::safetensors_checkpoint ck(index_dir());
    for (const std::string& name : ck.names()) {
        const tinyllm::safetensors_tensor* t = ck.find(name);
        require(t != nullptr && t->name == name, "every name the index maps is found");
    }
}

inline void check_checkpoint(std::string_view body) {
    const std::size_t nul = body.find('\0');
    if (nul == std::string_view::npos) return;  // not this reader's input
    const std::string dir = scratch().file("checkpoint");
    fs::create_directories(dir);
    write_file((fs::path(dir) / "config.json").string(), body.substr(0, nul));
    write_file((fs::path(dir) / "model.safetensors").string(), body.substr(nul + 1));
    const tinyllm::cpu::model m = tinyllm::cpu::model::load(dir);
    require(m.weights().layers.size() == static_cast<std::size_t>(m.config().num_layers),
            "a loaded model has its config's layers");
}

// Read `body` with reader r and check what loads; a malformed file throws tinyllm::error.
inline void read_as(reader r, std::string_view body) {
    switch (r) {
        case reader::safetensors:
            check_safetensors(body);
            break;
        case reader::npy_header:
            check_npy_header(body);
            break;
        case reader::npy:
            check_npy(body);
            break;
        case reader::sentencepiece:
            check_sentencepiece(body);
            break;
        case reader::config:
            check_config(body);
            break;
        case reader::config_weights:
            check_config_weights(body);
            break;
        case reader::token_file:
            check_token_file(body);
            break;
        case reader::training_state:
            check_training_state(body);
            break;
        case reader::safetensors_index:
            check_safetensors_index(body);
            break;
        default:
            check_checkpoint(body);
            break;
    }
}

// The input's first byte picks the reader, unless `forced` names one.
inline int one_input(const std::uint8_t* data, std::size_t size, int forced = -1) {
    if (size == 0) return 0;
    const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
    try {
        read_as(static_cast<reader>(forced >= 0 ? forced : data[0] % reader_count), body);
    } catch (const tinyllm::error&) {
        // a malformed file, reported: fine
    }
    return 0;
}

}  // namespace tinyllm_fuzz

#ifndef TINYLLM_FUZZ_NO_ENTRY
// TINYLLM_FUZZ_READER=npy (a reader's name) spends a whole run on one reader.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const int forced = [] {
        const char* name = std::getenv("TINYLLM_FUZZ_READER");
        for (int r = 0; name && r < tinyllm_fuzz::reader_count; ++r)
            if (std::string_view(name) == tinyllm_fuzz::reader_name(static_cast<tinyllm_fuzz::reader>(r))) return r;
        if (name) std::fprintf(stderr, "TINYLLM_FUZZ_READER=%s names no reader; the first byte picks\n", name);
        return -1;
    }();
    return tinyllm_fuzz::one_input(data, size, forced);
}
#endif
