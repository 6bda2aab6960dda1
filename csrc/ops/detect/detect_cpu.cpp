// CPU detect over nms.h / box_iou.h. Per image: one pass over its scores (no [A, C] temporary)
// collects the candidates that pass the score filter, in ascending candidate index; the top-k is a
// partial selection (nth_element, then the k back in candidate order); the selected boxes go to
// the existing exact NMS (nms_cpu), whose result order -- descending score, ties by ascending
// position -- is the output order, since positions ascend with the candidate index.
//
// Threads: images on the pool; a single image (or fewer images than threads) splits its score
// pass over anchor blocks instead (a nested parallel_for runs inline, parallel.h), and nms_cpu
// parallelises inside when it is called outside a split job. Results never depend on threads:
// each block's candidates are concatenated in block order.
#include "ops/detect/detect.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "ops/box_iou/box_iou.h"
#include "ops/nms/nms.h"

namespace detkernels {

namespace {

constexpr int64_t kAnchorBlock = 2048;  // anchors per score-pass block

template <typename T> struct Cand {
  T s;
  int64_t q;
};

// Rank: descending score (NaN first), ties by ascending candidate index.
template <typename T> bool ranks_before(const Cand<T>& a, const Cand<T>& b) {
  return score_before(a.s, b.s) || (!score_before(b.s, a.s) && a.q < b.q);
}

struct Params {
  int64_t A, C;
  bool has_thr, multi, agnostic;
  int64_t top_k;
};

// Candidates of anchors [lo, hi) of one image, appended in ascending q.
template <typename T>
void collect(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
             std::vector<Cand<T>>& out) {
  const int64_t C = p.C;
  if (C == 0) {  // [A] scores: one candidate per anchor
    for (int64_t a = lo; a < hi; ++a) {
      const T v = obj ? s[a] * obj[a] : s[a];
      if (!p.has_thr || v > thr) out.push_back({v, a});
    }
    return;
  }
  for (int64_t a = lo; a < hi; ++a) {
    const T* r = s + a * C;
    const T o = obj ? obj[a] : T(1);
    // Rows are mostly below the threshold: test the whole row first with a loop that vectorises
    // (int OR-reductions, no early exit), then do the exact scan only on rows that pass.
    if (p.has_thr) {
      int hit = 0, nan = 0;
      if (obj) {
        for (int64_t c = 0; c < C; ++c) {
          const T v = r[c] * o;
          hit |= v > thr ? 1 : 0;
          nan |= v != v ? 1 : 0;
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          hit |= r[c] > thr ? 1 : 0;
          nan |= r[c] != r[c] ? 1 : 0;
        }
      }
      if (!hit) continue;
      if (nan && !p.multi) continue;  // the best class is the NaN one, which fails the filter
    }
    if (p.multi) {
      for (int64_t c = 0; c < C; ++c) {
        const T v = obj ? r[c] * o : r[c];
        if (!p.has_thr || v > thr) out.push_back({v, a * C + c});
      }
      continue;
    }
    // Single label: first NaN, else the first maximum (strict > scan).
    T best = obj ? r[0] * o : r[0];
    int64_t bc = 0;
    if (best == best) {
      for (int64_t c = 1; c < C; ++c) {
        const T v = obj ? r[c] * o : r[c];
        if (v != v) { best = v; bc = c; break; }
        if (v > best) { best = v; bc = c; }
      }
    }
    if (!p.has_thr || best > thr) out.push_back({best, a * C + bc});  // q = a * C + c for now
  }
}

template <typename T>
void run_image(const T* boxes, const T* s, const T* obj, const int64_t* idxs, const Params& p,
               int fmt, double iou_thr, T thr, int64_t K, bool split, T* ob, T* os, int64_t* oc,
               int64_t* oi, int64_t* count) {
  const int64_t A = p.A, C = p.C;
  std::vector<Cand<T>> cand;
  const int64_t nblk = (A + kAnchorBlock - 1) / kAnchorBlock;
  if (split && nblk > 1) {
    std::vector<std::vector<Cand<T>>> part(static_cast<size_t>(nblk));
    parallel_for(nblk, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k)
        collect(s, obj, p, thr, k * kAnchorBlock, std::min(A, (k + 1) * kAnchorBlock), part[k]);
    });
    size_t n = 0;
    for (auto& v : part) n += v.size();
    cand.reserve(n);
    for (auto& v : part) cand.insert(cand.end(), v.begin(), v.end());
  } else {
    collect(s, obj, p, thr, 0, A, cand);
  }
  if (p.top_k >= 0 && static_cast<int64_t>(cand.size()) > p.top_k) {
    std::nth_element(cand.begin(), cand.begin() + p.top_k, cand.end(), ranks_before<T>);
    cand.resize(static_cast<size_t>(p.top_k));
    std::sort(cand.begin(), cand.end(), [](const Cand<T>& a, const Cand<T>& b) { return a.q < b.q; });
  }
  const int64_t n = static_cast<int64_t>(cand.size());
  // Anchor and class of a candidate (single label stored q = a * C + c; the output q is a).
  const bool pairs = C > 0;
  std::vector<T> xyxy(static_cast<size_t>(4 * n)), sc(static_cast<size_t>(n));
  std::vector<int64_t> cls(static_cast<size_t>(n)), keep(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t q = cand[j].q, a = pairs ? q / C : q;
    cls[j] = pairs ? q % C : (idxs ? idxs[a] : 0);
    sc[j] = cand[j].s;
    box_corners(boxes + 4 * a, fmt, xyxy[4 * j], xyxy[4 * j + 1], xyxy[4 * j + 2], xyxy[4 * j + 3]);
  }
  const bool per_class = !p.agnostic && (pairs || idxs);
  const int64_t kept = n ? nms_cpu(std::is_same_v<T, float> ? kFloat32 : kFloat64, xyxy.data(),
                                   sc.data(), per_class ? cls.data() : nullptr, n, iou_thr,
                                   keep.data())
                         : 0;
  const int64_t c = std::min(K, kept);
  *count = c;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t j = k < c ? keep[k] : -1;
    for (int d = 0; d < 4; ++d) ob[4 * k + d] = j >= 0 ? xyxy[4 * j + d] : T(0);
    os[k] = j >= 0 ? sc[j] : T(0);
    oc[k] = j >= 0 ? cls[j] : -1;
    oi[k] = j >= 0 ? (pairs ? cand[j].q / C : cand[j].q) : -1;
  }
}

}  // namespace

