#include "comm/ucx/ucx_requests.h"

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/env.h"

namespace herd::comm {
namespace {

std::string PeerList(const std::set<int>& peers) {
  return absl::StrCat("rank(s) ", absl::StrJoin(peers, ", "));
}

}  // namespace

UcxRequests::UcxRequests(UcxWorld& world, uint16_t channel, std::string what)
    : world_(world), channel_(channel), what_(std::move(what)), start_(absl::Now()) {}

UcxRequests::~UcxRequests() { Abandon(); }

absl::Status UcxRequests::Track(Op op, ucs_status_ptr_t returned, const char* call) {
  if (UCS_PTR_IS_ERR(returned)) {
    return absl::InternalError(absl::StrCat(what_, ": ", call, " with rank ", op.peer, ": ",
                                            UcxStatusString(UCS_PTR_STATUS(returned))));
  }
  op.request = returned;
  op.status = returned == nullptr ? UCS_OK : UCS_INPROGRESS;
  ops_.push_back(op);
  return absl::OkStatus();
}

absl::Status UcxRequests::PostSend(int peer, uint32_t tag, const void* data, int64_t bytes,
                                   bool post_empty) {
  if (bytes == 0 && !post_empty) return absl::OkStatus();
  Op op{nullptr, /*is_recv=*/false, peer, bytes, {}, UCS_INPROGRESS};
  absl::MutexLock lock(&world_.mu());
  ucp_request_param_t param{};
  const ucs_status_ptr_t returned =
      ucp_tag_send_nbx(world_.endpoint(peer), data, static_cast<size_t>(bytes),
                       MakeUcxTag(channel_, world_.rank(), tag), &param);
  return Track(op, returned, "ucp_tag_send_nbx");
}

absl::Status UcxRequests::PostRecv(int peer, uint32_t tag, void* data, int64_t bytes,
                                   bool post_empty) {
  if (bytes == 0 && !post_empty) return absl::OkStatus();
  Op op{nullptr, /*is_recv=*/true, peer, bytes, {}, UCS_INPROGRESS};
  absl::MutexLock lock(&world_.mu());
  // NOTE: always a request, whose ucp_tag_recv_request_test gives the
  // received length (UCX 1.13 does not fill recv_info on immediate
  // completion).
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  const ucs_status_ptr_t returned =
      ucp_tag_recv_nbx(world_.worker(), data, static_cast<size_t>(bytes),
                       MakeUcxTag(channel_, peer, tag), kUcxExactMask, &param);
  return Track(op, returned, "ucp_tag_recv_nbx");
}

absl::Status UcxRequests::PostProbedRecv(ucp_tag_message_h message, int peer, void* data,
                                         int64_t bytes) {
  Op op{nullptr, /*is_recv=*/true, peer, bytes, {}, UCS_INPROGRESS};
  op.info.length = static_cast<size_t>(bytes);
  absl::MutexLock lock(&world_.mu());
  ucp_request_param_t param{};
  const ucs_status_ptr_t returned =
      ucp_tag_msg_recv_nbx(world_.worker(), data, static_cast<size_t>(bytes), message, &param);
  return Track(op, returned, "ucp_tag_msg_recv_nbx");
}

absl::Status UcxRequests::CheckDone(const Op& op) const {
  if (op.status != UCS_OK) {
    if (op.status == UCS_ERR_MESSAGE_TRUNCATED) {
      return absl::InternalError(absl::StrCat(what_, ": more than the expected ", op.bytes,
                                              " bytes from rank ", op.peer,
                                              " (the ranks disagree on counts)"));
    }
    return absl::InternalError(absl::StrCat(what_, ": ", op.is_recv ? "receive from" : "send to",
                                            " rank(s) ", op.peer,
                                            " failed: ", UcxStatusString(op.status)));
  }
  if (op.is_recv && static_cast<int64_t>(op.info.length) != op.bytes) {
    return absl::InternalError(absl::StrCat(what_, ": expected ", op.bytes, " bytes from rank ",
                                            op.peer, ", got ", op.info.length,
                                            " (the ranks disagree on counts)"));
  }
  return absl::OkStatus();
}

absl::Status UcxRequests::WaitAll(absl::Time deadline) {
  for (const Op& op : ops_) {
    if (op.request == nullptr) {
      if (absl::Status s = CheckDone(op); !s.ok()) return s;
    }
  }
  PollPacer pacer(GetCommEnv());
  while (true) {
    int pending = 0;
    bool progressed = false;
    absl::Status failed;
    {
      absl::MutexLock lock(&world_.mu());
      while (ucp_worker_progress(world_.worker()) != 0) progressed = true;
      for (Op& op : ops_) {
        if (op.request == nullptr) continue;
        op.status = op.is_recv ? ucp_tag_recv_request_test(op.request, &op.info)
                               : ucp_request_check_status(op.request);
        if (op.status == UCS_INPROGRESS) {
          ++pending;
          continue;
        }
        ucp_request_free(op.request);
        op.request = nullptr;
        progressed = true;
        if (failed.ok()) failed = CheckDone(op);
      }
      if (failed.ok()) failed = world_.ChannelAbortStatus(channel_);
      if (failed.ok() && pending > 0) {
        // A dead peer fails our sends to it, but not receives from it.
        std::set<int> dead;
        std::string error;
        for (const Op& op : ops_) {
          if (op.request == nullptr || world_.PeerError(op.peer).empty()) continue;
          dead.insert(op.peer);
          error = world_.PeerError(op.peer);
        }
        if (!dead.empty()) {
          failed = absl::InternalError(
              absl::StrCat(what_, ": connection to ", PeerList(dead), " failed: ", error));
        }
      }
    }
    if (!failed.ok()) {
      Abandon();
      return failed;
    }
    if (pending == 0) break;
    if (progressed) {
      pacer.Progress();
      continue;
    }
    if (absl::Now() >= deadline) {
      std::set<int> silent;   // receives that got nothing
      std::set<int> stalled;  // sends the peer has not taken
      for (const Op& op : ops_) {
        if (op.request != nullptr) (op.is_recv ? silent : stalled).insert(op.peer);
      }
      std::string message = absl::StrCat(what_, ": deadline exceeded after ",
                                         absl::ToInt64Milliseconds(absl::Now() - start_), " ms;");
      if (!silent.empty()) absl::StrAppend(&message, " no data from ", PeerList(silent), ";");
      if (!stalled.empty())
        absl::StrAppend(&message, " data not taken by ", PeerList(stalled), ";");
      message.pop_back();
      Abandon();
      return absl::DeadlineExceededError(message);
    }
    pacer.Pause();
  }
  ops_.clear();
  return absl::OkStatus();
}

void UcxRequests::Abandon() {
  absl::MutexLock lock(&world_.mu());
  for (Op& op : ops_) {
    if (op.request == nullptr) continue;
    if (op.is_recv) ucp_request_cancel(world_.worker(), op.request);
    ucp_request_free(op.request);
    op.request = nullptr;
  }
  ops_.clear();
}

}  // namespace herd::comm
