// CPU detect over nms.h / box_iou.h. Per image: one pass over its scores (no [A, C] temporary)
// collects the candidates that pass the score filter, in ascending candidate index; the top-k is a
// partial selection (nth_element, then the k back in candidate order); the selected boxes go to
// the existing exact NMS (nms_cpu), whose result order -- descending score, ties by ascending
// position -- is the output order, since positions ascend with the candidate index. The other NMS
// modes call their own CPU op the same way (diou_nms_cpu, soft_nms_cpu, matrix_nms_cpu: the same
// result order; soft and matrix also give the decayed scores, which become the output scores).
//
// Threads: images on the pool, claimed one at a time (parallel_for_coarse); a single image (or
// fewer images than threads) splits its score pass over anchor blocks instead, claimed one at a
// time too (a nested parallel call runs inline, parallel.h), and nms_cpu parallelises inside
// when it is called outside a split job. Results never depend on threads:
// each block's candidates are concatenated in block order.
#include "ops/detect/detect.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "ops/box_iou/box_iou.h"
#include "ops/nms/diou_nms.h"
#include "ops/nms/matrix_nms.h"
#include "ops/nms/nms_bitmask.h"
#include "ops/nms/nms.h"
#include "ops/nms/soft_nms.h"

namespace detkernels {

namespace {

constexpr int64_t kAnchorBlock = 2048;  // anchors per score-pass block
constexpr int64_t kBoxAhead = 8;        // box prefetch distance of the candidate gather
// Score-row prefetch distance (bytes). Measured on this 2-core VM (B = 8, A = 25 200, C = 80,
// float32, 64 MB of scores, 2 threads, five alternating runs of 60 calls each): median 6.9 ms
// without, 5.9 ms at 2048 (1024 and 4096: between the two); the hardware prefetcher alone
// leaves the scan waiting on DRAM.
constexpr int64_t kRowPrefetch = 2048;

template <typename T> struct Cand {
  T s;
  int64_t q;
  Cand() {}  // uninitialised: a resize to the candidates' upper bound writes nothing
  Cand(T s_, int64_t q_) : s(s_), q(q_) {}
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

// The row scans use GCC/Clang vector extensions (kBytes-byte vectors: 16 = the SSE2/NEON
// baseline; 32 on x86-64 CPUs with AVX2, chosen at run time: scan_dispatch). g++ does not
// auto-vectorise a max/argmax with IEEE semantics; these compute exactly what the scalar strict
// `>` scan computes (each lane scans its own columns; lanes merge by value, then index). The
// lane operations (compare, select, one IEEE product) give the same values at any width.
// The helpers are always inlined (into collect_rows, then into its 16- or 32-byte entry), so no
// 32-byte vector crosses a call: g++'s -Wpsabi note about such calls does not apply.
#define DK_ALWAYS_INLINE inline __attribute__((always_inline))
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename T, int kBytes = 16> struct Vec {
  using lane_int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T v __attribute__((vector_size(kBytes)));
  typedef lane_int m __attribute__((vector_size(kBytes)));
  static constexpr int n = kBytes / static_cast<int>(sizeof(T));
};

template <typename T, bool Obj, int kBytes = 16>
DK_ALWAYS_INLINE typename Vec<T, kBytes>::v load(const T* r, T o) {
  typename Vec<T, kBytes>::v v;
  __builtin_memcpy(&v, r, sizeof(v));
  if constexpr (Obj) v = v * o;  // elementwise, one rounding each: the scalar product
  return v;
}

template <typename T, bool Obj> DK_ALWAYS_INLINE T at(const T* r, int64_t c, T o) {
  return Obj ? r[c] * o : r[c];
}

// Single label over one row of C > 0 values: row_max's one pass gives the row maximum (lanes and
// kAcc independent accumulators, so the compare/select chains overlap; the maximum of NaN-free
// values is one value up to the sign of zero) and a NaN witness; the class is then the first
// column equal to the maximum -- what a strict `>` scan keeps (-0 == +0), and the value there is
// the scan's -- found only for rows that pass the threshold (first_equal, over the row then in
// L1). Measured at A = 25 200, C = 80, two thirds of the rows above 0.05: whole call 0.95 -> 0.88
// ms with an early-exit first_equal and top_k below. Then (single-thread CPU time of the whole
// call per image, B = 8, a C++ driver on a loaded 2-core host, best of 10): 1.15 ms; branch-free
// first_equal, 16-byte vectors: 0.92 ms; 32-byte vectors (AVX2) and no push_back: 0.80 ms. Then
// row_max's sum witness and shuffle reduction and first_equal's lane masks (whole call, B = 8,
// 2 threads, three alternating runs of 300 calls each): median 5.8 -> 5.2 ms.
constexpr int kAcc = 4;
constexpr int64_t kSpan = 16;  // multi-label: columns tested together

// Lane reductions by halving shuffles (log2 L steps instead of L scalar ones; a lane loop where
// the compiler lacks __builtin_shufflevector: GCC before 12).
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define DK_HAS_SHUFFLEVECTOR 1
#endif
#endif
template <typename V, int L, typename F> DK_ALWAYS_INLINE auto reduce_lanes(V x, F op) {
#ifdef DK_HAS_SHUFFLEVECTOR
  if constexpr (L == 8) {
    x = op(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3));
    x = op(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5));
    x = op(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6));
  } else if constexpr (L == 4) {
    x = op(x, __builtin_shufflevector(x, x, 2, 3, 0, 1));
    x = op(x, __builtin_shufflevector(x, x, 1, 0, 3, 2));
  } else {
    x = op(x, __builtin_shufflevector(x, x, 1, 0));
  }
  return x[0];
#else
  V acc = x, y = x;  // op is lane-wise: lane 0 of op(acc, y) is op(acc[0], x[l])
  for (int l = 1; l < L; ++l) {
    y[0] = x[l];
    acc[0] = op(acc, y)[0];
  }
  return acc[0];
#endif
}

