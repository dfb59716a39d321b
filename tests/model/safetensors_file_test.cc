// Tests for the safetensors reader and writer: roundtrips, hand-built files in
// the reference layout, and every kind of corrupt header.
#include "model/safetensors_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/safetensors_writer.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::herd::testing::ReadFileBytes;
using ::herd::testing::TempDir;
using ::herd::testing::WriteFileBytes;
using ::testing::HasSubstr;

// A file of the reference layout: length, header text, data bytes.
std::vector<uint8_t> RawFile(const std::string& header, const std::vector<uint8_t>& data = {}) {
  std::vector<uint8_t> bytes(8);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(n >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const TempDir& dir,
                                                           const std::vector<uint8_t>& bytes) {
  const std::string path = dir.Join("t.safetensors");
  WriteFileBytes(path, bytes);
  return SafetensorsFile::Open(path);
}

// Opens `bytes` and expects InvalidArgument whose message holds every one of `parts`.
void ExpectInvalid(const std::vector<uint8_t>& bytes, const std::vector<std::string>& parts) {
  TempDir dir;
  auto file = OpenBytes(dir, bytes);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("t.safetensors"));
  for (const std::string& part : parts) {
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(part));
  }
}

std::vector<uint8_t> Bytes(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  return std::vector<uint8_t>(p, p + n);
}

// A small valid file written by SafetensorsWriter, used for corruption tests.
std::vector<uint8_t> ValidFileBytes(const TempDir& dir) {
  SafetensorsWriter writer;
  std::vector<float> a(6);
  for (int i = 0; i < 6; ++i) a[i] = 0.5f * i;
  std::vector<uint16_t> b(4, F32ToBF16(1.5f));
  EXPECT_TRUE(writer.AddTensor("a", DType::kF32, {2, 3}, a.data(), a.size() * 4).ok());
  EXPECT_TRUE(writer.AddTensor("b", DType::kBF16, {4}, b.data(), b.size() * 2).ok());
  writer.SetMetadata("format", "pt");
  const std::string path = dir.Join("valid.safetensors");
  EXPECT_TRUE(writer.WriteFile(path).ok());
  return ReadFileBytes(path);
}

TEST(SafetensorsTest, RoundTripF32F16BF16) {
  TempDir dir;
  std::vector<float> f32 = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f, -7.0f};
  std::vector<uint16_t> f16, bf16;
  for (float v : f32) {
    f16.push_back(F32ToF16(v));
    bf16.push_back(F32ToBF16(v));
  }
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddTensor("w.f16", DType::kF16, {3, 2}, f16.data(), f16.size() * 2).ok());
  ASSERT_TRUE(writer.AddTensor("w.f32", DType::kF32, {2, 3}, f32.data(), f32.size() * 4).ok());
  ASSERT_TRUE(writer.AddTensor("w.bf16", DType::kBF16, {6}, bf16.data(), bf16.size() * 2).ok());
  writer.SetMetadata("format", "pt");
  writer.SetMetadata("note", "herd");
  const std::string path = dir.Join("m.safetensors");
  ASSERT_TRUE(writer.WriteFile(path).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_THAT((*file)->tensor_names(), ::testing::UnorderedElementsAre("w.f16", "w.f32", "w.bf16"));
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->metadata().at("note"), "herd");

  auto v32 = (*file)->GetView("w.f32");
  ASSERT_TRUE(v32.ok()) << v32.status();
  EXPECT_EQ(v32->dtype(), DType::kF32);
  ASSERT_EQ(v32->rank(), 2);
  EXPECT_EQ(v32->dim(0), 2);
  EXPECT_EQ(v32->dim(1), 3);
  EXPECT_EQ(0, std::memcmp(v32->data(), f32.data(), f32.size() * 4));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v32->data()) % 4, 0u);  // F32 starts aligned

  auto v16 = (*file)->GetView("w.f16");
  ASSERT_TRUE(v16.ok()) << v16.status();
  EXPECT_EQ(v16->dtype(), DType::kF16);
  EXPECT_EQ(v16->dim(0), 3);
  EXPECT_EQ(v16->dim(1), 2);
  EXPECT_FLOAT_EQ(F16ToF32(v16->as<uint16_t>()[2]), 3.25f);

  auto vb = (*file)->GetView("w.bf16");
  ASSERT_TRUE(vb.ok()) << vb.status();
  EXPECT_EQ(vb->dtype(), DType::kBF16);
  ASSERT_EQ(vb->rank(), 1);
  EXPECT_EQ(vb->dim(0), 6);
  EXPECT_FLOAT_EQ(BF16ToF32(vb->as<uint16_t>()[5]), -7.0f);

  const SafetensorsTensor* t = (*file)->Find("w.bf16");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, SafetensorsDType::kBF16);
  EXPECT_EQ(t->num_bytes, 12);
  EXPECT_EQ(t->num_elements(), 6);
  EXPECT_EQ((*file)->Find("nope"), nullptr);
}

