#include "comm/comm_bench.h"

#include <mpi.h>

#include <algorithm>
#include <memory>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/expert_exchange.h"
#include "comm/mpi_runtime.h"
#include "comm/registry.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// One rank's routing for one token count.
struct Workload {
  std::vector<float> hidden;           // F32 [num_tokens, hidden_size]
  std::vector<int32_t> topk_idx;       // I32 [num_tokens, top_k]
  std::vector<int32_t> dest_rank;      // I32 [num_tokens, top_k]
  std::vector<int64_t> num_send_rows;  // [world_size]
};

Workload MakeWorkload(const CommBenchOptions& o, int rank, int world_size, int64_t num_tokens) {
  Workload w;
  std::mt19937 rng(o.seed * 1000003u + static_cast<uint32_t>(rank) * 7919u +
                   static_cast<uint32_t>(num_tokens));
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  w.hidden.resize(num_tokens * o.hidden_size);
  for (float& x : w.hidden) x = value(rng);
  w.num_send_rows.assign(world_size, 0);
  std::vector<int32_t> experts(o.num_experts);
  for (int64_t t = 0; t < num_tokens; ++t) {
    // top_k distinct experts: a partial Fisher-Yates shuffle.
    for (int64_t e = 0; e < o.num_experts; ++e) experts[e] = static_cast<int32_t>(e);
    for (int64_t k = 0; k < o.top_k; ++k) {
      const int64_t pick = k + static_cast<int64_t>(rng() % (o.num_experts - k));
      std::swap(experts[k], experts[pick]);
      const int32_t dest = static_cast<int32_t>(experts[k] * world_size / o.num_experts);
      w.topk_idx.push_back(experts[k]);
      w.dest_rank.push_back(dest);
      ++w.num_send_rows[dest];
    }
  }
  return w;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Every rank's values of `mine`, gathered through the communicator (in its
// memory space, so this works for device communicators too).
absl::StatusOr<std::vector<double>> GatherDoubles(Communicator& comm,
                                                  const std::vector<double>& mine,
                                                  absl::Time deadline) {
  const int64_t bytes = static_cast<int64_t>(mine.size() * sizeof(double));
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<CommBuffer> send, comm.Allocate(bytes));
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<CommBuffer> recv, comm.Allocate(bytes * comm.world_size()));
  HERD_RETURN_IF_ERROR(send->CopyFromHost(0, mine.data(), bytes));
  HERD_RETURN_IF_ERROR(comm.AllGather(send->data(), bytes, recv->data(), deadline));
  std::vector<double> all(mine.size() * comm.world_size());
  HERD_RETURN_IF_ERROR(recv->CopyToHost(0, all.data(), bytes * comm.world_size()));
  return all;
}

// Times `step` (warmup + iterations, a barrier before each) and returns the
// median over iterations of the slowest rank, in microseconds.
template <typename Step>
absl::StatusOr<double> TimeSteps(Communicator& comm, const CommBenchOptions& o, const Step& step) {
  std::vector<double> times;
  for (int i = 0; i < o.warmup + o.iterations; ++i) {
    HERD_RETURN_IF_ERROR(comm.Barrier(DeadlineAfterMs(o.timeout_ms)));
    const absl::Time start = absl::Now();
    HERD_RETURN_IF_ERROR(step());
    if (i >= o.warmup) times.push_back(absl::ToDoubleMicroseconds(absl::Now() - start));
  }
  HERD_ASSIGN_OR_RETURN(const std::vector<double> all,
                        GatherDoubles(comm, times, DeadlineAfterMs(o.timeout_ms)));
  std::vector<double> slowest(times.size(), 0);
  for (int r = 0; r < comm.world_size(); ++r) {
    for (size_t i = 0; i < times.size(); ++i) {
      slowest[i] = std::max(slowest[i], all[r * times.size() + i]);
    }
  }
  return Median(slowest);
}

// Byte counts and offsets of one packed all-to-all-v.
struct PackedLayout {
  std::vector<int64_t> send_bytes, send_offsets, recv_bytes, recv_offsets;
  int64_t send_total = 0, recv_total = 0;
};

