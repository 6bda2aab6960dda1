// Rotated-box IoU (box_iou with fmt 'cxcywhr'): the only copy of the geometry (rotated corners,
// the intersection polygon of two rectangles, its area), shared by box_iou_rotated_cpu.cpp, the
// rotated NMS (ops/nms/nms_rotated_cpu.cpp) and any GPU kernel. NumPy reference (the
// specification): detkernels/reference/rotated.py, same operation order.
//
// Semantics: torchvision 0.29.1's CPU torchvision::box_iou_rotated (from detectron2), every float
// operation in the same order and the same precision. For boxes (cx, cy, w, h, a) in working type
// T (float or double), angle a in degrees, counter-clockwise in the image plane (y down):
//   shift = double(T(cx1 + cx2)) / 2         (double; the pair's mid-point, for precision)
//   x_ctr = T(double(cx) - shift)            (likewise y)
//   c, s  = T(cos(double(a) * 0.01745329251)) * T(0.5), likewise sin (libm cos/sin in double)
//   corner0 = ((x + s*h) + c*w, (y + c*h) - s*w); corner1 = ((x - s*h) + c*w, (y - c*h) - s*w);
//   corner2 = 2*x - corner0; corner3 = 2*x - corner1
//   area_k = w_k * h_k; if double(area1) < 1e-14 or double(area2) < 1e-14: IoU = 0
//   points: the 16 edge/edge crossings with |det| > 1e-14 and both parameters in (-1e-5, 1 + 1e-5)
//   (double comparisons), then box1's corners inside box2 and box2's inside box1 (projections in
//   (-1e-5, |edge|^2 + 1e-5)), in that order; fewer than 3 points: intersection 0; else the
//   Graham scan of torchvision (swap sort on cross products with 1e-6 tolerances, pops on
//   q1.x*q2.y >= q2.x*q1.y) and the fan area sum(|cross|) / 2 in T.
//   IoU = inter / ((area1 + area2) - inter), clamped to [0, 1] in T (NaN passes), returned as
//   float32 (also for double boxes). The point tolerances are absolute: a box of w * h just above
//   1e-14 "contains" corners ~1e-5 / w away, so such a box far inside a big one gets IoU 1.
// NaN coordinates follow the comparisons, as torchvision's.
#pragma once
#include "common/host_device.h"

#ifndef __CUDACC_RTC__
#include <cmath>
#endif

