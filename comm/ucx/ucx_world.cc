#include "comm/ucx/ucx_world.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/ucx/tcp_bootstrap.h"
#include "comm/ucx/ucx_env.h"
#include "core/logging.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// Abort notices carry at most this much of the reason.
constexpr size_t kMaxReasonBytes = 1000;

absl::Status UcxError(const char* call, ucs_status_t status) {
  return absl::InternalError(absl::StrCat(call, ": ", UcxStatusString(status)));
}

// Owns a UCP config read from the UCX_* environment.
struct ConfigDeleter {
  void operator()(ucp_config_t* config) const { ucp_config_release(config); }
};

// Polls `request` (a pointer, NULL or an error from a *_nbx call) with the
// world's mutex released between polls, until it completes or `deadline`;
// then frees it. Returns its final status (UCS_ERR_TIMED_OUT at the deadline).
ucs_status_t WaitRequest(UcxWorld& world, ucs_status_ptr_t request, absl::Time deadline) {
  if (request == nullptr) return UCS_OK;
  if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
  PollPacer pacer(GetCommEnv());
  while (true) {
    {
      absl::MutexLock lock(&world.mu());
      ucp_worker_progress(world.worker());
      const ucs_status_t status = ucp_request_check_status(request);
      if (status != UCS_INPROGRESS || absl::Now() >= deadline) {
        ucp_request_free(request);
        return status == UCS_INPROGRESS ? UCS_ERR_TIMED_OUT : status;
      }
    }
    pacer.Pause();
  }
}

}  // namespace

std::string UcxStatusString(ucs_status_t status) { return ucs_status_string(status); }

absl::StatusOr<UcxWorld*> UcxWorld::Join(absl::Time deadline) {
  static absl::Mutex join_mu(absl::kConstInit);
  static UcxWorld* joined = nullptr;
  absl::MutexLock lock(&join_mu);
  if (joined != nullptr) return joined;
  HERD_ASSIGN_OR_RETURN(const UcxBootstrapEnv env, UcxBootstrapEnvFromProcess());
  auto world = std::unique_ptr<UcxWorld>(new UcxWorld(env.rank, env.world_size));
  HERD_RETURN_IF_ERROR(world->Start(deadline));
  // NOTE: never destroyed (see the file comment).
  joined = world.release();
  return joined;
}

absl::Status UcxWorld::Start(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  ucp_config_t* raw_config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &raw_config);
  if (status != UCS_OK) return UcxError("ucp_config_read", status);
  std::unique_ptr<ucp_config_t, ConfigDeleter> config(raw_config);

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_TAG;
  params.mt_workers_shared = 0;
  status = ucp_init(&params, config.get(), &context_);
  if (status != UCS_OK) return UcxError("ucp_init", status);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // mu_ serializes
  status = ucp_worker_create(context_, &worker_params, &worker_);
  if (status != UCS_OK) return UcxError("ucp_worker_create", status);

  ucp_address_t* address = nullptr;
  size_t address_bytes = 0;
  status = ucp_worker_get_address(worker_, &address, &address_bytes);
  if (status != UCS_OK) return UcxError("ucp_worker_get_address", status);
  const std::string own(reinterpret_cast<const char*>(address), address_bytes);
  ucp_worker_release_address(worker_, address);

  HERD_ASSIGN_OR_RETURN(const UcxBootstrapEnv env, UcxBootstrapEnvFromProcess());
  HERD_ASSIGN_OR_RETURN(const std::vector<std::string> addresses,
                        ExchangeThroughLeader(env, own, deadline));

  peer_errors_.assign(world_size_, "");
  endpoint_args_.resize(world_size_);
  endpoints_.assign(world_size_, nullptr);
  for (int r = 0; r < world_size_; ++r) {
    endpoint_args_[r] = EndpointArg{this, r};
    ucp_ep_params_t ep_params{};
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep_params.address = reinterpret_cast<const ucp_address_t*>(addresses[r].data());
    // A dead peer fails its endpoint (and the sends on it) instead of the
    // whole process.
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb = &UcxWorld::OnEndpointError;
    ep_params.err_handler.arg = &endpoint_args_[r];
    status = ucp_ep_create(worker_, &ep_params, &endpoints_[r]);
    if (status != UCS_OK) {
      return absl::InternalError(
          absl::StrCat("ucx: endpoint to rank ", r, ": ", UcxStatusString(status)));
    }
  }
  HERD_LOG(INFO) << "ucx: rank " << rank_ << " of " << world_size_ << " joined (rank from "
                 << env.rank_source << ")";
  return absl::OkStatus();
}