TEST(SafetensorsTest, WriterPadsHeaderToMultipleOf8) {
  TempDir dir;
  for (int name_len = 1; name_len <= 9; ++name_len) {
    SafetensorsWriter writer;
    const uint8_t byte = 7;
    ASSERT_TRUE(
        writer.AddTensor(std::string(name_len, 'x'), SafetensorsDType::kU8, {1}, &byte, 1).ok());
    const std::string path = dir.Join("p.safetensors");
    ASSERT_TRUE(writer.WriteFile(path).ok());
    const std::vector<uint8_t> bytes = ReadFileBytes(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    EXPECT_EQ(n % 8, 0u) << "name length " << name_len;
    EXPECT_EQ(bytes.size(), 8 + n + 1);
    EXPECT_TRUE(bytes[8 + n - 1] == ' ' || bytes[8 + n - 1] == '}');
    EXPECT_EQ(bytes.back(), 7);
  }
}

TEST(SafetensorsTest, WriterOverwritesAtomically) {
  TempDir dir;
  const std::string path = dir.Join("o.safetensors");
  for (float v : {1.0f, 2.0f}) {
    SafetensorsWriter writer;
    ASSERT_TRUE(writer.AddTensor("v", DType::kF32, {1}, &v, 4).ok());
    ASSERT_TRUE(writer.WriteFile(path).ok());
  }
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_FLOAT_EQ((*file)->GetView("v")->as<float>()[0], 2.0f);
  EXPECT_FALSE(std::ifstream(path + ".tmp").good());
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  SafetensorsWriter writer;
  float v[4] = {};
  EXPECT_TRUE(writer.AddTensor("a", DType::kF32, {2, 2}, v, 16).ok());
  EXPECT_FALSE(writer.AddTensor("a", DType::kF32, {2, 2}, v, 16).ok());  // duplicate
  EXPECT_FALSE(writer.AddTensor("b", DType::kF32, {2, 2}, v, 12).ok());  // size mismatch
  EXPECT_FALSE(writer.AddTensor("c", DType::kF32, {-1}, v, 0).ok());     // negative dim
  EXPECT_FALSE(writer.AddTensor("d", DType::kQ8_0, {32}, v, 16).ok());   // not storable
  EXPECT_FALSE(writer.AddTensor("", DType::kF32, {1}, v, 4).ok());
  EXPECT_FALSE(writer.AddTensor("__metadata__", DType::kF32, {1}, v, 4).ok());
  auto bad = writer.AddTensor("b", DType::kF32, {2, 2}, v, 12);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("b"));
}

