// A one-line progress bar on stderr for the long stages of herd plan and
// herd compress: drawn only when stderr is a terminal and the work has taken
// more than half a second, with the estimated time left.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace herd {

class ProgressBar {
 public:
  explicit ProgressBar(std::string what);
  ~ProgressBar() { Finish(); }

  // `done` of `total` units finished; redraws at most every 100 ms.
  void Update(int64_t done, int64_t total);
  // Erases the bar (also on destruction).
  void Finish();

 private:
  std::string what_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace herd
