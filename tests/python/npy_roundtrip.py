#!/usr/bin/env python3
"""Cross-check tinyllm's .npy and .safetensors I/O against NumPy and safetensors.

    npy_roundtrip.py <path to the io_crosscheck program>

1. io_crosscheck writes .npy files of every dtype at ranks 1 to 4 (strided views
   included) and .safetensors files; np.load and safetensors must read exactly
   the expected arrays.
2. NumPy writes .npy files (C order, Fortran order, big-endian, format versions
   2.0 and 3.0) and safetensors a .safetensors file; io_crosscheck reads them and
   checks every element.

Both sides build the expected arrays from one formula (base() here, value_for in
io_crosscheck.cpp). Exit status 0 on success, 1 on a mismatch, 77 (skipped)
when numpy is not importable. Without the safetensors package the .safetensors
checks are skipped and the .npy checks still run.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("npy_roundtrip: numpy is not importable; skipped")
    sys.exit(77)

try:
    import safetensors.numpy
    from safetensors import safe_open
except ImportError:
    safetensors = None

CODES = ["f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1"]
SHAPES = {1: (7,), 2: (3, 4), 3: (2, 3, 4), 4: (2, 3, 4, 5)}


def base(code, shape):
    """Element i (row-major): 0.37 i - 5.25 through float32 for floats, (i + 1) * golden mod 2^64 for integers."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.float64)
    if code == "f8":
        values = 0.37 * i - 5.25
    elif code[0] == "f":
        values = (0.37 * i - 5.25).astype(np.float32).astype("<" + code)
    elif code == "bool":
        values = (np.arange(n) % 3) == 1
    else:
        with np.errstate(over="ignore"):
            wide = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        values = wide.astype(("|" if code[1] == "1" else "<") + code)
    return values.reshape(shape)


def same(got, want, what):
    if got.dtype != want.dtype or got.shape != want.shape:
        raise AssertionError(f"{what}: got {got.dtype} {got.shape}, expected {want.dtype} {want.shape}")
    if got.tobytes() != np.ascontiguousarray(want).tobytes():
        raise AssertionError(f"{what}: the values differ")


def check_cpp_files(d):
    for code in CODES:
        for rank, shape in SHAPES.items():
            same(np.load(os.path.join(d, f"{code}_r{rank}.npy")), base(code, shape), f"{code}_r{rank}.npy")
        same(np.load(os.path.join(d, f"{code}_r2_t.npy")), base(code, (3, 4)).T, f"{code}_r2_t.npy")
        same(np.load(os.path.join(d, f"{code}_r3_w.npy")), base(code, (2, 3, 4))[:, 1:3, :], f"{code}_r3_w.npy")
        same(np.load(os.path.join(d, f"{code}_r4_t.npy")), base(code, (2, 3, 4, 5)).swapaxes(1, 3), f"{code}_r4_t.npy")
    print(f"npy_roundtrip: np.load read {len(CODES) * 7} .npy files from C++ exactly")
    if safetensors is None:
        print("npy_roundtrip: the safetensors package is not importable; .safetensors checks skipped")
        return
    path = os.path.join(d, "cpp.safetensors")
    tensors = safetensors.numpy.load_file(path)
    want = {"f8_r2": base("f8", (3, 4)), "f4_r2": base("f4", (3, 4)), "f2_r3": base("f2", (2, 3, 4)),
            "i8_r1": base("i8", (7,)), "i4_r4": base("i4", (2, 3, 4, 5)), "i2_r2": base("i2", (3, 4)),
            "i1_r1": base("i1", (7,)), "u1_r3": base("u1", (2, 3, 4)), "bool_r1": base("bool", (7,)),
            "f4_r2_t": base("f4", (3, 4)).T}
    if sorted(tensors) != sorted(want):
        raise AssertionError(f"cpp.safetensors holds {sorted(tensors)}, expected {sorted(want)}")
    for name, array in want.items():
        same(tensors[name], array, f"cpp.safetensors:{name}")
    with safe_open(path, framework="np") as f:
        if f.metadata() != {"format": "pt", "origin": "tinyllm"}:
            raise AssertionError(f"cpp.safetensors metadata is {f.metadata()}")
    # bfloat16 (numpy has none): parse the file by hand and widen the 16 bits to float32.
    with open(os.path.join(d, "cpp_bf16.safetensors"), "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    if n % 8 != 0:
        raise AssertionError(f"cpp_bf16.safetensors: header length {n} is not a multiple of 8")
    entry = json.loads(data[8:8 + n])["bf16_r2"]
    begin, end = entry["data_offsets"]
    bits = np.frombuffer(data[8 + n + begin:8 + n + end], dtype="<u2").astype(np.uint32) << 16
    got = bits.view(np.float32).reshape(entry["shape"])
    f32 = base("f4", (3, 4))
    # Round to nearest even to bfloat16 (no NaN or overflow here).
    u = f32.view(np.uint32)
    want_bf16 = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32)
    if entry["dtype"] != "BF16" or not np.array_equal(got, want_bf16):
        raise AssertionError("cpp_bf16.safetensors: the bfloat16 values differ")
    print("npy_roundtrip: safetensors read the C++ .safetensors files exactly (bfloat16 by hand)")


def write_python_files(d):
    for code in CODES:
        for rank, shape in SHAPES.items():
            np.save(os.path.join(d, f"py_{code}_r{rank}.npy"), base(code, shape))
        np.save(os.path.join(d, f"py_{code}_r2_fortran.npy"), np.asfortranarray(base(code, (3, 4))))
        big = base(code, (2, 3, 4))
        np.save(os.path.join(d, f"py_{code}_r3_big.npy"), big.astype(big.dtype.newbyteorder(">")))
    for version in (2, 3):
        with open(os.path.join(d, f"py_f4_v{version}.npy"), "wb") as f:
            np.lib.format.write_array(f, base("f4", (3, 4)), version=(version, 0))
    if safetensors is not None:
        safetensors.numpy.save_file(
            {"f4_r2": base("f4", (3, 4)), "f8_r1": base("f8", (7,)), "f2_r3": base("f2", (2, 3, 4)),
             "i8_r4": base("i8", (2, 3, 4, 5)), "i4_r1": base("i4", (7,)), "u1_r2": base("u1", (3, 4)),
             "bool_r1": base("bool", (7,))},
            os.path.join(d, "py.safetensors"), metadata={"format": "np"})


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    program = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="tinyllm_npy_roundtrip_") as d:
        subprocess.run([program, "write", d], check=True)
        try:
            check_cpp_files(d)
        except AssertionError as e:
            print(f"npy_roundtrip: FAILED (C++ -> Python): {e}")
            return 1
        write_python_files(d)
        result = subprocess.run([program, "check", d])
        if result.returncode != 0:
            print("npy_roundtrip: FAILED (Python -> C++)")
            return 1
    print("npy_roundtrip: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
