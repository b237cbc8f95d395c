// tinyllm/detail/tensor_io.hpp — the byte-level pieces shared by the tensor
// file writers and readers (<tinyllm/npy.hpp>, <tinyllm/safetensors.hpp>).
//
// Tensor files store elements in row-major ("C") order, whatever the layout of
// the view being saved. A view of any strides is walked one innermost row at a
// time (an odometer over the leading dimensions):
//
//     for each (i0, ..., iR-2):  row = data + i0*stride[0] + ... + iR-2*stride[R-2]
//                                elements row[0], row[s], ..., row[(n-1)*s],  s = stride[R-1]
//
// so a contiguous row is one copy and only a strided one is gathered element by
// element. The same walk turns a Fortran-order (column-major) .npy array into
// C order: its C-order view has strides 1, n0, n0*n1, ...
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace tinyllm::detail {

// A tensor's elements seen as bytes: `rank` extents and strides (in elements),
// each element `element_size` bytes.
struct byte_view {
    const std::byte* data = nullptr;
    std::vector<index_t> shape;
    std::vector<index_t> strides;
    std::size_t element_size = 1;

    index_t numel() const {
        index_t n = 1;
        for (index_t s : shape) n *= s;
        return n;
    }
};

// Call row(first, n, stride) for every innermost row of v in row-major order:
// `first` points at the row's first element, which has n elements `stride` apart.
template <class Row>
void for_each_row(const byte_view& v, Row&& row) {
    const std::size_t rank = v.shape.size();
    if (v.numel() == 0) return;
    if (rank == 0) {
        row(v.data, index_t{1}, index_t{1});
        return;
    }
    const index_t n = v.shape[rank - 1], stride = v.strides[rank - 1];
    std::vector<index_t> at(rank - 1, 0);
    for (;;) {
        index_t offset = 0;
        for (std::size_t d = 0; d + 1 < rank; ++d) offset += at[d] * v.strides[d];
        row(v.data + offset * static_cast<index_t>(v.element_size), n, stride);
        // Advance the odometer over the leading dimensions 0 .. rank-2.
        for (std::size_t d = rank - 1;;) {
            if (d == 0) return;
            --d;
            if (++at[d] < v.shape[d]) break;
            at[d] = 0;
        }
    }
}

// Copy v's elements, in row-major order, to `out` (numel * element_size bytes).
inline void gather_row_major(std::byte* out, const byte_view& v) {
    const std::size_t es = v.element_size;
    for_each_row(v, [&](const std::byte* first, index_t n, index_t stride) {
        if (stride == 1) {
            std::memcpy(out, first, static_cast<std::size_t>(n) * es);
            out += static_cast<std::size_t>(n) * es;
        } else {
            for (index_t i = 0; i < n; ++i, out += es) std::memcpy(out, first + i * stride * static_cast<index_t>(es), es);
        }
    });
}

// A binary output file whose every failure is a tinyllm::error naming it.
class output_file {
public:
    explicit output_file(const std::string& path) : path_(path), out_(path, std::ios::binary | std::ios::trunc) {
        if (!out_) TINYLLM_FAIL("cannot open '", path, "' for writing: ", std::strerror(errno));
    }
    void write(const void* bytes, std::size_t n) {
        if (n == 0) return;
        out_.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(n));
        if (!out_) TINYLLM_FAIL("writing '", path_, "' failed (disk full?): ", std::strerror(errno));
    }
    void write(const std::string& s) { write(s.data(), s.size()); }
    // v's elements in row-major order: contiguous rows as they are, strided rows gathered.
    void write_row_major(const byte_view& v) {
        std::vector<std::byte> buffer;
        for_each_row(v, [&](const std::byte* first, index_t n, index_t stride) {
            const std::size_t bytes = static_cast<std::size_t>(n) * v.element_size;
            if (stride == 1) {
                write(first, bytes);
                return;
            }
            buffer.resize(bytes);
            for (index_t i = 0; i < n; ++i)
                std::memcpy(buffer.data() + static_cast<std::size_t>(i) * v.element_size,
                            first + i * stride * static_cast<index_t>(v.element_size), v.element_size);
            write(buffer.data(), bytes);
        });
    }
    void close() {
        out_.close();
        if (!out_) TINYLLM_FAIL("closing '", path_, "' failed (disk full?)");
    }

private:
    std::string path_;
    std::ofstream out_;
};

// "(2, 3)" — shapes in messages, as NumPy prints them ("(5,)" for one dimension, "()" for none).
inline std::string tuple_string(const std::vector<index_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace tinyllm::detail
