// sim/src/tensor_map.cpp — the simulated driver's cuTensorMapEncodeTiled and
// the tile copy of cp.async.bulk.tensor (the Tensor Memory Accelerator, TMA).
//
// The copy: the box's elements, dimension 0 fastest, land in shared memory
// one after another (row r of the box, i.e. element (0, r1, r2, ...), at
// r * box[0] * element bytes). With the 128-byte swizzle the 16-byte chunk at
// address bits 4-6 is exchanged by XOR with bits 7-9 of the shared-memory
// address — the pattern wgmma's descriptors name (tinyllm/detail/
// wgmma_layout.hpp) — which the simulator implements for boxes whose rows
// are exactly 128 bytes, at a 1024-byte aligned destination. Elements whose
// coordinates fall outside the tensor are written as zeros and count toward
// the bytes the copy delivers, as on the GPU.
#include "tensor_map.hpp"

#include <tinyllm/detail/wgmma_layout.hpp>

#include <cstring>

namespace tinyllm::sim::tma {

std::uint64_t box_bytes(const tensor_map& m) {
    std::uint64_t n = m.element_bytes;
    for (std::uint32_t i = 0; i < m.rank; ++i) n *= m.box[i];
    return n;
}

const tensor_map* decode(const void* p, std::string* why) {
    const auto* m = static_cast<const tensor_map*>(p);
    if (reinterpret_cast<std::uintptr_t>(p) % 64 != 0) {
        *why = "the tensor map is not 64-byte aligned";
        return nullptr;
    }
    if (m->magic != tensor_map_magic) {
        *why = "the tensor map operand holds no map made by cuTensorMapEncodeTiled";
        return nullptr;
    }
    return m;
}

void copy_box(const tensor_map& m, const std::int32_t* c, unsigned char* dst, std::uint32_t shared_offset) {
    const std::uint64_t row_bytes = std::uint64_t{m.box[0]} * m.element_bytes;
    std::uint64_t rows = 1;
    for (std::uint32_t i = 1; i < m.rank; ++i) rows *= m.box[i];
    for (std::uint64_t r = 0; r < rows; ++r) {
        // The row's coordinates in dimensions 1 .. rank-1, and whether it is inside.
        std::uint64_t rest = r, offset = 0;
        bool inside = true;
        for (std::uint32_t i = 1; i < m.rank; ++i) {
            const std::int64_t x = std::int64_t{c[i]} + static_cast<std::int64_t>(rest % m.box[i]);
            rest /= m.box[i];
            if (x < 0 || static_cast<std::uint64_t>(x) >= m.dims[i]) inside = false;
            else offset += static_cast<std::uint64_t>(x) * m.strides[i];
        }
        for (std::uint64_t e = 0; e < m.box[0]; ++e) {
            const std::int64_t x0 = std::int64_t{c[0]} + static_cast<std::int64_t>(e);
            const bool in = inside && x0 >= 0 && static_cast<std::uint64_t>(x0) < m.dims[0];
            std::uint32_t at = static_cast<std::uint32_t>(r * row_bytes + e * m.element_bytes);
            if (m.swizzle128) at = tinyllm::detail::wgmma_swizzle128(shared_offset + at) - shared_offset;
            if (in) std::memcpy(dst + at, m.base + offset + static_cast<std::uint64_t>(x0) * m.element_bytes, m.element_bytes);
            else std::memset(dst + at, 0, m.element_bytes);
        }
    }
}

}  // namespace tinyllm::sim::tma

CUresult cuTensorMapEncodeTiled(CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType, cuuint32_t tensorRank,
                                void* globalAddress, const cuuint64_t* globalDim, const cuuint64_t* globalStrides,
                                const cuuint32_t* boxDim, const cuuint32_t* elementStrides,
                                CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill) {
    using tinyllm::sim::tma::tensor_map;
    (void)l2Promotion;
    if (!tensorMap || reinterpret_cast<std::uintptr_t>(tensorMap) % 64 != 0) return CUDA_ERROR_INVALID_VALUE;
    std::uint32_t element = 0;
    switch (tensorDataType) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: element = 1; break;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: element = 2; break;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: element = 4; break;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: element = 8; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    // The driver's documented limits.
    if (tensorRank < 1 || tensorRank > 5 || !globalAddress || reinterpret_cast<std::uintptr_t>(globalAddress) % 16 != 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (cuuint32_t i = 0; i < tensorRank; ++i) {
        if (globalDim[i] == 0 || globalDim[i] > (std::uint64_t{1} << 32)) return CUDA_ERROR_INVALID_VALUE;
        if (boxDim[i] == 0 || boxDim[i] > 256) return CUDA_ERROR_INVALID_VALUE;
        if (elementStrides && (elementStrides[i] == 0 || elementStrides[i] > 8)) return CUDA_ERROR_INVALID_VALUE;
    }
    for (cuuint32_t i = 0; i + 1 < tensorRank; ++i)
        if (globalStrides[i] % 16 != 0 || globalStrides[i] >= (std::uint64_t{1} << 40)) return CUDA_ERROR_INVALID_VALUE;
    if ((std::uint64_t{boxDim[0]} * element) % 16 != 0) return CUDA_ERROR_INVALID_VALUE;
    if (swizzle == CU_TENSOR_MAP_SWIZZLE_128B && std::uint64_t{boxDim[0]} * element > 128) return CUDA_ERROR_INVALID_VALUE;
    // What the simulator implements.
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE || oobFill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE ||
        (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE && swizzle != CU_TENSOR_MAP_SWIZZLE_128B) ||
        (swizzle == CU_TENSOR_MAP_SWIZZLE_128B && std::uint64_t{boxDim[0]} * element != 128))
        return CUDA_ERROR_NOT_SUPPORTED;
    if (elementStrides)
        for (cuuint32_t i = 1; i < tensorRank; ++i)
            if (elementStrides[i] != 1) return CUDA_ERROR_NOT_SUPPORTED;
    tensor_map m{};
    m.magic = tinyllm::sim::tma::tensor_map_magic;
    m.base = static_cast<const unsigned char*>(globalAddress);
    m.rank = tensorRank;
    m.element_bytes = element;
    m.strides[0] = element;
    for (cuuint32_t i = 0; i < tensorRank; ++i) {
        m.dims[i] = globalDim[i];
        m.box[i] = boxDim[i];
        if (i > 0) m.strides[i] = globalStrides[i - 1];
    }
    m.swizzle128 = swizzle == CU_TENSOR_MAP_SWIZZLE_128B;
    std::memset(tensorMap, 0, sizeof *tensorMap);
    std::memcpy(tensorMap, &m, sizeof m);
    return CUDA_SUCCESS;
}
