// examples/tinyllm/cmd_primer.cpp — `tinyllm primer`: the memory arithmetic of
// docs/cuda-primer.md, computed from the kernels' own index formulas.
//
// A GPU's speed depends on how the 32 lanes of a warp address memory, and the
// simulated GPU (docs/simulator.md) models neither global-memory sectors nor
// shared-memory banks. What it cannot show, this command computes: for one
// warp instruction of a real tinyllm kernel it lists the 32 lanes' addresses,
// then counts
//   * coalescing  the 32-byte sectors a global-memory request touches (the
//                 unit DRAM and L2 deliver), against the bytes the lanes use;
//   * banks       for shared memory (32 banks, 4 bytes wide; bank = (byte
//                 address / 4) mod 32), the conflict degree: the most distinct
//                 4-byte words any one bank must deliver. A request of 16 bytes
//                 per lane is served a quarter-warp (8 lanes, 128 bytes) at a
//                 time, 8 bytes per lane a half-warp at a time; lanes reading
//                 the same word share it (a broadcast). A degree-n phase takes
//                 n passes (wavefronts): the access is serialized n ways;
//   * fragments   which lane of a warp holds which element of the A, B and C
//                 operands of mma.sync.m16n8k16, and a check that ldmatrix
//                 from the attention kernel's addresses delivers exactly them.
//
// The ldmatrix addresses come from the library's functions
// (tinyllm/detail/attention_mma_layout.hpp: mma_q_offset, mma_k_offset,
// mma_v_offset and their swizzled versions; tinyllm/detail/mma_fragments.hpp),
// so the numbers are those of the kernels. Kernel code that only a CUDA
// compiler reads (copy.cuh, norm.cuh, attention_tiled.cuh, quantize.cuh and
// the row stride mma_ld of attention_mma.cuh) is restated below next to the
// line it mirrors. These are counts under the documented hardware rules, not
// measurements: a profiler on a GPU (Nsight Compute's shared-memory wavefronts
// and sectors per request) is what would confirm them.
#include "registry.hpp"

#include <tinyllm/detail/attention_mma_layout.hpp>
#include <tinyllm/detail/mma_fragments.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <vector>

using namespace tinyllm_cli;

namespace {

namespace td = tinyllm::detail;

constexpr int warp_size = 32;

// ---- the two counts ------------------------------------------------------------

// Bytes [address, address + bytes) of one lane's access.
struct lane_access {
    long long address;
    int bytes;
};
using warp_access = std::vector<lane_access>;  // 32 entries, lane order

// Global memory: the distinct 32-byte sectors a warp request touches, and the
// distinct bytes it uses.
struct sector_count {
    int sectors;
    long long bytes_used;
};
sector_count count_sectors(const warp_access& w) {
    std::set<long long> sectors, bytes;
    for (const auto& a : w)
        for (long long b = a.address; b < a.address + a.bytes; ++b) {
            sectors.insert(b / 32);
            bytes.insert(b);
        }
    return {static_cast<int>(sectors.size()), static_cast<long long>(bytes.size())};
}

// Shared memory: the conflict degree of each phase (32 / 16 / 8 lanes for
// 4 / 8 / 16 bytes per lane): the most distinct 4-byte words in one bank.
struct bank_count {
    int worst = 0;       // the largest degree of any phase (1: conflict-free)
    int wavefronts = 0;  // passes for the whole instruction (sum over the phases)
    int phases = 0;
};
bank_count count_banks(const warp_access& w) {
    const int lanes_per_phase = 128 / w.front().bytes;
    bank_count r;
    for (int first = 0; first < warp_size; first += lanes_per_phase) {
        std::map<int, std::set<long long>> words;  // bank -> distinct words asked of it
        for (int lane = first; lane < first + lanes_per_phase; ++lane)
            for (int k = 0; k < w[lane].bytes / 4; ++k) {
                const long long word = w[lane].address / 4 + k;
                words[static_cast<int>(word % 32)].insert(word);
            }
        int degree = 0;
        for (const auto& [bank, set] : words) degree = std::max(degree, static_cast<int>(set.size()));
        r.worst = std::max(r.worst, degree);
        r.wavefronts += degree;
        ++r.phases;
    }
    return r;
}

warp_access make_warp(int bytes, const std::function<long long(int lane)>& address) {
    warp_access w;
    for (int lane = 0; lane < warp_size; ++lane) w.push_back({address(lane), bytes});
    return w;
}

// "0 4 8 12 … 124": the first four lanes' byte addresses and the last one's.
std::string lane_addresses(const warp_access& w) {
    std::string s;
    for (int lane = 0; lane < 4; ++lane) s += std::to_string(w[lane].address) + " ";
    return s + "... " + std::to_string(w[warp_size - 1].address);
}

std::string percent(long long part, long long whole) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
    return buf;
}

