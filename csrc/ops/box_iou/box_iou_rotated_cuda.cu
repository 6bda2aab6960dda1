// Launches of the rotated pairwise kernel (box_iou_rotated_kernels.cuh) for box_iou(fmt='cxcywhr')
// and probiou. The per-pair math is box_iou_rotated.h's metrics, the same functions the CPU loops
// run (tests/ops: byte-exact vs the reference); the trig is the device's (docs/SPEC.md).
#include <algorithm>
#include <stdexcept>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "ops/box_iou/box_iou_rotated_kernels.cuh"

namespace detkernels {
namespace {

template <typename T, typename Metric>
void launch(T param, int64_t B, int64_t N, int64_t M, const void* b1, const void* b2,
            void* out, cudaStream_t stream) {
  const dim3 block(kRotCols, kRotRows);
  const int64_t gx = ceil_div<int64_t>(M, kRotCols);
  if (gx > 0x7FFFFFFF) throw std::invalid_argument("box_iou_rotated (CUDA): too many boxes2");
  const dim3 grid(static_cast<unsigned>(gx),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(N, kRotRows), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(B, 65535)));
  rotated_matrix_kernel<Metric, T><<<grid, block, 0, stream>>>(
      static_cast<const T*>(b1), static_cast<const T*>(b2),
      static_cast<typename Metric::Out*>(out), B, N, M, param);
  DK_CUDA_CHECK_LAUNCH("rotated_matrix_kernel");
}

}  // namespace

void box_iou_rotated_cuda(int dtype, int64_t B, int64_t N, int64_t M, const void* boxes1,
                          const void* boxes2, void* out, int device, void* stream) {
  if (B == 0 || N == 0 || M == 0) return;
  DeviceGuard guard(device);
  dispatch_float(dtype, "box_iou_rotated", [&](auto t) {
    using T = decltype(t);
    launch<T, RotatedIouMetric<T>>(T(0), B, N, M, boxes1, boxes2, out,
                                   static_cast<cudaStream_t>(stream));
  });
}

void probiou_cuda(int dtype, double eps, int64_t B, int64_t N, int64_t M, const void* boxes1,
                  const void* boxes2, void* out, int device, void* stream) {
  if (B == 0 || N == 0 || M == 0) return;
  DeviceGuard guard(device);
  dispatch_float(dtype, "probiou", [&](auto t) {
    using T = decltype(t);
    launch<T, ProbIouMetric<T>>(static_cast<T>(eps), B, N, M, boxes1, boxes2, out,
                                static_cast<cudaStream_t>(stream));
  });
}

}  // namespace detkernels
