// CUDA RoIAlign / PSRoIAlign: launches over the per-thread functions of roi_align_gpu.h (which
// only call the DK_HD geometry of roi_align.h), bit-exact with the reference.
// Forward: one thread per output element; for channels-last input (channel stride 1) consecutive
// threads take consecutive channels of one bin, so their reads coalesce.
// Backward (no atomics, deterministic): slot counts + scan -> keys per slot -> CUB radix sort
// (stable) of (key, sequence number) -> decode -> one thread per (run start, channel) sums the run
// in sequence order. Out-of-range slots get the largest key and are never reduced.
#include <cub/device/device_radix_sort.cuh>

#include <stdexcept>
#include <string>

#include "common/cuda_check.h"
#include "ops/roi_align/roi_align_gpu.h"

namespace detkernels {
namespace {

constexpr int kThreads = 256;

struct Strides4 {
  int64_t s[4];
};

inline unsigned grid_for(int64_t n) {
  const int64_t b = ceil_div<int64_t>(n, kThreads);
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);  // grid-stride loops below
}

template <typename T>
__global__ void forward_kernel(const T* in, Strides4 st, int64_t N, int64_t Co, int64_t H, int64_t W,
                               const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr,
                               bool aligned, bool ps, bool channels_inner, T* out) {
  const int64_t total = K * Co * PH * PW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ph, pw;
    if (channels_inner) {  // i = ((n*PH + ph)*PW + pw)*Co + c
      c = i % Co;
      int64_t r = i / Co;
      pw = r % PW;
      r /= PW;
      ph = r % PH;
      n = r / PH;
    } else {  // i = ((n*Co + c)*PH + ph)*PW + pw, the output's own order
      pw = i % PW;
      int64_t r = i / PW;
      ph = r % PH;
      r /= PH;
      c = r % Co;
      n = r / Co;
    }
    out[((n * Co + c) * PH + ph) * PW + pw] =
        roi_align_output(in, st.s, N, H, W, rois, n, c, ph, pw, ss, PH, PW, sr, aligned, ps);
  }
}

template <typename T>
__global__ void count_kernel(const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t N,
                             int64_t sr, bool aligned, bool ps, int64_t* counts, T* count) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < K;
       n += int64_t(gridDim.x) * blockDim.x) {
    const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
    counts[n + 1] = roi_contrib_count(g, PH, PW);
    count[n] = g.count;
  }
}

// Sequential inclusive scan of counts[1..K] (integers: exact; one thread, K is RoI-sized).
__global__ void scan_kernel(int64_t* off, int64_t K) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    off[0] = 0;
    for (int64_t n = 1; n <= K; ++n) off[n] += off[n - 1];
  }
}

template <typename T>
__global__ void key_kernel(const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t N,
                           int64_t H, int64_t W, int64_t sr, bool aligned, bool ps,
                           const int64_t* off, int64_t M, int64_t* key, int64_t* seq) {
  const int64_t none = N * H * W;
  for (int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; s < M;
       s += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = roi_find(off, K, s);
    const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
    key[s] = roi_contrib(g, s - off[n], PW, H, W, none).key;
    seq[s] = s;
  }
}

template <typename T>
__global__ void decode_kernel(const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t N,
                              int64_t H, int64_t W, int64_t sr, bool aligned, bool ps,
                              const int64_t* off, int64_t M, const int64_t* seq, int64_t* bins,
                              T* w) {
  const int64_t none = N * H * W;
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < M;
       q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = seq[q], n = roi_find(off, K, s);
    const RoiAlignBox<T> g = roi_align_box(rois + 5 * n, ss, PH, PW, sr, aligned, ps, N);
    const RoiContrib<T> r = roi_contrib(g, s - off[n], PW, H, W, none);
    bins[q] = n * PH * PW + r.bin;
    w[q] = r.w;
  }
}