// ---- coalescing -------------------------------------------------------------------

void show_coalescing(std::ostream& out) {
    out << "== Coalescing: 32-byte sectors per warp request (global memory) ==\n"
           "Warp 0 of block 0; buffers start 256-byte aligned (cudaMalloc), except where a view starts inside one.\n"
           "Addresses are bytes from the buffer's start, lanes 0 1 2 3 ... 31.\n\n";
    struct pattern {
        const char* name;
        const char* source;
        warp_access warp;
    };
    const long long row_bf16 = 4096 * 2;  // norm v1 example: rows of D = 4096 bfloat16 (layers.md's shape)
    const std::vector<pattern> patterns = {
        // copy.cuh, copy_naive_kernel: i = blockIdx.x * blockDim.x + threadIdx.x; out[i] = in[i] (float)
        {"copy v1: one float per lane", "copy.cuh copy_naive_kernel, in[i]",
         make_warp(4, [](int lane) { return 4LL * lane; })},
        {"copy v1, a view starting 4 bytes into a sector", "copy.cuh copy_naive_kernel, in[i], in = base + 1",
         make_warp(4, [](int lane) { return 4LL * (lane + 1); })},
        // copy.cuh, copy_vectorized_kernel: out4[v] = in4[v], v = first (a float4 per lane)
        {"copy v2: one float4 (16 bytes) per lane", "copy.cuh copy_vectorized_kernel, in4[v]",
         make_warp(16, [](int lane) { return 16LL * lane; })},
        // norm.cuh, norm_naive_kernel: thread r owns row r; src = p.x + r * p.x_stride, reads src[j]
        {"norm v1: a row per lane, bf16, D = 4096", "norm.cuh norm_naive_kernel, src[j], src = x + r * x_stride",
         make_warp(2, [&](int lane) { return row_bf16 * lane; })},
        // norm.cuh, norm_vectorized_kernel: the block's threads walk one row, 16 bytes (8 bf16) each
        {"norm v2: one row per block, 16 bytes per lane", "norm.cuh norm_vectorized_kernel, 8 bf16 per lane",
         make_warp(16, [](int lane) { return 16LL * lane; })},
        // attention_tiled.cuh, attention_tiled_scores_kernel: thread (x, y) loads q_row(b, i0 + y, h)[d0 + x];
        // a warp is 32 consecutive x at one y
        {"attention v2: a row of a 32x32 Q tile, bf16", "attention_tiled.cuh scores kernel, q_row(..)[d0 + x]",
         make_warp(2, [](int lane) { return 2LL * lane; })},
        // quantize.cuh, quantized_gemv_kernel: lane c loads reinterpret_cast<const uint4*>(row)[c]
        {"quantized GEMV v2: 16 bytes of W^ per lane", "quantize.cuh quantized_gemv_kernel, uint4 row[c]",
         make_warp(16, [](int lane) { return 16LL * lane; })},
        // quantize.cuh, quantized_mma_kernel staging: e = tid, r = e / 32, c = e % 32, k = k0 + c;
        // int4: quant::int4_at(row, k) reads byte k / 2 of row n
        {"quantized GEMM v3: int4 W^ staging, a byte per lane", "quantize.cuh quantized_mma_kernel, int4_at(row, k)",
         make_warp(1, [](int lane) { return static_cast<long long>(lane / 2); })},
    };
    char line[256];
    std::snprintf(line, sizeof line, "%-52s %9s %8s %7s  %s\n", "access", "bytes/req", "sectors", "used",
                  "lane addresses");
    out << line;
    for (const auto& p : patterns) {
        const sector_count c = count_sectors(p.warp);
        std::snprintf(line, sizeof line, "%-52s %9lld %8d %7s  %s\n", p.name, c.bytes_used, c.sectors,
                      percent(c.bytes_used, 32LL * c.sectors).c_str(), lane_addresses(p.warp).c_str());
        out << line;
    }
    out << "\nWhere each comes from:\n";
    for (const auto& p : patterns) out << "  " << p.name << ": " << p.source << "\n";
    out << "\n'used' = bytes the lanes asked for / bytes of the sectors moved. A float per lane fills 4 sectors\n"
           "exactly; float4 fills 16 with a quarter of the instructions; one row per lane (norm v1) moves a\n"
           "whole sector for every 2 bytes it uses.\n\n";
}

