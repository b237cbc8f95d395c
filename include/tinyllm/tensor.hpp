// tinyllm/tensor.hpp — a non-owning tensor view and a small owning host tensor.
//
// Every component in tinyllm takes its inputs and outputs as tensor views: a
// pointer, a shape and a stride for each dimension. Element (i0, i1, ..., iR-1)
// lives at
//
//     data + i0*stride[0] + i1*stride[1] + ... + iR-1*stride[R-1]
//
// For a contiguous row-major ("C order") tensor of shape (n0, ..., nR-1) the
// strides are stride[R-1] = 1 and stride[d] = stride[d+1] * n[d+1]. Other
// strides describe views without copying: a transpose swaps two strides, a
// slice moves the pointer and drops a dimension, and a head of a (B, T, H, D)
// tensor is the same memory with a different starting point.
//
// The rank is a template parameter, so `tensor_view<float, 4>` is a
// (B, T, H, D) tensor and passing a matrix where a 4-D tensor is expected fails
// to compile. A view is a few words, is copied by value, and works unchanged
// on the host and inside CUDA kernels (its methods are TINYLLM_HOST_DEVICE).
// In debug builds (see TINYLLM_BOUNDS_CHECK) every element access checks its
// indices: on the host a bad index throws tinyllm::error, on the device it
// prints and traps.
//
// `tensor<T, Rank>` owns host memory (a std::vector) and hands out views; it is
// what tests, examples and the CPU reference code use to hold data.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>

#include <cstddef>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace tinyllm {

// The size (or stride) of each of Rank dimensions. Built from integers of any
// type: `extents<2>{rows, cols}`.
template <std::size_t Rank>
struct extents {
    static_assert(Rank >= 1, "tinyllm::extents: a tensor needs at least one dimension");

    index_t value[Rank] = {};

    constexpr extents() = default;

    template <class... Ints,
              class = std::enable_if_t<sizeof...(Ints) == Rank && (std::is_integral_v<Ints> && ...)>>
    TINYLLM_HOST_DEVICE constexpr extents(Ints... n) : value{static_cast<index_t>(n)...} {}

    TINYLLM_HOST_DEVICE constexpr index_t operator[](std::size_t d) const { return value[d]; }
    TINYLLM_HOST_DEVICE constexpr index_t& operator[](std::size_t d) { return value[d]; }
    TINYLLM_HOST_DEVICE static constexpr std::size_t rank() { return Rank; }

    // Number of elements a tensor of this shape holds.
    TINYLLM_HOST_DEVICE constexpr index_t product() const {
        index_t n = 1;
        for (std::size_t d = 0; d < Rank; ++d) n *= value[d];
        return n;
    }

    TINYLLM_HOST_DEVICE constexpr bool operator==(const extents& other) const {
        for (std::size_t d = 0; d < Rank; ++d)
            if (value[d] != other.value[d]) return false;
        return true;
    }
    TINYLLM_HOST_DEVICE constexpr bool operator!=(const extents& other) const { return !(*this == other); }
};

// The strides of a contiguous row-major tensor of the given shape.
template <std::size_t Rank>
TINYLLM_HOST_DEVICE constexpr extents<Rank> row_major_strides(const extents<Rank>& shape) {
    extents<Rank> strides;
    index_t s = 1;
    for (std::size_t d = Rank; d-- > 0;) {
        strides[d] = s;
        s *= shape[d];
    }
    return strides;
}

// "(2, 3, 4)": for error messages and the tour.
template <std::size_t Rank>
std::string to_string(const extents<Rank>& e) {
    std::string s = "(";
    for (std::size_t d = 0; d < Rank; ++d) {
        if (d) s += ", ";
        s += std::to_string(e[d]);
    }
    return s + ")";
}

