// The CUDA rotated-NMS mask kernel (issue 17): nms_kernels.cuh's nms_mask_tile with
// nms_rotated_gpu.h's RotatedNmsSuppress over box_iou_rotated.h's metric; every other step of
// the bitmask engine is plain NMS's own kernel (the gather with NmsRotatedBoxes). Launched by
// nms_cuda.cu (nms_rotated_multi_cuda). Scalars and pointers only.
#pragma once
#include "ops/nms/nms_kernels.cuh"
#include "ops/nms/nms_rotated_gpu.h"

namespace detkernels {

// Metric: RotatedIouMetric<T> or ProbIouMetric<T>; param its parameter (ProbIoU's eps).
template <typename T, typename Metric>
__global__ void __launch_bounds__(kNmsWordBits)
    rotated_nms_mask_kernel(const T* c0, const T* c1, const T* c2, const T* c3, const T* c4,
                            const int64_t* seg, uint64_t* mask, int64_t total, int64_t ncb,
                            int64_t W, int64_t row0, double thr, T param) {
  nms_mask_tile(c0, c1, c2, c3, c4, seg, mask, total, ncb, W, row0,
                RotatedNmsSuppress<T, Metric>{thr, Metric::make(param)});
}

}  // namespace detkernels
