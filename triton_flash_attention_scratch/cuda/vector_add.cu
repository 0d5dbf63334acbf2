// vector_add.cu — the "hello world" of CUDA: c[i] = a[i] + b[i], one GPU thread per element.
//
// A kernel launch starts a *grid* of *blocks*; every block has blockDim.x threads. Thread t of block b
// handles element i = b * blockDim.x + t. Because n is rarely a multiple of the block size, the grid is
// rounded up (ceil(n / threads)) and the surplus threads of the last block must do nothing: the bounds guard.
//
// Standalone:   nvcc -O2 -o vector_add vector_add.cu && ./vector_add [n] [threads_per_block]
// From Python:  triton_flash_attention_scratch/07_intro_to_cuda.py compiles this file with
//               torch.utils.cpp_extension.load_inline (it defines VECTOR_ADD_NO_MAIN to drop main()).
#include "cuda_utils.cuh"

__global__ void vector_add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                  float* __restrict__ c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;  // global index of this thread
    if (i < n) {                                    // bounds guard: the last block may overhang the data
        c[i] = a[i] + b[i];
    }
}

// Grid size: enough blocks to cover n elements, rounded up.
inline int vector_add_num_blocks(int n, int threads_per_block) {
    return (n + threads_per_block - 1) / threads_per_block;
}

inline void launch_vector_add(const float* a, const float* b, float* c, int n, int threads_per_block,
                              cudaStream_t stream = 0) {
    int blocks = vector_add_num_blocks(n, threads_per_block);
    vector_add_kernel<<<blocks, threads_per_block, 0, stream>>>(a, b, c, n);
}

inline float time_vector_add(const float* a, const float* b, float* c, int n, int threads_per_block, int reps,
                             cudaStream_t stream = 0) {
    return time_launches_ms([&] { launch_vector_add(a, b, c, n, threads_per_block, stream); }, reps, stream);
}

#ifndef VECTOR_ADD_NO_MAIN
int main(int argc, char** argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : (1 << 24) + 3;  // deliberately not a multiple of the block
    int threads = argc > 2 ? std::atoi(argv[2]) : 256;
    size_t bytes = static_cast<size_t>(n) * sizeof(float);
    float *h_a = static_cast<float*>(std::malloc(bytes)), *h_b = static_cast<float*>(std::malloc(bytes));
    for (int i = 0; i < n; ++i) {
        h_a[i] = static_cast<float>(i % 1000);
        h_b[i] = 2.0f * static_cast<float>(i % 7);
    }
    float *d_a = to_device(h_a, n), *d_b = to_device(h_b, n), *d_c = nullptr;  // copies in GPU DRAM
    CUDA_CHECK(cudaMalloc(&d_c, bytes));

    float ms = time_vector_add(d_a, d_b, d_c, n, threads, 20);
    CUDA_CHECK(cudaGetLastError());  // a bad launch configuration shows up here
    size_t wrong = count_wrong_sums(d_c, h_a, h_b, n);
    std::printf("n=%d, %d blocks x %d threads: %.4f ms, %.1f GB/s (2 reads + 1 write per element), %zu wrong\n", n,
                vector_add_num_blocks(n, threads), threads, ms, 3.0 * bytes / ms / 1e6, wrong);

    CUDA_CHECK(cudaFree(d_a));
    CUDA_CHECK(cudaFree(d_b));
    CUDA_CHECK(cudaFree(d_c));
    std::free(h_a);
    std::free(h_b);
    return wrong != 0;
}
#endif
