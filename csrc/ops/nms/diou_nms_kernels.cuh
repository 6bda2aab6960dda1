// The CUDA DIoU-NMS mask kernel (issue 13): nms_kernels.cuh's nms_mask_tile with diou_nms.h's
// DiouNmsSuppress as the predicate; every other step of the bitmask engine (sorts, segments, keep
// scan, outputs) is plain NMS's own kernel. Launched by nms_cuda.cu (diou_nms_multi_cuda) and by
// the CuPy backend (NVRTC, detkernels/backends/cupy/kernels.cu); nms_emulate.cpp runs the same
// nms_mask_word with the same predicate on the CPU for the tests. Scalars and pointers only.
#pragma once
#include "ops/nms/diou_nms.h"
#include "ops/nms/nms_kernels.cuh"

namespace detkernels {

// thr = nms_threshold<T>(iou_threshold), beta rounded to T (DiouNmsSuppress's fields).
template <typename T>
__global__ void __launch_bounds__(kNmsWordBits)
    diou_nms_mask_kernel(const T* x1, const T* y1, const T* x2, const T* y2, const T* area,
                         const int64_t* seg, uint64_t* mask, int64_t total, int64_t ncb,
                         int64_t W, int64_t row0, T thr, T beta) {
  nms_mask_tile(x1, y1, x2, y2, area, seg, mask, total, ncb, W, row0,
                DiouNmsSuppress<T>{thr, beta});
}

}  // namespace detkernels
