// tinyllm/sim/ptx.hpp — the inline-PTX instructions tinyllm's kernels use,
// executed as the PTX ISA specifies them, on the simulated GPU.
//
//   cp.async.cg.shared.global [dst], [src], 16, src_bytes
//       copies 16 bytes global -> shared in the background; bytes past
//       src_bytes are written as zeros. The copy is queued with the thread;
//   cp.async.commit_group  closes the queued copies into a group;
//   cp.async.wait_group N  returns once all but the newest N groups have
//       landed. The simulator lands a group exactly then — the latest moment
//       the GPU may — so a read of the destination before the wait sees the
//       old bytes, and the race check sees the write where the wait is.
//   ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//       every lane reads the 16-byte row it addresses; the rows are then
//       dealt out in fragment layout (tinyllm/detail/mma_fragments.hpp).
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//       d = a b + c over the warp's fragments, products and sums in float.
//   wgmma.fence / wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16} /
//   wgmma.commit_group / wgmma.wait_group N (sm_90a)
//       a warpgroup's 64 x N x 16 product, B (and A, or A from registers) read
//       from shared memory through matrix descriptors (tinyllm/detail/
//       wgmma_layout.hpp). The simulator keeps each issued product until a
//       wait_group lands its group, and only then reads its operands and writes
//       the accumulators — the latest moment the GPU may — so accumulators read
//       before the wait hold their old values, and shared memory overwritten
//       before the wait changes the result: both fail a test. Each warp computes
//       its own 16 rows of the product.
//   mbarrier.init / .arrive / .arrive.expect_tx / .try_wait.parity and
//   cp.async.bulk.tensor (TMA, sm_90) with a CUtensorMap (cuda.h)
//       a bulk copy lands when a thread waits on (or arrives at) the barrier
//       it completes, once the phase's arrivals are in: reads of its
//       destination before the wait see the old bytes. A wait that can never
//       end is a fault naming the missing arrivals and bytes.
//   bar.sync id, n / bar.arrive id, n (named barriers 1 .. 15)
//       the barrier completes when n threads have arrived; those at bar.sync
//       wait for it, those at bar.arrive go on.
// All warp-wide instructions (.sync.aligned) need all 32 lanes.
#pragma once

#include <tinyllm/sim/executor.hpp>

#include <cstdint>
#include <cstring>
#include <source_location>

namespace tinyllm::sim::detail {
[[noreturn]] void device_fault(const char* check, const char* what, const void* address, const std::source_location& where);
}

