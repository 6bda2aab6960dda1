// CPU loops over box_iou_rotated.h's metrics (RotatedIouMetric, ProbIouMetric): the pairwise matrix
// (rows of the [B, N, M] output split across threads) and the greedy / Fast NMS. Each box's
// preparation (half cos/sin and padded bounds, or ProbIoU's covariance) is computed once
// (torchvision: 4 libm calls per pair).
#include "ops/box_iou/box_iou_rotated.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "ops/nms/nms.h"  // score_before

namespace detkernels {
namespace {

template <typename T, typename Metric>
std::vector<typename Metric::Prep> preps(const Metric& m, const T* boxes, int64_t n) {
  std::vector<typename Metric::Prep> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = m.prep(boxes + 5 * i);
  return v;
}

// out[b, i, j] = Out(metric(boxes1[b, i], boxes2[b, j])). grain: rows per task (a rotated IoU
// pair costs ~100 ns, a ProbIoU pair ~25 ns).
template <typename T, typename Metric>
void matrix(const Metric& m, int64_t grain_pairs, int64_t B, int64_t N, int64_t M, const T* b1,
            const T* b2, typename Metric::Out* out) {
  using Out = typename Metric::Out;
  const int64_t grain = std::max<int64_t>(1, grain_pairs / std::max<int64_t>(M, 1));
  parallel_for(B * N, grain, [&](int64_t lo, int64_t hi) {
    int64_t cur = -1;
    std::vector<typename Metric::Prep> p2;
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / N;
      if (b != cur) p2 = preps(m, b2 + 5 * b * M, M), cur = b;
      const T* a = b1 + 5 * r;
      const typename Metric::Prep pa = m.prep(a);
      Out* row = out + r * M;
      for (int64_t j = 0; j < M; ++j)
        row[j] = static_cast<Out>(m.value(a, b2 + 5 * (b * M + j), pa, p2[j]));
    }
  });
}

// Greedy NMS (fast = false: a kept box suppresses later ones of its class with double(metric) >
// thr) or Fast-NMS (fast = true: a box is dropped when any earlier box, suppressed or not, has
// double(metric(earlier, it)) > thr), in descending score order (NaN first, ties by index).
template <typename T, typename Metric>
int64_t nms(const Metric& m, const T* boxes, const T* scores, const int64_t* classes, int64_t N,
            double thr, bool fast, int64_t* keep) {
  std::vector<int64_t> order(N);
  for (int64_t i = 0; i < N; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score_before(scores[a], scores[b]); });
  const std::vector<typename Metric::Prep> p = preps(m, boxes, N);
  auto over = [&](int64_t i, int64_t j) {  // metric(i first, j) > thr, same class
    if (classes && classes[i] != classes[j]) return false;
    return static_cast<double>(m.value(boxes + 5 * i, boxes + 5 * j, p[i], p[j])) > thr;
  };
  std::vector<uint8_t> dead(N, 0);  // by sorted position
  if (fast) {  // each position independent
    parallel_for(N, 64, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b)
        for (int64_t a = 0; a < b; ++a)
          if (over(order[a], order[b])) {
            dead[b] = 1;
            break;
          }
    });
  } else {
    for (int64_t a = 0; a < N; ++a) {
      if (dead[a]) continue;
      for (int64_t b = a + 1; b < N; ++b)
        if (!dead[b] && over(order[a], order[b])) dead[b] = 1;
    }
  }
  int64_t count = 0;
  for (int64_t a = 0; a < N; ++a)
    if (!dead[a]) keep[count++] = order[a];
  return count;
}

