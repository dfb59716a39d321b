// AllocateHugePageBacked: zeroed, writable, aligned for huge pages from 2 MiB
// up, and null when the memory cannot be had.
#include "core/huge_pages.h"

#include <cstdint>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace herd {
namespace {

TEST(HugePagesTest, BuffersAreZeroedWritableAndAligned) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{100}, kHugePageBytes - 1, kHugePageBytes,
                       5 * kHugePageBytes + 123}) {
    SCOPED_TRACE(bytes);
    std::shared_ptr<uint8_t[]> buffer = AllocateHugePageBacked(bytes);
    ASSERT_NE(buffer, nullptr);
    const uintptr_t address = reinterpret_cast<uintptr_t>(buffer.get());
    EXPECT_EQ(address % 64, 0u);
    if (bytes >= kHugePageBytes) {
      EXPECT_EQ(address % kHugePageBytes, 0u);
    }
    const size_t n = bytes == 0 ? 1 : bytes;
    int64_t nonzero = 0;
    for (size_t i = 0; i < n; ++i) nonzero += buffer[i] != 0;
    EXPECT_EQ(nonzero, 0);
    buffer[0] = 1;
    buffer[n - 1] = 2;
    EXPECT_EQ(buffer[n - 1], 2);
  }
}

// With transparent huge pages on ("always" or "madvise"), the whole 2 MiB
// ranges of a touched buffer can be huge pages; nothing here depends on the
// kernel granting them, but the buffer must stay usable either way.
TEST(HugePagesTest, TouchedBufferStaysUsableWhateverTheKernelGrants) {
  std::string mode;
  std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled") >> mode;
  RecordProperty("thp", mode);
  const size_t bytes = 8 * kHugePageBytes;
  std::shared_ptr<uint8_t[]> buffer = AllocateHugePageBacked(bytes);
  ASSERT_NE(buffer, nullptr);
  for (size_t i = 0; i < bytes; i += 4096) buffer[i] = static_cast<uint8_t>(i >> 12);
  for (size_t i = 0; i < bytes; i += 4096) {
    ASSERT_EQ(buffer[i], static_cast<uint8_t>(i >> 12)) << i;
  }
}

// More than the address space holds, at any overcommit setting (SIZE_MAX
// once wrapped around to a small size).
TEST(HugePagesTest, ImpossibleSizesGiveNull) {
  EXPECT_EQ(AllocateHugePageBacked(SIZE_MAX), nullptr);
  EXPECT_EQ(AllocateHugePageBacked(SIZE_MAX / 2), nullptr);
}

}  // namespace
}  // namespace herd
