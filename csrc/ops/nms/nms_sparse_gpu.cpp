// The host side of the sparse GPU NMS path (nms_sparse_gpu.h): the process-wide path choice that
// tests force, and the shape-only part of the rule. CPU code, so nms_cuda.cu and nms_emulate.cpp
// (built without CUDA) read the same setting.
#include <algorithm>
#include <atomic>

#include "ops/nms/nms_sparse.h"
#include "ops/nms/nms_sparse_gpu.h"

namespace detkernels {
namespace {
std::atomic<int> g_gpu_path{kNmsPathAuto};
std::atomic<int> g_gpu_rounds{kNmsSparseRounds};
}  // namespace

int nms_gpu_set_path(int path, int rounds) {
  g_gpu_rounds.store(rounds <= 0 ? kNmsSparseRounds : std::min(rounds, kNmsSparseRounds));
  return g_gpu_path.exchange(path);
}
int nms_gpu_path() { return g_gpu_path.load(std::memory_order_relaxed); }
int nms_gpu_rounds() { return g_gpu_rounds.load(std::memory_order_relaxed); }

bool nms_sparse_gpu_sized(int64_t total, int64_t M) {
  const int path = nms_gpu_path();
  if (path == kNmsPathPlain || total <= 0 || total >= (int64_t{1} << 31)) return false;
  return path == kNmsPathPruned || M >= kNmsSparseMinPerImage;
}

bool nms_sparse_gpu_use(int64_t total, int64_t M, double thr_t) {
  return thr_t >= 0 && nms_sparse_gpu_sized(total, M);  // !(thr >= 0): negative or NaN
}

bool nms_sparse_gpu_rule() { return nms_gpu_path() != kNmsPathPruned; }

}  // namespace detkernels
