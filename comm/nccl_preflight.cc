#include "comm/nccl_preflight.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <map>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/peer_reachability.h"
#include "comm/socket.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// What one rank found: its device, or why it has none.
struct LocalReport {
  std::string host;
  std::string problem;  // empty when fine
  int device = -1;
  std::string pci_bus_id;
  int nccl_version = 0;
};

std::string CudaVersionString(int code) {
  return absl::StrCat(code / 1000, ".", (code % 1000) / 10);
}

LocalReport CheckThisRank(int rank, int cuda_device) {
  LocalReport r;
  r.host = HostName();
  int driver = 0;
  int runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  if (driver == 0) {
    r.problem = "no NVIDIA driver is loaded (is this a GPU machine? is /dev/nvidia* visible?)";
    return r;
  }
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    r.problem = absl::StrCat("no usable CUDA device: ", cudaGetErrorString(error),
                             " (driver for CUDA ", CudaVersionString(driver),
                             ", herd built with runtime ", CudaVersionString(runtime), ")");
    return r;
  }
  if (count == 0) {
    r.problem = "the driver sees no CUDA device (check CUDA_VISIBLE_DEVICES)";
    return r;
  }
  r.device = cuda_device >= 0 ? cuda_device : rank % count;
  if (r.device >= count) {
    r.problem = absl::StrCat("CUDA device ", r.device, " asked for; this host has ", count);
    return r;
  }
  char bus_id[32] = {};
  if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), r.device) != cudaSuccess) {
    r.problem = absl::StrCat("cannot read the PCI bus id of CUDA device ", r.device);
    return r;
  }
  r.pci_bus_id = bus_id;
  if (ncclGetVersion(&r.nccl_version) != ncclSuccess) {
    r.problem = "ncclGetVersion failed: the NCCL library cannot be used";
    return r;
  }
  if (r.nccl_version < NCCL_VERSION_CODE) {
    r.problem = absl::StrCat("the NCCL library loaded is ", NcclVersionString(r.nccl_version),
                             ", older than the ", NcclVersionString(NCCL_VERSION_CODE),
                             " herd was built with (check LD_LIBRARY_PATH)");
  }
  return r;
}

// Tab-separated: host, problem, device, bus id, NCCL version.
std::string Encode(const LocalReport& r) {
  return absl::StrCat(r.host, "\t", r.problem, "\t", r.device, "\t", r.pci_bus_id, "\t",
                      r.nccl_version);
}

LocalReport Decode(const std::string& text) {
  const std::vector<std::string> f = absl::StrSplit(text, '\t');
  LocalReport r;
  if (f.size() != 5 || !absl::SimpleAtoi(f[2], &r.device) ||
      !absl::SimpleAtoi(f[4], &r.nccl_version)) {
    r.problem = absl::StrCat("sent a report that does not parse: '", text, "'");
    return r;
  }
  r.host = f[0];
  r.problem = f[1];
  r.pci_bus_id = f[3];
  return r;
}

// Rank 0's verdict on every rank's report ("" when all is well).
std::string Judge(const std::vector<std::string>& reports) {
  std::vector<LocalReport> all;
  for (const std::string& text : reports) all.push_back(Decode(text));
  std::vector<std::string> problems;
  for (size_t r = 0; r < all.size(); ++r) {
    if (!all[r].problem.empty()) {
      problems.push_back(absl::StrCat("rank ", r, " (host ", all[r].host, "): ", all[r].problem));
    }
  }
  if (!problems.empty()) return absl::StrJoin(problems, "; ");
  std::map<int, std::vector<size_t>> by_version;
  for (size_t r = 0; r < all.size(); ++r) by_version[all[r].nccl_version].push_back(r);
  if (by_version.size() > 1) {
    std::vector<std::string> groups;
    for (const auto& [version, ranks] : by_version) {
      groups.push_back(absl::StrCat("NCCL ", NcclVersionString(version), " on ranks ",
                                    absl::StrJoin(ranks, ",")));
    }
    return absl::StrCat("the ranks loaded different NCCL versions (", absl::StrJoin(groups, "; "),
                        "): every rank must run the same NCCL");
  }
  std::map<std::pair<std::string, std::string>, std::vector<size_t>> by_gpu;
  for (size_t r = 0; r < all.size(); ++r) by_gpu[{all[r].host, all[r].pci_bus_id}].push_back(r);
  for (const auto& [gpu, ranks] : by_gpu) {
    if (ranks.size() < 2) continue;
    problems.push_back(absl::StrCat("ranks ", absl::StrJoin(ranks, ","), " on host ", gpu.first,
                                    " all use the GPU at PCI ", gpu.second));
  }
  if (problems.empty()) return "";
  return absl::StrCat(absl::StrJoin(problems, "; "),
                      ": NCCL runs one rank per GPU (run as many ranks per host as it has GPUs, "
                      "or set CUDA_VISIBLE_DEVICES per rank)");
}

}  // namespace

std::string NcclVersionString(int code) {
  // Codes from NCCL 2.9 on are major * 10000 + minor * 100 + patch.
  return absl::StrCat(code / 10000, ".", (code % 10000) / 100, ".", code % 100);
}

absl::StatusOr<int> RunNcclPreflight(ControlChannel& control, const NcclPreflightOptions& options,
                                     absl::Time deadline) {
  const LocalReport mine = CheckThisRank(control.rank(), options.cuda_device);
  absl::Status status = control.AgreeOnVerdict(Encode(mine), Judge, deadline);
  if (status.ok() && control.world_size() > 1) {
    status = CheckPeerReachability(control, options.socket_ifname, options.probe_timeout, deadline);
  }
  if (absl::IsFailedPrecondition(status)) {
    return absl::FailedPreconditionError(
        absl::StrCat("NCCL pre-flight check failed: ", status.message()));
  }
  HERD_RETURN_IF_ERROR(status);
  return mine.device;
}

}  // namespace herd::comm
