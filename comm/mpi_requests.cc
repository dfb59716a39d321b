#include "comm/mpi_requests.h"

#include <algorithm>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/mpi_runtime.h"

namespace herd::comm {
namespace {

// How long a failed operation waits for its cancelled requests to complete.
constexpr absl::Duration kCancelGrace = absl::Milliseconds(200);

std::string PeerList(const std::set<int>& peers) {
  return absl::StrCat("rank(s) ", absl::StrJoin(peers, ", "));
}

}  // namespace

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    return absl::StrCat("MPI error ", code);
  }
  return std::string(text, static_cast<size_t>(length));
}

absl::StatusOr<MPI_Comm> DupWorldComm(const std::string& what, absl::Time deadline) {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Request request = MPI_REQUEST_NULL;
  const int rc = MPI_Comm_idup(MPI_COMM_WORLD, &comm, &request);
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat(what, ": MPI_Comm_idup: ", MpiErrorString(rc)));
  }
  MpiRequests requests(absl::StrCat(what, ": MPI_Comm_idup"));
  requests.Track(request, /*is_recv=*/false, /*peer=*/-1, 0);
  const absl::Status joined = requests.WaitAll(deadline);
  if (!joined.ok()) return joined;
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  return comm;
}

MpiRequests::MpiRequests(std::string what) : what_(std::move(what)), start_(absl::Now()) {}

MpiRequests::~MpiRequests() {
  // NOTE: WaitAll either completed every request or abandoned them; a set that
  // was never waited on (an early error while posting) is abandoned here.
  if (std::any_of(requests_.begin(), requests_.end(),
                  [](MPI_Request r) { return r != MPI_REQUEST_NULL; })) {
    Abandon();
  }
}

absl::Status MpiRequests::PostRecv(void* buffer, int64_t bytes, int peer, int tag, MPI_Comm comm,
                                   bool post_empty) {
  int64_t offset = 0;
  while (offset < bytes || (post_empty && bytes == 0 && offset == 0)) {
    const int64_t chunk = std::min(bytes - offset, kMaxMpiMessageBytes);
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = MPI_Irecv(static_cast<uint8_t*>(buffer) + offset, static_cast<int>(chunk),
                             MPI_BYTE, peer, tag, comm, &request);
    if (rc != MPI_SUCCESS) {
      return absl::InternalError(
          absl::StrCat(what_, ": MPI_Irecv from rank ", peer, ": ", MpiErrorString(rc)));
    }
    Track(request, /*is_recv=*/true, peer, chunk);
    if (bytes == 0) break;
    offset += chunk;
  }
  return absl::OkStatus();
}

absl::Status MpiRequests::PostSend(const void* buffer, int64_t bytes, int peer, int tag,
                                   MPI_Comm comm, bool post_empty) {
  int64_t offset = 0;
  while (offset < bytes || (post_empty && bytes == 0 && offset == 0)) {
    const int64_t chunk = std::min(bytes - offset, kMaxMpiMessageBytes);
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = MPI_Isend(static_cast<const uint8_t*>(buffer) + offset, static_cast<int>(chunk),
                             MPI_BYTE, peer, tag, comm, &request);
    if (rc != MPI_SUCCESS) {
      return absl::InternalError(
          absl::StrCat(what_, ": MPI_Isend to rank ", peer, ": ", MpiErrorString(rc)));
    }
    Track(request, /*is_recv=*/false, peer, chunk);
    if (bytes == 0) break;
    offset += chunk;
  }
  return absl::OkStatus();
}

