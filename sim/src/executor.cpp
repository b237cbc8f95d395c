// sim/src/executor.cpp — runs kernel launches on fibers (tinyllm/sim/executor.hpp).
//
// One launch at a time (a mutex), one block at a time, on the calling OS
// thread. A block's threads are fibers taken from a pool that grows to the
// largest block seen; each fiber loops: run the kernel once for its thread,
// mark itself exited, switch to the next ready thread, wait for the next block.
// A thread that must wait switches straight to the next ready one; the
// scheduler's loop (run_block) runs again only when none is ready.
//
// ThreadSanitizer sees the kernels' memory accesses (the kernels are compiled
// with it) but not this file's own bookkeeping (compiled without it); what
// orders two CUDA threads is announced to it here: a barrier is a release by
// every arriving thread and an acquire by every leaving one; a block's
// threads start after the launch (acquire), and the launch ends after all of
// them. Warp shuffles announce nothing: they exchange registers, not memory.
//
// Between blocks, ThreadSanitizer sees the order a GPU promises rather than
// the one the simulator runs them in. Blocks take turns between two sets of
// fibers, each with its own ThreadSanitizer identity, so a block is not
// ordered after the block run just before it (it is after the one before
// that, which ran on the same fibers); its barriers are new synchronisation
// objects, and shared memory's history is forgotten at its start. What orders
// two blocks is then only what orders them on a GPU: a fence (__threadfence)
// makes what its thread did before it visible; an atomic write after fences
// of its block's threads carries what they made visible to its address; a
// thread that reads that address with an atomic and fences afterwards sees
// it, and its block after the next barrier. A block that reads another's
// stores without such a chain (no wait, no fence before the signal, a signal
// before the barrier) is reported as a data race between the two blocks'
// threads. (ThreadSanitizer stands in for the GPU's caches here: a store the
// model does not order before a load is one a GPU may not show.)
#include <tinyllm/sim/executor.hpp>
#include <tinyllm/sim/fiber.hpp>
#include "runtime_state.hpp"
#include <tinyllm/detail/mma_fragments.hpp>
#include <tinyllm/detail/wgmma_layout.hpp>
#include <tinyllm/dtype.hpp>
#include "tensor_map.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fstream>
#include <iterator>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__) || defined(TINYLLM_SIM_TSAN)
#  include <sanitizer/common_interface_defs.h>
#  define TINYLLM_SIM_SANITIZED 1
#endif
#if defined(TINYLLM_SIM_TSAN)
extern "C" {
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void AnnotateNewMemory(const char* file, int line, const volatile void* mem, unsigned long size);
}
#  define TSAN_ACQUIRE(p) __tsan_acquire(p)
#  define TSAN_RELEASE(p) __tsan_release(p)
#  define TSAN_IGNORE_BEGIN() (AnnotateIgnoreReadsBegin(__FILE__, __LINE__), AnnotateIgnoreWritesBegin(__FILE__, __LINE__))
#  define TSAN_IGNORE_END() (AnnotateIgnoreWritesEnd(__FILE__, __LINE__), AnnotateIgnoreReadsEnd(__FILE__, __LINE__))
#else
#  define TSAN_ACQUIRE(p) ((void)(p))
#  define TSAN_RELEASE(p) ((void)(p))
#  define TSAN_IGNORE_BEGIN() ((void)0)
#  define TSAN_IGNORE_END() ((void)0)
#endif

