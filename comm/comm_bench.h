// `herd bench comm`: dispatch + combine latency and bandwidth of the
// ExpertExchange on one backend, next to the raw all-to-all-v of the same
// bytes (the backend's own Communicator::AllToAllV on packed buffers and, for
// mpi, MPI_Alltoallv itself), so the table shows what the exchange costs on
// top of the transport.
//
// Workload, per rank and per token count T: T tokens of hidden_size floats,
// each routed to top_k distinct experts drawn uniformly from num_experts;
// expert e lives on rank e * world_size / num_experts (contiguous blocks).
// The "expert" is the identity, so Combine sends back what Dispatch received.
//
// Timing: every iteration starts after a barrier; a rank times its own
// dispatch + combine; the iteration's time is the slowest rank's; the table
// gives the median over iterations. GB/s = payload bytes that leave a rank in
// dispatch and combine (rows for other ranks x hidden_size x 4, averaged over
// ranks; counts and expert ids not included) / that time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herd::comm {

struct CommBenchOptions {
  // local | mpi | ucx | nccl (registry names).
  std::string backend = "local";
  // Ranks as threads for local and nccl (nccl under mpirun uses the job).
  int num_local_ranks = 2;
  // Tokens per rank, one table row each.
  std::vector<int64_t> num_tokens = {1, 8, 64, 512};
  int64_t hidden_size = 1024;
  int64_t top_k = 2;
  int64_t num_experts = 8;
  // Timed iterations per row, after `warmup` untimed ones.
  int iterations = 50;
  int warmup = 5;
  uint32_t seed = 1;
  // Deadline of every call, in milliseconds.
  int64_t timeout_ms = 60000;

  // InvalidArgument naming the first bad field.
  absl::Status Validate() const;
};

struct CommBenchRow {
  int64_t num_tokens = 0;
  // Mean over ranks of the payload bytes one rank sends to others per
  // dispatch + combine.
  double payload_bytes = 0;
  double exchange_us = 0;  // ExpertExchange Dispatch + Combine
  double comm_us = 0;      // Communicator::AllToAllV there and back, packed buffers
  double mpi_us = -1;      // MPI_Alltoallv there and back; < 0 when not measured
};

struct CommBenchResult {
  std::string backend;
  int world_size = 0;
  int rank = 0;  // of the process that holds this result (mpi: each prints only on 0)
  std::vector<CommBenchRow> rows;
};

// Runs the bench. local / nccl without mpirun: spawns the ranks as threads and
// returns rank 0's view. mpi (and nccl under mpirun), ucx (processes that
// join from HERD_RANK etc., comm/ucx/ucx_env.h): collective over the group;
// every process gets the same rows. Blocks for the whole run; every call has
// a deadline of options.timeout_ms. Errors: InvalidArgument, then the
// backends' errors.
absl::StatusOr<CommBenchResult> RunCommBench(const CommBenchOptions& options);

// The table, one row per token count, with GB/s and the exchange's share of
// the raw transfers' bandwidth.
std::string FormatCommBenchTable(const CommBenchOptions& options, const CommBenchResult& result);

}  // namespace herd::comm