// ---- banks --------------------------------------------------------------------------

// v4's shared row stride, restated from attention_mma.cuh (mma_ld: D + 8 elements, 16 bytes of padding).
constexpr int attention_v4_ld(int d) { return d + 8; }
// quantize v3's shared row stride, restated from quantize.cuh (qmma_ld = qmma_bk + 8 = 40 elements).
constexpr int quantize_v3_bk = 32;
constexpr int quantize_v3_ld = quantize_v3_bk + 8;

// The three layouts of a [rows][D] tile of 16-bit elements.
enum class layout { unpadded, padded, swizzled };
const char* layout_name(layout l) {
    return l == layout::unpadded ? "unpadded (LD = D)"
           : l == layout::padded ? "padded (LD = D + 8, v4)"
                                 : "swizzled (v5)";
}

// The element offset lane `lane` gives ldmatrix.x4 for one operand step, in
// each layout, from the library's own offset functions.
enum class operand { q, k, v };
int ldmatrix_offset(operand op, layout l, int lane, int d, int step, int np) {
    const int ld = l == layout::unpadded ? d : attention_v4_ld(d);
    if (l == layout::swizzled) {
        if (op == operand::q) return td::swizzled_q_offset(lane, d, step);
        if (op == operand::k) return td::swizzled_k_offset(lane, d, np, step);
        return td::swizzled_v_offset(lane, d, step, np);
    }
    if (op == operand::q) return td::mma_q_offset(lane, ld, step);
    if (op == operand::k) return td::mma_k_offset(lane, ld, np, step);
    return td::mma_v_offset(lane, ld, step, np);
}

// Every ldmatrix.x4 one warp issues for an operand of one 64-key tile: the
// worst degree and the most wavefronts of any of them, and how many there are.
struct operand_summary {
    int worst = 0, wavefronts = 0, instructions = 0;
};
operand_summary summarize(operand op, layout l, int d) {
    operand_summary s;
    // Q: kk = 0 .. D/16 - 1. K: np = 0..3 (pairs of 8-key tiles of 64 keys), kk = 0 .. D/16 - 1.
    // V: kk = 0..3 (16-key steps of 64 keys), dp = 0 .. D/16 - 1 (pairs of 8-feature tiles).
    const int steps = op == operand::v ? 4 : d / 16;
    const int pairs = op == operand::q ? 1 : op == operand::k ? 4 : d / 16;
    for (int step = 0; step < steps; ++step)
        for (int np = 0; np < pairs; ++np) {
            const bank_count b =
                count_banks(make_warp(16, [&](int lane) { return 2LL * ldmatrix_offset(op, l, lane, d, step, np); }));
            s.worst = std::max(s.worst, b.worst);
            s.wavefronts = std::max(s.wavefronts, b.wavefronts);
            ++s.instructions;
        }
    return s;
}