namespace detail {

[[noreturn]] inline void throw_bad_index(index_t i, index_t extent, std::size_t dim) {
    throw error(cat("tinyllm: tensor index ", i, " is out of range [0, ", extent, ") in dimension ", dim));
}

// extents<N> from a braced list of N integers: {B * T, D}.
template <class I, std::size_t N>
constexpr extents<N> to_extents(const I (&sizes)[N]) {
    extents<N> e;
    for (std::size_t d = 0; d < N; ++d) e[d] = static_cast<index_t>(sizes[d]);
    return e;
}

TINYLLM_HOST_DEVICE void check_index([[maybe_unused]] index_t i, [[maybe_unused]] index_t extent,
                                     [[maybe_unused]] std::size_t dim) {
#if TINYLLM_BOUNDS_CHECK
    if (i < 0 || i >= extent) {
#  if TINYLLM_ON_DEVICE
        printf("tinyllm: tensor index %lld is out of range [0, %lld) in dimension %d\n",
               static_cast<long long>(i), static_cast<long long>(extent), static_cast<int>(dim));
        __trap();
#  else
        throw_bad_index(i, extent, dim);
#  endif
    }
#endif
}

// Whether the product of the positive numbers among `factors` is at most
// `limit` (> 0), computed without overflow; zeros and negatives are skipped
// (left to other checks). The bound of every size read from a file or given
// by a caller (a tensor's elements, a checkpoint's shapes, a cache's bytes):
// bounding the nonzero extents too means a shape such as (0, 2^62, 2^62),
// which holds nothing, cannot overflow the strides computed from it.
template <class Factors>
bool nonzero_product_at_most(index_t limit, const Factors& factors) {
    index_t p = 1;
    for (const auto f : factors) {
        if (f <= 0) continue;
        if (p > limit / static_cast<index_t>(f)) return false;
        p *= static_cast<index_t>(f);
    }
    return true;
}
inline bool nonzero_product_at_most(index_t limit, std::initializer_list<index_t> factors) {
    return nonzero_product_at_most<std::initializer_list<index_t>>(limit, factors);
}

// A view's shape: no extent may be negative. Checked on the host (a view is
// where a shape computed as T - n < 0 first appears); device code receives
// views the host has checked, and checks them again only with bounds checking.
template <std::size_t Rank>
TINYLLM_HOST_DEVICE constexpr const extents<Rank>& checked_view_shape(const extents<Rank>& shape) {
#if !TINYLLM_ON_DEVICE
    for (std::size_t d = 0; d < Rank; ++d)
        if (shape[d] < 0)
            throw error(cat("tinyllm: a tensor view of shape ", to_string(shape), " has a negative extent"));
    // The positive extents' product bounded, so that no stride computed from them overflows.
    if (!nonzero_product_at_most(std::numeric_limits<index_t>::max(), shape.value))
        throw error(cat("tinyllm: a tensor view of shape ", to_string(shape),
                        " has more elements (or, with a 0 among them, strides) than index_t counts"));
#elif TINYLLM_BOUNDS_CHECK
    for (std::size_t d = 0; d < Rank; ++d)
        if (shape[d] < 0) {
            printf("tinyllm: a tensor view has a negative extent %lld in dimension %d\n",
                   static_cast<long long>(shape[d]), static_cast<int>(d));
            __trap();
        }
#endif
    return shape;
}

// `dim` names one of a view's Rank dimensions (slice, narrow, transpose).
TINYLLM_HOST_DEVICE constexpr void check_dim([[maybe_unused]] std::size_t dim, [[maybe_unused]] std::size_t rank) {
#if !TINYLLM_ON_DEVICE
    if (dim >= rank)
        throw error(cat("tinyllm: dimension ", dim, " of a tensor view of rank ", rank, " does not exist"));
#elif TINYLLM_BOUNDS_CHECK
    if (dim >= rank) {
        printf("tinyllm: dimension %d of a tensor view of rank %d does not exist\n", static_cast<int>(dim),
               static_cast<int>(rank));
        __trap();
    }
#endif
}

}  // namespace detail

