// The comm conformance suite: one test body per behaviour, run unchanged
// against every backend (ggml's backend-ops idea). Each body runs on every
// rank of a group at once: as threads (local, nccl) or as mpirun processes
// (mpi). Bodies use gtest assertions; a rank that fails an assertion stops
// taking part, and its peers then fail on their deadlines instead of hanging.
//
// Instantiations: local_conformance_test.cc (N = 1..4 threads, and again
// with the local backend dressed as a device communicator, N = 1..3),
// mpi_conformance_main.cc (under mpirun, N = 2..4, and across network
// namespaces in tests/integration), nccl_conformance_test.cc (GPU).
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "comm/control_channel.h"

namespace herd::comm::testing {

// What a backend gives the bodies on one rank.
class RankContext {
 public:
  virtual ~RankContext() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // A fresh communicator for one body (so that a body that fails one on
  // purpose leaves the next body a working one). Collective.
  virtual std::unique_ptr<Communicator> NewCommunicator() = 0;
  // This rank's control channel, shared by the bodies.
  virtual ControlChannel& control() = 0;
  // False for mpi, whose Abort ends the job (covered by mpi_fault_test.sh).
  virtual bool abort_returns() const = 0;
  // False for nccl, which cannot tell which peer is missing.
  virtual bool names_missing_peer() const = 0;
};

// X-macro of every body, so that each instantiation lists the same cases.
#define HERD_COMM_CONFORMANCE_CASES(X) \
  X(AllocateAndCopy)                   \
  X(AllToAllVUnevenCounts)             \
  X(AllToAllVZeroCounts)               \
  X(AllToAllVAllRanksToOne)            \
  X(AllToAllVLargeBlocks)              \
  X(GroupedAllToAllVOneRound)          \
  X(RowAllToAllVGatherScatter)         \
  X(RowAllToAllVRejectsBadArgs)        \
  X(AllGatherEveryRank)                \
  X(BroadcastFromEveryRoot)            \
  X(BarrierWaitsForTheLastRank)        \
  X(InvalidArgumentsKeepCommunicator)  \
  X(StatsCountOnlyOffRankBytes)        \
  X(DeadlineNamesMissingRank)          \
  X(BroadcastDeadlineNamesRoot)        \
  X(AbortFailsLaterCalls)              \
  X(ExchangeRoundTripUneven)           \
  X(ExchangeZeroTokens)                \
  X(ExchangeAllSlotsToOneRank)         \
  X(ExchangeLocalRowsSkipNetwork)      \
  X(ExchangeTwoHandlesInFlight)        \
  X(ExchangeRejectsBadInput)           \
  X(ControlPointToPoint)               \
  X(ControlAnySourceAndOrder)          \
  X(ControlBroadcast)                  \
  X(ControlRecvDeadlineNamesRank)

#define HERD_COMM_DECLARE_CASE(name) void name(RankContext& ctx);
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_DECLARE_CASE)
#undef HERD_COMM_DECLARE_CASE

}  // namespace herd::comm::testing