void show_banks(std::ostream& out) {
    out << "== Shared-memory banks: 32 banks of 4 bytes, bank = (byte address / 4) mod 32 ==\n"
           "Degree = the most distinct 4-byte words one bank must deliver in a phase (1: conflict-free).\n"
           "4-byte accesses: one phase of 32 lanes; 16-byte (ldmatrix rows, cp.async): 4 phases of 8 lanes.\n"
           "A uniform shift of the tile's start does not change a degree, so tiles start at address 0.\n\n";
    char line[256];

    // 1. attention v2: the inner loop of attention_tiled_scores_kernel reads ks[tx][dd] and qs[ty][dd]
    //    (float, rows of TILE + 1 = 33 floats); a warp is tx = 0..31 at one ty.
    out << "-- attention v2 (attention_tiled.cuh, attention_tiled_scores_kernel), dot += qs[ty][dd] * ks[tx][dd], dd = "
           "0 --\n";
    const warp_access k33 = make_warp(4, [](int tx) { return 4LL * (tx * 33 + 0); });
    const warp_access k32 = make_warp(4, [](int tx) { return 4LL * (tx * 32 + 0); });
    const warp_access q33 = make_warp(4, [](int) { return 4LL * (5 * 33 + 0); });  // ty = 5: one address
    auto banks_of = [](const warp_access& w) {
        std::string s;
        for (int lane = 0; lane < 6; ++lane) s += std::to_string(w[lane].address / 4 % 32) + " ";
        return s + "... " + std::to_string(w[warp_size - 1].address / 4 % 32);
    };
    std::snprintf(line, sizeof line, "%-46s %-22s %s\n", "access", "banks of lanes 0..31", "degree");
    out << line;
    std::snprintf(line, sizeof line, "%-46s %-22s %d\n", "ks[tx][dd], rows of 33 floats (the kernel's)",
                  banks_of(k33).c_str(), count_banks(k33).worst);
    out << line;
    std::snprintf(line, sizeof line, "%-46s %-22s %d\n", "ks[tx][dd], rows of 32 floats (no padding)",
                  banks_of(k32).c_str(), count_banks(k32).worst);
    out << line;
    std::snprintf(line, sizeof line, "%-46s %-22s %d (a broadcast)\n", "qs[ty][dd], the same word for every lane",
                  banks_of(q33).c_str(), count_banks(q33).worst);
    out << line << "\n";

    // 2. attention v4/v5: ldmatrix.x4 row addresses, lane by lane, for Q at D = 64, kk = 0.
    const int d64 = 64;
    out << "-- attention v4/v5 (attention_mma.cuh, attention_flash2.cuh): ldmatrix.x4 of Q, D = 64, kk = 0 --\n"
           "Lane l gives the address of row l % 16, column 8 (l / 16) of the warp's 16x16 tile\n"
           "(mma_q_offset / swizzled_q_offset); each row segment is 16 bytes = 4 banks, starting at the bank shown.\n";
    std::snprintf(line, sizeof line, "%4s %6s %4s %4s   %-20s %-20s %s\n", "lane", "matrix", "row", "col",
                  "unpadded (LD = 64)", "padded (LD = 72)", "swizzled");
    out << line;
    const layout layouts[3] = {layout::unpadded, layout::padded, layout::swizzled};
    for (int lane = 0; lane < warp_size; ++lane) {
        std::string cells[3];
        for (int i = 0; i < 3; ++i) {
            const int off = ldmatrix_offset(operand::q, layouts[i], lane, d64, 0, 0);
            char buf[32];
            std::snprintf(buf, sizeof buf, "elem %4d  bank %2d", off, 2 * off / 4 % 32);
            cells[i] = buf;
        }
        std::snprintf(line, sizeof line, "%4d %6d %4d %4d   %-20s %-20s %s\n", lane, lane / 8, lane % 16,
                      8 * (lane / 16), cells[0].c_str(), cells[1].c_str(), cells[2].c_str());
        out << line;
    }
    for (const layout l : layouts) {
        const bank_count b =
            count_banks(make_warp(16, [&](int lane) { return 2LL * ldmatrix_offset(operand::q, l, lane, d64, 0, 0); }));
        std::snprintf(line, sizeof line, "Q kk=0, D=64, %-24s degree %d, %d wavefronts (conflict-free: 4)\n",
                      layout_name(l), b.worst, b.wavefronts);
        out << line;
    }
    out << "\n";

    // 3. Every ldmatrix.x4 of a 64-key tile, every operand, both head dims.
    out << "-- attention v4/v5: every ldmatrix.x4 of one 64-key tile (worst over the instructions) --\n";
    std::snprintf(line, sizeof line, "%-3s %-4s %-26s %7s %11s %13s\n", "D", "op", "layout", "degree", "wavefronts",
                  "instructions");
    out << line;
    const char* op_names[3] = {"Q", "K", "V"};
    for (const int d : {64, 128})
        for (int o = 0; o < 3; ++o)
            for (const layout l : layouts) {
                const operand_summary s = summarize(static_cast<operand>(o), l, d);
                std::snprintf(line, sizeof line, "%-3d %-4s %-26s %7d %11d %13d\n", d, op_names[o], layout_name(l),
                              s.worst, s.wavefronts, s.instructions);
                out << line;
            }
    out << "(V is read with ldmatrix.trans: the addresses, and so the banks, are those of a plain ldmatrix.)\n\n";

    // 4. The cp.async tile writes: thread tid moves 16-byte chunk c = tid, row c / (D/8), column 8 (c % (D/8)).
    out << "-- the cp.async tile writes (v4 load_tile, v5 flash2_load_tile): 16 bytes per lane, row by row --\n";
    for (const int d : {64, 128})
        for (const layout l : layouts) {
            const int chunks = d / 8, ld = l == layout::unpadded ? d : attention_v4_ld(d);
            const bank_count b = count_banks(make_warp(16, [&](int tid) {
                const int r = tid / chunks, col = (tid % chunks) * 8;
                return 2LL * (l == layout::swizzled ? td::mma_swizzle(r, col, d) : r * ld + col);
            }));
            std::snprintf(line, sizeof line, "D=%-4d %-26s degree %d\n", d, layout_name(l), b.worst);
            out << line;
        }
    out << "\n";

    // 5. quantize v3: ldmatrix of the x tile (mma_q_offset) and the W^ tile (mma_k_offset), rows of 32 k.
    out << "-- quantized GEMM v3 (quantize.cuh, quantized_mma_kernel): ldmatrix.x4 of 64 x 32 bf16 tiles --\n";
    for (const int ld : {quantize_v3_bk, quantize_v3_ld}) {
        int worst = 0;
        for (int kk = 0; kk < quantize_v3_bk / 16; ++kk) {
            worst = std::max(
                worst,
                count_banks(make_warp(16, [&](int lane) { return 2LL * td::mma_q_offset(lane, ld, kk); })).worst);
            for (int np = 0; np < 4; ++np)
                worst = std::max(worst, count_banks(make_warp(16, [&](int lane) {
                                            return 2LL * td::mma_k_offset(lane, ld, np, kk);
                                        })).worst);
        }
        std::snprintf(line, sizeof line, "row stride %d elements (%d bytes)%s: degree %d\n", ld, 2 * ld,
                      ld == quantize_v3_ld ? " (the kernel's qmma_ld)" : " (no padding)", worst);
        out << line;
    }
    out << "\n";
}