namespace detkernels {

template <typename T> struct RPoint {
  T x, y;
};
template <typename T> DK_HD RPoint<T> rp_sub(RPoint<T> a, RPoint<T> b) { return {a.x - b.x, a.y - b.y}; }
// A.x * B.y - B.x * A.y (the order of torchvision's cross_2d; no FMA: docs/SPEC.md §2).
template <typename T> DK_HD T rp_cross(RPoint<T> a, RPoint<T> b) { return a.x * b.y - b.x * a.y; }
template <typename T> DK_HD T rp_dot(RPoint<T> a, RPoint<T> b) { return a.x * b.x + a.y * b.y; }
// fabs: clears the sign bit of NaN and -0.0 too, as torchvision's fabs (NaN outputs keep its bits).
DK_HD float rp_abs(float x) { return ::fabsf(x); }
DK_HD double rp_abs(double x) { return ::fabs(x); }

// The double libm functions of the rotated metrics: glibc's on the CPU (as torchvision's CPU kernel
// and the NumPy reference's math.*), the device's on CUDA (as torchvision's CUDA kernel; they may
// differ from glibc's in the last ulp, docs/SPEC.md "Rotated boxes"). The device versions use fma
// by design, so the PTX lint (tests/gpu_logic/test_ptx_lint.py) compiles with DK_LINT_NO_LIBM,
// which stands them in by identities, to check the rest of the code for contractions.
#ifdef DK_LINT_NO_LIBM
DK_HD double dk_dcos(double x) { return x; }
DK_HD double dk_dsin(double x) { return -x; }
DK_HD double dk_dexp(double x) { return x; }
DK_HD double dk_dlog(double x) { return -x; }
#else
DK_HD double dk_dcos(double x) { return ::cos(x); }
DK_HD double dk_dsin(double x) { return ::sin(x); }
DK_HD double dk_dexp(double x) { return ::exp(x); }
DK_HD double dk_dlog(double x) { return ::log(x); }
#endif

// Half cosine and sine of a box angle in degrees: T(cos(double(a) * 0.01745329251)) * T(0.5).
// Depends on the box only, so callers compute it once per box (torchvision: once per pair).
template <typename T> DK_HD void rotated_half_cos_sin(T angle_deg, T& c, T& s) {
  const double theta = static_cast<double>(angle_deg) * 0.01745329251;
  c = static_cast<T>(dk_dcos(theta)) * T(0.5);
  s = static_cast<T>(dk_dsin(theta)) * T(0.5);
}

// The four corners of a box with (shifted) centre (x, y), size (w, h), half cos/sin (c, s).
template <typename T> DK_HD void rotated_corners(T x, T y, T w, T h, T c, T s, RPoint<T> (&p)[4]) {
  p[0].x = (x + s * h) + c * w;
  p[0].y = (y + c * h) - s * w;
  p[1].x = (x - s * h) + c * w;
  p[1].y = (y - c * h) - s * w;
  p[2].x = T(2) * x - p[0].x;
  p[2].y = T(2) * y - p[0].y;
  p[3].x = T(2) * x - p[1].x;
  p[3].y = T(2) * y - p[1].y;
}

// Corners of `box` (edges e[k] = p[k+1] - p[k]) inside the other rectangle (corner q0, edges
// ab = e_other[0], da = e_other[3]) are appended to out; returns the new count.
template <typename T>
DK_HD int rotated_corners_inside(const RPoint<T> (&p)[4], RPoint<T> q0, RPoint<T> ab, RPoint<T> da,
                                 RPoint<T>* out, int num) {
  const double eps = 1e-5;
  const double ab2 = static_cast<double>(rp_dot(ab, ab)) + eps;
  const double ad2 = static_cast<double>(rp_dot(da, da)) + eps;
  for (int i = 0; i < 4; ++i) {
    const RPoint<T> ap = rp_sub(p[i], q0);
    const double u = static_cast<double>(rp_dot(ap, ab));
    const double v = static_cast<double>(-rp_dot(ap, da));
    if (u > -eps && v > -eps && u < ab2 && v < ad2) out[num++] = p[i];
  }
  return num;
}

// The candidate vertices of the intersection polygon, in torchvision's order (edge crossings
// i-major, then p1's corners in p2, then p2's in p1): at most 24; returns the count.
template <typename T>
DK_HD int rotated_intersection_points(const RPoint<T> (&p1)[4], const RPoint<T> (&p2)[4],
                                      RPoint<T> (&out)[24]) {
  RPoint<T> e1[4], e2[4];
  for (int k = 0; k < 4; ++k) {
    e1[k] = rp_sub(p1[(k + 1) & 3], p1[k]);
    e2[k] = rp_sub(p2[(k + 1) & 3], p2[k]);
  }
  const double eps = 1e-5, hi = 1.0 + eps;
  int num = 0;
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      const T det = rp_cross(e2[j], e1[i]);
      if (static_cast<double>(rp_abs(det)) <= 1e-14) continue;  // parallel (NaN: not skipped)
      const RPoint<T> d = rp_sub(p2[j], p1[i]);
      const double t1 = static_cast<double>(rp_cross(e2[j], d) / det);
      const double t2 = static_cast<double>(rp_cross(e1[i], d) / det);
      if (t1 > -eps && t1 < hi && t2 > -eps && t2 < hi) {
        const T t = static_cast<T>(t1);
        out[num++] = RPoint<T>{p1[i].x + e1[i].x * t, p1[i].y + e1[i].y * t};
      }
    }
  }
  num = rotated_corners_inside(p1, p2[0], e2[0], e2[3], out, num);
  num = rotated_corners_inside(p2, p1[0], e1[0], e1[3], out, num);
  return num;
}

