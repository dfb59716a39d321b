#include "model/gguf_file.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf_writer.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::herd::testing::ReadFileBytes;
using ::herd::testing::TempDir;
using ::herd::testing::TestDataPath;
using ::herd::testing::WriteFileBytes;
using ::testing::HasSubstr;

template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

template <typename T>
void AppendLe(std::vector<uint8_t>* out, T value) {
  uint8_t bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->insert(out->end(), bytes, bytes + sizeof(T));
}

template <typename T>
void PatchLe(std::vector<uint8_t>* bytes, size_t pos, T value) {
  ASSERT_LE(pos + sizeof(T), bytes->size());
  std::memcpy(bytes->data() + pos, &value, sizeof(T));
}

// Position just past the name of tensor info `name` (where n_dims starts).
size_t TensorInfoPos(const std::vector<uint8_t>& bytes, const std::string& name) {
  std::vector<uint8_t> needle;
  AppendLe<uint64_t>(&needle, name.size());
  needle.insert(needle.end(), name.begin(), name.end());
  auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  EXPECT_NE(it, bytes.end()) << name;
  return static_cast<size_t>(it - bytes.begin()) + needle.size();
}

// A small valid file: a few keys and two F32 tensors.
GgufWriter SmallWriter() {
  GgufWriter w;
  w.AddString("general.architecture", "test");
  w.AddU32("test.count", 7);
  w.AddStringArray("test.names", {"a", "bb", "ccc"});
  EXPECT_TRUE(w.AddTensor("first", DType::kF32, {2, 4}, Bytes(std::vector<float>(8, 1.5f))).ok());
  EXPECT_TRUE(w.AddTensor("second", DType::kF32, {3}, Bytes(std::vector<float>{1, 2, 3})).ok());
  return w;
}

class GgufFileTest : public ::testing::Test {
 protected:
  std::string Write(const GgufWriter& writer, const std::string& name = "model.gguf") {
    const std::string path = dir_.Join(name);
    const absl::Status status = writer.WriteFile(path);
    EXPECT_TRUE(status.ok()) << status;
    return path;
  }
  std::string WriteBytes(const std::vector<uint8_t>& bytes, const std::string& name = "bad.gguf") {
    const std::string path = dir_.Join(name);
    WriteFileBytes(path, bytes);
    return path;
  }
  // Opens `path` expecting InvalidArgument whose message names the file and
  // contains `fragment`.
  void ExpectInvalid(const std::string& path, const std::string& fragment) {
    auto gguf = GgufFile::Open(path);
    ASSERT_FALSE(gguf.ok()) << "expected an error containing '" << fragment << "'";
    EXPECT_EQ(gguf.status().code(), absl::StatusCode::kInvalidArgument) << gguf.status();
    EXPECT_THAT(gguf.status().message(), HasSubstr(path));
    EXPECT_THAT(gguf.status().message(), HasSubstr(fragment));
  }

  TempDir dir_;
};

