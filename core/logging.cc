#include "core/logging.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "absl/strings/ascii.h"

namespace herd {
namespace {

LogLevel LevelFromEnvironment() {
  const char* env = std::getenv("HERD_LOG_LEVEL");
  LogLevel level = LogLevel::kInfo;
  if (env != nullptr && !ParseLogLevel(env, &level)) {
    std::fprintf(stderr, "herd: ignoring unknown HERD_LOG_LEVEL='%s' (error|warn|info|debug)\n",
                 env);
  }
  return level;
}

std::atomic<int>& Threshold() {
  static std::atomic<int> threshold{static_cast<int>(LevelFromEnvironment())};
  return threshold;
}

std::mutex& PrefixMutex() {
  static std::mutex mutex;
  return mutex;
}
std::string& Prefix() {
  static std::string prefix;
  return prefix;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return "E";
    case LogLevel::kWarn:
      return "W";
    case LogLevel::kInfo:
      return "I";
    case LogLevel::kDebug:
      return "D";
  }
  return "?";
}

}  // namespace

LogLevel GetLogLevel() { return static_cast<LogLevel>(Threshold().load()); }
void SetLogLevel(LogLevel level) { Threshold().store(static_cast<int>(level)); }

bool ParseLogLevel(const std::string& text, LogLevel* level) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "error")
    *level = LogLevel::kError;
  else if (lower == "warn" || lower == "warning")
    *level = LogLevel::kWarn;
  else if (lower == "info")
    *level = LogLevel::kInfo;
  else if (lower == "debug")
    *level = LogLevel::kDebug;
  else
    return false;
  return true;
}

void SetLogPrefix(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(PrefixMutex());
  Prefix() = prefix;
}

namespace internal {

LogMessage::LogMessage(LogLevel level, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  stream_ << "[herd " << LevelName(level);
  {
    std::lock_guard<std::mutex> lock(PrefixMutex());
    if (!Prefix().empty()) stream_ << ' ' << Prefix();
  }
  stream_ << ' ' << (base ? base + 1 : file) << ':' << line << "] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  const std::string text = stream_.str();
  std::fwrite(text.data(), 1, text.size(), stderr);
}

}  // namespace internal
}  // namespace herd
