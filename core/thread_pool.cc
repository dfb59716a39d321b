#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>

namespace herd {

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_ready_.notify_all();
  for (auto& w : workers_) w.join();
}

int ThreadPool::DefaultNumThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t, int)>& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t num_grains = (n + grain - 1) / grain;
  const int num_chunks = static_cast<int>(std::min<int64_t>(num_threads_, num_grains));
  if (num_chunks <= 1) {
    body(0, n, 0);
    return;
  }
  std::vector<std::pair<int64_t, int64_t>> chunks(num_threads_, {0, 0});
  for (int c = 0; c < num_chunks; ++c) {
    const int64_t begin = std::min(n, num_grains * c / num_chunks * grain);
    const int64_t end = std::min(n, num_grains * (c + 1) / num_chunks * grain);
    chunks[c] = {begin, end};
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    chunks_ = std::move(chunks);
    body_ = &body;
    pending_ = num_threads_ - 1;
    ++generation_;
  }
  work_ready_.notify_all();
  if (chunks_[0].second > chunks_[0].first) body(chunks_[0].first, chunks_[0].second, 0);
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [this] { return pending_ == 0; });
  body_ = nullptr;
}

void ThreadPool::WorkerLoop(int thread_idx) {
  uint64_t seen = 0;
  while (true) {
    std::pair<int64_t, int64_t> chunk;
    const std::function<void(int64_t, int64_t, int)>* body;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      chunk = chunks_[thread_idx];
      body = body_;
    }
    if (chunk.second > chunk.first) (*body)(chunk.first, chunk.second, thread_idx);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) work_done_.notify_one();
    }
  }
}

}  // namespace herd
