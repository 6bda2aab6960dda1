// The CUDA kernels of detect: each a thin grid-stride loop over one step of detect_gpu.h (which
// detect_emulate.cpp runs sequentially for the tests). Sorts, the prefix sum and the NMS stage
// are launched by detect_cuda.cu (CUB, nms_multi_cuda) and by the CuPy backend (CuPy's sorts and
// cumsum, its multi-image NMS). Scalars and pointers only: DetectGpuArgs travels field by field
// (DK_DETECT_GPU_PARAMS), so NVRTC launches from Python pass plain arguments, no struct layout.
#pragma once
#include "common/grid_stride.cuh"
#include "ops/detect/detect_gpu.h"

// DetectGpuArgs<T>'s fields as kernel parameters, in declaration order (strides: DetectStrides').
#define DK_DETECT_GPU_PARAMS                                                                      \
  const T *g_boxes, const T *g_scores, const T *g_obj, const int64_t *g_idxs, int64_t g_A,         \
      int64_t g_C, int64_t g_M, int64_t g_box_image, int64_t g_box_anchor, int64_t g_box_coord,    \
      int64_t g_score_image, int64_t g_score_anchor, int64_t g_score_class, int64_t g_obj_image, \
      int64_t g_obj_anchor, int g_fmt, int g_multi, int g_has_thr, double g_thr
// The struct again, inside the kernel (named g).
#define DK_DETECT_GPU_STRUCT                                                                      \
  const DetectGpuArgs<T> g {                                                                     \
    g_boxes, g_scores, g_obj, g_idxs, g_A, g_C, g_M,                                             \
        {g_box_image, g_box_anchor, g_box_coord, g_score_image, g_score_anchor, g_score_class,   \
         g_obj_image, g_obj_anchor},                                                             \
        g_fmt, g_multi, g_has_thr, g_thr                                                         \
  }
// A DetectGpuArgs as the arguments of a <<<>>> launch (detect_cuda.cu).
#define DK_DETECT_GPU_ARGS(a)                                                                     \
  (a).boxes, (a).scores, (a).obj, (a).idxs, (a).A, (a).C, (a).M, (a).st.box_image,               \
      (a).st.box_anchor, (a).st.box_coord, (a).st.score_image, (a).st.score_anchor,              \
      (a).st.score_class, (a).st.obj_image, (a).st.obj_anchor, (a).fmt, (a).multi, (a).has_thr,  \
      (a).thr

namespace detkernels {

template <typename T>
__global__ void detect_score_kernel(DK_DETECT_GPU_PARAMS, T* score, int64_t* cls, uint8_t* valid,
                                    uint64_t* keys, int64_t* vals, int64_t total) {
  DK_DETECT_GPU_STRUCT;
  DK_GRID_STRIDE(gq, total) {
    detect_gpu_score(g, gq, score, cls, valid);
    if (keys) {  // the first top-k sort's key (descending score, NaN first), candidate order
      keys[gq] = nms_score_key(score[gq]);
      vals[gq] = gq;
    }
  }
}

__global__ void detect_image_key_kernel(const int64_t* order, const uint8_t* valid, uint64_t* keys,
                                        int64_t total, int64_t M) {
  DK_GRID_STRIDE(p, total) keys[p] = nms_image_key(order[p], M, valid[order[p]] != 0);
}

__global__ void detect_select_kernel(const int64_t* order, const uint8_t* valid, int64_t M,
                                     int64_t k, int64_t* sel, int64_t total) {
  DK_GRID_STRIDE(p, total) detect_gpu_select(p, order, valid, M, k, sel);
}

template <typename T>
__global__ void detect_pad_kernel(T* cbox, T* cscore, int64_t* ccls, int64_t* canchor, int64_t n) {
  DK_GRID_STRIDE(s, n) detect_gpu_pad(s, cbox, cscore, ccls, canchor);
}

template <typename T>
__global__ void detect_compact_kernel(DK_DETECT_GPU_PARAMS, int64_t N, const int64_t* sel,
                                      const int64_t* pos, const T* score, const int64_t* cls,
                                      T* cbox, T* cscore, int64_t* ccls, int64_t* canchor,
                                      int64_t total) {
  DK_DETECT_GPU_STRUCT;
  DK_GRID_STRIDE(gq, total)
    detect_gpu_compact(g, gq, N, sel, pos, score, cls, cbox, cscore, ccls, canchor);
}

__global__ void detect_count_kernel(int64_t B, int64_t M, const int64_t* sel, const int64_t* pos,
                                    int64_t* n_valid) {
  DK_GRID_STRIDE(b, B) detect_gpu_count(b, M, sel, pos, n_valid);
}

template <typename T>
__global__ void detect_output_kernel(int64_t B, int64_t K, int64_t N, const int64_t* counts,
                                     const T* cbox, const T* cscore, const int64_t* ccls,
                                     const int64_t* canchor, const T* dec, T* out_boxes,
                                     T* out_scores, int64_t* out_cls, int64_t* out_idx) {
  DK_GRID_STRIDE(o, B * K)
    detect_gpu_output(o / K, o % K, K, N, counts, cbox, cscore, ccls, canchor, dec, out_boxes,
                      out_scores, out_cls, out_idx);
}

}  // namespace detkernels
