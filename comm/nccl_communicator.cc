#include "comm/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/nccl_preflight.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// How long the destructor lets ncclCommFinalize flush before aborting.
constexpr absl::Duration kFinalizeGrace = absl::Seconds(10);

absl::Status CudaError(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": CUDA error ", static_cast<int>(error), " (",
                                          cudaGetErrorName(error),
                                          "): ", cudaGetErrorString(error)));
}

absl::Status NcclError(ncclResult_t result, ncclComm_t comm, absl::string_view what) {
  if (result == ncclSuccess || result == ncclInProgress) return absl::OkStatus();
  std::string message = absl::StrCat(what, ": NCCL error ", static_cast<int>(result), " (",
                                     ncclGetErrorString(result), ")");
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') absl::StrAppend(&message, ": ", last);
  return absl::InternalError(message);
}

// Device memory of one CUDA device.
class DeviceCommBuffer final : public CommBuffer {
 public:
  DeviceCommBuffer(int device, void* ptr, int64_t bytes)
      : device_(device), ptr_(ptr), bytes_(bytes) {}
  ~DeviceCommBuffer() override {
    if (ptr_ != nullptr) {
      cudaSetDevice(device_);
      cudaFree(ptr_);
    }
  }
  void* data() override { return ptr_; }
  int64_t size_bytes() const override { return bytes_; }

  absl::Status CopyFromHost(int64_t offset, const void* src, int64_t bytes) override {
    HERD_RETURN_IF_ERROR(CheckRange(offset, bytes));
    if (bytes == 0) return absl::OkStatus();
    HERD_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
    HERD_RETURN_IF_ERROR(CudaError(cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, src,
                                              static_cast<size_t>(bytes), cudaMemcpyHostToDevice),
                                   "cudaMemcpy to device"));
    // NOTE: from pageable memory cudaMemcpy may return before the DMA lands,
    // and the communicator's stream does not wait for the legacy default
    // stream, so wait here.
    return CudaError(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  }

  absl::Status CopyToHost(int64_t offset, void* dst, int64_t bytes) const override {
    HERD_RETURN_IF_ERROR(CheckRange(offset, bytes));
    if (bytes == 0) return absl::OkStatus();
    HERD_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
    return CudaError(cudaMemcpy(dst, static_cast<const uint8_t*>(ptr_) + offset,
                                static_cast<size_t>(bytes), cudaMemcpyDeviceToHost),
                     "cudaMemcpy to host");
  }

 private:
  absl::Status CheckRange(int64_t offset, int64_t bytes) const {
    if (offset < 0 || bytes < 0 || offset > bytes_ || bytes > bytes_ - offset) {
      return absl::OutOfRangeError(absl::StrCat("bytes [", offset, ", ", offset, " + ", bytes,
                                                ") are outside a buffer of ", bytes_, " bytes"));
    }
    return absl::OkStatus();
  }