void UcxWorld::OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
  // NOTE: UCP calls this from ucp_worker_progress, which runs under mu_.
  auto* endpoint = static_cast<EndpointArg*>(arg);
  UcxWorld* world = endpoint->world;
  world->mu_.AssertHeld();
  if (world->peer_errors_[endpoint->rank].empty()) {
    world->peer_errors_[endpoint->rank] = UcxStatusString(status);
  }
}

uint16_t UcxWorld::NewChannelId() {
  absl::MutexLock lock(&mu_);
  return next_channel_id_++;
}

absl::Status UcxWorld::ChannelAbortStatus(uint16_t channel) {
  if (auto it = channel_aborts_.find(channel); it != channel_aborts_.end()) return it->second;
  ucp_tag_recv_info_t info{};
  ucp_tag_message_h message = ucp_tag_probe_nb(worker_, MakeUcxTag(channel, 0, kUcxAbortTag),
                                               kUcxAnySourceMask, /*remove=*/1, &info);
  if (message == nullptr) return absl::OkStatus();
  const int from = UcxTagSource(info.sender_tag);
  std::string reason(std::min(info.length, kMaxReasonBytes), '\0');
  ucp_request_param_t param{};
  ucs_status_ptr_t request =
      ucp_tag_msg_recv_nbx(worker_, reason.data(), reason.size(), message, &param);
  // A notice is small: it has arrived whole (eager), so this completes at
  // once or within a few progress calls.
  while (request != nullptr && !UCS_PTR_IS_ERR(request) &&
         ucp_request_check_status(request) == UCS_INPROGRESS) {
    ucp_worker_progress(worker_);
  }
  if (request != nullptr && !UCS_PTR_IS_ERR(request)) ucp_request_free(request);
  absl::Status aborted =
      absl::AbortedError(absl::StrCat("rank ", from, " aborted the group: ", reason));
  channel_aborts_.emplace(channel, aborted);
  return aborted;
}

void UcxWorld::AbortChannel(uint16_t channel, absl::string_view reason) {
  auto text = std::make_unique<std::string>(reason.substr(0, kMaxReasonBytes));
  std::vector<ucs_status_ptr_t> requests;
  {
    absl::MutexLock lock(&mu_);
    channel_aborts_.try_emplace(
        channel, absl::AbortedError(absl::StrCat("rank ", rank_, " aborted the group: ", *text)));
    ucp_request_param_t param{};
    for (int r = 0; r < world_size_; ++r) {
      if (r == rank_) continue;
      requests.push_back(ucp_tag_send_nbx(endpoints_[r], text->data(), text->size(),
                                          MakeUcxTag(channel, rank_, kUcxAbortTag), &param));
    }
  }
  const absl::Time grace = absl::Now() + absl::Seconds(1);
  bool all_done = true;
  for (ucs_status_ptr_t request : requests) {
    all_done = WaitRequest(*this, request, grace) != UCS_ERR_TIMED_OUT && all_done;
  }
  // NOTE: a notice still queued (a peer not wired up, or stuck) may still be
  // read by UCX, so its text is then left to it.
  if (!all_done) (void)text.release();
}

void UcxWorld::Flush(absl::Time deadline) {
  ucs_status_ptr_t request;
  {
    absl::MutexLock lock(&mu_);
    ucp_request_param_t param{};
    request = ucp_worker_flush_nbx(worker_, &param);
  }
  WaitRequest(*this, request, deadline);
}

}  // namespace herd::comm
