// CUDA loops over box_iou.h: one thread per output element, a block's column boxes staged in
// shared memory. Exactness comes from the build (--fmad=false, IEEE division): the arithmetic is
// the same header the CPU kernel runs.
#include <algorithm>
#include <stdexcept>

#include "common/cuda_check.h"
#include "ops/box_iou/box_iou.h"

namespace detkernels {
namespace {

constexpr int kTile = 32;

// Grid: x = column tiles of kTile boxes2; y and z stride over rows and batches, so N and B are
// not limited by the 65535-block grid dimensions.
template <typename T, int FMT, int KIND>
__global__ void box_iou_kernel(const T* __restrict__ b1, const T* __restrict__ b2,
                               T* __restrict__ out, int64_t B, int64_t N, int64_t M, T eps) {
  __shared__ T cols[kTile][4];
  __shared__ T col_area[kTile];
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t j = j0 + threadIdx.x;
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const T* B1 = b1 + 4 * b * N;
    const T* B2 = b2 + 4 * b * M;
    __syncthreads();  // the previous batch's columns are no longer read
    if (t < kTile && j0 + t < M) {
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

template <typename T, int FMT, int KIND>
void launch(int64_t B, int64_t N, int64_t M, const void* b1, const void* b2, void* out, T eps,
            cudaStream_t stream) {
  const dim3 block(kTile, 8);
  const int64_t gx = ceil_div<int64_t>(M, kTile);
  if (gx > 0x7FFFFFFF) throw std::invalid_argument("box_iou (CUDA): too many boxes2");
  const dim3 grid(static_cast<unsigned>(gx),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(N, 8), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(B, 65535)));
  box_iou_kernel<T, FMT, KIND><<<grid, block, 0, stream>>>(
      static_cast<const T*>(b1), static_cast<const T*>(b2), static_cast<T*>(out), B, N, M, eps);
  DK_CUDA_CHECK_LAUNCH("box_iou_kernel");
}

template <typename T, int FMT>
void launch_kind(int kind, int64_t B, int64_t N, int64_t M, const void* b1, const void* b2,
                 void* out, T eps, cudaStream_t s) {
  switch (kind) {
    case kIoU: return launch<T, FMT, kIoU>(B, N, M, b1, b2, out, eps, s);
    case kGIoU: return launch<T, FMT, kGIoU>(B, N, M, b1, b2, out, eps, s);
    case kDIoU: return launch<T, FMT, kDIoU>(B, N, M, b1, b2, out, eps, s);
    case kCIoU: return launch<T, FMT, kCIoU>(B, N, M, b1, b2, out, eps, s);
  }
  throw std::invalid_argument("box_iou: unknown kind");
}

template <typename T>
void launch_fmt(int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M, const void* b1,
                const void* b2, void* out, cudaStream_t s) {
  if (kind != kIoU && fmt != kXYXY)
    throw std::invalid_argument("box_iou: GIoU/DIoU/CIoU take xyxy boxes");
  switch (fmt) {
    case kXYXY: return launch_kind<T, kXYXY>(kind, B, N, M, b1, b2, out, T(eps), s);
    case kXYWH: return launch_kind<T, kXYWH>(kind, B, N, M, b1, b2, out, T(eps), s);
    case kCXCYWH: return launch_kind<T, kCXCYWH>(kind, B, N, M, b1, b2, out, T(eps), s);
  }
  throw std::invalid_argument("box_iou: unknown fmt");
}

}  // namespace

void box_iou_cuda(int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M,
                  const void* boxes1, const void* boxes2, void* out, int device, void* stream) {
  if (B == 0 || N == 0 || M == 0) return;
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: return launch_fmt<float>(fmt, kind, eps, B, N, M, boxes1, boxes2, out, s);
    case kFloat64: return launch_fmt<double>(fmt, kind, eps, B, N, M, boxes1, boxes2, out, s);
  }
  throw std::invalid_argument("box_iou: dtype must be float32 or float64");
}

}  // namespace detkernels
