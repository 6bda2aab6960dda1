// Persistent thread pool behind parallel_for.
//
// One job at a time. The caller publishes a Job (chunk count, step, the function) under the pool
// mutex, wakes the workers it wants, and then claims chunks itself from the job's atomic counter
// like any worker. Chunks go to whoever claims them first, so a worker that wakes late (loaded
// machine) finds nothing left and the caller is never held up by it: once every chunk is claimed
// the caller closes the job (no worker may enter it any more) and waits only for the workers
// still inside it.
//
// Concurrency policy: a second caller that finds the pool busy runs its loop inline rather than
// queueing. The busy pool already occupies num_threads() cores, so queueing would only make the
// second caller idle until the first job ends; inline it makes progress at once, cannot deadlock,
// and its result is the same (independent of chunking by contract). Nested calls (from a chunk
// of a split job, on a worker or on the caller) run inline: every worker is already busy.
//
// Idle workers sleep on a condition variable; nobody spins. (A 20 and a 100 us spin before
// sleeping were measured on a shared 2-core machine: no faster than none, often slower, since the
// spinning thread takes the core the working one needs.)
//
// Busy cores (issue 21): a split job is only as fast as its slowest chunk, and a worker that the
// scheduler preempts in the middle of a chunk (another process wants its core) holds the caller
// until it runs again -- a time slice, milliseconds, for a job of 100 us. So the pool watches its
// own jobs: when the caller waited for the workers longer than it worked itself (t_wait > t_own:
// the split took more than twice the caller's share, so it lost to running inline), or no worker
// came at all before the caller had claimed every chunk, the job counts as contended and the
// next `backoff` parallel calls run inline (1, 2, 4, ... up to kMaxBackoff after consecutive
// contended jobs; one job that paid resets it). On a quiet machine t_wait is a few us against
// t_own of tens of us or more (kernels split only above their measured break-even), so the rule
// never fires there. Measured on this shared 2-core machine with one competing busy process
// (bench --load 1, batched_nms, 80 classes, N = 25 200): see the kMaxBackoff comment.
//
// Sharing torch's OpenMP runtime (issue 12): once torch is imported, detkernels/_torch binds the
// pool to the OpenMP runtime torch's intra-op threads come from (share_openmp_runtime: its
// GOMP_parallel, a stable entry point that libgomp, LLVM's libomp and Intel's libiomp5 all
// export), and a job then runs as one OpenMP parallel region on those threads instead of waking
// ours: the same claiming, nesting, exceptions and backoff. Why: right after a torch op its
// OpenMP workers spin for milliseconds waiting for the next region (libgomp's default spin
// count), so a job of our own workers shared a core with a spinning thread: measured here (B = 8
// detect, A = 25 200, C = 80, 2 cores), 5.5 ms alone but 8-9.6 ms right after a torch op; on
// torch's threads it is 4.6-5.3 ms either way. One pool for the process is also what a
// torchvision op gets (at::parallel_for). The caller is the region's thread 0 (GOMP_parallel
// runs fn on the calling thread too), so "the caller's chunks" keep their meaning; unlike our own
// pool, the region's end waits for every team thread, including one that starts late (the
// backoff's t_wait counts that wait). A forked child drops the binding (libgomp's threads do not
// survive fork either) and starts a fresh pool of its own.
//
// Lifetime: the pool is heap-allocated and never destroyed, its workers detached. At process exit
// they are still asleep on the pool's condition variable (or finishing a chunk of a daemon
// thread's job) and simply vanish with the process; no static destructor joins or frees anything
// they use. After fork() only the forking thread exists in the child and the pool's mutexes may
// have been held by threads that did not survive: the child drops (leaks) the old pool and makes
// a new one on its first parallel call.
#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#ifndef _WIN32
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#endif

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

using Fn = std::function<void(int64_t, int64_t)>;
using Clock = std::chrono::steady_clock;

// Parallel calls run inline after a contended job: at most this many in a row, then the pool tries
// a split again (a busy process may have ended). 64 calls of a 1-3 ms job: a probe every ~0.1 s.
constexpr int kMaxBackoff = 64;

// The bound OpenMP runtime's GOMP_parallel(fn, data, num_threads, flags), or null: our own pool.
using OmpParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
std::atomic<OmpParallel> g_omp{nullptr};
// The library it came from (for thread_runtime), set before g_omp; each binding's name is leaked,
// so a reader never sees it freed (one short string per share_openmp_runtime call: once per
// process, a few dozen in tests/backends/test_parallel.py).
std::atomic<const std::string*> g_omp_name{nullptr};

// True on pool workers always, and on a caller while it runs chunks: parallel_for runs inline.
thread_local bool t_in_parallel = false;

