// tinyllm/sim/fiber.hpp — the simulator's fibers: many call stacks on one OS
// thread, switched by hand. Stands in for the GPU's hardware thread contexts.
//
// A GPU keeps every resident thread's registers on chip and switches between
// warps every cycle at no cost. The simulator runs each CUDA thread of a block
// as a fiber — a function with its own stack that can stop in the middle
// (at __syncthreads, at a shuffle) and be resumed later. Switching fibers
// saves the callee-saved registers on the old stack, stores its stack
// pointer, loads the new one and restores the same registers from there: a
// handful of instructions (sim/src/fiber.cpp; the floating-point control
// words stay the OS thread's, shared by every fiber, as explained there),
// about 20 times cheaper than glibc's swapcontext, which also makes a system
// call to save the signal mask (docs/simulator.md, Measured). `tinyllm bench sim` measures it.
//
// Under AddressSanitizer and ThreadSanitizer every switch is announced to the
// sanitizer (the __sanitizer_*_switch_fiber and __tsan_*_fiber interfaces),
// so both keep working across the stack changes.
#pragma once

#include <cstddef>

namespace tinyllm::sim {

class fiber {
public:
    using entry_fn = void (*)(void* arg);

    // The fiber of the calling OS thread itself (its own stack).
    fiber() = default;
    // A new fiber that will call entry(arg) on a stack of `stack_bytes` when first
    // switched to. `entry` must never return: it switches away for the last time.
    fiber(entry_fn entry, void* arg, std::size_t stack_bytes);
    ~fiber();
    fiber(const fiber&) = delete;
    fiber& operator=(const fiber&) = delete;

    // Suspend `from` (the running fiber) and resume `to`. Returns when some
    // fiber switches back to `from`.
    friend void switch_fiber(fiber& from, fiber& to);

    // Name shown by ThreadSanitizer's reports for this fiber.
    void set_name(const char* name);
    // ThreadSanitizer's identity for this fiber (null where it is not on).
    void* tsan_identity() const { return tsan_fiber_; }

private:
    void* sp_ = nullptr;              // saved stack pointer while suspended
    void* stack_ = nullptr;           // mmap'ed region (guard page + stack), null for an OS thread
    std::size_t stack_bytes_ = 0;     // usable stack
    void* asan_fake_stack_ = nullptr; // AddressSanitizer's bookkeeping while suspended
    const void* asan_bottom_ = nullptr;
    std::size_t asan_size_ = 0;
    void* tsan_fiber_ = nullptr;      // ThreadSanitizer's fiber (null: the thread's own)
    bool tsan_owned_ = false;
    entry_fn entry_ = nullptr;        // what a new fiber runs
    void* arg_ = nullptr;
    bool started_ = false;
    friend struct fiber_access;
};

// Suspend `from` (the running fiber) and resume `to`.
void switch_fiber(fiber& from, fiber& to);

}  // namespace tinyllm::sim
