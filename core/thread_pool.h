// A fixed pool of worker threads for data-parallel loops.
//
// ParallelFor splits [0, n) into contiguous pieces that the threads, the
// calling one included, take from a shared counter (large pieces first, one
// grain last), and blocks until all are done. Kernels use
// it to keep every core busy even at batch 1 (work split over output rows),
// where a decode step issues ~100 loops of a few microseconds each: workers
// therefore spin briefly on a generation counter before sleeping, and the
// caller spins on a completion counter, so a loop costs about a microsecond
// of synchronisation instead of two futex wake-ups.
// Not re-entrant: a body must not call ParallelFor on the same pool. One
// ParallelFor at a time per pool (callers serialise).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace herd {

class ThreadPool {
 public:
  // num_threads >= 1 counts the calling thread; 1 means no worker threads.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls body(begin, end, thread_idx) over a partition of [0, n) into pieces
  // whose sizes are multiples of `grain` (except the last); threads take
  // pieces from a shared counter, large ones first and single grains last, so
  // one thread may run several, one at a time, and a body may use per-thread
  // scratch indexed by thread_idx.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t, int64_t, int)>& body);

  // Hardware threads available to this process (at least 1).
  static int DefaultNumThreads();

 private:
  void WorkerLoop(int thread_idx);
  // Runs pieces of the current loop until none is left.
  void RunPieces(int thread_idx);

  const int num_threads_;
  std::vector<std::thread> workers_;
  // Published before generation_ is bumped; read by workers after they see it.
  const std::function<void(int64_t, int64_t, int)>* body_ = nullptr;
  int64_t n_ = 0;      // the current loop's range
  int64_t grain_ = 1;  // the current loop's grain: pieces are multiples of it
  std::atomic<int64_t> next_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  // Sleeping workers wait here after spinning found no work.
  std::mutex mutex_;
  std::condition_variable work_ready_;
  int num_sleeping_ = 0;  // guarded by mutex_
};

}  // namespace herd
