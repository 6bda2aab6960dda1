// Pruned greedy NMS (nms_sparse.h): a spatial index of the kept boxes.
//
// Why it is exact. Greedy NMS keeps candidate j (visiting order) iff no KEPT box before it
// suppresses it; the plain loop (nms_cpu.cpp) tests every kept box. Here only the kept boxes that
// can suppress j are tested, with the very same nms_suppresses(kept, candidate) call, so every
// keep decision, the kept set and the order are identical. "Can suppress" rests on nms.h's
// arithmetic, in the working type T (float or double; float16/bfloat16 arrive as float):
//   w = std_max(0, dx) with dx = std_min(ax2, bx2) - std_max(ax1, bx1); h likewise.
//   std_max(0, dx) returns 0 unless 0 < dx, so w is +0 whenever dx <= 0, dx = -0 or dx is NaN,
//   and otherwise w > 0 (possibly +inf); the same for h.
//   If w = 0 (or h = 0): inter = 0 * h is +0, or NaN when h = +inf. Then
//   iou = inter / ((area_a + area_b) - inter) is +0, -0 (negative union) or NaN (0/0, NaN or
//   NaN areas); never > 0. So with a threshold thr >= 0 (T, already rounded down) the pair never
//   suppresses: (0 > thr), (-0 > thr) and (NaN > thr) are all false.
// The argument needs thr >= 0: a negative threshold suppresses through IoU 0 (every later box
// goes), so nms_sparse_segment returns false for !(thr >= 0) -- negative thresholds and NaN
// (NaN never suppresses at all, so pruning would be exact there too; it is left to the plain
// path to keep the rule simple). Thresholds >= 1 need nothing special: the argument holds.
//
// Which pairs have w = 0 or h = 0, for a kept box a and a candidate b (each box is classed by its
// own four coordinates):
//  * inert: all coordinates finite and x1 >= x2 or y1 >= y2 (zero-area, inverted). Then w = 0
//    (or h = 0) against ANY partner, in either role: std_min(ax2, bx2) <= ax2 and
//    std_max(ax1, bx1) >= ax1 hold even when the partner has NaN (std_max(a, NaN) = a,
//    std_max(NaN, b) = NaN, which gives dx = NaN), and with infinities dx is -inf or NaN;
//    ax2 <= ax1 then gives dx <= 0 or NaN. Inert boxes are kept and never enter the index.
//  * regular: finite with x1 < x2 and y1 < y2. For two regular boxes no NaN occurs and, finite
//    IEEE subtraction being exact in sign (x - y > 0 iff x > y, subnormals included),
//    w > 0 iff ax1 < bx2 and bx1 < ax2; h likewise. The index returns a superset of the kept
//    regular boxes with ax1 < bx2, ax2 > bx1, ay1 < by2, ay2 > by1.
//  * wild: any NaN or infinite coordinate. No shortcut: a kept wild box is tested against every
//    later non-inert candidate, a wild candidate against every kept box.
//
// The index. Regular boxes are put in levels of square-ish cells, sizes sx * 2^k by sy * 2^k
// (k < kLevels, sx, sy the median width and height of a sample): a box goes to the first level
// whose cell is at least its width and height (boxes larger than the last level are treated like
// wild ones), into the one cell holding its corner (x1, y1); a level's cells are a dense row-major grid
// when about as many as its boxes, else hashed into buckets (collisions only merge cells); slots are reserved up front (counted over all boxes, filled as boxes are kept). Kept box
// a of level k can overlap b only if b.x1 - Wk < a.x1 < b.x2, Wk >= every exact width of level k
// (the double width rounded, inflated by 2^-40 so that it bounds the exact one); cell() is a
// monotone map (round-to-nearest subtraction and a positive scale, then clamping), so a.x1's cell
// lies between the cells of the rounded b.x1 - Wk and b.x2 -- whatever the rounding. A query too
// wide for a level (more cells than the level has buckets) scans the level's buckets instead.
#include "ops/nms/nms_sparse.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "ops/nms/nms.h"

