#include "core/thread_pool.h"

#include <sched.h>

#include <algorithm>

namespace herd {
namespace {

// About 20-50 us of polling before a worker sleeps: longer than the gap
// between kernels of one decode step, shorter than a scheduler tick.
constexpr int kSpinIterations = 4000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
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
  if (num_threads_ == 1 || num_grains <= 1) {
    body(0, n, 0);
    return;
  }
  grain_ = grain;
  n_ = n;
  next_.store(0, std::memory_order_relaxed);
  body_ = &body;
  pending_.store(num_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (num_sleeping_ > 0) work_ready_.notify_all();
  }
  RunPieces(0);
  int spins = 0;
  while (pending_.load(std::memory_order_acquire) != 0) {
    if (++spins < kSpinIterations) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
  body_ = nullptr;
}

void ThreadPool::RunPieces(int thread_idx) {
  // Guided self-scheduling: each piece is 1/(2 * threads) of what is left,
  // rounded up to whole grains, so pieces start large (few atomic steps, long
  // sequential streams through the weights) and shrink to one grain at the
  // end, where the threads would otherwise wait on each other's last piece.
  // A thread that starts late (woken from sleep, or preempted) simply takes
  // fewer pieces.
  const int64_t divisor = 2 * static_cast<int64_t>(num_threads_) * grain_;
  int64_t begin = next_.load(std::memory_order_relaxed);
  while (true) {
    if (begin >= n_) return;
    const int64_t piece = std::max<int64_t>(1, (n_ - begin) / divisor) * grain_;
    const int64_t end = std::min(n_, begin + piece);
    if (!next_.compare_exchange_weak(begin, end, std::memory_order_relaxed)) continue;
    (*body_)(begin, end, thread_idx);
    begin = next_.load(std::memory_order_relaxed);
  }
}

void ThreadPool::WorkerLoop(int thread_idx) {
  uint64_t seen = 0;
  while (true) {
    uint64_t current = generation_.load(std::memory_order_acquire);
    for (int spins = 0; current == seen && spins < kSpinIterations; ++spins) {
      CpuRelax();
      current = generation_.load(std::memory_order_acquire);
    }
    if (current == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      ++num_sleeping_;
      work_ready_.wait(lock, [&] {
        return stop_.load() || generation_.load(std::memory_order_acquire) != seen;
      });
      --num_sleeping_;
      if (stop_.load()) return;
      current = generation_.load(std::memory_order_acquire);
    }
    if (stop_.load()) return;
    seen = current;
    RunPieces(thread_idx);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace herd
