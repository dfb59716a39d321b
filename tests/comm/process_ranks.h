// The conformance suite with one rank per process (the mpi and ucx mains):
// the rank's context, and the gtest output of a multi-process run.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/control_channel.h"
#include "tests/comm/conformance.h"

namespace herd::comm::testing {

// A rank that is a process of its own: its control channel (borrowed) and
// the factory of its backend's communicators.
class ProcessRankContext final : public RankContext {
 public:
  using CommunicatorFactory = absl::StatusOr<std::unique_ptr<Communicator>> (*)(absl::Time);
  ProcessRankContext(ControlChannel* control, CommunicatorFactory factory, bool abort_returns)
      : control_(control), factory_(factory), abort_returns_(abort_returns) {}

  int rank() const override { return control_->rank(); }
  int world_size() const override { return control_->world_size(); }
  std::unique_ptr<Communicator> NewCommunicator() override;
  ControlChannel& control() override { return *control_; }
  bool abort_returns() const override { return abort_returns_; }
  bool names_missing_peer() const override { return true; }

 private:
  ControlChannel* const control_;
  const CommunicatorFactory factory_;
  const bool abort_returns_;
};

// Prefixes this process's logs with its rank, says on stderr where it runs
// ("<program>: rank R of N on host H, pid P"), and on ranks other than 0
// replaces gtest's printer by one that prints only failures, prefixed with
// the rank. Call after InitGoogleTest, before RUN_ALL_TESTS.
void PrepareProcessRank(const char* program, const ControlChannel& control);

}  // namespace herd::comm::testing
