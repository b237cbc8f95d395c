// A CUDA program outside tinyllm using tinyllm::cuda (compiles anywhere; runs where a GPU is).
#include <tinyllm/cuda/tinyllm.cuh>

#include <cstdio>

int main() {
    if (tinyllm::cuda::device_count() == 0) {
        std::printf("consumer_cuda: built against tinyllm::cuda; no GPU to run on\n");
        return 0;
    }
    tinyllm::cuda::device_buffer<float> d(1024);
    tinyllm::cuda::fill_uniform(d.view(tinyllm::extents<1>{1024}), 3);
    std::printf("consumer_cuda: first value %f\n", static_cast<double>(tinyllm::cuda::to_host(d)[0]));
    return 0;
}
