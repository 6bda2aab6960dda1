// CPU NMS over nms.h.
//
// Boxes are ordered once by (class, score desc with NaN first, index) and copied column-wise. Each
// class segment then runs a "reverse" greedy: candidate j is kept iff no box kept before it
// suppresses it. That is exactly torchvision's rule and visits exactly the pairs torchvision does
// (kept i before j, j not yet suppressed), but the candidates of a block of kBlock boxes can be
// tested against the kept list in parallel and with a vectorisable inner loop; only pairs inside a
// block are resolved sequentially. Segments (classes) are independent and also run in parallel.
//
// The ordering is a stable LSD radix sort of integer score keys (score_key below; ties stay in index
// order because the passes are stable), then a stable counting sort by class: O(N), no comparator.
// Measured (issue 21; 80 classes, N = 5 000 clustered, one thread): the comparator sorts it
// replaced (std::stable_sort by (class, score) over indices, then std::sort of the kept indices by
// (score, index)) took 290 + 176 of 570 us; the NMS itself 91 us. The kept indices come out in
// global order by walking the score order once, so there is no second sort.

#include "ops/nms/nms.h"
#include "ops/nms/nms_sparse.h"  // issue 16: the pruned path

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <type_traits>
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
// Below this many pairs (the most a segment set can test) the segments run inline. Measured on
// the shared 2-core machine (issue 21, ad-hoc timers around _C.nms_cpu and the pool's probe): a
// pair costs 0.6-1.0 ns (80 classes, uniform, one thread: 1.0 ns at 1.6e5 pairs, 0.6 at 4e6); a
// split job's hand-off costs ~5 us when the second core is free, but a time slice (ms) when
// another process holds it -- the worker then wakes after the caller is done, or is preempted
// mid-chunk. So a split can save at most half the work, which is worth the risk only well above
// the hand-off: 2^18 pairs (~0.2 ms of work). The pool's backoff (parallel.cpp) then limits the
// loss on busy cores to the first contended call. Batched N = 5 000 over 80 classes (1.6e5 pairs,
// 0.15 ms) stays inline.
constexpr int64_t kParallelPairs = 1 << 18;
constexpr int64_t kParallelSort = 1 << 14;    // candidates per thread when sorting images
constexpr int64_t kRadixMin = 256;    // below this many boxes a comparison sort is cheaper

template <typename T> struct Columns {
  std::vector<T> x1, y1, x2, y2, area;
  void resize(size_t n) {
    x1.resize(n); y1.resize(n); x2.resize(n); y2.resize(n); area.resize(n);
  }
};

// ---- ordering ----------------------------------------------------------------------------------

template <typename T> using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// An unsigned key whose ascending order is score_before's order: descending score, every NaN
// first (key 0, NaNs tie among themselves), -0 == +0. Equal keys <=> tied scores.
template <typename T> Key<T> score_key(T s) {
  using K = Key<T>;
  constexpr K sign = K(1) << (8 * sizeof(K) - 1);
  if (s != s) return 0;
  if (s == T(0)) s = T(0);  // -0 ties with +0
  K u;
  std::memcpy(&u, &s, sizeof(K));
  const K asc = (u & sign) ? ~u : (u | sign);  // ascending order of the values
  return ~asc;  // >= ~(bits of +inf | sign) > 0 for every non-NaN
}