// One pass: the row maximum `best` and a NaN witness `sum`, the sum of the row's values (one
// add per vector instead of a compare and an OR). A NaN anywhere makes the sum NaN; a NaN-free
// row gives a NaN sum only when it holds both infinities (or overflows into one of them), so a
// NaN sum is confirmed by first_nan before it counts. `best` is meaningful for NaN-free rows.
template <typename T, bool Obj, int kBytes = 16>
DK_ALWAYS_INLINE T row_max(const T* r, int64_t C, T o, T& sum) {
  using V = typename Vec<T, kBytes>::v;
  constexpr int L = Vec<T, kBytes>::n, W = kAcc * L;
  int64_t c = 0;
  T best = at<T, Obj>(r, 0, o);
  sum = T(0);
  if (C >= W) {
    V m[kAcc], t[kAcc];
    for (int k = 0; k < kAcc; ++k) t[k] = m[k] = load<T, Obj, kBytes>(r + k * L, o);
    for (c = W; c + W <= C; c += W) {
      for (int k = 0; k < kAcc; ++k) {
        const V v = load<T, Obj, kBytes>(r + c + k * L, o);
        t[k] += v;
        m[k] = v > m[k] ? v : m[k];
      }
    }
    for (; c + L <= C; c += L) {  // whole vectors left (fewer than kAcc)
      const V v = load<T, Obj, kBytes>(r + c, o);
      t[0] += v;
      m[0] = v > m[0] ? v : m[0];
    }
    for (int k = 1; k < kAcc; ++k) {
      m[0] = m[k] > m[0] ? m[k] : m[0];
      t[0] += t[k];
    }
    best = reduce_lanes<V, L>(m[0], [](V x, V y) { return x > y ? x : y; });
    sum = reduce_lanes<V, L>(t[0], [](V x, V y) { return x + y; });
  } else {
    c = 1;
    sum = best;
  }
  for (; c < C; ++c) {
    const T v = at<T, Obj>(r, c, o);
    sum += v;
    best = v > best ? v : best;
  }
  return best;
}

