// tinyllm/safetensors.hpp — reading Hugging Face checkpoints (.safetensors).
//
// A safetensors file is deliberately simple:
//
//     [8 bytes: N, little-endian u64][N bytes: JSON header][data section]
//
// The header maps each tensor name to its dtype ("F32", "F16", "BF16", ...),
// its shape, and `data_offsets` [begin, end) into the data section:
//
//     {"__metadata__": {"format": "pt"},
//      "model.embed_tokens.weight": {"dtype": "F32", "shape": [517, 64],
//                                    "data_offsets": [0, 132352]}, ...}
//
// There is no code to execute (unlike pickle) and the data can be used in
// place: tinyllm memory-maps the file and validates the header before any
// tensor is touched — the length fits the file, the JSON parses, every dtype is
// known, every shape is non-negative, every tensor's bytes equal shape × dtype
// size, lie inside the data section, overlap no other tensor and together cover
// the data section with no gap and nothing after the last one. A malformed or
// truncated file is a tinyllm::error naming the file, the tensor and the problem.
//
// Writing (save_safetensors) produces the format of the reference
// implementation, which reads it back: the JSON header (an optional
// "__metadata__" string map, then the tensors in the order given; the reference
// sorts them by dtype and name instead, which readers do not depend on) padded with spaces to a multiple of 8 bytes,
// and the tensors' bytes back to back in row-major order, little-endian, so the
// data section has no gaps (Python's safetensors insists on that). Views of any
// strides are accepted; names must be unique UTF-8.
//
//     tinyllm::save_safetensors("model.safetensors", {{"wte", wte}, {"ln_f.weight", g.view()}},
//                               {{"format", "pt"}});
//
// Large models are split into shards with an index, model.safetensors.index.json:
//     {"metadata": {...}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors", ...}}
// safetensors_checkpoint opens a directory holding either form.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/detail/json.hpp>
#include <tinyllm/detail/tensor_io.hpp>
#include <tinyllm/detail/utf8.hpp>
#include <tinyllm/dtype.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/tensor.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#  include <fcntl.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#  define TINYLLM_HAS_MMAP 1
#else
#  define TINYLLM_HAS_MMAP 0
#endif

namespace tinyllm {

enum class st_dtype { f64, f32, f16, bf16, i64, i32, i16, i8, u8, boolean };

// The dtype's name in safetensors headers and its size in bytes.
inline std::string_view st_dtype_name(st_dtype d) {
    constexpr std::string_view names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
    return names[static_cast<int>(d)];
}
inline std::size_t st_dtype_size(st_dtype d) {
    constexpr std::size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
    return sizes[static_cast<int>(d)];
}

struct safetensors_tensor {
    std::string name;
    st_dtype dtype = st_dtype::f32;
    std::vector<index_t> shape;
    const std::byte* data = nullptr;  // inside the mapped file; not necessarily aligned
    std::size_t bytes = 0;

    index_t numel() const {
        index_t n = 1;
        for (index_t s : shape) n *= s;
        return n;
    }
};

namespace detail {

// A read-only view of a whole file: memory-mapped where possible, else read.
class mapped_file {
public:
    explicit mapped_file(const std::string& path) : path_(path) {
#if TINYLLM_HAS_MMAP
        const int fd = ::open(path.c_str(), O_RDONLY);
        if (fd < 0) TINYLLM_FAIL("cannot open '", path, "': ", std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            ::close(fd);
            TINYLLM_FAIL("cannot stat '", path, "'");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            ::close(fd);
            if (p == MAP_FAILED) TINYLLM_FAIL("cannot memory-map '", path, "'");
            data_ = static_cast<const std::byte*>(p);
            mapped_ = true;
        } else {
            ::close(fd);
        }
#else
        std::ifstream in(path, std::ios::binary);
        if (!in) TINYLLM_FAIL("cannot open '", path, "'");
        buffer_.assign(std::istreambuf_iterator<char>(in), {});
        size_ = buffer_.size();
        data_ = reinterpret_cast<const std::byte*>(buffer_.data());
#endif
    }
    ~mapped_file() {
#if TINYLLM_HAS_MMAP
        if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
    }
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;

