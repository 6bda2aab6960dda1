// CPU Soft-NMS over soft_nms.h (weights) and nms.h (IoU). Reference: reference/soft_nms.py.
//
// The reference is sequential: pick the current maximum, rescale every other remaining box. This
// driver computes the same picks and the same bits with less work:
//  * the maximum: the segment's boxes are kept in blocks of kBlock positions, each with its best
//    remaining box under the pick order (score_before -- NaN first, -0 == +0 -- then the lower
//    input index), held as an integer key (pick_key) so that maxima are branch-free; a pick scans
//    the block bests. A rescale of box q in block B changes B's best only if q was the best
//    (recomputed from the block: q's score fell or q left) or q now beats it (weights > 1 occur
//    for IoUs outside [0, 1]: q becomes the best). So the bests stay exact.
//  * a rescale is skipped where the weight is exactly 1, which leaves the score bit for bit
//    unchanged (s * 1 == s, NaN included). Weight 1 holds whenever the clipped intersection width
//    or height is 0: the IoU is then +0, -0 or NaN (the argument of nms_sparse.cpp's header: with
//    w = std_max(0, dx) = +0, inter = 0 * h is +0 or NaN), and soft_nms_weight gives 1 for all
//    three -- linear: (double)(+-0) > thr gives 1 - (+-0) == 1 or 1; NaN > thr is false; gaussian:
//    NaN -> 1, dk_exp(-(0 * 0) / sigma) = dk_exp(-0) == 1.
//    Boxes are classed as in nms_sparse.cpp: inert (finite, x1 >= x2 or y1 >= y2: w or h is 0
//    against any partner, in either role), regular (finite, x1 < x2, y1 < y2: w > 0 and h > 0 iff
//    a.x1 < b.x2, b.x1 < a.x2, a.y1 < b.y2, b.y1 < a.y2), wild (a NaN or infinite coordinate: no
//    shortcut). Regular boxes take the first positions, grouped by size level (Level below),
//    then by grid cell (band of y1, cell of x1), then sorted by x1: a picked regular box visits,
//    per level, the cells covering (a.x1 - W, a.x2) in the bands covering (a.y1 - H, a.y2) -- W,
//    H bounding the level's widths and heights, the bounds rounded outwards -- and then every
//    remaining wild box; a picked wild box visits every remaining non-inert box; an inert one
//    none.
//  * a pick first collects the boxes it visits, then rescales them; the Gaussian weights are
//    computed for all of them at once, the exponential several lanes at a time (exp_batch: the
//    same operations as dk_exp, lane by lane).
//  * a box whose decayed score is below the threshold leaves, as in the reference.
// Classes are independent segments; their kept boxes are merged by (score_before, index).
// Measured (N = 5 000, float32, one thread, linear / gaussian; uniform = boxes up to 120 px in a
// 640-px image, clustered = bench data.clustered_boxes): a binary heap of (score, index) entries
// with lazy deletion and one x1 window: uniform 62 / 160 ms, every rescale a push; block bests and
// y1 bands: uniform 12 / 17 ms, clustered 20 / 31 ms (its largest boxes widened every window);
// plus size levels and the SSE2 scan: uniform 7.5 / 10.7 ms, clustered 7.8 / 11.8 ms. Then (CPU
// time of a C++ driver, best of 40, on a loaded 2-core host where the step above read uniform
// 10.2 / 12.9, clustered 8.6 / 12.7 ms): integer pick keys and x1 cells in place of two binary
// searches per band: uniform 5.0 / 7.4, clustered 5.0 / 8.6 ms; the Gaussian's exponentials 4
// (float) at a time (exp_batch): uniform 5.2 / 6.1, clustered 5.2 / 6.2 ms.

#include "ops/nms/soft_nms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/dispatch.h"
#include "ops/nms/nms.h"

