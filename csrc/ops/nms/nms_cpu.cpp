// CPU NMS over nms.h.
//
// Boxes are sorted once by (class, score desc with NaN first, index) and copied column-wise. Each
// class segment then runs a "reverse" greedy: candidate j is kept iff no box kept before it
// suppresses it. That is exactly torchvision's rule and visits exactly the pairs torchvision does
// (kept i before j, j not yet suppressed), but the candidates of a block of kBlock boxes can be
// tested against the kept list in parallel and with a vectorisable inner loop; only pairs inside a
// block are resolved sequentially. Segments (classes) are independent and also run in parallel.
#include "ops/nms/nms.h"
#include "ops/nms/nms_sparse.h"  // issue 16: the pruned path

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"

namespace detkernels {

template <typename T> T nms_threshold(double thr) {
  T t = static_cast<T>(thr);
  if (static_cast<double>(t) > thr) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}
template float nms_threshold<float>(double);
template double nms_threshold<double>(double);

namespace {

constexpr int64_t kBlock = 512;        // candidates resolved per parallel step
constexpr int64_t kParallelPairs = 1 << 17;  // below this many pairs a step runs inline
constexpr int64_t kParallelSort = 1 << 14;    // candidates per thread when sorting images

template <typename T> struct Columns {
  std::vector<T> x1, y1, x2, y2, area;
  void resize(size_t n) {
    x1.resize(n); y1.resize(n); x2.resize(n); y2.resize(n); area.resize(n);
  }
};

// True iff one of the kept boxes [lo, hi) suppresses candidate c. Chunks of 32 without early
// exit inside a chunk, so the inner loop vectorises.
template <typename T>
bool suppressed_by(const Columns<T>& k, int64_t lo, int64_t hi, T cx1, T cy1, T cx2, T cy2,
                   T carea, T thr) {
  const T* kx1 = k.x1.data(); const T* ky1 = k.y1.data();
  const T* kx2 = k.x2.data(); const T* ky2 = k.y2.data(); const T* ka = k.area.data();
  // Integer accumulator (not bool): g++ vectorises an int OR-reduction, not a bool one.
  for (int64_t s = lo; s < hi; s += 32) {
    const int64_t e = std::min(hi, s + 32);
    int any = 0;
    for (int64_t i = s; i < e; ++i)
      any |= nms_suppresses(kx1[i], ky1[i], kx2[i], ky2[i], ka[i], cx1, cy1, cx2, cy2, carea, thr) ? 1 : 0;
    if (any) return true;
  }
  return false;
}

// Greedy NMS of sorted boxes [s, e) of `b`; sets keep[j] for kept sorted positions j.
template <typename T>
void nms_segment(const Columns<T>& b, int64_t s, int64_t e, T thr, uint8_t* keep, bool inner_par) {
  // issue 16: the pruned path (nms_sparse.cpp) where its rule says it pays; else the loop below.
  if (nms_sparse_segment(b.x1.data() + s, b.y1.data() + s, b.x2.data() + s, b.y2.data() + s,
                         b.area.data() + s, e - s, thr, keep + s))
    return;
  Columns<T> kept;
  kept.resize(static_cast<size_t>(e - s));
  int64_t nk = 0;
  std::vector<uint8_t> sup(static_cast<size_t>(std::min(kBlock, e - s)));
  for (int64_t blk = s; blk < e; blk += kBlock) {
    const int64_t hi = std::min(e, blk + kBlock), nb = hi - blk, nk0 = nk;
    auto test = [&](int64_t lo, int64_t up) {
      for (int64_t j = blk + lo; j < blk + up; ++j)
        sup[j - blk] = suppressed_by(kept, 0, nk0, b.x1[j], b.y1[j], b.x2[j], b.y2[j], b.area[j], thr);
    };
    if (inner_par && nk0 * nb >= kParallelPairs)
      parallel_for(nb, 16, test);
    else
      test(0, nb);
    for (int64_t j = blk; j < hi; ++j) {
      if (sup[j - blk] ||
          suppressed_by(kept, nk0, nk, b.x1[j], b.y1[j], b.x2[j], b.y2[j], b.area[j], thr))
        continue;
      keep[j] = 1;
      kept.x1[nk] = b.x1[j]; kept.y1[nk] = b.y1[j]; kept.x2[nk] = b.x2[j]; kept.y2[nk] = b.y2[j];
      kept.area[nk] = b.area[j];
      ++nk;
    }
  }
}

// Runs every segment [seg[s], seg[s+1]). Many comparable segments (classes, images): one thread
// per run of segments; one dominant segment: parallel steps inside it. Either way only when the
// work (at most sum len^2 / 2 pairs) pays for starting threads (bench: 80 classes, N = 100 took
// 0.19 ms on 2 threads, 0.08 ms inline).
template <typename T>
void nms_segments(const Columns<T>& b, const std::vector<int64_t>& seg, T thr, uint8_t* keep) {
  const int64_t nseg = static_cast<int64_t>(seg.size()) - 1, n = seg.back();
  int64_t largest = 0, pairs = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const int64_t len = seg[s + 1] - seg[s];
    largest = std::max(largest, len);
    pairs += len * (len - 1) / 2;
  }
  if (nseg > 1 && 2 * largest <= n && pairs >= kParallelPairs) {
    parallel_for(nseg, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t s = lo; s < hi; ++s) nms_segment(b, seg[s], seg[s + 1], thr, keep, false);
    });
  } else {
    for (int64_t s = 0; s < nseg; ++s) nms_segment(b, seg[s], seg[s + 1], thr, keep, true);
  }
}