template <typename T>
__global__ void reduce_kernel(const int64_t* skey, const int64_t* bins, const T* w, const T* count,
                              int64_t M, const T* grad, Strides4 gs, int64_t C, int64_t HW,
                              int64_t none, bool ps, int64_t PH, int64_t PW, T* gi) {
  const int64_t total = M * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % M, c = i / M;
    const int64_t k = skey[p];
    if (k == none || (p > 0 && skey[p - 1] == k)) continue;  // not a run start
    int64_t end = p + 1;
    while (end < M && skey[end] == k) ++end;
    gi[((k / HW) * C + c) * HW + k % HW] = roi_run_sum(bins, w, count, p, end, grad, gs.s, c, ps, PH, PW);
  }
}

int key_bits(int64_t none) {
  int b = 1;
  while (b < 63 && (int64_t(1) << b) <= none) ++b;
  return b;
}

size_t sort_temp_bytes(int64_t M, int64_t none) {
  size_t bytes = 0;
  DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                                static_cast<int64_t*>(nullptr),
                                                static_cast<const int64_t*>(nullptr),
                                                static_cast<int64_t*>(nullptr), M, 0,
                                                key_bits(none)));
  return bytes;
}

inline size_t align256(size_t v) { return (v + 255) / 256 * 256; }

template <typename T>
void forward_run(bool ps, const T* in, const int64_t* st, int64_t N, int64_t C, int64_t H, int64_t W,
                 const T* rois, int64_t K, T ss, int64_t PH, int64_t PW, int64_t sr, bool aligned,
                 T* out, cudaStream_t stream) {
  const int64_t Co = ps ? C / (PH * PW) : C;
  const int64_t total = K * Co * PH * PW;
  if (total == 0) return;
  Strides4 s{{st[0], st[1], st[2], st[3]}};
  const bool cl = !ps && st[1] == 1 && C > 1;
  forward_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(in, s, N, Co, H, W, rois, K, ss, PH,
                                                              PW, sr, aligned, ps, cl, out);
  DK_CUDA_CHECK_LAUNCH("roi_align forward_kernel");
}

template <typename T>
void backward_run(bool ps, const T* grad, const int64_t* gst, const T* rois, int64_t K, T ss,
                  int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr,
                  bool aligned, const char* pre, int64_t M, char* ws, int64_t ws_bytes, T* gi,
                  cudaStream_t stream) {
  const int64_t HW = H * W, none = N * HW;
  if (N * C * HW > 0) DK_CUDA_CHECK(cudaMemsetAsync(gi, 0, sizeof(T) * N * C * HW, stream));
  if (M == 0 || C == 0) return;
  const int64_t* off = reinterpret_cast<const int64_t*>(pre);
  const T* count = reinterpret_cast<const T*>(pre + 8 * (K + 1));
  int64_t* key_in = reinterpret_cast<int64_t*>(ws);
  int64_t* key_out = key_in + M;
  int64_t* seq_in = key_out + M;
  int64_t* seq_out = seq_in + M;
  char* tmp = ws + align256(32 * M);
  size_t tmp_bytes = sort_temp_bytes(M, none);
  if (static_cast<int64_t>(align256(32 * M) + tmp_bytes) > ws_bytes)
    throw std::invalid_argument("roi_align backward (CUDA): workspace of " +
                                std::to_string(ws_bytes) + " bytes is too small");
  key_kernel<T><<<grid_for(M), kThreads, 0, stream>>>(rois, K, ss, PH, PW, N, H, W, sr, aligned, ps,
                                                      off, M, key_in, seq_in);
  DK_CUDA_CHECK_LAUNCH("roi_align key_kernel");
  DK_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(tmp, tmp_bytes, key_in, key_out, seq_in, seq_out, M,
                                                0, key_bits(none), stream));
  // key_in / seq_in are free again: bins and weights of the sorted slots.
  int64_t* bins = key_in;
  T* w = reinterpret_cast<T*>(seq_in);
  decode_kernel<T><<<grid_for(M), kThreads, 0, stream>>>(rois, K, ss, PH, PW, N, H, W, sr, aligned,
                                                         ps, off, M, seq_out, bins, w);
  DK_CUDA_CHECK_LAUNCH("roi_align decode_kernel");
  Strides4 gs{{gst[0], gst[1], gst[2], gst[3]}};
  reduce_kernel<T><<<grid_for(M * C), kThreads, 0, stream>>>(key_out, bins, w, count, M, grad, gs, C,
                                                             HW, none, ps, PH, PW, gi);
  DK_CUDA_CHECK_LAUNCH("roi_align reduce_kernel");
}

