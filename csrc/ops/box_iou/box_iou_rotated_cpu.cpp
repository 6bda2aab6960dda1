// CPU loops over box_iou_rotated.h: the IoU matrix (rows of the [B, N, M] output split across
// threads) and the greedy rotated NMS. The half cos/sin and the padded bounds of every box are
// computed once (torchvision: 4 libm calls per pair); pairs whose padded bounds are apart skip
// the polygon (rotated_apart: their IoU is 0).
#include "ops/box_iou/box_iou_rotated.h"

#include <algorithm>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"
#include "ops/nms/nms.h"  // score_before

namespace detkernels {
namespace {

template <typename T> struct BoxPrep {
  T c, s;
  RotatedBounds r;
};

template <typename T> BoxPrep<T> prep(const T* b) {
  BoxPrep<T> p;
  rotated_half_cos_sin(b[4], p.c, p.s);
  p.r = rotated_bounds(b, p.c, p.s);
  return p;
}

template <typename T>
void rows(const T* b1, const T* b2, float* out, int64_t M, int64_t lo, int64_t hi) {
  std::vector<BoxPrep<T>> p2(M);
  for (int64_t j = 0; j < M; ++j) p2[j] = prep(b2 + 5 * j);
  for (int64_t i = lo; i < hi; ++i) {
    const T* a = b1 + 5 * i;
    const BoxPrep<T> pa = prep(a);
    float* row = out + i * M;
    for (int64_t j = 0; j < M; ++j) {
      const BoxPrep<T>& pb = p2[j];
      row[j] = rotated_apart(pa.r, pb.r)
                   ? 0.0f
                   : static_cast<float>(rotated_pair_iou(a, b2 + 5 * j, pa.c, pa.s, pb.c, pb.s));
    }
  }
}

template <typename T>
void run(int64_t B, int64_t N, int64_t M, const T* b1, const T* b2, float* out) {
  // Work items are rows (b, i): a pair costs ~100 ns, so small grains already pay off.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(M, 1));
  parallel_for(B * N, grain, [&](int64_t lo, int64_t hi) {
    while (lo < hi) {
      const int64_t b = lo / N, end = std::min(hi, (b + 1) * N);
      rows<T>(b1 + 5 * b * N, b2 + 5 * b * M, out + b * N * M, M, lo - b * N, end - b * N);
      lo = end;
    }
  });
}

template <typename T>
int64_t nms(const T* boxes, const T* scores, const int64_t* classes, int64_t N, double thr,
            int64_t* keep) {
  std::vector<int64_t> order(N);
  for (int64_t i = 0; i < N; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score_before(scores[a], scores[b]); });
  std::vector<BoxPrep<T>> p(N);
  for (int64_t i = 0; i < N; ++i) p[i] = prep(boxes + 5 * i);
  std::vector<uint8_t> dead(N, 0);  // by sorted position
  int64_t count = 0;
  for (int64_t a = 0; a < N; ++a) {
    if (dead[a]) continue;
    const int64_t i = order[a];
    keep[count++] = i;
    const T* bi = boxes + 5 * i;
    for (int64_t b = a + 1; b < N; ++b) {
      const int64_t j = order[b];
      if (dead[b] || (classes && classes[j] != classes[i])) continue;
      const T iou = rotated_apart(p[i].r, p[j].r)  // IoU 0 (a negative threshold suppresses)
                        ? T(0)
                        : rotated_pair_iou(bi, boxes + 5 * j, p[i].c, p[i].s, p[j].c, p[j].s);
      if (static_cast<double>(iou) > thr) dead[b] = 1;
    }
  }
  return count;
}

// ---- ProbIoU --------------------------------------------------------------------------------------

template <typename T> struct Cov {
  T a, b, c;
};
template <typename T> std::vector<Cov<T>> covs(const T* boxes, int64_t n) {
  std::vector<Cov<T>> v(n);
  for (int64_t i = 0; i < n; ++i) probiou_cov(boxes + 5 * i, v[i].a, v[i].b, v[i].c);
  return v;
}

template <typename T>
void probiou_run(T eps, int64_t B, int64_t N, int64_t M, const T* b1, const T* b2, T* out) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));
  parallel_for(B * N, grain, [&](int64_t lo, int64_t hi) {
    int64_t cur = -1;
    std::vector<Cov<T>> c2;
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / N;
      if (b != cur) c2 = covs(b2 + 5 * b * M, M), cur = b;
      const T* p = b1 + 5 * r;
      Cov<T> c1;
      probiou_cov(p, c1.a, c1.b, c1.c);
      T* row = out + r * M;
      for (int64_t j = 0; j < M; ++j) {
        const Cov<T>& q = c2[j];
        row[j] = probiou_pair(p, b2 + 5 * (b * M + j), c1.a, c1.b, c1.c, q.a, q.b, q.c, eps);
      }
    }
  });
}

template <typename T>
int64_t probiou_nms(const T* boxes, const T* scores, const int64_t* classes, int64_t N, double thr,
                    T eps, bool fast, int64_t* keep) {
  std::vector<int64_t> order(N);
  for (int64_t i = 0; i < N; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score_before(scores[a], scores[b]); });
  const std::vector<Cov<T>> cv = covs(boxes, N);
  auto over = [&](int64_t i, int64_t j) {  // ProbIoU(i first, j) > thr, same class
    if (classes && classes[i] != classes[j]) return false;
    const Cov<T>& p = cv[i];
    const Cov<T>& q = cv[j];
    const T v = probiou_pair(boxes + 5 * i, boxes + 5 * j, p.a, p.b, p.c, q.a, q.b, q.c, eps);
    return static_cast<double>(v) > thr;
  };
  std::vector<uint8_t> dead(N, 0);  // by sorted position
  if (fast) {  // each position independent: dropped if any earlier position suppresses it
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

}  // namespace

void probiou_cpu(int dtype, double eps, int64_t B, int64_t N, int64_t M, const void* boxes1,
                 const void* boxes2, void* out) {
  if (B == 0 || N == 0 || M == 0) return;
  dispatch_float(dtype, "probiou", [&](auto t) {
    using T = decltype(t);
    probiou_run<T>(static_cast<T>(eps), B, N, M, static_cast<const T*>(boxes1),
                   static_cast<const T*>(boxes2), static_cast<T*>(out));
  });
}

int64_t nms_probiou_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t N, double iou_threshold, double eps, int fast, int64_t* keep) {
  if (N == 0) return 0;
  return dispatch_float(dtype, "nms_probiou", [&](auto t) {
    using T = decltype(t);
    return probiou_nms<T>(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, N,
                          iou_threshold, static_cast<T>(eps), fast != 0, keep);
  });
}

int64_t nms_rotated_cpu(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                        int64_t N, double iou_threshold, int64_t* keep) {
  if (N == 0) return 0;
  return dispatch_float(dtype, "nms_rotated", [&](auto t) {
    using T = decltype(t);
    return nms<T>(static_cast<const T*>(boxes), static_cast<const T*>(scores), classes, N,
                  iou_threshold, keep);
  });
}

void box_iou_rotated_cpu(int dtype, int64_t B, int64_t N, int64_t M, const void* boxes1,
                         const void* boxes2, void* out) {
  if (B == 0 || N == 0 || M == 0) return;
  dispatch_float(dtype, "box_iou_rotated", [&](auto t) {
    using T = decltype(t);
    run<T>(B, N, M, static_cast<const T*>(boxes1), static_cast<const T*>(boxes2),
           static_cast<float*>(out));
  });
}

}  // namespace detkernels
