// CPU parallelism: contiguous chunks on a pool of persistent worker threads. Every output element
// is computed by exactly one chunk, so results never depend on the thread count or on which
// thread ran which chunk.
//
// The pool (parallel.cpp) starts lazily on the first parallel call and grows when num_threads()
// grows; a smaller num_threads() just uses fewer of its workers. It runs one job at a time: a
// call made while another thread's job holds the pool, or from inside a chunk of a split job
// (nesting), runs inline on the calling thread instead of waiting; so do the next few calls after
// a job that lost to running inline (its caller waited on the workers longer than it worked:
// busy cores; a doubling backoff, parallel.cpp). (A call made inside an unsplit
// one -- too small, or inline because the pool was busy -- may use the pool itself.) A forked child starts a fresh pool. Workers
// are detached and never torn down, so they neither delay nor crash process exit.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace detkernels {

// The pool's threads (parallel.cpp, "Sharing torch's OpenMP runtime"): binds it to the first of
// `libraries` that this process has already loaded and that exports GOMP_parallel (an OpenMP
// runtime: torch's), and returns its name; "" when none is (the pool's binding is unchanged).
std::string share_openmp_runtime(const std::vector<std::string>& libraries);
// Back to the pool's own threads.
void use_own_pool();
// "own", or "openmp:<library>".
std::string thread_runtime();

// Threads used by CPU kernels: DETKERNELS_NUM_THREADS, else the hardware concurrency.
int num_threads();
void set_num_threads(int n);

// Calls f(lo, hi) over contiguous chunks covering [0, n), at most num_threads() chunks of at
// least `grain` each (so small inputs run inline); the calling thread runs chunks too. An
// exception thrown by a chunk is rethrown here (the lowest chunk's, once all chunks finished).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

// parallel_for(n, 1, f) for coarse elements (each ~0.1 ms of work or more: detect's images, its
// anchor blocks): f(i, i + 1) for each i, the caller and up to num_threads() - 1 workers claiming
// elements one at a time. So a worker that is preempted or shares its core (busy machine) delays
// the call by at most one element (with parallel_for's contiguous halves the caller waits for the
// worker's whole half), and the contention backoff neither applies to such a call nor learns from
// it: the backoff is set by short jobs (another op's 100 us split), and a long job run inline
// because of them runs at the single-thread speed.
void parallel_for_coarse(int64_t n, const std::function<void(int64_t, int64_t)>& f);

namespace testing {
// For tests/backends/test_parallel.py (the kernels reach no nesting, exceptions or rendezvous): runs
// parallel_for(n, grain) with chunks that count their visits to each element, optionally run a
// nested parallel_for(nested_n, 1), throw std::runtime_error if they contain `throw_at`, and,
// if rendezvous > 0, wait (up to 10 s) until that many chunks are running at once.
// Returns {chunks, distinct threads, nested chunks run inline on the outer chunk's thread,
// nested chunks elsewhere, rendezvous timed out (0/1), visits[0], ..., visits[n-1]}.
std::vector<int64_t> parallel_probe(int64_t n, int64_t grain, int64_t nested_n, int64_t throw_at,
                                    int64_t rendezvous);
// Clears the contention backoff (parallel.cpp): the next parallel calls may split again.
void reset_backoff();
// A contended job (the chunk a worker takes sleeps hold_us), then one more parallel call.
// Returns {inline calls owed after the contended job, distinct threads of the next call, inline
// calls owed after it}: with the backoff working, {1, 1, 0}.
std::vector<int64_t> parallel_backoff_probe(int64_t hold_us);
// A contended parallel_for (the backoff is set), then parallel_for_coarse over n elements, each
// of the first `rendezvous` waiting (up to 10 s) until that many have started, each a worker runs
// then sleeping hold_us. Returns {backoff before the coarse call, after it, elements run,
// elements the caller ran, distinct threads, rendezvous timed out (0/1)}.
std::vector<int64_t> parallel_coarse_probe(int64_t n, int64_t hold_us, int64_t rendezvous);
}  // namespace testing

}  // namespace detkernels