namespace detkernels {

namespace {

enum Kind : uint8_t { kInert = 0, kRegular = 1, kWild = 2 };

constexpr int64_t kBlock = 64;  // positions per block of the argmax

template <typename T> bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

// The pick order as one unsigned integer: key(s_a, rank a) > key(s_b, rank b) iff ranks_before
// (score_before -- NaN first, -0 == +0 -- then the lower rank; a position's rank is its index in
// `members`, ascending with the input index). The score's bits are mapped monotonically (all NaNs
// to the top, -0 to +0: x + 0 is +0 for x = -0) into the high half, the rank, inverted, into the
// low half; 0 is below every key and marks a gone box. K is uint64_t (float, fewer than 2^32
// boxes) or unsigned __int128. So the maxima are branch-free integer maxima.
using u128 = unsigned __int128;
inline uint64_t score_ord(float v) {
  if (v != v) return 0xFFFFFFFFu;
  v = v + 0.0f;
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t score_ord(double v) {
  if (v != v) return ~uint64_t{0};
  v = v + 0.0;
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 63) ? ~u : (u | (uint64_t{1} << 63));
}
template <typename K> K pick_key(uint64_t ord, uint64_t rank) {
  constexpr int half = static_cast<int>(sizeof(K)) * 4;
  constexpr K low = (K(1) << half) - 1;
  return (K(ord) << half) | (low - K(rank));
}
template <typename K> uint64_t key_rank(K key) {
  constexpr int half = static_cast<int>(sizeof(K)) * 4;
  constexpr K low = (K(1) << half) - 1;
  return static_cast<uint64_t>(low - (key & low));
}

template <typename T> struct Params {
  int method;
  double thr, sthr;
  T sigma;
};

// Calls f(j) for each j in [k, kend) with a.x1 < x2[j], x1[j] < a.x2, a.y1 < y2[j] and
// y1[j] < a.y2 (the exact overlap test of two regular boxes; y2 is the scan copy, NaN for gone
// boxes), in increasing j. Tested 64 at a time into a bit mask, branch-free (with SSE2: 4 floats
// / 2 doubles per compare), then the set bits are visited.
template <typename T, typename F>
void scan_window(T ax1, T ay1, T ax2, T ay2, const T* x1, const T* x2, const T* y1, const T* y2,
                 int64_t k, int64_t kend, F&& f) {
  for (int64_t k0 = k; k0 < kend; k0 += 64) {
    const int64_t e = std::min(kend, k0 + 64);
    uint64_t bits = 0;
    int64_t j = k0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<T, float>) {
      const __m128 vx1 = _mm_set1_ps(ax1), vy1 = _mm_set1_ps(ay1), vx2 = _mm_set1_ps(ax2),
                   vy2 = _mm_set1_ps(ay2);
      for (; j + 4 <= e; j += 4) {
        const __m128 cx = _mm_and_ps(_mm_cmplt_ps(vx1, _mm_loadu_ps(x2 + j)),
                                     _mm_cmplt_ps(_mm_loadu_ps(x1 + j), vx2));
        const __m128 cy = _mm_and_ps(_mm_cmplt_ps(vy1, _mm_loadu_ps(y2 + j)),
                                     _mm_cmplt_ps(_mm_loadu_ps(y1 + j), vy2));
        const __m128 c = _mm_and_ps(cx, cy);
        bits |= static_cast<uint64_t>(_mm_movemask_ps(c)) << (j - k0);
      }
    } else {
      const __m128d vx1 = _mm_set1_pd(ax1), vy1 = _mm_set1_pd(ay1), vx2 = _mm_set1_pd(ax2),
                    vy2 = _mm_set1_pd(ay2);
      for (; j + 2 <= e; j += 2) {
        const __m128d cx = _mm_and_pd(_mm_cmplt_pd(vx1, _mm_loadu_pd(x2 + j)),
                                      _mm_cmplt_pd(_mm_loadu_pd(x1 + j), vx2));
        const __m128d cy = _mm_and_pd(_mm_cmplt_pd(vy1, _mm_loadu_pd(y2 + j)),
                                      _mm_cmplt_pd(_mm_loadu_pd(y1 + j), vy2));
        const __m128d c = _mm_and_pd(cx, cy);
        bits |= static_cast<uint64_t>(_mm_movemask_pd(c)) << (j - k0);
      }
    }
#endif
    for (; j < e; ++j)
      bits |= static_cast<uint64_t>((ax1 < x2[j]) & (x1[j] < ax2) & (ay1 < y2[j]) &
                                    (y1[j] < ay2)) << (j - k0);
    while (bits) {
      f(k0 + __builtin_ctzll(bits));
      bits &= bits - 1;
    }
  }
}

constexpr int kLevels = 16;  // size levels: up to 2^15 times the median box

// dk_exp over an array, several values at a time with GCC / Clang vector types (16 bytes: 4
// floats or 2 doubles; lane-wise IEEE + - * /, SSE2 on x86-64) wherever every lane has |x| <=
// kFast: there ExpCoef<T>::eval takes no branch (no NaN, no limit), dk_floor's truncation is
// exact and 2^z is a normal number, so its dk_ldexp is the one product y * 2^z, computed here
// with 2^z built from its bits. Every step is ExpCoef's own code (round_arg, mantissa) on lanes,
// so each lane is eval's number. Other groups and the tail take dk_exp. In place (x == y) is fine.
template <typename T> struct ExpLanes;
template <> struct ExpLanes<float> {
  typedef float V __attribute__((vector_size(16)));
  typedef int32_t I __attribute__((vector_size(16)));
  static constexpr int kN = 4;
  static constexpr float kFast = 80.0f;  // |z| <= 116
  static V pow2(I z) { return reinterpret_cast<V>((z + 127) << 23); }
};
template <> struct ExpLanes<double> {
  typedef double V __attribute__((vector_size(16)));
  typedef int64_t I __attribute__((vector_size(16)));
  static constexpr int kN = 2;
  static constexpr double kFast = 700.0;  // |z| <= 1010
  static V pow2(I z) { return reinterpret_cast<V>((z + 1023) << 52); }
};
template <typename T> void exp_batch(const T* x, T* y, int64_t n) {
  using L = ExpLanes<T>;
  using V = typename L::V;
  using I = typename L::I;
  int64_t i = 0;
  for (; i + L::kN <= n; i += L::kN) {
    V v;
    std::memcpy(&v, x + i, sizeof v);
    const I in = (v >= -L::kFast) & (v <= L::kFast);  // lanes: -1 (true) or 0
    bool fast = true;
    for (int l = 0; l < L::kN; ++l) fast &= in[l] != 0;
    if (!fast) {
      for (int l = 0; l < L::kN; ++l) y[i + l] = dk_exp(x[i + l]);
      continue;
    }
    const V u = ExpCoef<T>::round_arg(v);
    const V t = __builtin_convertvector(__builtin_convertvector(u, I), V);  // dk_floor
    const V z = t > u ? t - T(1) : t;
    const V r = ExpCoef<T>::mantissa(v, z) * L::pow2(__builtin_convertvector(z, I));
    std::memcpy(y + i, &r, sizeof r);
  }
  for (; i < n; ++i) y[i] = dk_exp(x[i]);
}

// soft_nms_weight(iou[i], kSoftGaussian, -, sigma) for n IoUs, the exponentials by exp_batch.
template <typename T> void gaussian_weights(const T* iou, T* w, int64_t n, T sigma) {
  for (int64_t i = 0; i < n; ++i) w[i] = soft_gaussian_arg(iou[i], sigma);
  exp_batch(w, w, n);
  for (int64_t i = 0; i < n; ++i) w[i] = iou[i] != iou[i] ? T(1) : w[i];
}

// One size level of the regular boxes. W, H bound every exact width / height of the level (the
// double differences, rounded, inflated by 2^-40). Its boxes lie in a grid of cells: bands of y1
// about H / 2 high (at most one per 8 boxes), each cut into cells of x1 about W / 2 wide (at most
// four per box of the band on average); the positions run band by band, cell by cell, by x1
// within a cell. A query visits, in each band of (a.y1 - H, a.y2), the cells of (a.x1 - W, a.x2):
// one contiguous range of positions. band_of / cell_of are monotone in y / x (a rounded
// subtraction and a positive scale, then clamping), so whatever the rounding, the cell of any x1
// in that interval lies between the cells of its (outward-rounded) ends. The ranges hold boxes
// outside the window too: scan_window's test is exact.
struct Axis {
  double lo = INFINITY, hi = -INFINITY, inv = 0;
  int64_t n = 1;
  void plan(int64_t cap, double step) {
    const double range = hi - lo;
    if (cap > 1 && std::isfinite(range) && range > 0 && step > 0) {
      n = std::max<int64_t>(1, std::min<int64_t>(cap,
                            static_cast<int64_t>(std::min(range / step, 65536.0)) + 1));
      inv = static_cast<double>(n) / range;
    }
  }
  int64_t of(double v) const {
    const double t = (v - lo) * inv;
    if (!(t > 0)) return 0;
    if (t >= static_cast<double>(n - 1)) return n - 1;
    return static_cast<int64_t>(t);
  }
};
struct Level {
  double W = 0, H = 0;
  int64_t count = 0;
  Axis y, x;                         // y: bands; x: cells within a band
  std::vector<int64_t> cell_start;   // positions [cell_start[c], cell_start[c + 1]) form cell c
  void plan() {
    W *= 1 + 0x1p-40;
    H *= 1 + 0x1p-40;
    if (count == 0) return;
    y.plan(count / 8, H / 2);
    x.plan((4 * count) / y.n, W / 2);
  }
  int64_t cell_of(double bx1, double by1) const { return y.of(by1) * x.n + x.of(bx1); }
};

// Soft-NMS of the boxes `members` (input indices), appending (index, score) to out in pick order,
// at most `limit` of them. K: the pick key type (pick_key).
template <typename T, typename K>
void segment(const T* boxes, const T* scores, const int64_t* members, int64_t m,
             const Params<T>& prm, int64_t limit, std::vector<int64_t>& out_idx,
             std::vector<T>& out_s) {
  // Positions: the regular boxes by (size level, band of y1, x1), then the wild ones, then the
  // inert ones.
  std::vector<uint8_t> kind_of(static_cast<size_t>(m));
  std::vector<double> ws, hs;  // regular widths / heights (double differences, rounded)
  int64_t n_reg = 0, n_wild = 0;
  for (int64_t p = 0; p < m; ++p) {
    const T* b = boxes + 4 * members[p];
    const bool finite = std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) &&
                        std::isfinite(b[3]);
    kind_of[p] = !finite ? kWild : (b[0] < b[2] && b[1] < b[3]) ? kRegular : kInert;
    n_wild += kind_of[p] == kWild;
    if (kind_of[p] != kRegular) continue;
    ++n_reg;
    ws.push_back(static_cast<double>(b[2]) - static_cast<double>(b[0]));
    hs.push_back(static_cast<double>(b[3]) - static_cast<double>(b[1]));
  }
  // Size levels: level k holds the boxes with width <= w0 * 2^k and height <= h0 * 2^k (w0, h0 the
  // median width and height; the last level takes the rest), so that one large box does not
  // widen every query. Levels only group boxes: any grouping is exact, since every level is
  // queried with its own bounds.
  double w0 = 1, h0 = 1;
  if (n_reg > 0) {
    std::vector<double> t = ws;
    std::nth_element(t.begin(), t.begin() + n_reg / 2, t.end());
    w0 = t[n_reg / 2];
    t = hs;
    std::nth_element(t.begin(), t.begin() + n_reg / 2, t.end());
    h0 = t[n_reg / 2];
    if (!(w0 > 0) || !std::isfinite(w0)) w0 = 1;
    if (!(h0 > 0) || !std::isfinite(h0)) h0 = 1;
  }
  std::vector<Level> levels(kLevels);
  std::vector<int64_t> lev(static_cast<size_t>(m), 0), cellv(static_cast<size_t>(m), 0);
  for (int64_t p = 0, r = 0; p < m; ++p) {
    if (kind_of[p] != kRegular) continue;
    const double f = std::max(ws[r] / w0, hs[r] / h0);
    int k = 0;
    while (k < kLevels - 1 && f > std::ldexp(1.0, k)) ++k;
    lev[p] = k;
    Level& L = levels[k];
    const double x = static_cast<double>(boxes[4 * members[p]]);
    const double y = static_cast<double>(boxes[4 * members[p] + 1]);
    L.x.lo = std::min(L.x.lo, x);
    L.x.hi = std::max(L.x.hi, x);
    L.y.lo = std::min(L.y.lo, y);
    L.y.hi = std::max(L.y.hi, y);
    L.W = std::max(L.W, ws[r]);
    L.H = std::max(L.H, hs[r]);
    ++L.count;
    ++r;
  }
  for (Level& L : levels) L.plan();
  for (int64_t p = 0; p < m; ++p)
    if (kind_of[p] == kRegular)
      cellv[p] = levels[lev[p]].cell_of(static_cast<double>(boxes[4 * members[p]]),
                                        static_cast<double>(boxes[4 * members[p] + 1]));
  std::vector<int64_t> perm(static_cast<size_t>(m));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
    const int ka = kind_of[a] == kRegular ? 0 : kind_of[a] == kWild ? 1 : 2;
    const int kb = kind_of[b] == kRegular ? 0 : kind_of[b] == kWild ? 1 : 2;
    if (ka != kb) return ka < kb;
    if (ka != 0) return false;
    if (lev[a] != lev[b]) return lev[a] < lev[b];
    if (cellv[a] != cellv[b]) return cellv[a] < cellv[b];
    return boxes[4 * members[a]] < boxes[4 * members[b]];
  });
  std::vector<T> x1(m), y1(m), x2(m), y2(m), area(m), s(m), scan_y2(m);
  std::vector<int64_t> gid(m), pos_of(m);
  std::vector<uint8_t> alive(m);
  std::vector<K> key(m);
  std::vector<int64_t> wild;
  for (Level& L : levels) L.cell_start.assign(static_cast<size_t>(L.y.n * L.x.n) + 1, 0);
  for (int64_t p = 0; p < m; ++p) {
    const int64_t q = perm[p];
    const T* b = boxes + 4 * members[q];
    x1[p] = b[0]; y1[p] = b[1]; x2[p] = b[2]; y2[p] = b[3];
    area[p] = nms_area(b[0], b[1], b[2], b[3]);
    s[p] = scores[members[q]];
    gid[p] = members[q];
    alive[p] = !(static_cast<double>(s[p]) < prm.sthr);
    // The scan's copy of y2: NaN once the box is gone, so `a.y1 < scan_y2` fails (no alive test).
    scan_y2[p] = alive[p] ? b[3] : std::numeric_limits<T>::quiet_NaN();
    key[p] = alive[p] ? pick_key<K>(score_ord(s[p]), static_cast<uint64_t>(q)) : K(0);
    pos_of[q] = p;
    if (p < n_reg) {
      ++levels[lev[q]].cell_start[cellv[q] + 1];
    } else if (kind_of[q] == kWild && alive[p]) {
      wild.push_back(p);
    }
  }
  int64_t start = 0;  // each level's bands: consecutive position ranges, levels in order
  for (Level& L : levels) {
    L.cell_start[0] = start;
    for (size_t k = 0; k + 1 < L.cell_start.size(); ++k) L.cell_start[k + 1] += L.cell_start[k];
    start += L.count;
  }
  const int64_t n_ni = n_reg + n_wild;

  const int64_t nb = (m + kBlock - 1) / kBlock;
  std::vector<K> best(static_cast<size_t>(nb), K(0));  // each block's largest key
  std::vector<uint8_t> dirty(static_cast<size_t>(nb), 0);
  auto rebuild = [&](int64_t blk) {
    K bk = 0;
    for (int64_t p = blk * kBlock, e = std::min(m, p + kBlock); p < e; ++p)
      bk = key[p] > bk ? key[p] : bk;
    best[blk] = bk;
    dirty[blk] = 0;
  };
  for (int64_t blk = 0; blk < nb; ++blk) rebuild(blk);
  std::vector<int64_t> dirty_list;
  auto mark = [&](int64_t blk) {
    if (!dirty[blk]) {
      dirty[blk] = 1;
      dirty_list.push_back(blk);
    }
  };

  // A pick collects the boxes it may decay (cand), then takes their IoUs, their weights (the
  // Gaussian's exponentials several at a time: gaussian_weights) and applies them in increasing
  // position.
  std::vector<int64_t> cand(static_cast<size_t>(m));
  std::vector<T> cand_iou(static_cast<size_t>(m)), cand_w(static_cast<size_t>(m));
  int64_t nc = 0;
  auto apply = [&](int64_t q, T ns) {
    if (same_bits(ns, s[q])) return;  // weight 1 (or a rounding back to s): nothing changes
    s[q] = ns;
    K nk = 0;
    if (static_cast<double>(ns) < prm.sthr) {
      alive[q] = 0;
      scan_y2[q] = std::numeric_limits<T>::quiet_NaN();
    } else {
      nk = pick_key<K>(score_ord(ns), static_cast<uint64_t>(perm[q]));
    }
    const K ok = key[q];
    key[q] = nk;
    const int64_t blk = q / kBlock;
    if (dirty[blk]) return;
    if (nk > best[blk]) best[blk] = nk;  // q rose above the best (a weight > 1)
    else if (ok == best[blk]) mark(blk);  // q was the best and fell or left
  };

  int64_t kept = 0;
  while (kept < limit) {
    K ak = 0;
    for (int64_t blk = 0; blk < nb; ++blk) ak = best[blk] > ak ? best[blk] : ak;
    if (ak == K(0)) break;
    const int64_t a = pos_of[key_rank(ak)];
    alive[a] = 0;
    key[a] = 0;
    scan_y2[a] = std::numeric_limits<T>::quiet_NaN();
    out_idx.push_back(gid[a]);
    out_s.push_back(s[a]);
    ++kept;
    mark(a / kBlock);
    if (a < n_reg) {
      // Regular b can overlap a only if a.x1 - W < b.x1 < a.x2 and a.y1 - H < b.y1 < a.y2 (W, H of
      // b's level): the lower bounds are computed in double and lowered by more than their two
      // roundings, so they are <= the exact a.x1 - W, a.y1 - H.
      const T ax1 = x1[a], ay1 = y1[a], ax2 = x2[a], ay2 = y2[a];
      const double dx1 = static_cast<double>(ax1), dy1 = static_cast<double>(ay1);
      const double xhi = static_cast<double>(x2[a]), yhi = static_cast<double>(ay2);
      for (const Level& L : levels) {
        if (L.count == 0) continue;
        const double xlo = (dx1 - L.W) - (std::fabs(dx1) + L.W) * 0x1p-50;
        const double ylo = (dy1 - L.H) - (std::fabs(dy1) + L.H) * 0x1p-50;
        const int64_t clo = L.x.of(xlo), chi = L.x.of(xhi);
        for (int64_t bd = L.y.of(ylo), bend = L.y.of(yhi); bd <= bend; ++bd) {
          const int64_t k = L.cell_start[bd * L.x.n + clo], kend = L.cell_start[bd * L.x.n + chi + 1];
          scan_window(ax1, ay1, ax2, ay2, x1.data(), x2.data(), y1.data(), scan_y2.data(), k, kend,
                      [&](int64_t j) { cand[nc++] = j; });
        }
      }
      for (const int64_t q : wild)
        if (alive[q]) cand[nc++] = q;
    } else if (a < n_ni) {  // wild
      for (int64_t q = 0; q < n_ni; ++q)
        if (alive[q]) cand[nc++] = q;
    }
    {
      const T ax1 = x1[a], ay1 = y1[a], ax2 = x2[a], ay2 = y2[a], aa = area[a];
      if (prm.method == kSoftLinear) {  // one pass (no exponential to batch)
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t q = cand[c];
          const T iou = nms_iou(ax1, ay1, ax2, ay2, aa, x1[q], y1[q], x2[q], y2[q], area[q]);
          apply(q, s[q] * soft_nms_weight(iou, kSoftLinear, prm.thr, prm.sigma));
        }
      } else {
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t q = cand[c];
          cand_iou[c] = nms_iou(ax1, ay1, ax2, ay2, aa, x1[q], y1[q], x2[q], y2[q], area[q]);
        }
        gaussian_weights(cand_iou.data(), cand_w.data(), nc, prm.sigma);
        for (int64_t c = 0; c < nc; ++c) apply(cand[c], s[cand[c]] * cand_w[c]);
      }
      nc = 0;
    }
    for (const int64_t blk : dirty_list) rebuild(blk);
    dirty_list.clear();
  }
}

