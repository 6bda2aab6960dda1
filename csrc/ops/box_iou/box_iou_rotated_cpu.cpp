// CPU loops over box_iou_rotated.h: rows of the [B, N, M] output split across threads. The half
// cos/sin and the padded bounds of every box are computed once (torchvision: 4 libm calls per
// pair); pairs whose padded bounds are apart skip the polygon (rotated_apart: their IoU is 0).
#include "ops/box_iou/box_iou_rotated.h"

#include <algorithm>
#include <vector>

#include "common/dispatch.h"
#include "common/parallel.h"

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
      row[j] = rotated_apart(pa.r, pb.r) ? 0.0f
                                         : rotated_pair_iou(a, b2 + 5 * j, pa.c, pa.s, pb.c, pb.s);
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

}  // namespace

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
