#include "core/huge_pages.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <new>

namespace herd {

std::shared_ptr<uint8_t[]> AllocateHugePageBacked(size_t bytes) {
  bytes = std::max<size_t>(bytes, 1);
  if (bytes < kHugePageBytes) {
    // new[] of a trivial type aligns to __STDCPP_DEFAULT_NEW_ALIGNMENT__ (16);
    // ask for 64 so rows may start on a cache line.
    uint8_t* data =
        static_cast<uint8_t*>(::operator new[](bytes, std::align_val_t{64}, std::nothrow));
    if (data == nullptr) return nullptr;
    std::fill_n(data, bytes, uint8_t{0});
    return std::shared_ptr<uint8_t[]>(
        data, [](uint8_t* p) { ::operator delete[](p, std::align_val_t{64}); });
  }
  // Over-map by one huge page, then give back what lies before the first
  // 2 MiB boundary and after the buffer's last page.
  const size_t page = 4096;
  if (bytes > SIZE_MAX - kHugePageBytes - page) return nullptr;
  const size_t length = (bytes + page - 1) / page * page;
  void* map = mmap(nullptr, length + kHugePageBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return nullptr;
  const uintptr_t base = reinterpret_cast<uintptr_t>(map);
  const uintptr_t start = (base + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (start > base) munmap(map, start - base);
  const uintptr_t end = base + length + kHugePageBytes;
  if (end > start + length) munmap(reinterpret_cast<void*>(start + length), end - start - length);
  uint8_t* data = reinterpret_cast<uint8_t*>(start);
  madvise(data, length, MADV_HUGEPAGE);  // advice only: 4 KiB pages where refused
  return std::shared_ptr<uint8_t[]>(data, [length](uint8_t* p) { munmap(p, length); });
}

}  // namespace herd
