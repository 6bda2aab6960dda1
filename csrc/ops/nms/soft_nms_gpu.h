// Soft-NMS on the GPU (issue 13): the per-thread and per-block steps of soft_nms_kernels.cuh, as
// DK_HD functions, so that soft_nms_emulate.cpp runs the very same code on the CPU for the tests.
// Reference: detkernels/reference/soft_nms.py (algorithm, float order, tie rule); the decay is
// soft_nms.h's soft_nms_weight, the IoU nms.h's nms_iou (the picked box first) -- one copy each.
//
// One thread block per image, no host round trip per step. Box j of the image is owned by thread
// j % T of the block for the whole run (T = blockDim.x; block-strided loops, so any N fits), so
// its state -- current score s[j], alive[j], class pick count cnt[j] in global memory -- is only
// ever touched by one thread and needs no barrier. Each step:
//   1. block-wide argmax of the threads' candidates under ranks_before (highest score, NaN first,
//      -0 == +0, ties to the lowest index): a strict total order on distinct indices, so the
//      tree reduction gives the reference's pick whatever the shape of the tree;
//   2. every remaining box j is rescaled in parallel (soft_nms_rescale: s[j] * weight(iou), one
//      rounding in T, then dropped when (double)s[j] < score_threshold), and each thread folds
//      its boxes' new (score, index) into its candidate for the next step's argmax.
// With classes, boxes of other classes are left alone, and cnt[j] counts the picks of j's class:
// a class leaves when it reached max_output picks (the reference runs soft_nms per class with
// max_output). Picks go to a per-image list; the output is that list in rank order
// (ranks_before on (decayed score, index), as the reference's merge), its first max_output.
// Without classes the pick order is the output order and the loop stops at max_output picks.
//
// Work per image: P steps (P <= N picks; without classes P <= max_output) of one pass over the N
// boxes (O(N / T) per thread) plus a log2(T)-level reduction; with classes the final ranking adds
// O(P^2 / T) comparisons per thread. Memory: O(N) per image (no pair data).
#pragma once
#include "common/host_device.h"
#include "ops/nms/nms.h"
#include "ops/nms/soft_nms.h"

