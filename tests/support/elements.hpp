// tests/support/elements.hpp — float test data on an element type's grid, and to and from
// the device as that type. A test draws float values, rounds them to T (bfloat16, half,
// float) so that the CPU reference sees exactly the GPU's inputs, uploads them as T, and
// reads T results back as floats for the comparison.
#pragma once

#include <tinyllm/cuda/device_buffer.cuh>
#include <tinyllm/dtype.hpp>

#include <cstddef>
#include <vector>

namespace tinyllm_test {

// Every value rounded to T's nearest value and back to float, in place.
template <class T>
void round_to(std::vector<float>& v) {
    for (auto& x : v) x = tinyllm::to_float(tinyllm::from_float<T>(x));
}

// The same, returning the rounded copy.
template <class T>
std::vector<float> on_grid(std::vector<float> v) {
    round_to<T>(v);
    return v;
}

// The values as T (each rounded to T's nearest value).
template <class T>
std::vector<T> as_type(const std::vector<float>& v) {
    std::vector<T> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = tinyllm::from_float<T>(v[i]);
    return out;
}

// Values of T as floats (exact: every T value is a float).
template <class T>
std::vector<float> as_floats(const std::vector<T>& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = tinyllm::to_float(v[i]);
    return out;
}

// The values as T in a new device buffer.
template <class T>
tinyllm::cuda::device_buffer<T> upload(const std::vector<float>& v) {
    return tinyllm::cuda::to_device(as_type<T>(v));
}

// A device buffer of T, as floats on the host.
template <class T>
std::vector<float> download(const tinyllm::cuda::device_buffer<T>& b) {
    return as_floats(tinyllm::cuda::to_host(b));
}

}  // namespace tinyllm_test