TEST(SafetensorsTest, RawIntegerTypesAndScalars) {
  TempDir dir;
  SafetensorsWriter writer;
  const uint8_t u8[3] = {1, 2, 255};
  const int8_t i8[2] = {-1, 5};
  const int32_t i32[2] = {-7, 123456};
  const float scalar = 4.5f;
  ASSERT_TRUE(writer.AddTensor("u8", SafetensorsDType::kU8, {3}, u8, 3).ok());
  ASSERT_TRUE(writer.AddTensor("i8", SafetensorsDType::kI8, {2, 1}, i8, 2).ok());
  ASSERT_TRUE(writer.AddTensor("i32", DType::kI32, {2}, i32, 8).ok());
  ASSERT_TRUE(writer.AddTensor("scalar", DType::kF32, {}, &scalar, 4).ok());
  ASSERT_TRUE(writer.AddTensor("empty", DType::kBF16, {0, 4}, nullptr, 0).ok());
  const std::string path = dir.Join("raw.safetensors");
  ASSERT_TRUE(writer.WriteFile(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();

  const SafetensorsTensor* t = (*file)->Find("u8");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, SafetensorsDType::kU8);
  EXPECT_EQ(Bytes(t->data, t->num_bytes), Bytes(u8, 3));
  t = (*file)->Find("i8");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, SafetensorsDType::kI8);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(Bytes(t->data, t->num_bytes), Bytes(i8, 2));

  auto u8_view = (*file)->GetView("u8");
  EXPECT_EQ(u8_view.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(u8_view.status().message()), HasSubstr("u8"));

  auto i32_view = (*file)->GetView("i32");
  ASSERT_TRUE(i32_view.ok()) << i32_view.status();
  EXPECT_EQ(i32_view->dtype(), DType::kI32);
  EXPECT_EQ(i32_view->as<int32_t>()[1], 123456);

  auto s = (*file)->GetView("scalar");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->num_elements(), 1);
  EXPECT_FLOAT_EQ(s->as<float>()[0], 4.5f);
  EXPECT_EQ((*file)->Find("scalar")->shape.size(), 0u);

  EXPECT_EQ((*file)->Find("empty")->num_bytes, 0);
  EXPECT_EQ((*file)->Find("empty")->shape, (std::vector<int64_t>{0, 4}));
}

TEST(SafetensorsTest, ReadsHandWrittenReferenceLayout) {
  // As the Python reference writes it: unpadded offsets, metadata, trailing spaces.
  TempDir dir;
  const float a[2] = {1.0f, 2.0f};
  const uint16_t b[2] = {F32ToF16(3.0f), F32ToF16(-4.0f)};
  std::vector<uint8_t> data = Bytes(a, 8);
  const std::vector<uint8_t> b_bytes = Bytes(b, 4);
  data.insert(data.end(), b_bytes.begin(), b_bytes.end());
  auto file =
      OpenBytes(dir, RawFile(R"({"__metadata__":{"format":"pt"},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]}}    )",
                             data));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensor_names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_FLOAT_EQ((*file)->GetView("a")->as<float>()[1], 2.0f);
  EXPECT_FLOAT_EQ(F16ToF32((*file)->GetView("b")->as<uint16_t>()[1]), -4.0f);
}