namespace tinyllm::sim {

bool detail::random_schedule_active = false;

namespace {

// Thrown into a thread's fiber to unwind it when its block is abandoned after a fault.
struct abandon_block {};

// The ready threads, in the order they will run: first in, first out, except
// that push_front queues a thread ahead of all the others. A ring in storage
// allocated once per block size (the scheduler allocates nothing while a block
// runs), whose size is a power of two, so that wrapping around is a mask, not a
// division.
class ready_queue {
public:
    void reset(std::size_t capacity) {
        if (slots_.size() < capacity) slots_.resize(std::bit_ceil(capacity));
        head_ = count_ = 0;
    }
    bool empty() const { return count_ == 0; }
    std::size_t size() const { return count_; }
    void push_back(int i) { slots_[(head_ + count_++) & (slots_.size() - 1)] = i; }
    void push_front(int i) {
        head_ = (head_ - 1) & (slots_.size() - 1);  // from 0, the unsigned wrap-around lands on the last slot
        slots_[head_] = i;
        ++count_;
    }
    int pop_front() {
        const int i = slots_[head_];
        head_ = (head_ + 1) & (slots_.size() - 1);
        --count_;
        return i;
    }
    // Removes and returns the k-th queued thread (the random schedule's pick).
    int take(std::size_t k) {
        const std::size_t at = (head_ + k) & (slots_.size() - 1);
        std::swap(slots_[at], slots_[head_]);
        return pop_front();
    }

private:
    std::vector<int> slots_;
    std::size_t head_ = 0, count_ = 0;
};

// The random schedule's generator: SplitMix64 (Steele, Lea and Flood, 2014), a
// 64-bit counter passed through a mixing function. A draw is two multiplies
// (the Mersenne Twister it replaced refilled a 2.5 KB table and, with a 64-bit
// division to reduce the draw, took about a tenth of a randomly scheduled
// test's time); its statistics are ample for picking among ready threads.
class schedule_rng {
public:
    // result_type, min and max: what std::shuffle (the blocks' order) asks of a generator.
    using result_type = std::uint64_t;
    static constexpr result_type min() { return 0; }
    static constexpr result_type max() { return ~result_type{0}; }
    void seed(std::uint64_t s) { state_ = s; }
    result_type operator()() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // A draw in [0, n) for n < 2^32: the high half of (32 random bits) * n, no division.
    std::uint32_t below(std::uint32_t n) {
        return static_cast<std::uint32_t>(((*this)() >> 32) * n >> 32);
    }

private:
    std::uint64_t state_ = 0;
};

// While the simulator's own code runs for a simulated thread, ThreadSanitizer
// ignores its memory accesses (its bookkeeping is shared by design); what
// orders the threads is announced separately (TSAN_ACQUIRE / TSAN_RELEASE).
struct sanitizer_ignore {
    sanitizer_ignore() { TSAN_IGNORE_BEGIN(); }
    ~sanitizer_ignore() { TSAN_IGNORE_END(); }
    sanitizer_ignore(const sanitizer_ignore&) = delete;
    sanitizer_ignore& operator=(const sanitizer_ignore&) = delete;
};

enum class state : unsigned char { ready, at_barrier, at_warp_op, at_cp_async, at_mbarrier, at_named_barrier, exited };

struct pending_copy {
    void* dst;
    const void* src;
    int bytes, src_bytes;
};

struct sim_thread {
    fiber* f = nullptr;  // the fiber running this thread's kernel: one of `fibers`
    std::vector<std::unique_ptr<fiber>> fibers;
    thread_context ctx{};
    int linear = 0, lane = 0, warp = 0;
    state st = state::exited;
    std::source_location site;
    // barrier
    detail::barrier_op bop = detail::barrier_op::sync;
    int predicate = 0, barrier_result = 0;
    unsigned barrier_generation = 0;
    // warp operation
    detail::warp_op wop = detail::warp_op::syncwarp;
    unsigned mask = 0;
    const void* in = nullptr;
    void* out = nullptr;
    int arg = 0, width = 32;
    unsigned syncwarp_generation = 0;
    unsigned last_group = 0;  // the lanes of the last warp operation this thread completed
    // cp.async groups: copies[0, group_end[i]) belong to committed groups 0..i
    std::vector<pending_copy> copies;
    std::vector<std::size_t> group_end;
    // wgmma groups, likewise: wgmma[0, wgmma_group_end[i]) belong to committed groups 0..i
    std::vector<detail::wgmma_request> wgmma;
    std::vector<std::size_t> wgmma_group_end;
    // mbarrier wait: the barrier (its shared-memory offset) and the parity of the phase awaited
    std::uint32_t mbar = 0;
    unsigned mbar_parity = 0;
    // named barrier wait
    int named = 0;
    // racecheck: global addresses this thread used atomically since its last fence
    std::vector<const void*> observed;
};

struct named_barrier_state {
    int expected = 0, arrived = 0;  // expected 0: no phase under way
    std::source_location site;      // the first arrival's
};

// A bulk tensor copy (TMA) queued on the mbarrier whose bytes it completes.
struct tma_copy {
    unsigned char* dst;
    std::uint32_t offset;  // dst in the block's shared memory
    tma::tensor_map map;
    std::int32_t c[5];
    std::uint64_t bytes;
    std::source_location where;
};

struct mbarrier_state {
    int expected = 0, pending = 0;  // arrivals per phase, and those the current phase still needs
    std::int64_t tx = 0;            // transaction bytes the current phase still needs
    unsigned phase = 0;             // phases completed
    std::vector<tma_copy> copies;   // issued, not yet landed
};

std::string coords(uint3 v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "(%u,%u,%u)", v.x, v.y, v.z);
    return buf;
}
std::string where_text(const std::source_location& s) {
    std::string file = s.file_name();
    if (const auto cut = file.find("/cuda/tinyllm/"); cut != std::string::npos) file = file.substr(cut + 1);
    else if (const auto t = file.find("/tests/"); t != std::string::npos) file = file.substr(t + 1);
    else if (const auto e = file.find("/examples/"); e != std::string::npos) file = file.substr(e + 1);
    else if (const auto si = file.find("/sim/"); si != std::string::npos) file = file.substr(si + 1);
    return file + ":" + std::to_string(s.line());
}
const char* op_name(detail::warp_op op) {
    using w = detail::warp_op;
    switch (op) {
    case w::shfl_idx: return "__shfl_sync";
    case w::shfl_up: return "__shfl_up_sync";
    case w::shfl_down: return "__shfl_down_sync";
    case w::shfl_xor: return "__shfl_xor_sync";
    case w::ballot: return "__ballot_sync";
    case w::any: return "__any_sync";
    case w::all: return "__all_sync";
    case w::match_any: return "__match_any_sync";
    case w::match_all: return "__match_all_sync";
    case w::reduce_add_u: return "__reduce_add_sync";
    case w::reduce_min_u: case w::reduce_min_i: return "__reduce_min_sync";
    case w::reduce_max_u: case w::reduce_max_i: return "__reduce_max_sync";
    case w::reduce_and: return "__reduce_and_sync";
    case w::reduce_or: return "__reduce_or_sync";
    case w::reduce_xor: return "__reduce_xor_sync";
    case w::syncwarp: return "__syncwarp";
    case w::ldmatrix: return "ldmatrix";
    case w::ldmatrix_trans: return "ldmatrix.trans";
    case w::mma_bf16: return "mma.sync.m16n8k16 (bf16)";
    case w::wgmma: return "wgmma.mma_async";
    case w::mma_f16: return "mma.sync.m16n8k16 (f16)";
    }
    return "warp operation";
}
const char* barrier_name(detail::barrier_op op) {
    switch (op) {
    case detail::barrier_op::sync: return "__syncthreads";
    case detail::barrier_op::count: return "__syncthreads_count";
    case detail::barrier_op::any: return "__syncthreads_or";
    case detail::barrier_op::all: return "__syncthreads_and";
    }
    return "__syncthreads";
}
[[gnu::always_inline]] inline bool same_site(const std::source_location& a, const std::source_location& b) {
    return a.line() == b.line() && a.column() == b.column() &&
           (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

// Calls f(symbol, name, sections) for every entry of an ELF file's full symbol
// table (which also holds what dladdr cannot see: static functions and those in
// anonymous namespaces, function-local statics); nothing when the file is not a
// 64-bit ELF file. Returns the file's type (ET_EXEC, ET_DYN), or 0.
template <class F>
unsigned for_each_symbol(const std::string& path, F f) {
    std::ifstream in(path, std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (file.size() < sizeof(Elf64_Ehdr) || std::memcmp(file.data(), ELFMAG, SELFMAG) != 0) return 0;
    Elf64_Ehdr eh;
    std::memcpy(&eh, file.data(), sizeof eh);
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shoff + std::uint64_t{eh.e_shnum} * sizeof(Elf64_Shdr) > file.size())
        return 0;
    std::vector<Elf64_Shdr> sections(eh.e_shnum);
    std::memcpy(sections.data(), file.data() + eh.e_shoff, sections.size() * sizeof(Elf64_Shdr));
    for (const Elf64_Shdr& sh : sections) {
        if (sh.sh_type != SHT_SYMTAB || sh.sh_link >= sections.size()) continue;
        const Elf64_Shdr& strings = sections[sh.sh_link];
        if (sh.sh_offset + sh.sh_size > file.size() || strings.sh_offset + strings.sh_size > file.size()) continue;
        for (std::uint64_t off = 0; off + sizeof(Elf64_Sym) <= sh.sh_size; off += sizeof(Elf64_Sym)) {
            Elf64_Sym sym;
            std::memcpy(&sym, file.data() + sh.sh_offset + off, sizeof sym);
            if (sym.st_name >= strings.sh_size) continue;
            f(sym, file.data() + strings.sh_offset + sym.st_name, sections);
        }
    }
    return eh.e_type;
}

// The function symbols of an ELF file, by address relative to where the file
// is loaded.
std::map<std::uintptr_t, std::string> read_function_symbols(const std::string& path) {
    std::map<std::uintptr_t, std::string> symbols;
    for_each_symbol(path, [&](const Elf64_Sym& sym, const char* name, const std::vector<Elf64_Shdr>&) {
        if (ELF64_ST_TYPE(sym.st_info) == STT_FUNC) symbols.emplace(sym.st_value, std::string(name));
    });
    return symbols;
}

#if defined(TINYLLM_SIM_TSAN)
// Where the main program's __shared__ variables are: every function-local
// static object without an initialiser (a `__shared__` array is a `static`
// here, device_functions.hpp; its symbol starts with _ZZ, and it is in .bss),
// merged into address ranges. The ranges hold host code's function-local
// statics too, which lose only their race history when a block starts.
std::vector<std::pair<std::uintptr_t, std::size_t>> read_static_shared() {
    std::vector<std::pair<std::uintptr_t, std::size_t>> spans;
    const unsigned type = for_each_symbol("/proc/self/exe", [&](const Elf64_Sym& sym, const char* name,
                                                                const std::vector<Elf64_Shdr>& sections) {
        if (ELF64_ST_TYPE(sym.st_info) != STT_OBJECT || sym.st_size == 0 || std::strncmp(name, "_ZZ", 3) != 0) return;
        if (sym.st_shndx >= sections.size() || sections[sym.st_shndx].sh_type != SHT_NOBITS ||
            (sections[sym.st_shndx].sh_flags & SHF_TLS))
            return;  // __shared__ arrays have no initialiser: .bss
        spans.emplace_back(sym.st_value, sym.st_size);
    });
    std::uintptr_t base = 0;  // where the program is loaded (position-independent executables)
    if (type == ET_DYN)
        dl_iterate_phdr([](dl_phdr_info* info, std::size_t, void* out) { *static_cast<std::uintptr_t*>(out) = info->dlpi_addr; return 1; },
                        &base);
    for (auto& span : spans) span.first += base;
    std::sort(spans.begin(), spans.end());
    std::vector<std::pair<std::uintptr_t, std::size_t>> merged;
    for (const auto& [at, bytes] : spans) {
        if (!merged.empty() && at <= merged.back().first + merged.back().second)
            merged.back().second = std::max(merged.back().second, at + bytes - merged.back().first);
        else
            merged.emplace_back(at, bytes);
    }
    return merged;
}
#endif

std::string kernel_name(const void* kernel) {
    static std::map<std::string, std::map<std::uintptr_t, std::string>> files;
    Dl_info info{};
    std::string name;
    if (dladdr(kernel, &info)) {
        if (info.dli_sname && info.dli_saddr == kernel) {
            name = info.dli_sname;
        } else if (info.dli_fname) {
            // The main program's dli_fname may be relative to a directory left long ago.
            const std::string path = std::ifstream(info.dli_fname) ? info.dli_fname : "/proc/self/exe";
            auto it = files.find(path);
            if (it == files.end()) it = files.emplace(path, read_function_symbols(path)).first;
            const auto base = reinterpret_cast<std::uintptr_t>(info.dli_fbase);
            const auto at = reinterpret_cast<std::uintptr_t>(kernel);
            for (std::uintptr_t key : {at - base, at}) {  // position-independent, or not
                if (auto sym = it->second.find(key); sym != it->second.end()) {
                    name = sym->second;
                    break;
                }
            }
        }
    }
    if (name.empty()) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "at %p", kernel);
        return buf;
    }
    int status = 0;
    char* demangled = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
    if (status == 0 && demangled) name = demangled;
    std::free(demangled);
    return name;
}

class executor {
public:
    executor() {
        if (const char* s = std::getenv("TINYLLM_SIM_SCHEDULE"); s && *s) {
            const std::string v = s;
            if (v == "in-order") {
            } else if (v.rfind("random:", 0) == 0) {
                sched_.random = true;
                sched_.seed = std::strtoull(v.c_str() + 7, nullptr, 10);
            } else {
                std::fprintf(stderr, "tinyllm simulator: TINYLLM_SIM_SCHEDULE must be in-order or random:SEED, not '%s'\n", s);
                std::exit(2);
            }
        }
        if (const char* s = std::getenv("TINYLLM_SIM_STACK_KB"); s && *s) stack_bytes_ = std::strtoull(s, nullptr, 10) * 1024;
        if (const char* s = std::getenv("TINYLLM_SIM_QUIET"); s && *s && *s != '0') to_stderr_ = false;
        apply_schedule();
#if defined(TINYLLM_SIM_SANITIZED)
        // A sanitizer reports a bad access with the host's view (stacks); before
        // the program dies the simulator adds the kernel, block and thread.
        __sanitizer_set_death_callback(&executor::sanitizer_death);
#endif
    }

    std::mutex launch_mutex;
    std::mutex report_mutex;
    std::string report;
    bool to_stderr_ = true;
    statistics counters;

    void set_schedule(schedule s) {
        sched_ = s;
        apply_schedule();
    }
    schedule get_schedule() const { return sched_; }
    bool inside() const { return running_ != nullptr; }

    // ---- a launch ----
    void run(const detail::launch_request& r, std::size_t shared_limit) {
        req_ = &r;
        name_.clear();
        fault_ = false;
        ++counters.launches;
        const unsigned threads = r.block.x * r.block.y * r.block.z;
        grow_pool(threads);
        shared_.assign(r.dynamic_shared_bytes, 0);
        (void)shared_limit;
        // Block order: grid order, or a fresh shuffle per launch.
        const std::uint64_t blocks = std::uint64_t{r.grid.x} * r.grid.y * r.grid.z;
        std::vector<std::uint64_t> order;
        if (sched_.random) {
            order.resize(blocks);
            for (std::uint64_t i = 0; i < blocks; ++i) order[i] = i;
            std::shuffle(order.begin(), order.end(), rng_);
        }
        for (std::uint64_t i = 0; i < blocks && !fault_; ++i) {
            const std::uint64_t b = sched_.random ? order[i] : i;
            const uint3 idx{static_cast<unsigned>(b % r.grid.x), static_cast<unsigned>((b / r.grid.x) % r.grid.y),
                            static_cast<unsigned>(b / (std::uint64_t{r.grid.x} * r.grid.y))};
            run_block(idx, threads);
        }
        TSAN_ACQUIRE(&block_done_sync_);  // the host goes on after every block of the launch
        req_ = nullptr;
        if (fault_) state_fault();
    }

    // ---- called from inside a thread ----
    int barrier(detail::barrier_op op, int predicate, const std::source_location& where) {
        sanitizer_ignore ignore;
        if (abandoning_) throw abandon_block{};  // the block is being abandoned after a fault
        sim_thread& t = *running_;
        t.st = state::at_barrier;
        t.bop = op;
        t.predicate = predicate != 0;
        t.site = where;
        TSAN_RELEASE(&sync_->barrier[t.barrier_generation & 1]);
        ++arrived_;
        if (arrived_ + exited_ == nthreads_) complete_barrier(&t);
        wait(t);
        TSAN_ACQUIRE(&sync_->barrier[t.barrier_generation & 1]);
        ++t.barrier_generation;
        return t.barrier_result;
    }