// segment with the narrowest pick key for T and m.
template <typename T>
void soft_segment(const T* boxes, const T* scores, const int64_t* members, int64_t m,
                  const Params<T>& prm, int64_t limit, std::vector<int64_t>& out_idx,
                  std::vector<T>& out_s) {
  if (std::is_same_v<T, float> && m < (int64_t{1} << 32) - 1)
    segment<T, uint64_t>(boxes, scores, members, m, prm, limit, out_idx, out_s);
  else
    segment<T, u128>(boxes, scores, members, m, prm, limit, out_idx, out_s);
}

template <typename T>
int64_t run(const T* boxes, const T* scores, const int64_t* classes, int64_t n, double thr,
            double sigma, int method, double sthr, int64_t max_output, int64_t* keep, T* out_s) {
  const Params<T> prm{method, thr, sthr, static_cast<T>(sigma)};
  const int64_t limit = max_output < 0 ? n : std::min(max_output, n);
  std::vector<int64_t> idx;
  std::vector<T> sc;
  std::vector<int64_t> members(static_cast<size_t>(n));
  std::iota(members.begin(), members.end(), int64_t{0});
  if (classes == nullptr) {
    soft_segment(boxes, scores, members.data(), n, prm, limit, idx, sc);
  } else {
    // Class segments (class asc, index asc within one), each soft-NMS'd alone, then merged.
    std::stable_sort(members.begin(), members.end(),
                     [&](int64_t a, int64_t b) { return classes[a] < classes[b]; });
    for (int64_t b = 0; b < n;) {
      int64_t e = b + 1;
      while (e < n && classes[members[e]] == classes[members[b]]) ++e;
      soft_segment(boxes, scores, members.data() + b, e - b, prm, limit, idx, sc);
      b = e;
    }
    std::vector<int64_t> order(idx.size());
    std::iota(order.begin(), order.end(), int64_t{0});
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return ranks_before(sc[a], idx[a], sc[b], idx[b]); });
    if (static_cast<int64_t>(order.size()) > limit) order.resize(static_cast<size_t>(limit));
    for (size_t k = 0; k < order.size(); ++k) {
      keep[k] = idx[order[k]];
      out_s[k] = sc[order[k]];
    }
    return static_cast<int64_t>(order.size());
  }
  std::copy(idx.begin(), idx.end(), keep);
  std::copy(sc.begin(), sc.end(), out_s);
  return static_cast<int64_t>(idx.size());
}

}  // namespace

