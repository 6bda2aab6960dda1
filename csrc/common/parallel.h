// CPU parallelism: contiguous chunks on std::threads. Every output element is computed by exactly
// one chunk, so results never depend on the thread count.
#pragma once
#include <cstdint>
#include <functional>

namespace detkernels {

// Threads used by CPU kernels: DETKERNELS_NUM_THREADS, else the hardware concurrency.
int num_threads();
void set_num_threads(int n);

// Calls f(lo, hi) over contiguous chunks covering [0, n), on at most num_threads() threads, each
// chunk at least `grain` long (so small inputs run inline, without spawning anything).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

}  // namespace detkernels