    void warp_op(detail::warp_op op, unsigned mask, const void* in, void* out, int arg, int width,
                 const std::source_location& where) {
        sanitizer_ignore ignore;
        if (abandoning_) throw abandon_block{};
        sim_thread& t = *running_;
        if (mask == 0) return;  // an empty mask names no lane: nothing to wait for
        t.st = state::at_warp_op;
        t.wop = op;
        t.mask = mask;
        t.in = in;
        t.out = out;
        t.arg = arg;
        t.width = width;
        t.site = where;
        if (!((mask >> t.lane) & 1u))
            thread_fault(t, "synccheck", std::string(op_name(op)) + " at " + where_text(where) + " is called by lane " +
                                             std::to_string(t.lane) + ", which its own mask " + hex(mask) + " does not name");
        if (op == detail::warp_op::syncwarp) TSAN_RELEASE(&sync_->warp[t.warp][t.syncwarp_generation & 1]);
        warp_arrived_[static_cast<std::size_t>(t.warp)] |= 1u << t.lane;
        if (!abandoning_) try_complete_warp(t);
        wait(t);
        if (op == detail::warp_op::syncwarp) {
            TSAN_ACQUIRE(&sync_->warp[t.warp][t.syncwarp_generation & 1]);
            ++t.syncwarp_generation;
        }
    }

    // The lanes "currently executing together". The simulator does not model
    // convergence; it answers with the lanes of the thread's last warp-wide
    // operation (after a __syncwarp(), the whole warp), or before any, the lanes
    // that have not returned.
    unsigned active_mask() {
        const sim_thread& t = *running_;
        if (t.last_group) return t.last_group;
        unsigned m = 0;
        for (int l = 0; l < 32; ++l) {
            const int i = t.warp * 32 + l;
            if (i < nthreads_ && pool_[static_cast<std::size_t>(i)]->st != state::exited) m |= 1u << l;
        }
        return m;
    }

    void* shared() { return shared_.empty() ? nullptr : shared_.data(); }

    [[noreturn]] void device_fault(const char* check, const char* what, const void* address,
                                   const std::source_location& where) {
        sanitizer_ignore ignore;
        char buf[32];
        std::snprintf(buf, sizeof buf, "%p", address);
        thread_fault(*running_, check, std::string(what) + " at address " + buf + ", " + where_text(where));
        throw abandon_block{};
    }
    [[noreturn]] void trap(const std::source_location& where) {
        sanitizer_ignore ignore;
        thread_fault(*running_, "trap", "__trap() called at " + where_text(where));
        throw abandon_block{};
    }

    void schedule_point() {
        sanitizer_ignore ignore;
        if (!sched_.random || !running_) return;
        if ((rng_() >> 62) != 0) return;  // one time in four
        sim_thread& t = *running_;
        t.st = state::ready;
        wait(t);
    }

    void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
        sanitizer_ignore ignore;
        running_->copies.push_back({dst, src, bytes, src_bytes});
    }
    void cp_async_commit() {
        sanitizer_ignore ignore;
        sim_thread& t = *running_;
        t.group_end.push_back(t.copies.size());
    }
    void cp_async_wait(int allowed) {
        sanitizer_ignore ignore;
        // Land every committed group but the newest `allowed` ones.
        sim_thread& t = *running_;
        const std::size_t groups = t.group_end.size();
        if (groups <= static_cast<std::size_t>(allowed)) return;
        const std::size_t landed_groups = groups - static_cast<std::size_t>(allowed);
        const std::size_t upto = t.group_end[landed_groups - 1];
        land(t, upto);
        t.group_end.erase(t.group_end.begin(), t.group_end.begin() + static_cast<std::ptrdiff_t>(landed_groups));
        for (auto& e : t.group_end) e -= upto;
        schedule_point();
    }

    // ---- wgmma ----
    std::uint32_t shared_address(const void* p, const std::source_location& where) {
        const auto* c = static_cast<const unsigned char*>(p);
        if (shared_.empty() || c < shared_.data() || c >= shared_.data() + shared_.size())
            device_fault("memcheck", "a shared-memory address of a pointer outside the block's dynamic shared memory", p, where);
        return static_cast<std::uint32_t>(c - shared_.data());
    }
    // An operand's descriptor must use the layout the simulator implements, and every
    // byte the operand covers (mn_count rows or columns, 16 k) must be shared memory.
    void check_operand(std::uint64_t desc, bool mn_major, int mn_count, const detail::wgmma_request& r, const char* which) {
        const tinyllm::detail::wgmma_descriptor_fields f = tinyllm::detail::wgmma_decode(desc);
        if (f.swizzle != 1 || f.base_offset != 0)
            device_fault("wgmma", (std::string("the simulator implements wgmma operands with the 128-byte swizzle and base offset 0; ") +
                                   which + "'s descriptor has swizzle mode " + std::to_string(f.swizzle) + ", base offset " +
                                   std::to_string(f.base_offset)).c_str(), nullptr, r.where);
        std::uint32_t highest = 0;
        for (int mn = 0; mn < mn_count; ++mn)
            for (int k = 0; k < 16; k += 15) {  // the swizzle keeps a row's bytes in its 128: k = 0, 15 bound them
                const std::uint32_t at = mn_major ? tinyllm::detail::wgmma_mn_major_address(f, mn, k)
                                                  : tinyllm::detail::wgmma_k_major_address(f, mn, k);
                if (at > highest) highest = at;
            }
        if (highest + 2 > shared_.size())
            device_fault("memcheck", (std::string("wgmma ") + which + " operand reaches past the block's " +
                                      std::to_string(shared_.size()) + " bytes of dynamic shared memory (byte " +
                                      std::to_string(highest) + ")").c_str(), nullptr, r.where);
    }
    // A sum (FNV-1a) of what a thread's product reads and writes: its accumulators,
    // its A registers, and (lane 0 of each warp, for the warp: the operands in
    // shared memory are the warpgroup's) the warp's 16 rows of A and all of B.
    std::uint64_t wgmma_operands(const detail::wgmma_request& r, const sim_thread& t) {
        std::uint64_t h = 0xcbf29ce484222325ull;
        auto add = [&](std::uint32_t word) {
            h ^= word;
            h *= 0x100000001b3ull;
        };
        for (int i = 0; i < r.n / 2; ++i) {
            std::uint32_t bits;
            std::memcpy(&bits, &r.d[i], sizeof bits);
            add(bits);
        }
        if (r.a)
            for (int i = 0; i < 4; ++i) add(r.a[i]);
        if (t.lane != 0) return h;
        auto smem16 = [&](std::uint32_t at) {
            std::uint16_t bits;
            std::memcpy(&bits, shared_.data() + at, sizeof bits);
            return bits;
        };
        if (!r.a) {
            const tinyllm::detail::wgmma_descriptor_fields fa = tinyllm::detail::wgmma_decode(r.a_desc);
            const int row0 = 16 * (t.warp % 4);
            for (int i = 0; i < 16; ++i)
                for (int k = 0; k < 16; ++k) add(smem16(tinyllm::detail::wgmma_k_major_address(fa, row0 + i, k)));
        }
        const tinyllm::detail::wgmma_descriptor_fields fb = tinyllm::detail::wgmma_decode(r.b_desc);
        for (int c = 0; c < r.n; ++c)
            for (int k = 0; k < 16; ++k)
                add(smem16(r.trans_b ? tinyllm::detail::wgmma_mn_major_address(fb, c, k)
                                     : tinyllm::detail::wgmma_k_major_address(fb, c, k)));
        return h;
    }
    void wgmma_issue(const detail::wgmma_request& r) {
        sanitizer_ignore ignore;
        if (abandoning_) throw abandon_block{};
        if (r.n < 8 || r.n > 256 || r.n % 8 != 0)
            device_fault("wgmma", ("wgmma.mma_async with N = " + std::to_string(r.n) + " (8..256, a multiple of 8)").c_str(), nullptr, r.where);
        if (!r.a) check_operand(r.a_desc, false, 64, r, "A");
        check_operand(r.b_desc, r.trans_b, r.n, r, "B");
        running_->wgmma.push_back(r);
        running_->wgmma.back().operands = wgmma_operands(r, *running_);
    }
    void wgmma_commit() {
        sanitizer_ignore ignore;
        sim_thread& t = *running_;
        t.wgmma_group_end.push_back(t.wgmma.size());
    }
    // Execute every committed group but the newest `allowed`, in issue order, one
    // warp-wide operation each (all lanes of a warp issue the same sequence).
    void wgmma_wait(int allowed, const std::source_location& where) {
        std::vector<detail::wgmma_request> todo;
        {
            sanitizer_ignore ignore;
            sim_thread& t = *running_;
            const std::size_t groups = t.wgmma_group_end.size();
            if (groups <= static_cast<std::size_t>(allowed)) return;
            const std::size_t done_groups = groups - static_cast<std::size_t>(allowed);
            const std::size_t upto = t.wgmma_group_end[done_groups - 1];
            todo.assign(t.wgmma.begin(), t.wgmma.begin() + static_cast<std::ptrdiff_t>(upto));
            t.wgmma.erase(t.wgmma.begin(), t.wgmma.begin() + static_cast<std::ptrdiff_t>(upto));
            t.wgmma_group_end.erase(t.wgmma_group_end.begin(), t.wgmma_group_end.begin() + static_cast<std::ptrdiff_t>(done_groups));
            for (auto& e : t.wgmma_group_end) e -= upto;
        }
        {
            sanitizer_ignore ignore;
            if (running_->lane == 0)
                for (const detail::wgmma_request& r : todo) check_warpgroup_uniform(*running_, r);
            // Before any of them lands (several may accumulate into the same registers):
            // what each reads and writes is what it was at its issue.
            for (const detail::wgmma_request& r : todo)
                if (wgmma_operands(r, *running_) != r.operands)
                    device_fault("wgmma", ("an operand of this wgmma.mma_async changed between its issue and the "
                                           "wgmma.wait_group at " + where_text(where) + " that lands it: its "
                                           "accumulators, its A registers or its operands in shared memory (a GPU "
                                           "may read them at the issue, and writes the accumulators at any time "
                                           "before the wait)").c_str(), nullptr, r.where);
        }
        for (const detail::wgmma_request& r : todo) warp_op(detail::warp_op::wgmma, 0xffffffffu, &r, nullptr, 0, 32, where);
    }