PackedLayout MakeLayout(const std::vector<int64_t>& send_rows,
                        const std::vector<int64_t>& recv_rows, int64_t row_bytes) {
  PackedLayout l;
  for (size_t p = 0; p < send_rows.size(); ++p) {
    l.send_bytes.push_back(send_rows[p] * row_bytes);
    l.send_offsets.push_back(l.send_total);
    l.send_total += l.send_bytes.back();
    l.recv_bytes.push_back(recv_rows[p] * row_bytes);
    l.recv_offsets.push_back(l.recv_total);
    l.recv_total += l.recv_bytes.back();
  }
  return l;
}

// The bench on one rank; every rank returns the same rows.
absl::StatusOr<std::vector<CommBenchRow>> RankBench(Communicator& comm, const CommBenchOptions& o) {
  const int me = comm.rank();
  const int world_size = comm.world_size();
  const bool measure_mpi = std::string(comm.backend_name()) == "mpi";
  const int64_t row_bytes = o.hidden_size * static_cast<int64_t>(sizeof(float));
  ExpertExchange exchange(&comm);
  std::vector<CommBenchRow> rows;
  for (const int64_t num_tokens : o.num_tokens) {
    const Workload w = MakeWorkload(o, me, world_size, num_tokens);
    const DispatchArgs args{w.hidden.data(), w.topk_idx.data(), w.dest_rank.data(),
                            num_tokens,      o.top_k,           o.hidden_size};
    std::vector<float> out(num_tokens * o.top_k * o.hidden_size);
    std::vector<int64_t> num_recv_rows;
    auto exchange_step = [&]() -> absl::Status {
      HERD_ASSIGN_OR_RETURN(DispatchHandle handle,
                            exchange.Dispatch(args, DeadlineAfterMs(o.timeout_ms)));
      if (num_recv_rows.empty()) {
        num_recv_rows.assign(handle.num_recv_rows_per_rank().begin(),
                             handle.num_recv_rows_per_rank().end());
      }
      const float* expert_out = handle.recv_x();  // identity experts
      return exchange.Combine(std::move(handle), expert_out, out.data(),
                              DeadlineAfterMs(o.timeout_ms));
    };
    CommBenchRow row;
    row.num_tokens = num_tokens;
    HERD_ASSIGN_OR_RETURN(row.exchange_us, TimeSteps(comm, o, exchange_step));

    // The same bytes, already packed, on the communicator: there and back.
    const PackedLayout there = MakeLayout(w.num_send_rows, num_recv_rows, row_bytes);
    const PackedLayout back = MakeLayout(num_recv_rows, w.num_send_rows, row_bytes);
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<CommBuffer> send, comm.Allocate(there.send_total));
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<CommBuffer> recv, comm.Allocate(there.recv_total));
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<CommBuffer> home, comm.Allocate(back.recv_total));
    const AllToAllVArgs there_args{send->data(), there.send_bytes, there.send_offsets,
                                   recv->data(), there.recv_bytes, there.recv_offsets};
    const AllToAllVArgs back_args{recv->data(), back.send_bytes, back.send_offsets,
                                  home->data(), back.recv_bytes, back.recv_offsets};
    auto comm_step = [&]() -> absl::Status {
      HERD_RETURN_IF_ERROR(comm.AllToAllV(there_args, DeadlineAfterMs(o.timeout_ms)));
      return comm.AllToAllV(back_args, DeadlineAfterMs(o.timeout_ms));
    };
    HERD_ASSIGN_OR_RETURN(row.comm_us, TimeSteps(comm, o, comm_step));

    if (measure_mpi) {
      // NOTE: MPI_Alltoallv is MPI's own blocking collective, without a
      // deadline; it is the baseline, and runs only on ranks that have just
      // passed a barrier with one.
      std::vector<int> there_counts(world_size), there_displs(world_size), back_counts(world_size),
          back_displs(world_size), recv_counts(world_size), recv_displs(world_size);
      for (int p = 0; p < world_size; ++p) {
        there_counts[p] = static_cast<int>(there.send_bytes[p] / 4);
        there_displs[p] = static_cast<int>(there.send_offsets[p] / 4);
        recv_counts[p] = static_cast<int>(there.recv_bytes[p] / 4);
        recv_displs[p] = static_cast<int>(there.recv_offsets[p] / 4);
        back_counts[p] = static_cast<int>(back.recv_bytes[p] / 4);
        back_displs[p] = static_cast<int>(back.recv_offsets[p] / 4);
      }
      std::vector<float> mpi_send(there.send_total / 4), mpi_recv(there.recv_total / 4),
          mpi_home(back.recv_total / 4);
      auto mpi_step = [&]() -> absl::Status {
        int rc = MPI_Alltoallv(mpi_send.data(), there_counts.data(), there_displs.data(), MPI_FLOAT,
                               mpi_recv.data(), recv_counts.data(), recv_displs.data(), MPI_FLOAT,
                               MPI_COMM_WORLD);
        if (rc == MPI_SUCCESS) {
          rc = MPI_Alltoallv(mpi_recv.data(), recv_counts.data(), recv_displs.data(), MPI_FLOAT,
                             mpi_home.data(), back_counts.data(), back_displs.data(), MPI_FLOAT,
                             MPI_COMM_WORLD);
        }
        if (rc != MPI_SUCCESS) return absl::InternalError("MPI_Alltoallv failed");
        return absl::OkStatus();
      };
      HERD_ASSIGN_OR_RETURN(row.mpi_us, TimeSteps(comm, o, mpi_step));
    }

    // Payload that leaves this rank: rows for others, there and back.
    int64_t off_rank_rows = 0;
    for (int p = 0; p < world_size; ++p) {
      if (p != me) off_rank_rows += w.num_send_rows[p] + num_recv_rows[p];
    }
    HERD_ASSIGN_OR_RETURN(const std::vector<double> payload,
                          GatherDoubles(comm, {static_cast<double>(off_rank_rows * row_bytes)},
                                        DeadlineAfterMs(o.timeout_ms)));
    for (double bytes : payload) row.payload_bytes += bytes / world_size;
    rows.push_back(row);
  }
  return rows;
}