// ---- fragments ----------------------------------------------------------------------

// Where lane l's register r, half x (of 2 16-bit values) lies in A (16x16) and B (16x8),
// read back from the library's mma_operands by giving every register a distinct code.
struct fragment_maps {
    int a_lane[16][16], a_reg[16][16], b_lane[16][8], b_reg[16][8];
    int a_row[32][4][2], a_col[32][4][2], b_row[32][2][2], b_col[32][2][2];
};
fragment_maps make_fragment_maps() {
    fragment_maps m{};
    float A[16][16], B[16][8];
    auto code = [](int lane, int reg, int x) { return static_cast<float>(lane * 8 + reg * 2 + x); };
    td::mma_operands(A, B, code, code);
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            const int c = static_cast<int>(A[i][j]), lane = c / 8, reg = c / 2 % 4, x = c % 2;
            m.a_lane[i][j] = lane, m.a_reg[i][j] = reg, m.a_row[lane][reg][x] = i, m.a_col[lane][reg][x] = j;
            if (j < 8) {
                const int cb = static_cast<int>(B[i][j]), lb = cb / 8, rb = cb / 2 % 4, xb = cb % 2;
                m.b_lane[i][j] = lb, m.b_reg[i][j] = rb, m.b_row[lb][rb][xb] = i, m.b_col[lb][rb][xb] = j;
            }
        }
    return m;
}

// Emulate ldmatrix.x4 (.trans) over a tile whose logical element (row, col) is
// stored at phys(row, col) and holds the code row * 1000 + col; the lanes give
// element offsets addr(lane). Returns, for every register m and half x of every
// lane, the logical (row, col) it received.
struct received {
    int row, col;
};
using tile_layout = std::function<int(int row, int col)>;
void ldmatrix_x4(received (&got)[32][4][2], const tile_layout& phys, int rows, int cols,
                 const std::function<int(int lane)>& addr, bool trans) {
    std::map<int, int> memory;  // element offset -> code
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) memory[phys(r, c)] = r * 1000 + c;
    int row_values[32][8];
    for (int lane = 0; lane < warp_size; ++lane)
        for (int j = 0; j < 8; ++j) row_values[lane][j] = memory.at(addr(lane) + j);
    for (int lane = 0; lane < warp_size; ++lane)
        for (int m = 0; m < 4; ++m) {
            int pair[2];
            td::ldmatrix_pair(pair, row_values, m, lane, trans);
            for (int x = 0; x < 2; ++x) got[lane][m][x] = {pair[x] / 1000, pair[x] % 1000};
        }
}

