#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace detkernels {
namespace {

int default_threads() {
  if (const char* env = std::getenv("DETKERNELS_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::atomic<int> g_threads{default_threads()};

}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
  if (chunks <= 1) {
    f(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(chunks);
  workers.reserve(chunks - 1);
  for (int64_t c = 1; c < chunks; ++c) {
    workers.emplace_back([&, c] {
      try {
        f(c * step, std::min(n, (c + 1) * step));
      } catch (...) {
        errors[c] = std::current_exception();
      }
    });
  }
  try {
    f(0, std::min(n, step));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& w : workers) w.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace detkernels