template <class T, std::size_t Rank>
class tensor_view {
public:
    using element_type = T;
    using shape_type = extents<Rank>;
    static constexpr std::size_t rank = Rank;

    constexpr tensor_view() = default;

    // A contiguous row-major tensor of the given shape starting at `data`. A
    // negative extent throws tinyllm::error (on the host).
    TINYLLM_HOST_DEVICE constexpr tensor_view(T* data, const shape_type& shape)
        : data_(data), shape_(detail::checked_view_shape(shape)), strides_(row_major_strides(shape)) {}

    // Any layout: element (i...) is at data + sum(i[d] * strides[d]).
    TINYLLM_HOST_DEVICE constexpr tensor_view(T* data, const shape_type& shape, const shape_type& strides)
        : data_(data), shape_(detail::checked_view_shape(shape)), strides_(strides) {}

    // A view of T converts to a view of const T (never the other way round).
    template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
    TINYLLM_HOST_DEVICE constexpr tensor_view(const tensor_view<U, Rank>& other)
        : data_(other.data()), shape_(other.shape()), strides_(other.strides()) {}

    TINYLLM_HOST_DEVICE constexpr T* data() const { return data_; }
    TINYLLM_HOST_DEVICE constexpr const shape_type& shape() const { return shape_; }
    TINYLLM_HOST_DEVICE constexpr const shape_type& strides() const { return strides_; }
    TINYLLM_HOST_DEVICE constexpr index_t extent(std::size_t d) const { return shape_[d]; }
    TINYLLM_HOST_DEVICE constexpr index_t stride(std::size_t d) const { return strides_[d]; }
    TINYLLM_HOST_DEVICE constexpr index_t size() const { return shape_.product(); }
    TINYLLM_HOST_DEVICE constexpr bool empty() const { return size() == 0; }

    // True when the elements are packed in row-major order with no gaps, so
    // the view can be treated as a flat array of size() elements.
    TINYLLM_HOST_DEVICE constexpr bool is_contiguous() const {
        index_t expected = 1;
        for (std::size_t d = Rank; d-- > 0;) {
            if (shape_[d] != 1 && strides_[d] != expected) return false;
            expected *= shape_[d];
        }
        return true;
    }

    // Element access: v(i0, i1, ...), one index per dimension.
    template <class... Ints>
    TINYLLM_HOST_DEVICE constexpr T& operator()(Ints... indices) const {
        static_assert(sizeof...(Ints) == Rank, "tinyllm::tensor_view: give exactly one index per dimension");
        static_assert((std::is_integral_v<Ints> && ...), "tinyllm::tensor_view: indices must be integers");
        const index_t idx[Rank] = {static_cast<index_t>(indices)...};
        index_t offset = 0;
        for (std::size_t d = 0; d < Rank; ++d) {
            detail::check_index(idx[d], shape_[d], d);
            offset += idx[d] * strides_[d];
        }
        return data_[offset];
    }

    // The (Rank-1)-dimensional view at index i of dimension `dim`:
    // for x of shape (B, T, D), x.slice(0, b) is the (T, D) sequence b.
    template <std::size_t R = Rank, class = std::enable_if_t<(R > 1)>>
    TINYLLM_HOST_DEVICE constexpr tensor_view<T, Rank - 1> slice(std::size_t dim, index_t i) const {
        detail::check_dim(dim, Rank);
        detail::check_index(i, shape_[dim], dim);
        extents<Rank - 1> shape, strides;
        for (std::size_t d = 0, k = 0; d < Rank; ++d) {
            if (d == dim) continue;
            shape[k] = shape_[d];
            strides[k] = strides_[d];
            ++k;
        }
        return {data_ + i * strides_[dim], shape, strides};
    }