    // The four warps of a warpgroup must issue the same products (one instruction of
    // the warpgroup): the k-th product each warp lands is compared with the k-th of
    // the first warp of its warpgroup to land one (shape, operand sources,
    // descriptors; A's registers differ by warp).
    struct wgmma_signature {
        std::uint64_t a_desc, b_desc;
        int n;
        bool a_registers, trans_b, scale_d, f16;
        std::source_location where;
        bool operator==(const wgmma_signature& o) const {
            return a_desc == o.a_desc && b_desc == o.b_desc && n == o.n && a_registers == o.a_registers &&
                   trans_b == o.trans_b && scale_d == o.scale_d && f16 == o.f16;
        }
    };
    void check_warpgroup_uniform(const sim_thread& t, const detail::wgmma_request& r) {
        const wgmma_signature sig{r.a ? 0 : r.a_desc, r.b_desc, r.n, r.a != nullptr, r.trans_b, r.scale_d, r.f16, r.where};
        const auto g = static_cast<std::size_t>(t.warp / 4);
        if (wg_log_.size() <= g) wg_log_.resize(g + 1);
        std::vector<wgmma_signature>& log = wg_log_[g];
        std::size_t& k = wg_landed_[static_cast<std::size_t>(t.warp)];
        if (k == log.size()) {
            log.push_back(sig);
        } else if (!(log[k] == sig)) {
            std::ostringstream m;
            m << "warp " << t.warp << " (warpgroup " << g << ") issued wgmma.mma_async number " << k << " at "
              << where_text(sig.where) << " with N = " << sig.n << ", B descriptor 0x" << std::hex << sig.b_desc << std::dec
              << ", where another warp of its warpgroup issued N = " << log[k].n << ", B descriptor 0x" << std::hex
              << log[k].b_desc << std::dec << " at " << where_text(log[k].where)
              << ": the four warps of a warpgroup issue one instruction together";
            thread_fault(*running_, "synccheck", m.str());
            throw abandon_block{};
        }
        ++k;
    }

    // ---- named barriers (bar.sync / bar.arrive id, count) ----
    void named_barrier(int id, int count, bool wait_for_it, const std::source_location& where) {
        {
            sanitizer_ignore ignore;
            if (abandoning_) throw abandon_block{};
            sim_thread& t = *running_;
            const std::string what = std::string(wait_for_it ? "bar.sync " : "bar.arrive ") + std::to_string(id) + ", " +
                                     std::to_string(count) + " at " + where_text(where);
            if (id < 1 || id > 15)
                thread_fault(t, "synccheck", what + ": named barriers are 1 .. 15 (0 is __syncthreads's)");
            else if (count < 32 || count % 32 != 0 || count > nthreads_)
                thread_fault(t, "synccheck", what + ": the thread count must be a multiple of 32, at most the block's " +
                                                 std::to_string(nthreads_));
            if (abandoning_) throw abandon_block{};
            named_barrier_state& b = named_[static_cast<std::size_t>(id)];
            if (b.expected == 0) {
                b.expected = count;
                b.site = where;
            } else if (b.expected != count) {
                thread_fault(t, "synccheck", what + ": barrier " + std::to_string(id) + " was entered with count " +
                                                 std::to_string(b.expected) + " at " + where_text(b.site));
                throw abandon_block{};
            }
            TSAN_RELEASE(&sync_->named[id]);
            if (wait_for_it) {
                t.st = state::at_named_barrier;
                t.named = id;
                t.site = where;
            }
            if (++b.arrived == b.expected) {
                b.expected = b.arrived = 0;
                for (int i = 0; i < nthreads_; ++i) {
                    sim_thread& u = *pool_[static_cast<std::size_t>(i)];
                    if (u.st == state::at_named_barrier && u.named == id) make_ready(u);
                }
            }
            if (wait_for_it) wait(t);
            TSAN_ACQUIRE(&sync_->named[id]);
        }
        if (!wait_for_it) schedule_point();
    }

    // ---- mbarrier and the bulk tensor copy (TMA) ----
    mbarrier_state& barrier_at(std::uint32_t bar, const char* op, const std::source_location& where) {
        auto it = mbarriers_.find(bar);
        if (it == mbarriers_.end())
            device_fault("synccheck", (std::string(op) + " on shared byte " + std::to_string(bar) +
                                       ", where no mbarrier was initialised (mbarrier.init)").c_str(), nullptr, where);
        return it->second;
    }
    void mbarrier_init(std::uint32_t bar, int count, const std::source_location& where) {
        sanitizer_ignore ignore;
        if (abandoning_) throw abandon_block{};
        if (bar % 8 != 0)
            device_fault("memcheck", ("mbarrier.init at shared byte " + std::to_string(bar) + " (mbarriers are 8-byte aligned)").c_str(), nullptr, where);
        if (count < 1 || count > (1 << 20) - 1)
            device_fault("synccheck", ("mbarrier.init with " + std::to_string(count) + " arrivals (1 .. 2^20 - 1)").c_str(), nullptr, where);
        mbarrier_state& m = mbarriers_[bar];
        if (!m.copies.empty())
            device_fault("synccheck", "mbarrier.init of a barrier that TMA copies still name", nullptr, where);
        m = mbarrier_state{};
        m.expected = m.pending = count;
    }
    // Land the copies of a phase whose arrivals are all in; complete it once its bytes are.
    void mbarrier_progress(std::uint32_t bar, mbarrier_state& m, const std::source_location& where) {
        if (m.pending > 0) return;
        if (!m.copies.empty()) {
            TSAN_IGNORE_END();
            for (const tma_copy& c : m.copies) tma::copy_box(c.map, c.c, c.dst, c.offset);
            TSAN_IGNORE_BEGIN();
            for (const tma_copy& c : m.copies) m.tx -= static_cast<std::int64_t>(c.bytes);
            m.copies.clear();
        }
        if (m.tx < 0)
            device_fault("synccheck", ("the bulk copies of mbarrier at shared byte " + std::to_string(bar) + " delivered " +
                                       std::to_string(-m.tx) + " bytes more than its phase expects (mbarrier.expect_tx)").c_str(),
                         nullptr, where);
        if (m.tx > 0) return;  // bytes still to come from copies not yet issued
        ++m.phase;
        m.pending = m.expected;
        TSAN_RELEASE(&mbarriers_[bar]);
        for (int i = 0; i < nthreads_; ++i) {
            sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            if (u.st == state::at_mbarrier && u.mbar == bar && (m.phase & 1u) != u.mbar_parity) make_ready(u);
        }
    }
    void mbarrier_arrive(std::uint32_t bar, int count, std::uint32_t tx_bytes, const std::source_location& where) {
        {
            sanitizer_ignore ignore;
            if (abandoning_) throw abandon_block{};
            mbarrier_state& m = barrier_at(bar, "mbarrier.arrive", where);
            if (m.pending == 0) mbarrier_progress(bar, m, where);  // the previous phase waits for its copies only
            if (m.pending == 0)
                device_fault("synccheck", ("mbarrier.arrive at shared byte " + std::to_string(bar) +
                                           ": the phase's arrivals are all in, and its transaction bytes have not arrived "
                                           "(an arrival for the next phase before this one completed)").c_str(), nullptr, where);
            if (count < 1 || count > m.pending)
                device_fault("synccheck", ("mbarrier.arrive with " + std::to_string(count) + " arrivals where the phase of the barrier at shared byte " +
                                           std::to_string(bar) + " expects " + std::to_string(m.pending) + " more").c_str(), nullptr, where);
            TSAN_RELEASE(&mbarriers_[bar]);
            m.tx += tx_bytes;
            m.pending -= count;
            if (m.pending == 0 && (m.copies.empty() ? m.tx == 0 : waiters(bar) > 0)) mbarrier_progress(bar, m, where);
        }
        schedule_point();
    }
    int waiters(std::uint32_t bar) const {
        int n = 0;
        for (int i = 0; i < nthreads_; ++i) {
            const sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            n += u.st == state::at_mbarrier && u.mbar == bar;
        }
        return n;
    }
    void mbarrier_wait(std::uint32_t bar, unsigned parity, const std::source_location& where) {
        sanitizer_ignore ignore;
        if (abandoning_) throw abandon_block{};
        mbarrier_state& m = barrier_at(bar, "mbarrier.try_wait.parity", where);
        sim_thread& t = *running_;
        if ((m.phase & 1u) == (parity & 1u)) {
            t.st = state::at_mbarrier;
            t.mbar = bar;
            t.mbar_parity = parity & 1u;
            t.site = where;
            mbarrier_progress(bar, m, where);
            wait(t);
        }
        TSAN_ACQUIRE(&mbarriers_[bar]);
    }
    void tma_load(void* dst, const void* map, const std::int32_t* c, int rank, std::uint32_t bar,
                  const std::source_location& where) {
        {
            sanitizer_ignore ignore;
            if (abandoning_) throw abandon_block{};
            std::string why;
            const tma::tensor_map* tm = tma::decode(map, &why);
            if (!tm) device_fault("memcheck", ("cp.async.bulk.tensor: " + why).c_str(), map, where);
            if (static_cast<std::uint32_t>(rank) != tm->rank)
                device_fault("memcheck", ("cp.async.bulk.tensor." + std::to_string(rank) + "d with a map of rank " +
                                          std::to_string(tm->rank)).c_str(), map, where);
            const std::uint32_t offset = shared_address(dst, where);
            if (offset % (tm->swizzle128 ? 1024 : 128) != 0)
                device_fault("memcheck", (std::string("cp.async.bulk.tensor destination at shared byte ") + std::to_string(offset) +
                                          (tm->swizzle128 ? " (the simulator needs 1024-byte alignment for the 128-byte swizzle)"
                                                          : " (128-byte alignment needed)")).c_str(), dst, where);
            const std::uint64_t bytes = tma::box_bytes(*tm);
            if (offset + bytes > shared_.size())
                device_fault("memcheck", ("cp.async.bulk.tensor writes " + std::to_string(bytes) + " bytes from shared byte " +
                                          std::to_string(offset) + ", past the block's " + std::to_string(shared_.size())).c_str(), dst, where);
            mbarrier_state& m = barrier_at(bar, "cp.async.bulk.tensor", where);
            tma_copy copy{static_cast<unsigned char*>(dst), offset, *tm, {}, bytes, where};
            for (int i = 0; i < rank; ++i) copy.c[i] = c[i];
            m.copies.push_back(copy);
            if (m.pending == 0 && waiters(bar) > 0) mbarrier_progress(bar, m, where);
        }
        schedule_point();
    }

