#include "comm/env.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/logging.h"

namespace herd::comm {
namespace {

struct Int64Knob {
  const char* name;
  int64_t CommEnv::*field;
  int64_t min_value;
};

constexpr Int64Knob kInt64Knobs[] = {
    {"HERD_COMM_TIMEOUT_MS", &CommEnv::timeout_ms, 1},
    {"HERD_COMM_POLL_SLEEP_AFTER_MS", &CommEnv::poll_sleep_after_ms, 0},
    {"HERD_COMM_POLL_SLEEP_US", &CommEnv::poll_sleep_us, 0},
};

// Read by the transport libraries themselves; printed so that a log shows them.
constexpr const char* kTransportKnobs[][2] = {
    {"NCCL_SOCKET_IFNAME", "NCCL"},
    {"UCX_NET_DEVICES", "UCX"},
    {"UCX_TLS", "UCX"},
};

const char* Getenv(const char* name) { return std::getenv(name); }

// True when `text` holds a valid value for `knob`.
bool ParseKnob(const Int64Knob& knob, const char* text, int64_t* value) {
  return text != nullptr && absl::SimpleAtoi(text, value) && *value >= knob.min_value;
}

}  // namespace

CommEnv ParseCommEnv(const std::function<const char*(const char*)>& lookup,
                     std::vector<std::string>* warnings) {
  CommEnv env;
  for (const Int64Knob& knob : kInt64Knobs) {
    const char* text = lookup(knob.name);
    if (text == nullptr) continue;
    int64_t value = 0;
    if (!ParseKnob(knob, text, &value)) {
      if (warnings != nullptr) {
        warnings->push_back(absl::StrCat(knob.name, "='", text, "' is not an integer >= ",
                                         knob.min_value, "; using the default ", env.*knob.field));
      }
      continue;
    }
    env.*knob.field = value;
  }
  return env;
}

const CommEnv& GetCommEnv() {
  static const CommEnv* const kEnv = [] {
    std::vector<std::string> warnings;
    auto* parsed = new CommEnv(ParseCommEnv(Getenv, &warnings));
    for (const std::string& w : warnings) HERD_LOG(WARN) << w;
    return parsed;
  }();
  return *kEnv;
}

std::string CommEnvReport(const CommEnv& env,
                          const std::function<const char*(const char*)>& lookup) {
  std::string out;
  for (const Int64Knob& knob : kInt64Knobs) {
    int64_t parsed = 0;
    const bool from_env = ParseKnob(knob, lookup(knob.name), &parsed) && parsed == env.*knob.field;
    absl::StrAppend(&out, knob.name, "=", env.*knob.field, from_env ? " (env)" : " (default)",
                    "\n");
  }
  for (const auto& knob : kTransportKnobs) {
    const char* value = lookup(knob[0]);
    if (value == nullptr) {
      absl::StrAppend(&out, knob[0], " unset\n");
    } else {
      absl::StrAppend(&out, knob[0], "=", value, " (read by ", knob[1], ")\n");
    }
  }
  return out;
}

absl::Time DefaultDeadline() { return DeadlineAfterMs(GetCommEnv().timeout_ms); }

absl::Time DeadlineAfterMs(int64_t timeout_ms) {
  return absl::Now() + absl::Milliseconds(timeout_ms);
}

PollPacer::PollPacer(const CommEnv& env)
    : env_(env), idle_since_(absl::Now()), next_sleep_us_(env.poll_sleep_us) {}

void PollPacer::Pause() {
  if (env_.poll_sleep_us > 0 &&
      absl::Now() - idle_since_ >= absl::Milliseconds(env_.poll_sleep_after_ms)) {
    std::this_thread::sleep_for(std::chrono::microseconds(next_sleep_us_));
    next_sleep_us_ = std::max(env_.poll_sleep_us, std::min(2 * next_sleep_us_, kMaxPollSleepUs));
  } else {
    std::this_thread::yield();
  }
}

void PollPacer::Progress() {
  idle_since_ = absl::Now();
  next_sleep_us_ = env_.poll_sleep_us;
}

}  // namespace herd::comm