// Runs RankBench on `num_ranks` threads, each with its own rank's endpoints
// from `make_comm`; returns rank 0's rows or the first error.
template <typename MakeComm>
absl::StatusOr<std::vector<CommBenchRow>> RunOnThreads(int num_ranks, const CommBenchOptions& o,
                                                       const MakeComm& make_comm) {
  std::vector<absl::StatusOr<std::vector<CommBenchRow>>> results(
      num_ranks, absl::UnknownError("rank did not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < num_ranks; ++r) {
    threads.emplace_back([&, r] {
      absl::StatusOr<std::unique_ptr<Communicator>> comm = make_comm(r);
      if (!comm.ok()) {
        results[r] = comm.status();
        return;
      }
      results[r] = RankBench(**comm, o);
    });
  }
  for (std::thread& t : threads) t.join();
  for (auto& result : results) {
    if (!result.ok()) return result.status();
  }
  return std::move(results[0]);
}

}  // namespace

absl::Status CommBenchOptions::Validate() const {
  if (num_local_ranks < 1 || num_local_ranks > 256) {
    return absl::InvalidArgumentError("ranks must be in [1, 256]");
  }
  if (num_tokens.empty()) return absl::InvalidArgumentError("tokens: give at least one count");
  for (int64_t t : num_tokens) {
    if (t < 0 || t > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(absl::StrCat("tokens: ", t, " is outside [0, 2^24]"));
    }
  }
  if (hidden_size < 1 || hidden_size > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError("hidden must be in [1, 2^20]");
  }
  if (num_experts < 1) return absl::InvalidArgumentError("experts must be >= 1");
  if (top_k < 1 || top_k > num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("top-k must be in [1, experts = ", num_experts, "]"));
  }
  if (iterations < 1 || warmup < 0) {
    return absl::InvalidArgumentError("iterations must be >= 1 and warmup >= 0");
  }
  if (timeout_ms < 1) return absl::InvalidArgumentError("timeout must be >= 1 ms");
  return absl::OkStatus();
}

