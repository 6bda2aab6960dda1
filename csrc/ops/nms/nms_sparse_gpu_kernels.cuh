// The CUDA kernels of the sparse NMS path (issue 16): thin loops over the steps of
// nms_sparse_gpu.h (S1-S6 there, with the exactness argument), launched by nms_cuda.cu between
// the bitmask path's segments and its mask tiles; nms_emulate.cpp runs the same steps on the CPU.
// Scalars and pointers only (int for flags), no CUB and no std headers, so NVRTC compiles it too
// (detkernels/backends/cupy/kernels.cu includes it; cupy/__init__.py _multi_sparse launches it
// like run_sparse, with CuPy's stable argsort and cumsum where nvcc has CUB).
//
// Every kernel after the first check reads the device fallback flag (*fallback != 0: the sparse
// path gave up, the bitmask path runs on the real inputs) and returns at once: the decision never
// travels to the host. Included by exactly one translation unit of each program.
#pragma once
#include "common/grid_stride.cuh"
#include "ops/nms/nms_sparse_gpu.h"

namespace detkernels {

// S1: Z-order keys of the rank-ordered boxes (values: ranks).
template <typename T>
__global__ void nms_sparse_key_kernel(const T* x1, const T* y1, uint64_t* keys, int64_t* vals,
                                      int64_t total) {
  DK_GRID_STRIDE(p, total) {
    keys[p] = nms_sparse_morton_key(x1[p], y1[p]);
    vals[p] = p;
  }
}

// S1: then by segment (seg_start, stably): sp[s] is the rank at spatial position s.
__global__ void nms_sparse_seg_key_kernel(const int64_t* sp, const int64_t* seg, uint64_t* keys,
                                          int64_t total) {
  DK_GRID_STRIDE(s, total) keys[s] = static_cast<uint64_t>(seg[sp[s]]);
}

// S2: columns in spatial order; sets *fallback for a valid non-finite box.
template <typename T>
__global__ void nms_sparse_gather_kernel(const int64_t* sp, const T* x1, const T* y1, const T* x2,
                                         const T* y2, const T* area, const int64_t* seg,
                                         const uint8_t* valid, T* sx1, T* sy1, T* sx2, T* sy2,
                                         T* sarea, int64_t* sseg, uint8_t* svalid,
                                         int32_t* pos_of, uint32_t* fallback, int64_t total) {
  DK_GRID_STRIDE(s, total)
    nms_sparse_gather(s, sp, x1, y1, x2, y2, area, seg, valid, sx1, sy1, sx2, sy2, sarea, sseg,
                      svalid, pos_of, fallback);
}

template <typename T>
__global__ void nms_sparse_block_box_kernel(const T* sx1, const T* sy1, const T* sx2, const T* sy2,
                                            const uint8_t* svalid, const int64_t* sseg, T* bbox,
                                            int64_t* blo, int64_t* bhi, int64_t nb, int64_t total,
                                            const uint32_t* fallback) {
  if (*fallback) return;
  DK_GRID_STRIDE(A, nb) nms_sparse_block_box(A, total, sx1, sy1, sx2, sy2, svalid, sseg, bbox, blo, bhi);
}

// S3 (auto path only): per-block pair counts, then one block sums them and decides.
template <typename T>
__global__ void nms_sparse_block_pairs_kernel(const T* bbox, const int64_t* blo, const int64_t* bhi,
                                              int64_t* pairs, int64_t nb, const uint32_t* fallback) {
  if (*fallback) return;
  DK_GRID_STRIDE(A, nb) nms_sparse_block_pairs(A, nb, bbox, blo, bhi, pairs);
}

__global__ void __launch_bounds__(kNmsSparseReduceThreads)
    nms_sparse_decide_kernel(const int64_t* pairs, int64_t nb, uint32_t* fallback) {
  __shared__ int64_t s_live[kNmsSparseReduceThreads], s_visits[kNmsSparseReduceThreads];
  if (*fallback) return;  // uniform over the block
  const int t = threadIdx.x;
  nms_sparse_partial_sum(t, kNmsSparseReduceThreads, nb, pairs, &s_live[t], &s_visits[t]);
  __syncthreads();
  if (t == 0) {
    int64_t live = 0, visits = 0;
    for (int k = 0; k < kNmsSparseReduceThreads; ++k) {
      live += s_live[k];
      visits += s_visits[k];
    }
    nms_sparse_decide(live, visits, fallback);
  }
}

// S4: one thread per box j of block A (blockIdx.x strides over blocks), the blocks B of A's span
// that meet A staged in shared memory one at a time. Count pass (edges == nullptr): cnt[j] = its
// in-edges. Emit pass: writes them from edges[off[j]], B and k ascending (a fixed order).
template <typename T>
__global__ void __launch_bounds__(kNmsWordBits)
    nms_sparse_edges_kernel(const T* sx1, const T* sy1, const T* sx2, const T* sy2,
                            const T* sarea, const int64_t* sseg, const int64_t* sp, const T* bbox,
                            const int64_t* blo, const int64_t* bhi, int64_t nb, int64_t total,
                            T thr, int64_t* cnt, const int64_t* off, int32_t* edges,
                            const uint32_t* fallback) {
  __shared__ T cx1[kNmsWordBits], cy1[kNmsWordBits], cx2[kNmsWordBits], cy2[kNmsWordBits],
      ca[kNmsWordBits];
  __shared__ int64_t cseg[kNmsWordBits], crank[kNmsWordBits];
  if (*fallback) return;  // uniform
  const int t = threadIdx.x;
  for (int64_t A = blockIdx.x; A < nb; A += gridDim.x) {
    const int64_t j = A * kNmsWordBits + t;
    const bool ok = j < total;
    T bx1 = T(0), by1 = T(0), bx2 = T(0), by2 = T(0), ba = T(0);
    int64_t rj = 0, segj = 0;
    if (ok) {
      bx1 = sx1[j]; by1 = sy1[j]; bx2 = sx2[j]; by2 = sy2[j]; ba = sarea[j];
      rj = sp[j]; segj = sseg[j];
    }
    int32_t* out = (edges && ok) ? edges + off[j] : nullptr;
    int64_t n = 0, lo, hi;
    nms_sparse_block_span(A, nb, blo, bhi, &lo, &hi);
    for (int64_t B = lo; B <= hi; ++B) {
      if (!nms_sparse_blocks_meet(A, B, bbox, blo, bhi)) continue;  // uniform
      const int64_t c0 = B * kNmsWordBits;
      const int nc = total - c0 < kNmsWordBits ? static_cast<int>(total - c0) : kNmsWordBits;
      __syncthreads();  // the previous block is no longer read
      if (t < nc) {
        cx1[t] = sx1[c0 + t]; cy1[t] = sy1[c0 + t]; cx2[t] = sx2[c0 + t]; cy2[t] = sy2[c0 + t];
        ca[t] = sarea[c0 + t]; cseg[t] = sseg[c0 + t]; crank[t] = sp[c0 + t];
      }
      __syncthreads();
      if (ok)
        n += nms_sparse_in_edges(rj, segj, bx1, by1, bx2, by2, ba, cx1, cy1, cx2, cy2, ca, cseg,
                                 crank, c0, nc, thr, out ? out + n : nullptr);
    }
    if (ok && !edges) cnt[j] = n;
    __syncthreads();  // before the next A's staging
  }
}

__global__ void nms_sparse_cap_kernel(const int64_t* off, int64_t total, int64_t cap,
                                      uint32_t* fallback) {
  if (*fallback) return;
  if (threadIdx.x == 0 && blockIdx.x == 0) nms_sparse_check_cap(off, total, cap, fallback);
}

// S5: the initial states, the rounds (in -> out, undecided[0] set if one is left), the final
// sequential pass (one thread, only if the last round left one undecided).
__global__ void nms_sparse_init_kernel(const uint8_t* svalid, uint8_t* state, int64_t total,
                                       const uint32_t* fallback) {
  if (*fallback) return;
  DK_GRID_STRIDE(s, total) state[s] = nms_sparse_init_state(svalid[s]);
}

__global__ void nms_sparse_round_kernel(const int64_t* off, const int32_t* edges, const uint8_t* in,
                                        uint8_t* out, uint32_t* undecided, int64_t total,
                                        const uint32_t* fallback) {
  if (*fallback) return;
  DK_GRID_STRIDE(s, total) {
    if (nms_sparse_round_step(s, off, edges, in, out)) *undecided = 1;  // every writer stores 1
  }
}

__global__ void nms_sparse_finish_kernel(int64_t total, const int32_t* pos_of, const int64_t* off,
                                         const int32_t* edges, uint8_t* state,
                                         const uint32_t* undecided, const uint32_t* fallback) {
  if (*fallback || !*undecided || threadIdx.x != 0 || blockIdx.x != 0) return;
  nms_sparse_finish(total, pos_of, off, edges, state);
}

// S6: keep flags, then the bitmask path's inputs neutralised (or left alone on fallback).
__global__ void nms_sparse_output_kernel(const int64_t* sp, const uint8_t* state, uint8_t* keep,
                                         int64_t total, const uint32_t* fallback) {
  if (*fallback) return;
  DK_GRID_STRIDE(s, total) nms_sparse_output(s, sp, state, keep);
}

__global__ void nms_sparse_neutralise_kernel(int64_t* seg, uint8_t* valid, int64_t total,
                                             const uint32_t* fallback) {
  if (*fallback) return;
  DK_GRID_STRIDE(p, total) nms_sparse_neutralise(p, seg, valid);
}

}  // namespace detkernels