    // ---- ordering between blocks (racecheck builds; see the top of the file) ----
    void device_fence() {
#if defined(TINYLLM_SIM_TSAN)
        if (!running_) return;
        sanitizer_ignore ignore;  // the bookkeeping is the simulator's, not the kernel's
        sim_thread& t = *running_;
        for (const void* a : t.observed) TSAN_ACQUIRE(const_cast<void*>(a));  // an atomic read, then this fence
        t.observed.clear();
        TSAN_RELEASE(fence_sync_.get());  // what this thread did so far is visible to the device
        block_fenced_ = true;
#endif
    }
    void atomic_done(const void* address, bool wrote) {
#if defined(TINYLLM_SIM_TSAN)
        if (!running_ || in_shared_memory(address)) return;  // shared memory: the block's barriers order it
        sanitizer_ignore ignore;
        sim_thread& t = *running_;
        if (std::find(t.observed.begin(), t.observed.end(), address) == t.observed.end()) {
            if (t.observed.size() == 8) t.observed.erase(t.observed.begin());
            t.observed.push_back(address);
        }
        if (wrote && block_fenced_) {
            // The address receives what the block's fences made visible, not all this
            // thread has done: the carrier identity acquires nothing but fences (this
            // block's, and those of the earlier blocks of its set of fibers).
            __tsan_switch_to_fiber(fence_carriers_[fiber_set_], 1 /* __tsan_switch_to_fiber_no_sync */);
            TSAN_ACQUIRE(fence_sync_.get());
            TSAN_RELEASE(const_cast<void*>(address));
            __tsan_switch_to_fiber(t.f->tsan_identity(), 1);
        }
#else
        (void)address;
        (void)wrote;
#endif
    }

private:
#if defined(TINYLLM_SIM_TSAN)
    // A new block: its threads on the other set of fibers than the block before,
    // shared memory without a history, new barriers, no fences.
    void begin_block_ordering(unsigned threads) {
        // ThreadSanitizer forgets the history of memory that is allocated or
        // mapped anew (its malloc and mmap interceptors; GCC's AnnotateNewMemory
        // does nothing): so the dynamic shared memory is a new allocation (run_block
        // fills it), and the pages of the __shared__ variables are mapped anew with
        // their contents copied across.
        if (!shared_.empty()) std::vector<unsigned char>(shared_.size()).swap(shared_);
        if (!static_shared_read_) {
            static_shared_ = read_static_shared();
            const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
            for (const auto& [at, bytes] : static_shared_) {
                const std::uintptr_t first = at / page * page, end = (at + bytes + page - 1) / page * page;
                if (!static_pages_.empty() && first <= static_pages_.back().first + static_pages_.back().second)
                    static_pages_.back().second = std::max(static_pages_.back().second, end - static_pages_.back().first);
                else
                    static_pages_.emplace_back(first, end - first);
            }
            static_shared_read_ = true;
        }
        for (const auto& [at, bytes] : static_pages_) {  // this object may be on those pages:
            char* p = reinterpret_cast<char*>(at);  // nothing of it is used until the copy is back
            const std::vector<char> page_copy(p, p + bytes);
            if (mmap(p, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
                std::fprintf(stderr, "tinyllm simulator: cannot map the pages of __shared__ variables anew (mmap failed)\n");
                std::abort();
            }
            // Byte by byte, calling nothing: the first page may also hold the end of
            // .data, the procedure linkage table's addresses among it.
            volatile char* to = p;
            for (std::size_t i = 0; i < bytes; ++i) to[i] = page_copy[i];
        }
        // The blocks take turns between two sets of fibers (each fiber keeps its
        // stack and its ThreadSanitizer identity), so a block is never ordered
        // after the block run just before it, only after the one before that
        // (the same fibers). Each further set would widen the check and slow
        // every barrier: ThreadSanitizer's clocks grow with its identities.
        fiber_set_ = 1 - fiber_set_;
        for (unsigned i = 0; i < threads; ++i) {
            sim_thread& t = *pool_[i];
            while (t.fibers.size() <= fiber_set_)
                t.fibers.push_back(std::make_unique<fiber>(&executor::thread_main, &t, stack_bytes_));
            t.f = t.fibers[fiber_set_].get();
        }
        if (!fence_carriers_[fiber_set_]) fence_carriers_[fiber_set_] = __tsan_create_fiber(0);
        sync_ = std::make_unique<block_sync>();     // new addresses: no earlier block's barriers
        fence_sync_ = std::make_unique<char[]>(1);  // nor fences
        block_fenced_ = false;
    }
    bool in_shared_memory(const void* p) const {
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        if (!shared_.empty() && a >= reinterpret_cast<std::uintptr_t>(shared_.data()) &&
            a < reinterpret_cast<std::uintptr_t>(shared_.data()) + shared_.size())
            return true;
        auto it = std::upper_bound(static_shared_.begin(), static_shared_.end(), std::pair{a, ~std::size_t{0}});
        return it != static_shared_.begin() && a < std::prev(it)->first + std::prev(it)->second;
    }
#endif

    schedule sched_;
    schedule_rng rng_;
    std::size_t stack_bytes_ = 256 * 1024;
    fiber host_;
    std::vector<std::unique_ptr<sim_thread>> pool_;
    const detail::launch_request* req_ = nullptr;
    std::string name_;
    std::vector<unsigned char> shared_;
    sim_thread* running_ = nullptr;
    uint3 block_idx_{};
    // Per warp: the lanes that wait at a warp operation, and those that have returned.
    std::vector<unsigned> warp_arrived_;
    std::vector<unsigned> warp_exited_;
    std::map<std::uint32_t, mbarrier_state> mbarriers_;  // by shared-memory offset
    std::vector<std::vector<wgmma_signature>> wg_log_;     // per warpgroup: the products its warps landed
    std::vector<std::size_t> wg_landed_;                   // per warp: how many of them it landed
    named_barrier_state named_[16];
    int nthreads_ = 0, exited_ = 0, arrived_ = 0;
    ready_queue ready_;
    unsigned warp_ops_completed_ = 0;  // in the block so far (complete_warp)
    bool fault_ = false, abandoning_ = false;
    std::string fault_text_;
    // Addresses ThreadSanitizer treats as synchronisation objects: the block's
    // barriers (a new set for each block under ThreadSanitizer, since they order
    // the block's own threads only), and the launch's start and end.
    struct block_sync {
        char barrier[2];
        char warp[32][2];
        char named[16];
    };
    std::unique_ptr<block_sync> sync_ = std::make_unique<block_sync>();
    char launch_sync_ = 0, block_done_sync_ = 0;
#if defined(TINYLLM_SIM_TSAN)
    // Ordering between blocks (see the top of the file): the set of fibers the
    // running block uses (0 or 1), its fences, for each set a ThreadSanitizer
    // identity that acquires nothing but fences (to pass them to an atomic's
    // address), and the __shared__ variables' addresses.
    std::size_t fiber_set_ = 1;  // the first block takes set 0, which grow_pool made
    std::unique_ptr<char[]> fence_sync_;
    bool block_fenced_ = false;
    void* fence_carriers_[2] = {};
    std::vector<std::pair<std::uintptr_t, std::size_t>> static_shared_, static_pages_;
    bool static_shared_read_ = false;
#endif

    void apply_schedule() {
        rng_.seed(sched_.seed);
        detail::random_schedule_active = sched_.random;
    }

    static std::string hex(unsigned v) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "0x%08x", v);
        return buf;
    }

    const std::string& name() {
        if (name_.empty()) name_ = kernel_name(req_->kernel);
        return name_;
    }
    // The kernel's name without return type, namespaces of anonymous scope and parameters.
    std::string short_name() {
        std::string n = name();
        for (const std::string cut : {"(anonymous namespace)::", "void "})
            for (std::size_t at; (at = n.find(cut)) != std::string::npos;) n.erase(at, cut.size());
        int depth = 0;
        for (std::size_t i = 0; i < n.size(); ++i) {
            if (n[i] == '<') ++depth;
            else if (n[i] == '>') --depth;
            else if (n[i] == '(' && depth == 0) return n.substr(0, i);
        }
        return n;
    }

    void grow_pool(unsigned threads) {
        while (pool_.size() < threads) {
            auto t = std::make_unique<sim_thread>();
            t->linear = static_cast<int>(pool_.size());
            t->copies.reserve(64);  // cp.async queues: no allocation while a block runs
            t->group_end.reserve(16);
            t->observed.reserve(8);
            t->fibers.push_back(std::make_unique<fiber>(&executor::thread_main, t.get(), stack_bytes_));
            t->f = t->fibers.back().get();
            pool_.push_back(std::move(t));
        }
    }

    static void thread_main(void* p);
#if defined(TINYLLM_SIM_SANITIZED)
    static void sanitizer_death();
#endif

public:
    // "CUDA thread (x,y,z) block (x,y,z) KERNEL" of the running thread, or "" outside
    // kernels: the words ThreadSanitizer's reports show for it too (as its fiber's name).
    std::string running_thread() {
        if (!running_ || !req_) return "";
        return thread_label(running_->ctx.thread_idx, name());
    }
    std::string thread_label(uint3 thread, const std::string& kernel) const {
        return "CUDA thread " + coords(thread) + " block " + coords(block_idx_) + " " + kernel;
    }

