// matrix_add.cu — C = A + B for row-major matrices, one thread per element on a 2-D grid of 2-D blocks.
//
// Block (bx, by) of blockDim = (TX, TY) threads covers columns bx*TX .. bx*TX+TX-1 and rows by*TY .. +TY-1:
//     col = blockIdx.x * blockDim.x + threadIdx.x        (x is the fast, contiguous direction)
//     row = blockIdx.y * blockDim.y + threadIdx.y
// and the element lives at offset row * stride + col (stride = elements per row, >= cols, so a view of a
// wider matrix works too; see lesson 08). Neighbouring threads (consecutive threadIdx.x) touch neighbouring
// addresses, so a warp's 32 loads coalesce into few memory transactions. Both coordinates need a bounds guard.
//
// Standalone:   nvcc -O2 -o matrix_add matrix_add.cu && ./matrix_add [rows] [cols]
// From Python:  07_intro_to_cuda.py (defines MATRIX_ADD_NO_MAIN).
#include "cuda_utils.cuh"

__global__ void matrix_add_kernel(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                  int rows, int cols, int stride_a, int stride_b, int stride_c) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row < rows && col < cols) {  // bounds guard in both directions
        c[row * stride_c + col] = a[row * stride_a + col] + b[row * stride_b + col];
    }
}

inline dim3 matrix_add_grid(int rows, int cols, dim3 block) {
    return dim3((cols + block.x - 1) / block.x, (rows + block.y - 1) / block.y);
}

inline void launch_matrix_add(const float* a, const float* b, float* c, int rows, int cols, int stride_a,
                              int stride_b, int stride_c, int block_x, int block_y, cudaStream_t stream = 0) {
    dim3 block(block_x, block_y);
    matrix_add_kernel<<<matrix_add_grid(rows, cols, block), block, 0, stream>>>(a, b, c, rows, cols, stride_a,
                                                                               stride_b, stride_c);
}

// Contiguous matrices (stride = cols), milliseconds per launch.
inline float time_matrix_add(const float* a, const float* b, float* c, int rows, int cols, int block_x, int block_y,
                             int reps, cudaStream_t stream = 0) {
    return time_launches_ms(
        [&] { launch_matrix_add(a, b, c, rows, cols, cols, cols, cols, block_x, block_y, stream); }, reps, stream);
}

#ifndef MATRIX_ADD_NO_MAIN
int main(int argc, char** argv) {
    int rows = argc > 1 ? std::atoi(argv[1]) : 4001;  // not multiples of the 16 x 16 block
    int cols = argc > 2 ? std::atoi(argv[2]) : 4003;
    size_t n = static_cast<size_t>(rows) * cols, bytes = n * sizeof(float);
    float *h_a = static_cast<float*>(std::malloc(bytes)), *h_b = static_cast<float*>(std::malloc(bytes));
    for (size_t i = 0; i < n; ++i) {
        h_a[i] = static_cast<float>(i % 123);
        h_b[i] = static_cast<float>(i % 11);
    }
    float *d_a = to_device(h_a, n), *d_b = to_device(h_b, n), *d_c = nullptr;
    CUDA_CHECK(cudaMalloc(&d_c, bytes));

    float ms = time_matrix_add(d_a, d_b, d_c, rows, cols, 16, 16, 20);
    CUDA_CHECK(cudaGetLastError());
    size_t wrong = count_wrong_sums(d_c, h_a, h_b, n);
    dim3 grid = matrix_add_grid(rows, cols, dim3(16, 16));
    std::printf("%d x %d, grid %u x %u of 16 x 16 blocks: %.4f ms, %.1f GB/s, %zu wrong\n", rows, cols, grid.x,
                grid.y, ms, 3.0 * bytes / ms / 1e6, wrong);

    CUDA_CHECK(cudaFree(d_a));
    CUDA_CHECK(cudaFree(d_b));
    CUDA_CHECK(cudaFree(d_c));
    std::free(h_a);
    std::free(h_b);
    return wrong != 0;
}
#endif
