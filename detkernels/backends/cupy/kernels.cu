// The CuPy backend's NVRTC source (detkernels/backends/cupy/__init__.py), compiled at run time
// with the native build's float flags (--fmad=false, IEEE division and sqrt, no FTZ). It holds no
// kernel of its own: every kernel is the very one the nvcc build launches, from the headers the
// nvcc sources include, instantiated by name (RawModule name_expressions).
//   box_iou:  box_iou_kernel.cuh
//   NMS:      nms_kernels.cuh (gather, mask tiles, per-image keep scan over nms_bitmask.h's steps;
//             the visiting plan between them is made with CuPy's stable sorts)
//   NMS, sparse path (issue 16): nms_sparse_gpu_kernels.cuh, launched before the mask tiles
//             where its rule allows (_multi_sparse), CuPy's stable argsort and cumsum between
//   RoI ops:  roi_align_kernels.cuh, roi_pool_kernels.cuh and the generic deterministic backward
//             scatter (common/roi_scatter_kernels.cuh); the sorts between the backward's steps
//             are CuPy's (stable) argsort, the scan cupy.cumsum.
//   Soft-NMS (issue 13): soft_nms_kernels.cuh, one launch (one block per image).
//   Matrix NMS (issue 13): matrix_nms_kernels.cuh's gather and column kernels; CuPy's stable sorts
//             and searchsorted make the plan.
//   DIoU-NMS (issue 13): NMS's plan and kernels, the mask tiles diou_nms_kernels.cuh's (the DIoU
//             predicate of diou_nms.h on nms_bitmask.h's mask word).
//   detect (issue 12): detect_kernels.cuh (score, selection, padding, compaction, output steps
//             of detect_gpu.h); CuPy's stable argsort / cumsum for CUB's sorts and scan, and
//             the NMS stage is the multi-image NMS above.
#include "ops/box_iou/box_iou_kernel.cuh"
#include "ops/nms/nms_kernels.cuh"
#include "ops/nms/nms_sparse_gpu_kernels.cuh"
#include "ops/roi_align/roi_align_kernels.cuh"
#include "ops/roi_pool/roi_pool_kernels.cuh"
#include "ops/nms/soft_nms_kernels.cuh"  // issue 13: Soft-NMS, one block per image
#include "ops/nms/matrix_nms_kernels.cuh"  // issue 13: Matrix NMS (gather, tiled column passes)
#include "ops/nms/diou_nms_kernels.cuh"  // issue 13: DIoU-NMS mask tiles (bitmask engine)
#include "ops/detect/detect_kernels.cuh"  // issue 12: detect (fused post-process)
