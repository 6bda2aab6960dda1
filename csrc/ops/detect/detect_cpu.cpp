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
#include <limits>
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
  DetectStrides st;  // element strides (image, anchor, coordinate / class)
};

// The row scans use GCC/Clang vector extensions (16-byte vectors: SSE2/NEON baseline). g++ does
// not auto-vectorise a max/argmax with IEEE semantics; these compute exactly what the scalar
// strict `>` scan computes (each lane scans its own columns; lanes merge by value, then index).
template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float v __attribute__((vector_size(16)));
  typedef int32_t m __attribute__((vector_size(16)));
  static constexpr int n = 4;
};
template <> struct Vec<double> {
  typedef double v __attribute__((vector_size(16)));
  typedef int64_t m __attribute__((vector_size(16)));
  static constexpr int n = 2;
};

template <typename T, bool Obj> typename Vec<T>::v load(const T* r, T o) {
  typename Vec<T>::v v;
  __builtin_memcpy(&v, r, sizeof(v));
  if constexpr (Obj) v = v * o;  // elementwise, one rounding each: the scalar product
  return v;
}

template <typename T, bool Obj> T at(const T* r, int64_t c, T o) { return Obj ? r[c] * o : r[c]; }

// Single label over one row of C > 0 values (times o): `bi` = the lowest column holding the row
// maximum (a strict `>` scan: -0 == +0), `best` its value. Returns whether the row holds a NaN
// (then best/bi are meaningless: the caller takes the first NaN). kAcc independent accumulators
// (each a vector of lanes) so the compare/select chains overlap.
constexpr int kAcc = 4;
constexpr int64_t kSpan = 16;  // multi-label: columns tested together

template <typename T, bool Obj> bool row_argmax(const T* r, int64_t C, T o, T& best, int64_t& bi) {
  using V = typename Vec<T>::v;
  using M = typename Vec<T>::m;
  constexpr int L = Vec<T>::n, W = kAcc * L;
  int64_t c = 0;
  int nan = 0;
  best = at<T, Obj>(r, 0, o);
  bi = 0;
  if (C >= W && C < (int64_t{1} << 31)) {  // column indices fit the mask type
    V m[kAcc];
    M idx[kAcc], cur[kAcc], any_nan = {}, lane = {};
    for (int l = 0; l < L; ++l) lane[l] = l;
    for (int k = 0; k < kAcc; ++k) {
      m[k] = load<T, Obj>(r + k * L, o);
      any_nan |= m[k] != m[k];
      idx[k] = lane + k * L;
      cur[k] = idx[k];
    }
    for (c = W; c + W <= C; c += W) {
      for (int k = 0; k < kAcc; ++k) {
        const V v = load<T, Obj>(r + c + k * L, o);
        cur[k] += W;
        any_nan |= v != v;
        const M gt = v > m[k];
        m[k] = gt ? v : m[k];
        idx[k] = gt ? cur[k] : idx[k];
      }
    }
    // Merge the accumulators (vectors of lanes), then the lanes: by value, ties by column.
    for (int k = 1; k < kAcc; ++k) {
      const M take = (m[k] > m[0]) | ((m[k] == m[0]) & (idx[k] < idx[0]));
      m[0] = take ? m[k] : m[0];
      idx[0] = take ? idx[k] : idx[0];
    }
    for (int l = 0; l < L; ++l) nan |= any_nan[l] != 0;
    best = m[0][0];
    bi = idx[0][0];
    for (int l = 1; l < L; ++l)
      if (m[0][l] > best || (m[0][l] == best && idx[0][l] < bi)) { best = m[0][l]; bi = idx[0][l]; }
  } else {
    c = 1;
    nan = best != best;
  }
  for (; c < C; ++c) {  // the tail: columns after every lane's, so strict > keeps the first
    const T v = at<T, Obj>(r, c, o);
    nan |= v != v;
    if (v > best) { best = v; bi = c; }
  }
  return nan != 0;
}