// How many of the 256 values (32 lanes x 4 registers x 2) ldmatrix delivers where
// mma.sync wants them, for Q (A of Q K^T), K (B of Q K^T) and V (B of P V, .trans).
int check_operand(operand op, layout l, int d, const fragment_maps& f, bool trans) {
    const int ld = attention_v4_ld(d);
    const tile_layout phys = [&](int r, int c) {
        return l == layout::swizzled ? td::mma_swizzle(r, c, d) : r * ld + c;
    };
    const int step = 1, np = 1;  // one step past the first, so the tile offsets are exercised
    received got[32][4][2];
    ldmatrix_x4(
        got, phys, 64, d, [&](int lane) { return ldmatrix_offset(op, l, lane, d, step, np); }, trans);
    int matches = 0;
    for (int lane = 0; lane < warp_size; ++lane)
        for (int m = 0; m < 4; ++m)
            for (int x = 0; x < 2; ++x) {
                int row = 0, col = 0;    // the (tile row, tile column) mma.sync wants in this register
                if (op == operand::q) {  // A[i][k] = Q[16 step-rows: i][feature 16 step + k]
                    row = f.a_row[lane][m][x], col = 16 * step + f.a_col[lane][m][x];
                } else if (op ==
                           operand::k) {  // registers 0,1: b0,b1 of key tile 2np; 2,3: of 2np+1. B[k][n] = K[n][k]
                    row = 16 * np + 8 * (m / 2) + f.b_col[lane][m % 2][x], col = 16 * step + f.b_row[lane][m % 2][x];
                } else {  // registers 0,1: b0,b1 of feature tile 2dp; 2,3: of 2dp+1. B[k][n] = V[k][n]
                    row = 16 * step + f.b_row[lane][m % 2][x], col = 16 * np + 8 * (m / 2) + f.b_col[lane][m % 2][x];
                }
                matches += got[lane][m][x].row == row && got[lane][m][x].col == col;
            }
    return matches;
}

