// The box_iou CUDA kernel, shared by the nvcc build (box_iou_cuda.cu launches it with <<<>>>) and
// the CuPy backend (NVRTC compiles it from detkernels/backends/cupy/kernels.cu, instantiated by
// name): one copy of the GPU code. One thread per output element, a block's column boxes staged in
// shared memory. Exactness comes from the compile flags (--fmad=false, IEEE division) of both.
// T: the boxes' dtype (float, double, int32_t, int64_t); the output is iou_out_t<T> (T, or float
// for integers).
#pragma once
#include "ops/box_iou/box_iou.h"

namespace detkernels {

constexpr int kBoxIouTile = 32;  // block = (kBoxIouTile, 8) threads

// Grid: x = column tiles of kBoxIouTile boxes2; y and z stride over rows and batches, so N and B
// are not limited by the 65535-block grid dimensions.
template <typename T, int FMT, int KIND>
__global__ void box_iou_kernel(const T* __restrict__ b1, const T* __restrict__ b2,
                               iou_out_t<T>* __restrict__ out, int64_t B, int64_t N, int64_t M,
                               iou_out_t<T> eps) {
  __shared__ T cols[kBoxIouTile][4];
  __shared__ T col_area[kBoxIouTile];
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kBoxIouTile;
  const int64_t j = j0 + threadIdx.x;
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const T* B1 = b1 + 4 * b * N;
    const T* B2 = b2 + 4 * b * M;
    __syncthreads();  // the previous batch's columns are no longer read
    if (t < kBoxIouTile && j0 + t < M) {
      for (int k = 0; k < 4; ++k) cols[t][k] = B2[4 * (j0 + t) + k];
      col_area[t] = box_area(cols[t], FMT);
    }
    __syncthreads();
    if (j >= M) continue;
    for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; i < N;
         i += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      const T a[4] = {B1[4 * i], B1[4 * i + 1], B1[4 * i + 2], B1[4 * i + 3]};
      out[(b * N + i) * M + j] = pair_iou(a, cols[threadIdx.x], box_area(a, FMT),
                                          col_area[threadIdx.x], FMT, KIND, eps);
    }
  }
}

}  // namespace detkernels