// The first of the C values r[0], r[stride], ... (times o) that is NaN, or C: the exact check
// behind a NaN witness (rows: stride 1; the column scan: an anchor's classes).
template <typename T, bool Obj> int64_t first_nan(const T* r, int64_t C, int64_t stride, T o) {
  int64_t c = 0;
  while (c < C && at<T, Obj>(r, c * stride, o) == at<T, Obj>(r, c * stride, o)) ++c;
  return c;
}

// The first column of a NaN-free row (times o) equal to `v`, which the row holds.
//
// x86-64: each vector's compare becomes a lane mask (movmskps / movmskpd), 64 columns of masks
// make one word, and the first set bit of the first nonzero word is the column: per vector one
// compare, one mask move, a shift and an OR, and one branch per 64 columns. The masks come from
// inline asm rather than the intrinsics: the 32-byte form is inlined into the target("avx2")
// entry through default-target templates, where the intrinsics do not compile.
//
// Elsewhere (NEON, ...): every column compared (no early exit: its branch mispredicted), each
// lane keeping the lowest matching column it saw, then the lowest of the lanes.
#if defined(__GNUC__) && defined(__x86_64__)
template <int kBytes, typename M> DK_ALWAYS_INLINE unsigned lane_bits(M m) {
  unsigned r;
  if constexpr (kBytes == 32) {
    if constexpr (sizeof(m[0]) == 4) asm("vmovmskps %t1, %0" : "=r"(r) : "x"(m));
    else asm("vmovmskpd %t1, %0" : "=r"(r) : "x"(m));
  } else {
    if constexpr (sizeof(m[0]) == 4) asm("movmskps %x1, %0" : "=r"(r) : "x"(m));
    else asm("movmskpd %x1, %0" : "=r"(r) : "x"(m));
  }
  return r;
}

template <typename T, bool Obj, int kBytes = 16>
DK_ALWAYS_INLINE int64_t first_equal(const T* r, int64_t C, T o, T v) {
  using V = typename Vec<T, kBytes>::v;
  constexpr int L = Vec<T, kBytes>::n, kWord = 64 / L;  // vectors per 64-bit word of masks
  const V b = V{} + v;
  int64_t c = 0;
  for (; c + kWord * L <= C; c += kWord * L) {
    uint64_t bits = 0;
    for (int k = 0; k < kWord; ++k)
      bits |= uint64_t{lane_bits<kBytes>(load<T, Obj, kBytes>(r + c + k * L, o) == b)} << (k * L);
    if (bits) return c + __builtin_ctzll(bits);
  }
  uint64_t bits = 0;  // fewer than kWord whole vectors left
  int k = 0;
  for (; c + L <= C; c += L, ++k)
    bits |= uint64_t{lane_bits<kBytes>(load<T, Obj, kBytes>(r + c, o) == b)} << (k * L);
  if (bits) return c - k * L + __builtin_ctzll(bits);
  while (!(at<T, Obj>(r, c, o) == v)) ++c;  // in the scalar tail
  return c;
}
#else
template <typename T, bool Obj, int kBytes = 16>
DK_ALWAYS_INLINE int64_t first_equal(const T* r, int64_t C, T o, T v) {
  using V = typename Vec<T, kBytes>::v;
  using M = typename Vec<T, kBytes>::m;
  using I = typename Vec<T, kBytes>::lane_int;
  constexpr int L = Vec<T, kBytes>::n;
  if (sizeof(I) < sizeof(int64_t) && C > (int64_t{1} << 30)) {  // columns beyond the lane ints
    int64_t c = 0;
    while (!(at<T, Obj>(r, c, o) == v)) ++c;
    return c;
  }
  const V b = V{} + v;
  M col, first = M{} + static_cast<I>(C);
  for (int l = 0; l < L; ++l) col[l] = static_cast<I>(l);
  int64_t c = 0;
  for (; c + L <= C; c += L, col += static_cast<I>(L)) {
    const M hit = load<T, Obj, kBytes>(r + c, o) == b;
    first = (hit & (col < first)) ? col : first;
  }
  int64_t f = C;
  for (int l = 0; l < L; ++l) f = first[l] < f ? first[l] : f;
  for (; c < C; ++c) f = (at<T, Obj>(r, c, o) == v && c < f) ? c : f;
  return f;
}
#endif

