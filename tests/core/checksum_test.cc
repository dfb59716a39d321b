// core/checksum: CRC-32C against published check values, continuation, and
// the table path agreeing with the instruction path on every length.
#include "core/checksum.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace herd {
namespace {

TEST(Crc32cTest, MatchesPublishedCheckValues) {
  const std::string digits = "123456789";
  EXPECT_EQ(Crc32c(digits.data(), digits.size()), 0xE3069283u);  // the CRC catalogue's check
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  const std::vector<uint8_t> zeros(32, 0);
  EXPECT_EQ(Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  std::vector<uint8_t> ones(32, 0xFF);
  EXPECT_EQ(Crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  std::vector<uint8_t> ascending(32);
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Crc32c(ascending.data(), ascending.size()), 0x46DD794Eu);
  EXPECT_EQ(Crc32cString(0xE3069283u), "crc32c:e3069283");
}

TEST(Crc32cTest, ContinuingInPiecesGivesTheWholeValue) {
  std::vector<uint8_t> bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 37 + 11);
  const uint32_t whole = Crc32c(bytes.data(), bytes.size());
  for (size_t cut : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    const uint32_t first = Crc32c(bytes.data(), cut);
    EXPECT_EQ(Crc32c(bytes.data() + cut, bytes.size() - cut, first), whole) << cut;
  }
  bytes[321] ^= 0x04;  // one flipped bit changes it
  EXPECT_NE(Crc32c(bytes.data(), bytes.size()), whole);
}

TEST(Crc32cTest, TableAndInstructionPathsAgreeOnEveryLength) {
  std::vector<uint8_t> bytes(300);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 101 + 3);
  for (size_t n = 0; n <= bytes.size(); ++n) {
    ASSERT_EQ(Crc32cPortable(bytes.data(), n, 7), Crc32c(bytes.data(), n, 7)) << n;
  }
}

}  // namespace
}  // namespace herd