// Area of the convex hull of p[0..num) (num >= 3), by torchvision's Graham scan on points taken
// relative to the lowest (then leftmost) one; p is used as scratch.
template <typename T> DK_HD T convex_hull_area(RPoint<T>* p, int num) {
  int t = 0;
  for (int i = 1; i < num; ++i)
    if (p[i].y < p[t].y || (p[i].y == p[t].y && p[i].x < p[t].x)) t = i;
  const RPoint<T> start = p[t];
  RPoint<T> q[24];
  T dist[24];
  for (int i = 0; i < num; ++i) q[i] = rp_sub(p[i], start);
  {
    const RPoint<T> tmp = q[0];
    q[0] = q[t];
    q[t] = tmp;
  }
  for (int i = 0; i < num; ++i) dist[i] = rp_dot(q[i], q[i]);
  // Swap sort by angle (cross product, 1e-6 tolerance), ties by distance: not a strict weak
  // order, so the exact swap sequence is part of the semantics.
  for (int i = 1; i < num - 1; ++i) {
    for (int j = i + 1; j < num; ++j) {
      const double cp = static_cast<double>(rp_cross(q[i], q[j]));
      if (cp < -1e-6 || (rp_abs(cp) < 1e-6 && dist[i] > dist[j])) {
        const RPoint<T> tq = q[i];
        q[i] = q[j];
        q[j] = tq;
        const T td = dist[i];
        dist[i] = dist[j];
        dist[j] = td;
      }
    }
  }
  int k = 1;  // the first point away from the start
  while (k < num && !(static_cast<double>(dist[k]) > 1e-8)) ++k;
  if (k == num) return T(0);
  q[1] = q[k];
  int m = 2;
  for (int i = k + 1; i < num; ++i) {
    while (m > 1) {
      const RPoint<T> q1 = rp_sub(q[i], q[m - 2]), q2 = rp_sub(q[m - 1], q[m - 2]);
      if (q1.x * q2.y >= q2.x * q1.y) --m;  // products compared, not subtracted (as torchvision)
      else break;
    }
    q[m++] = q[i];
  }
  if (m <= 2) return T(0);
  T area = T(0);
  for (int i = 1; i < m - 1; ++i) area += rp_abs(rp_cross(rp_sub(q[i], q[0]), rp_sub(q[i + 1], q[0])));
  return static_cast<T>(static_cast<double>(area) / 2.0);
}

// IoU in T of two cxcywhr boxes a, b (5 values each) with their half cos/sin precomputed
// (rotated_half_cos_sin of a[4], b[4]). box_iou stores it as float32; NMS compares it in double.
template <typename T>
DK_HD T rotated_pair_iou(const T* a, const T* b, T ca, T sa, T cb, T sb) {
  const double sx = static_cast<double>(a[0] + b[0]) / 2.0;
  const double sy = static_cast<double>(a[1] + b[1]) / 2.0;
  const T area1 = a[2] * a[3], area2 = b[2] * b[3];
  if (static_cast<double>(area1) < 1e-14 || static_cast<double>(area2) < 1e-14) return T(0);
  RPoint<T> p1[4], p2[4], pts[24];
  rotated_corners(static_cast<T>(static_cast<double>(a[0]) - sx),
                  static_cast<T>(static_cast<double>(a[1]) - sy), a[2], a[3], ca, sa, p1);
  rotated_corners(static_cast<T>(static_cast<double>(b[0]) - sx),
                  static_cast<T>(static_cast<double>(b[1]) - sy), b[2], b[3], cb, sb, p2);
  const int num = rotated_intersection_points(p1, p2, pts);
  const T inter = num <= 2 ? T(0) : convex_hull_area(pts, num);
  T iou = inter / ((area1 + area2) - inter);
  if (iou < T(0)) iou = T(0);  // clamp to [0, 1]; NaN passes through
  if (iou > T(1)) iou = T(1);
  return iou;
}