// One image of nms_rotated_multi_cpu: the candidates passing the score filter gathered (in index
// order, so ties still go by ascending index), nms() on them, the kept positions mapped back.
template <typename T, typename Metric>
int64_t multi_image(const Metric& m, bool fast, const T* boxes, const T* scores, const int64_t* classes,
                    int64_t N, double thr, bool has_sthr, double sthr, int64_t K, int64_t* out) {
  std::vector<int64_t> sel;
  sel.reserve(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i)
    if (!has_sthr || static_cast<double>(scores[i]) > sthr) sel.push_back(i);
  const int64_t n = static_cast<int64_t>(sel.size());
  std::vector<T> b(static_cast<size_t>(5 * n)), s(static_cast<size_t>(n));
  std::vector<int64_t> c(classes ? static_cast<size_t>(n) : 0), keep(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    std::copy(boxes + 5 * sel[k], boxes + 5 * sel[k] + 5, b.begin() + 5 * k);
    s[k] = scores[sel[k]];
    if (classes) c[k] = classes[sel[k]];
  }
  const int64_t kept =
      n == 0 ? 0 : nms<T>(m, b.data(), s.data(), classes ? c.data() : nullptr, n, thr, fast, keep.data());
  const int64_t count = std::min(kept, K);
  for (int64_t k = 0; k < K; ++k) out[k] = k < count ? sel[keep[k]] : -1;
  return count;
}

}  // namespace

void box_iou_rotated_cpu(int dtype, int64_t B, int64_t N, int64_t M, const void* boxes1,
                         const void* boxes2, void* out) {
  if (B == 0 || N == 0 || M == 0) return;
  dispatch_float(dtype, "box_iou_rotated", [&](auto t) {
    using T = decltype(t);
    matrix<T>(RotatedIouMetric<T>{}, 4096, B, N, M, static_cast<const T*>(boxes1),
              static_cast<const T*>(boxes2), static_cast<float*>(out));
  });
}

int64_t nms_rotated_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t N, double iou_threshold, int64_t* keep) {
  if (N == 0) return 0;
  return dispatch_float(dtype, "nms_rotated", [&](auto t) {
    using T = decltype(t);
    return nms<T>(RotatedIouMetric<T>{}, static_cast<const T*>(boxes), static_cast<const T*>(scores),
                  classes, N, iou_threshold, false, keep);
  });
}

void probiou_cpu(int dtype, double eps, int64_t B, int64_t N, int64_t M, const void* boxes1,
                 const void* boxes2, void* out) {
  if (B == 0 || N == 0 || M == 0) return;
  dispatch_float(dtype, "probiou", [&](auto t) {
    using T = decltype(t);
    matrix<T>(ProbIouMetric<T>{static_cast<T>(eps)}, 16384, B, N, M,
              static_cast<const T*>(boxes1), static_cast<const T*>(boxes2), static_cast<T*>(out));
  });
}

int64_t nms_probiou_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t N, double iou_threshold, double eps, int fast, int64_t* keep) {
  if (N == 0) return 0;
  return dispatch_float(dtype, "nms_probiou", [&](auto t) {
    using T = decltype(t);
    return nms<T>(ProbIouMetric<T>{static_cast<T>(eps)}, static_cast<const T*>(boxes),
                  static_cast<const T*>(scores), classes, N, iou_threshold, fast != 0, keep);
  });
}

void nms_rotated_multi_cpu(int dtype, int metric, const void* boxes, const void* scores,
                           const int64_t* classes, int64_t B, int64_t N, double iou_threshold,
                           bool has_score_threshold, double score_threshold, double eps,
                           int64_t max_output, int64_t* out_idx, int64_t* counts) {
  if (metric != kRotatedIou && metric != kRotatedProbIou && metric != kRotatedProbIouFast)
    throw std::invalid_argument(
        "nms_rotated_multi_cpu: metric must be 0 (iou), 1 (probiou) or 2 (probiou fast)");
  if (B <= 0) return;
  dispatch_float(dtype, "nms_rotated_multi", [&](auto t) {
    using T = decltype(t);
    const T* bx = static_cast<const T*>(boxes);
    const T* sc = static_cast<const T*>(scores);
    parallel_for(B, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t im = lo; im < hi; ++im) {
        const int64_t* cl = classes ? classes + im * N : nullptr;
        int64_t* out = out_idx + im * max_output;
        counts[im] =
            metric == kRotatedIou
                ? multi_image<T>(RotatedIouMetric<T>{}, false, bx + 5 * im * N, sc + im * N, cl, N,
                                 iou_threshold, has_score_threshold, score_threshold, max_output, out)
                : multi_image<T>(ProbIouMetric<T>{static_cast<T>(eps)},
                                 metric == kRotatedProbIouFast, bx + 5 * im * N, sc + im * N, cl,
                                 N, iou_threshold, has_score_threshold, score_threshold,
                                 max_output, out);
      }
    });
  });
}

}  // namespace detkernels