    const std::byte* data() const { return data_; }
    std::size_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
    bool mapped_ = false;
#if !TINYLLM_HAS_MMAP
    std::string buffer_;
#endif
};

inline st_dtype parse_st_dtype(const std::string& s, const std::string& file, const std::string& tensor) {
    for (int d = 0; d <= static_cast<int>(st_dtype::boolean); ++d)
        if (st_dtype_name(static_cast<st_dtype>(d)) == s) return static_cast<st_dtype>(d);
    TINYLLM_FAIL("safetensors file '", file, "': tensor '", tensor, "' has unknown dtype \"", s, "\"");
}

}  // namespace detail

// One .safetensors file, mapped and validated.
class safetensors_file {
public:
    explicit safetensors_file(const std::string& path) : file_(std::make_unique<detail::mapped_file>(path)) {
        const std::string& p = path;
        const std::size_t size = file_->size();
        if (size < 8) TINYLLM_FAIL("safetensors file '", p, "' is ", size, " bytes: too short for the 8-byte header length");
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(file_->data()[i]);  // little-endian
        if (n > size - 8)
            TINYLLM_FAIL("safetensors file '", p, "': the header length ", n, " runs past the end of the file (",
                         size, " bytes) — truncated or not a safetensors file");
        const std::string_view header(reinterpret_cast<const char*>(file_->data() + 8), static_cast<std::size_t>(n));
        json::value doc;
        try {
            doc = json::parse(header, p + " (header)", json::duplicate_keys::keep);  // refused below, by name
        } catch (const error& e) {
            TINYLLM_FAIL("safetensors file '", p, "': the header is not valid JSON: ", e.what());
        }
        if (!doc.is_object()) TINYLLM_FAIL("safetensors file '", p, "': the header must be a JSON object");

        const std::byte* data_section = file_->data() + 8 + n;
        const std::size_t data_size = size - 8 - static_cast<std::size_t>(n);
        struct range {
            std::size_t begin, end;
            std::string name;
        };
        std::vector<range> ranges;
        for (const auto& member : doc.as_object()) {
            // (Named, not a structured binding: clang before 16 cannot capture one in the lambda below.)
            const std::string& name = member.first;
            const json::value& entry = member.second;
            if (name == "__metadata__") {  // a map of strings, or null, as the reference reads it
                if (entry.is_null()) continue;
                if (!entry.is_object())
                    TINYLLM_FAIL("safetensors file '", p, "': \"__metadata__\" is ", json::kind_name(entry.type()),
                                 ", not a map of strings");
                for (const auto& [k, v] : entry.as_object()) {
                    if (!v.is_string())
                        TINYLLM_FAIL("safetensors file '", p, "': \"__metadata__\" entry \"", k, "\" is ",
                                     json::kind_name(v.type()), ", not a string");
                    metadata_[k] = v.as_string();
                }
                continue;
            }
            auto fail = [&](const auto&... why) {
                TINYLLM_FAIL("safetensors file '", p, "': tensor '", name, "': ", why...);
            };
            if (!entry.is_object()) fail("the entry must be an object");
            const json::value* dtype = entry.find("dtype");
            const json::value* shape = entry.find("shape");
            const json::value* offsets = entry.find("data_offsets");
            if (!dtype || !dtype->is_string()) fail("\"dtype\" is missing or not a string");
            if (!shape || !shape->is_array()) fail("\"shape\" is missing or not an array");
            if (!offsets || !offsets->is_array() || offsets->size() != 2) fail("\"data_offsets\" must be [begin, end]");
            if (index_.count(name)) fail("the header names this tensor twice");
            // A JSON number that must be an integer (2.0 and 1e30 are not), named in the error.
            const auto integer = [&](const json::value& v, const char* field) {
                const std::optional<std::int64_t> i = v.to_int64();
                if (!i) fail("\"", field, "\" holds ", v.number_text(), ", not an integer that fits in 64 bits");
                return *i;
            };
            safetensors_tensor t;
            t.name = name;
            t.dtype = detail::parse_st_dtype(dtype->as_string(), p, name);
            // The product of the nonzero extents is bounded too, so that a shape
            // such as [0, 2^62, 2^62] (no elements) cannot overflow the strides
            // computed from it later.
            index_t numel = 1;
            for (const auto& s : shape->as_array()) {
                if (!s.is_number()) fail("the shape must hold integers");
                const std::int64_t extent = integer(s, "shape");
                if (extent < 0) fail("negative extent ", extent, " in the shape");
                t.shape.push_back(extent);
            }
            if (!detail::nonzero_product_at_most(index_t{1} << 50, t.shape)) fail("the shape is absurdly large");
            for (const index_t extent : t.shape) numel *= extent;
            const auto& off = offsets->as_array();
            if (!off[0].is_number() || !off[1].is_number()) fail("data_offsets must be integers");
            const std::int64_t begin = integer(off[0], "data_offsets"), end = integer(off[1], "data_offsets");
            if (begin < 0 || end < begin) fail("data_offsets [", begin, ", ", end, "] are not an increasing pair");
            if (static_cast<std::uint64_t>(end) > data_size)
                fail("data_offsets [", begin, ", ", end, "] point outside the data section of ", data_size,
                     " bytes (truncated file?)");
            const std::size_t want = static_cast<std::size_t>(numel) * st_dtype_size(t.dtype);
            if (static_cast<std::size_t>(end - begin) != want)
                fail("holds ", end - begin, " bytes but shape ", shape_string(t.shape), " of ", st_dtype_name(t.dtype),
                     " needs ", want);
            t.data = data_section + begin;
            t.bytes = want;
            ranges.push_back({static_cast<std::size_t>(begin), static_cast<std::size_t>(end), name});
            index_[name] = tensors_.size();
            tensors_.push_back(std::move(t));
        }
        // An empty tensor (begin = end: a shape with a 0) holds no bytes and overlaps nothing;
        // Python's safetensors writes one where the next tensor begins. It is set
        // aside here and must sit on a boundary between tensors (checked below).
        const auto first_empty =
            std::stable_partition(ranges.begin(), ranges.end(), [](const range& r) { return r.begin != r.end; });
        const std::vector<range> empties(first_empty, ranges.end());
        ranges.erase(first_empty, ranges.end());
        std::sort(ranges.begin(), ranges.end(), [](const range& a, const range& b) { return a.begin < b.begin; });
        for (std::size_t i = 1; i < ranges.size(); ++i)
            if (ranges[i].begin < ranges[i - 1].end)
                TINYLLM_FAIL("safetensors file '", p, "': tensors '", ranges[i - 1].name, "' and '", ranges[i].name,
                             "' overlap in the data section");
        // The tensors must also cover the data section exactly, as the reference
        // reader insists: a gap or bytes past the last tensor mean a damaged or
        // concatenated file (or a header that forgot a tensor), not a checkpoint.
        std::size_t covered = 0;
        for (const range& r : ranges) {
            if (r.begin != covered)
                TINYLLM_FAIL("safetensors file '", p, "': bytes [", covered, ", ", r.begin,
                             ") of the data section belong to no tensor (before tensor '", r.name,
                             "'); the format has no gaps");
            covered = r.end;
        }
        if (covered != data_size)
            TINYLLM_FAIL("safetensors file '", p, "': the data section holds ", data_size,
                         " bytes but its tensors end at byte ", covered, ": ", data_size - covered,
                         " trailing bytes belong to no tensor (a damaged or concatenated file?)");
        for (const range& e : empties)
            if (e.begin != 0 &&
                std::none_of(ranges.begin(), ranges.end(), [&](const range& r) { return r.end == e.begin; }))
                TINYLLM_FAIL("safetensors file '", p, "': tensor '", e.name, "': empty, but its data_offsets [",
                             e.begin, ", ", e.end, "] point inside another tensor's bytes, not between two tensors");
    }