// A conservative separation test used to skip pairs whose exact computation cannot find 3 points
// (it then returns 0 / ((area1 + area2) - 0), what rotated_pair_iou returns). Per box, in
// double: the half extents of its axis-aligned bounding box, and a slack `pad` that covers the
// kernel's tolerances (corners within 2e-5 / min(|w|, |h|) of the other box count as inside;
// edges are extended by 1e-5 of their length) and its rounding (1e-5 of the coordinates'
// magnitude, about 170 float32 ulps). Two boxes whose padded bounding boxes are apart on x or y
// give at most 2 points (nearly collinear parallel edges, whose crossings are rounding noise,
// lie on at most 2 shared lines), so their IoU is 0. NaN/inf never pass (comparisons false).
struct RotatedBounds {
  double cx, cy, hx, hy, pad;
};
template <typename T> DK_HD RotatedBounds rotated_bounds(const T* b, T c, T s) {
  const double w = rp_abs(static_cast<double>(b[2])), h = rp_abs(static_cast<double>(b[3]));
  const double ac = rp_abs(static_cast<double>(c)), as = rp_abs(static_cast<double>(s));
  RotatedBounds r;
  r.cx = static_cast<double>(b[0]);
  r.cy = static_cast<double>(b[1]);
  r.hx = ac * w + as * h;  // c, s are half cos/sin
  r.hy = as * w + ac * h;
  const double lo = w < h ? w : h;
  r.pad = 2e-5 / lo + 1e-4 * (w + h) + 1e-5 * (rp_abs(r.cx) + rp_abs(r.cy)) + 1e-30;
  return r;
}
DK_HD bool rotated_apart(const RotatedBounds& a, const RotatedBounds& b) {
  const double gx = rp_abs(a.cx - b.cx) - (a.hx + b.hx), gy = rp_abs(a.cy - b.cy) - (a.hy + b.hy);
  const double pad = a.pad + b.pad;
  return gx > pad || gy > pad;
}

// ---- ProbIoU (ultralytics' OBB metric: utils/metrics.py batch_probiou, operation for operation) ----
// Boxes (cx, cy, w, h, r) with r in radians (ultralytics' xywhr). In T, eps = T(1e-7):
//   A = (w*w) / 12, B = (h*h) / 12; a = A*cos^2 + B*sin^2, b = A*sin^2 + B*cos^2,
//   c = ((A - B)*cos)*sin                           (cos^2 = cos*cos; cos, sin = libm in double)
//   S = (a1+a2)*(b1+b2) - (c1+c2)^2
//   t1 = (((a1+a2)*(y1-y2)^2 + (b1+b2)*(x1-x2)^2) / (S + eps)) * 0.25
//   t2 = ((((c1+c2)*(x2-x1))*(y1-y2)) / (S + eps)) * 0.5
//   t3 = log(S / (4*sqrt(max(a1*b1 - c1^2, 0) * max(a2*b2 - c2^2, 0)) + eps) + eps) * 0.5
//   bd = clamp((t1 + t2) + t3, eps, 100); probiou = 1 - sqrt((1 - exp(-bd)) + eps)
// exp/log/cos/sin are libm's double functions rounded to T (the NumPy reference calls the same
// libm through math.*), so every backend agrees bit for bit; ultralytics' torch ops (SLEEF) agree
// to a few ulp. When t1 + t2 >= 101 and the log's argument >= 0.5, bd is clamped to 100 whatever
// the log gives, so the log is skipped (the same value: probiou_far).
template <typename T> DK_HD T dk_libm_cos(T x) { return static_cast<T>(dk_dcos(static_cast<double>(x))); }
template <typename T> DK_HD T dk_libm_sin(T x) { return static_cast<T>(dk_dsin(static_cast<double>(x))); }
template <typename T> DK_HD T dk_libm_exp(T x) { return static_cast<T>(dk_dexp(static_cast<double>(x))); }
template <typename T> DK_HD T dk_libm_log(T x) { return static_cast<T>(dk_dlog(static_cast<double>(x))); }

