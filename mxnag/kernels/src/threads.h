// The threads of mxnag's CPU operators: a helper-thread pool that never waits for a
// thread the scheduler has not run yet, or an OpenMP loop (MXNAG_THREADING=openmp), over
// the concatenation of a group's tensors in chunks. Shared by src/fused_cpu.cc and the
// benchmark's operators (benchmarks/src/bench_ops.cc), so both move memory alike.
#ifndef MXNAG_THREADS_H_
#define MXNAG_THREADS_H_

#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mxnag {

// Fewer elements than this per thread cost more in fork/join than they gain.
inline const int64_t kMinElementsPerThread = 1 << 15;
// Threads take chunks of this many elements (a multiple of 64 bytes of floats) as they
// come free: a thread slowed down by another process on its core does less of the work.
inline const int64_t kChunk = 1 << 15;

// Threads for a large update. MXNet's engine runs operators with omp_get_max_threads()
// lowered to half the processors (1 on 2 cores); the update is bandwidth-bound and uses
// every core unless the user asked otherwise: MXNAG_NUM_THREADS, else OMP_NUM_THREADS or
// MXNET_OMP_MAX_THREADS (honoured through omp_get_max_threads()), else all processors.
inline int thread_budget() {
  static const int budget = [] {
    const char* own = std::getenv("MXNAG_NUM_THREADS");
    if (own != nullptr && std::atoi(own) > 0) return std::atoi(own);
    if (std::getenv("OMP_NUM_THREADS") != nullptr || std::getenv("MXNET_OMP_MAX_THREADS") != nullptr)
      return std::max(1, omp_get_max_threads());
    return std::max(1, omp_get_num_procs());
  }();
  return budget;
}

inline int threads_for(int64_t elements) {
  const int64_t by_size = std::max<int64_t>(1, elements / kMinElementsPerThread);
  return static_cast<int>(std::min<int64_t>(thread_budget(), by_size));
}

// Helper threads that join an update when they get a core, and that the update never
// waits for unless they did. An OpenMP parallel region ends at a barrier for its whole
// team: on a busy machine (other processes, MXNet's own workers) one team thread not yet
// scheduled stalls the update by a scheduler time slice (measured: 8 ms for a 1M-element
// step that takes 0.6 ms on one thread). Here the calling thread starts on the chunks at
// once; a helper that wakes after they are all taken goes back to sleep.
class HelperPool {
 public:
  static HelperPool& get() {
    static HelperPool* pool = new HelperPool();  // never destroyed: helpers are detached
    return *pool;
  }

  // Runs work(c) for c in [0, chunks), on this thread and up to `helpers` helpers.
  void run(int64_t chunks, const std::function<void(int64_t)>& work, int helpers) {
    Sync* sync = sync_;
    std::unique_lock<std::mutex> busy(sync->busy, std::try_to_lock);
    Job job;
    job.work = &work;
    job.chunks = chunks;
    job.wanted = helpers;
    if (!busy.owns_lock() || helpers <= 0) {  // another update holds the pool: go alone
      drain(&job);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(sync->mutex);
      start_helpers(helpers);
      job_ = &job;
      ++generation_;
    }
    sync->wake.notify_all();
    drain(&job);
    std::unique_lock<std::mutex> lock(sync->mutex);
    job_ = nullptr;  // no helper joins from now on; wait for those that did
    sync->left.wait(lock, [&] { return job.active == 0; });
  }

 private:
  struct Job {
    const std::function<void(int64_t)>* work = nullptr;
    int64_t chunks = 0;
    std::atomic<int64_t> next{0};
    int wanted = 0;
    int active = 0;  // helpers working on it; guarded by Sync::mutex
  };

  struct Sync {
    std::mutex busy;   // one update at a time uses the helpers
    std::mutex mutex;  // guards the pool's fields
    std::condition_variable wake, left;
  };

  // fork(): the child gets none of the helper threads but copies of mutexes and
  // condition variables that they were waiting on, which must not be used again (a
  // broadcast would wait for the vanished waiters): it starts with new ones.
  HelperPool() {
    pthread_atfork([] { get().sync_->busy.lock(); get().sync_->mutex.lock(); },
                   [] { get().sync_->mutex.unlock(); get().sync_->busy.unlock(); },
                   [] {
                     HelperPool& pool = get();
                     pool.sync_ = new Sync();  // the parent's copies are leaked on purpose
                     pool.started_ = 0;
                     pool.job_ = nullptr;
                   });
  }

  static void drain(Job* job) {
    for (int64_t c; (c = job->next.fetch_add(1)) < job->chunks;) (*job->work)(c);
  }

  void start_helpers(int wanted) {  // under Sync::mutex
    for (; started_ < wanted; ++started_) std::thread([this] { serve(); }).detach();
  }

  void serve() {
    Sync* sync = sync_;
    std::unique_lock<std::mutex> lock(sync->mutex);
    uint64_t seen = generation_ - (job_ != nullptr ? 1 : 0);
    for (;;) {
      sync->wake.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      Job* job = job_;
      if (job == nullptr || job->active >= job->wanted) continue;
      ++job->active;
      lock.unlock();
      drain(job);
      lock.lock();
      if (--job->active == 0) sync->left.notify_all();
    }
  }

  Sync* sync_ = new Sync();
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int started_ = 0;
};

// Set in a child process made by fork(): libgomp's thread team does not survive fork (a
// parallel region in the child waits forever for the parent's threads), so a forked child
// (gluon's DataLoader workers, for one) uses the helper pool, which starts anew there.
inline std::atomic<bool> forked_child{false};
inline const int fork_handler_installed =
    pthread_atfork(nullptr, nullptr, [] { forked_child.store(true); });

// MXNAG_THREADING=openmp uses an OpenMP parallel loop instead of the helper pool (same
// chunks, dynamic schedule), for comparison; not in a forked child (see forked_child).
inline bool use_openmp() {
  static const bool openmp = [] {
    const char* mode = std::getenv("MXNAG_THREADING");
    return mode != nullptr && std::strcmp(mode, "openmp") == 0;
  }();
  return openmp && !forked_child.load();
}

// Calls span(k, begin, end) over the concatenation of the tensors of `sizes`, in chunks
// spread over the threads: one dispatch per group, whatever its number of tensors.
template <typename SpanFn>
inline void for_each_span(const std::vector<int64_t>& sizes, SpanFn span) {
  std::vector<int64_t> offsets(sizes.size() + 1, 0);
  for (size_t k = 0; k < sizes.size(); ++k) offsets[k + 1] = offsets[k] + sizes[k];
  const int64_t total = offsets.back();
  const int threads = threads_for(total);
  if (threads <= 1) {
    for (size_t k = 0; k < sizes.size(); ++k)
      if (sizes[k] > 0) span(k, 0, sizes[k]);
    return;
  }
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  const std::function<void(int64_t)> chunk = [&](int64_t c) {
    const int64_t lo = c * kChunk;
    const int64_t hi = std::min(total, lo + kChunk);
    size_t k = std::upper_bound(offsets.begin(), offsets.end(), lo) - offsets.begin() - 1;
    for (; k < sizes.size() && offsets[k] < hi; ++k) {
      const int64_t begin = std::max(lo, offsets[k]) - offsets[k];
      const int64_t end = std::min(hi, offsets[k + 1]) - offsets[k];
      if (begin < end) span(k, begin, end);
    }
  };
  if (use_openmp()) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) chunk(c);
    return;
  }
  HelperPool::get().run(chunks, chunk, threads - 1);
}

}  // namespace mxnag

#endif  // MXNAG_THREADS_H_
