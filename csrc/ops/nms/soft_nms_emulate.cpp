// The CUDA Soft-NMS kernel (soft_nms_kernels.cuh) run on the CPU with the same soft_nms_gpu.h
// steps: blocks become a loop over images, each step's threads a loop over emulated threads
// (thread t owning boxes t, t + T, ...), the shared-memory argmax the same halving tree. Slow on
// purpose; it exists so that the GPU's step logic is tested on machines without a GPU.
#include <stdexcept>
#include <vector>

#include "common/dispatch.h"
#include "ops/nms/soft_nms_gpu.h"

namespace detkernels {
namespace {

template <typename T>
void run(const T* boxes, const T* scores, const int64_t* classes, int64_t B, int64_t N,
         double thr, double sigma, int method, double sthr, int64_t K, int64_t* out_idx,
         T* out_s, int64_t* counts, int threads, const int64_t* n_valid) {
  std::vector<T> s(N), pick_s(N);
  std::vector<uint8_t> alive(N);
  std::vector<int32_t> cnt(N);
  std::vector<int64_t> pick_idx(N);
  std::vector<SoftPick<T>> mine(threads), red(threads);
  const SoftNmsParams<T> prm{method, thr, sthr, static_cast<T>(sigma)};
  for (int64_t b = 0; b < B; ++b) {
    const T* bx = boxes + b * N * 4;
    const int64_t* cl = classes ? classes + b * N : nullptr;
    int32_t* cn = cl ? cnt.data() : nullptr;
    const int64_t nb = n_valid ? n_valid[b] : N;  // as the kernel: boxes past it untouched
    const int64_t limit = soft_nms_pick_limit(cl != nullptr, nb, K);
    for (int t = 0; t < threads; ++t) {
      mine[t] = soft_pick_none<T>();
      for (int64_t j = t; j < nb; j += threads)
        mine[t] = soft_pick_better(mine[t], soft_nms_init(j, scores + b * N, s.data(),
                                                          alive.data(), cn, sthr));
    }
    int64_t P = 0;
    while (P < limit) {
      red = mine;
      for (int h = threads / 2; h > 0; h >>= 1)
        for (int t = 0; t < h; ++t) red[t] = soft_pick_better(red[t], red[t + h]);
      const SoftPick<T> pick = red[0];
      if (pick.p < 0) break;
      pick_idx[P] = pick.p;
      pick_s[P] = pick.s;
      ++P;
      for (int t = 0; t < threads; ++t) {
        mine[t] = soft_pick_none<T>();
        for (int64_t j = t; j < nb; j += threads)
          mine[t] = soft_pick_better(mine[t], soft_nms_rescale(j, pick.p, bx, cl, s.data(),
                                                               alive.data(), cn, prm, K));
      }
    }
    const int64_t items = P > K ? P : K;
    for (int64_t k = 0; k < items; ++k)
      soft_nms_emit(k, P, K, cl != nullptr, pick_idx.data(), pick_s.data(), out_idx + b * K,
                    out_s + b * K);
    counts[b] = P < K ? P : K;
  }
}

}  // namespace

void soft_nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                                const int64_t* classes, int64_t B, int64_t N, double iou_threshold,
                                double sigma, int method, double score_threshold,
                                int64_t max_output, int64_t* out_idx, void* out_scores,
                                int64_t* counts, int threads, const int64_t* n_valid) {
  if (method != kSoftLinear && method != kSoftGaussian)
    throw std::invalid_argument("soft_nms_multi_emulate_cpu: method must be 0 or 1");
  if (threads < 1 || (threads & (threads - 1)) != 0)
    throw std::invalid_argument("soft_nms_multi_emulate_cpu: threads must be a power of two");
  dispatch_float(dtype, "soft_nms_multi_emulate_cpu", [&](auto t) {
    using T = decltype(t);
    run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, B, N, iou_threshold,
        sigma, method, score_threshold, max_output, out_idx, static_cast<T*>(out_scores), counts,
        threads, n_valid);
  });
}

}  // namespace detkernels