void detect_cpu(int dtype, const void* boxes, const void* scores, const void* objectness,
                const int64_t* idxs, int64_t B, int64_t A, int64_t C, int fmt,
                double iou_threshold, bool has_score_thr, double score_thr, int64_t top_k,
                int64_t max_det, bool multi_label, bool class_agnostic, void* out_boxes,
                void* out_scores, int64_t* out_cls, int64_t* out_idx, int64_t* counts) {
  dispatch_float(dtype, "detect", [&](auto t) {
    using T = decltype(t);
    const Params p{A, C, has_score_thr, multi_label && C > 0, class_agnostic, top_k};
    const T thr = has_score_thr ? nms_threshold<T>(score_thr) : T(0);
    const T* b = static_cast<const T*>(boxes);
    const T* s = static_cast<const T*>(scores);
    const T* o = static_cast<const T*>(objectness);
    T* ob = static_cast<T*>(out_boxes);
    T* os = static_cast<T*>(out_scores);
    const int64_t per = A * (C > 0 ? C : 1), K = max_det;
    // Fewer images than threads: split each image's score pass instead of the images.
    const bool split = B < num_threads();
    parallel_for(B, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t im = lo; im < hi; ++im)
        run_image(b + im * A * 4, s + im * per, o ? o + im * A : nullptr,
                  idxs ? idxs + im * A : nullptr, p, fmt, iou_threshold, thr, K, split,
                  ob + im * K * 4, os + im * K, out_cls + im * K, out_idx + im * K, counts + im);
    });
  });
}

}  // namespace detkernels