// Whether any value of a multi-label span (times o) is > thr: the cheap pre-test (OR-reductions
// only) that rejects most spans of a thresholded call.
template <typename T, bool Obj> bool row_any_above(const T* r, int64_t C, T o, T thr) {
  using V = typename Vec<T>::v;
  using M = typename Vec<T>::m;
  constexpr int L = Vec<T>::n;
  int64_t c = 0;
  M hit0 = {}, hit1 = {};
  for (; c + 2 * L <= C; c += 2 * L) {
    const V v0 = load<T, Obj>(r + c, o), v1 = load<T, Obj>(r + c + L, o);
    hit0 |= v0 > thr;
    hit1 |= v1 > thr;
  }
  hit0 |= hit1;
  int any = 0;
  for (int l = 0; l < L; ++l) any |= hit0[l] != 0;
  for (; c < C; ++c) {
    const T v = at<T, Obj>(r, c, o);
    any |= v > thr;
  }
  return any != 0;
}

template <typename T, bool Obj, int kBytes = 16>
DK_ALWAYS_INLINE void collect_rows(const T* s, const T* obj, const Params& p, T thr, int64_t lo,
                                   int64_t hi, std::vector<Cand<T>>& out) {
  const int64_t C = p.C, sa = p.st.score_anchor, sc = p.st.score_class;
  std::vector<T> row(sc == 1 ? 0 : static_cast<size_t>(C));  // a strided row, gathered
  // Single label: at most one candidate per anchor, written through w (push_back's capacity test
  // stayed an out-of-line call: ~9% of the call), then the vector cut to what was written.
  Cand<T>* w = nullptr;
  if (!p.multi) {
    const size_t base = out.size();
    out.resize(base + static_cast<size_t>(hi - lo));
    w = out.data() + base;
  }
  // Software prefetch kRowPrefetch bytes ahead of the scan (rows with unit class stride): every
  // cache line of the rows [lo, hi) once, in order (a prefetch never faults: the run past the last
  // row is harmless).
  const char* pf = reinterpret_cast<const char*>(s + lo * sa) + kRowPrefetch;
  const int64_t row_bytes = sa * static_cast<int64_t>(sizeof(T));
  for (int64_t a = lo; a < hi; ++a) {
    const T* r = s + a * sa;
    if (sc == 1)
      for (const char* end = reinterpret_cast<const char*>(r) + row_bytes + kRowPrefetch; pf < end;
           pf += 64)
        __builtin_prefetch(pf);
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
        if (!row_any_above<T, Obj>(r + c0, n, o, thr)) continue;
        for (int64_t c = c0; c < c0 + n; ++c) {
          const T v = at<T, Obj>(r, c, o);
          if (v > thr) out.push_back({v, a * C + c});
        }
      }
      continue;
    }
    // Single label: the first NaN, else the first maximum. A row with a NaN fails any threshold.
    T sum;
    T best = row_max<T, Obj, kBytes>(r, C, o, sum);
    int64_t bc = 0;
    // Thresholded, a row whose maximum fails fails either way (a NaN fails any threshold).
    if (p.has_thr && !(best > thr)) continue;
    if (sum != sum && (bc = first_nan<T, Obj>(r, C, 1, o)) < C) {
      if (p.has_thr) continue;
    } else {
      bc = first_equal<T, Obj, kBytes>(r, C, o, best);
    }
    best = at<T, Obj>(r, bc, o);
    *w++ = Cand<T>(best, a * C + bc);  // q = a * C + c: the order of a
  }
  if (!p.multi) out.resize(static_cast<size_t>(w - out.data()));
}