// Stable LSD radix sort of (key, idx) by key, kBits-bit digits; a pass whose digit is the same
// for every key is skipped (scores in [0, 1) share their top bits).
template <int kBits, typename K>
void radix_sort(std::vector<K>& key, std::vector<int64_t>& idx) {
  constexpr int kBins = 1 << kBits, kPasses = (8 * sizeof(K) + kBits - 1) / kBits;
  const int64_t n = static_cast<int64_t>(key.size());
  std::vector<int64_t> hist(static_cast<size_t>(kPasses) * kBins, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int d = 0; d < kPasses; ++d) ++hist[d * kBins + ((key[i] >> (d * kBits)) & (kBins - 1))];
  std::vector<K> key2(static_cast<size_t>(n));
  std::vector<int64_t> idx2(static_cast<size_t>(n));
  for (int d = 0; d < kPasses; ++d) {
    int64_t* h = hist.data() + d * kBins;
    const int shift = d * kBits;
    if (h[(key[0] >> shift) & (kBins - 1)] == n) continue;  // one digit value: order unchanged
    int64_t sum = 0;
    for (int v = 0; v < kBins; ++v) {
      const int64_t c = h[v];
      h[v] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = h[(key[i] >> shift) & (kBins - 1)]++;
      key2[at] = key[i];
      idx2[at] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
}

// Indices [0, n) by (score_key asc, index asc): the radix sort (ties keep index order, the passes
// being stable), or a comparison sort below kRadixMin boxes. 11-bit digits: 8-bit ones (one pass
// more, 256 bins) were measured no faster at N = 1 000 (6.3 vs 6.1-8.9 us) and slower at 5 000.
template <typename T>
void score_order(const T* scores, int64_t n, std::vector<int64_t>& idx) {
  using K = Key<T>;
  std::vector<K> key(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) key[i] = score_key(scores[i]);
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  if (n < kRadixMin)
    std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
      return key[a] < key[b] || (key[a] == key[b] && a < b);
    });
  else
    radix_sort<11>(key, idx);
}

// `by_score` (the score order) regrouped stably by class into `order` (class asc, then score
// order), with `seg` the class segment starts plus n. Dense ids (the common 0..C-1 labels) take a
// counting sort; sparse ones a stable comparison sort.
void class_order(const int64_t* classes, const std::vector<int64_t>& by_score,
                 std::vector<int64_t>& order, std::vector<int64_t>& seg) {
  const int64_t n = static_cast<int64_t>(by_score.size());
  order.resize(static_cast<size_t>(n));
  seg.assign(1, 0);
  const auto [lo_it, hi_it] = std::minmax_element(classes, classes + n);
  const uint64_t range = static_cast<uint64_t>(*hi_it) - static_cast<uint64_t>(*lo_it);
  if (range <= static_cast<uint64_t>(4 * n + 4096)) {
    const int64_t lo = *lo_it;
    std::vector<int64_t> start(static_cast<size_t>(range + 2), 0);
    for (int64_t i = 0; i < n; ++i) ++start[static_cast<size_t>(classes[i] - lo) + 1];
    for (size_t c = 1; c < start.size(); ++c) {
      if (start[c] > 0) seg.push_back(seg.back() + start[c]);
      start[c] += start[c - 1];
    }
    for (int64_t p = 0; p < n; ++p) {
      const int64_t i = by_score[p];
      order[start[static_cast<size_t>(classes[i] - lo)]++] = i;
    }
    return;
  }
  order = by_score;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t i, int64_t j) { return classes[i] < classes[j]; });
  for (int64_t p = 1; p < n; ++p)
    if (classes[order[p]] != classes[order[p - 1]]) seg.push_back(p);
  seg.push_back(n);
}

// ---- greedy NMS of sorted segments ---------------------------------------------------------------

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