private:

    void run_block(uint3 block_idx, unsigned threads) {
        ++counters.blocks;
        counters.threads += threads;
        nthreads_ = static_cast<int>(threads);
        block_idx_ = block_idx;
        const std::size_t warps = (threads + 31) / 32;
        warp_arrived_.assign(warps, 0u);
        warp_exited_.assign(warps, 0u);
        exited_ = arrived_ = 0;
        warp_ops_completed_ = 0;
        abandoning_ = false;
        mbarriers_.clear();
        for (auto& b : named_) b = named_barrier_state{};
        for (auto& l : wg_log_) l.clear();
        wg_landed_.assign(warps, 0);
        ready_.reset(threads);
#if defined(TINYLLM_SIM_TSAN)
        begin_block_ordering(threads);
#endif
        // Shared memory is not initialised on a GPU: fill it with NaN bytes.
        if (!shared_.empty()) std::memset(shared_.data(), 0xff, shared_.size());
        const dim3 bd = req_->block;
        for (unsigned i = 0; i < threads; ++i) {
            sim_thread& t = *pool_[i];
            t.ctx = {{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)}, block_idx, req_->block, req_->grid};
            t.lane = static_cast<int>(i % 32);
            t.warp = static_cast<int>(i / 32);
            t.st = state::ready;
            t.barrier_generation = t.syncwarp_generation = 0;
            t.last_group = 0;
            t.copies.clear();
            t.group_end.clear();
            t.wgmma.clear();
            t.wgmma_group_end.clear();
            t.observed.clear();
#if defined(TINYLLM_SIM_TSAN)
            // ThreadSanitizer's reports name each access's thread by its fiber's name
            // (which it cuts at 63 characters: the kernel's short name goes last).
            t.f->set_name(thread_label(t.ctx.thread_idx, short_name()).c_str());
#endif
            ready_.push_back(static_cast<int>(i));
        }
        TSAN_RELEASE(&launch_sync_);
        while (exited_ < nthreads_) {
            if (ready_.empty()) {
                deadlock();
                continue;
            }
            const int next = pick();
            sim_thread& t = *pool_[static_cast<std::size_t>(next)];
            running_ = &t;
            detail::current = &t.ctx;
            ++counters.switches;
            switch_fiber(host_, *t.f);  // returns when no thread is ready (switch_away)
        }
        running_ = nullptr;
        detail::current = nullptr;
        if (!fault_)
            for (std::size_t w = 0; w < wg_landed_.size(); ++w) {
                const std::size_t g = w / 4, issued = g < wg_log_.size() ? wg_log_[g].size() : 0;
                if (wg_landed_[w] != issued && !(wg_landed_[w] == 0 && w * 32 >= static_cast<std::size_t>(nthreads_))) {
                    block_fault("synccheck", "warp " + std::to_string(w) + " of warpgroup " + std::to_string(g) + " landed " +
                                                 std::to_string(wg_landed_[w]) + " wgmma products where another warp of its warpgroup landed " +
                                                 std::to_string(issued) + ": the four warps of a warpgroup issue every wgmma together");
                    break;
                }
            }
        if (!fault_)
            for (int id = 1; id < 16; ++id)
                if (named_[id].arrived > 0) {
                    block_fault("synccheck", "the block ended with " + std::to_string(named_[id].arrived) + " of " +
                                                 std::to_string(named_[id].expected) + " threads arrived at named barrier " +
                                                 std::to_string(id) + " (first at " + where_text(named_[id].site) + ")");
                    break;
                }
        if (!fault_)
            for (const auto& [bar, m] : mbarriers_)
                if (!m.copies.empty()) {
                    block_fault("synccheck", "the block ended with a TMA copy issued at " + where_text(m.copies.front().where) +
                                                 " into shared memory that no thread waited for (mbarrier at shared byte " +
                                                 std::to_string(bar) + ")");
                    break;
                }
    }

    int pick() {
        if (!sched_.random) {
            return ready_.pop_front();
        }
        return ready_.take(rng_.below(static_cast<std::uint32_t>(ready_.size())));
    }

    // Suspend the running thread until it is resumed.
    void wait(sim_thread& t) {
        if (t.st == state::ready && !sched_.random) {
            // Released by its own arrival: keep running (in-order schedule).
        } else {
            if (t.st == state::ready) ready_.push_back(t.linear);  // random: let the others have a turn
            switch_away(t);
        }
        if (abandoning_) throw abandon_block{};
    }

    // The running thread t stops: the next ready thread runs, straight from t's
    // fiber, without a detour through the scheduler (one switch, not two). Only
    // when none is ready does the scheduler get control back: the block has ended,
    // or it hangs (run_block). Returns when some fiber resumes t.
    void switch_away(sim_thread& t) {
        sim_thread* next = ready_.empty() ? nullptr : pool_[static_cast<std::size_t>(pick())].get();
        running_ = next;
        detail::current = next ? &next->ctx : nullptr;
        if (next == &t) return;  // the random schedule picked t itself
        ++counters.switches;
        switch_fiber(*t.f, next ? *next->f : host_);
    }

    // The running thread is never queued: wait() decides what it does next.
    void make_ready(sim_thread& t, bool first = false) {
        if (t.st == state::at_warp_op) warp_arrived_[static_cast<std::size_t>(t.warp)] &= ~(1u << t.lane);
        t.st = state::ready;
        if (&t == running_) return;
        if (first) ready_.push_front(t.linear);
        else ready_.push_back(t.linear);
    }

    void complete_barrier(sim_thread* last) {
        (void)last;
        const sim_thread* first = nullptr;
        int result = 0;
        detail::barrier_op op = detail::barrier_op::sync;
        bool any = false, all = true;
        int count = 0;
        for (int i = 0; i < nthreads_; ++i) {
            sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            if (u.st != state::at_barrier) continue;
            if (!first) {
                first = &u;
                op = u.bop;
            } else if (!same_site(u.site, first->site) || u.bop != first->bop) {
                divergent_barrier(*first, u);
                return;
            }
            any |= u.predicate != 0;
            all &= u.predicate != 0;
            count += u.predicate != 0;
        }
        switch (op) {
        case detail::barrier_op::sync: result = 0; break;
        case detail::barrier_op::count: result = count; break;
        case detail::barrier_op::any: result = any; break;
        case detail::barrier_op::all: result = all; break;
        }
        arrived_ = 0;
        for (int i = 0; i < nthreads_; ++i) {
            sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            if (u.st != state::at_barrier) continue;
            u.barrier_result = result;
            make_ready(u);
        }
    }

    void divergent_barrier(const sim_thread& a, const sim_thread& b) {
        std::ostringstream m;
        m << "divergent barrier: thread " << coords(a.ctx.thread_idx) << " waits at " << barrier_name(a.bop) << " ("
          << where_text(a.site) << ") but thread " << coords(b.ctx.thread_idx) << " at " << barrier_name(b.bop) << " ("
          << where_text(b.site) << "); every thread of a block must reach the same barrier";
        block_fault("synccheck", m.str());
    }

    // Complete t's warp operation if every lane of its mask is there. Called by
    // each lane as it arrives; for a correct program the lanes' records are read
    // once, by the last lane of the mask to arrive.
    void try_complete_warp(sim_thread& t) {
        const int base = t.warp * 32;
        const auto w = static_cast<std::size_t>(t.warp);
        const unsigned existing = nthreads_ - base >= 32 ? 0xffffffffu : (1u << (nthreads_ - base)) - 1u;
        if ((t.mask & ~existing) != 0 || (t.mask & warp_exited_[w]) != 0) {
            bad_warp_mask(t, existing);
            return;
        }
        if ((warp_arrived_[w] & t.mask) != t.mask) return;  // some lanes of the mask have yet to arrive
        complete_warp(t);
    }

    // Every lane of t's mask waits at a warp operation: if it is the same one,
    // compute the lanes' results and make them ready. Not inlined into the
    // arrival path: the results' scratch space (a few kilobytes of stack, which
    // AddressSanitizer poisons on every call) is needed only here.
    [[gnu::noinline]] void complete_warp(sim_thread& t) {
        const int base = t.warp * 32;
        sim_thread* lanes[32] = {};
        for (unsigned m = t.mask; m != 0; m &= m - 1) {
            const int l = std::countr_zero(m);
            sim_thread& u = *pool_[static_cast<std::size_t>(base + l)];
            if (u.mask != t.mask) return;
            if (t.wop == detail::warp_op::syncwarp) {
                if (u.wop != detail::warp_op::syncwarp) return;
            } else if (u.wop != t.wop || !same_site(u.site, t.site)) {
                return;
            }
            lanes[l] = &u;
        }
        combine(t.wop, lanes);
        // The in-order schedule runs the warp's lanes next, in lane order, while
        // their stacks are still in the cache, ahead of the threads queued before
        // them; every 256th operation of a block sends them to the back instead, so
        // that a warp spinning on a flag, with a warp operation in its loop, cannot
        // keep the warp it waits for from running.
        const bool first = !sched_.random && ++warp_ops_completed_ % 256 != 0;
        for (int l = 31; l >= 0; --l)  // the highest lane first: pushed to the front, lane 0 ends up ahead
            if (sim_thread* u = lanes[l]) {
                u->last_group = t.mask;
                make_ready(*u, first);
            }
    }

    // t's mask names a lane that does not exist or has returned: the operation can never complete.
    [[gnu::noinline, gnu::cold]] void bad_warp_mask(sim_thread& t, unsigned existing) {
        const unsigned exited = t.mask & warp_exited_[static_cast<std::size_t>(t.warp)];
        const int l = std::countr_zero(exited ? exited : t.mask & ~existing);  // the lowest such lane
        if (!exited) {
            thread_fault(t, "synccheck", std::string(op_name(t.wop)) + " at " + where_text(t.site) + ": mask " + hex(t.mask) +
                                             " names lane " + std::to_string(l) + ", which does not exist (the block has " +
                                             std::to_string(nthreads_) + " threads)");
            return;
        }
        const sim_thread& u = *pool_[static_cast<std::size_t>(t.warp * 32 + l)];
        thread_fault(t, "synccheck", std::string(op_name(t.wop)) + " at " + where_text(t.site) + ": mask " + hex(t.mask) +
                                         " names lane " + std::to_string(l) + " (thread " + coords(u.ctx.thread_idx) +
                                         "), which has already returned");
    }

    // Compute every participating lane's result of a warp operation.
    static void combine(detail::warp_op op, sim_thread* const (&lanes)[32]);

    // When a lane returns, a warp operation of its warp that names it can never complete.
    void check_warp_after_exit(const sim_thread& gone) {
        for (int l = 0; l < 32; ++l) {
            const int i = gone.warp * 32 + l;
            if (i >= nthreads_) break;
            sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            if (u.st == state::at_warp_op && ((u.mask >> gone.lane) & 1u)) {
                std::ostringstream m;
                m << op_name(u.wop) << " at " << where_text(u.site) << " by thread " << coords(u.ctx.thread_idx)
                  << ": mask " << hex(u.mask) << " names lane " << gone.lane << " (thread " << coords(gone.ctx.thread_idx)
                  << "), which returned without arriving";
                block_fault("synccheck", m.str());
                return;
            }
        }
    }

    void on_exit(sim_thread& t) {
        t.st = state::exited;
        ++exited_;
        warp_exited_[static_cast<std::size_t>(t.warp)] |= 1u << t.lane;
        if (abandoning_) return;
        check_warp_after_exit(t);
        if (!abandoning_ && arrived_ > 0 && arrived_ + exited_ == nthreads_) complete_barrier(nullptr);
    }

    // The copies are the thread's writes to shared memory: ThreadSanitizer sees them.
    void land(sim_thread& t, std::size_t upto) {
        TSAN_IGNORE_END();
        for (std::size_t i = 0; i < upto && i < t.copies.size(); ++i) {
            const pending_copy& c = t.copies[i];
            if (c.src_bytes > 0) std::memcpy(c.dst, c.src, static_cast<std::size_t>(c.src_bytes));
            if (c.bytes > c.src_bytes)
                std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<std::size_t>(c.bytes - c.src_bytes));
        }
        TSAN_IGNORE_BEGIN();
        t.copies.erase(t.copies.begin(), t.copies.begin() + static_cast<std::ptrdiff_t>(std::min(upto, t.copies.size())));
    }

    // No thread is ready but some have not returned: they wait for each other forever.
    void deadlock() {
        std::ostringstream m;
        m << "no thread of the block can continue (a hang on a GPU):";
        std::map<std::string, std::vector<std::string>> groups;
        for (int i = 0; i < nthreads_; ++i) {
            const sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            if (u.st == state::at_barrier)
                groups[std::string(barrier_name(u.bop)) + " at " + where_text(u.site)].push_back(coords(u.ctx.thread_idx));
            else if (u.st == state::at_warp_op)
                groups[std::string(op_name(u.wop)) + " (mask " + hex(u.mask) + ") at " + where_text(u.site)].push_back(
                    coords(u.ctx.thread_idx));
            else if (u.st == state::at_named_barrier)
                groups["bar.sync " + std::to_string(u.named) + " at " + where_text(u.site) + " (" +
                       std::to_string(named_[u.named].arrived) + " of " + std::to_string(named_[u.named].expected) +
                       " threads arrived)"]
                    .push_back(coords(u.ctx.thread_idx));
            else if (u.st == state::at_mbarrier) {
                const mbarrier_state& b = mbarriers_[u.mbar];
                groups["mbarrier.try_wait.parity " + std::to_string(u.mbar_parity) + " at " + where_text(u.site) +
                       " (barrier at shared byte " + std::to_string(u.mbar) + ": " + std::to_string(b.pending) +
                       " arrivals and " + std::to_string(b.tx) + " transaction bytes missing)"]
                    .push_back(coords(u.ctx.thread_idx));
            }
        }
        for (const auto& [what, who] : groups) {
            m << "\n      " << who.size() << " thread" << (who.size() == 1 ? "" : "s") << " wait at " << what << ": ";
            for (std::size_t k = 0; k < who.size() && k < 4; ++k) m << (k ? " " : "") << who[k];
            if (who.size() > 4) m << " ...";
        }
        if (exited_ > 0) m << "\n      " << exited_ << " thread" << (exited_ == 1 ? " has" : "s have") << " returned";
        block_fault("synccheck", m.str());
    }

    // A fault seen by thread t (its coordinates are reported).
    void thread_fault(sim_thread& t, const char* check, const std::string& what) {
        record(check, "thread " + coords(t.ctx.thread_idx) + ": " + what);
        abandon();
    }
    void block_fault(const char* check, const std::string& what) {
        record(check, what);
        abandon();
    }
    void record(const char* check, const std::string& what) {
        if (fault_) return;  // the first fault is the one to report
        fault_ = true;
        std::ostringstream m;
        m << "tinyllm simulator: " << check << " error in kernel " << name() << "\n    block "
          << coords(block_idx_) << ", " << what;
        fault_text_ = m.str();
    }
    // Release every waiting thread; each unwinds when it resumes.
    void abandon() {
        abandoning_ = true;
        for (int i = 0; i < nthreads_; ++i) {
            sim_thread& u = *pool_[static_cast<std::size_t>(i)];
            if (u.st == state::at_barrier || u.st == state::at_warp_op || u.st == state::at_mbarrier ||
                u.st == state::at_named_barrier)
                make_ready(u);
        }
    }

    void state_fault();