  const int device_;
  void* const ptr_;
  const int64_t bytes_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, float* scratch, int device, int rank,
                   int world_size)
      : comm_(comm),
        stream_(stream),
        scratch_(scratch),
        device_(device),
        rank_(rank),
        world_size_(world_size) {}

  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    {
      absl::MutexLock lock(&mu_);
      if (comm_ != nullptr) {
        // Flush what was enqueued, then free; abort if that does not finish.
        const ncclResult_t finalize = ncclCommFinalize(comm_);
        ncclResult_t state =
            finalize == ncclSuccess || finalize == ncclInProgress ? ncclInProgress : finalize;
        const absl::Time give_up = absl::Now() + kFinalizeGrace;
        while (state == ncclInProgress && absl::Now() < give_up) {
          if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
          if (state == ncclInProgress) absl::SleepFor(absl::Milliseconds(1));
        }
        if (state == ncclSuccess) {
          ncclCommDestroy(comm_);
        } else {
          ncclCommAbort(comm_);
        }
        comm_ = nullptr;
      }
    }
    cudaStreamDestroy(stream_);
    cudaFree(scratch_);
  }

  const char* backend_name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  MemorySpace memory_space() const override { return MemorySpace::kDevice; }

  absl::StatusOr<std::unique_ptr<CommBuffer>> Allocate(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError("negative buffer size");
    HERD_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), "cudaSetDevice"));
    void* ptr = nullptr;
    if (bytes > 0) {
      const cudaError_t error = cudaMalloc(&ptr, static_cast<size_t>(bytes));
      if (error == cudaErrorMemoryAllocation) {
        return absl::ResourceExhaustedError(
            absl::StrCat("cudaMalloc of ", bytes, " bytes on device ", device_));
      }
      HERD_RETURN_IF_ERROR(CudaError(error, "cudaMalloc"));
    }
    return std::unique_ptr<CommBuffer>(new DeviceCommBuffer(device_, ptr, bytes));
  }

  absl::Status GroupedAllToAllV(absl::Span<const AllToAllVArgs> ops, absl::Time deadline) override {
    int64_t bytes_sent = 0;
    for (const AllToAllVArgs& args : ops) {
      HERD_RETURN_IF_ERROR(ValidateAllToAllVArgs(args, world_size_));
      if (args.send_bytes[rank_] != args.recv_bytes[rank_]) {
        return absl::InvalidArgumentError(
            absl::StrCat("all_to_all_v: rank ", rank_, " sends itself ", args.send_bytes[rank_],
                         " bytes but expects ", args.recv_bytes[rank_]));
      }
    }
    const std::string what = Where("all_to_all_v");
    HERD_RETURN_IF_ERROR(Begin(what));
    ncclComm_t comm = CommForEnqueue();
    for (const AllToAllVArgs& a : ops) {
      if (a.recv_bytes[rank_] == 0) continue;
      HERD_RETURN_IF_ERROR(Fail(
          CudaError(cudaMemcpyAsync(static_cast<uint8_t*>(a.recv) + a.recv_offsets[rank_],
                                    static_cast<const uint8_t*>(a.send) + a.send_offsets[rank_],
                                    static_cast<size_t>(a.recv_bytes[rank_]),
                                    cudaMemcpyDeviceToDevice, stream_),
                    what)));
    }
    HERD_RETURN_IF_ERROR(Fail(NcclError(ncclGroupStart(), comm, what)));
    absl::Status enqueued = absl::OkStatus();
    for (const AllToAllVArgs& a : ops) {
      for (int p = 0; p < world_size_ && enqueued.ok(); ++p) {
        if (p == rank_) continue;
        if (a.send_bytes[p] > 0) {
          enqueued =
              NcclError(ncclSend(static_cast<const uint8_t*>(a.send) + a.send_offsets[p],
                                 static_cast<size_t>(a.send_bytes[p]), ncclUint8, p, comm, stream_),
                        comm, what);
          bytes_sent += a.send_bytes[p];
        }
        if (enqueued.ok() && a.recv_bytes[p] > 0) {
          enqueued =
              NcclError(ncclRecv(static_cast<uint8_t*>(a.recv) + a.recv_offsets[p],
                                 static_cast<size_t>(a.recv_bytes[p]), ncclUint8, p, comm, stream_),
                        comm, what);
        }
      }
    }
    const absl::Status ended = NcclError(ncclGroupEnd(), comm, what);
    HERD_RETURN_IF_ERROR(Fail(enqueued));
    HERD_RETURN_IF_ERROR(Fail(ended));
    HERD_RETURN_IF_ERROR(Wait(what, deadline));
    Count(bytes_sent);
    return absl::OkStatus();
  }

  absl::Status AllGather(const void* send, int64_t bytes_per_rank, void* recv,
                         absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateAllGatherArgs(send, bytes_per_rank, recv));
    const std::string what = Where("all_gather");
    HERD_RETURN_IF_ERROR(Begin(what));
    ncclComm_t comm = CommForEnqueue();
    HERD_RETURN_IF_ERROR(Fail(NcclError(
        ncclAllGather(send, recv, static_cast<size_t>(bytes_per_rank), ncclUint8, comm, stream_),
        comm, what)));
    HERD_RETURN_IF_ERROR(Wait(what, deadline));
    Count(bytes_per_rank * (world_size_ - 1));
    return absl::OkStatus();
  }

  absl::Status Broadcast(int root_rank, void* buffer, int64_t bytes, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateBroadcastArgs(root_rank, world_size_, buffer, bytes));
    const std::string what = Where("broadcast");
    HERD_RETURN_IF_ERROR(Begin(what));
    ncclComm_t comm = CommForEnqueue();
    HERD_RETURN_IF_ERROR(Fail(NcclError(ncclBroadcast(buffer, buffer, static_cast<size_t>(bytes),
                                                      ncclUint8, root_rank, comm, stream_),
                                        comm, what)));
    HERD_RETURN_IF_ERROR(Wait(what, deadline));
    Count(rank_ == root_rank ? bytes * (world_size_ - 1) : 0);
    return absl::OkStatus();
  }

  absl::Status Barrier(absl::Time deadline) override {
    const std::string what = Where("barrier");
    HERD_RETURN_IF_ERROR(Begin(what));
    ncclComm_t comm = CommForEnqueue();
    HERD_RETURN_IF_ERROR(Fail(NcclError(
        ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm, stream_), comm, what)));
    HERD_RETURN_IF_ERROR(Wait(what, deadline));
    Count(0);
    return absl::OkStatus();
  }

  void Abort(absl::string_view reason) override {
    absl::MutexLock lock(&mu_);
    AbortLocked(absl::AbortedError(absl::StrCat("rank ", rank_, " aborted: ", reason)));
  }

  CommStats stats() const override {
    return CommStats{num_collectives_.load(), bytes_sent_.load()};
  }

 private:
  std::string Where(const char* op) {
    return absl::StrCat("nccl ", op, " #", seq_++, " on rank ", rank_);
  }

  // Selects the device and checks that the communicator is still usable.
  absl::Status Begin(absl::string_view what) {
    HERD_RETURN_IF_ERROR(CudaError(cudaSetDevice(device_), what));
    absl::MutexLock lock(&mu_);
    if (comm_ != nullptr && failed_.ok()) return absl::OkStatus();
    if (failed_.code() == absl::StatusCode::kAborted) return failed_;
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": the communicator failed earlier: ", failed_.ToString()));
  }

  // The handle for enqueueing. NOTE: only the driving thread enqueues, and an
  // Abort() racing with it makes NCCL return an error, which Wait reports.
  ncclComm_t CommForEnqueue() {
    absl::MutexLock lock(&mu_);
    return comm_;
  }

  // Polls the stream and NCCL's asynchronous error until the enqueued work is
  // done, aborting the communicator on an error or the deadline.
  absl::Status Wait(const std::string& what, absl::Time deadline) {
    const absl::Time start = absl::Now();
    PollPacer pacer(GetCommEnv());
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (comm_ == nullptr) return failed_;
        ncclResult_t state = ncclSuccess;
        const ncclResult_t result = ncclCommGetAsyncError(comm_, &state);
        if (result != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
          const absl::Status error = NcclError(result != ncclSuccess ? result : state, comm_, what);
          AbortLocked(error);
          return error;
        }
        if (state == ncclSuccess) {
          const cudaError_t query = cudaStreamQuery(stream_);
          if (query == cudaSuccess) return absl::OkStatus();
          if (query != cudaErrorNotReady) {
            const absl::Status error = CudaError(query, what);
            AbortLocked(error);
            return error;
          }
        }
        if (absl::Now() >= deadline) {
          const absl::Status error = absl::DeadlineExceededError(absl::StrCat(
              what, ": not complete after ", absl::ToInt64Milliseconds(absl::Now() - start),
              " ms (NCCL cannot tell which peer is missing; the communicator is aborted)"));
          AbortLocked(error);
          return error;
        }
      }
      pacer.Pause();
    }
  }

  void AbortLocked(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failed_.ok()) failed_ = why;
    if (comm_ != nullptr) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }

  absl::Status Fail(absl::Status status) {
    if (status.ok()) return status;
    absl::MutexLock lock(&mu_);
    AbortLocked(status);
    return status;
  }

  void Count(int64_t bytes_sent) {
    num_collectives_.fetch_add(1);
    bytes_sent_.fetch_add(bytes_sent);
  }

  absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);  // nullptr once aborted
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
  cudaStream_t stream_;
  float* scratch_;  // F32 [1], device, for Barrier
  const int device_;
  const int rank_;
  const int world_size_;
  uint64_t seq_ = 0;
  std::atomic<int64_t> num_collectives_{0};
  std::atomic<int64_t> bytes_sent_{0};
};

}  // namespace

