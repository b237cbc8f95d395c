"""Shared timing for the PyTorch baselines (bench/baselines/*.py).

Each baseline times what a user would otherwise call (PyTorch on the same GPU)
on the same shapes as a `tinyllm bench` row, the same way tinyllm's CUDA
harness does: warm-up runs, then for each timed run an L2 flush (reading a
buffer twice the L2 size, or writing it with --l2-flush write as runs A to E
did: cuda/tinyllm/cuda/timing.cuh says why reading is the default) followed by
CUDA events around the work alone; the median is reported. Results are written
as JSON in Google Benchmark's layout, named "component/pytorch_<what>/<shape>"
so tools/bench-report can put them in the same table as tinyllm's rows.
"""
import argparse
import json
import os
import statistics
import sys

L2_FLUSH_MODES = ("read", "write", "none")


def l2_flush_mode():
    """TINYLLM_BENCH_L2_FLUSH (read, write or none), else read: the same variable tinyllm bench reads."""
    mode = os.environ.get("TINYLLM_BENCH_L2_FLUSH") or "read"
    if mode not in L2_FLUSH_MODES:
        sys.exit(f"TINYLLM_BENCH_L2_FLUSH must be read, write or none; got {mode!r}")
    return mode


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", help="write results to this file (Google Benchmark layout)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--l2-flush", choices=L2_FLUSH_MODES,
                   help="how the L2 is emptied before each timed run (default: TINYLLM_BENCH_L2_FLUSH, else read)")
    args = p.parse_args()
    if args.l2_flush:
        os.environ["TINYLLM_BENCH_L2_FLUSH"] = args.l2_flush
    return args


def require_cuda_torch():
    """Import torch and check for a GPU; exit 0 with a note when there is none."""
    try:
        import torch
    except ImportError:
        print("torch is not importable: baseline skipped")
        sys.exit(0)
    if not torch.cuda.is_available():
        print("torch has no CUDA device: baseline skipped")
        sys.exit(0)
    return torch


def require_torch():
    """Import torch (the CPU baselines need no GPU); exit 0 with a note when it is missing."""
    try:
        import torch
    except ImportError:
        print("torch is not importable: baseline skipped")
        sys.exit(0)
    return torch


def time_cpu(fn, repeats=20, warmup=3):
    """Median, min and max microseconds of fn() on the CPU (wall clock; no cache flush)."""
    import time
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times), min(times), max(times)


def time_cuda(torch, fn, repeats=20, warmup=3):
    """Median, min and max microseconds of fn() on the current CUDA stream."""
    mode = l2_flush_mode()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.full((2 * max(l2, 1 << 20) // 4,), 0x5A5A5A5A, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        if mode == "read":
            flush.sum()  # reads the buffer: evicts the inputs and leaves clean lines
        elif mode == "write":
            flush.fill_(0x5A5A5A5A)  # evicts them too, but leaves dirty lines for fn() to write back
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times), min(times), max(times)


class Results:
    def __init__(self, torch, device=None, timer="cuda events, median"):
        """device: the name written to the JSON (default: the CUDA device's)."""
        self.torch = torch
        self.rows = []
        self.device = device
        self.timer = timer

    def add(self, name, timing, bytes=0.0, flops=0.0, extra=None, note=""):
        """One row; `extra` adds fields to it (e.g. tokens_per_second), `note` to the printed line."""
        median, lo, hi = timing
        row = {"name": name, "run_type": "iteration", "iterations": 0, "real_time": median,
               "cpu_time": median, "time_unit": "us", "min_time_us": lo, "max_time_us": hi}
        if bytes:
            row["bytes_per_second"] = bytes / (median * 1e-6)
        if flops:
            row["flops_per_second"] = flops / (median * 1e-6)
        row.update(extra or {})
        self.rows.append(row)
        rate = f"{bytes / (median * 1e3):10.1f} GB/s" if bytes else f"{flops / (median * 1e6):10.2f} TFLOP/s"
        print(f"{name:56s} {median:12.2f} us {rate}{note}", flush=True)
        return row

    def write(self, path):
        if not path:
            return
        context = {"library": "pytorch " + self.torch.__version__, "timer": self.timer,
                   "device": self.device or self.torch.cuda.get_device_name(0), "l2_flush": l2_flush_mode()}
        with open(path, "w") as f:
            json.dump({"context": context, "benchmarks": self.rows}, f, indent=1)


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), for the JSON's device field."""
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"

