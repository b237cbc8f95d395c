// sim/src/tensor_map.hpp — what the simulator keeps in a CUtensorMap's 128
// bytes, and the copy cp.async.bulk.tensor makes with it (tensor_map.cpp).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>

namespace tinyllm::sim::tma {

// A tiled tensor map: dimension 0 is the innermost (contiguous) one.
struct tensor_map {
    std::uint64_t magic;  // tells an encoded map from other bytes
    const unsigned char* base;
    std::uint64_t dims[5];
    std::uint64_t strides[5];  // bytes; strides[0] is the element size
    std::uint32_t box[5];
    std::uint32_t rank, element_bytes;
    bool swizzle128;
};
static_assert(sizeof(tensor_map) <= sizeof(CUtensorMap), "the description fits in the opaque bytes");

inline constexpr std::uint64_t tensor_map_magic = 0x746d61'6d6170'31ull;  // "tmamap1"

// The map kept in `m`, or nullptr (with *why) when `m` holds no encoded map.
const tensor_map* decode(const void* m, std::string* why);

// The bytes one copy of the box moves (out-of-bounds elements included: they are written as zeros).
std::uint64_t box_bytes(const tensor_map& m);

// Copies the box at element coordinates c[0 .. rank) into shared memory at
// dst (shared_offset: its offset in the block's shared memory, which the
// 128-byte swizzle reads), elements outside the tensor as zeros.
void copy_box(const tensor_map& m, const std::int32_t* c, unsigned char* dst, std::uint32_t shared_offset);

}  // namespace tinyllm::sim::tma