    const std::string& path() const { return file_->path(); }
    const std::vector<safetensors_tensor>& tensors() const { return tensors_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const safetensors_tensor* find(std::string_view name) const {
        const auto it = index_.find(std::string(name));
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }

    static std::string shape_string(const std::vector<index_t>& shape) {
        std::string s = "(";
        for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
        return s + ")";
    }

private:
    std::unique_ptr<detail::mapped_file> file_;
    std::vector<safetensors_tensor> tensors_;
    std::map<std::string, std::size_t> index_;
    std::map<std::string, std::string> metadata_;
};

// The elements of an F32, F16 or BF16 tensor as floats.
inline std::vector<float> to_float_vector(const safetensors_tensor& t) {
    std::vector<float> out(static_cast<std::size_t>(t.numel()));
    for (std::size_t i = 0; i < out.size(); ++i) {
        switch (t.dtype) {
            case st_dtype::f32: std::memcpy(&out[i], t.data + 4 * i, 4); break;
            case st_dtype::bf16: {
                bfloat16 b;
                std::memcpy(&b.bits, t.data + 2 * i, 2);
                out[i] = to_float(b);
                break;
            }
            case st_dtype::f16: {
                float16 h;
                std::memcpy(&h.bits, t.data + 2 * i, 2);
                out[i] = to_float(h);
                break;
            }
            default:
                TINYLLM_FAIL("tensor '", t.name, "' has dtype ", st_dtype_name(t.dtype),
                             "; tinyllm reads weights stored as F32, F16 or BF16");
        }
    }
    return out;
}

// The safetensors dtype of a C++ element type (const ignored): double, float,
// float16, bfloat16, bool, or a signed integer of 1, 2, 4 or 8 bytes, or uint8.
template <class T>
constexpr st_dtype st_dtype_of() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, double>) return st_dtype::f64;
    else if constexpr (std::is_same_v<U, float>) return st_dtype::f32;
    else if constexpr (std::is_same_v<U, float16>) return st_dtype::f16;
    else if constexpr (std::is_same_v<U, bfloat16>) return st_dtype::bf16;
    else if constexpr (std::is_same_v<U, bool>) return st_dtype::boolean;
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 8) return st_dtype::i64;
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 4) return st_dtype::i32;
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 2) return st_dtype::i16;
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U> && sizeof(U) == 1) return st_dtype::i8;
    else if constexpr (std::is_integral_v<U> && sizeof(U) == 1) return st_dtype::u8;
    else static_assert(sizeof(T) == 0, "tinyllm safetensors: the element type must be double, float, float16, "
                                       "bfloat16, bool, int8/16/32/64 or uint8");
}