absl::StatusOr<CommBenchResult> RunCommBench(const CommBenchOptions& o) {
  HERD_RETURN_IF_ERROR(o.Validate());
  CommBenchResult result;
  result.backend = o.backend;
  const absl::Time deadline = DeadlineAfterMs(o.timeout_ms);
  // One process per rank: mpi (and nccl) under mpirun, ucx from its env.
  const bool use_mpi_job = o.backend == "mpi" || (o.backend == "nccl" && LaunchedByMpirun());
  if (use_mpi_job || o.backend == "ucx") {
    HERD_ASSIGN_OR_RETURN(
        std::unique_ptr<ControlChannel> control,
        CreateControlChannel(use_mpi_job ? "mpi" : "ucx", CommContext{}, deadline));
    CommContext context;
    context.control = control.get();
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                          CreateCommunicator(o.backend, context, deadline));
    result.world_size = comm->world_size();
    result.rank = comm->rank();
    HERD_ASSIGN_OR_RETURN(result.rows, RankBench(*comm, o));
    return result;
  }
  HERD_ASSIGN_OR_RETURN(std::shared_ptr<LocalWorld> world, LocalWorld::Create(o.num_local_ranks));
  result.world_size = o.num_local_ranks;
  // Each thread keeps its control channel for the communicator's lifetime.
  std::vector<std::unique_ptr<ControlChannel>> controls(o.num_local_ranks);
  HERD_ASSIGN_OR_RETURN(
      result.rows,
      RunOnThreads(
          o.num_local_ranks, o, [&](int r) -> absl::StatusOr<std::unique_ptr<Communicator>> {
            CommContext context;
            context.local_world = world;
            context.local_rank = r;
            HERD_ASSIGN_OR_RETURN(controls[r], CreateControlChannel("local", context, deadline));
            context.control = controls[r].get();
            return CreateCommunicator(o.backend, context, deadline);
          }));
  return result;
}

std::string FormatCommBenchTable(const CommBenchOptions& o, const CommBenchResult& result) {
  std::string out = absl::StrFormat(
      "backend %s, %d ranks, hidden %d, top-k %d, %d experts (expert e on rank e*%d/%d), "
      "median of %d iterations (slowest rank)\n",
      result.backend, result.world_size, o.hidden_size, o.top_k, o.num_experts, result.world_size,
      o.num_experts, o.iterations);
  const bool has_mpi = !result.rows.empty() && result.rows[0].mpi_us >= 0;
  absl::StrAppendFormat(&out, "%8s %12s | %12s %9s | %12s %9s", "tokens", "payload/rank",
                        "exchange us", "GB/s", "a2av us", "GB/s");
  if (has_mpi) absl::StrAppendFormat(&out, " | %12s %9s", "MPI a2av us", "GB/s");
  absl::StrAppendFormat(&out, " | %s\n", has_mpi ? "exchange/MPI" : "exchange/a2av");
  auto gbps = [](double bytes, double us) { return us > 0 ? bytes / us / 1e3 : 0.0; };
  for (const CommBenchRow& row : result.rows) {
    const double kib = row.payload_bytes / 1024.0;
    absl::StrAppendFormat(&out, "%8d %10.1f K | %12.1f %9.3f | %12.1f %9.3f", row.num_tokens, kib,
                          row.exchange_us, gbps(row.payload_bytes, row.exchange_us), row.comm_us,
                          gbps(row.payload_bytes, row.comm_us));
    const double baseline = has_mpi ? row.mpi_us : row.comm_us;
    if (has_mpi) {
      absl::StrAppendFormat(&out, " | %12.1f %9.3f", row.mpi_us,
                            gbps(row.payload_bytes, row.mpi_us));
    }
    absl::StrAppendFormat(&out, " | %11.0f%%\n",
                          row.exchange_us > 0 ? 100.0 * baseline / row.exchange_us : 0.0);
  }
  return out;
}

}  // namespace herd::comm