TEST_F(GgufFileTest, OpensLlamaCppFixture) {
  for (const auto& [file, expert_dtype] :
       std::vector<std::pair<std::string, DType>>{{"tiny-f32.gguf", DType::kF32},
                                                  {"tiny-q8_0.gguf", DType::kQ8_0},
                                                  {"tiny-q4_0.gguf", DType::kQ4_0}}) {
    SCOPED_TRACE(file);
    const std::string path = TestDataPath("llamacpp-tiny/" + file);
    auto gguf_or = GgufFile::Open(path);
    ASSERT_TRUE(gguf_or.ok()) << gguf_or.status();
    const GgufFile& gguf = **gguf_or;
    EXPECT_EQ(gguf.version(), 3u);
    EXPECT_EQ(gguf.alignment(), 32u);
    EXPECT_EQ(gguf.data_offset() % 32, 0u);
    EXPECT_EQ(*gguf.GetString("general.architecture"), "llama");
    EXPECT_EQ(*gguf.GetU32("llama.expert_count"), 8u);
    EXPECT_EQ(*gguf.GetI64("llama.block_count"), 2);
    EXPECT_FLOAT_EQ(*gguf.GetF32("llama.rope.freq_base"), 10000.0f);
    EXPECT_FLOAT_EQ(*gguf.GetF32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
    EXPECT_EQ(*gguf.GetString("tokenizer.ggml.model"), "none");
    EXPECT_EQ(gguf.tensors().size(), 23u);

    auto embd = gguf.GetView("token_embd.weight");
    ASSERT_TRUE(embd.ok()) << embd.status();
    EXPECT_EQ(embd->DebugString(), "F32 [512, 64]");
    auto gate = gguf.GetView("blk.1.ffn_gate_exps.weight");
    ASSERT_TRUE(gate.ok()) << gate.status();
    EXPECT_EQ(gate->dtype(), expert_dtype);
    EXPECT_EQ(gate->rank(), 3);
    EXPECT_EQ(gate->dim(0), 8);
    EXPECT_EQ(gate->dim(1), 128);
    EXPECT_EQ(gate->dim(2), 64);
    auto down = gguf.GetView("blk.0.ffn_down_exps.weight");
    ASSERT_TRUE(down.ok());
    EXPECT_EQ(down->dim(1), 64);
    EXPECT_EQ(down->dim(2), 128);

    // The tensors tile the data section up to the end of the file.
    uint64_t data_end = 0;
    for (const GgufTensorInfo& t : gguf.tensors()) {
      ASSERT_TRUE(t.num_bytes.has_value()) << t.name;
      data_end = std::max(data_end, gguf.data_offset() + t.offset + *t.num_bytes);
    }
    EXPECT_EQ(data_end, ReadFileBytes(path).size());
  }
}

TEST_F(GgufFileTest, WriterRoundTripsEveryValueTypeAndDType) {
  GgufWriter w;
  w.AddU8("k.u8", 200);
  w.AddI8("k.i8", -100);
  w.AddU16("k.u16", 60000);
  w.AddI16("k.i16", -30000);
  w.AddU32("k.u32", 4000000000u);
  w.AddI32("k.i32", -2000000000);
  w.AddF32("k.f32", 0.25f);
  w.AddBool("k.bool", true);
  w.AddString("k.string", "hello");
  w.AddU64("k.u64", 1ull << 40);
  w.AddI64("k.i64", -(1ll << 40));
  w.AddF64("k.f64", 1e-300);
  w.AddStringArray("k.strings", {"x", "", "yz"});
  w.AddI32Array("k.i32s", {1, -2, 3});
  w.AddF32Array("k.f32s", {0.5f, -1.5f});
  // [[1, 2], []] as an array of u16 arrays.
  std::vector<uint8_t> nested;
  AppendLe<uint32_t>(&nested, static_cast<uint32_t>(GgufType::kArray));
  AppendLe<uint64_t>(&nested, 2);
  AppendLe<uint32_t>(&nested, static_cast<uint32_t>(GgufType::kU16));
  AppendLe<uint64_t>(&nested, 2);
  AppendLe<uint16_t>(&nested, 1);
  AppendLe<uint16_t>(&nested, 2);
  AppendLe<uint32_t>(&nested, static_cast<uint32_t>(GgufType::kU16));
  AppendLe<uint64_t>(&nested, 0);
  w.AddRawValue("k.nested", static_cast<uint32_t>(GgufType::kArray), nested);
  w.AddU32("k.replaced", 1);
  w.AddU32("k.replaced", 2);

  struct Case {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"f32", DType::kF32, {3, 5}},
      {"f16", DType::kF16, {7}},
      {"bf16", DType::kBF16, {2, 2, 2}},
      {"q8_0", DType::kQ8_0, {3, 64}},
      {"q4_0", DType::kQ4_0, {2, 1, 1, 32}},
      {"q4_1", DType::kQ4_1, {4, 32}},
      {"i32", DType::kI32, {5}},
      {"empty", DType::kF32, {0, 4}},
  };
  std::vector<std::vector<uint8_t>> payloads;
  for (const Case& c : cases) {
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    std::vector<uint8_t> bytes(n / BlockSize(c.dtype) * BlockBytes(c.dtype));
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 37 + 11);
    payloads.push_back(bytes);
    ASSERT_TRUE(w.AddTensor(c.name, c.dtype, c.shape, bytes).ok()) << c.name;
  }
  const std::string path = Write(w);

  auto gguf_or = GgufFile::Open(path);
  ASSERT_TRUE(gguf_or.ok()) << gguf_or.status();
  const GgufFile& g = **gguf_or;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.metadata_keys().size(), 17u);
  EXPECT_EQ(g.metadata_keys().front(), "k.u8");
  EXPECT_EQ(*g.GetU32("k.u8"), 200u);
  EXPECT_EQ(*g.GetI32("k.i8"), -100);
  EXPECT_EQ(*g.GetU32("k.u16"), 60000u);
  EXPECT_EQ(*g.GetI32("k.i16"), -30000);
  EXPECT_EQ(*g.GetU32("k.u32"), 4000000000u);
  EXPECT_EQ(*g.GetI64("k.u32"), 4000000000ll);
  EXPECT_EQ(*g.GetI32("k.i32"), -2000000000);
  EXPECT_EQ(*g.GetF32("k.f32"), 0.25f);
  EXPECT_EQ(*g.GetBool("k.bool"), true);
  EXPECT_EQ(*g.GetString("k.string"), "hello");
  EXPECT_EQ(*g.GetU64("k.u64"), 1ull << 40);
  EXPECT_EQ(*g.GetI64("k.i64"), -(1ll << 40));
  EXPECT_EQ(*g.GetF64("k.f64"), 1e-300);
  EXPECT_EQ(*g.GetF64("k.u32"), 4e9);  // integers read as numbers
  EXPECT_EQ(*g.GetStringArray("k.strings"), (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(*g.GetI64Array("k.i32s"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*g.GetF32Array("k.f32s"), (std::vector<float>{0.5f, -1.5f}));
  EXPECT_EQ(*g.GetF32Array("k.i32s"), (std::vector<float>{1, -2, 3}));
  EXPECT_EQ(*g.GetU32("k.replaced"), 2u);

  auto nested_or = g.GetArray("k.nested");
  ASSERT_TRUE(nested_or.ok()) << nested_or.status();
  const GgufValue& n = **nested_or;
  EXPECT_EQ(n.element_type(), GgufType::kArray);
  ASSERT_EQ(n.array_size(), 2u);
  EXPECT_EQ(n.element(0).array_size(), 2u);
  EXPECT_EQ(n.element(0).element_type(), GgufType::kU16);
  EXPECT_EQ(*n.element(0).element(1).AsInt64(), 2);
  EXPECT_EQ(n.element(1).array_size(), 0u);
  EXPECT_EQ(n.DebugString(), "[[1, 2], []]");

  ASSERT_EQ(g.tensors().size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(c.name);
    const GgufTensorInfo* info = g.FindTensor(c.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->ggml_type, GgmlTypeFromDType(c.dtype));
    EXPECT_EQ(info->offset % 32, 0u);
    auto view = g.GetView(c.name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->dtype(), c.dtype);
    ASSERT_EQ(view->rank(), static_cast<int>(c.shape.size()));
    for (int d = 0; d < view->rank(); ++d) EXPECT_EQ(view->dim(d), c.shape[d]);
    EXPECT_EQ(info->ne[0], c.shape.back());  // ggml order is reversed
    ASSERT_EQ(static_cast<size_t>(view->num_bytes()), payloads[i].size());
    if (!payloads[i].empty()) {
      EXPECT_EQ(std::memcmp(view->data(), payloads[i].data(), payloads[i].size()), 0);
    }
  }
}

// AddValue writes a value read from one file as that file stored it: a file
// of every type, extremes included, copied key by key is the same bytes.
TEST_F(GgufFileTest, WriterCopiesEveryValueVerbatim) {
  GgufWriter original;
  original.AddU8("k.u8", 255);
  original.AddI8("k.i8", -128);
  original.AddU16("k.u16", 65535);
  original.AddI16("k.i16", -32768);
  original.AddU32("k.u32", 4294967295u);
  original.AddI32("k.i32", -2147483647 - 1);
  original.AddF32("k.f32", -0.0f);
  original.AddF32("k.f32.tiny", 1e-45f);  // subnormal
  original.AddBool("k.false", false);
  original.AddBool("k.true", true);
  original.AddString("k.string", std::string("nul\0inside \xe2\x82\xac", 15));
  original.AddU64("k.u64", ~0ull);
  original.AddI64("k.i64", std::numeric_limits<int64_t>::min());
  original.AddF64("k.f64", -1e308);
  original.AddStringArray("k.strings", {"x", "", "yz"});
  original.AddStringArray("k.no.strings", {});
  original.AddI32Array("k.i32s", {1, -2, std::numeric_limits<int32_t>::min()});
  original.AddF32Array("k.f32s", {0.5f, -1.5f, 3e38f});
  std::vector<uint8_t> nested;  // [[-1, 2], []] as i16 arrays
  AppendLe<uint32_t>(&nested, static_cast<uint32_t>(GgufType::kArray));
  AppendLe<uint64_t>(&nested, 2);
  AppendLe<uint32_t>(&nested, static_cast<uint32_t>(GgufType::kI16));
  AppendLe<uint64_t>(&nested, 2);
  AppendLe<int16_t>(&nested, -1);
  AppendLe<int16_t>(&nested, 2);
  AppendLe<uint32_t>(&nested, static_cast<uint32_t>(GgufType::kI16));
  AppendLe<uint64_t>(&nested, 0);
  original.AddRawValue("k.nested", static_cast<uint32_t>(GgufType::kArray), nested);
  std::vector<uint8_t> bools;  // [true, false] as a bool array
  AppendLe<uint32_t>(&bools, static_cast<uint32_t>(GgufType::kBool));
  AppendLe<uint64_t>(&bools, 2);
  AppendLe<uint8_t>(&bools, 1);
  AppendLe<uint8_t>(&bools, 0);
  original.AddRawValue("k.bools", static_cast<uint32_t>(GgufType::kArray), bools);
  const std::string original_path = Write(original, "original.gguf");

  auto read = GgufFile::Open(original_path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ((*read)->metadata_keys().size(), 20u);
  GgufWriter copy;
  for (const std::string& key : (*read)->metadata_keys()) {
    copy.AddValue(key, *(*read)->FindValue(key));
  }
  EXPECT_EQ(ReadFileBytes(Write(copy, "copy.gguf")), ReadFileBytes(original_path));
}

TEST_F(GgufFileTest, GettersReportMissingKeysAndTypeMismatches) {
  GgufWriter w = SmallWriter();
  w.AddI32("test.negative", -1);
  w.AddU64("test.huge", std::numeric_limits<uint64_t>::max());
  w.AddU8("test.flag_as_u8", 1);
  const std::string path = Write(w);
  auto gguf_or = GgufFile::Open(path);
  ASSERT_TRUE(gguf_or.ok()) << gguf_or.status();
  const GgufFile& g = **gguf_or;

  const absl::Status missing = g.GetU32("test.nope").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr(path));
  EXPECT_THAT(missing.message(), HasSubstr("test.nope"));

  for (const absl::Status& s :
       {g.GetString("test.count").status(), g.GetU32("test.negative").status(),
        g.GetU64("test.negative").status(), g.GetI64("test.huge").status(),
        g.GetU32("general.architecture").status(), g.GetF32("general.architecture").status(),
        g.GetBool("test.flag_as_u8").status(), g.GetArray("test.count").status(),
        g.GetStringArray("test.count").status(), g.GetI64Array("test.names").status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(path));
    EXPECT_THAT(s.message(), HasSubstr("metadata key '")) << s;
  }
  EXPECT_THAT(g.GetString("test.count").status().message(), HasSubstr("u32"));
  EXPECT_EQ(*g.GetU64("test.huge"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(g.GetView("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(GgufFileTest, HonoursGeneralAlignment) {
  GgufWriter w(128);
  w.AddString("general.architecture", "test");
  ASSERT_TRUE(w.AddTensor("a", DType::kF32, {3}, Bytes(std::vector<float>{1, 2, 3})).ok());
  ASSERT_TRUE(w.AddTensor("b", DType::kF32, {2}, Bytes(std::vector<float>{4, 5})).ok());
  const std::string path = Write(w);
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  EXPECT_EQ((*gguf)->alignment(), 128u);
  EXPECT_EQ(*(*gguf)->GetU32("general.alignment"), 128u);
  EXPECT_EQ((*gguf)->data_offset() % 128, 0u);
  EXPECT_EQ((*gguf)->FindTensor("b")->offset, 128u);
  auto b = (*gguf)->GetView("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->as<float>()[1], 5.0f);

  // A file whose offsets follow 32 but which claims 64 has misaligned tensors.
  GgufWriter lying;
  lying.AddU32("general.alignment", 64);
  ASSERT_TRUE(lying.AddTensor("a", DType::kF32, {3}, Bytes(std::vector<float>{1, 2, 3})).ok());
  ASSERT_TRUE(lying.AddTensor("b", DType::kF32, {2}, Bytes(std::vector<float>{4, 5})).ok());
  ExpectInvalid(Write(lying, "lying.gguf"),
                "'b' has data offset 32, not a multiple of the "
                "alignment 64");

  GgufWriter bad;
  bad.AddU32("general.alignment", 3);
  ExpectInvalid(Write(bad, "bad_alignment.gguf"), "general.alignment");
  GgufWriter zero;
  zero.AddU32("general.alignment", 0);
  ExpectInvalid(Write(zero, "zero_alignment.gguf"), "general.alignment");
  GgufWriter wrong_type;
  wrong_type.AddString("general.alignment", "32");
  ExpectInvalid(Write(wrong_type, "string_alignment.gguf"), "general.alignment");
}

TEST_F(GgufFileTest, EveryTruncationOfTheFixtureIsAnError) {
  const std::string source = TestDataPath("llamacpp-tiny/tiny-q4_0.gguf");
  const std::vector<uint8_t> bytes = ReadFileBytes(source);
  auto full = GgufFile::Open(source);
  ASSERT_TRUE(full.ok()) << full.status();
  uint64_t data_end = (*full)->data_offset();
  for (const GgufTensorInfo& t : (*full)->tensors()) {
    data_end = std::max(data_end, (*full)->data_offset() + t.offset + *t.num_bytes);
  }
  // Every cut in the header and the start of the data, then a spread of cuts
  // through the data, and the last byte of the last tensor.
  std::vector<size_t> cuts;
  for (size_t n = 0; n <= (*full)->data_offset() + 64; ++n) cuts.push_back(n);
  for (size_t n = (*full)->data_offset() + 65; n < data_end; n += 4099) cuts.push_back(n);
  cuts.push_back(data_end - 1);
  const std::string path = dir_.Join("cut.gguf");
  for (size_t n : cuts) {
    WriteFileBytes(path, bytes.data(), n);
    auto gguf = GgufFile::Open(path);
    ASSERT_FALSE(gguf.ok()) << "prefix of " << n << " bytes opened";
    EXPECT_EQ(gguf.status().code(), absl::StatusCode::kInvalidArgument) << gguf.status();
    EXPECT_THAT(gguf.status().message(), HasSubstr(path)) << n;
  }
}

TEST_F(GgufFileTest, RejectsBadMagicAndVersion) {
  std::vector<uint8_t> bytes = ReadFileBytes(Write(SmallWriter()));
  std::vector<uint8_t> magic = bytes;
  magic[0] = 'X';
  ExpectInvalid(WriteBytes(magic), "not a GGUF file");
  for (uint32_t version : {0u, 1u, 4u, 0x03000000u, 0xFFFFFFFFu}) {
    std::vector<uint8_t> v = bytes;
    PatchLe<uint32_t>(&v, 4, version);
    ExpectInvalid(WriteBytes(v), absl::StrCat("unsupported GGUF version ", version));
  }
  std::vector<uint8_t> v2 = bytes;
  PatchLe<uint32_t>(&v2, 4, 2);
  EXPECT_TRUE(GgufFile::Open(WriteBytes(v2, "v2.gguf")).ok());
  ExpectInvalid(WriteBytes({}, "empty.gguf"), "truncated");
  ExpectInvalid(WriteBytes({'G', 'G'}, "short.gguf"), "truncated");
}

TEST_F(GgufFileTest, RejectsAbsurdCountsAndLengths) {
  const std::vector<uint8_t> bytes = ReadFileBytes(Write(SmallWriter()));
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, 8, 1ull << 60);  // tensor count
    ExpectInvalid(WriteBytes(b), "tensors");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, 16, std::numeric_limits<uint64_t>::max());  // metadata count
    ExpectInvalid(WriteBytes(b), "metadata entries");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, 24, std::numeric_limits<uint64_t>::max() - 3);  // first key length
    ExpectInvalid(WriteBytes(b), "key");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, TensorInfoPos(b, "first") - 13, 1ull << 62);  // a tensor name length
    ExpectInvalid(WriteBytes(b), "name");
  }
  {
    // A string array claiming 2^61 elements.
    GgufWriter w;
    std::vector<uint8_t> value;
    AppendLe<uint32_t>(&value, static_cast<uint32_t>(GgufType::kString));
    AppendLe<uint64_t>(&value, 1ull << 61);
    w.AddRawValue("test.array", static_cast<uint32_t>(GgufType::kArray), value);
    ExpectInvalid(Write(w, "array.gguf"), "'test.array': array of 2305843009213693952 string");
  }
  {
    // A u64 array whose byte size would overflow.
    GgufWriter w;
    std::vector<uint8_t> value;
    AppendLe<uint32_t>(&value, static_cast<uint32_t>(GgufType::kU64));
    AppendLe<uint64_t>(&value, std::numeric_limits<uint64_t>::max() / 4);
    w.AddRawValue("test.array", static_cast<uint32_t>(GgufType::kArray), value);
    ExpectInvalid(Write(w, "array64.gguf"), "'test.array'");
  }
  {
    GgufWriter w;
    std::vector<uint8_t> value;
    AppendLe<uint64_t>(&value, 1000);  // string length with 3 bytes behind it
    value.insert(value.end(), {'a', 'b', 'c'});
    w.AddRawValue("test.string", static_cast<uint32_t>(GgufType::kString), value);
    ExpectInvalid(Write(w, "string.gguf"), "'test.string'");
  }
}

TEST_F(GgufFileTest, RejectsMalformedValues) {
  {
    GgufWriter w;
    w.AddRawValue("test.weird", 13, {1, 2, 3, 4});
    ExpectInvalid(Write(w, "type.gguf"), "'test.weird' has unknown value type 13");
  }
  {
    GgufWriter w;
    std::vector<uint8_t> value;
    AppendLe<uint32_t>(&value, 77);
    AppendLe<uint64_t>(&value, 0);
    w.AddRawValue("test.array", static_cast<uint32_t>(GgufType::kArray), value);
    ExpectInvalid(Write(w, "elem.gguf"), "unknown element type 77");
  }
  {
    // 20 nested array headers, the innermost empty.
    GgufWriter w;
    std::vector<uint8_t> value;
    for (int i = 0; i < 19; ++i) {
      AppendLe<uint32_t>(&value, static_cast<uint32_t>(GgufType::kArray));
      AppendLe<uint64_t>(&value, 1);
    }
    AppendLe<uint32_t>(&value, static_cast<uint32_t>(GgufType::kU8));
    AppendLe<uint64_t>(&value, 0);
    w.AddRawValue("test.deep", static_cast<uint32_t>(GgufType::kArray), value);
    ExpectInvalid(Write(w, "deep.gguf"), "nested deeper");
  }
  {
    // Duplicate key: write two keys, then rename the second onto the first.
    GgufWriter w;
    w.AddU32("test.aaaa", 1);
    w.AddU32("test.bbbb", 2);
    std::vector<uint8_t> b = ReadFileBytes(Write(w, "dup_src.gguf"));
    const std::string second = "test.bbbb";
    auto it = std::search(b.begin(), b.end(), second.begin(), second.end());
    ASSERT_NE(it, b.end());
    std::memcpy(&*it, "test.aaaa", 9);
    ExpectInvalid(WriteBytes(b, "dup.gguf"), "'test.aaaa' appears twice");
  }
}

TEST_F(GgufFileTest, RejectsMalformedTensorInfos) {
  const std::vector<uint8_t> bytes = ReadFileBytes(Write(SmallWriter()));
  const size_t first = TensorInfoPos(bytes, "first");    // 2 dims
  const size_t second = TensorInfoPos(bytes, "second");  // 1 dim
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint32_t>(&b, first, 5);
    ExpectInvalid(WriteBytes(b), "tensor 'first' has 5 dimensions");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint32_t>(&b, first, 0xFFFFFFFFu);
    ExpectInvalid(WriteBytes(b), "tensor 'first'");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, first + 4, 1ull << 40);
    PatchLe<uint64_t>(&b, first + 12, 1ull << 40);
    ExpectInvalid(WriteBytes(b), "'first' has dims [1099511627776, 1099511627776] whose product");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, first + 4, std::numeric_limits<uint64_t>::max());
    ExpectInvalid(WriteBytes(b), "'first' has dimension 0");
  }
  {
    // Data past the end of the file: the second tensor moved far out.
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, second + 4 + 8 + 4, 1ull << 40);
    ExpectInvalid(WriteBytes(b),
                  "tensor 'second' (F32 [3], 12 bytes at data offset "
                  "1099511627776) extends past the end of the file");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, second + 4 + 8 + 4, std::numeric_limits<uint64_t>::max() - 31);
    ExpectInvalid(WriteBytes(b), "'second'");
  }
  {
    // Grow the second tensor so it runs past the end.
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, second + 4, 1000);
    ExpectInvalid(WriteBytes(b), "'second'");
  }
  {
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, second + 4 + 8 + 4, 4);
    ExpectInvalid(WriteBytes(b), "'second' has data offset 4, not a multiple of the alignment 32");
  }
  {
    // Overlapping tensors are fine: point the second at the first's data.
    std::vector<uint8_t> b = bytes;
    PatchLe<uint64_t>(&b, second + 4 + 8 + 4, 0);
    auto gguf = GgufFile::Open(WriteBytes(b, "overlap.gguf"));
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    EXPECT_EQ((*gguf)->GetView("second")->as<float>()[0], 1.5f);
  }
  {
    // Duplicate names: write two equal-length names, then rename one.
    GgufWriter w;
    ASSERT_TRUE(w.AddTensor("aaaa", DType::kF32, {1}, Bytes(std::vector<float>{1})).ok());
    ASSERT_TRUE(w.AddTensor("bbbb", DType::kF32, {1}, Bytes(std::vector<float>{2})).ok());
    std::vector<uint8_t> d = ReadFileBytes(Write(w, "dup_tensor_src.gguf"));
    std::memcpy(d.data() + TensorInfoPos(d, "bbbb") - 4, "aaaa", 4);
    ExpectInvalid(WriteBytes(d, "dup_tensor.gguf"), "tensor 'aaaa' appears twice");
  }
  {
    GgufWriter w;
    ASSERT_TRUE(w.AddRawTensor("q8", kGgmlTypeQ8_0, {33}, std::vector<uint8_t>(68)).ok());
    ExpectInvalid(Write(w, "block.gguf"), "'q8' of type Q8_0 has row length ne[0] = 33");
  }
}