template <typename Post>
absl::Status MpiRequests::PostRows(int64_t row_bytes, absl::Span<const int32_t> rows, bool is_recv,
                                   int peer, const Post& post) {
  const char* call = is_recv ? "MPI_Irecv of rows from" : "MPI_Isend of rows to";
  if (rows.empty()) return absl::OkStatus();
  MPI_Datatype row_type = MPI_DATATYPE_NULL;
  int rc = MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row_type);
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(
        absl::StrCat(what_, ": MPI_Type_contiguous for rank ", peer, ": ", MpiErrorString(rc)));
  }
  const int64_t rows_per_message = std::max<int64_t>(1, kMaxMpiMessageBytes / row_bytes);
  absl::Status status;
  for (size_t first = 0; first < rows.size() && status.ok(); first += rows_per_message) {
    const int64_t count = std::min<int64_t>(rows_per_message, rows.size() - first);
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_Request request = MPI_REQUEST_NULL;
    rc = MPI_Type_create_indexed_block(static_cast<int>(count), 1, rows.data() + first, row_type,
                                       &type);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&type);
    if (rc == MPI_SUCCESS) rc = post(type, &request);
    // NOTE: freeing a datatype that a pending operation uses is allowed; the
    // operation completes normally (MPI 3.1, section 4.1.9).
    if (type != MPI_DATATYPE_NULL) MPI_Type_free(&type);
    if (rc != MPI_SUCCESS) {
      status = absl::InternalError(
          absl::StrCat(what_, ": ", call, " rank ", peer, ": ", MpiErrorString(rc)));
    } else {
      Track(request, is_recv, peer, count * row_bytes);
    }
  }
  MPI_Type_free(&row_type);
  return status;
}

absl::Status MpiRequests::PostRecvRows(void* base, int64_t row_bytes,
                                       absl::Span<const int32_t> rows, int peer, int tag,
                                       MPI_Comm comm) {
  return PostRows(row_bytes, rows, /*is_recv=*/true, peer,
                  [&](MPI_Datatype type, MPI_Request* request) {
                    return MPI_Irecv(base, 1, type, peer, tag, comm, request);
                  });
}

absl::Status MpiRequests::PostSendRows(const void* base, int64_t row_bytes,
                                       absl::Span<const int32_t> rows, int peer, int tag,
                                       MPI_Comm comm) {
  return PostRows(row_bytes, rows, /*is_recv=*/false, peer,
                  [&](MPI_Datatype type, MPI_Request* request) {
                    return MPI_Isend(base, 1, type, peer, tag, comm, request);
                  });
}

void MpiRequests::Track(MPI_Request request, bool is_recv, int peer, int64_t bytes) {
  requests_.push_back(request);
  info_.push_back(Info{is_recv, peer, bytes});
}

absl::Status MpiRequests::ProbeBytes(int self, int tag, MPI_Comm comm, absl::Time deadline,
                                     std::vector<int64_t>* bytes) {
  int world_size = 0;
  MPI_Comm_size(comm, &world_size);
  bytes->assign(world_size, 0);
  std::set<int> waiting;
  for (int p = 0; p < world_size; ++p) {
    if (p != self) waiting.insert(p);
  }
  PollPacer pacer(GetCommEnv());
  while (!waiting.empty()) {
    bool found = false;
    for (auto it = waiting.begin(); it != waiting.end();) {
      int flag = 0;
      MPI_Status status;
      const int rc = MPI_Iprobe(*it, tag, comm, &flag, &status);
      if (rc != MPI_SUCCESS) {
        return absl::InternalError(
            absl::StrCat(what_, ": MPI_Iprobe for rank ", *it, ": ", MpiErrorString(rc)));
      }
      if (!flag) {
        ++it;
        continue;
      }
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      (*bytes)[*it] = count;
      it = waiting.erase(it);
      found = true;
    }
    if (waiting.empty()) break;
    if (found) {
      pacer.Progress();
      continue;
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          what_, ": deadline exceeded after ", absl::ToInt64Milliseconds(absl::Now() - start_),
          " ms; no data from ", PeerList(waiting)));
    }
    pacer.Pause();
  }
  return absl::OkStatus();
}

