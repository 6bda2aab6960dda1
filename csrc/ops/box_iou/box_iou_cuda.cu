// Launches of the box_iou kernel (box_iou_kernel.cuh, shared with the CuPy backend).
#include <algorithm>
#include <stdexcept>

#include "common/dispatch.h"
#include "common/cuda_check.h"
#include "ops/box_iou/box_iou_kernel.cuh"

namespace detkernels {
namespace {

constexpr int kTile = kBoxIouTile;

template <typename T, int FMT, int KIND>
void launch(int64_t B, int64_t N, int64_t M, const void* b1, const void* b2, void* out,
            iou_out_t<T> eps, cudaStream_t stream) {
  const dim3 block(kTile, 8);
  const int64_t gx = ceil_div<int64_t>(M, kTile);
  if (gx > 0x7FFFFFFF) throw std::invalid_argument("box_iou (CUDA): too many boxes2");
  const dim3 grid(static_cast<unsigned>(gx),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(N, 8), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(B, 65535)));
  box_iou_kernel<T, FMT, KIND><<<grid, block, 0, stream>>>(
      static_cast<const T*>(b1), static_cast<const T*>(b2), static_cast<iou_out_t<T>*>(out), B, N, M,
      eps);
  DK_CUDA_CHECK_LAUNCH("box_iou_kernel");
}

template <typename T, int FMT>
void launch_kind(int kind, int64_t B, int64_t N, int64_t M, const void* b1, const void* b2,
                 void* out, iou_out_t<T> eps, cudaStream_t s) {
  switch (kind) {
    case kIoU: return launch<T, FMT, kIoU>(B, N, M, b1, b2, out, eps, s);
    case kGIoU: return launch<T, FMT, kGIoU>(B, N, M, b1, b2, out, eps, s);
  }
  if constexpr (!IouTypes<T>::kInt) {
    switch (kind) {
      case kDIoU: return launch<T, FMT, kDIoU>(B, N, M, b1, b2, out, eps, s);
      case kCIoU: return launch<T, FMT, kCIoU>(B, N, M, b1, b2, out, eps, s);
    }
    throw std::invalid_argument("box_iou: unknown kind");
  }
  throw std::invalid_argument("box_iou: integer boxes take IoU or GIoU only");
}

template <typename T>
void launch_fmt(int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M, const void* b1,
                const void* b2, void* out, cudaStream_t s) {
  if (kind != kIoU && fmt != kXYXY)
    throw std::invalid_argument("box_iou: GIoU/DIoU/CIoU take xyxy boxes");
  switch (fmt) {
    case kXYXY: return launch_kind<T, kXYXY>(kind, B, N, M, b1, b2, out, iou_out_t<T>(eps), s);
    case kXYWH: return launch_kind<T, kXYWH>(kind, B, N, M, b1, b2, out, iou_out_t<T>(eps), s);
    case kCXCYWH:
      return launch_kind<T, kCXCYWH>(kind, B, N, M, b1, b2, out, iou_out_t<T>(eps), s);
  }
  throw std::invalid_argument("box_iou: unknown fmt");
}

}  // namespace

void box_iou_cuda(int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M,
                  const void* boxes1, const void* boxes2, void* out, int device, void* stream) {
  if (B == 0 || N == 0 || M == 0) return;
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  dispatch_float_int(dtype, "box_iou", [&](auto t) {
    launch_fmt<decltype(t)>(fmt, kind, eps, B, N, M, boxes1, boxes2, out, s);
  });
}

}  // namespace detkernels
