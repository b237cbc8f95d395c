// sim/src/fiber.cpp — the fiber switch of tinyllm/sim/fiber.hpp.
//
// On x86-64 the switch is fifteen instructions of assembly (below). Elsewhere the
// portable <ucontext.h> route is used: correct, but each switch is a system call.
#include <tinyllm/sim/fiber.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#  define TINYLLM_SIM_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define TINYLLM_SIM_ASAN 1
#  endif
#endif
#if defined(__SANITIZE_THREAD__)
#  define TINYLLM_SIM_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define TINYLLM_SIM_TSAN 1
#  endif
#endif
#if TINYLLM_SIM_ASAN
#  include <sanitizer/common_interface_defs.h>
#endif
#if TINYLLM_SIM_TSAN
#  include <sanitizer/tsan_interface.h>
#endif

#if defined(__x86_64__) && !defined(TINYLLM_SIM_UCONTEXT)
// tinyllm_sim_switch(void** save_sp, void* new_sp): push the callee-saved
// registers (System V ABI: rbp, rbx, r12-r15), save rsp into *save_sp, load
// new_sp, and pop the same set from there. The `ret` then continues wherever
// the resumed fiber called the switch from.
// The ABI also counts the SSE and x87 control words (rounding mode, exception
// masks) as callee-saved, and general-purpose context switches save them too.
// Here every fiber shares the OS thread's: a CUDA kernel has no floating-point
// environment to change (a GPU instruction names its own rounding), and no
// code in the simulator changes it while a kernel runs. Saving and restoring
// them (stmxcsr/fnstcw, ldmxcsr/fldcw) took four fifths of the switch's time
// in a profile of the simulated model tests.
// A new fiber's stack is prepared (fiber::fiber) so that its first `ret` lands
// in tinyllm_sim_trampoline with r12 = the fiber and r13 = its start function.
asm(R"(
    .text
    .p2align 4
    .globl tinyllm_sim_switch
    .hidden tinyllm_sim_switch
    .type tinyllm_sim_switch, @function
tinyllm_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size tinyllm_sim_switch, .-tinyllm_sim_switch

    .p2align 4
    .globl tinyllm_sim_trampoline
    .hidden tinyllm_sim_trampoline
    .type tinyllm_sim_trampoline, @function
tinyllm_sim_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size tinyllm_sim_trampoline, .-tinyllm_sim_trampoline
)");
extern "C" void tinyllm_sim_switch(void** save_sp, void* new_sp);
extern "C" void tinyllm_sim_trampoline();
#else
#  include <ucontext.h>
#  define TINYLLM_SIM_USE_UCONTEXT 1
#endif

namespace tinyllm::sim {
namespace {

thread_local fiber* switching_from = nullptr;  // the fiber that is switching away

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "tinyllm simulator: %s\n", what);
    std::abort();
}

}  // namespace

// Everything the switch needs from a fiber, friend-accessible in one place.
struct fiber_access {
    static void arrived(fiber& self) {
        // Runs on `self`'s stack right after a switch into it.
#if TINYLLM_SIM_ASAN
        const void* from_bottom = nullptr;
        std::size_t from_size = 0;
        __sanitizer_finish_switch_fiber(self.asan_fake_stack_, &from_bottom, &from_size);
        if (switching_from && !switching_from->stack_) {  // an OS thread's stack: learn its bounds
            switching_from->asan_bottom_ = from_bottom;
            switching_from->asan_size_ = from_size;
        }
#else
        (void)self;
#endif
    }
    static void start(fiber* self) {
        arrived(*self);
        self->entry_(self->arg_);
        die("a fiber's entry function returned");
    }
};

namespace {
#if TINYLLM_SIM_USE_UCONTEXT
struct ucontext_fiber {
    ucontext_t context;
};
thread_local fiber* starting = nullptr;
void ucontext_entry() { fiber_access::start(starting); }
#endif
}  // namespace

