// Internal to the mpi backends: nonblocking MPI operations waited on with a
// deadline, remembering which peer each one talks to so that a timeout names
// the ranks that did not deliver (or did not take their data).
//
// MPI's blocking calls have no timeout, so every mpi operation is posted as
// MPI_Isend / MPI_Irecv and polled with MPI_Testsome, paced by PollPacer
// (comm/env.h). On failure, unmatched receives are cancelled; what can be
// neither completed nor cancelled within a short grace is released to MPI
// and the process is marked unclean (comm/mpi_runtime.h).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace herd::comm {

// "MPI_ERR_TRUNCATE: message truncated" (MPI's own text for an error code).
std::string MpiErrorString(int code);

// Messages larger than this are split (MPI counts are int). Chunks of one
// (peer, tag) arrive in order: MPI does not let messages overtake each other.
inline constexpr int64_t kMaxMpiMessageBytes = int64_t{1} << 30;

// MPI_COMM_WORLD duplicated with MPI_Comm_idup and MPI_ERRORS_RETURN set.
// Collective; DeadlineExceeded if not every rank joins in time. `what` names
// the caller in errors.
absl::StatusOr<MPI_Comm> DupWorldComm(const std::string& what, absl::Time deadline);

class MpiRequests {
 public:
  // `what` names the operation in errors, e.g. "mpi all_to_all_v #3 on rank 0".
  explicit MpiRequests(std::string what);
  ~MpiRequests();
  MpiRequests(const MpiRequests&) = delete;
  MpiRequests& operator=(const MpiRequests&) = delete;

  // Posts receives of `bytes` from `peer` (chunked); with bytes == 0 nothing
  // is posted unless `post_empty` (a zero-byte message that proves the peer
  // took part). Returns Internal with MPI's message if posting fails.
  absl::Status PostRecv(void* buffer, int64_t bytes, int peer, int tag, MPI_Comm comm,
                        bool post_empty = false);
  absl::Status PostSend(const void* buffer, int64_t bytes, int peer, int tag, MPI_Comm comm,
                        bool post_empty = false);
  // Row lists (RowAllToAllVArgs): receives into / sends from the rows
  // `base` + rows[i] * row_bytes, in list order, as derived datatypes, so
  // that MPI packs and unpacks on its own (Open MPI's ob1 copies them
  // through its shared-memory fragments directly) and the caller copies
  // nothing. Chunked like PostRecv; nothing is posted for an empty list.
  // row_bytes in [1, kMaxMpiMessageBytes]. Internal with MPI's message.
  absl::Status PostRecvRows(void* base, int64_t row_bytes, absl::Span<const int32_t> rows, int peer,
                            int tag, MPI_Comm comm);
  absl::Status PostSendRows(const void* base, int64_t row_bytes, absl::Span<const int32_t> rows,
                            int peer, int tag, MPI_Comm comm);
  // Tracks a request posted elsewhere (MPI_Comm_idup, MPI_Imrecv); peer -1 =
  // every rank.
  void Track(MPI_Request request, bool is_recv, int peer, int64_t bytes);

  // Waits until a message with `tag` from every rank of `comm` but `self`
  // can be received and stores its size into (*bytes)[rank]; the messages
  // stay queued for receives posted afterwards (NOTE: correct because only
  // the driving thread receives on `comm`). DeadlineExceeded naming the
  // ranks whose message did not come, Internal for an MPI error.
  absl::Status ProbeBytes(int self, int tag, MPI_Comm comm, absl::Time deadline,
                          std::vector<int64_t>* bytes);

  // Polls until every request completes. Errors: DeadlineExceeded naming the
  // peers that did not deliver / take their data; Internal for an MPI error or
  // a receive whose size differs from what was posted (naming the peer). On
  // error the requests are cancelled or released as described above.
  absl::Status WaitAll(absl::Time deadline);

 private:
  struct Info {
    bool is_recv;
    int peer;
    int64_t bytes;
  };
  // Posts `rows` in chunks; `post(type, &request)` posts one chunk as one
  // element of `type` (displacements from the base address). `is_recv` and `peer` as in Track.
  template <typename Post>
  absl::Status PostRows(int64_t row_bytes, absl::Span<const int32_t> rows, bool is_recv, int peer,
                        const Post& post);
  void Abandon();

  std::string what_;
  absl::Time start_;
  std::vector<MPI_Request> requests_;
  std::vector<Info> info_;
};

}  // namespace herd::comm