// Single label with anchors contiguous and classes strided (ultralytics' [B, 4 + C, A] head
// output): the strict `>` scan runs over classes for a block of anchors at once, vectorised over
// the anchors (running maximum and its class per anchor, and the sum as row_max's NaN witness: a
// NaN sum is confirmed, and the first NaN class found, by a scalar pass over that anchor's
// column). Same result as the row scan: first NaN, else the lowest class holding the maximum.
// Each class row is read kColBlock anchors (4 KiB of float32) at a time. Measured (B = 8, A =
// 25 200, C = 80, ultralytics' layout, 2 threads, median of 200 calls): 11.0 ms with 256-anchor
// blocks, 16-byte vectors and a NaN compare per class; 7.0 ms with this; 512 or 2048 anchors, or
// a software prefetch of the rows ahead: within 0.4 ms of it.
constexpr int64_t kColBlock = 1024;

template <typename T, bool Obj, int kBytes = 16>
DK_ALWAYS_INLINE void collect_columns(const T* s, const T* obj, const Params& p, T thr, int64_t lo,
                                      int64_t hi, std::vector<Cand<T>>& out) {
  using V = typename Vec<T, kBytes>::v;
  using M = typename Vec<T, kBytes>::m;
  using I = typename Vec<T, kBytes>::lane_int;
  constexpr int L = Vec<T, kBytes>::n;
  const int64_t C = p.C, sc = p.st.score_class;
  alignas(64) T m[kColBlock], o[kColBlock], sum[kColBlock];
  alignas(64) I id[kColBlock];
  for (int64_t blk = lo; blk < hi; blk += kColBlock) {
    const int64_t n = std::min(kColBlock, hi - blk), nv = n - n % L;
    for (int64_t j = 0; j < n; ++j) {
      o[j] = Obj ? obj[(blk + j) * p.st.obj_anchor] : T(1);
      sum[j] = m[j] = Obj ? s[blk + j] * o[j] : s[blk + j];
      id[j] = 0;
    }
    for (int64_t c = 1; c < C; ++c) {
      const T* col = s + c * sc + blk;
      const I ci = static_cast<I>(c);
      for (int64_t j = 0; j < nv; j += L) {
        V v, mv, sv;
        M iv;
        __builtin_memcpy(&v, col + j, sizeof(v));
        __builtin_memcpy(&mv, m + j, sizeof(mv));
        __builtin_memcpy(&sv, sum + j, sizeof(sv));
        __builtin_memcpy(&iv, id + j, sizeof(iv));
        if constexpr (Obj) {
          V ov;
          __builtin_memcpy(&ov, o + j, sizeof(ov));
          v = v * ov;
        }
        const M gt = v > mv;
        mv = gt ? v : mv;
        iv = gt ? ci : iv;
        sv += v;
        __builtin_memcpy(m + j, &mv, sizeof(mv));
        __builtin_memcpy(sum + j, &sv, sizeof(sv));
        __builtin_memcpy(id + j, &iv, sizeof(iv));
      }
      for (int64_t j = nv; j < n; ++j) {
        const T v = Obj ? col[j] * o[j] : col[j];
        if (v > m[j]) { m[j] = v; id[j] = ci; }
        sum[j] += v;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t a = blk + j;
      // Maybe a NaN: the first NaN class is the best, failing any threshold.
      if (sum[j] != sum[j]) {
        const int64_t c = first_nan<T, Obj>(s + a, C, sc, o[j]);
        if (c < C) {
          if (!p.has_thr) out.push_back({at<T, Obj>(s + a, c * sc, o[j]), a * C + c});
          continue;
        }
      }
      if (!p.has_thr || m[j] > thr) out.push_back({m[j], a * C + id[j]});
    }
  }
}

// The scans with 32-byte vectors where the CPU has AVX2 (the same values: see Vec; AVX2 only, no
// FMA, and -ffp-contract=off holds), else 16 (measurements: above row_max).
enum class Scan { kRows, kColumns };
template <Scan K, typename T, bool Obj, int kBytes>
DK_ALWAYS_INLINE void scan(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
                           std::vector<Cand<T>>& out) {
  if constexpr (K == Scan::kRows)
    collect_rows<T, Obj, kBytes>(s, obj, p, thr, lo, hi, out);
  else
    collect_columns<T, Obj, kBytes>(s, obj, p, thr, lo, hi, out);
}
#if defined(__GNUC__) && defined(__x86_64__)
#define DK_DETECT_AVX2 1
template <Scan K, typename T, bool Obj>
__attribute__((target("avx2"))) void scan_avx2(const T* s, const T* obj, const Params& p, T thr,
                                               int64_t lo, int64_t hi, std::vector<Cand<T>>& out) {
  scan<K, T, Obj, 32>(s, obj, p, thr, lo, hi, out);
}
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif
template <Scan K, typename T, bool Obj>
void scan_dispatch(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
                   std::vector<Cand<T>>& out) {
#ifdef DK_DETECT_AVX2
  if (cpu_has_avx2()) return scan_avx2<K, T, Obj>(s, obj, p, thr, lo, hi, out);
#endif
  scan<K, T, Obj, 16>(s, obj, p, thr, lo, hi, out);
}

// Candidates of anchors [lo, hi) of one image, appended in ascending q.
template <typename T>
void collect(const T* s, const T* obj, const Params& p, T thr, int64_t lo, int64_t hi,
             std::vector<Cand<T>>& out) {
  const bool columns = p.C > 1 && !p.multi && p.st.score_anchor == 1 && p.st.score_class != 1 &&
                       p.C < (int64_t{1} << 31);  // class ids fit the mask type
  // At most one candidate per anchor without multi-label: no regrowth (measured: growing from
  // empty cost ~25% of the score pass when two thirds of the anchors pass).
  if (!p.multi) out.reserve(out.size() + static_cast<size_t>(hi - lo));
  if (p.C == 0) {  // [A] scores: one candidate per anchor
    const int64_t sa = p.st.score_anchor, oa = p.st.obj_anchor;
    for (int64_t a = lo; a < hi; ++a) {
      const T v = obj ? s[a * sa] * obj[a * oa] : s[a * sa];
      if (!p.has_thr || v > thr) out.push_back({v, a});
    }
  } else if (columns) {
    if (obj)
      scan_dispatch<Scan::kColumns, T, true>(s, obj, p, thr, lo, hi, out);
    else
      scan_dispatch<Scan::kColumns, T, false>(s, obj, p, thr, lo, hi, out);
  } else if (obj) {
    scan_dispatch<Scan::kRows, T, true>(s, obj, p, thr, lo, hi, out);
  } else {
    scan_dispatch<Scan::kRows, T, false>(s, obj, p, thr, lo, hi, out);
  }
}

// float32 rank key: higher key = ranks before (NaN first, then descending score with -0 == +0,
// then ascending q); exact for q < 2^32. One integer compare instead of score_before's NaN tests.
// Its upper half u is the score alone in that order: the complement of the GPU sorts' ascending
// key (nms_bitmask.h nms_score_key: NaN 0, -0 == +0).
inline uint32_t score_key(float s) { return ~static_cast<uint32_t>(nms_score_key(s)); }
inline uint64_t rank_key(uint32_t u, int64_t q) {
  return (uint64_t{u} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(q));
}

// Keeps the k < cand.size() best candidates (ranks_before), still in ascending q.
template <typename T> void top_k(std::vector<Cand<T>>& cand, int64_t k) {
  if (k == 0) {
    cand.clear();
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (cand.back().q < (int64_t{1} << 32)) {  // q ascends: the last is the largest
      // Rank keys are distinct, so the k-th largest key splits the set exactly; filtering keeps
      // the ascending q order (no sort of the k). The k-th key by a radix select: a histogram of
      // the score keys' top kBinBits bits (sign, exponent, 3 mantissa bits) finds the bin that
      // holds it and how many rank above that bin; nth_element then runs over that bin's keys
      // only (all of them in the worst case: one bin, as before). Measured (perf, B = 8, A =
      // 25 200, 16 287 candidates, k = 1000): the top-k was 18% of the call's CPU time with
      // nth_element over every key; see the closing note of issue 12 for the new share.
      constexpr int kBinBits = 12, kShift = 32 - kBinBits;
      const size_t n = cand.size();
      std::vector<uint32_t> u(n);
      uint32_t hist[1u << kBinBits] = {};
      for (size_t j = 0; j < n; ++j) {
        u[j] = score_key(cand[j].s);
        ++hist[u[j] >> kShift];
      }
      uint32_t bin = (1u << kBinBits) - 1;
      int64_t above = 0;  // candidates in bins above `bin`
      while (above + hist[bin] < k) above += hist[bin--];
      std::vector<uint64_t> key;
      key.reserve(hist[bin]);
      for (size_t j = 0; j < n; ++j)
        if (u[j] >> kShift == bin) key.push_back(rank_key(u[j], cand[j].q));
      const int64_t r = k - 1 - above;  // the k-th key's rank within its bin
      std::nth_element(key.begin(), key.begin() + r, key.end(), std::greater<uint64_t>());
      const uint64_t kth = key[static_cast<size_t>(r)];
      size_t w = 0;
      for (size_t j = 0; j < n; ++j)
        if (rank_key(u[j], cand[j].q) >= kth) cand[w++] = cand[j];
      cand.resize(w);
      return;
    }
  }
  std::nth_element(cand.begin(), cand.begin() + k, cand.end(), ranks_before<T>);
  cand.resize(static_cast<size_t>(k));
  std::sort(cand.begin(), cand.end(), [](const Cand<T>& a, const Cand<T>& b) { return a.q < b.q; });
}

// Step 5: the chosen NMS over the n candidates (xyxy [n, 4], scores, classes; contiguous, in
// ascending candidate index), each mode's own CPU op called as is. The kept positions go to
// `keep` in output order; soft and matrix also fill `decayed` (the kept ones' scores, in that
// order), with at most K kept. Soft and matrix take one class (zeros) when class-agnostic: their
// per-class form orders the kept boxes by decayed score, ties by position (reference/detect.py).
template <typename T>
int64_t run_nms(const DetectNms& nms, const T* xyxy, const T* sc, const int64_t* cls,
                bool per_class, int64_t n, double iou_thr, int64_t K, int64_t* keep,
                std::vector<T>& decayed) {
  const int dt = std::is_same_v<T, float> ? kFloat32 : kFloat64;
  const int64_t* classes = per_class ? cls : nullptr;
  switch (nms.mode) {
    case kDetectIou:
      return nms_cpu(dt, xyxy, sc, classes, n, iou_thr, keep);
    case kDetectDiou:
      return diou_nms_cpu(dt, xyxy, sc, classes, n, iou_thr, nms.beta, keep);
    default:
      break;
  }
  std::vector<int64_t> one_class;
  if (!per_class) one_class.assign(static_cast<size_t>(n), 0);
  const int64_t* labels = per_class ? cls : one_class.data();
  decayed.resize(static_cast<size_t>(n));
  const int64_t kept =
      nms.mode == kDetectSoft
          ? soft_nms_cpu(dt, xyxy, sc, labels, n, iou_thr, nms.sigma, nms.decay, nms.min_score, K,
                         keep, decayed.data())
          : matrix_nms_cpu(dt, xyxy, sc, labels, n, nms.decay, nms.sigma, nms.has_min_score,
                           nms.min_score, K, -1, keep, decayed.data());
  decayed.resize(static_cast<size_t>(kept));
  return kept;
}

template <typename T>
void run_image(const T* boxes, const T* s, const T* obj, const int64_t* idxs, const Params& p,
               int fmt, double iou_thr, const DetectNms& nms, T thr, int64_t K, bool split, T* ob,
               T* os, int64_t* oc, int64_t* oi, int64_t* count) {
  const int64_t A = p.A, C = p.C;
  std::vector<Cand<T>> cand;
  const int64_t nblk = (A + kAnchorBlock - 1) / kAnchorBlock;
  if (split && nblk > 1) {
    std::vector<std::vector<Cand<T>>> part(static_cast<size_t>(nblk));
    parallel_for_coarse(nblk, [&](int64_t lo, int64_t hi) {
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
  if (p.top_k >= 0 && static_cast<int64_t>(cand.size()) > p.top_k) top_k(cand, p.top_k);
  const int64_t n = static_cast<int64_t>(cand.size());
  // Anchor and class of a candidate (single label stored q = a * C + c; the output q is a).
  const bool pairs = C > 0;
  std::vector<T> xyxy(static_cast<size_t>(4 * n)), sc(static_cast<size_t>(n));
  std::vector<int64_t> cls(static_cast<size_t>(n)), keep(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    // The selected anchors' boxes are scattered over the image's boxes, which the score pass did
    // not read: each one a cache miss, so fetch kBoxAhead of them ahead.
    if (j + kBoxAhead < n) {
      const int64_t qa = cand[j + kBoxAhead].q;
      __builtin_prefetch(boxes + (pairs ? qa / C : qa) * p.st.box_anchor);
    }
    const int64_t q = cand[j].q, a = pairs ? q / C : q;
    cls[j] = pairs ? q % C : (idxs ? idxs[a] : 0);
    sc[j] = cand[j].s;
    const T* bp = boxes + a * p.st.box_anchor;
    const T b4[4] = {bp[0], bp[p.st.box_coord], bp[2 * p.st.box_coord], bp[3 * p.st.box_coord]};
    box_corners(b4, fmt, xyxy[4 * j], xyxy[4 * j + 1], xyxy[4 * j + 2], xyxy[4 * j + 3]);
  }
  const bool per_class = !p.agnostic && (pairs || idxs);
  std::vector<T> decayed;  // soft / matrix: the kept candidates' decayed scores
  const int64_t kept = n ? run_nms(nms, xyxy.data(), sc.data(), cls.data(), per_class, n, iou_thr,
                                   K, keep.data(), decayed)
                         : 0;
  const int64_t c = std::min(K, kept);
  *count = c;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t j = k < c ? keep[k] : -1;
    for (int d = 0; d < 4; ++d) ob[4 * k + d] = j >= 0 ? xyxy[4 * j + d] : T(0);
    os[k] = j < 0 ? T(0) : decayed.empty() ? sc[j] : decayed[k];
    oc[k] = j >= 0 ? cls[j] : -1;
    oi[k] = j >= 0 ? (pairs ? cand[j].q / C : cand[j].q) : -1;
  }
}

}  // namespace

void detect_cpu(int dtype, const void* boxes, const void* scores, const void* objectness,
                const int64_t* idxs, int64_t B, int64_t A, int64_t C, const DetectStrides& st,
                int fmt, double iou_threshold, bool has_score_thr, double score_thr,
                int64_t top_k, int64_t max_det, bool multi_label, bool class_agnostic,
                const DetectNms& nms, void* out_boxes, void* out_scores, int64_t* out_cls,
                int64_t* out_idx, int64_t* counts) {
  if (nms.mode < kDetectIou || nms.mode > kDetectMatrix)
    throw std::invalid_argument("detect_cpu: nms mode must be 0 (iou), 1 (diou), 2 (soft), 3 (matrix)");
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
    parallel_for_coarse(B, [&](int64_t lo, int64_t hi) {
      for (int64_t im = lo; im < hi; ++im)
        run_image(b + im * st.box_image, s + im * st.score_image,
                  o ? o + im * st.obj_image : nullptr, idxs ? idxs + im * A : nullptr, p, fmt,
                  iou_threshold, nms, thr, K, split, ob + im * K * 4, os + im * K, out_cls + im * K,
                  out_idx + im * K, counts + im);
    });
  });
}

}  // namespace detkernels