absl::Status MpiRequests::WaitAll(absl::Time deadline) {
  const int n = static_cast<int>(requests_.size());
  std::vector<int> indices(n);
  std::vector<MPI_Status> statuses(n);
  PollPacer pacer(GetCommEnv());
  int remaining = n;
  while (remaining > 0) {
    int count = 0;
    const int rc = MPI_Testsome(n, requests_.data(), &count, indices.data(), statuses.data());
    if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) {
      Abandon();
      return absl::InternalError(absl::StrCat(what_, ": MPI_Testsome: ", MpiErrorString(rc)));
    }
    if (count == MPI_UNDEFINED) break;  // every request is MPI_REQUEST_NULL
    for (int i = 0; i < count; ++i) {
      const Info& info = info_[indices[i]];
      const MPI_Status& status = statuses[i];
      if (rc == MPI_ERR_IN_STATUS && status.MPI_ERROR != MPI_SUCCESS) {
        Abandon();
        return absl::InternalError(absl::StrCat(what_, ": ",
                                                info.is_recv ? "receive from" : "send to", " rank ",
                                                info.peer, ": ", MpiErrorString(status.MPI_ERROR)));
      }
      if (info.is_recv && info.peer >= 0) {
        // NOTE: counted in bytes for row receives too (their datatypes are
        // built from MPI_BYTE and already freed).
        int received = 0;
        MPI_Get_count(&status, MPI_BYTE, &received);
        if (received != info.bytes) {
          Abandon();
          return absl::InternalError(absl::StrCat(what_, ": expected ", info.bytes,
                                                  " bytes from rank ", info.peer, ", got ",
                                                  received, " (the ranks disagree on counts)"));
        }
      }
    }
    remaining -= count;
    if (remaining == 0) break;
    if (count > 0) {
      pacer.Progress();
      continue;
    }
    if (absl::Now() >= deadline) {
      std::set<int> silent;   // posted receives that got nothing
      std::set<int> stalled;  // sends the peer has not taken
      for (int i = 0; i < n; ++i) {
        if (requests_[i] == MPI_REQUEST_NULL) continue;
        (info_[i].is_recv ? silent : stalled).insert(info_[i].peer);
      }
      std::string message = absl::StrCat(what_, ": deadline exceeded after ",
                                         absl::ToInt64Milliseconds(absl::Now() - start_), " ms;");
      if (silent.count(-1) + stalled.count(-1) > 0) {
        absl::StrAppend(&message, " not every rank took part;");
      } else {
        if (!silent.empty()) absl::StrAppend(&message, " no data from ", PeerList(silent), ";");
        if (!stalled.empty()) {
          absl::StrAppend(&message, " data not taken by ", PeerList(stalled), ";");
        }
      }
      message.pop_back();
      Abandon();
      return absl::DeadlineExceededError(message);
    }
    pacer.Pause();
  }
  requests_.clear();
  info_.clear();
  return absl::OkStatus();
}

void MpiRequests::Abandon() {
  for (size_t i = 0; i < requests_.size(); ++i) {
    // Sends cannot be cancelled in Open MPI's ob1; receives that matched
    // nothing can, and those are the ones that wait for a dead peer.
    if (requests_[i] != MPI_REQUEST_NULL && info_[i].is_recv) MPI_Cancel(&requests_[i]);
  }
  const absl::Time give_up = absl::Now() + kCancelGrace;
  const int n = static_cast<int>(requests_.size());
  while (absl::Now() < give_up) {
    int done = 0;
    MPI_Testall(n, requests_.data(), &done, MPI_STATUSES_IGNORE);
    if (done) break;
    std::this_thread::yield();
  }
  bool left = false;
  for (MPI_Request& request : requests_) {
    if (request == MPI_REQUEST_NULL) continue;
    left = true;
    MPI_Request_free(&request);
  }
  if (left) MarkMpiUnclean();
  requests_.clear();
  info_.clear();
}

}  // namespace herd::comm