// Whether any value of the row (times o) is > thr, or (with `nan`) is NaN: the cheap pre-test
// (OR-reductions only) that rejects most rows of a thresholded call.
template <typename T, bool Obj, bool Nan> bool row_any_above(const T* r, int64_t C, T o, T thr) {
  using V = typename Vec<T>::v;
  using M = typename Vec<T>::m;
  constexpr int L = Vec<T>::n;
  int64_t c = 0;
  M hit0 = {}, hit1 = {};
  for (; c + 2 * L <= C; c += 2 * L) {
    const V v0 = load<T, Obj>(r + c, o), v1 = load<T, Obj>(r + c + L, o);
    hit0 |= v0 > thr;
    hit1 |= v1 > thr;
    if constexpr (Nan) {
      hit0 |= v0 != v0;
      hit1 |= v1 != v1;
    }
  }
  hit0 |= hit1;
  int any = 0;
  for (int l = 0; l < L; ++l) any |= hit0[l] != 0;
  for (; c < C; ++c) {
    const T v = at<T, Obj>(r, c, o);
    any |= v > thr || (Nan && v != v);
  }
  return any != 0;
}

template <typename T, bool Obj>
void collect_rows(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
                  std::vector<Cand<T>>& out) {
  const int64_t C = p.C, sa = p.st.score_anchor, sc = p.st.score_class;
  std::vector<T> row(sc == 1 ? 0 : static_cast<size_t>(C));  // a strided row, gathered
  for (int64_t a = lo; a < hi; ++a) {
    const T* r = s + a * sa;
    if (sc != 1) {
      for (int64_t c = 0; c < C; ++c) row[c] = r[c * sc];
      r = row.data();
    }
    const T o = Obj ? obj[a * p.st.obj_anchor] : T(1);
    if (p.multi) {
      // Rows are mostly below the threshold: test the whole row vectorised first.
      if (!p.has_thr) {
        for (int64_t c = 0; c < C; ++c) out.push_back({at<T, Obj>(r, c, o), a * C + c});
        continue;
      }
      // Rows are mostly below the threshold: test spans of kSpan columns vectorised, and look
      // at the columns of a span only when one of them passes.
      for (int64_t c0 = 0; c0 < C; c0 += kSpan) {
        const int64_t n = std::min(kSpan, C - c0);
        if (!row_any_above<T, Obj, false>(r + c0, n, o, thr)) continue;
        for (int64_t c = c0; c < c0 + n; ++c) {
          const T v = at<T, Obj>(r, c, o);
          if (v > thr) out.push_back({v, a * C + c});
        }
      }
      continue;
    }
    // Single label: the first NaN, else the first maximum. A row with a NaN fails any threshold.
    if (p.has_thr && !row_any_above<T, Obj, true>(r, C, o, thr)) continue;
    T best;
    int64_t bc;
    if (row_argmax<T, Obj>(r, C, o, best, bc)) {
      if (p.has_thr) continue;
      for (bc = 0; at<T, Obj>(r, bc, o) == at<T, Obj>(r, bc, o); ++bc) {}
      best = at<T, Obj>(r, bc, o);
    } else if (p.has_thr && !(best > thr)) {
      continue;
    }
    out.push_back({best, a * C + bc});  // q = a * C + c: the order of a
  }
}

// Single label with anchors contiguous and classes strided (ultralytics' [B, 4 + C, A] head
// output): the strict `>` scan runs over classes for a block of anchors at once, vectorised over
// the anchors (running maximum, its class, the first NaN class per anchor). Same result as the
// row scan: first NaN, else the lowest class holding the maximum.
constexpr int64_t kColBlock = 256;