template <typename T> DK_HD void probiou_cov(const T* box, T& a, T& b, T& c) {
  const T A = (box[2] * box[2]) / T(12), B = (box[3] * box[3]) / T(12);
  const T cs = dk_libm_cos(box[4]), sn = dk_libm_sin(box[4]);
  const T cos2 = cs * cs, sin2 = sn * sn;
  a = A * cos2 + B * sin2;
  b = A * sin2 + B * cos2;
  c = ((A - B) * cs) * sn;
}

template <typename T> DK_HD T probiou_from_bd(T bd, T eps) {
  return T(1) - static_cast<T>(::sqrt(static_cast<double>((T(1) - dk_libm_exp(-bd)) + eps)));
}

// ProbIoU of boxes p (first, ultralytics' obb1) and q with their probiou_cov values.
template <typename T>
DK_HD T probiou_pair(const T* p, const T* q, T a1, T b1, T c1, T a2, T b2, T c2, T eps) {
  const T sa = a1 + a2, sb = b1 + b2, sc = c1 + c2;
  const T dy = p[1] - q[1], dx = p[0] - q[0];
  const T S = sa * sb - sc * sc;
  const T t1 = ((sa * (dy * dy) + sb * (dx * dx)) / (S + eps)) * T(0.25);
  const T t2 = (((sc * (q[0] - p[0])) * dy) / (S + eps)) * T(0.5);
  T d1 = a1 * b1 - c1 * c1, d2 = a2 * b2 - c2 * c2;
  d1 = d1 < T(0) ? T(0) : d1;  // clamp_(0): NaN stays NaN
  d2 = d2 < T(0) ? T(0) : d2;
  const T root = static_cast<T>(::sqrt(static_cast<double>(d1 * d2)));
  const T arg = S / (T(4) * root + eps) + eps;
  const T near = t1 + t2;
  T bd;
  if (static_cast<double>(near) >= 101.0 && static_cast<double>(arg) >= 0.5) {
    bd = T(100);  // log(arg) * 0.5 > -0.35: the sum exceeds 100 and is clamped
  } else {
    bd = near + dk_libm_log(arg) * T(0.5);
    bd = bd < eps ? eps : bd;  // clamp(eps, 100): NaN stays NaN
    bd = bd > T(100) ? T(100) : bd;
  }
  return probiou_from_bd(bd, eps);
}

// ---- The two rotated metrics as (per-box preparation, pair value) policies -------------------------
// One form for every loop over pairs: the CPU matrix and NMS loops (box_iou_rotated_cpu.cpp), the
// GPU matrix kernel (box_iou_rotated_kernels.cuh) and the GPU NMS predicate. prep(box) depends on
// one box only (trig, bounds, covariance: computed once per box, not per pair); value(a, b, pa, pb)
// is the metric of a (first) and b in T; Out is the matrix's stored dtype.
template <typename T> struct RotatedIouMetric {
  struct Prep {
    T c, s;  // half cos / sin
    RotatedBounds r;
  };
  using Out = float;  // torchvision's box_iou_rotated returns float32 for any input dtype
  DK_HD static RotatedIouMetric make(T) { return {}; }  // no parameter (a kernel's uniform form)
  DK_HD Prep prep(const T* b) const {
    Prep p;
    rotated_half_cos_sin(b[4], p.c, p.s);
    p.r = rotated_bounds(b, p.c, p.s);
    return p;
  }
  // Pairs whose padded bounds are apart skip the polygon: their IoU is 0 (rotated_apart).
  DK_HD T value(const T* a, const T* b, const Prep& pa, const Prep& pb) const {
    return rotated_apart(pa.r, pb.r) ? T(0) : rotated_pair_iou(a, b, pa.c, pa.s, pb.c, pb.s);
  }
};

// The rotated NMS metrics, by code (CPU nms_rotated_multi_cpu and the CUDA engine; Python:
// detkernels/backends/native.py ROTATED_NMS_METRICS).
enum RotatedNmsMetric : int { kRotatedIou = 0, kRotatedProbIou = 1, kRotatedProbIouFast = 2 };

