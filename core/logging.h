// Leveled logging to stderr.
//
// The threshold comes from the HERD_LOG_LEVEL environment variable (error,
// warn, info, debug; default info), read once. A rank prefix can be set so
// that many processes printing at once stay readable. Thread-safe: each
// message is written with one fwrite.
//
//   HERD_LOG(INFO) << "loaded " << n << " tensors";
#pragma once

#include <sstream>
#include <string>

namespace herd {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

// The active threshold (from HERD_LOG_LEVEL unless SetLogLevel was called).
LogLevel GetLogLevel();
void SetLogLevel(LogLevel level);
// Parses "error", "warn", "info", "debug" (case-insensitive); false if unknown.
bool ParseLogLevel(const std::string& text, LogLevel* level);
// Prefix printed before every message, e.g. "rank 3"; empty for none.
void SetLogPrefix(const std::string& prefix);

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace herd

#define HERD_LOG_LEVEL_ERROR ::herd::LogLevel::kError
#define HERD_LOG_LEVEL_WARN ::herd::LogLevel::kWarn
#define HERD_LOG_LEVEL_INFO ::herd::LogLevel::kInfo
#define HERD_LOG_LEVEL_DEBUG ::herd::LogLevel::kDebug

#define HERD_LOG(severity)                                 \
  if (HERD_LOG_LEVEL_##severity > ::herd::GetLogLevel()) { \
  } else                                                   \
    ::herd::internal::LogMessage(HERD_LOG_LEVEL_##severity, __FILE__, __LINE__).stream()