template <typename T, bool Obj>
void collect_columns(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
                     std::vector<Cand<T>>& out) {
  using V = typename Vec<T>::v;
  using M = typename Vec<T>::m;
  using I = std::remove_reference_t<decltype(M()[0])>;
  constexpr int L = Vec<T>::n;
  const int64_t C = p.C, sc = p.st.score_class;
  alignas(16) T m[kColBlock], o[kColBlock];
  alignas(16) I id[kColBlock], first_nan[kColBlock];
  for (int64_t blk = lo; blk < hi; blk += kColBlock) {
    const int64_t n = std::min(kColBlock, hi - blk), nv = n - n % L;
    for (int64_t j = 0; j < n; ++j) {
      o[j] = Obj ? obj[(blk + j) * p.st.obj_anchor] : T(1);
      m[j] = Obj ? s[blk + j] * o[j] : s[blk + j];
      id[j] = 0;
      first_nan[j] = m[j] != m[j] ? 0 : -1;
    }
    for (int64_t c = 1; c < C; ++c) {
      const T* col = s + c * sc + blk;
      const I ci = static_cast<I>(c);
      for (int64_t j = 0; j < nv; j += L) {
        V v, mv, ov;
        M iv, fv;
        __builtin_memcpy(&v, col + j, sizeof(v));
        __builtin_memcpy(&mv, m + j, sizeof(mv));
        __builtin_memcpy(&iv, id + j, sizeof(iv));
        __builtin_memcpy(&fv, first_nan + j, sizeof(fv));
        if constexpr (Obj) {
          __builtin_memcpy(&ov, o + j, sizeof(ov));
          v = v * ov;
        }
        const M gt = v > mv;
        mv = gt ? v : mv;
        iv = gt ? ci : iv;
        fv = ((v != v) & (fv < 0)) ? ci : fv;
        __builtin_memcpy(m + j, &mv, sizeof(mv));
        __builtin_memcpy(id + j, &iv, sizeof(iv));
        __builtin_memcpy(first_nan + j, &fv, sizeof(fv));
      }
      for (int64_t j = nv; j < n; ++j) {
        const T v = Obj ? col[j] * o[j] : col[j];
        if (v > m[j]) { m[j] = v; id[j] = ci; }
        if (v != v && first_nan[j] < 0) first_nan[j] = ci;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t a = blk + j;
      if (first_nan[j] >= 0) {  // the best class is the first NaN one: it fails any threshold
        if (p.has_thr) continue;
        const int64_t c = first_nan[j];
        out.push_back({Obj ? s[c * sc + a] * o[j] : s[c * sc + a], a * C + c});
      } else if (!p.has_thr || m[j] > thr) {
        out.push_back({m[j], a * C + id[j]});
      }
    }
  }
}

// Candidates of anchors [lo, hi) of one image, appended in ascending q.
template <typename T>
void collect(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
             std::vector<Cand<T>>& out) {
  const bool columns = p.C > 1 && !p.multi && p.st.score_anchor == 1 && p.st.score_class != 1 &&
                       p.C < (int64_t{1} << 31);  // class ids fit the mask type
  if (p.C == 0) {  // [A] scores: one candidate per anchor
    const int64_t sa = p.st.score_anchor, oa = p.st.obj_anchor;
    for (int64_t a = lo; a < hi; ++a) {
      const T v = obj ? s[a * sa] * obj[a * oa] : s[a * sa];
      if (!p.has_thr || v > thr) out.push_back({v, a});
    }
  } else if (columns) {
    if (obj)
      collect_columns<T, true>(s, obj, p, thr, lo, hi, out);
    else
      collect_columns<T, false>(s, obj, p, thr, lo, hi, out);
  } else if (obj) {
    collect_rows<T, true>(s, obj, p, thr, lo, hi, out);
  } else {
    collect_rows<T, false>(s, obj, p, thr, lo, hi, out);
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
    const T* bp = boxes + a * p.st.box_anchor;
    const T b4[4] = {bp[0], bp[p.st.box_coord], bp[2 * p.st.box_coord], bp[3 * p.st.box_coord]};
    box_corners(b4, fmt, xyxy[4 * j], xyxy[4 * j + 1], xyxy[4 * j + 2], xyxy[4 * j + 3]);
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
                const int64_t* idxs, int64_t B, int64_t A, int64_t C, const DetectStrides& st,
                int fmt, double iou_threshold, bool has_score_thr, double score_thr,
                int64_t top_k, int64_t max_det, bool multi_label, bool class_agnostic,
                void* out_boxes, void* out_scores, int64_t* out_cls, int64_t* out_idx,
                int64_t* counts) {
  dispatch_float(dtype, "detect", [&](auto t) {
    using T = decltype(t);
    const Params p{A, C, has_score_thr, multi_label && C > 0, class_agnostic, top_k, st};
    const T thr = has_score_thr ? nms_threshold<T>(score_thr) : T(0);
    const T* b = static_cast<const T*>(boxes);
    const T* s = static_cast<const T*>(scores);
    const T* o = static_cast<const T*>(objectness);
    T* ob = static_cast<T*>(out_boxes);
    T* os = static_cast<T*>(out_scores);
    const int64_t K = max_det;
    // Fewer images than threads: split each image's score pass instead of the images.
    const bool split = B < num_threads();
    parallel_for(B, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t im = lo; im < hi; ++im)
        run_image(b + im * st.box_image, s + im * st.score_image,
                  o ? o + im * st.obj_image : nullptr, idxs ? idxs + im * A : nullptr, p, fmt,
                  iou_threshold, thr, K, split, ob + im * K * 4, os + im * K, out_cls + im * K,
                  out_idx + im * K, counts + im);
    });
  });
}

}  // namespace detkernels