TEST(SafetensorsTest, EmptyHeaderObjectIsValid) {
  TempDir dir;
  auto file = OpenBytes(dir, RawFile("{}"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensor_names().empty());
}

TEST(SafetensorsTest, MissingTensorIsNotFoundNamingIt) {
  TempDir dir;
  auto file = OpenBytes(dir, ValidFileBytes(dir));
  ASSERT_TRUE(file.ok()) << file.status();
  auto view = (*file)->GetView("model.missing.weight");
  EXPECT_EQ(view.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(view.status().message()), HasSubstr("model.missing.weight"));
  EXPECT_THAT(std::string(view.status().message()), HasSubstr("t.safetensors"));
}

TEST(SafetensorsTest, EveryTruncationFails) {
  TempDir dir;
  const std::vector<uint8_t> full = ValidFileBytes(dir);
  ASSERT_TRUE(OpenBytes(dir, full).ok());
  for (size_t cut = 0; cut < full.size(); ++cut) {
    const std::vector<uint8_t> prefix(full.begin(), full.begin() + cut);
    auto file = OpenBytes(dir, prefix);
    EXPECT_FALSE(file.ok()) << "prefix of " << cut << " bytes opened";
    if (!file.ok()) {
      EXPECT_THAT(std::string(file.status().message()), HasSubstr("t.safetensors"))
          << "cut " << cut;
    }
  }
}

TEST(SafetensorsTest, RandomCorruptionNeverCrashes) {
  TempDir dir;
  const std::vector<uint8_t> full = ValidFileBytes(dir);
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<uint8_t> bytes = full;
    const int num_flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < num_flips; ++i) bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    auto file = OpenBytes(dir, bytes);
    if (!file.ok()) continue;
    // Whatever opened must be readable in full without faults.
    for (const std::string& name : (*file)->tensor_names()) {
      const SafetensorsTensor* t = (*file)->Find(name);
      ASSERT_NE(t, nullptr);
      uint64_t sum = 0;
      for (int64_t j = 0; j < t->num_bytes; ++j) sum += t->data[j];
      (void)sum;
      (void)(*file)->GetView(name);
    }
  }
}

TEST(SafetensorsTest, FileShorterThanLength) { ExpectInvalid({1, 2, 3}, {"too short"}); }

TEST(SafetensorsTest, HeaderLengthPastEof) {
  std::vector<uint8_t> bytes = RawFile("{}");
  bytes[0] = 200;
  ExpectInvalid(bytes, {"header length 200", "past the end"});
  std::vector<uint8_t> huge(16, 0xFF);
  ExpectInvalid(huge, {"past the end"});
}

TEST(SafetensorsTest, InvalidJsonHeader) {
  ExpectInvalid(RawFile(R"({"a": {"dtype": "F32",)"), {"invalid JSON"});
  ExpectInvalid(RawFile("not json at all"), {"invalid JSON"});
  ExpectInvalid(RawFile(""), {"invalid JSON"});
  ExpectInvalid(RawFile("[1, 2]"), {"not a JSON object"});
  ExpectInvalid(RawFile(std::string("{\"x") + static_cast<char>(0xFF) + "\": 1}"),
                {"invalid JSON"});  // not UTF-8
}

TEST(SafetensorsTest, OffsetsOutOfRange) {
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::vector<uint8_t>(4)),
      {"tensor w", "outside the data region"});
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::vector<uint8_t>(8)),
      {"tensor w", "outside the data region"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
                        std::vector<uint8_t>(8)),
                {"tensor w", "data_offsets"});
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::vector<uint8_t>(8)),
      {"tensor w", "data_offsets"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[1],)"
                        R"("data_offsets":[18446744073709551612,18446744073709551615]}})",
                        std::vector<uint8_t>(8)),
                {"tensor w"});
}

TEST(SafetensorsTest, ShapeSizeMismatch) {
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
      {"tensor w", "needs 12"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})",
                        std::vector<uint8_t>(8)),
                {"tensor w", "needs 8"});
}

TEST(SafetensorsTest, BadDims) {
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                        std::vector<uint8_t>(4)),
                {"tensor w", "shape"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
                        std::vector<uint8_t>(4)),
                {"tensor w", "shape"});
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":"F32","shape":"4","data_offsets":[0,4]}})", std::vector<uint8_t>(4)),
      {"tensor w", "shape"});
  // Product overflows int64: must be rejected, not wrapped around to a small size.
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],)"
                        R"("data_offsets":[0,0]}})"),
                {"tensor w", "too large"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[9223372036854775807,2],)"
                        R"("data_offsets":[0,0]}})"),
                {"tensor w"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"F32","shape":[18446744073709551615],)"
                        R"("data_offsets":[0,0]}})"),
                {"tensor w", "shape"});
}

TEST(SafetensorsTest, UnknownDtype) {
  ExpectInvalid(RawFile(R"({"w":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,4]}})",
                        std::vector<uint8_t>(4)),
                {"tensor w", "Q4_K"});
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", std::vector<uint8_t>(4)),
      {"tensor w", "f32"});
  ExpectInvalid(
      RawFile(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", std::vector<uint8_t>(4)),
      {"tensor w", "dtype"});
}

