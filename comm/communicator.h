// The data plane: collectives between the ranks of one group (all-to-all-v,
// all-gather, broadcast, barrier), each with a deadline, plus Abort().
//
// Backends (comm/registry.h lists them): `local` (threads of one process,
// host memory), `mpi` (one process per rank, host memory) and `nccl` (device
// memory, built when HERD_WITH_NCCL). Every collective is called by every
// rank of the group in the same order, MPI-style, even with nothing to send.
//
// Failures: a peer that does not take part before the deadline gives
// DeadlineExceeded naming that peer (local, mpi) and never a hang. After any
// non-OK status other than InvalidArgument the communicator is failed: every
// later call returns FailedPrecondition carrying the first error (Aborted
// after Abort()). A failed mpi communicator may still write into the receive
// buffers of the call that failed (MPI cannot always cancel a receive that
// has started), so callers keep those buffers alive, or Abort().
//
// Thread-safety: one thread drives a communicator (collectives are ordered);
// Abort() and stats() may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace herd::comm {

// Where the buffers passed to a communicator's collectives live.
enum class MemorySpace { kHost, kDevice };

const char* MemorySpaceName(MemorySpace space);

// A buffer in a communicator's memory space (host memory for local and mpi,
// device memory for nccl), so that one caller can drive every backend.
// Owns its memory. Not thread-safe.
class CommBuffer {
 public:
  virtual ~CommBuffer() = default;
  // The first byte, in the communicator's memory space; nullptr when size 0.
  virtual void* data() = 0;
  virtual int64_t size_bytes() const = 0;
  // Synchronous copies between host memory and [offset, offset + bytes).
  // OutOfRange if the range is not inside the buffer; Internal for a failed
  // device copy.
  virtual absl::Status CopyFromHost(int64_t offset, const void* src, int64_t bytes) = 0;
  virtual absl::Status CopyToHost(int64_t offset, void* dst, int64_t bytes) const = 0;
};

// A CommBuffer in host memory (what the local and mpi backends allocate).
class HostCommBuffer final : public CommBuffer {
 public:
  explicit HostCommBuffer(int64_t bytes);
  void* data() override { return bytes_.empty() ? nullptr : bytes_.data(); }
  int64_t size_bytes() const override { return static_cast<int64_t>(bytes_.size()); }
  absl::Status CopyFromHost(int64_t offset, const void* src, int64_t bytes) override;
  absl::Status CopyToHost(int64_t offset, void* dst, int64_t bytes) const override;

 private:
  std::vector<uint8_t> bytes_;
};

// One all-to-all-v, counted in bytes. All spans have world_size entries and
// must stay valid for the call.
//
//   send: | block for rank 0 | block for rank 1 | ... (any order, any gaps)
//          ^ send_offsets[p], send_bytes[p] bytes
//   recv: | block from rank 0 | block from rank 1 | ...
//          ^ recv_offsets[p], recv_bytes[p] bytes
//
// recv_bytes[p] on this rank must equal send_bytes[this rank] on rank p. The
// block for this rank itself is copied in memory, never through the network.
struct AllToAllVArgs {
  const void* send = nullptr;
  absl::Span<const int64_t> send_bytes;
  absl::Span<const int64_t> send_offsets;
  void* recv = nullptr;
  absl::Span<const int64_t> recv_bytes;
  absl::Span<const int64_t> recv_offsets;
};

// One all-to-all-v of fixed-size rows that the transport gathers from and
// scatters to rows anywhere in the caller's buffers, so that the caller packs
// and unpacks nothing (the expert exchange: rows of the tokens' hidden states
// go out, the experts' rows come back to the slots they belong to).
//
//   send: the rows for rank p are entries send_row_offsets[p] ..
//         send_row_offsets[p + 1] - 1 of the list send_rows; entry i is the
//         row at send + send_rows[i] * row_bytes (send + i * row_bytes when
//         send_rows is empty, i.e. contiguous blocks). A row may be listed
//         more than once.
//   recv: likewise with recv_rows / recv_row_offsets; rows keep the order of
//         the sender's list. Listing a receive row twice is undefined.
//
// recv_row_offsets[p + 1] - recv_row_offsets[p] on this rank must equal rank
// p's send count for this rank. Row indices are int32 and non-negative. The
// rows for this rank itself are copied in memory, never through the network.
struct RowAllToAllVArgs {
  int64_t row_bytes = 0;
  const void* send = nullptr;
  absl::Span<const int32_t> send_rows;         // [send_row_offsets[world_size]] or empty
  absl::Span<const int64_t> send_row_offsets;  // [world_size + 1], from 0, non-decreasing
  void* recv = nullptr;
  absl::Span<const int32_t> recv_rows;         // [recv_row_offsets[world_size]] or empty
  absl::Span<const int64_t> recv_row_offsets;  // [world_size + 1], from 0, non-decreasing
};

// Argument checks every backend runs before anything is sent, so that all
// backends reject the same calls with the same messages. InvalidArgument
// naming the bad entry.
absl::Status ValidateAllToAllVArgs(const AllToAllVArgs& args, int world_size);
// Also checks that this rank sends itself as many rows as it expects.
absl::Status ValidateRowAllToAllVArgs(const RowAllToAllVArgs& args, int rank, int world_size);
absl::Status ValidateAllGatherArgs(const void* send, int64_t bytes_per_rank, const void* recv);
absl::Status ValidateBroadcastArgs(int root_rank, int world_size, const void* buffer,
                                   int64_t bytes);

