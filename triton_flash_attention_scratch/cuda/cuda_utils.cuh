// cuda_utils.cuh — shared by vector_add.cu and matrix_add.cu: error checking and timing with CUDA events.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

// Every CUDA runtime call returns an error code; check it. The Python extension (07_intro_to_cuda.py) defines
// CUDA_CHECK as C10_CUDA_CHECK first, which raises a Python exception instead of exiting the process.
#ifndef CUDA_CHECK
#define CUDA_CHECK(call)                                                                         \
    do {                                                                                         \
        cudaError_t err_ = (call);                                                               \
        if (err_ != cudaSuccess) {                                                               \
            std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(err_), __FILE__, \
                         __LINE__);                                                              \
            std::exit(1);                                                                        \
        }                                                                                        \
    } while (0)
#endif

// Milliseconds per call of launch(), measured with CUDA events: timestamps recorded *on the GPU's stream*, so
// the time is the kernels' own, not the host's launch overhead (launches return before the kernel runs).
// One warm-up call first; then `reps` calls between the two events.
template <typename Launch>
float time_launches_ms(Launch launch, int reps, cudaStream_t stream) {
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    launch();
    CUDA_CHECK(cudaEventRecord(start, stream));
    for (int r = 0; r < reps; ++r) launch();
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));  // wait until the GPU has passed the stop event
    float ms = 0.f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    return ms / reps;
}

// Host-side helpers for the standalone programs: a device copy of a host array, and a count of mismatches.
inline float* to_device(const float* host, size_t n) {
    float* dev = nullptr;
    CUDA_CHECK(cudaMalloc(&dev, n * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(dev, host, n * sizeof(float), cudaMemcpyHostToDevice));
    return dev;
}

inline size_t count_wrong_sums(const float* dev_c, const float* a, const float* b, size_t n) {
    float* c = static_cast<float*>(std::malloc(n * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(c, dev_c, n * sizeof(float), cudaMemcpyDeviceToHost));
    size_t wrong = 0;
    for (size_t i = 0; i < n; ++i) wrong += c[i] != a[i] + b[i];
    std::free(c);
    return wrong;
}
