// CUDA Matrix NMS: matrix_nms_gpu.h's S1-S6 (described there; matrix_nms_emulate.cpp runs the
// same steps on the CPU for the tests) as the kernels of matrix_nms_kernels.cuh with CUB radix
// sorts and a CUB max-scan between them. Everything is enqueued on the caller's stream in the
// caller's workspace (matrix_nms_cuda_workspace_bytes); the count stays on the device (the
// variable-length API reads it once). No pair data: the IoUs are recomputed in both passes, the
// rows staged one shared-memory tile at a time.
#include <cub/cub.cuh>
#include <cuda/functional>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "common/dispatch.h"
#include "ops/nms/matrix_nms_kernels.cuh"

namespace detkernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kAlign = 256;

unsigned grid_1d(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 1 << 16)));
}

struct MatrixLayout {
  int64_t keys0, keys1, vals0, vals1, order, temp, temp_bytes, cols, seg, den, dec, kept, bytes;
};

int64_t col_bytes(int64_t ts, int64_t n) { return ceil_div<int64_t>(ts * n, kAlign) * kAlign; }

MatrixLayout matrix_layout(int dtype, int64_t n) {
  const int64_t ts = dtype == kFloat64 ? 8 : 4, nn = std::max<int64_t>(n, 1);
  MatrixLayout L{};
  {
    size_t a = 0, b = 0, c = 0;
    cub::DoubleBuffer<uint64_t> k(nullptr, nullptr);
    cub::DoubleBuffer<int64_t> v(nullptr, nullptr);
    DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, a, k, v, nn, 0, 64));
    DK_CUDA_CHECK(cub::DeviceScan::InclusiveScan(nullptr, b, static_cast<const int64_t*>(nullptr),
                                                 static_cast<int64_t*>(nullptr),
                                                 cuda::maximum<int64_t>{}, nn));
    L.temp_bytes = static_cast<int64_t>(std::max({a, b, c}));
  }
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += ceil_div<int64_t>(std::max<int64_t>(bytes, 1), kAlign) * kAlign;
    return at;
  };
  L.keys0 = take(8 * nn);
  L.keys1 = take(8 * nn);
  L.vals0 = take(8 * nn);
  L.vals1 = take(8 * nn);
  L.order = take(8 * nn);
  L.temp = take(L.temp_bytes);
  L.cols = take(5 * col_bytes(ts, nn));
  L.seg = take(8 * nn);
  L.den = take(ts * nn);
  L.dec = take(ts * nn);
  L.kept = take(nn);
  L.bytes = off;
  return L;
}