namespace detkernels {

namespace {

std::atomic<int> g_path{kNmsPathAuto};

constexpr int kLevels = 16;             // cells sx * 2^k: 1 .. 32768 times the median box
constexpr double kCellScale = 2.0;      // level-0 cell: this times the median box (bench)
constexpr int64_t kSample = 128;        // boxes sampled for the cell size and the density rule
constexpr int64_t kCellCap = int64_t{1} << 40;  // cell coordinates are clamped to [0, 2^40]

// The rule (nms_sparse_segment, kNmsPathAuto). Measured on the 2-core dev machine (busy: other
// builds running), float32, IoU 0.5, ms, plain / pruned (forced with _C.testing.nms_set_path),
// and query_share of the input:
//   existing nms scenarios (640 px image, data.uniform_boxes / clustered_boxes):
//     uniform   N=4096  3.1 / 4.8  (0.12)   N=25200  50 / 98  (0.12)
//     clustered N=4096  2.0 / 3.2  (0.22)   N=25200  30 / 75  (0.20)
//     clustered, 80 classes (segments of ~300): N=25200  4.0 / 7.9
//   data.large_nms_boxes (issue 16's density):
//     sparse    N=2048  0.98 / 0.51  N=4096  3.7 / 1.1 (0.014)  N=25200  132 / 7.6 (0.002)
//     clustered N=2048  0.29 / 0.30  N=4096  0.81 / 0.62 (0.019) N=25200  20 / 4.5 (0.003)
//     one big cluster   N=4096  0.26 / 0.30 (1.0)  N=25200  1.9 / 2.3 (1.0)
// Hence:
//  * below kMinBoxes boxes in a segment the gain is small (clustered: none at 2048) and the
//    existing N = 2000 cases then never pay for the rule's sample: plain;
//  * more than n / kWildShare wild boxes: they are tested exhaustively anyway: plain;
//  * query_share of a kRuleSample-box sample above kQueryShare: the queries would visit a large
//    share of the boxes (one big cluster, boxes large for their image: the pruned loop is
//    sequential, the plain one vectorised and on two threads): plain. Wins were seen at <= 0.02,
//    losses at >= 0.12; 0.05 splits them.
constexpr int64_t kMinBoxes = 4096;
constexpr int64_t kWildShare = 16;
constexpr size_t kRuleSample = 64;
constexpr double kQueryShare = 0.05;

enum Kind : uint8_t { kInert = 0, kRegular = 1, kWild = 2 };

inline int64_t cell_of(double v, double origin, double inv) {
  const double t = (v - origin) * inv;   // monotone in v; NaN only for 0 * inf, mapped to 0
  if (!(t > 0)) return 0;
  if (t >= static_cast<double>(kCellCap)) return kCellCap;
  return static_cast<int64_t>(t);
}

inline uint64_t bucket_hash(int64_t cx, int64_t cy) {
  uint64_t h = static_cast<uint64_t>(cx) * 0x9E3779B97F4A7C15ull ^
               static_cast<uint64_t>(cy) * 0xC2B2AE3D27D4EB4Full;
  return h ^ (h >> 31);
}

struct Level {
  double inv_x = 0, inv_y = 0;  // 1 / cell size
  double wq = 0, hq = 0;        // >= every exact width / height in the level
  int64_t count = 0;            // regular boxes of this level (kept or not)
  int64_t gx = 0, gy = 0;       // a dense gx * gy grid (row-major), or gx = 0: hashed cells
  int64_t begin = 0, size = 0;  // bucket range [begin, begin + size); hashed: a power of two
  // Bucket of cell (cx, cy). Dense: clamped to the grid (still monotone, so still a superset).
  int64_t bucket(int64_t cx, int64_t cy) const {
    if (gx) return begin + std::min(cy, gy - 1) * gx + std::min(cx, gx - 1);
    return begin + static_cast<int64_t>(bucket_hash(cx, cy) & static_cast<uint64_t>(size - 1));
  }
};

// A kept box. Row-wise (not column-wise like nms_cpu.cpp's blocks): a bucket holds a few boxes
// visited in random order, so one box should be one cache line, not five.
template <typename T> struct Slot { T x1, y1, x2, y2, area; };
struct Bucket { int32_t start, fill; };  // slots [start, start + fill) are kept boxes

double median(std::vector<double>& v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// The rule's estimate of the pruned path's work: of the sampled ordered pairs (a, b), the share
// whose a lies in a cell b's query visits (or is too large for the levels: every query sees it).
// The plain loop tests every kept box, the pruned one this share of them.
template <typename T, typename LevelOf>
double query_share(const std::vector<int64_t>& sample, const T* x1, const T* y1, const T* x2,
                   const T* y2, const double* cwx, const double* cwy, const LevelOf& level_of) {
  const size_t step = std::max<size_t>(1, sample.size() / kRuleSample);
  std::vector<int64_t> sub;
  for (size_t i = 0; i < sample.size(); i += step) sub.push_back(sample[i]);
  const size_t m = sub.size();
  double ox = INFINITY, oy = INFINITY;
  for (int64_t p : sub) {
    ox = std::min(ox, static_cast<double>(x1[p]));
    oy = std::min(oy, static_cast<double>(y1[p]));
  }
  std::vector<int> lev(m);
  std::vector<int64_t> cx(m), cy(m);
  uint32_t used = 0;
  for (size_t i = 0; i < m; ++i) {
    lev[i] = level_of(sub[i]);
    if (lev[i] == kLevels) continue;
    used |= 1u << lev[i];
    cx[i] = cell_of(static_cast<double>(x1[sub[i]]), ox, 1 / cwx[lev[i]]);
    cy[i] = cell_of(static_cast<double>(y1[sub[i]]), oy, 1 / cwy[lev[i]]);
  }
  double hits = 0;
  int64_t q[kLevels][4];
  for (size_t j = 0; j < m; ++j) {
    const double bx1 = x1[sub[j]], by1 = y1[sub[j]], bx2 = x2[sub[j]], by2 = y2[sub[j]];
    for (int k = 0; k < kLevels; ++k) {
      if (!(used >> k & 1)) continue;
      q[k][0] = cell_of(bx1 - cwx[k], ox, 1 / cwx[k]);
      q[k][1] = cell_of(bx2, ox, 1 / cwx[k]);
      q[k][2] = cell_of(by1 - cwy[k], oy, 1 / cwy[k]);
      q[k][3] = cell_of(by2, oy, 1 / cwy[k]);
    }
    for (size_t i = 0; i < m; ++i) {
      if (i == j) continue;
      const int k = lev[i];
      hits += k == kLevels ||
              (q[k][0] <= cx[i] && cx[i] <= q[k][1] && q[k][2] <= cy[i] && cy[i] <= q[k][3]);
    }
  }
  return hits / (static_cast<double>(m) * static_cast<double>(m - 1));
}

}  // namespace

int nms_set_path(int path) { return g_path.exchange(path); }

template <typename T>
bool nms_sparse_segment(const T* x1, const T* y1, const T* x2, const T* y2, const T* area,
                        int64_t n, T thr, uint8_t* keep) {
  const int path = g_path.load(std::memory_order_relaxed);
  if (path == kNmsPathPlain || !(thr >= T(0))) return false;  // the argument needs thr >= 0
  if (n < 2 || n >= (int64_t{1} << 28)) return false;        // int32 slots and buckets below
  const bool rule = path == kNmsPathAuto;
  if (rule && n < kMinBoxes) return false;

  const auto kind_of = [&](int64_t p) -> uint8_t {
    const bool fin = std::isfinite(x1[p]) && std::isfinite(y1[p]) && std::isfinite(x2[p]) &&
                     std::isfinite(y2[p]);
    return !fin ? kWild : (x1[p] < x2[p] && y1[p] < y2[p]) ? kRegular : kInert;
  };
  const auto width = [&](int64_t p) { return static_cast<double>(x2[p]) - static_cast<double>(x1[p]); };
  const auto height = [&](int64_t p) { return static_cast<double>(y2[p]) - static_cast<double>(y1[p]); };

  // A strided sample sets the cell sizes and (rule) estimates the wild share and the query share.
  const int64_t stride = std::max<int64_t>(1, n / kSample);
  std::vector<int64_t> sample;
  int64_t sampled = 0, swild = 0;
  for (int64_t p = 0; p < n; p += stride, ++sampled) {
    const uint8_t k = kind_of(p);
    swild += k == kWild;
    if (k == kRegular) sample.push_back(p);
  }
  if (rule && swild * kWildShare > sampled) return false;
  if (sample.empty())
    for (int64_t p = 0; p < n; ++p)
      if (kind_of(p) == kRegular) { sample.push_back(p); break; }
  double sx = 1, sy = 1;
  if (!sample.empty()) {
    std::vector<double> v;
    for (int64_t p : sample) v.push_back(width(p));
    sx = kCellScale * median(v);
    v.clear();
    for (int64_t p : sample) v.push_back(height(p));
    sy = kCellScale * median(v);
  }
  Level lv[kLevels];
  double cwx[kLevels], cwy[kLevels];  // cell sizes
  for (int k = 0; k < kLevels; ++k) {
    cwx[k] = std::ldexp(sx, k);
    cwy[k] = std::ldexp(sy, k);
    lv[k].inv_x = 1.0 / cwx[k];
    lv[k].inv_y = 1.0 / cwy[k];
  }
  // Level of a regular box: the first whose cell is at least its size; kLevels = too large.
  const auto level_of = [&](int64_t p) {
    const double w = width(p), h = height(p);
    int k = 0;
    while (k < kLevels && (w > cwx[k] || h > cwy[k])) ++k;
    return k;
  };
  if (rule && sample.size() >= 2 && query_share(sample, x1, y1, x2, y2, cwx, cwy, level_of) > kQueryShare)
    return false;

  // Class of each box; the grid's origin.
  std::vector<uint8_t> kind(static_cast<size_t>(n));
  double ox = INFINITY, oy = INFINITY;
  for (int64_t p = 0; p < n; ++p) {
    kind[p] = kind_of(p);
    if (kind[p] == kRegular) {
      ox = std::min(ox, static_cast<double>(x1[p]));
      oy = std::min(oy, static_cast<double>(y1[p]));
    }
  }
  const auto cell_key = [&](int k, int64_t p) {
    return std::make_pair(cell_of(static_cast<double>(x1[p]), ox, lv[k].inv_x),
                          cell_of(static_cast<double>(y1[p]), oy, lv[k].inv_y));
  };

  // Levels, buckets and slots: count every regular box, reserve its slot range per bucket.
  std::vector<int8_t> level(static_cast<size_t>(n), -1);
  std::vector<int32_t> bucket(static_cast<size_t>(n), -1);
  double mx[kLevels], my[kLevels];  // largest x1, y1 per level: the dense grid's extent
  std::fill(mx, mx + kLevels, -INFINITY);
  std::fill(my, my + kLevels, -INFINITY);
  for (int64_t p = 0; p < n; ++p) {
    if (kind[p] != kRegular) continue;
    const int k = level_of(p);
    if (k == kLevels) { kind[p] = kWild; continue; }  // larger than the coarsest cell
    level[p] = static_cast<int8_t>(k);
    ++lv[k].count;
    lv[k].wq = std::max(lv[k].wq, width(p));
    lv[k].hq = std::max(lv[k].hq, height(p));
    mx[k] = std::max(mx[k], static_cast<double>(x1[p]));
    my[k] = std::max(my[k], static_cast<double>(y1[p]));
  }
  int64_t nb = 0;
  for (int k = 0; k < kLevels; ++k) {
    Level& L = lv[k];
    // Rounded double widths are within a relative 2^-53 of the exact ones (subnormal differences
    // are exact); the 2^-40 inflation makes wq, hq upper bounds of every exact width and height.
    L.wq *= 1 + std::ldexp(1.0, -40);
    L.hq *= 1 + std::ldexp(1.0, -40);
    L.begin = nb;
    L.size = 0;
    if (L.count) {
      // Dense when the level's cells are about as many as its boxes (row neighbours share cache
      // lines), hashed otherwise (sparse or far-flung boxes).
      const int64_t gx = cell_of(mx[k], ox, L.inv_x) + 1, gy = cell_of(my[k], oy, L.inv_y) + 1;
      if (gx <= 4 * L.count + 16 && gy <= 4 * L.count + 16 && gx * gy <= 4 * L.count + 16) {
        L.gx = gx;
        L.gy = gy;
        L.size = gx * gy;
      } else {
        L.size = 16;
        while (L.size < 2 * L.count) L.size *= 2;
      }
    }
    nb += L.size;
  }
  std::vector<Bucket> bk(static_cast<size_t>(nb) + 1, Bucket{0, 0});
  for (int64_t p = 0; p < n; ++p) {
    if (level[p] < 0) continue;
    const Level& L = lv[level[p]];
    const auto c = cell_key(level[p], p);
    bucket[p] = static_cast<int32_t>(L.bucket(c.first, c.second));
    ++bk[bucket[p] + 1].start;
  }
  for (int64_t b = 0; b < nb; ++b) bk[b + 1].start += bk[b].start;
  // Kept regular boxes by bucket; kept wild (and too large) boxes.
  std::vector<Slot<T>> slots(static_cast<size_t>(bk[nb].start)), wide(static_cast<size_t>(n - bk[nb].start));
  int64_t nwide = 0;

  // Kept boxes of bucket b that suppress the candidate. Slots hold regular boxes only, so for a
  // finite candidate the strict-overlap test is exact (no overlap: w = 0 or h = 0, see the top)
  // and skips the division; a wild candidate takes nms_suppresses alone.
  const auto scan = [&](int64_t b, bool finite, T cx1, T cy1, T cx2, T cy2, T ca) {
    for (int32_t i = bk[b].start, e = bk[b].start + bk[b].fill; i < e; ++i) {
      const Slot<T>& a = slots[i];
      if (finite && !(a.x1 < cx2 && cx1 < a.x2 && a.y1 < cy2 && cy1 < a.y2)) continue;
      if (nms_suppresses(a.x1, a.y1, a.x2, a.y2, a.area, cx1, cy1, cx2, cy2, ca, thr)) return true;
    }
    return false;
  };
  for (int64_t j = 0; j < n; ++j) {
    if (kind[j] == kInert) { keep[j] = 1; continue; }  // never suppresses, never suppressed
    const T cx1 = x1[j], cy1 = y1[j], cx2 = x2[j], cy2 = y2[j], ca = area[j];
    bool sup = false;
    for (int64_t i = 0; i < nwide && !sup; ++i)
      sup = nms_suppresses(wide[i].x1, wide[i].y1, wide[i].x2, wide[i].y2, wide[i].area, cx1, cy1,
                           cx2, cy2, ca, thr);
    const bool finite = std::isfinite(cx1) && std::isfinite(cy1) && std::isfinite(cx2) &&
                        std::isfinite(cy2);
    for (int k = 0; k < kLevels && !sup; ++k) {
      const Level& L = lv[k];
      if (!L.count) continue;
      bool all = !finite;
      int64_t qx0 = 0, qx1 = 0, qy0 = 0, qy1 = 0;
      if (finite) {
        qx0 = cell_of(static_cast<double>(cx1) - L.wq, ox, L.inv_x);
        qx1 = cell_of(static_cast<double>(cx2), ox, L.inv_x);
        qy0 = cell_of(static_cast<double>(cy1) - L.hq, oy, L.inv_y);
        qy1 = cell_of(static_cast<double>(cy2), oy, L.inv_y);
        if (L.gx) {  // the dense grid clamps cells to its extent: clamp the range likewise
          qx0 = std::min(qx0, L.gx - 1); qx1 = std::min(qx1, L.gx - 1);
          qy0 = std::min(qy0, L.gy - 1); qy1 = std::min(qy1, L.gy - 1);
        }
        // Empty ranges (qx1 < qx0: b is inverted in x, nothing can overlap) scan nothing.
        const int64_t cw = qx1 - qx0 + 1, ch = qy1 - qy0 + 1;
        all = cw > L.size || ch > L.size || (cw > 0 && ch > 0 && cw * ch > L.size);
      }
      if (all) {
        for (int64_t b = L.begin; b < L.begin + L.size && !sup; ++b)
          sup = scan(b, finite, cx1, cy1, cx2, cy2, ca);
      } else {
        // The cell of b's own corner first: a box that suppresses b overlaps it a lot, so its
        // corner is most often there (an early exit for most suppressed candidates).
        int64_t ocx = cell_of(static_cast<double>(cx1), ox, L.inv_x);
        int64_t ocy = cell_of(static_cast<double>(cy1), oy, L.inv_y);
        if (L.gx) { ocx = std::min(ocx, L.gx - 1); ocy = std::min(ocy, L.gy - 1); }
        sup = scan(L.bucket(ocx, ocy), true, cx1, cy1, cx2, cy2, ca);
        for (int64_t gy = qy0; gy <= qy1 && !sup; ++gy)
          for (int64_t gx = qx0; gx <= qx1 && !sup; ++gx)
            if (gx != ocx || gy != ocy) sup = scan(L.bucket(gx, gy), true, cx1, cy1, cx2, cy2, ca);
      }
    }
    if (sup) continue;
    keep[j] = 1;
    if (bucket[j] >= 0) {
      Bucket& q = bk[bucket[j]];
      slots[static_cast<size_t>(q.start + q.fill++)] = Slot<T>{cx1, cy1, cx2, cy2, ca};
    } else {
      wide[static_cast<size_t>(nwide++)] = Slot<T>{cx1, cy1, cx2, cy2, ca};
    }
  }
  return true;
}

template bool nms_sparse_segment<float>(const float*, const float*, const float*, const float*,
                                        const float*, int64_t, float, uint8_t*);
template bool nms_sparse_segment<double>(const double*, const double*, const double*,
                                         const double*, const double*, int64_t, double, uint8_t*);

}  // namespace detkernels