// Greedy NMS of sorted boxes [s, e) of `b`; sets keep[j] for kept sorted positions j. The kept
// boxes are written to kept[s, s + count) (segments own disjoint ranges of one shared buffer, so
// no per-segment allocation); `sup` is scratch of at least min(kBlock, e - s) flags.
template <typename T>
void nms_segment(const Columns<T>& b, int64_t s, int64_t e, T thr, uint8_t* keep, bool inner_par,
                 Columns<T>& kept, uint8_t* sup) {
  // issue 16: the pruned path (nms_sparse.cpp) where its rule says it pays; else the loop below.
  if (nms_sparse_segment(b.x1.data() + s, b.y1.data() + s, b.x2.data() + s, b.y2.data() + s,
                         b.area.data() + s, e - s, thr, keep + s))
    return;
  int64_t nk = s;
  for (int64_t blk = s; blk < e; blk += kBlock) {
    const int64_t hi = std::min(e, blk + kBlock), nb = hi - blk, nk0 = nk;
    if (nk0 > s) {  // the first block of a segment has no earlier kept boxes to test
      auto test = [&](int64_t lo, int64_t up) {
        for (int64_t j = blk + lo; j < blk + up; ++j)
          sup[j - blk] = suppressed_by(kept, s, nk0, b.x1[j], b.y1[j], b.x2[j], b.y2[j], b.area[j], thr);
      };
      if (inner_par && (nk0 - s) * nb >= kParallelPairs)
        parallel_for(nb, 16, test);
      else
        test(0, nb);
    }
    for (int64_t j = blk; j < hi; ++j) {
      if ((nk0 > s && sup[j - blk]) ||
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
// work (at most sum len^2 / 2 pairs) pays for starting threads (kParallelPairs).
template <typename T>
void nms_segments(const Columns<T>& b, const std::vector<int64_t>& seg, T thr, uint8_t* keep) {
  const int64_t nseg = static_cast<int64_t>(seg.size()) - 1, n = seg.back();
  int64_t largest = 0, pairs = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const int64_t len = seg[s + 1] - seg[s];
    largest = std::max(largest, len);
    pairs += len * (len - 1) / 2;
  }
  Columns<T> kept;
  kept.resize(static_cast<size_t>(n));
  if (nseg > 1 && 2 * largest <= n && pairs >= kParallelPairs) {
    parallel_for(nseg, 1, [&](int64_t lo, int64_t hi) {
      std::vector<uint8_t> sup(static_cast<size_t>(std::min(kBlock, largest)));
      for (int64_t s = lo; s < hi; ++s)
        nms_segment(b, seg[s], seg[s + 1], thr, keep, false, kept, sup.data());
    });
  } else {
    std::vector<uint8_t> sup(static_cast<size_t>(std::min(kBlock, largest)));
    for (int64_t s = 0; s < nseg; ++s)
      nms_segment(b, seg[s], seg[s + 1], thr, keep, true, kept, sup.data());
  }
}

// Sorted columns of boxes[order[p]].
template <typename T>
void gather(const T* boxes, const std::vector<int64_t>& order, Columns<T>& b) {
  const int64_t n = static_cast<int64_t>(order.size());
  b.resize(static_cast<size_t>(n));
  for (int64_t p = 0; p < n; ++p) {
    const T* q = boxes + 4 * order[p];
    b.x1[p] = q[0]; b.y1[p] = q[1]; b.x2[p] = q[2]; b.y2[p] = q[3];
    b.area[p] = nms_area(q[0], q[1], q[2], q[3]);
  }
}

template <typename T>
int64_t run(const T* boxes, const T* scores, const int64_t* classes, int64_t n, double iou_thr,
            int64_t* out) {
  std::vector<int64_t> by_score, order, seg;
  score_order(scores, n, by_score);
  if (classes)
    class_order(classes, by_score, order, seg);
  else
    seg = {0, n};
  const std::vector<int64_t>& ord = classes ? order : by_score;
  Columns<T> b;
  gather(boxes, ord, b);
  const T thr = nms_threshold<T>(iou_thr);
  std::vector<uint8_t> keep(static_cast<size_t>(n), 0);
  nms_segments(b, seg, thr, keep.data());

  int64_t count = 0;
  if (!classes) {
    for (int64_t p = 0; p < n; ++p)
      if (keep[p]) out[count++] = by_score[p];
    return count;
  }
  // Back to global order (descending score, ties by ascending index): the score order, filtered.
  std::vector<uint8_t> kept_idx(static_cast<size_t>(n), 0);
  for (int64_t p = 0; p < n; ++p) kept_idx[ord[p]] = keep[p];
  for (int64_t p = 0; p < n; ++p)
    if (kept_idx[by_score[p]]) out[count++] = by_score[p];
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
