#include "tools/progress_bar.h"

#include <unistd.h>

#include <cstdio>

namespace herd {

ProgressBar::ProgressBar(std::string what)
    : what_(std::move(what)),
      tty_(isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::Update(int64_t done, int64_t total) {
  if (!tty_ || total <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ < std::chrono::milliseconds(500)) return;
  if (drawn_ && done < total && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * done / total);
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double left = done > 0 ? elapsed * static_cast<double>(total - done) / done : 0.0;
  std::fprintf(stderr, "\r%s [%s] %lld/%lld, %.0f s left\033[K", what_.c_str(), bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total), left);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace herd
