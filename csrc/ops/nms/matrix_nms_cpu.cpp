// CPU Matrix NMS over matrix_nms.h and nms.h's IoU. Reference: reference/matrix_nms.py.
//
// Memory is O(N): per class segment (ranks ascending), pass 1 computes each box's compensation
// c_j = max(0, max_{i<j} iou(i, j)) and pass 2 its decay min(1, min_{i<j} num(iou(i, j)) / den(c_i)),
// recomputing the IoUs (no N x N matrix; mmdetection's holds several, open-mmlab/mmdetection#6908).
// Pairs of regular boxes (finite, x1 < x2, y1 < y2; nms_sparse.cpp's classes) that do not overlap
// (w or h clipped to 0) have IoU +0 (union > 0), so they leave c unchanged (+0 > c is false for
// c >= +0) and their weight is num(+0) / den(c_i) = g_i, precomputed per i with the same
// operations (num(-0) == num(+0) bit for bit: (-0)^2 = +0, 1 - (-0) = 1). Other pairs are computed
// in full. Max and min skip NaN as the reference does.

#include "ops/nms/matrix_nms.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/dispatch.h"
#include "common/parallel.h"
#include "ops/nms/nms.h"

namespace detkernels {

namespace {

// For rank j of an all-regular segment and ranks [i0, i1) before it (i1 - i0 <= 64): the bit mask
// of the i that overlap j (w and h > 0), and gmin = min(gmin, g[i]) over the others. The g are
// never NaN or zero in an all-regular segment (g = num(0) / den(c) with c in [0, 1 + ulps]), so
// their min is order-free and a SIMD min is exact.
template <typename T>
uint64_t overlap_chunk(const T* x1, const T* y1, const T* x2, const T* y2, const T* g, int64_t j,
                       int64_t i0, int64_t i1, T& gmin) {
  uint64_t bits = 0;
  int64_t i = i0;
  const T jx1 = x1[j], jy1 = y1[j], jx2 = x2[j], jy2 = y2[j];
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    const __m128 ax1 = _mm_set1_ps(jx1), ay1 = _mm_set1_ps(jy1), ax2 = _mm_set1_ps(jx2),
                 ay2 = _mm_set1_ps(jy2), inf = _mm_set1_ps(INFINITY);
    __m128 gm = _mm_set1_ps(gmin);
    for (; i + 4 <= i1; i += 4) {
      const __m128 o = _mm_and_ps(
          _mm_and_ps(_mm_cmplt_ps(_mm_loadu_ps(x1 + i), ax2), _mm_cmplt_ps(ax1, _mm_loadu_ps(x2 + i))),
          _mm_and_ps(_mm_cmplt_ps(_mm_loadu_ps(y1 + i), ay2), _mm_cmplt_ps(ay1, _mm_loadu_ps(y2 + i))));
      bits |= static_cast<uint64_t>(_mm_movemask_ps(o)) << (i - i0);
      gm = _mm_min_ps(gm, _mm_or_ps(_mm_and_ps(o, inf), _mm_andnot_ps(o, _mm_loadu_ps(g + i))));
    }
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, gm);
    gmin = std::min(std::min(lanes[0], lanes[1]), std::min(lanes[2], lanes[3]));
  } else {
    const __m128d ax1 = _mm_set1_pd(jx1), ay1 = _mm_set1_pd(jy1), ax2 = _mm_set1_pd(jx2),
                  ay2 = _mm_set1_pd(jy2), inf = _mm_set1_pd(INFINITY);
    __m128d gm = _mm_set1_pd(gmin);
    for (; i + 2 <= i1; i += 2) {
      const __m128d o = _mm_and_pd(
          _mm_and_pd(_mm_cmplt_pd(_mm_loadu_pd(x1 + i), ax2), _mm_cmplt_pd(ax1, _mm_loadu_pd(x2 + i))),
          _mm_and_pd(_mm_cmplt_pd(_mm_loadu_pd(y1 + i), ay2), _mm_cmplt_pd(ay1, _mm_loadu_pd(y2 + i))));
      bits |= static_cast<uint64_t>(_mm_movemask_pd(o)) << (i - i0);
      gm = _mm_min_pd(gm, _mm_or_pd(_mm_and_pd(o, inf), _mm_andnot_pd(o, _mm_loadu_pd(g + i))));
    }
    alignas(16) double lanes[2];
    _mm_store_pd(lanes, gm);
    gmin = std::min(lanes[0], lanes[1]);
  }
#endif
  for (; i < i1; ++i) {
    const bool o = x1[i] < jx2 && jx1 < x2[i] && y1[i] < jy2 && jy1 < y2[i];
    bits |= static_cast<uint64_t>(o) << (i - i0);
    if (!o && g[i] < gmin) gmin = g[i];
  }
  return bits;
}

