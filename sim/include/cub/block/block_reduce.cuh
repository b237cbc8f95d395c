// cub/block/block_reduce.cuh — tinyllm's simulated GPU: cub::BlockReduce.
//
// Stands in for CUB's header of the same name (-DTINYLLM_CUDA=SIM), written in
// the CUDA C++ the simulator runs: every thread stores its value in the
// shared TempStorage, a barrier, then thread 0 combines them in thread order.
// As with CUB, only thread 0's result is defined (the others get their own
// input back), and reusing the TempStorage needs a __syncthreads() first —
// the stand-in has no barrier after the combine, so a missing one is a race
// the race check reports.
#pragma once

#include <cuda_runtime.h>

namespace cub {

struct Sum {
    template <class T>
    T operator()(const T& a, const T& b) const {
        return a + b;
    }
};
struct Max {
    template <class T>
    T operator()(const T& a, const T& b) const {
        return a < b ? b : a;
    }
};
struct Min {
    template <class T>
    T operator()(const T& a, const T& b) const {
        return b < a ? b : a;
    }
};

enum BlockReduceAlgorithm { BLOCK_REDUCE_RAKING, BLOCK_REDUCE_WARP_REDUCTIONS, BLOCK_REDUCE_RAKING_COMMUTATIVE_ONLY };

template <class T, int BlockDimX, BlockReduceAlgorithm Algorithm = BLOCK_REDUCE_WARP_REDUCTIONS, int BlockDimY = 1,
          int BlockDimZ = 1>
class BlockReduce {
    static constexpr int threads = BlockDimX * BlockDimY * BlockDimZ;

public:
    struct TempStorage {
        T values[threads];
    };

    explicit BlockReduce(TempStorage& storage) : storage_(storage) {}

    template <class Op>
    T Reduce(T input, Op op) {
        return Reduce(input, op, threads);
    }
    // Only the first num_valid threads' inputs take part.
    template <class Op>
    T Reduce(T input, Op op, int num_valid) {
        const int t = static_cast<int>(threadIdx.x + BlockDimX * (threadIdx.y + BlockDimY * threadIdx.z));
        storage_.values[t] = input;
        __syncthreads();
        if (t != 0) return input;
        T acc = storage_.values[0];
        for (int i = 1; i < num_valid && i < threads; ++i) acc = op(acc, storage_.values[i]);
        return acc;
    }
    T Sum(T input) { return Reduce(input, cub::Sum{}); }
    T Sum(T input, int num_valid) { return Reduce(input, cub::Sum{}, num_valid); }

private:
    TempStorage& storage_;
};

}  // namespace cub