// Sets the receive side of row all-to-all-vs whose counts the receiver learns
// during the call (GroupedRowAllToAllVUnknownCounts): called once, on the
// driving thread, with recv_row_offsets [world_size + 1] (rows from rank p
// land at rows recv_row_offsets[p] .. recv_row_offsets[p + 1] - 1, rank
// order); it stores into recv[i] the buffer of op i, with room for
// recv_row_offsets[world_size] rows (any pointer when that is 0).
using RowRecvPlacer =
    absl::FunctionRef<void(absl::Span<const int64_t> recv_row_offsets, absl::Span<void*> recv)>;

// Checks ops for GroupedRowAllToAllVUnknownCounts: at least one op, send
// sides as in ValidateRowAllToAllVArgs, empty receive sides, and every op
// sending each rank as many rows as op 0. InvalidArgument naming the entry.
absl::Status ValidateUnknownCountsArgs(absl::Span<const RowAllToAllVArgs> ops, int world_size);

// Counters since creation, for benches and tests.
struct CommStats {
  int64_t num_collectives = 0;
  // Payload bytes handed to the network for other ranks (the block for this
  // rank itself is not counted: it is a memory copy).
  int64_t bytes_sent = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  // "local", "mpi" or "nccl".
  virtual const char* backend_name() const = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual MemorySpace memory_space() const = 0;

  // A buffer that this communicator's collectives can use. Errors:
  // InvalidArgument for a negative size, ResourceExhausted from the device.
  virtual absl::StatusOr<std::unique_ptr<CommBuffer>> Allocate(int64_t bytes) = 0;

  // Runs `ops` as one round: every send and receive of every op is posted
  // before waiting, so k ops cost one round trip, not k. Blocks until this
  // rank's receives have landed and its sends may be reused, or the deadline.
  // Errors: InvalidArgument (bad args; nothing was sent), DeadlineExceeded
  // naming the ranks that did not deliver or take their data, Aborted,
  // FailedPrecondition (failed earlier), Internal (transport error, with the
  // library's message).
  virtual absl::Status GroupedAllToAllV(absl::Span<const AllToAllVArgs> ops,
                                        absl::Time deadline) = 0;

  // One all-to-all-v; same contract as GroupedAllToAllV.
  absl::Status AllToAllV(const AllToAllVArgs& args, absl::Time deadline) {
    return GroupedAllToAllV(absl::MakeConstSpan(&args, 1), deadline);
  }

  // Runs `ops` (RowAllToAllVArgs) as one round, like GroupedAllToAllV: the
  // same blocking, deadline, errors and stats (bytes_sent counts the rows for
  // other ranks). Host communicators only; the default, kept by device
  // communicators (nccl), returns Unimplemented: ExpertExchange packs and
  // stages for them (comm/row_packer.h).
  virtual absl::Status GroupedRowAllToAllV(absl::Span<const RowAllToAllVArgs> ops,
                                           absl::Time deadline);

  // Row all-to-all-vs whose receivers do not know how many rows come (the
  // expert exchange's dispatch): `ops` give only their send sides (recv,
  // recv_rows and recv_row_offsets empty) and all send each rank the same
  // number of rows; the rows land contiguously, grouped by source rank, in
  // the buffers that `place` returns once every count is known. The default
  // runs one all-to-all of the counts, then GroupedRowAllToAllV (two rounds);
  // mpi learns the counts from the size of op 0's messages, in one round
  // (op 0's block for one rank must then be under kMaxMpiMessageBytes).
  // Same blocking, deadline, errors and stats as GroupedRowAllToAllV.
  virtual absl::Status GroupedRowAllToAllVUnknownCounts(absl::Span<const RowAllToAllVArgs> ops,
                                                        RowRecvPlacer place, absl::Time deadline);

  // recv [world_size * bytes_per_rank] receives every rank's `send`
  // [bytes_per_rank] in rank order. Same errors as GroupedAllToAllV.
  virtual absl::Status AllGather(const void* send, int64_t bytes_per_rank, void* recv,
                                 absl::Time deadline) = 0;

  // Copies `buffer` [bytes] of `root_rank` into `buffer` on every other rank.
  // Non-roots wait only for the root, so a missing root is the one named.
  virtual absl::Status Broadcast(int root_rank, void* buffer, int64_t bytes,
                                 absl::Time deadline) = 0;

  // Returns once every rank has entered the barrier, or names those that did
  // not by the deadline.
  virtual absl::Status Barrier(absl::Time deadline) = 0;

  // Ends the group after an unrecoverable error. local: every rank's pending
  // and later calls on every communicator and control channel of the world
  // return Aborted naming this rank and `reason`. nccl: ncclCommAbort, then
  // calls return Aborted. mpi: MPI_Abort, which under mpirun terminates every
  // process of the job (this one included), so it does not return. Any thread.
  virtual void Abort(absl::string_view reason) = 0;

  virtual CommStats stats() const = 0;
};

}  // namespace herd::comm
