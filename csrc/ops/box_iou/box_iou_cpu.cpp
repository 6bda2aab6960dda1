// CPU loops over box_iou.h: rows of the [B, N, M] output split across threads; the inner loop
// runs over boxes2 stored column-wise (one pass to transpose) so g++ can vectorise it. Integer
// boxes (int32/int64 in, float32 out) run through the same loops.
#include "ops/box_iou/box_iou.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"

namespace detkernels {
namespace {

// T: the boxes' dtype; the output is iou_out_t<T> (T, or float32 for integer boxes).
template <typename T, int FMT, int KIND>
void box_iou_rows(const T* b1, const T* b2, iou_out_t<T>* out, int64_t M, iou_out_t<T> eps,
                  int64_t lo, int64_t hi) {
  // Column-major copy of boxes2 plus its areas, per chunk (cheap next to the N*M pairs).
  std::vector<T> cols(5 * M);
  T* c0 = cols.data();
  for (int64_t j = 0; j < M; ++j) {
    for (int k = 0; k < 4; ++k) c0[k * M + j] = b2[4 * j + k];
    c0[4 * M + j] = box_area(b2 + 4 * j, FMT);
  }
  for (int64_t i = lo; i < hi; ++i) {
    const T a[4] = {b1[4 * i], b1[4 * i + 1], b1[4 * i + 2], b1[4 * i + 3]};
    const T area_a = box_area(a, FMT);
    iou_out_t<T>* row = out + i * M;
    for (int64_t j = 0; j < M; ++j) {
      const T b[4] = {c0[j], c0[M + j], c0[2 * M + j], c0[3 * M + j]};
      row[j] = pair_iou(a, b, area_a, c0[4 * M + j], FMT, KIND, eps);
    }
  }
}

template <typename T, int FMT, int KIND>
void run(int64_t B, int64_t N, int64_t M, const T* b1, const T* b2, iou_out_t<T>* out,
         iou_out_t<T> eps) {
  // Work items are rows (b, i); each thread transposes the boxes2 of the batches it touches.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(M, 1));
  parallel_for(B * N, grain, [&](int64_t lo, int64_t hi) {
    while (lo < hi) {
      const int64_t b = lo / N, end = std::min(hi, (b + 1) * N);
      box_iou_rows<T, FMT, KIND>(b1 + 4 * b * N, b2 + 4 * b * M, out + b * N * M, M, eps,
                                 lo - b * N, end - b * N);
      lo = end;
    }
  });
}

template <typename T, int FMT>
void run_kind(int kind, int64_t B, int64_t N, int64_t M, const void* b1, const void* b2, void* out,
              iou_out_t<T> eps) {
  auto p1 = static_cast<const T*>(b1);
  auto p2 = static_cast<const T*>(b2);
  auto po = static_cast<iou_out_t<T>*>(out);
  switch (kind) {
    case kIoU: return run<T, FMT, kIoU>(B, N, M, p1, p2, po, eps);
    case kGIoU: return run<T, FMT, kGIoU>(B, N, M, p1, p2, po, eps);
  }
  if constexpr (!IouTypes<T>::kInt) {
    switch (kind) {
      case kDIoU: return run<T, FMT, kDIoU>(B, N, M, p1, p2, po, eps);
      case kCIoU: return run<T, FMT, kCIoU>(B, N, M, p1, p2, po, eps);
    }
    throw std::invalid_argument("box_iou: unknown kind");
  }
  throw std::invalid_argument("box_iou: integer boxes take IoU or GIoU only");
}

template <typename T>
void run_fmt(int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M, const void* b1,
             const void* b2, void* out) {
  if (kind != kIoU && fmt != kXYXY)
    throw std::invalid_argument("box_iou: GIoU/DIoU/CIoU take xyxy boxes");
  switch (fmt) {
    case kXYXY: return run_kind<T, kXYXY>(kind, B, N, M, b1, b2, out, iou_out_t<T>(eps));
    case kXYWH: return run_kind<T, kXYWH>(kind, B, N, M, b1, b2, out, iou_out_t<T>(eps));
    case kCXCYWH: return run_kind<T, kCXCYWH>(kind, B, N, M, b1, b2, out, iou_out_t<T>(eps));
  }
  throw std::invalid_argument("box_iou: unknown fmt");
}

}  // namespace

void box_iou_cpu(int dtype, int fmt, int kind, double eps, int64_t B, int64_t N, int64_t M,
                 const void* boxes1, const void* boxes2, void* out) {
  if (B == 0 || N == 0 || M == 0) return;
  dispatch_float_int(dtype, "box_iou", [&](auto t) {
    run_fmt<decltype(t)>(fmt, kind, eps, B, N, M, boxes1, boxes2, out);
  });
}

}  // namespace detkernels