public:
    void exception_in_thread(sim_thread& t, const std::string& what) {
        sanitizer_ignore ignore;
        thread_fault(t, "exception", "the kernel threw: " + what);
    }
    void finish_thread(sim_thread& t) {
        {
            sanitizer_ignore ignore;  // ended before the switch: a suspended fiber holds no ignore
            if (!abandoning_) land(t, t.copies.size());
            t.copies.clear();
            if (!abandoning_ && !t.wgmma.empty())
                thread_fault(t, "synccheck", "returned with a wgmma.mma_async issued at " + where_text(t.wgmma.front().where) +
                                                 " that no wgmma.wait_group waited for");
            t.wgmma.clear();
            t.wgmma_group_end.clear();
            on_exit(t);
        }
        TSAN_RELEASE(&block_done_sync_);
        switch_away(t);  // resumed again only to run the next block
    }
    void start_thread() { TSAN_ACQUIRE(&launch_sync_); }
    void run_kernel_body() { req_->run(req_->closure); }
    const std::string& fault_text() const { return fault_text_; }
};

[[gnu::always_inline]] inline executor& ex() {
    static executor e;
    return e;
}

void executor::thread_main(void* p) {
    sim_thread& t = *static_cast<sim_thread*>(p);
    executor& e = ex();
    for (;;) {
        e.start_thread();
        try {
            e.run_kernel_body();
        } catch (const abandon_block&) {
        } catch (const std::exception& error) {
            e.exception_in_thread(t, error.what());
        } catch (...) {
            e.exception_in_thread(t, "an exception that is not a std::exception");
        }
        e.finish_thread(t);
    }
}

#if defined(TINYLLM_SIM_SANITIZED)
void executor::sanitizer_death() {
    const std::string who = ex().running_thread();
    if (!who.empty()) std::fprintf(stderr, "tinyllm simulator: the error reported above was made by %s\n", who.c_str());
}
#endif

void executor::state_fault() {
    {
        std::lock_guard lock(report_mutex);
        report = fault_text_;
    }
    if (to_stderr_) std::fprintf(stderr, "%s\n", fault_text_.c_str());
    runtime::set_sticky_error(cudaErrorLaunchFailure, fault_text_);
}