struct Job {
  const Fn* f;
  int64_t n, step, chunks;
  std::atomic<int64_t> next{0};      // next unclaimed chunk
  std::atomic<int> inside{0};        // workers that entered and have not left
  int entered = 0;                   // workers that entered (guarded by Pool::m)
  int wanted = 0;                    // at most this many may enter
  std::vector<std::exception_ptr> errors;  // per chunk, so the rethrown one is deterministic

  // Claims chunks until none is left; returns how many this thread ran.
  int64_t run_chunks() {
    for (int64_t ran = 0;; ++ran) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return ran;
      try {
        (*f)(c * step, std::min(n, (c + 1) * step));
      } catch (...) {
        errors[static_cast<size_t>(c)] = std::current_exception();
      }
    }
  }
};

struct Pool {
  std::mutex run_m;  // held by the caller whose job owns the pool

  std::mutex m;  // guards job, Job::entered, and the increments of gen and Job::inside
  std::condition_variable work_cv, done_cv;
  Job* job = nullptr;
  std::atomic<uint64_t> gen{0};  // bumped per published job
  int workers = 0;  // started so far; changed under run_m
  // Contention backoff (see the top comment): calls still to run inline, and the next penalty.
  // Read without run_m as a hint (a stale value only shifts one call), written under run_m.
  std::atomic<int> skip{0};
  int penalty = 1;

  void worker_main(uint64_t seen) {
    t_in_parallel = true;
    for (;;) {
      Job* j = nullptr;
      {
        std::unique_lock<std::mutex> lk(m);
        work_cv.wait(lk, [&] { return gen.load(std::memory_order_relaxed) != seen; });
        seen = gen.load(std::memory_order_relaxed);
        if (job && job->entered < job->wanted) {  // the first `wanted` awake take part
          j = job;
          ++j->entered;
          j->inside.fetch_add(1, std::memory_order_relaxed);
        }
      }
      if (!j) continue;
      j->run_chunks();
      // Last one out wakes the caller; j may be gone as soon as `inside` reads 0.
      if (j->inside.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(m);
        done_cv.notify_all();
      }
    }
  }

  // Starts workers up to `n` (caller holds run_m). Best effort: if the system refuses a thread,
  // the job runs on the workers that exist.
  void grow(int n) {
    if (workers >= n) return;
#ifndef _WIN32
    // Workers inherit a fully blocked signal mask, so signals (SIGINT for Python) keep going to
    // the threads that handle them.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
#endif
    const uint64_t seen = gen.load(std::memory_order_relaxed);
    try {
      for (; workers < n; ++workers) std::thread(&Pool::worker_main, this, seen).detach();
    } catch (const std::system_error&) {
    }
#ifndef _WIN32
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
#endif
  }

  // One job as an OpenMP parallel region of helpers + 1 threads (the calling thread is its thread
  // 0): records when the caller finished its chunks (`own_done`) and whether any other thread ran
  // a chunk, for the backoff rule.
  struct OmpJob {
    Job* j;
    std::thread::id caller;
    Clock::time_point own_done;
    std::atomic<int> helped{0};
  };
  static void omp_entry(void* data) {
    OmpJob* o = static_cast<OmpJob*>(data);
    if (std::this_thread::get_id() == o->caller) {  // t_in_parallel is already set (run)
      o->j->run_chunks();
      o->own_done = Clock::now();
      return;
    }
    const bool was = t_in_parallel;  // an OpenMP thread of torch's: inline only while in our job
    t_in_parallel = true;
    if (o->j->run_chunks() > 0) o->helped.fetch_add(1, std::memory_order_relaxed);
    t_in_parallel = was;
  }

  // Runs chunks [0, chunks) of f with up to `helpers` workers (caller holds run_m); `learn`:
  // whether a contended job sets the backoff (coarse jobs do not: parallel_for_coarse).
  void run(const Fn& f, int64_t n, int64_t step, int64_t chunks, int helpers, bool learn) {
    Job j;
    j.f = &f;
    j.n = n;
    j.step = step;
    j.chunks = chunks;
    j.errors.resize(static_cast<size_t>(chunks));
    if (const OmpParallel omp = g_omp.load(std::memory_order_acquire)) {
      OmpJob o{&j, std::this_thread::get_id(), {}, {}};
      const Clock::time_point t0 = Clock::now();
      t_in_parallel = true;
      omp(&Pool::omp_entry, &o, static_cast<unsigned>(helpers + 1), 0);
      t_in_parallel = false;
      finish(j, learn, o.helped.load() == 0, o.own_done - t0, Clock::now() - o.own_done);
      return;
    }
    grow(helpers);
    j.wanted = std::min(workers, helpers);
    {
      std::lock_guard<std::mutex> lk(m);
      job = &j;
      gen.fetch_add(1, std::memory_order_release);
    }
    // Wake only as many as can take part (num_threads() may have shrunk since the pool grew). A
    // wake-up that lands on a worker finding the job full costs nothing but that wake-up.
    if (j.wanted == workers)
      work_cv.notify_all();
    else
      for (int i = 0; i < j.wanted; ++i) work_cv.notify_one();
    const Clock::time_point t0 = Clock::now();
    t_in_parallel = true;
    j.run_chunks();
    t_in_parallel = false;
    const Clock::time_point t1 = Clock::now();
    bool nobody;
    {
      std::unique_lock<std::mutex> lk(m);
      job = nullptr;  // every chunk is claimed: no one else needs to enter
      nobody = j.entered == 0;
      done_cv.wait(lk, [&] { return j.inside.load(std::memory_order_acquire) == 0; });
    }
    finish(j, learn, nobody, t1 - t0, Clock::now() - t1);
  }