namespace detkernels {

constexpr int kSoftNmsThreads = 256;  // block size of soft_nms_kernel (a power of two)

/// A candidate of the argmax: position p in the image (-1: none) and its current score.
template <typename T> struct SoftPick {
  T s;
  int64_t p;
};

template <typename T> DK_HD SoftPick<T> soft_pick_none() { return SoftPick<T>{T(0), -1}; }

/// The better of two candidates under the pick rule (none loses to anything).
template <typename T> DK_HD SoftPick<T> soft_pick_better(SoftPick<T> a, SoftPick<T> b) {
  if (b.p < 0) return a;
  if (a.p < 0) return b;
  return ranks_before(b.s, b.p, a.s, a.p) ? b : a;
}

/// The run's parameters: method, thresholds in double (compared as the reference does), sigma
/// rounded to T once (soft_nms_weight's argument), class pick limit.
template <typename T> struct SoftNmsParams {
  int method;
  double thr, sthr;
  T sigma;
};

/// Step 0, box j: its state from the input (alive iff not (double)score < score_threshold;
/// NaN stays) and its candidate for the first argmax.
template <typename T>
DK_HD SoftPick<T> soft_nms_init(int64_t j, const T* scores, T* s, uint8_t* alive, int32_t* cnt,
                                double sthr) {
  const T v = scores[j];
  s[j] = v;
  const bool in = !(static_cast<double>(v) < sthr);
  alive[j] = in ? 1 : 0;
  if (cnt) cnt[j] = 0;
  return in ? SoftPick<T>{v, j} : soft_pick_none<T>();
}

/// Step 2, box j after the pick of box a (boxes [N, 4] of the image; classes [N] or nullptr;
/// class_limit: the per-class pick limit, used with classes). Returns j's candidate for the next
/// argmax. Box a itself leaves (its owner clears it; no other thread reads a's state).
template <typename T>
DK_HD SoftPick<T> soft_nms_rescale(int64_t j, int64_t a, const T* boxes, const int64_t* classes,
                                   T* s, uint8_t* alive, int32_t* cnt,
                                   const SoftNmsParams<T>& prm, int64_t class_limit) {
  if (!alive[j]) return soft_pick_none<T>();
  if (j == a) {
    alive[j] = 0;
    return soft_pick_none<T>();
  }
  if (classes) {
    if (classes[j] != classes[a]) return SoftPick<T>{s[j], j};
    if (++cnt[j] >= class_limit) {  // j's class has all its picks
      alive[j] = 0;
      return soft_pick_none<T>();
    }
  }
  const T* pa = boxes + 4 * a;
  const T* pj = boxes + 4 * j;
  const T ax1 = pa[0], ay1 = pa[1], ax2 = pa[2], ay2 = pa[3];
  const T bx1 = pj[0], by1 = pj[1], bx2 = pj[2], by2 = pj[3];
  const T iou = nms_iou(ax1, ay1, ax2, ay2, nms_area(ax1, ay1, ax2, ay2), bx1, by1, bx2, by2,
                        nms_area(bx1, by1, bx2, by2));
  const T ns = s[j] * soft_nms_weight(iou, prm.method, prm.thr, prm.sigma);
  s[j] = ns;
  if (static_cast<double>(ns) < prm.sthr) {
    alive[j] = 0;
    return soft_pick_none<T>();
  }
  return SoftPick<T>{ns, j};
}

/// The number of picks the loop may make: without classes min(max_output, N) (the pick order is
/// the output), with classes N (each class stops itself at max_output, soft_nms_rescale).
DK_HD int64_t soft_nms_pick_limit(bool has_classes, int64_t N, int64_t max_output) {
  if (has_classes) return max_output > 0 ? N : 0;
  return max_output < N ? max_output : N;
}

/// The final step, item k of [0, max(P, K)) of one image (P picks in pick_idx / pick_s, K output
/// slots): pick k goes to slot rank(k) -- its pick position without classes, else the number of
/// picks ranking before it -- when that is < K; slots [P, K) are padding (-1, 0). Ranks are a
/// permutation of [0, P), so each slot is written once.
template <typename T>
DK_HD void soft_nms_emit(int64_t k, int64_t P, int64_t K, bool has_classes, const int64_t* pick_idx,
                         const T* pick_s, int64_t* out_idx, T* out_s) {
  if (k < P) {
    int64_t r = k;
    if (has_classes) {
      r = 0;
      for (int64_t q = 0; q < P; ++q)
        r += ranks_before(pick_s[q], pick_idx[q], pick_s[k], pick_idx[k]) ? 1 : 0;
    }
    if (r < K) {
      out_idx[r] = pick_idx[k];
      out_s[r] = pick_s[k];
    }
  } else if (k < K) {
    out_idx[k] = -1;
    out_s[k] = T(0);
  }
}

#ifndef __CUDACC_RTC__
/// @brief The CUDA kernel's algorithm run on the CPU with the same step functions, `threads`
/// emulated threads per block (a power of two; the tree reduction as the kernel does it).
/// Arguments as soft_nms_multi_cpu, and n_valid as soft_nms_multi_cuda's. Tests only.
void soft_nms_multi_emulate_cpu(int dtype, const void* boxes, const void* scores,
                                const int64_t* classes, int64_t B, int64_t N, double iou_threshold,
                                double sigma, int method, double score_threshold,
                                int64_t max_output, int64_t* out_idx, void* out_scores,
                                int64_t* counts, int threads, const int64_t* n_valid = nullptr);

#ifdef DETKERNELS_WITH_CUDA
/// @brief Workspace bytes of soft_nms_multi_cuda for B images of N boxes.
int64_t soft_nms_multi_cuda_workspace_bytes(int dtype, int64_t B, int64_t N, bool has_classes);
/// @brief soft_nms_multi_cpu's contract on the GPU (device pointers, `stream`): one launch, one
/// block per image, no host synchronisation. n_valid: int64 [B] on the device, image b's boxes
/// being its first n_valid[b] (<= N; detect's padded slots: the others are ignored, as if absent),
/// or nullptr (all N).
void soft_nms_multi_cuda(int dtype, const void* boxes, const void* scores, const int64_t* classes,
                         int64_t B, int64_t N, double iou_threshold, double sigma, int method,
                         double score_threshold, int64_t max_output, int64_t* out_idx,
                         void* out_scores, int64_t* counts, void* workspace,
                         int64_t workspace_bytes, int device, void* stream,
                         const int64_t* n_valid = nullptr);
#endif
#endif

}  // namespace detkernels
