// tinyllm/cuda/timeline.cuh — where a sequence of launches spends its time, one
// kernel at a time, measured with CUDA events: a profile that needs no profiler.
//
//     tinyllm::cuda::launch_timeline timeline;      // records this host thread's launches
//     model.decode_step(session, ids);              // ... any launches, captured ones too
//     cudaDeviceSynchronize();
//     for (const auto& g : timeline.groups()) ...   // time per kernel name
//
// How. While a launch_timeline exists, every launch() and launch_chained()
// (launch.cuh) made on its host thread, and every cuBLAS product tinyllm calls,
// is bracketed by two CUDA events recorded on the launch's stream: `start`
// before it, `stop` after. After the work has finished, stop - start is the
// time the stream spent on that launch: the kernel itself and the GPU's cost of
// starting it. The gaps between one launch's stop and the next one's start are
// the rest — copies, host work the stream waited for, event overhead.
//
// Launches made while a stream is being captured into a CUDA graph put their
// events into the graph as event-record nodes (cudaEventRecordExternal: a plain
// record in a capture only marks a point for other captured streams and is never
// recorded when the graph runs), so every replay of the graph records them
// again: spans(only_captured) then times the nodes of the graph's latest replay,
// which is how `tinyllm bench model_breakdown` splits a decode step from a graph
// into its kernels. Two limits: the event nodes sit between kernel nodes, so a
// programmatic (PDL) edge cannot be captured through them (time a step with
// programmatic launch off), and they add a little time of their own to each
// node. Not yet run on a GPU: the simulated GPU runs it in CI.
//
// Names come from cudaFuncGetName, demangled and without tinyllm's namespaces
// ("pair_gemv_kernel<bfloat16, 8, 1, swiglu_gemv_epilogue<bfloat16>>"); a library
// call is named by its label ("cublasGemmEx").
//
// One timeline records at a time per host thread; a second one created while
// the first exists records instead of it until it is destroyed. The events are
// destroyed with the timeline, so a graph captured under it must not be
// replayed after it is gone (its event nodes would name freed events).
#pragma once

#include <tinyllm/cuda/check.cuh>
#include <tinyllm/cuda/launch.cuh>
#include <tinyllm/error.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cxxabi.h>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace tinyllm::cuda {

namespace detail {
// "void tinyllm::cuda::detail::f<tinyllm::bfloat16, 8>(args)" (or its mangled
// form) as "f<bfloat16, 8>": demangled, without the return type, the
// parameter list and tinyllm's namespaces.
inline std::string short_kernel_name(const char* raw) {
    std::string name = raw ? raw : "?";
    if (name.rfind("_Z", 0) == 0) {
        int status = 0;
        char* demangled = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
        if (status == 0 && demangled) name = demangled;
        std::free(demangled);
    }
    if (name.rfind("void ", 0) == 0) name.erase(0, 5);
    for (std::size_t at = name.find("(anonymous namespace)::"); at != std::string::npos;
         at = name.find("(anonymous namespace)::", at))
        name.erase(at, 23);
    // The parameter list: the last '(' at template depth 0.
    int depth = 0;
    for (std::size_t i = 0; i < name.size(); ++i) {
        if (name[i] == '<') ++depth;
        else if (name[i] == '>') --depth;
        else if (name[i] == '(' && depth == 0) {
            name.erase(i);
            break;
        }
    }
    for (std::string_view prefix : {"tinyllm::cuda::detail::", "tinyllm::cuda::", "tinyllm::detail::", "tinyllm::"}) {
        for (std::size_t at = name.find(prefix); at != std::string::npos; at = name.find(prefix, at))
            name.erase(at, prefix.size());
    }
    return name;
}
}  // namespace detail

class launch_timeline final : public detail::launch_observer {
public:
    // One launch or library call, after the work has finished.
    struct span {
        std::string name;
        double us = 0;  // stop - start on its stream
        bool captured = false;  // recorded by a graph's event nodes (see the top)
    };
    // Spans of one name: how many, and their total time.
    struct group {
        std::string name;
        int count = 0;
        double us = 0;
    };

    launch_timeline() : previous_(detail::current_launch_observer()) {
        make_spare(512);
        detail::current_launch_observer() = this;
    }
    ~launch_timeline() {
        detail::current_launch_observer() = previous_;
        for (const record& r : records_) {
            (void)cudaEventDestroy(r.start);
            (void)cudaEventDestroy(r.stop);
        }
        for (cudaEvent_t e : spare_) (void)cudaEventDestroy(e);
    }
    launch_timeline(const launch_timeline&) = delete;
    launch_timeline& operator=(const launch_timeline&) = delete;