template <typename T>
int64_t run(const T* boxes, const T* scores, const int64_t* classes, int64_t n, double iou_thr,
            int64_t* out) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (classes) {
    std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
      return classes[i] != classes[j] ? classes[i] < classes[j] : score_before(scores[i], scores[j]);
    });
  } else {
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t i, int64_t j) { return score_before(scores[i], scores[j]); });
  }
  Columns<T> b;
  b.resize(static_cast<size_t>(n));
  for (int64_t p = 0; p < n; ++p) {
    const T* q = boxes + 4 * order[p];
    b.x1[p] = q[0]; b.y1[p] = q[1]; b.x2[p] = q[2]; b.y2[p] = q[3];
    b.area[p] = nms_area(q[0], q[1], q[2], q[3]);
  }
  // Segments of equal class in sorted order.
  std::vector<int64_t> seg{0};
  if (classes)
    for (int64_t p = 1; p < n; ++p)
      if (classes[order[p]] != classes[order[p - 1]]) seg.push_back(p);
  seg.push_back(n);
  const T thr = nms_threshold<T>(iou_thr);
  std::vector<uint8_t> keep(static_cast<size_t>(n), 0);
  nms_segments(b, seg, thr, keep.data());

  int64_t count = 0;
  for (int64_t p = 0; p < n; ++p)
    if (keep[p]) out[count++] = order[p];
  if (classes) {
    // Back to global order: descending score, ties by ascending index.
    std::sort(out, out + count, [&](int64_t i, int64_t j) {
      return score_before(scores[i], scores[j]) || (!score_before(scores[j], scores[i]) && i < j);
    });
  }
  return count;
}