    // Elements [start, start + length) of dimension `dim`, other dimensions whole.
    // A negative length throws (on the host), as a negative extent does.
    TINYLLM_HOST_DEVICE constexpr tensor_view narrow(std::size_t dim, index_t start, index_t length) const {
        detail::check_dim(dim, Rank);
#if TINYLLM_BOUNDS_CHECK
        if (length > 0) {
            detail::check_index(start, shape_[dim], dim);
            // start + length - 1, asked without the sum (a length near index_t's top would wrap it).
            if (length - 1 > shape_[dim] - 1 - start) detail::check_index(shape_[dim], shape_[dim], dim);
        }
#endif
        shape_type shape = shape_;
        shape[dim] = length;
        return {data_ + start * strides_[dim], shape, strides_};
    }

    // The same memory with dimensions a and b swapped (no copy).
    TINYLLM_HOST_DEVICE constexpr tensor_view transpose(std::size_t a, std::size_t b) const {
        detail::check_dim(a, Rank);
        detail::check_dim(b, Rank);
        shape_type shape = shape_, strides = strides_;
        index_t t = shape[a]; shape[a] = shape[b]; shape[b] = t;
        t = strides[a]; strides[a] = strides[b]; strides[b] = t;
        return {data_, shape, strides};
    }

private:
    T* data_ = nullptr;
    shape_type shape_;
    shape_type strides_;
};

namespace detail {

// The lowest and one past the highest address a view touches (empty: equal).
template <class T, std::size_t Rank>
std::pair<const char*, const char*> address_range(const tensor_view<T, Rank>& v) {
    if (v.size() == 0) return {nullptr, nullptr};
    index_t lo = 0, hi = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
        const index_t span = (v.extent(d) - 1) * v.stride(d);
        (span < 0 ? lo : hi) += span;
    }
    const char* base = reinterpret_cast<const char*>(v.data());
    return {base + lo * static_cast<index_t>(sizeof(T)), base + (hi + 1) * static_cast<index_t>(sizeof(T))};
}

// |stride(d)| of a view, in bytes.
template <class T, std::size_t Rank>
index_t stride_bytes(const tensor_view<T, Rank>& v, std::size_t d) {
    return (v.stride(d) < 0 ? -v.stride(d) : v.stride(d)) * static_cast<index_t>(sizeof(T));
}

// The bytes of a view as a block pattern of period P: its elements lie, modulo
// P, in one interval of `width` bytes that starts at `lo` mod P, when each
// dimension either steps less than P (and all of those together span at most
// P) or steps a multiple of P. False when the view has no such form.
template <class T, std::size_t Rank>
bool periodic_block(const tensor_view<T, Rank>& v, index_t P, index_t& width) {
    width = static_cast<index_t>(sizeof(T));
    for (std::size_t d = 0; d < Rank; ++d) {
        if (v.extent(d) <= 1) continue;
        const index_t step = stride_bytes(v, d);
        if (step < P)
            width += (v.extent(d) - 1) * step;
        else if (step % P != 0)
            return false;
    }
    return width <= P;
}

// Whether two views may share memory (an output that overlaps an input would
// be read after it was written). Their address ranges must intersect, and no
// period P (one of their strides) may set them apart: views that interleave
// without touching — the q, k and v heads of one fused (B, T, 3, H, D) buffer,
// the two column halves of a (rows, 2H) matrix — have disjoint blocks modulo
// the stride of their rows, and do not overlap.
template <class T, std::size_t RankT, class U, std::size_t RankU>
bool overlaps(const tensor_view<T, RankT>& a, const tensor_view<U, RankU>& b) {
    // (Plain names, not structured bindings: clang before 16 cannot capture those in a lambda.)
    const auto range_a = address_range(a), range_b = address_range(b);
    const auto a0 = range_a.first, a1 = range_a.second, b0 = range_b.first, b1 = range_b.second;
    if (a0 == a1 || b0 == b1 || !(a0 < b1 && b0 < a1)) return false;
    const auto apart_modulo = [&](index_t P) {
        index_t wa = 0, wb = 0;
        if (P <= 0 || !periodic_block(a, P, wa) || !periodic_block(b, P, wb)) return false;
        const index_t delta = (((b0 - a0) % P) + P) % P;  // where b's block starts, a's at 0
        return delta >= wa && delta + wb <= P;
    };
    const auto apart_by_a_stride_of = [&](const auto& v) {  // each stride of v tried as the period
        for (std::size_t d = 0; d < v.rank; ++d)
            if (v.extent(d) > 1 && apart_modulo(stride_bytes(v, d))) return true;
        return false;
    };
    return !apart_by_a_stride_of(a) && !apart_by_a_stride_of(b);
}