// ---- the warp operations' results --------------------------------------------
void executor::combine(detail::warp_op op, sim_thread* const (&lanes)[32]) {
    using w = detail::warp_op;
    TSAN_IGNORE_BEGIN();
    auto u64 = [&](int l) { return *static_cast<const std::uint64_t*>(lanes[l]->in); };
    auto u32 = [&](int l) { return *static_cast<const std::uint32_t*>(lanes[l]->in); };
    auto pred = [&](int l) { return *static_cast<const int*>(lanes[l]->in) != 0; };
    unsigned mask = 0;
    for (int l = 0; l < 32; ++l)
        if (lanes[l]) mask |= 1u << l;
    switch (op) {
    case w::shfl_idx: case w::shfl_up: case w::shfl_down: case w::shfl_xor:
        for (int l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            const int width = lanes[l]->width, arg = lanes[l]->arg;
            const int segment = l & ~(width - 1);
            int src = l;
            if (op == w::shfl_idx) src = segment + (arg & (width - 1));
            else if (op == w::shfl_up) src = (l - segment) >= arg ? l - arg : l;
            else if (op == w::shfl_down) src = (l - segment) + arg < width ? l + arg : l;
            else src = ((l ^ arg) < segment + width) ? (l ^ arg) : l;
            // A lane outside the mask has nothing to give: its value is undefined on a
            // GPU, all ones (NaN) here.
            *static_cast<std::uint64_t*>(lanes[l]->out) = (src >= 0 && src < 32 && lanes[src]) ? u64(src) : ~std::uint64_t{0};
        }
        break;
    case w::ballot: case w::any: case w::all: {
        unsigned votes = 0;
        for (int l = 0; l < 32; ++l)
            if (lanes[l] && pred(l)) votes |= 1u << l;
        const unsigned result = op == w::ballot ? votes : op == w::any ? (votes != 0) : (votes == mask);
        for (int l = 0; l < 32; ++l)
            if (lanes[l]) *static_cast<unsigned*>(lanes[l]->out) = result;
        break;
    }
    case w::match_any: case w::match_all: {
        bool all_equal = true;
        int first = -1;
        for (int l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            if (first < 0) first = l;
            else if (u64(l) != u64(first)) all_equal = false;
        }
        for (int l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            unsigned same = 0;
            for (int m = 0; m < 32; ++m)
                if (lanes[m] && u64(m) == u64(l)) same |= 1u << m;
            *static_cast<unsigned*>(lanes[l]->out) = op == w::match_any ? same : (all_equal ? mask : 0u);
        }
        break;
    }
    case w::reduce_add_u: case w::reduce_min_u: case w::reduce_max_u: case w::reduce_min_i: case w::reduce_max_i:
    case w::reduce_and: case w::reduce_or: case w::reduce_xor: {
        bool started = false;
        std::uint32_t acc = 0;
        for (int l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            const std::uint32_t v = u32(l);
            if (!started) {
                acc = v;
                started = true;
                continue;
            }
            switch (op) {
            case w::reduce_add_u: acc += v; break;
            case w::reduce_min_u: acc = std::min(acc, v); break;
            case w::reduce_max_u: acc = std::max(acc, v); break;
            case w::reduce_min_i: acc = static_cast<std::uint32_t>(std::min(static_cast<std::int32_t>(acc), static_cast<std::int32_t>(v))); break;
            case w::reduce_max_i: acc = static_cast<std::uint32_t>(std::max(static_cast<std::int32_t>(acc), static_cast<std::int32_t>(v))); break;
            case w::reduce_and: acc &= v; break;
            case w::reduce_or: acc |= v; break;
            default: acc ^= v; break;
            }
        }
        for (int l = 0; l < 32; ++l)
            if (lanes[l]) *static_cast<std::uint32_t*>(lanes[l]->out) = acc;
        break;
    }
    case w::syncwarp:
        break;
    case w::ldmatrix: case w::ldmatrix_trans: {
        // Each lane brought the 8 16-bit values of the row it addresses.
        std::uint16_t rows[32][8] = {};
        for (int l = 0; l < 32; ++l)
            if (lanes[l]) std::copy_n(static_cast<const std::uint16_t*>(lanes[l]->in), 8, rows[l]);
        for (int l = 0; l < 32; ++l) {
            if (!lanes[l]) continue;
            auto* out = static_cast<std::uint32_t*>(lanes[l]->out);
            for (int m = 0; m < lanes[l]->arg; ++m) {
                std::uint16_t pair[2];
                tinyllm::detail::ldmatrix_pair(pair, rows, m, l, op == w::ldmatrix_trans);
                out[m] = static_cast<std::uint32_t>(pair[0]) | (static_cast<std::uint32_t>(pair[1]) << 16);
            }
        }
        break;
    }
    case w::mma_bf16: case w::mma_f16: {
        auto value = [&](std::uint32_t reg, int x) {
            const std::uint16_t bits = static_cast<std::uint16_t>(x ? reg >> 16 : reg & 0xffffu);
            return op == w::mma_bf16 ? bf16_to_float(bfloat16{bits}) : fp16_to_float(float16{bits});
        };
        auto frag = [&](int l) -> const detail::mma_fragments& { return *static_cast<const detail::mma_fragments*>(lanes[l]->in); };
        float A[16][16], B[16][8];
        tinyllm::detail::mma_operands(
            A, B, [&](int l, int r, int x) { return value(frag(l).a[r], x); },
            [&](int l, int r, int x) { return value(frag(l).b[r], x); });
        for (int l = 0; l < 32; ++l) {
            float d[4];
            float c[4];
            std::copy_n(frag(l).c, 4, c);
            tinyllm::detail::mma_lane_result(d, A, B, c, l);
            std::copy_n(d, 4, static_cast<float*>(lanes[l]->out));
        }
        break;
    }
    case w::wgmma: {
        // This warp's 16 rows of a 64 x N x 16 warpgroup product: warp w % 4 of
        // the warpgroup holds rows 16 (w % 4) .. +15 of A (registers or descriptor)
        // and of D; B (16 x N) comes from shared memory.
        auto req = [&](int l) -> const detail::wgmma_request& { return *static_cast<const detail::wgmma_request*>(lanes[l]->in); };
        const detail::wgmma_request& r0 = req(0);
        const bool f16 = r0.f16;
        auto value = [&](std::uint16_t bits) { return f16 ? fp16_to_float(float16{bits}) : bf16_to_float(bfloat16{bits}); };
        auto smem16 = [&](std::uint32_t at) {
            std::uint16_t bits;
            std::memcpy(&bits, ex().shared_.data() + at, sizeof bits);
            return value(bits);
        };
        const int row0 = 16 * (lanes[0]->warp % 4), n = r0.n;
        float A[16][16];
        if (r0.a) {
            tinyllm::detail::mma_a_operand(A, [&](int l, int r, int x) {
                return value(static_cast<std::uint16_t>(x ? req(l).a[r] >> 16 : req(l).a[r] & 0xffffu));
            });
        } else {
            const tinyllm::detail::wgmma_descriptor_fields fa = tinyllm::detail::wgmma_decode(r0.a_desc);
            for (int i = 0; i < 16; ++i)
                for (int k = 0; k < 16; ++k) A[i][k] = smem16(tinyllm::detail::wgmma_k_major_address(fa, row0 + i, k));
        }
        const tinyllm::detail::wgmma_descriptor_fields fb = tinyllm::detail::wgmma_decode(r0.b_desc);
        std::vector<float> B(static_cast<std::size_t>(16 * n));
        for (int k = 0; k < 16; ++k)
            for (int c = 0; c < n; ++c)
                B[static_cast<std::size_t>(k * n + c)] = smem16(r0.trans_b ? tinyllm::detail::wgmma_mn_major_address(fb, c, k)
                                                                          : tinyllm::detail::wgmma_k_major_address(fb, c, k));
        for (int l = 0; l < 32; ++l) {
            const detail::wgmma_request& r = req(l);
            const int t = 32 * (lanes[l]->warp % 4) + l;
            for (int i = 0; i < n / 2; ++i) {
                const int row = tinyllm::detail::wgmma_d_row(t, i) - row0, col = tinyllm::detail::wgmma_d_col(t, i);
                float acc = 0.0f;
                for (int k = 0; k < 16; ++k) acc += A[row][k] * B[static_cast<std::size_t>(k * n + col)];
                r.d[i] = (r.scale_d ? r.d[i] : 0.0f) + acc;
            }
        }
        break;
    }
    }
    TSAN_IGNORE_END();
}

}  // namespace

// ---- the interface of executor.hpp --------------------------------------------------
std::string last_report() {
    std::lock_guard lock(ex().report_mutex);
    return ex().report;
}
void set_report_to_stderr(bool on) { ex().to_stderr_ = on; }
bool in_kernel() { return ex().inside(); }
void set_schedule(schedule s) { ex().set_schedule(s); }
schedule current_schedule() { return ex().get_schedule(); }
statistics stats() {
    statistics s = ex().counters;
    s.allocations = runtime::allocation_count();
    s.synchronizations = runtime::synchronization_count();
    return s;
}
void clear_report() {
    std::lock_guard lock(ex().report_mutex);
    ex().report.clear();
}

namespace runtime {
std::string function_name(const void* kernel) { return kernel_name(kernel); }
}  // namespace runtime

namespace detail {

void launch(const launch_request& r) {
    executor& e = ex();
    if (e.inside()) {
        runtime::set_last_error(cudaErrorNotSupported);  // dynamic parallelism
        return;
    }
    const cudaError_t sticky = runtime::sticky_error();
    if (sticky != cudaSuccess) {
        runtime::set_last_error(sticky);
        return;
    }
    std::size_t limit = 0;
    const cudaError_t bad = runtime::check_launch(r, &limit);
    if (bad != cudaSuccess) {
        runtime::set_last_error(bad);
        return;
    }
    if (r.grid.x == 0 || r.block.x == 0) return;
    bool captured = false;
    if (const cudaError_t routed = runtime::route(r.stream, &captured); routed != cudaSuccess) {
        runtime::set_last_error(routed);  // the legacy stream during a capture, or a spoiled capture
        return;
    }
    if (captured) {  // recorded with its own copy of the arguments, run at each graph launch
        std::shared_ptr<void> closure(r.clone(r.closure), r.destroy);
        runtime::record(r.stream, [r, closure, limit] {
            if (runtime::sticky_error() != cudaSuccess) return;
            launch_request replay = r;
            replay.closure = closure.get();
            executor& e = ex();
            std::lock_guard lock(e.launch_mutex);
            sanitizer_ignore ignore;
            e.run(replay, limit);
        });
        return;
    }
    std::lock_guard lock(e.launch_mutex);
    sanitizer_ignore ignore;
    e.run(r, limit);
}

int block_barrier(barrier_op op, int predicate, const std::source_location& where) {
    return ex().barrier(op, predicate, where);
}
void warp_collective(warp_op op, unsigned mask, const void* in, void* out, int arg, int width,
                     const std::source_location& where) {
    ex().warp_op(op, mask, in, out, arg, width, where);
}
unsigned active_mask() { return ex().active_mask(); }
void* dynamic_shared_memory() { return ex().shared(); }
void trap(const std::source_location& where) { ex().trap(where); }
void device_fault(const char* check, const char* what, const void* address, const std::source_location& where) {
    ex().device_fault(check, what, address, where);
}
void schedule_point() {
    if (random_schedule_active) ex().schedule_point();
}
void device_fence() { ex().device_fence(); }
void atomic_done(const void* address, bool wrote) { ex().atomic_done(address, wrote); }
void cp_async(void* dst, const void* src, int copy_bytes, int src_bytes, const std::source_location&) {
    ex().cp_async(dst, src, copy_bytes, src_bytes);
}
void cp_async_commit() { ex().cp_async_commit(); }
void cp_async_wait(int allowed) { ex().cp_async_wait(allowed); }
void wgmma_issue(const wgmma_request& r) { ex().wgmma_issue(r); }
void wgmma_commit() { ex().wgmma_commit(); }
void wgmma_wait(int allowed, const std::source_location& where) { ex().wgmma_wait(allowed, where); }
std::uint32_t shared_address(const void* p, const std::source_location& where) { return ex().shared_address(p, where); }
void mbarrier_init(std::uint32_t bar, int count, const std::source_location& where) { ex().mbarrier_init(bar, count, where); }
void mbarrier_arrive(std::uint32_t bar, int count, std::uint32_t tx_bytes, const std::source_location& where) {
    ex().mbarrier_arrive(bar, count, tx_bytes, where);
}
void mbarrier_wait(std::uint32_t bar, unsigned parity, const std::source_location& where) {
    ex().mbarrier_wait(bar, parity, where);
}
void named_barrier(int id, int count, bool wait, const std::source_location& where) { ex().named_barrier(id, count, wait, where); }
void tma_load(void* dst, const void* map, const std::int32_t* c, int rank, std::uint32_t bar, const std::source_location& where) {
    ex().tma_load(dst, map, c, rank, bar, where);
}

}  // namespace detail
}  // namespace tinyllm::sim