  // After a job: the backoff rule (the caller's own time against its wait for the others), then
  // the lowest chunk's exception.
  void finish(Job& j, bool learn, bool nobody, Clock::duration own, Clock::duration wait) {
    if (learn && (nobody || wait > own)) {  // contended: the split did not pay
      skip.store(penalty, std::memory_order_relaxed);
      penalty = std::min(2 * penalty, kMaxBackoff);
    } else if (learn) {
      penalty = 1;
    }
    for (auto& e : j.errors)
      if (e) std::rethrow_exception(e);
  }
};

std::mutex g_pool_m;  // guards creation of g_pool
std::atomic<Pool*> g_pool{nullptr};

#ifndef _WIN32
void before_fork() { g_pool_m.lock(); }
void after_fork_parent() { g_pool_m.unlock(); }
void after_fork_child() {
  g_pool.store(nullptr, std::memory_order_relaxed);  // the old pool's workers do not exist here
  g_omp.store(nullptr, std::memory_order_relaxed);   // nor the OpenMP runtime's (top comment)
  g_pool_m.unlock();
}
#endif

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return p;
  std::lock_guard<std::mutex> lk(g_pool_m);
  p = g_pool.load(std::memory_order_relaxed);
  if (!p) {
#ifndef _WIN32
    static const int registered = pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    (void)registered;
#endif
    p = new Pool;  // never deleted: see the top comment
    g_pool.store(p, std::memory_order_release);
  }
  return p;
}

}  // namespace

namespace testing {
void reset_backoff() {
  Pool* p = pool();
  std::lock_guard<std::mutex> lk(p->run_m);
  p->skip.store(0, std::memory_order_relaxed);
  p->penalty = 1;
}
}  // namespace testing

std::string share_openmp_runtime(const std::vector<std::string>& libraries) {
#ifndef _WIN32
  for (const std::string& lib : libraries) {
    // RTLD_NOLOAD: only a runtime this process already loaded (torch's); the handle is kept, so
    // the library stays loaded while the pool may call it.
    void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (!h) continue;
    if (void* sym = dlsym(h, "GOMP_parallel")) {
      pool();  // registers the fork handlers that drop the binding in a child
      g_omp_name.store(new std::string(lib), std::memory_order_release);
      g_omp.store(reinterpret_cast<OmpParallel>(sym), std::memory_order_release);
      return lib;
    }
    dlclose(h);
  }
#else
  (void)libraries;
#endif
  return "";
}

void use_own_pool() { g_omp.store(nullptr, std::memory_order_release); }

std::string thread_runtime() {
  if (!g_omp.load(std::memory_order_acquire)) return "own";
  const std::string* name = g_omp_name.load(std::memory_order_acquire);
  return "openmp:" + (name ? *name : std::string());
}

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

void parallel_for(int64_t n, int64_t grain, const Fn& f) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
  if (chunks <= 1 || t_in_parallel) {
    f(0, n);
    return;
  }
  Pool* p = pool();
  if (p->skip.load(std::memory_order_relaxed) > 0) {  // backing off after a contended job
    p->skip.fetch_sub(1, std::memory_order_relaxed);
    f(0, n);
    return;
  }
  std::unique_lock<std::mutex> lk(p->run_m, std::try_to_lock);
  if (!lk.owns_lock()) {  // another thread's job holds the pool
    f(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  chunks = (n + step - 1) / step;  // no empty trailing chunk
  p->run(f, n, step, chunks, static_cast<int>(chunks - 1), true);
}

void parallel_for_coarse(int64_t n, const Fn& f) {
  if (n <= 0) return;
  const int64_t helpers = std::min<int64_t>(num_threads(), n) - 1;
  if (helpers <= 0 || t_in_parallel) {
    f(0, n);
    return;
  }
  // No backoff check: see parallel.h (a long job split over busy cores still beats inline, and
  // one-element claims bound what a slow worker costs).
  Pool* p = pool();
  std::unique_lock<std::mutex> lk(p->run_m, std::try_to_lock);
  if (!lk.owns_lock()) {  // another thread's job holds the pool
    f(0, n);
    return;
  }
  p->run(f, n, 1, n, static_cast<int>(helpers), false);
}

}  // namespace detkernels