template <typename T>
void run(const T* boxes, const T* scores, const int64_t* labels, int64_t n, int kernel,
         double sigma, bool has_thr, double thr, int64_t max_output, int64_t pre_top_k,
         int64_t* keep, T* out_s, int64_t* count, char* ws, const MatrixLayout& L,
         cudaStream_t st) {
  cub::DoubleBuffer<uint64_t> keys(reinterpret_cast<uint64_t*>(ws + L.keys0),
                                   reinterpret_cast<uint64_t*>(ws + L.keys1));
  cub::DoubleBuffer<int64_t> vals(reinterpret_cast<int64_t*>(ws + L.vals0),
                                  reinterpret_cast<int64_t*>(ws + L.vals1));
  void* temp = ws + L.temp;
  auto sort = [&](int64_t items, int end_bit) {
    size_t bytes = static_cast<size_t>(L.temp_bytes);
    DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, vals, items, 0, end_bit, st));
  };
  const unsigned g = grid_1d(n);
  // S1: rank order; kept in its own buffer (the later sorts reuse the double buffers)
  matrix_nms_score_key_kernel<T><<<g, kThreads, 0, st>>>(scores, keys.Current(), vals.Current(), n);
  DK_CUDA_CHECK_LAUNCH("matrix_nms_score_key_kernel");
  sort(n, nms_score_key_bits<T>());
  auto* order = reinterpret_cast<int64_t*>(ws + L.order);
  DK_CUDA_CHECK(cudaMemcpyAsync(order, vals.Current(), 8 * n, cudaMemcpyDeviceToDevice, st));
  const int64_t m = pre_top_k >= 0 && pre_top_k < n ? pre_top_k : n;
  T* dec = reinterpret_cast<T*>(ws + L.dec);
  auto* kept = reinterpret_cast<uint8_t*>(ws + L.kept);
  DK_CUDA_CHECK(cudaMemsetAsync(kept, 0, n, st));
  if (m > 0) {
    // S2: positions by (class, rank)
    const unsigned gm = grid_1d(m);
    matrix_nms_class_key_kernel<<<gm, kThreads, 0, st>>>(order, labels, keys.Current(),
                                                         vals.Current(), m);
    DK_CUDA_CHECK_LAUNCH("matrix_nms_class_key_kernel");
    sort(m, 64);
    const int64_t* pos_rank = vals.Current();
    // S3
    const int64_t cb = col_bytes(sizeof(T), std::max<int64_t>(n, 1));
    T* x1 = reinterpret_cast<T*>(ws + L.cols);
    T *y1 = reinterpret_cast<T*>(ws + L.cols + cb), *x2 = reinterpret_cast<T*>(ws + L.cols + 2 * cb),
      *y2 = reinterpret_cast<T*>(ws + L.cols + 3 * cb), *area = reinterpret_cast<T*>(ws + L.cols + 4 * cb);
    auto* seg = reinterpret_cast<int64_t*>(ws + L.seg);
    int64_t* head = vals.Alternate();  // free until the final sort
    matrix_nms_gather_kernel<T><<<gm, kThreads, 0, st>>>(pos_rank, order, boxes, labels, x1, y1,
                                                         x2, y2, area, head, m);
    DK_CUDA_CHECK_LAUNCH("matrix_nms_gather_kernel");
    {
      size_t bytes = static_cast<size_t>(L.temp_bytes);
      DK_CUDA_CHECK(cub::DeviceScan::InclusiveScan(temp, bytes, static_cast<const int64_t*>(head),
                                                   seg, cuda::maximum<int64_t>{}, m, st));
    }
    // S4, S5
    T* den = reinterpret_cast<T*>(ws + L.den);
    const unsigned gc = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(m, kMatrixNmsThreads), 1 << 16)));
    for (int decay = 0; decay < 2; ++decay) {
      matrix_nms_column_kernel<T><<<gc, kMatrixNmsThreads, 0, st>>>(
          decay, x1, y1, x2, y2, area, seg, den, m, kernel, sigma, pos_rank, order, scores,
          has_thr ? 1 : 0, thr, dec, kept);
      DK_CUDA_CHECK_LAUNCH("matrix_nms_column_kernel");
    }
  }
  // S6
  matrix_nms_final_key_kernel<T><<<g, kThreads, 0, st>>>(kept, dec, keys.Current(), vals.Current(), n);
  DK_CUDA_CHECK_LAUNCH("matrix_nms_final_key_kernel");
  sort(n, nms_score_key_bits<T>());
  matrix_nms_count_kernel<<<1, 1, 0, st>>>(vals.Current(), kept, n, max_output >= 0 ? max_output : n,
                                           count);
  DK_CUDA_CHECK_LAUNCH("matrix_nms_count_kernel");
  matrix_nms_output_kernel<T><<<g, kThreads, 0, st>>>(vals.Current(), dec, count, keep, out_s, n);
  DK_CUDA_CHECK_LAUNCH("matrix_nms_output_kernel");
}

}  // namespace

int64_t matrix_nms_cuda_workspace_bytes(int dtype, int64_t n, int device) {
  DeviceGuard guard(device);
  return matrix_layout(dtype, n).bytes;
}

void matrix_nms_cuda(int dtype, const void* boxes, const void* scores, const int64_t* labels,
                     int64_t n, int kernel, double sigma, bool has_score_thr, double score_thr,
                     int64_t max_output, int64_t pre_top_k, int64_t* keep, void* out_scores,
                     int64_t* count, void* workspace, int64_t workspace_bytes, int device,
                     void* stream) {
  if (kernel != kMatrixGaussian && kernel != kMatrixLinear)
    throw std::invalid_argument("matrix_nms (CUDA): kernel must be 0 (gaussian) or 1 (linear)");
  dispatch_float(dtype, "matrix_nms", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    auto st = static_cast<cudaStream_t>(stream);
    if (n == 0) {
      DK_CUDA_CHECK(cudaMemsetAsync(count, 0, 8, st));
      return;
    }
    const MatrixLayout L = matrix_layout(dtype, n);
    if (workspace_bytes < L.bytes)
      throw std::invalid_argument("matrix_nms (CUDA): workspace of " +
                                  std::to_string(workspace_bytes) + " bytes is smaller than the " +
                                  std::to_string(L.bytes) + " needed");
    run(static_cast<const T*>(boxes), static_cast<const T*>(scores), labels, n, kernel, sigma,
        has_score_thr, score_thr, max_output, pre_top_k, keep, static_cast<T*>(out_scores), count,
        static_cast<char*>(workspace), L, st);
  });
}

