#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace herd {
namespace {

// The [begin, end) address ranges of the live MappedFiles, so that
// ReleaseMappedPages acts only on file mappings: on heap or anonymous memory
// MADV_DONTNEED would zero the pages instead of dropping them.
struct MappingRegistry {
  std::mutex mutex;
  std::map<uintptr_t, uintptr_t> ranges;  // begin -> end
};

MappingRegistry& Mappings() {
  static auto* registry = new MappingRegistry;
  return *registry;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string message = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::InvalidArgumentError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(err)));
    }
    data = static_cast<const uint8_t*>(map);
    MappingRegistry& registry = Mappings();
    std::lock_guard<std::mutex> lock(registry.mutex);
    registry.ranges[reinterpret_cast<uintptr_t>(data)] = reinterpret_cast<uintptr_t>(data) + size;
  }
  ::close(fd);
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ == nullptr) return;
  {
    MappingRegistry& registry = Mappings();
    std::lock_guard<std::mutex> lock(registry.mutex);
    registry.ranges.erase(reinterpret_cast<uintptr_t>(data_));
  }
  ::munmap(const_cast<uint8_t*>(data_), size_);
}

void ReleaseMappedPages(const void* data, size_t bytes) {
  const auto first = reinterpret_cast<uintptr_t>(data);
  {
    MappingRegistry& registry = Mappings();
    std::lock_guard<std::mutex> lock(registry.mutex);
    auto it = registry.ranges.upper_bound(first);
    if (it == registry.ranges.begin()) return;
    --it;
    if (first + bytes > it->second) return;  // not inside one live file mapping
  }
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void PrefaultMappedPages(const void* data, size_t bytes) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const volatile uint8_t* p = static_cast<const uint8_t*>(data);
  uint8_t sink = 0;
  for (size_t offset = 0; offset < bytes; offset += page) sink ^= p[offset];
  if (bytes > 0) sink ^= p[bytes - 1];
  static_cast<void>(sink);
}

}  // namespace herd