template <typename T>
int64_t run(const T* boxes, const T* scores, const int64_t* labels, int64_t n, int kernel,
            double sigma, bool has_thr, double thr, int64_t max_output, int64_t pre_top_k,
            int64_t* keep, T* out_s) {
  const T neg = static_cast<T>(-sigma);
  auto before = [&](int64_t a, int64_t b) { return ranks_before(scores[a], a, scores[b], b); };
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), before);
  if (pre_top_k >= 0 && pre_top_k < n) order.resize(static_cast<size_t>(pre_top_k));
  const int64_t m = static_cast<int64_t>(order.size());
  // Class segments of the ranks (class ascending, rank ascending within one).
  std::vector<int64_t> ranks(static_cast<size_t>(m));
  std::iota(ranks.begin(), ranks.end(), int64_t{0});
  std::stable_sort(ranks.begin(), ranks.end(),
                   [&](int64_t a, int64_t b) { return labels[order[a]] < labels[order[b]]; });
  std::vector<T> decayed(static_cast<size_t>(m));
  std::vector<T> x1, y1, x2, y2, area, den, g;
  std::vector<uint8_t> reg;
  std::vector<uint64_t> mask_buf;
  for (int64_t s0 = 0; s0 < m;) {
    int64_t s1 = s0 + 1;
    while (s1 < m && labels[order[ranks[s1]]] == labels[order[ranks[s0]]]) ++s1;
    const int64_t k = s1 - s0;
    x1.resize(k); y1.resize(k); x2.resize(k); y2.resize(k); area.resize(k); den.resize(k);
    g.resize(k); reg.resize(k);
    for (int64_t p = 0; p < k; ++p) {
      const T* b = boxes + 4 * order[ranks[s0 + p]];
      x1[p] = b[0]; y1[p] = b[1]; x2[p] = b[2]; y2[p] = b[3];
      area[p] = nms_area(b[0], b[1], b[2], b[3]);
      reg[p] = std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) &&
               std::isfinite(b[3]) && b[0] < b[2] && b[1] < b[3];
    }
    auto overlap = [&](int64_t i, int64_t j) {  // false only for two regular disjoint boxes
      return !(reg[i] && reg[j]) ||
             (x1[i] < x2[j] && x1[j] < x2[i] && y1[i] < y2[j] && y1[j] < y2[i]);
    };
    auto iou = [&](int64_t i, int64_t j) {
      return nms_iou(x1[i], y1[i], x2[i], y2[i], area[i], x1[j], y1[j], x2[j], y2[j], area[j]);
    };
    const bool all_regular = std::all_of(reg.begin(), reg.end(), [](uint8_t r) { return r != 0; });
    if (all_regular) {
      // The same values as the plain loops below: pass 1's max is order-free (only IoUs > c
      // update it), pass 2 takes min(1, min of the disjoint pairs' g) first -- never zero, so no
      // +-0 tie depends on the order -- then the overlapping pairs in rank order, as the plain
      // running min visits them.
      std::fill(g.begin(), g.end(), T(INFINITY));  // pass 1 needs no g: +inf leaves gmin alone
      for (int64_t j = 0; j < k; ++j) {
        T c = T(0), unused = T(INFINITY);
        for (int64_t i0 = 0; i0 < j; i0 += 64) {
          uint64_t bits = overlap_chunk(x1.data(), y1.data(), x2.data(), y2.data(), g.data(), j, i0,
                                        std::min(j, i0 + 64), unused);
          for (; bits; bits &= bits - 1) {
            const T d = iou(i0 + __builtin_ctzll(bits), j);
            if (d > c) c = d;
          }
        }
        den[j] = matrix_nms_term(c, kernel, neg);
      }
      for (int64_t j = 0; j < k; ++j) g[j] = matrix_nms_term(T(0), kernel, neg) / den[j];
      for (int64_t j = 0; j < k; ++j) {
        T gmin = T(1);
        std::vector<uint64_t>& masks = mask_buf;
        masks.clear();
        for (int64_t i0 = 0; i0 < j; i0 += 64)
          masks.push_back(overlap_chunk(x1.data(), y1.data(), x2.data(), y2.data(), g.data(), j,
                                        i0, std::min(j, i0 + 64), gmin));
        T mn = gmin;
        for (size_t q = 0; q < masks.size(); ++q)
          for (uint64_t bits = masks[q]; bits; bits &= bits - 1) {
            const int64_t i = static_cast<int64_t>(q) * 64 + __builtin_ctzll(bits);
            const T w = matrix_nms_term(iou(i, j), kernel, neg) / den[i];
            if (w < mn) mn = w;
          }
        const int64_t r = ranks[s0 + j];
        decayed[r] = scores[order[r]] * mn;
      }
      s0 = s1;
      continue;
    }
    // Pass 1: compensations.
    for (int64_t j = 0; j < k; ++j) {
      T c = T(0);
      for (int64_t i = 0; i < j; ++i) {
        if (!overlap(i, j)) continue;
        const T d = iou(i, j);
        if (d > c) c = d;
      }
      den[j] = matrix_nms_term(c, kernel, neg);
      g[j] = matrix_nms_term(T(0), kernel, neg) / den[j];
    }
    // Pass 2: decays.
    for (int64_t j = 0; j < k; ++j) {
      T mn = T(1);
      for (int64_t i = 0; i < j; ++i) {
        const T w = overlap(i, j) ? matrix_nms_term(iou(i, j), kernel, neg) / den[i] : g[i];
        if (w < mn) mn = w;
      }
      const int64_t r = ranks[s0 + j];
      decayed[r] = scores[order[r]] * mn;
    }
    s0 = s1;
  }
  std::vector<int64_t> sel;
  sel.reserve(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r)
    if (!has_thr || static_cast<double>(decayed[r]) >= thr) sel.push_back(r);
  std::sort(sel.begin(), sel.end(), [&](int64_t a, int64_t b) {
    return ranks_before(decayed[a], order[a], decayed[b], order[b]);
  });
  if (max_output >= 0 && static_cast<int64_t>(sel.size()) > max_output)
    sel.resize(static_cast<size_t>(max_output));
  for (size_t q = 0; q < sel.size(); ++q) {
    keep[q] = order[sel[q]];
    out_s[q] = decayed[sel[q]];
  }
  return static_cast<int64_t>(sel.size());
}

}  // namespace

