// A rank that dies or hangs in the middle of a run: the program behind
// mpi_fault_test.sh. Every rank does a few expert-exchange round trips; then
// the last rank raises SIGKILL or SIGSTOP on itself, and the others' next
// Dispatch must fail within its deadline with an error naming that rank.
// Each survivor writes what it saw to RESULT_DIR/rank<R>.result, waits
// --grace-ms so that every survivor gets to write, then calls Abort
// (MPI_Abort), which ends the whole job, the stopped rank included.
//
//   comm_mpi_fault --mode kill|stop --result-dir DIR [--deadline-ms 3000] [--grace-ms 2000]
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/expert_exchange.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_control_channel.h"

namespace herd::comm {
namespace {

struct Options {
  std::string mode;
  std::string result_dir;
  int64_t deadline_ms = 3000;
  int64_t grace_ms = 2000;
};

bool ParseOptions(int argc, char** argv, Options* options) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const char* value = argv[i + 1];
    if (flag == "--mode") {
      options->mode = value;
    } else if (flag == "--result-dir") {
      options->result_dir = value;
    } else if (flag == "--deadline-ms") {
      if (!absl::SimpleAtoi(value, &options->deadline_ms)) return false;
    } else if (flag == "--grace-ms") {
      if (!absl::SimpleAtoi(value, &options->grace_ms)) return false;
    } else {
      return false;
    }
  }
  return (options->mode == "kill" || options->mode == "stop") && !options->result_dir.empty();
}

// Writes `text` to DIR/NAME atomically (temporary file, fsync, rename), so a
// reader never sees half a file even if the job is killed right after.
void WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string tmp = absl::StrCat(dir, "/.", name, ".tmp");
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  (void)!write(fd, text.data(), text.size());
  fsync(fd);
  close(fd);
  rename(tmp.c_str(), absl::StrCat(dir, "/", name).c_str());
}

int Run(const Options& options) {
  auto control = CreateMpiControlChannel(DeadlineAfterMs(60000));
  auto comm = control.ok() ? CreateMpiCommunicator(DeadlineAfterMs(60000))
                           : absl::StatusOr<std::unique_ptr<Communicator>>(control.status());
  if (!comm.ok()) {
    std::fprintf(stderr, "comm_mpi_fault: %s\n", comm.status().ToString().c_str());
    return 2;
  }
  const int rank = (*comm)->rank();
  const int world_size = (*comm)->world_size();
  const int victim = world_size - 1;
  WriteFile(options.result_dir, absl::StrCat("rank", rank, ".pid"),
            absl::StrCat(static_cast<int>(getpid()), "\n"));

  ExpertExchange exchange(comm->get());
  const int64_t num_tokens = 16;
  const int64_t top_k = 2;
  const int64_t hidden_size = 256;
  std::mt19937 rng(static_cast<uint32_t>(rank) + 1);
  std::vector<float> hidden(num_tokens * hidden_size, 1.0f);
  std::vector<int32_t> topk_idx(num_tokens * top_k);
  std::vector<int32_t> dest_rank(num_tokens * top_k);
  for (size_t s = 0; s < dest_rank.size(); ++s) {
    topk_idx[s] = static_cast<int32_t>(rng() % 8);
    dest_rank[s] = topk_idx[s] % world_size;
  }
  const DispatchArgs args{hidden.data(), topk_idx.data(), dest_rank.data(),
                          num_tokens,    top_k,           hidden_size};
  std::vector<float> out(num_tokens * top_k * hidden_size);
  for (int step = 0; step < 3; ++step) {
    auto handle = exchange.Dispatch(args, DeadlineAfterMs(60000));
    absl::Status status = handle.status();
    if (status.ok()) {
      std::vector<float> expert_out(handle->recv_x(),
                                    handle->recv_x() + handle->num_recv_rows() * hidden_size);
      status = exchange.Combine(std::move(handle).value(), expert_out.data(), out.data(),
                                DeadlineAfterMs(60000));
    }
    if (!status.ok()) {
      WriteFile(options.result_dir, absl::StrCat("rank", rank, ".result"),
                absl::StrCat("setup-failed ", status.ToString(), "\n"));
      return 2;
    }
  }

  if (rank == victim) {
    std::fprintf(stderr, "comm_mpi_fault: rank %d raises SIG%s on itself\n", rank,
                 options.mode == "kill" ? "KILL" : "STOP");
    std::fflush(stderr);
    raise(options.mode == "kill" ? SIGKILL : SIGSTOP);
    // Continued (MPI_Abort sends SIGCONT before killing): stay out of the way.
    absl::SleepFor(absl::Seconds(60));
    return 3;
  }

  const absl::Time start = absl::Now();
  auto handle = exchange.Dispatch(args, DeadlineAfterMs(options.deadline_ms));
  const int64_t elapsed_ms = absl::ToInt64Milliseconds(absl::Now() - start);
  if (handle.ok()) {
    WriteFile(options.result_dir, absl::StrCat("rank", rank, ".result"),
              "no-error: Dispatch succeeded without the victim\n");
    return 1;
  }
  WriteFile(options.result_dir, absl::StrCat("rank", rank, ".result"),
            absl::StrCat("detected ", absl::StatusCodeToString(handle.status().code()), " after ",
                         elapsed_ms, " ms: ", handle.status().message(), "\n"));
  absl::SleepFor(absl::Milliseconds(options.grace_ms));
  (*comm)->Abort(absl::StrCat("peer lost: ", handle.status().message()));
  return 1;  // not reached: MPI_Abort ends the job
}

}  // namespace
}  // namespace herd::comm

int main(int argc, char** argv) {
  herd::comm::Options options;
  if (!herd::comm::ParseOptions(argc, argv, &options)) {
    std::fprintf(stderr,
                 "usage: comm_mpi_fault --mode kill|stop --result-dir DIR [--deadline-ms N] "
                 "[--grace-ms N]\n");
    return 2;
  }
  return herd::comm::Run(options);
}