// Whether two views are the same elements in the same order: one data pointer,
// one shape, one set of strides (an output written in place over its input).
// The stride of a dimension of extent 1 never leads to another element, so it
// is not compared (one row viewed with two row strides is the same row).
template <class T, std::size_t RankT, class U, std::size_t RankU>
bool same_elements(const tensor_view<T, RankT>& a, const tensor_view<U, RankU>& b) {
    if constexpr (RankT != RankU || sizeof(T) != sizeof(U)) {
        return false;
    } else {
        if (static_cast<const void*>(a.data()) != static_cast<const void*>(b.data()) || a.shape() != b.shape())
            return false;
        for (std::size_t d = 0; d < RankT; ++d)
            if (a.extent(d) > 1 && a.stride(d) != b.stride(d)) return false;
        return true;
    }
}

// Whether every element of v has an address of its own, so that writing all of
// them in parallel is well defined. Sufficient test: ordered by |stride|, each
// dimension of extent > 1 steps past the whole span of the smaller ones (every
// slice, narrow or transpose of a packed tensor passes; a stride of 0 fails).
template <class T, std::size_t Rank>
bool distinct_elements(const tensor_view<T, Rank>& v) {
    if (v.size() <= 1) return true;
    index_t stride[Rank] = {}, extent[Rank] = {};
    std::size_t n = 0;
    for (std::size_t d = 0; d < Rank; ++d) {
        if (v.extent(d) <= 1) continue;
        std::size_t i = n++;  // insertion sort by |stride|
        const index_t s = v.stride(d) < 0 ? -v.stride(d) : v.stride(d);
        for (; i > 0 && stride[i - 1] > s; --i) stride[i] = stride[i - 1], extent[i] = extent[i - 1];
        stride[i] = s, extent[i] = v.extent(d);
    }
    index_t span = 0;  // the farthest element of the dimensions so far, in elements
    for (std::size_t i = 0; i < n; ++i) {
        if (stride[i] <= span) return false;
        span += (extent[i] - 1) * stride[i];
    }
    return true;
}

// An output of `op` must have an address for each element, and must be apart
// from each input: refused with an error that names both.
template <class O, std::size_t RankO>
void expect_distinct_elements(std::string_view op, std::string_view name, const tensor_view<O, RankO>& out) {
    if (!distinct_elements(out))
        throw error(cat("tinyllm: ", op, ": ", name, " has shape ", to_string(out.shape()), " and strides ",
                        to_string(out.strides()), ", so two of its elements share an address (a stride of 0, ",
                        "or strides that overlap); each element written needs its own"));
}
template <class O, std::size_t RankO, class I, std::size_t RankI>
void expect_apart(std::string_view op, std::string_view out_name, const tensor_view<O, RankO>& out,
                  std::string_view in_name, const tensor_view<I, RankI>& in) {
    if (overlaps(out, in)) throw error(cat("tinyllm: ", op, ": ", out_name, " must not share memory with ", in_name));
}
// expect_apart against each of several inputs, named: expect_apart_from(op,
// "out", out, "x", x, "weight", weight, ...).
template <class O, std::size_t RankO>
void expect_apart_from(std::string_view, std::string_view, const tensor_view<O, RankO>&) {}
template <class O, std::size_t RankO, class I, std::size_t RankI, class... Rest>
void expect_apart_from(std::string_view op, std::string_view out_name, const tensor_view<O, RankO>& out,
                       std::string_view in_name, const tensor_view<I, RankI>& in, const Rest&... rest) {
    expect_apart(op, out_name, out, in_name, in);
    expect_apart_from(op, out_name, out, rest...);
}
// The same, except that out may be exactly `in` (the op is computed in place,
// each element read before it is written).
template <class O, std::size_t RankO, class I, std::size_t RankI>
void expect_in_place_or_apart(std::string_view op, std::string_view out_name, const tensor_view<O, RankO>& out,
                              std::string_view in_name, const tensor_view<I, RankI>& in) {
    if (overlaps(out, in) && !same_elements(out, in))
        throw error(cat("tinyllm: ", op, ": ", out_name, " must be exactly ", in_name,
                        " (in place) or not share memory with it; it overlaps it otherwise"));
}

}  // namespace detail