template <typename T> struct ProbIouMetric {
  struct Prep {
    T a, b, c;
  };
  using Out = T;
  T eps;
  DK_HD static ProbIouMetric make(T e) { return {e}; }
  DK_HD Prep prep(const T* box) const {
    Prep p;
    probiou_cov(box, p.a, p.b, p.c);
    return p;
  }
  DK_HD T value(const T* p, const T* q, const Prep& pp, const Prep& pq) const {
    return probiou_pair(p, q, pp.a, pp.b, pp.c, pq.a, pq.b, pq.c, eps);
  }
};

#ifndef __CUDACC_RTC__
/// @brief out[b, i, j] = IoU(boxes1[b, i], boxes2[b, j]) for contiguous cxcywhr boxes1 [B, N, 5],
/// boxes2 [B, M, 5] of dtype kFloat32 or kFloat64; out float32 [B, N, M] (as torchvision).
void box_iou_rotated_cpu(int dtype, int64_t B, int64_t N, int64_t M, const void* boxes1,
                         const void* boxes2, void* out);
/// @brief Greedy NMS of N contiguous cxcywhr boxes [N, 5] with scores [N] (same dtype, kFloat32
/// or kFloat64), within classes[N] if not null: descending score (NaN first, ties by index), a
/// kept box suppresses later ones (of its class) with double(IoU(kept, other)) > iou_threshold.
/// Writes the kept indices in that order to keep (room for N); returns how many.
int64_t nms_rotated_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t N, double iou_threshold, int64_t* keep);
/// @brief out[b, i, j] = ProbIoU(boxes1[b, i], boxes2[b, j]) for ultralytics-xywhr boxes
/// [B, N, 5] / [B, M, 5] (kFloat32/kFloat64), out [B, N, M] in the boxes' dtype.
void probiou_cpu(int dtype, double eps, int64_t B, int64_t N, int64_t M, const void* boxes1,
                 const void* boxes2, void* out);
/// @brief NMS on ProbIoU (boxes [N, 5] ultralytics xywhr, scores [N], classes or null): greedy
/// (fast = 0, nms_rotated's rules) or Fast-NMS (fast = 1: a box is dropped when any box before
/// it in score order, suppressed or not, has ProbIoU(that, it) > iou_threshold; ultralytics'
/// TorchNMS.fast_nms). Kept indices by descending score (NaN first, ties by index); returns count.
int64_t nms_probiou_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t N, double iou_threshold, double eps, int fast, int64_t* keep);
/// @brief Fixed-size rotated NMS of B images (multi_image_nms_rotated / _probiou, issue 17):
/// boxes [B, N, 5] (cxcywhr for metric 0, ultralytics xywhr for 1 and 2), scores [B, N] (same
/// dtype, kFloat32/kFloat64), classes int64 [B, N] or null. metric: 0 rotated IoU (greedy),
/// 1 ProbIoU greedy, 2 ProbIoU Fast-NMS. Per image: the candidates with double(score) >
/// score_threshold (all if !has_score_threshold), then nms_rotated_cpu / nms_probiou_cpu's
/// rules on them; the first min(kept, max_output) kept indices (into the image's N boxes, by
/// descending score) to out_idx[b, :], the rest -1; counts[b] = that number. Images in parallel.
void nms_rotated_multi_cpu(int dtype, int metric, const void* boxes, const void* scores,
                           const int64_t* classes, int64_t B, int64_t N, double iou_threshold,
                           bool has_score_threshold, double score_threshold, double eps,
                           int64_t max_output, int64_t* out_idx, int64_t* counts);
#ifdef DETKERNELS_WITH_CUDA
/// @brief As box_iou_rotated_cpu / probiou_cpu, on device pointers of device `device`, enqueued on
/// `stream` (a cudaStream_t of that device); the trig is the device's double cos/sin.
void box_iou_rotated_cuda(int dtype, int64_t B, int64_t N, int64_t M, const void* boxes1,
                          const void* boxes2, void* out, int device, void* stream);
void probiou_cuda(int dtype, double eps, int64_t B, int64_t N, int64_t M, const void* boxes1,
                  const void* boxes2, void* out, int device, void* stream);
#endif
#endif

}  // namespace detkernels