int64_t matrix_nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* labels,
                       int64_t n, int kernel, double sigma, bool has_score_thr, double score_thr,
                       int64_t max_output, int64_t pre_top_k, int64_t* keep, void* out_scores) {
  if (kernel != kMatrixGaussian && kernel != kMatrixLinear)
    throw std::invalid_argument("matrix_nms_cpu: kernel must be 0 (gaussian) or 1 (linear)");
  return dispatch_float(dtype, "matrix_nms_cpu", [&](auto t) {
    using T = decltype(t);
    return run(static_cast<const T*>(boxes), static_cast<const T*>(scores), labels, n, kernel,
               sigma, has_score_thr, score_thr, max_output, pre_top_k, keep,
               static_cast<T*>(out_scores));
  });
}

void matrix_nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* labels,
                          int64_t B, int64_t N, int kernel, double sigma, bool has_score_thr,
                          double score_thr, int64_t max_output, int64_t pre_top_k,
                          int64_t* out_idx, void* out_scores, int64_t* counts) {
  if (kernel != kMatrixGaussian && kernel != kMatrixLinear)
    throw std::invalid_argument("matrix_nms_multi_cpu: kernel must be 0 (gaussian) or 1 (linear)");
  dispatch_float(dtype, "matrix_nms_multi_cpu", [&](auto t) {
    using T = decltype(t);
    const T* bx = static_cast<const T*>(boxes);
    const T* sc = static_cast<const T*>(scores);
    T* os = static_cast<T*>(out_scores);
    // Images in parallel (each written by one chunk: the same bytes for any thread count).
    parallel_for(B, 1, [&](int64_t lo, int64_t hi) {
      std::vector<int64_t> keep(static_cast<size_t>(N));
      std::vector<T> kept(static_cast<size_t>(N));
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t c = run(bx + b * N * 4, sc + b * N, labels + b * N, N, kernel, sigma,
                              has_score_thr, score_thr, max_output, pre_top_k, keep.data(),
                              kept.data());
        counts[b] = c;
        for (int64_t k = 0; k < max_output; ++k) {
          out_idx[b * max_output + k] = k < c ? keep[k] : -1;
          os[b * max_output + k] = k < c ? kept[k] : T(0);
        }
      }
    });
  });
}

}  // namespace detkernels
