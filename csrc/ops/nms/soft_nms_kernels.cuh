// The CUDA kernel of (multi-image) Soft-NMS: a thin loop over soft_nms_gpu.h's steps, which
// soft_nms_emulate.cpp runs on the CPU for the tests. No CUB and no std headers (NVRTC-safe).
// Included by one translation unit (soft_nms_cuda.cu).
#pragma once
#include "ops/nms/soft_nms_gpu.h"

namespace detkernels {

// Block b: image b. Workspace per image: s, alive, cnt (classes only), the pick list. Thread t
// owns boxes t, t + T, ... throughout, so the only barriers are the argmax's.
template <typename T>
__global__ void __launch_bounds__(kSoftNmsThreads)
    soft_nms_kernel(const T* boxes, const T* scores, const int64_t* classes, int64_t N,
                    int method, double thr, double sigma, double sthr, int64_t K, T* s_ws,
                    uint8_t* alive_ws, int32_t* cnt_ws, int64_t* pick_idx_ws, T* pick_s_ws,
                    int64_t* out_idx, T* out_s, int64_t* counts, const int64_t* n_valid) {
  __shared__ T red_s[kSoftNmsThreads];
  __shared__ int64_t red_p[kSoftNmsThreads];
  const int t = threadIdx.x;
  const int64_t b = blockIdx.x;
  const T* bx = boxes + b * N * 4;
  const int64_t* cl = classes ? classes + b * N : nullptr;
  T* s = s_ws + b * N;
  uint8_t* alive = alive_ws + b * N;
  int32_t* cnt = cl ? cnt_ws + b * N : nullptr;
  int64_t* pick_idx = pick_idx_ws + b * N;
  T* pick_s = pick_s_ws + b * N;
  const SoftNmsParams<T> prm{method, thr, sthr, static_cast<T>(sigma)};
  // Image b's boxes are its first n_valid[b] (detect's padded slots); the rest are never touched.
  const int64_t nb = n_valid ? n_valid[b] : N;
  const int64_t limit = soft_nms_pick_limit(cl != nullptr, nb, K);

  SoftPick<T> mine = soft_pick_none<T>();
  for (int64_t j = t; j < nb; j += blockDim.x)
    mine = soft_pick_better(mine, soft_nms_init(j, scores + b * N, s, alive, cnt, sthr));
  int64_t P = 0;
  while (P < limit) {
    red_s[t] = mine.s;
    red_p[t] = mine.p;
    __syncthreads();
    for (int h = kSoftNmsThreads / 2; h > 0; h >>= 1) {
      if (t < h) {
        const SoftPick<T> w = soft_pick_better(SoftPick<T>{red_s[t], red_p[t]},
                                               SoftPick<T>{red_s[t + h], red_p[t + h]});
        red_s[t] = w.s;
        red_p[t] = w.p;
      }
      __syncthreads();
    }
    const int64_t a = red_p[0];
    const T as = red_s[0];
    __syncthreads();  // everyone has read the winner before the next step writes red_*
    if (a < 0) break;  // uniform: nothing remains
    if (t == 0) {
      pick_idx[P] = a;
      pick_s[P] = as;
    }
    ++P;
    mine = soft_pick_none<T>();
    for (int64_t j = t; j < nb; j += blockDim.x)
      mine = soft_pick_better(mine, soft_nms_rescale(j, a, bx, cl, s, alive, cnt, prm, K));
  }
  __syncthreads();  // the pick list (thread 0's writes) is complete
  const int64_t items = P > K ? P : K;
  for (int64_t k = t; k < items; k += blockDim.x)
    soft_nms_emit(k, P, K, cl != nullptr, pick_idx, pick_s, out_idx + b * K, out_s + b * K);
  if (t == 0) counts[b] = P < K ? P : K;
}

}  // namespace detkernels