fiber::fiber(entry_fn entry, void* arg, std::size_t stack_bytes) {
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    stack_bytes_ = (stack_bytes + page - 1) / page * page;
    // One guard page below the stack: an overflow faults instead of corrupting memory.
    void* region = mmap(nullptr, stack_bytes_ + page, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (region == MAP_FAILED) die("cannot map a fiber stack (mmap failed)");
    if (mprotect(region, page, PROT_NONE) != 0) die("cannot protect a fiber stack's guard page");
    stack_ = region;
    char* bottom = static_cast<char*>(region) + page;
    char* top = bottom + stack_bytes_;
    asan_bottom_ = bottom;
    asan_size_ = stack_bytes_;
#if TINYLLM_SIM_TSAN
    tsan_fiber_ = __tsan_create_fiber(0);
    tsan_owned_ = true;
#endif
    entry_ = entry;
    arg_ = arg;
#if TINYLLM_SIM_USE_UCONTEXT
    auto* uc = new ucontext_fiber;
    getcontext(&uc->context);
    uc->context.uc_stack.ss_sp = bottom;
    uc->context.uc_stack.ss_size = static_cast<std::size_t>(top - bottom);
    uc->context.uc_link = nullptr;
    makecontext(&uc->context, ucontext_entry, 0);
    sp_ = uc;
#else
    // Frame popped by the first switch into this fiber (see the assembly):
    //   [sp+0] r15  [sp+8] r14  [sp+16] r13 = start  [sp+24] r12 = this
    //   [sp+32] rbx  [sp+40] rbp  [sp+48] return address = trampoline
    // top is 16-byte aligned, so after the `ret` rsp = top - 16 is too: the
    // trampoline's `call` then happens with rsp % 16 == 0, as the ABI requires.
    top -= 16;
    auto* frame = reinterpret_cast<std::uint64_t*>(top - 56);
    frame[0] = 0;  // r15
    frame[1] = 0;  // r14
    frame[2] = reinterpret_cast<std::uint64_t>(&fiber_access::start);  // r13
    frame[3] = reinterpret_cast<std::uint64_t>(this);                  // r12
    frame[4] = 0;  // rbx
    frame[5] = 0;  // rbp
    frame[6] = reinterpret_cast<std::uint64_t>(&tinyllm_sim_trampoline);
    sp_ = frame;
#endif
}

fiber::~fiber() {
#if TINYLLM_SIM_TSAN
    if (tsan_owned_) __tsan_destroy_fiber(tsan_fiber_);
#endif
#if TINYLLM_SIM_USE_UCONTEXT
    delete static_cast<ucontext_fiber*>(sp_);
#endif
    if (stack_) munmap(stack_, stack_bytes_ + static_cast<std::size_t>(sysconf(_SC_PAGESIZE)));
}

void fiber::set_name(const char* name) {
#if TINYLLM_SIM_TSAN
    if (tsan_fiber_) __tsan_set_fiber_name(tsan_fiber_, name);
#else
    (void)name;
#endif
}

void switch_fiber(fiber& from, fiber& to) {
#if TINYLLM_SIM_TSAN
    if (!from.tsan_fiber_) from.tsan_fiber_ = __tsan_get_current_fiber();
    // No synchronisation implied by the switch itself: two CUDA threads are
    // ordered only by the barriers the simulator announces to ThreadSanitizer.
    __tsan_switch_to_fiber(to.tsan_fiber_, __tsan_switch_to_fiber_no_sync);
#endif
#if TINYLLM_SIM_ASAN
    __sanitizer_start_switch_fiber(&from.asan_fake_stack_, to.asan_bottom_, to.asan_size_);
#endif
    switching_from = &from;
#if TINYLLM_SIM_USE_UCONTEXT
    if (!from.sp_) from.sp_ = new ucontext_fiber;  // an OS thread's first switch
    if (!to.started_) starting = &to;
    to.started_ = true;
    if (swapcontext(&static_cast<ucontext_fiber*>(from.sp_)->context, &static_cast<ucontext_fiber*>(to.sp_)->context) != 0)
        die("swapcontext failed");
#else
    to.started_ = true;
    tinyllm_sim_switch(&from.sp_, to.sp_);
#endif
    fiber_access::arrived(from);
}

}  // namespace tinyllm::sim