// Tensor t as a tensor<T, Rank>; its dtype and rank must be T's and Rank (no
// conversions), except that BOOL tensors read as std::uint8_t (0 or 1).
template <class T, std::size_t Rank>
tensor<T, Rank> to_tensor(const safetensors_tensor& t) {
    static_assert(!std::is_same_v<T, bool>, "tinyllm::to_tensor: tensor<bool> is a std::vector<bool> underneath, "
                                            "which cannot hold the bytes; read BOOL tensors as std::uint8_t");
    constexpr st_dtype want = st_dtype_of<T>();
    const bool bool_as_u8 = want == st_dtype::u8 && t.dtype == st_dtype::boolean;
    if ((t.dtype != want && !bool_as_u8) || t.shape.size() != Rank)
        TINYLLM_FAIL("safetensors tensor '", t.name, "' is ", st_dtype_name(t.dtype), " of shape ",
                     safetensors_file::shape_string(t.shape), " but to_tensor asks for ", st_dtype_name(want), " with ",
                     Rank, Rank == 1 ? " dimension" : " dimensions");
    extents<Rank> shape;
    for (std::size_t d = 0; d < Rank; ++d) shape[d] = t.shape[d];
    tensor<T, Rank> out(shape);
    if (t.bytes) std::memcpy(static_cast<void*>(out.data()), t.data, t.bytes);  // t.data may be unaligned
    return out;
}