// View a contiguous buffer as a tensor of a new shape with the same number of
// elements: reshape(x, {B * T, D}) — the new rank is the number of sizes given
// (or reshape(x, extents<2>{B * T, D})). Host-only because it validates.
template <std::size_t NewRank, class T, std::size_t Rank>
tensor_view<T, NewRank> reshape(const tensor_view<T, Rank>& x, const extents<NewRank>& shape) {
    TINYLLM_EXPECT(x.is_contiguous(), "reshape needs a contiguous tensor; this one has shape ",
                   to_string(x.shape()), " and strides ", to_string(x.strides()));
    TINYLLM_EXPECT(detail::nonzero_product_at_most(std::numeric_limits<index_t>::max(), shape.value) &&
                       shape.product() == x.size(),
                   "reshape from ", to_string(x.shape()), " to ", to_string(shape), " changes the number of elements");
    return {x.data(), shape};
}
// reshape(x, {B * T, D}): sizes of one integer type, or of mixed types that convert to index_t.
template <class T, std::size_t Rank, class I, std::size_t NewRank, class = std::enable_if_t<std::is_integral_v<I>>>
tensor_view<T, NewRank> reshape(const tensor_view<T, Rank>& x, const I (&shape)[NewRank]) {
    return reshape(x, detail::to_extents(shape));
}
template <class T, std::size_t Rank, std::size_t NewRank>
tensor_view<T, NewRank> reshape(const tensor_view<T, Rank>& x, const index_t (&shape)[NewRank]) {
    return reshape(x, detail::to_extents(shape));
}

// Check that a tensor argument has the shape an operation needs, e.g.
// expect_shape(out, x.shape(), "layer_norm: out"). Throws with both shapes.
template <class T, std::size_t Rank>
void expect_shape(const tensor_view<T, Rank>& x, const extents<Rank>& shape, std::string_view what) {
    if (x.shape() != shape)
        throw error(detail::cat("tinyllm: ", what, " has shape ", to_string(x.shape()), " but ",
                                to_string(shape), " is required"));
}

// A tensor that owns its elements in host memory, contiguous and row-major.
template <class T, std::size_t Rank>
class tensor {
public:
    using shape_type = extents<Rank>;

    tensor() = default;
    explicit tensor(const shape_type& shape, const T& value = T{})
        : shape_(checked(shape)), data_(static_cast<std::size_t>(shape.product()), value) {}
    // tensor<float, 1> w({D}) and tensor<float, 2> x({rows, cols}): sizes of one integer type.
    // (Without it, a one-element list is ambiguous: it could also build a tensor to copy from.)
    template <class I, class = std::enable_if_t<std::is_integral_v<I>>>
    explicit tensor(const I (&shape)[Rank], const T& value = T{}) : tensor(detail::to_extents(shape), value) {}

    tensor_view<T, Rank> view() { return {data_.data(), shape_}; }
    tensor_view<const T, Rank> view() const { return {data_.data(), shape_}; }
    operator tensor_view<T, Rank>() { return view(); }
    operator tensor_view<const T, Rank>() const { return view(); }

