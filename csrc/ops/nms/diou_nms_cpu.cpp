// CPU DIoU-NMS over diou_nms.h. Reference: reference/diou_nms.py.
//
// Boxes of each class segment (classes ascending, input index ascending within one) are visited
// by score_before order (NaN first, ties by index); a candidate is kept iff no kept box of its
// segment has (double)diou_nms_measure(kept, candidate) > iou_threshold (DiouNmsSuppress, the
// CUDA engine's predicate too). The kept boxes of all
// segments are then merged by (score_before, index): nms's output order. A plain O(N * kept) loop
// (no pruning: DIoU-NMS is run on detector outputs of a few thousand boxes). With a limit
// (diou_nms_multi_cpu's max_output) each segment stops after `limit` kept boxes: the first
// `limit` of the merged order take at most that many from any one segment, so this is exact.

#include "ops/nms/diou_nms.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"

namespace detkernels {

namespace {

template <typename T>
int64_t run(const T* boxes, const T* scores, const int64_t* classes, int64_t n, double thr,
            double beta_d, int64_t limit, int64_t* keep) {
  const DiouNmsSuppress<T> suppresses{nms_threshold<T>(thr), static_cast<T>(beta_d)};
  auto before = [&](int64_t a, int64_t b) { return ranks_before(scores[a], a, scores[b], b); };
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (classes != nullptr && classes[a] != classes[b]) return classes[a] < classes[b];
    return before(a, b);
  });
  std::vector<T> area(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + 4 * i;
    area[i] = nms_area(b[0], b[1], b[2], b[3]);
  }
  std::vector<int64_t> kept_all, kept;
  for (int64_t s = 0; s < n;) {
    int64_t e = classes == nullptr ? n : s + 1;  // one segment without classes
    while (e < n && classes[order[e]] == classes[order[s]]) ++e;
    kept.clear();
    for (int64_t p = s; p < e && static_cast<int64_t>(kept.size()) < limit; ++p) {
      const int64_t j = order[p];
      bool suppressed = false;
      for (const int64_t i : kept) {
        const T* a = boxes + 4 * i;
        const T* b = boxes + 4 * j;
        if (suppresses(a[0], a[1], a[2], a[3], area[i], b[0], b[1], b[2], b[3], area[j])) {
          suppressed = true;
          break;
        }
      }
      if (!suppressed) kept.push_back(j);
    }
    kept_all.insert(kept_all.end(), kept.begin(), kept.end());
    s = e;
  }
  if (classes != nullptr) std::sort(kept_all.begin(), kept_all.end(), before);
  if (static_cast<int64_t>(kept_all.size()) > limit) kept_all.resize(static_cast<size_t>(limit));
  std::copy(kept_all.begin(), kept_all.end(), keep);
  return static_cast<int64_t>(kept_all.size());
}

}  // namespace

int64_t diou_nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                     int64_t n, double iou_threshold, double beta, int64_t* keep) {
  return dispatch_float(dtype, "diou_nms_cpu", [&](auto t) {
    using T = decltype(t);
    return run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, n,
               iou_threshold, beta, n, keep);
  });
}

void diou_nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t B, int64_t N, double iou_threshold, double beta, int64_t max_output,
                        int64_t* out_idx, int64_t* counts) {
  dispatch_float(dtype, "diou_nms_multi_cpu", [&](auto t) {
    using T = decltype(t);
    const T* bx = static_cast<const T*>(boxes);
    const T* sc = static_cast<const T*>(scores);
    // Images in parallel (each written by one chunk: the same bytes for any thread count).
    parallel_for(B, 1, [&](int64_t lo, int64_t hi) {
      std::vector<int64_t> keep(static_cast<size_t>(N));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t c = run(bx + b * N * 4, sc + b * N, classes ? classes + b * N : nullptr, N,
                              iou_threshold, beta, max_output, keep.data());
        counts[b] = c;
        for (int64_t k = 0; k < max_output; ++k) out_idx[b * max_output + k] = k < c ? keep[k] : -1;
      }
    });
  });
}

void diou_nms_log_cpu(int dtype, const void* x, void* y, int64_t n) {
  dispatch_float(dtype, "diou_nms_log_cpu", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    for (int64_t i = 0; i < n; ++i) out[i] = dk_log(in[i]);
  });
}

}  // namespace detkernels