namespace {

struct MultiLayout {
  int64_t one, keep, dec, cnt, bytes;
};

MultiLayout multi_layout(int dtype, int64_t B, int64_t N) {
  const int64_t ts = dtype == kFloat64 ? 8 : 4, n = B * N;
  MultiLayout L{};
  int64_t off = 0;
  auto take = [&](int64_t bytes) {
    const int64_t at = off;
    off += ceil_div<int64_t>(std::max<int64_t>(bytes, 1), kAlign) * kAlign;
    return at;
  };
  L.one = take(N > 0 ? matrix_layout(dtype, N).bytes : 0);  // one image's, reused in stream order
  L.keep = take(8 * n);
  L.dec = take(ts * n);
  L.cnt = take(8 * B);
  L.bytes = off;
  return L;
}

}  // namespace

int64_t matrix_nms_multi_cuda_workspace_bytes(int dtype, int64_t B, int64_t N, int device) {
  DeviceGuard guard(device);
  return multi_layout(dtype, B, N).bytes;
}

void matrix_nms_multi_cuda(int dtype, const void* boxes, const void* scores,
                           const int64_t* labels, int64_t B, int64_t N, int kernel, double sigma,
                           bool has_score_thr, double score_thr, int64_t max_output,
                           int64_t pre_top_k, int64_t* out_idx, void* out_scores, int64_t* counts,
                           void* workspace, int64_t workspace_bytes, int device, void* stream,
                           const int64_t* n_valid) {
  if (kernel != kMatrixGaussian && kernel != kMatrixLinear)
    throw std::invalid_argument("matrix_nms (CUDA): kernel must be 0 (gaussian) or 1 (linear)");
  if (B == 0) return;
  dispatch_float(dtype, "matrix_nms", [&](auto t) {
    using T = decltype(t);
    DeviceGuard guard(device);
    auto st = static_cast<cudaStream_t>(stream);
    const MultiLayout L = multi_layout(dtype, B, N);
    if (workspace_bytes < L.bytes)
      throw std::invalid_argument("matrix_nms (CUDA): workspace of " +
                                  std::to_string(workspace_bytes) + " bytes is smaller than the " +
                                  std::to_string(L.bytes) + " needed");
    char* ws = static_cast<char*>(workspace);
    auto* keep = reinterpret_cast<int64_t*>(ws + L.keep);
    T* dec = reinterpret_cast<T*>(ws + L.dec);
    auto* cnt = reinterpret_cast<int64_t*>(ws + L.cnt);
    const T* bx = static_cast<const T*>(boxes);
    const T* sc = static_cast<const T*>(scores);
    // With n_valid the padding may sit anywhere in an image's output (its decayed score is
    // -inf times the decay, NaN for a zero linear term): every kept entry is kept for the filter.
    const int64_t per_image = n_valid ? -1 : max_output;
    if (N == 0) DK_CUDA_CHECK(cudaMemsetAsync(cnt, 0, 8 * B, st));
    const MatrixLayout one = N > 0 ? matrix_layout(dtype, N) : MatrixLayout{};
    for (int64_t b = 0; b < B && N > 0; ++b) {
      run(bx + 4 * b * N, sc + b * N, labels + b * N, N, kernel, sigma, has_score_thr, score_thr,
          per_image, pre_top_k, keep + b * N, dec + b * N, cnt + b, ws + L.one, one, st);
    }
    matrix_nms_multi_emit_kernel<T><<<grid_1d(B), kThreads, 0, st>>>(
        B, N, max_output, n_valid, keep, dec, cnt, out_idx, static_cast<T*>(out_scores), counts);
    DK_CUDA_CHECK_LAUNCH("matrix_nms_multi_emit_kernel");
  });
}

}  // namespace detkernels
