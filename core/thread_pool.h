// A fixed pool of worker threads for data-parallel loops.
//
// ParallelFor splits [0, n) into contiguous chunks, one per thread (the
// calling thread takes the first), and blocks until all are done. Kernels use
// it to keep every core busy even at batch 1 (work split over output rows).
// Not re-entrant: a ParallelFor body must not call ParallelFor on the same
// pool. One ParallelFor at a time per pool (callers serialise).
#pragma once

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

  // Calls body(begin, end, thread_idx) over a partition of [0, n) into at most
  // num_threads() chunks whose sizes are multiples of `grain` (except the last).
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t, int64_t, int)>& body);

  // Hardware threads available to this process (at least 1).
  static int DefaultNumThreads();

 private:
  void WorkerLoop(int thread_idx);

  const int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  const std::function<void(int64_t, int64_t, int)>* body_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> chunks_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace herd
