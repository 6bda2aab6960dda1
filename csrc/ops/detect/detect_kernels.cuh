// The CUDA kernels of detect: each a thin grid-stride loop over one step of detect_gpu.h (which
// detect_emulate.cpp runs sequentially for the tests). Sorts, the prefix sum and the NMS stage
// are launched by detect_cuda.cu (CUB, nms_multi_cuda). Scalars and pointers only.
#pragma once
#include "common/grid_stride.cuh"
#include "ops/detect/detect_gpu.h"

namespace detkernels {

template <typename T>
__global__ void detect_score_kernel(DetectGpuArgs<T> g, T* score, int64_t* cls, uint8_t* valid,
                                    uint64_t* keys, int64_t* vals, int64_t total) {
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
__global__ void detect_compact_kernel(DetectGpuArgs<T> g, int64_t N, const int64_t* sel,
                                      const int64_t* pos, const T* score, const int64_t* cls,
                                      T* cbox, T* cscore, int64_t* ccls, int64_t* canchor,
                                      int64_t total) {
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