absl::StatusOr<int> NcclDeviceCount() {
  int count = 0;
  HERD_RETURN_IF_ERROR(CudaError(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  return count;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(ControlChannel& control,
                                                                     int cuda_device,
                                                                     absl::Time deadline) {
  NcclPreflightOptions preflight;
  preflight.cuda_device = cuda_device;
  if (const char* ifname = std::getenv("NCCL_SOCKET_IFNAME"); ifname != nullptr) {
    preflight.socket_ifname = ifname;
  }
  HERD_ASSIGN_OR_RETURN(const int device, RunNcclPreflight(control, preflight, deadline));
  const std::string what = absl::StrCat("nccl init on rank ", control.rank());
  HERD_RETURN_IF_ERROR(CudaError(cudaSetDevice(device), what));

  ncclUniqueId id;
  std::string id_bytes;
  if (control.rank() == 0) {
    HERD_RETURN_IF_ERROR(NcclError(ncclGetUniqueId(&id), nullptr, what));
    id_bytes.assign(reinterpret_cast<const char*>(&id), sizeof(id));
  }
  HERD_RETURN_IF_ERROR(control.Broadcast(0, &id_bytes, deadline));
  if (id_bytes.size() != sizeof(id)) {
    return absl::InternalError(absl::StrCat(what, ": the broadcast ncclUniqueId has ",
                                            id_bytes.size(), " bytes, not ", sizeof(id)));
  }
  std::memcpy(&id, id_bytes.data(), sizeof(id));

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that joining can be polled against the deadline
  ncclComm_t comm = nullptr;
  HERD_RETURN_IF_ERROR(
      NcclError(ncclCommInitRankConfig(&comm, control.world_size(), id, control.rank(), &config),
                comm, what));
  PollPacer pacer(GetCommEnv());
  while (true) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t result = ncclCommGetAsyncError(comm, &state);
    if (result != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      const absl::Status error = NcclError(result != ncclSuccess ? result : state, comm, what);
      ncclCommAbort(comm);
      return error;
    }
    if (state == ncclSuccess) break;
    if (absl::Now() >= deadline) {
      ncclCommAbort(comm);
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": not every rank joined before the deadline"));
    }
    pacer.Pause();
  }

  cudaStream_t stream = nullptr;
  float* scratch = nullptr;
  absl::Status status =
      CudaError(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (status.ok()) {
    status = CudaError(cudaMalloc(reinterpret_cast<void**>(&scratch), sizeof(float)), "cudaMalloc");
  }
  if (status.ok()) status = CudaError(cudaMemset(scratch, 0, sizeof(float)), "cudaMemset");
  if (!status.ok()) {
    ncclCommAbort(comm);
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (scratch != nullptr) cudaFree(scratch);
    return status;
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, stream, scratch, device, control.rank(), control.world_size()));
}

}  // namespace herd::comm