    // Every recorded launch, in launch order (only_captured: those inside a
    // graph capture). Call it once the recorded work has finished.
    std::vector<span> spans(bool only_captured = false) const {
        std::vector<span> out;
        for (const record& r : records_) {
            if (only_captured && !r.captured) continue;
            float ms = 0.0f;
            TINYLLM_CUDA_CHECK(cudaEventElapsedTime(&ms, r.start, r.stop));
            out.push_back({name_of(r), 1e3 * ms, r.captured});
        }
        return out;
    }
    // From the first such launch's start to the last one's stop.
    double elapsed_us(bool only_captured = false) const {
        const record* first = nullptr;
        const record* last = nullptr;
        for (const record& r : records_) {
            if (only_captured && !r.captured) continue;
            if (!first) first = &r;
            last = &r;
        }
        if (!first) return 0.0;
        float ms = 0.0f;
        TINYLLM_CUDA_CHECK(cudaEventElapsedTime(&ms, first->start, last->stop));
        return 1e3 * ms;
    }
    // spans() summed by name, the most time first.
    std::vector<group> groups(bool only_captured = false) const {
        std::map<std::string, group> by_name;
        for (const span& s : spans(only_captured)) {
            group& g = by_name[s.name];
            g.name = s.name;
            ++g.count;
            g.us += s.us;
        }
        std::vector<group> out;
        for (auto& [name, g] : by_name) out.push_back(g);
        std::stable_sort(out.begin(), out.end(), [](const group& a, const group& b) { return a.us > b.us; });
        return out;
    }
    std::size_t size() const { return records_.size(); }

    // launch_observer (launch.cuh): called around each launch on this thread.
    void before(const void* kernel, const char* label, cudaStream_t stream) override {
        record r{kernel, label, nullptr, nullptr, false};
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {  // the legacy stream during a capture
            (void)cudaGetLastError();
            capture = cudaStreamCaptureStatusNone;
        }
        r.captured = capture != cudaStreamCaptureStatusNone;
        // Events are made ahead, outside captures (a capture may refuse calls that are
        // not stream work): 256 pairs at the start, topped up to 256 whenever fewer than
        // 128 are left and no capture is running; a capture of more launches makes its own.
        if (!r.captured && spare_.size() < 256) make_spare(512);
        if (spare_.size() < 2) make_spare(2);
        r.start = spare_.back();
        spare_.pop_back();
        r.stop = spare_.back();
        spare_.pop_back();
        // In a capture a plain record only marks a point for other captured streams;
        // an external one is an event-record node, recorded at every replay.
        TINYLLM_CUDA_CHECK(cudaEventRecordWithFlags(r.start, stream, r.captured ? cudaEventRecordExternal : 0u));
        records_.push_back(r);
        open_.push_back(records_.size() - 1);
    }
    void after(cudaStream_t stream) override {
        TINYLLM_EXPECT(!open_.empty(), "launch_timeline: a launch ended that had not begun");
        const record& r = records_[open_.back()];
        open_.pop_back();
        TINYLLM_CUDA_CHECK(cudaEventRecordWithFlags(r.stop, stream, r.captured ? cudaEventRecordExternal : 0u));
    }

private:
    struct record {
        const void* kernel;  // null: a library call, named by label
        const char* label;
        cudaEvent_t start, stop;
        bool captured;
    };
    static std::string name_of(const record& r) {
        if (!r.kernel) return r.label ? r.label : "?";
        const char* raw = nullptr;
        if (cudaFuncGetName(&raw, r.kernel) != cudaSuccess) {
            (void)cudaGetLastError();
            return "kernel";
        }
        return detail::short_kernel_name(raw);
    }

    void make_spare(std::size_t up_to) {
        while (spare_.size() < up_to) {
            cudaEvent_t e = nullptr;
            TINYLLM_CUDA_CHECK(cudaEventCreate(&e));
            spare_.push_back(e);
        }
    }

    launch_observer* previous_;
    std::vector<cudaEvent_t> spare_;  // created, not yet used
    std::vector<record> records_;
    std::vector<std::size_t> open_;  // records begun and not yet ended (nested library calls)
};

}  // namespace tinyllm::cuda
