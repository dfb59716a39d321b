#include "core/mapped_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace herd {
namespace {

std::vector<uint8_t> Pattern(size_t bytes) {
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = static_cast<uint8_t>(i * 31 + 7);
  return v;
}

TEST(MappedFileTest, ReleasedPagesOfAMappingReadBackTheFile) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const std::vector<uint8_t> expected = Pattern(8 * page);
  const std::string path = testing::TempDir() + "/mapped_file_test.bin";
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(expected.data()),
             static_cast<std::streamsize>(expected.size()));
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  PrefaultMappedPages((*file)->data(), (*file)->size());
  ReleaseMappedPages((*file)->data(), (*file)->size());
  EXPECT_EQ(std::vector<uint8_t>((*file)->data(), (*file)->data() + (*file)->size()), expected);
  std::remove(path.c_str());
}

// Dropping the pages of anonymous memory would zero them: ReleaseMappedPages
// leaves memory that is not a live file mapping as it is.
TEST(MappedFileTest, ReleaseLeavesAnonymousMemoryAlone) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t bytes = 8 * page;
  void* anon = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(anon, MAP_FAILED);
  const std::vector<uint8_t> expected = Pattern(bytes);
  std::copy(expected.begin(), expected.end(), static_cast<uint8_t*>(anon));
  ReleaseMappedPages(anon, bytes);
  const auto* p = static_cast<const uint8_t*>(anon);
  EXPECT_EQ(std::vector<uint8_t>(p, p + bytes), expected);
  ::munmap(anon, bytes);

  std::vector<uint8_t> heap = Pattern(bytes);
  ReleaseMappedPages(heap.data(), heap.size());
  EXPECT_EQ(heap, expected);
}

}  // namespace
}  // namespace herd