void show_fragments(std::ostream& out) {
    const fragment_maps f = make_fragment_maps();
    out << "== mma.sync.m16n8k16 fragments (tinyllm/detail/mma_fragments.hpp): which lane holds what ==\n"
           "D (16x8, float) = A (16x16, bf16/fp16) B (16x8) + C. Each cell is the lane holding that element;\n"
           "each A/B register holds two neighbouring 16-bit values, each C register one float.\n\n";
    char cell[16];
    out << "A (rows 0..15, columns k 0..15); registers: a0 rows 0-7 k 0-7, a1 rows 8-15 k 0-7, a2 rows 0-7 k 8-15,\n"
           "a3 rows 8-15 k 8-15\n";
    for (int i = 0; i < 16; ++i) {
        out << "  ";
        for (int j = 0; j < 16; ++j) {
            std::snprintf(cell, sizeof cell, "%3d", f.a_lane[i][j]);
            out << cell << (j == 7 ? " |" : "");
        }
        out << "\n" << (i == 7 ? "  " + std::string(50, '-') + "\n" : "");
    }
    out << "\nB (rows k 0..15, columns n 0..7); registers: b0 k 0-7, b1 k 8-15\n";
    for (int i = 0; i < 16; ++i) {
        out << "  ";
        for (int j = 0; j < 8; ++j) {
            std::snprintf(cell, sizeof cell, "%3d", f.b_lane[i][j]);
            out << cell;
        }
        out << "\n" << (i == 7 ? "  " + std::string(24, '-') + "\n" : "");
    }
    out << "\nC and D (rows 0..15, columns 0..7; mma_c_row / mma_c_col); registers c0 c1 rows 0-7, c2 c3 rows 8-15\n";
    int c_lane[16][8] = {};
    for (int lane = 0; lane < warp_size; ++lane)
        for (int e = 0; e < 4; ++e) c_lane[td::mma_c_row(lane, e)][td::mma_c_col(lane, e)] = lane;
    for (int i = 0; i < 16; ++i) {
        out << "  ";
        for (int j = 0; j < 8; ++j) {
            std::snprintf(cell, sizeof cell, "%3d", c_lane[i][j]);
            out << cell;
        }
        out << "\n" << (i == 7 ? "  " + std::string(24, '-') + "\n" : "");
    }
    // Which register each quadrant is in, read back from the map (it is one register per quadrant).
    // C of tiles 2j and 2j + 1 side by side against A: the same lane must hold the same (row, column).
    int same = 0;
    for (int lane = 0; lane < warp_size; ++lane)
        for (int tile = 0; tile < 2; ++tile)
            for (int e = 0; e < 4; ++e)
                same += f.a_lane[td::mma_c_row(lane, e)][8 * tile + td::mma_c_col(lane, e)] == lane;
    out << "\nA register of element (0,0), (8,0), (0,8), (8,8): a" << f.a_reg[0][0] << " a" << f.a_reg[8][0] << " a"
        << f.a_reg[0][8] << " a" << f.a_reg[8][8] << "; B register of (0,0), (8,0): b" << f.b_reg[0][0] << " b"
        << f.b_reg[8][0] << "\n"
        << "C of two neighbouring 16x8 tiles against A of one 16x16 tile: " << same
        << " of 256 elements held by the same lane,\nso attention v4 feeds its scores P to P V straight from "
           "registers.\n\n";

    out << "-- ldmatrix.x4 from the kernels' addresses delivers these fragments (emulated; step 1, pair 1) --\n";
    const char* op_names[3] = {"Q -> A of Q K^T (mma_q_offset)", "K -> B of Q K^T (mma_k_offset)",
                               "V -> B of P V, .trans (mma_v_offset)"};
    char line[256];
    for (const int d : {64, 128})
        for (int o = 0; o < 3; ++o)
            for (const layout l : {layout::padded, layout::swizzled}) {
                std::snprintf(line, sizeof line, "D=%-4d %-38s %-24s %d of 256 values in place\n", d, op_names[o],
                              layout_name(l), check_operand(static_cast<operand>(o), l, d, f, o == 2));
                out << line;
            }
    // The check can fail: V read without .trans delivers V's rows where mma.sync wants its columns.
    std::snprintf(line, sizeof line, "D=64   %-38s %-24s %d of 256 values in place\n",
                  "V without .trans (wrong on purpose)", layout_name(layout::padded),
                  check_operand(operand::v, layout::padded, 64, f, false));
    out << line << "\n";
}

}  // namespace

TINYLLM_COMMAND("primer", "coalescing, shared-memory banks and mma fragments of tinyllm's kernels, lane by lane",
                "usage: tinyllm primer [coalescing] [banks] [fragments]\n\n"
                "For real access patterns of tinyllm's CUDA kernels, lists one warp's 32 lane addresses and counts\n"
                "  coalescing  the 32-byte sectors a global-memory request touches (copy v1/v2, norm v1/v2,\n"
                "              attention v2, the quantized GEMV and GEMM);\n"
                "  banks       the shared-memory bank of each lane and the conflict degree (attention v2's padded\n"
                "              tiles; ldmatrix in attention v4/v5 unpadded, padded and swizzled; quantize v3);\n"
                "  fragments   which lane holds which element of mma.sync.m16n8k16's A, B and C, and a check that\n"
                "              ldmatrix at the kernels' addresses delivers them.\n"
                "No GPU is needed: the counts follow from the kernels' index arithmetic and the hardware's\n"
                "documented rules (docs/cuda-primer.md); they are not measurements. Without a section, all three.\n") {
    const parsed_args a = parse_args(args, {}, {});
    std::vector<std::string> sections = a.positional;
    if (sections.empty()) sections = {"coalescing", "banks", "fragments"};
    for (const auto& s : sections)
        if (s != "coalescing" && s != "banks" && s != "fragments")
            throw usage_error("unknown section '" + s + "': choose coalescing, banks or fragments");
    for (const auto& s : sections) {
        if (s == "coalescing") show_coalescing(out);
        if (s == "banks") show_banks(out);
        if (s == "fragments") show_fragments(out);
    }
    return 0;
}
