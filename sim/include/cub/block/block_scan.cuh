// cub/block/block_scan.cuh — tinyllm's simulated GPU: cub::BlockScan.
//
// Stands in for CUB's header of the same name (-DTINYLLM_CUDA=SIM), in the
// CUDA C++ the simulator runs: values into shared TempStorage, a barrier,
// thread 0 writes the running sums, a barrier, every thread reads its own. As
// with CUB, reusing the TempStorage needs a __syncthreads() first.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cuda_runtime.h>

namespace cub {

enum BlockScanAlgorithm { BLOCK_SCAN_RAKING, BLOCK_SCAN_RAKING_MEMOIZE, BLOCK_SCAN_WARP_SCANS };

template <class T, int BlockDimX, BlockScanAlgorithm Algorithm = BLOCK_SCAN_RAKING, int BlockDimY = 1, int BlockDimZ = 1>
class BlockScan {
    static constexpr int threads = BlockDimX * BlockDimY * BlockDimZ;

public:
    struct TempStorage {
        T values[threads];
        T prefix[threads + 1];  // prefix[i] = op over values[0, i); prefix[threads] = the total
    };

    explicit BlockScan(TempStorage& storage) : storage_(storage) {}

    // output = the sum of the inputs of the threads before this one (0 for thread 0).
    void ExclusiveSum(T input, T& output) {
        T total;
        ExclusiveSum(input, output, total);
    }
    void ExclusiveSum(T input, T& output, T& block_aggregate) {
        scan(input, cub::Sum{}, T{});
        output = storage_.prefix[rank()];
        block_aggregate = storage_.prefix[threads];
    }
    void InclusiveSum(T input, T& output) {
        T total;
        InclusiveSum(input, output, total);
    }
    void InclusiveSum(T input, T& output, T& block_aggregate) {
        scan(input, cub::Sum{}, T{});
        output = storage_.prefix[rank() + 1];
        block_aggregate = storage_.prefix[threads];
    }
    template <class Op>
    void ExclusiveScan(T input, T& output, T initial, Op op) {
        scan(input, op, initial);
        output = storage_.prefix[rank()];
    }
    template <class Op>
    void InclusiveScan(T input, T& output, Op op) {
        scan(input, op, T{});
        output = rank() == 0 ? input : op(storage_.prefix[rank()], input);
    }

private:
    TempStorage& storage_;

    static int rank() { return static_cast<int>(threadIdx.x + BlockDimX * (threadIdx.y + BlockDimY * threadIdx.z)); }

    template <class Op>
    void scan(T input, Op op, T initial) {
        storage_.values[rank()] = input;
        __syncthreads();
        if (rank() == 0) {
            T running = initial;
            for (int i = 0; i < threads; ++i) {
                storage_.prefix[i] = running;
                running = op(running, storage_.values[i]);
            }
            storage_.prefix[threads] = running;
        }
        __syncthreads();
    }
};

}  // namespace cub