// One tensor for save_safetensors: a name and a view of the caller's elements
// (not copied; they must outlive the call). Built from a view or an owning tensor:
// {"name", x} with x a tensor_view<T, Rank> or a tensor<T, Rank>.
struct safetensors_entry {
    std::string name;
    st_dtype dtype = st_dtype::f32;
    detail::byte_view elements;

    template <class T, std::size_t Rank>
    safetensors_entry(std::string tensor_name, tensor_view<T, Rank> x) : name(std::move(tensor_name)), dtype(st_dtype_of<T>()) {
        elements.data = reinterpret_cast<const std::byte*>(x.data());
        elements.element_size = sizeof(T);
        for (std::size_t d = 0; d < Rank; ++d) {
            TINYLLM_EXPECT(x.extent(d) >= 0, "safetensors tensor '", name, "': shape ", to_string(x.shape()),
                           " has a negative extent");
            elements.shape.push_back(x.extent(d));
            elements.strides.push_back(x.stride(d));
        }
    }
    template <class T, std::size_t Rank>
    safetensors_entry(std::string tensor_name, const tensor<T, Rank>& x) : safetensors_entry(std::move(tensor_name), x.view()) {}
};

// Write `tensors` (in this order) and the optional string `metadata` to a
// .safetensors file that safetensors_file and Python's safetensors read back.
inline void save_safetensors(const std::string& path, const std::vector<safetensors_entry>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    auto fail = [&](const auto&... why) { TINYLLM_FAIL("save_safetensors('", path, "'): ", why...); };
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\":{";
        bool first = true;
        for (const auto& [key, value] : metadata) {
            if (!detail::is_valid_utf8(key) || !detail::is_valid_utf8(value))
                fail("metadata entry '", key, "' is not valid UTF-8");
            if (!first) header += ',';
            header += json::quote(key);
            header += ':';
            header += json::quote(value);
            first = false;
        }
        header += "}";
    }
    std::map<std::string_view, int> seen;
    std::uint64_t offset = 0;
    for (const safetensors_entry& t : tensors) {
        if (t.name == "__metadata__") fail("a tensor may not be called \"__metadata__\" (the header reserves it)");
        if (!detail::is_valid_utf8(t.name)) fail("tensor name '", t.name, "' is not valid UTF-8");
        if (seen[t.name]++) fail("two tensors are called '", t.name, "'");
        const std::uint64_t bytes = static_cast<std::uint64_t>(t.elements.numel()) * st_dtype_size(t.dtype);
        // (Appended piece by piece: "," + std::string trips GCC 12's -Wrestrict false positive.)
        if (header.size() > 1) header += ',';
        header += json::quote(t.name);
        header += ":{\"dtype\":\"";
        header += st_dtype_name(t.dtype);
        header += "\",\"shape\":[";
        for (std::size_t d = 0; d < t.elements.shape.size(); ++d) {
            if (d) header += ',';
            header += std::to_string(t.elements.shape[d]);
        }
        header += "],\"data_offsets\":[";
        header += std::to_string(offset);
        header += ',';
        header += std::to_string(offset + bytes);
        header += "]}";
        offset += bytes;
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');  // the data start 8-byte aligned

    detail::output_file out(path);
    unsigned char length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
    out.write(length, 8);
    out.write(header);
    for (const safetensors_entry& t : tensors) out.write_row_major(t.elements);
    out.close();
}