int64_t soft_nms_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                     int64_t n, double iou_threshold, double sigma, int method,
                     double score_threshold, int64_t max_output, int64_t* keep, void* out_scores) {
  if (method != kSoftLinear && method != kSoftGaussian)
    throw std::invalid_argument("soft_nms_cpu: method must be 0 (linear) or 1 (gaussian)");
  return dispatch_float(dtype, "soft_nms_cpu", [&](auto t) {
    using T = decltype(t);
    return run(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, n,
               iou_threshold, sigma, method, score_threshold, max_output, keep,
               static_cast<T*>(out_scores));
  });
}

void soft_nms_multi_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t B, int64_t N, double iou_threshold, double sigma, int method,
                        double score_threshold, int64_t max_output, int64_t* out_idx,
                        void* out_scores, int64_t* counts) {
  if (method != kSoftLinear && method != kSoftGaussian)
    throw std::invalid_argument("soft_nms_multi_cpu: method must be 0 (linear) or 1 (gaussian)");
  dispatch_float(dtype, "soft_nms_multi_cpu", [&](auto t) {
    using T = decltype(t);
    const T* bx = static_cast<const T*>(boxes);
    const T* sc = static_cast<const T*>(scores);
    T* os = static_cast<T*>(out_scores);
    std::vector<int64_t> keep(static_cast<size_t>(N));
    std::vector<T> kept(static_cast<size_t>(N));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t c = run(bx + b * N * 4, sc + b * N, classes ? classes + b * N : nullptr, N,
                            iou_threshold, sigma, method, score_threshold, max_output, keep.data(),
                            kept.data());
      counts[b] = c;
      for (int64_t k = 0; k < max_output; ++k) {
        out_idx[b * max_output + k] = k < c ? keep[k] : -1;
        os[b * max_output + k] = k < c ? kept[k] : T(0);
      }
    }
  });
}

void soft_nms_exp_cpu(int dtype, const void* x, void* y, int64_t n) {
  dispatch_float(dtype, "soft_nms_exp_cpu", [&](auto t) {
    using T = decltype(t);
    const T* in = static_cast<const T*>(x);
    T* out = static_cast<T*>(y);
    exp_batch(in, out, n);
  });
}

}  // namespace detkernels