TEST(SafetensorsTest, DuplicateNames) {
  ExpectInvalid(RawFile(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                        std::vector<uint8_t>(2)),
                {"repeats", "'w'"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})",
                        std::vector<uint8_t>(1)),
                {"repeats", "'dtype'"});
}

TEST(SafetensorsTest, OverlappingTensors) {
  ExpectInvalid(RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                        std::vector<uint8_t>(5)),
                {"overlap", "a", "b"});
}

TEST(SafetensorsTest, ManyTensorsAndLateOverlap) {
  // Enough tensors for the name table to grow several times while parsing.
  std::string header = "{";
  std::vector<uint8_t> data;
  for (int i = 0; i < 300; ++i) {
    header += "\"t" + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" +
              std::to_string(4 * i) + "," + std::to_string(4 * i + 4) + "]},";
    const float v = static_cast<float>(i);
    const std::vector<uint8_t> bytes = Bytes(&v, 4);
    data.insert(data.end(), bytes.begin(), bytes.end());
  }
  TempDir dir;
  auto file = OpenBytes(dir, RawFile(header.substr(0, header.size() - 1) + "}", data));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensor_names().size(), 300u);
  EXPECT_FLOAT_EQ((*file)->GetView("t299")->as<float>()[0], 299.0f);
  ExpectInvalid(
      RawFile(header + R"("late":{"dtype":"F32","shape":[2],"data_offsets":[400,408]}})", data),
      {"overlap", "late", "t100"});
}

TEST(SafetensorsTest, MalformedEntries) {
  ExpectInvalid(RawFile(R"({"w":{"dtype":"U8","shape":[1]}})", std::vector<uint8_t>(1)),
                {"tensor w", "data_offsets"});
  ExpectInvalid(RawFile(R"({"w":[1,2]})"), {"tensor w", "not a JSON object"});
  ExpectInvalid(RawFile(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}})",
                        std::vector<uint8_t>(1)),
                {"tensor w", "unknown field 'x'"});
  ExpectInvalid(RawFile(R"({"__metadata__":{"k":1}})"), {"__metadata__", "'k'"});
  ExpectInvalid(RawFile(R"({"__metadata__":[1]})"), {"__metadata__"});
}

TEST(SafetensorsTest, RankAboveFourHasNoView) {
  TempDir dir;
  auto file =
      OpenBytes(dir, RawFile(R"({"w":{"dtype":"U8","shape":[1,1,1,1,2],"data_offsets":[0,2]},)"
                             R"("f":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[4,8]}})",
                             std::vector<uint8_t>(8)));
  ASSERT_TRUE(file.ok()) << file.status();
  auto view = (*file)->GetView("f");
  EXPECT_EQ(view.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(view.status().message()), HasSubstr("rank 5"));
}

TEST(SafetensorsTest, DTypeNamesRoundTrip) {
  for (const char* name : {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
                           "I32", "U32", "F32", "F64", "I64", "U64"}) {
    auto dtype = ParseSafetensorsDType(name);
    ASSERT_TRUE(dtype.ok()) << name;
    EXPECT_STREQ(SafetensorsDTypeName(*dtype), name);
    EXPECT_GT(SafetensorsDTypeSize(*dtype), 0);
  }
  EXPECT_FALSE(ParseSafetensorsDType("Q8_0").ok());
  EXPECT_EQ(*ToHerdDType(SafetensorsDType::kBF16), DType::kBF16);
  EXPECT_FALSE(ToHerdDType(SafetensorsDType::kU8).ok());
  EXPECT_EQ(*FromHerdDType(DType::kF16), SafetensorsDType::kF16);
  EXPECT_FALSE(FromHerdDType(DType::kQ4_0).ok());
}

}  // namespace
}  // namespace herd