// A checkpoint directory: model.safetensors, or shards listed in
// model.safetensors.index.json. A path to one .safetensors file works too
// (a file of gradients named as the weights, for instance).
class safetensors_checkpoint {
public:
    explicit safetensors_checkpoint(const std::string& dir) : dir_(dir) {
        namespace fs = std::filesystem;
        const fs::path single = fs::is_regular_file(dir) ? fs::path(dir) : fs::path(dir) / "model.safetensors";
        const fs::path index = fs::path(dir) / "model.safetensors.index.json";
        if (!fs::is_regular_file(dir) && fs::exists(index)) {
            if (!fs::is_regular_file(index)) TINYLLM_FAIL("'", index.string(), "' is not a file");
            std::ifstream in(index, std::ios::binary);
            if (!in) TINYLLM_FAIL("cannot open '", index.string(), "'");
            const std::string text((std::istreambuf_iterator<char>(in)), {});
            const json::value doc = json::parse(text, index.string());
            const json::value* map = doc.find("weight_map");
            if (!map || !map->is_object()) TINYLLM_FAIL("'", index.string(), "' has no \"weight_map\" object");
            std::map<std::string, std::size_t> opened;
            for (const auto& [name, file] : map->as_object()) {
                if (!file.is_string()) TINYLLM_FAIL("'", index.string(), "': weight_map[\"", name, "\"] is not a file name");
                const std::string& shard = file.as_string();
                if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
                    TINYLLM_FAIL("'", index.string(), "': shard name '", shard, "' must be a plain file name");
                if (!opened.count(shard)) {
                    opened[shard] = files_.size();
                    files_.push_back(std::make_unique<safetensors_file>((fs::path(dir) / shard).string()));
                }
                const safetensors_tensor* t = files_[opened[shard]]->find(name);
                if (!t) TINYLLM_FAIL("'", index.string(), "' says tensor '", name, "' is in ", shard, ", but it is not");
                tensors_[name] = t;
            }
        } else if (fs::exists(single)) {
            files_.push_back(std::make_unique<safetensors_file>(single.string()));
            for (const auto& t : files_.back()->tensors()) tensors_[t.name] = &t;
        } else {
            TINYLLM_FAIL("no model.safetensors or model.safetensors.index.json in '", dir, "'");
        }
    }

    const std::string& dir() const { return dir_; }  // as given: a directory or one .safetensors file
    const safetensors_tensor* find(const std::string& name) const {
        const auto it = tensors_.find(name);
        return it == tensors_.end() ? nullptr : it->second;
    }
    bool contains(const std::string& name) const { return find(name) != nullptr; }
    std::vector<std::string> names() const {
        std::vector<std::string> n;
        for (const auto& [k, v] : tensors_) n.push_back(k);
        return n;
    }

    // Tensor `name`, which must be there with the shape the model expects. (A
    // loader that allocates for many tensors at once checks them all first, so
    // that what it allocates is what the file holds.)
    template <std::size_t Rank>
    const safetensors_tensor& expect(const std::string& name, const extents<Rank>& shape) const {
        const safetensors_tensor* t = find(name);
        if (!t) TINYLLM_FAIL("checkpoint '", dir_, "' has no tensor '", name, "'");
        bool ok = t->shape.size() == Rank;
        for (std::size_t d = 0; ok && d < Rank; ++d) ok = t->shape[d] == shape[d];
        if (!ok)
            TINYLLM_FAIL("checkpoint '", dir_, "': tensor '", name, "' has shape ", safetensors_file::shape_string(t->shape),
                         " but the config implies ", to_string(shape));
        return *t;
    }

    // Tensor `name` as floats, checked against the shape the model expects.
    template <std::size_t Rank>
    tensor<float, Rank> load(const std::string& name, const extents<Rank>& shape) const {
        const safetensors_tensor& t = expect(name, shape);
        tensor<float, Rank> out(shape);
        out.values() = to_float_vector(t);
        return out;
    }

private:
    std::string dir_;
    std::vector<std::unique_ptr<safetensors_file>> files_;
    std::map<std::string, const safetensors_tensor*> tensors_;
};

}  // namespace tinyllm
