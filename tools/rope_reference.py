#!/usr/bin/env python3
"""Independent float64 reference values for tests/test_positional.cpp.

Computes RoPE inverse frequencies with Llama 3.1's scaling (the rule of
transformers' _compute_llama3_parameters, re-derived here in plain Python
float64, no torch) and prints them as C++ constants. Run:

    python3 tools/rope_reference.py

and paste the output into the test. Config: theta = 500000, rotary_dim = 128,
factor = 8, low_freq_factor = 1, high_freq_factor = 4,
original_max_position_embeddings = 8192 (Llama 3.1 8B).
"""
import math

theta, dim = 500000.0, 128
factor, low, high, original = 8.0, 1.0, 4.0, 8192.0


def llama3_inv_freq(i):
    w = 1.0 / theta ** (2 * i / dim)
    wavelength = 2 * math.pi / w
    if wavelength < original / high:          # fast: keep
        return w, "keep"
    if wavelength > original / low:           # slow: divide by factor
        return w / factor, "divide"
    s = (original / wavelength - low) / (high - low)  # medium: blend
    return (1 - s) * w / factor + s * w, "blend"


for i in (0, 10, 28, 29, 31, 34, 35, 50, 63):
    w, regime = llama3_inv_freq(i)
    print(f"    {{{i}, {w:.17g}}},  // {regime}")