namespace tinyllm::sim::ptx {

inline void cp_async_cg_16(void* shared_dst, const void* global_src, int src_bytes,
                           std::source_location where = std::source_location::current()) {
    if (reinterpret_cast<std::uintptr_t>(shared_dst) % 16 || reinterpret_cast<std::uintptr_t>(global_src) % 16)
        detail::device_fault("memcheck", "misaligned cp.async (16-byte copies need 16-byte aligned addresses)",
                             reinterpret_cast<std::uintptr_t>(shared_dst) % 16 ? shared_dst : global_src, where);
    detail::cp_async(shared_dst, global_src, 16, src_bytes < 0 ? 0 : (src_bytes > 16 ? 16 : src_bytes), where);
}
inline void cp_async_commit_group() { detail::cp_async_commit(); }
template <int N>
void cp_async_wait_group() {
    detail::cp_async_wait(N);
}

// ldmatrix with `count` (1, 2 or 4) 8x8 matrices.
template <int Count>
void ldmatrix(std::uint32_t (&r)[Count], const void* row_address, bool trans,
              std::source_location where = std::source_location::current()) {
    static_assert(Count == 1 || Count == 2 || Count == 4, "ldmatrix loads 1, 2 or 4 matrices");
    if (reinterpret_cast<std::uintptr_t>(row_address) % 16)
        detail::device_fault("memcheck", "misaligned ldmatrix row address (rows are 16-byte aligned)", row_address, where);
    std::uint16_t row[8] = {};
    // Lanes past 8 * Count supply no address; on a GPU their addresses are ignored.
    if (static_cast<int>(detail::lane_id()) < 8 * Count) std::memcpy(row, row_address, sizeof row);
    std::uint32_t out[4] = {};
    detail::warp_collective(trans ? detail::warp_op::ldmatrix_trans : detail::warp_op::ldmatrix, 0xffffffffu, row, out,
                            Count, 32, where);
    for (int m = 0; m < Count; ++m) r[m] = out[m];
}

// c = a b + c for one m16n8k16 tile; Half is true for f16 inputs, false for bf16.
inline void mma_m16n8k16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1, bool f16,
                         std::source_location where = std::source_location::current()) {
    detail::mma_fragments in{};
    for (int i = 0; i < 4; ++i) {
        in.a[i] = a[i];
        in.c[i] = c[i];
    }
    in.b[0] = b0;
    in.b[1] = b1;
    float d[4];
    detail::warp_collective(f16 ? detail::warp_op::mma_f16 : detail::warp_op::mma_bf16, 0xffffffffu, &in, d, 0, 32,
                            where);
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

// The shared-memory address (here: the offset in the block's dynamic shared
// memory) that matrix descriptors hold.
inline std::uint32_t shared_address(const void* p, std::source_location where = std::source_location::current()) {
    return detail::shared_address(p, where);
}

// wgmma.mma_async m64nNk16 with float accumulators: d = a b + (scale_d ? d : 0).
// a: the thread's 4 A registers, or nullptr for A from a_desc (K-major).
template <int N>
void wgmma_m64k16(float (&d)[N / 2], const std::uint32_t* a, std::uint64_t a_desc, std::uint64_t b_desc, bool scale_d,
                  bool trans_b, bool f16, std::source_location where = std::source_location::current()) {
    static_assert(N >= 8 && N <= 256 && N % 8 == 0, "wgmma: N is 8 .. 256, a multiple of 8");
    detail::wgmma_issue({d, a, a_desc, b_desc, N, trans_b, scale_d, f16, where});
}
inline void wgmma_fence() {}
inline void wgmma_commit_group() { detail::wgmma_commit(); }
template <int N>
void wgmma_wait_group(std::source_location where = std::source_location::current()) {
    detail::wgmma_wait(N, where);
}

// mbarrier.init / mbarrier.arrive{.expect_tx} / mbarrier.try_wait.parity on
// a barrier object in the block's dynamic shared memory (see executor.hpp).
inline void mbarrier_init(std::uint64_t* bar, unsigned count, std::source_location where = std::source_location::current()) {
    detail::mbarrier_init(detail::shared_address(bar, where), static_cast<int>(count), where);
}
inline void mbarrier_arrive(std::uint64_t* bar, unsigned tx_bytes = 0,
                            std::source_location where = std::source_location::current()) {
    detail::mbarrier_arrive(detail::shared_address(bar, where), 1, tx_bytes, where);
}
inline void mbarrier_wait_parity(std::uint64_t* bar, unsigned parity,
                                 std::source_location where = std::source_location::current()) {
    detail::mbarrier_wait(detail::shared_address(bar, where), parity, where);
}
// bar.sync id, count / bar.arrive id, count (named barriers).
inline void bar_sync(int id, int count, std::source_location where = std::source_location::current()) {
    detail::named_barrier(id, count, true, where);
}
inline void bar_arrive(int id, int count, std::source_location where = std::source_location::current()) {
    detail::named_barrier(id, count, false, where);
}
// cp.async.bulk.tensor.Rd.shared::cluster.global.tile.mbarrier::complete_tx::bytes
template <int Rank>
void tma_load(void* dst, const void* map, const std::int32_t (&c)[Rank], std::uint64_t* bar,
              std::source_location where = std::source_location::current()) {
    static_assert(Rank >= 1 && Rank <= 5, "tensor copies have rank 1 to 5");
    detail::tma_load(dst, map, c, Rank, detail::shared_address(bar, where), where);
}

}  // namespace tinyllm::sim::ptx