TEST_F(GgufFileTest, UnsupportedTensorTypesOpenButHaveNoView) {
  GgufWriter w;
  ASSERT_TRUE(w.AddRawTensor("blk.0.k_quant", 12, {256, 2}, std::vector<uint8_t>(2 * 144)).ok());
  ASSERT_TRUE(w.AddRawTensor("mystery", 99, {4}, std::vector<uint8_t>(16)).ok());
  const std::string path = Write(w);
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  const GgufTensorInfo* k = (*gguf)->FindTensor("blk.0.k_quant");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->num_bytes, 288u);
  EXPECT_EQ(std::string(GgmlTypeName(12)), "Q4_K");
  const absl::Status s = (*gguf)->GetView("blk.0.k_quant").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("tensor 'blk.0.k_quant' has unsupported type 12 (Q4_K)"));
  EXPECT_FALSE((*gguf)->FindTensor("mystery")->num_bytes.has_value());
  EXPECT_THAT((*gguf)->GetView("mystery").status().message(),
              HasSubstr("unsupported type 99 (unknown ggml type)"));

  // A known-size unsupported tensor is still bounds-checked.
  GgufWriter short_data;
  ASSERT_TRUE(short_data.AddRawTensor("k", 12, {256, 4}, std::vector<uint8_t>(144)).ok());
  ExpectInvalid(Write(short_data, "short_k.gguf"), "tensor 'k' (Q4_K [256, 4]");
}

TEST_F(GgufFileTest, WriterValidatesTensors) {
  GgufWriter w;
  EXPECT_FALSE(w.AddTensor("x", DType::kF32, {2, 2}, std::vector<uint8_t>(15)).ok());
  EXPECT_FALSE(w.AddTensor("x", DType::kQ8_0, {2, 16}, std::vector<uint8_t>(34)).ok());
  EXPECT_FALSE(w.AddTensor("x", DType::kF32, {}, std::vector<uint8_t>(4)).ok());
  EXPECT_FALSE(w.AddTensor("x", DType::kF32, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4)).ok());
  EXPECT_FALSE(w.AddTensor("x", DType::kF32, {-1}, std::vector<uint8_t>()).ok());
  EXPECT_TRUE(w.AddTensor("x", DType::kF32, {1}, std::vector<uint8_t>(4)).ok());
  EXPECT_FALSE(w.AddTensor("x", DType::kF32, {1}, std::vector<uint8_t>(4)).ok());
  EXPECT_FALSE(w.WriteFile(dir_.Join("no/such/dir/x.gguf")).ok());
}

}  // namespace
}  // namespace herd