// Multi-image NMS: an image is one more segment key. Candidates (filtered by score) are sorted
// by (image, class, score desc, q asc), each (image, class) segment runs nms_segment, and each
// image's kept candidates are re-sorted by (score desc, q asc) into the fixed-size output.
template <typename T>
void run_multi(const T* boxes, const T* scores, const int64_t* classes, int64_t B, int64_t N,
               int64_t C, double iou_thr, bool has_sthr, double sthr, int64_t K, int64_t* out_idx,
               int64_t* out_cls, int64_t* counts) {
  const int64_t Cc = C > 0 ? C : 1, M = N * Cc;
  auto cls = [&](int64_t q) { return C > 0 ? (q % M) % C : (classes ? classes[q] : 0); };
  // Filtered candidates in ascending q are grouped by image already: sort each image's range
  // (in parallel when there is enough to sort: a thread costs more than sorting a few thousand
  // candidates) by (class, score desc), stably so ties keep ascending q.
  std::vector<int64_t> order, start{0};
  order.reserve(static_cast<size_t>(B * M));
  for (int64_t im = 0; im < B; ++im) {
    for (int64_t q = im * M; q < (im + 1) * M; ++q)
      if (!has_sthr || static_cast<double>(scores[q]) > sthr) order.push_back(q);
    start.push_back(static_cast<int64_t>(order.size()));
  }
  const int64_t per_image = static_cast<int64_t>(order.size()) / std::max<int64_t>(B, 1) + 1;
  parallel_for(B, std::max<int64_t>(1, kParallelSort / per_image), [&](int64_t lo, int64_t hi) {
    for (int64_t im = lo; im < hi; ++im)
      std::stable_sort(order.begin() + start[im], order.begin() + start[im + 1],
                       [&](int64_t i, int64_t j) {
                         const int64_t ci = cls(i), cj = cls(j);
                         return ci != cj ? ci < cj : score_before(scores[i], scores[j]);
                       });
  });
  const int64_t n = static_cast<int64_t>(order.size());
  Columns<T> b;
  b.resize(static_cast<size_t>(n));
  std::vector<int64_t> seg{0};
  for (int64_t p = 0; p < n; ++p) {
    const T* q = boxes + 4 * ((order[p] / M) * N + (order[p] % M) / Cc);
    b.x1[p] = q[0]; b.y1[p] = q[1]; b.x2[p] = q[2]; b.y2[p] = q[3];
    b.area[p] = nms_area(q[0], q[1], q[2], q[3]);
    if (p > 0 && (order[p] / M != order[p - 1] / M || cls(order[p]) != cls(order[p - 1])))
      seg.push_back(p);
  }
  seg.push_back(n);
  const T thr = nms_threshold<T>(iou_thr);
  std::vector<uint8_t> keep(static_cast<size_t>(n), 0);
  nms_segments(b, seg, thr, keep.data());
  std::vector<std::vector<int64_t>> kept(static_cast<size_t>(B));
  for (int64_t p = 0; p < n; ++p)
    if (keep[p]) kept[order[p] / M].push_back(order[p]);
  for (int64_t im = 0; im < B; ++im) {
    auto& v = kept[im];
    std::sort(v.begin(), v.end(), [&](int64_t i, int64_t j) {
      return score_before(scores[i], scores[j]) || (!score_before(scores[j], scores[i]) && i < j);
    });
    const int64_t c = std::min<int64_t>(K, static_cast<int64_t>(v.size()));
    counts[im] = c;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t ql = k < c ? v[k] % M : 0;
      out_idx[im * K + k] = k < c ? ql / Cc : -1;
      if (out_cls) out_cls[im * K + k] = k < c ? ql % Cc : -1;
    }
  }
}

}  // namespace

void nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                   int64_t B, int64_t N, int64_t C, double iou_threshold, bool has_score_thr,
                   double score_thr, int64_t max_output, int64_t* out_idx, int64_t* out_cls,
                   int64_t* counts) {
  dispatch_float(dtype, "nms", [&](auto t) {
    using T = decltype(t);
    run_multi(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, B, N, C,
              iou_threshold, has_score_thr, score_thr, max_output, out_idx, out_cls, counts);
  });
}

int64_t nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                int64_t n, double iou_threshold, int64_t* keep) {
  if (n <= 0) return 0;
  return dispatch_float(dtype, "nms", [&](auto t) {
    using T = decltype(t);
    return run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, n,
               iou_threshold, keep);
  });
}

}  // namespace detkernels