    template <class... Ints>
    T& operator()(Ints... indices) { return view()(indices...); }
    template <class... Ints>
    const T& operator()(Ints... indices) const { return view()(indices...); }

    T* data() { return data_.data(); }
    const T* data() const { return data_.data(); }
    const shape_type& shape() const { return shape_; }
    index_t extent(std::size_t d) const { return shape_[d]; }
    index_t size() const { return static_cast<index_t>(data_.size()); }

    // The elements as a flat, row-major std::vector.
    std::vector<T>& values() { return data_; }
    const std::vector<T>& values() const { return data_; }

private:
    static shape_type checked(const shape_type& shape) {
        for (std::size_t d = 0; d < Rank; ++d)
            TINYLLM_EXPECT(shape[d] >= 0, "tensor shape ", to_string(shape), " has a negative extent");
        TINYLLM_EXPECT(
            detail::nonzero_product_at_most((index_t{1} << 62) / static_cast<index_t>(sizeof(T)), shape.value),
            "tensor shape ", to_string(shape), " holds more elements than memory can");
        return shape;
    }

    shape_type shape_;
    std::vector<T> data_;
};

// reshape() of an owning tensor: a view of its elements in the new shape.
template <class T, std::size_t Rank, class Shape>
auto reshape(tensor<T, Rank>& x, const Shape& shape) -> decltype(reshape(x.view(), shape)) {
    return reshape(x.view(), shape);
}
template <class T, std::size_t Rank, class Shape>
auto reshape(const tensor<T, Rank>& x, const Shape& shape) -> decltype(reshape(x.view(), shape)) {
    return reshape(x.view(), shape);
}
template <class T, std::size_t Rank, class I, std::size_t NewRank, class = std::enable_if_t<std::is_integral_v<I>>>
tensor_view<T, NewRank> reshape(tensor<T, Rank>& x, const I (&shape)[NewRank]) {
    return reshape(x.view(), detail::to_extents(shape));
}
template <class T, std::size_t Rank, std::size_t NewRank>
tensor_view<T, NewRank> reshape(tensor<T, Rank>& x, const index_t (&shape)[NewRank]) {
    return reshape(x.view(), detail::to_extents(shape));
}
template <class T, std::size_t Rank, class I, std::size_t NewRank, class = std::enable_if_t<std::is_integral_v<I>>>
tensor_view<const T, NewRank> reshape(const tensor<T, Rank>& x, const I (&shape)[NewRank]) {
    return reshape(x.view(), detail::to_extents(shape));
}
template <class T, std::size_t Rank, std::size_t NewRank>
tensor_view<const T, NewRank> reshape(const tensor<T, Rank>& x, const index_t (&shape)[NewRank]) {
    return reshape(x.view(), detail::to_extents(shape));
}

// ---- Tensor-like arguments and leading batch dimensions -------------------------------
//
// Operations that work row by row (norms, activations, linear layers, MLPs, embeddings)
// take their tensors as "(..., D)": any number of leading dimensions, as in PyTorch, so a
// (B, T, D) activation is passed as it is. They accept a tensor_view or an owning tensor
// (tensor_like), and see it as a (rows, D) matrix through as_rows(): the leading
// dimensions are merged into one, which needs them to be laid out like one (row-major
// among themselves; the last dimension and the row stride may be anything).

namespace detail {
template <class X>
struct view_of {};
template <class T, std::size_t R>
struct view_of<tensor_view<T, R>> { using type = tensor_view<T, R>; };
template <class T, std::size_t R>
struct view_of<tensor<T, R>> { using type = tensor_view<T, R>; };
template <class T, std::size_t R>
struct view_of<const tensor<T, R>> { using type = tensor_view<const T, R>; };
template <class T, std::size_t R>
struct view_of<const tensor_view<T, R>> { using type = tensor_view<T, R>; };
}  // namespace detail

