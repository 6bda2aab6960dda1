// The CUDA detect pipeline (detect_cuda.cu) run step by step on the CPU with the same
// detect_gpu.h functions: radix sorts become stable sorts by the same keys, the prefix sum a loop,
// and the NMS stage each mode's emulated CUDA entry (nms_multi_emulate_cpu,
// diou_nms_multi_emulate_cpu, soft_nms_multi_emulate_cpu, matrix_nms_multi_emulate_cpu), called
// as detect_cuda.cu calls the real ones. Slow on purpose: tests only.
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "common/cub_emulate.h"
#include "common/dispatch.h"
#include "ops/detect/detect_gpu.h"
#include "ops/nms/diou_nms.h"
#include "ops/nms/matrix_nms_gpu.h"
#include "ops/nms/nms.h"
#include "ops/nms/soft_nms_gpu.h"

namespace detkernels {
namespace {

template <typename T>
void run(const DetectGpuArgs<T>& g, int64_t B, double iou_thr, int64_t top_k, int64_t K,
         bool agnostic, const DetectNms& nms, T* ob, T* os, int64_t* oc, int64_t* oi, int64_t* counts,
         int64_t tile_rows, int64_t cap, int threads) {
  const int64_t M = g.M, total = B * M, N = detect_gpu_slots(M, top_k);
  std::vector<T> score(total);
  std::vector<int64_t> cls(total), sel(total), pos(total);
  std::vector<uint8_t> valid(total);
  for (int64_t gq = 0; gq < total; ++gq) detect_gpu_score(g, gq, score.data(), cls.data(), valid.data());
  if (N < M) {  // 2. the two sorts (detect_cuda.cu), then the selection by sorted position
    std::vector<uint64_t> keys(total);
    std::vector<int64_t> order(total);
    for (int64_t gq = 0; gq < total; ++gq) {
      keys[gq] = nms_score_key(score[gq]);
      order[gq] = gq;
    }
    cub_sort_pairs_emulate(keys, order, nms_score_key_bits<T>());
    for (int64_t p = 0; p < total; ++p) keys[p] = nms_image_key(order[p], M, valid[order[p]] != 0);
    cub_sort_pairs_emulate(keys, order, nms_key_bits(uint64_t(2 * B - 1)));
    for (int64_t p = 0; p < total; ++p) detect_gpu_select(p, order.data(), valid.data(), M, N, sel.data());
  } else {
    for (int64_t p = 0; p < total; ++p) detect_gpu_select(p, nullptr, valid.data(), M, M, sel.data());
  }
  for (int64_t gq = 0, run = 0; gq < total; ++gq) {  // exclusive sum
    pos[gq] = run;
    run += sel[gq];
  }
  std::vector<T> cbox(4 * B * N), cscore(B * N);
  std::vector<int64_t> ccls(B * N), canchor(B * N);
  for (int64_t s = 0; s < B * N; ++s) detect_gpu_pad(s, cbox.data(), cscore.data(), ccls.data(), canchor.data());
  for (int64_t gq = 0; gq < total; ++gq)
    detect_gpu_compact(g, gq, N, sel.data(), pos.data(), score.data(), cls.data(), cbox.data(),
                       cscore.data(), ccls.data(), canchor.data());
  const int dt = std::is_same_v<T, float> ? kFloat32 : kFloat64;
  const bool per_class = !agnostic && (g.C > 0 || g.idxs);
  const T* dec = nullptr;
  if (nms.mode == kDetectIou) {
    nms_multi_emulate_cpu(dt, cbox.data(), cscore.data(), per_class ? ccls.data() : nullptr, B, N,
                          0, iou_thr, g.has_thr != 0, g.thr, K, oi, nullptr, counts, tile_rows,
                          cap, threads);
  } else if (nms.mode == kDetectDiou) {
    diou_nms_multi_emulate_cpu(dt, cbox.data(), cscore.data(), per_class ? ccls.data() : nullptr,
                               B, N, 0, iou_thr, nms.beta, g.has_thr != 0, g.thr, K, oi, nullptr,
                               counts, tile_rows, cap, threads);
  } else {  // soft, matrix: real slots per image, labels always (detect_cuda.cu)
    std::vector<int64_t> n_valid(B, 0), zeros(B * N, 0);
    if (B * N > 0)
      for (int64_t b = 0; b < B; ++b) detect_gpu_count(b, M, sel.data(), pos.data(), n_valid.data());
    const int64_t* labels = per_class ? ccls.data() : zeros.data();
    if (nms.mode == kDetectSoft) {
      int block = 1;  // the kernel's tree reduction needs a power of two
      while (2 * block <= threads) block *= 2;
      soft_nms_multi_emulate_cpu(dt, cbox.data(), cscore.data(), labels, B, N, iou_thr, nms.sigma,
                                 nms.decay, nms.min_score, K, oi, os, counts, block,
                                 n_valid.data());
    } else {
      matrix_nms_multi_emulate_cpu(dt, cbox.data(), cscore.data(), labels, B, N, nms.decay,
                                   nms.sigma, nms.has_min_score, nms.min_score, K, -1, oi, os,
                                   counts, n_valid.data());
    }
    dec = os;
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k)
      detect_gpu_output(b, k, K, N, counts, cbox.data(), cscore.data(), ccls.data(),
                        canchor.data(), dec, ob, os, oc, oi);
}

}  // namespace

void detect_emulate_cpu(int dtype, const void* boxes, const void* scores, const void* objectness,
                        const int64_t* idxs, int64_t B, int64_t A, int64_t C,
                        const DetectStrides& st, int fmt, double iou_threshold, bool has_score_thr,
                        double score_thr, int64_t top_k, int64_t max_det, bool multi_label,
                        bool class_agnostic, const DetectNms& nms, void* out_boxes,
                        void* out_scores, int64_t* out_cls,
                        int64_t* out_idx, int64_t* counts, int64_t tile_rows,
                        int64_t mask_cap_bytes, int scan_threads) {
  dispatch_float(dtype, "detect", [&](auto t) {
    using T = decltype(t);
    const bool multi = multi_label && C > 0;
    const DetectGpuArgs<T> g{static_cast<const T*>(boxes), static_cast<const T*>(scores),
                             static_cast<const T*>(objectness), idxs, A, C,
                             detect_gpu_candidates(A, C, multi), st, fmt, multi ? 1 : 0,
                             has_score_thr ? 1 : 0, score_thr};
    if (nms.mode < kDetectIou || nms.mode > kDetectMatrix)
      throw std::invalid_argument("detect_emulate_cpu: nms mode must be 0 (iou), 1 (diou), 2 (soft), 3 (matrix)");
    run(g, B, iou_threshold, top_k, max_det, class_agnostic, nms, static_cast<T*>(out_boxes),
        static_cast<T*>(out_scores), out_cls, out_idx, counts, tile_rows, mask_cap_bytes,
        scan_threads);
  });
}

}  // namespace detkernels