namespace detkernels {
namespace testing {

namespace {
// Waits (up to 10 s, then sets timed_out) until `started` reaches `count`: the probes' rendezvous.
void meet(const std::atomic<int64_t>& started, int64_t count, std::atomic<int64_t>& timed_out) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (started.load() < count) {
    if (std::chrono::steady_clock::now() > end) {
      timed_out.store(1);
      return;
    }
    std::this_thread::yield();
  }
}
}  // namespace

std::vector<int64_t> parallel_probe(int64_t n, int64_t grain, int64_t nested_n, int64_t throw_at,
                                    int64_t rendezvous) {
  reset_backoff();  // a probe of the pool's splitting, not of its contention backoff
  std::vector<std::atomic<int64_t>> visits(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::atomic<int64_t> chunks{0}, started{0}, nested_here{0}, nested_away{0}, timed_out{0};
  std::mutex tm;
  std::vector<std::thread::id> threads;
  parallel_for(n, grain, [&](int64_t lo, int64_t hi) {
    chunks.fetch_add(1);
    {
      std::lock_guard<std::mutex> lk(tm);
      if (std::find(threads.begin(), threads.end(), std::this_thread::get_id()) == threads.end())
        threads.push_back(std::this_thread::get_id());
    }
    if (rendezvous > 0) {
      started.fetch_add(1);
      meet(started, rendezvous, timed_out);
    }
    for (int64_t i = lo; i < hi; ++i) visits[static_cast<size_t>(i)].fetch_add(1);
    if (nested_n > 0) {
      const auto outer = std::this_thread::get_id();
      parallel_for(nested_n, 1, [&](int64_t, int64_t) {
        (std::this_thread::get_id() == outer ? nested_here : nested_away).fetch_add(1);
      });
    }
    if (lo <= throw_at && throw_at < hi)
      throw std::runtime_error("parallel_probe: chunk [" + std::to_string(lo) + ", " +
                               std::to_string(hi) + ") threw");
  });
  std::vector<int64_t> r{chunks.load(), static_cast<int64_t>(threads.size()), nested_here.load(),
                         nested_away.load(), timed_out.load()};
  for (auto& v : visits) r.push_back(v.load());
  return r;
}

std::vector<int64_t> parallel_backoff_probe(int64_t hold_us) {
  reset_backoff();
  const auto caller = std::this_thread::get_id();
  // Two chunks; the one a worker runs (if any comes) sleeps hold_us: the caller waits longer
  // than it worked, or ran both chunks itself -- a contended job either way.
  parallel_for(2, 1, [&](int64_t, int64_t) {
    if (std::this_thread::get_id() != caller)
      std::this_thread::sleep_for(std::chrono::microseconds(hold_us));
  });
  int64_t skip = pool()->skip.load();
  std::mutex tm;
  std::vector<std::thread::id> threads;
  parallel_for(2, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lk(tm);
    if (std::find(threads.begin(), threads.end(), std::this_thread::get_id()) == threads.end())
      threads.push_back(std::this_thread::get_id());
  });
  const int64_t after = pool()->skip.load();
  reset_backoff();
  return {skip, static_cast<int64_t>(threads.size()), after};
}

std::vector<int64_t> parallel_coarse_probe(int64_t n, int64_t hold_us, int64_t rendezvous) {
  reset_backoff();
  const auto caller = std::this_thread::get_id();
  parallel_for(2, 1, [&](int64_t, int64_t) {  // a contended job: the backoff is now set
    if (std::this_thread::get_id() != caller) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  const int64_t before = pool()->skip.load();
  std::atomic<int64_t> started{0}, by_caller{0}, elements{0}, timed_out{0};
  std::mutex tm;
  std::vector<std::thread::id> threads;
  parallel_for_coarse(n, [&](int64_t lo, int64_t hi) {
    elements.fetch_add(hi - lo);
    const bool mine = std::this_thread::get_id() == caller;
    if (mine) by_caller.fetch_add(hi - lo);
    {
      std::lock_guard<std::mutex> lk(tm);
      if (std::find(threads.begin(), threads.end(), std::this_thread::get_id()) == threads.end())
        threads.push_back(std::this_thread::get_id());
    }
    if (started.fetch_add(1) < rendezvous) meet(started, rendezvous, timed_out);  // the first ones
    if (!mine) std::this_thread::sleep_for(std::chrono::microseconds(hold_us));
  });
  const int64_t after = pool()->skip.load();
  reset_backoff();
  return {before, after, elements.load(), by_caller.load(), static_cast<int64_t>(threads.size()),
          timed_out.load()};
}

}  // namespace testing
}  // namespace detkernels