// The view type of a tensor-like argument: tensor_view<T, R> for a view or a tensor,
// tensor_view<const T, R> for a const tensor.
template <class X>
using view_of_t = typename detail::view_of<std::remove_reference_t<X>>::type;

template <class X>
concept tensor_like = requires { typename view_of_t<X>; };

// The view of a tensor-like argument.
template <class T, std::size_t R>
constexpr tensor_view<T, R> as_view(const tensor_view<T, R>& x) { return x; }
template <class T, std::size_t R>
tensor_view<T, R> as_view(tensor<T, R>& x) { return x.view(); }
template <class T, std::size_t R>
tensor_view<const T, R> as_view(const tensor<T, R>& x) { return x.view(); }

// x, of shape (..., D), as a (rows, D) matrix of E (E = const T reads a view of T):
// rows is the product of the leading dimensions (1 for a vector). `what` names the
// argument in errors ("rms_norm: x").
template <class E, tensor_like X>
tensor_view<E, 2> as_rows(X&& x, std::string_view what) {
    const auto v = as_view(x);
    using V = decltype(v);
    constexpr std::size_t R = V::rank;
    using T = typename V::element_type;
    static_assert(std::is_same_v<std::remove_const_t<E>, std::remove_const_t<T>>,
                  "tinyllm: this argument holds the wrong element type (e.g. double where float is needed)");
    static_assert(std::is_const_v<E> || !std::is_const_v<T>,
                  "tinyllm: an output argument is a view of const elements");
    if constexpr (R == 1) {
        return {v.data(), extents<2>{1, v.extent(0)}, extents<2>{v.extent(0) * v.stride(0), v.stride(0)}};
    } else {
        index_t rows = v.extent(R - 2), row_stride = v.stride(R - 2);
        for (std::size_t d = R - 2; d-- > 0;) {
            if (v.extent(d) == 1) continue;
            if (rows == 1) {
                rows = v.extent(d);
                row_stride = v.stride(d);
                continue;
            }
            if (v.extent(d) != 0 && rows != 0 && v.stride(d) != row_stride * rows)
                throw error(detail::cat("tinyllm: ", what, " has shape ", to_string(v.shape()), " and strides ",
                                        to_string(v.strides()), ": its leading dimensions do not merge into rows "
                                        "(make it contiguous first, or pass a (rows, D) view)"));
            rows *= v.extent(d);
        }
        if (v.extent(R - 2) == 0) rows = 0;
        for (std::size_t d = 0; d + 2 < R; ++d)
            if (v.extent(d) == 0) rows = 0;
        return {v.data(), extents<2>{rows, v.extent(R - 1)}, extents<2>{row_stride, v.stride(R - 1)}};
    }
}

// x as a vector (one dimension) of E: for weights and biases passed as tensors or views.
template <class E, tensor_like X>
tensor_view<E, 1> as_vector(X&& x) {
    const auto v = as_view(x);
    static_assert(decltype(v)::rank == 1, "tinyllm: this argument must be a vector (one dimension)");
    return v;
}

// Two tensor-like arguments of the same shape (rank and sizes), or an error naming both.
template <tensor_like A, tensor_like B>
void expect_equal_shapes(const A& a, const B& b, std::string_view op, std::string_view a_name, std::string_view b_name) {
    const auto av = as_view(a);
    const auto bv = as_view(b);
    if constexpr (decltype(av)::rank != decltype(bv)::rank) {
        throw error(detail::cat("tinyllm: ", op, ": ", a_name, " has shape ", to_string(av.shape()), " but ", b_name,
                                " has shape ", to_string(bv.shape()), "; they must be equal"));
    } else if (av.shape() != bv.shape()) {
        throw error(detail::cat("tinyllm: ", op, ": ", a_name, " has shape ", to_string(av.shape()), " but ", b_name,
                                " has shape ", to_string(bv.shape()), "; they must be equal"));
    }
}

}  // namespace tinyllm