void check_dtype(int dtype) {
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument("roi_align: dtype must be float32 or float64");
}

}  // namespace

void roi_align_forward_cuda(int dtype, bool ps, const void* input, const int64_t* st, int64_t N,
                            int64_t C, int64_t H, int64_t W, const void* rois, int64_t K,
                            double scale, int64_t PH, int64_t PW, int64_t sr, bool aligned,
                            void* out, int device, void* stream) {
  check_dtype(dtype);
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == kFloat32)
    forward_run(ps, static_cast<const float*>(input), st, N, C, H, W,
                static_cast<const float*>(rois), K, static_cast<float>(scale), PH, PW, sr, aligned,
                static_cast<float*>(out), s);
  else
    forward_run(ps, static_cast<const double*>(input), st, N, C, H, W,
                static_cast<const double*>(rois), K, scale, PH, PW, sr, aligned,
                static_cast<double*>(out), s);
}

int64_t roi_align_backward_cuda_prepare(int dtype, bool ps, const void* rois, int64_t K,
                                        double scale, int64_t PH, int64_t PW, int64_t N, int64_t sr,
                                        bool aligned, void* pre, int device, void* stream) {
  check_dtype(dtype);
  if (K == 0) return 0;
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  int64_t* off = static_cast<int64_t*>(pre);
  void* count = static_cast<char*>(pre) + 8 * (K + 1);
  if (dtype == kFloat32)
    count_kernel<float><<<grid_for(K), kThreads, 0, s>>>(static_cast<const float*>(rois), K,
                                                         static_cast<float>(scale), PH, PW, N, sr,
                                                         aligned, ps, off, static_cast<float*>(count));
  else
    count_kernel<double><<<grid_for(K), kThreads, 0, s>>>(static_cast<const double*>(rois), K, scale,
                                                          PH, PW, N, sr, aligned, ps, off,
                                                          static_cast<double*>(count));
  DK_CUDA_CHECK_LAUNCH("roi_align count_kernel");
  scan_kernel<<<1, 1, 0, s>>>(off, K);
  DK_CUDA_CHECK_LAUNCH("roi_align scan_kernel");
  int64_t M = 0;
  DK_CUDA_CHECK(cudaMemcpyAsync(&M, off + K, sizeof(int64_t), cudaMemcpyDeviceToHost, s));
  DK_CUDA_CHECK(cudaStreamSynchronize(s));
  return M;
}

int64_t roi_align_backward_cuda_workspace_bytes(int64_t M, int64_t N, int64_t H, int64_t W,
                                                int device) {
  if (M == 0) return 0;
  DeviceGuard guard(device);
  return static_cast<int64_t>(align256(32 * M) + sort_temp_bytes(M, N * H * W));
}

void roi_align_backward_cuda(int dtype, bool ps, const void* grad, const int64_t* gst,
                             const void* rois, int64_t K, double scale, int64_t PH, int64_t PW,
                             int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned,
                             const void* pre, int64_t M, void* ws, int64_t ws_bytes, void* gi,
                             int device, void* stream) {
  check_dtype(dtype);
  DeviceGuard guard(device);
  auto s = static_cast<cudaStream_t>(stream);
  const char* p = static_cast<const char*>(pre);
  char* w = static_cast<char*>(ws);
  if (dtype == kFloat32)
    backward_run(ps, static_cast<const float*>(grad), gst, static_cast<const float*>(rois), K,
                 static_cast<float>(scale), PH, PW, N, C, H, W, sr, aligned, p, M, w, ws_bytes,
                 static_cast<float*>(gi), s);
  else
    backward_run(ps, static_cast<const double*>(grad), gst, static_cast<const double*>(rois), K,
                 scale, PH, PW, N, C, H, W, sr, aligned, p, M, w, ws_bytes,
                 static_cast<double*>(gi), s);
}

}  // namespace detkernels
