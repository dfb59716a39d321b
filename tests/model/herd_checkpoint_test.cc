// Herd's checkpoint (model/herd_checkpoint_writer.h, model/herd_manifest.h,
// the herd.json path of model/hf_loader.cc): values survive the round trip,
// chosen formats are what round-to-nearest gives, and every kind of damage
// (a flipped byte, a truncated file, a herd.json that disagrees with the
// tensors, a version from the future) is a clear error naming the file and
// tensor. Writing never leaves a partial checkpoint behind.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "gtest/gtest.h"
#include "model/herd_checkpoint_writer.h"
#include "model/herd_manifest.h"
#include "model/hf_loader.h"
#include "model/model_loader.h"
#include "model/safetensors_file.h"
#include "model/synth.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using testing::ReadFileText;
using testing::TempDir;
using testing::WriteFileText;

const QuantFormat kExpertFormat{4, false, 64, DType::kBF16};

class HerdCheckpointTest : public ::testing::Test {
 protected:
  // A small synthetic model in `dtype`, loaded.
  std::unique_ptr<Model> Source(DType dtype) {
    SynthOptions o;
    o.num_layers = 2;
    o.hidden_size = 128;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.num_experts = 4;
    o.expert_ffn_size = 192;
    o.vocab_size = 256;
    o.dtype = dtype;
    o.seed = 9;
    const std::string path = dir_.Join(std::string("source-") + DTypeName(dtype) + ".gguf");
    EXPECT_TRUE(SynthesizeModel(o, path).ok());
    auto model = LoadModel(path);
    EXPECT_TRUE(model.ok()) << model.status();
    return std::move(*model);
  }

  // Writes `model` with its experts in kExpertFormat; returns the directory.
  std::string WriteQuantizedExperts(const Model& model, const std::string& name) {
    HerdCheckpointOptions options;
    options.choose_format = [](const WeightInfo& w) -> std::optional<QuantFormat> {
      if (w.module == ModuleKind::kExperts) return kExpertFormat;
      return std::nullopt;
    };
    const std::string out = dir_.Join(name);
    const absl::Status written = WriteHerdCheckpoint(model, options, out);
    EXPECT_TRUE(written.ok()) << written;
    return out;
  }

  // Byte offset in `file` of tensor `name`'s data.
  static int64_t OffsetOf(const std::string& file, const std::string& name) {
    auto map = MappedFile::Open(file);
    EXPECT_TRUE(map.ok());
    auto parsed = SafetensorsFile::Parse(map->get());
    EXPECT_TRUE(parsed.ok());
    const SafetensorsTensor* t = (*parsed)->Find(name);
    EXPECT_NE(t, nullptr) << name;
    return t->data - (*map)->data();
  }

  static void FlipByte(const std::string& file, int64_t offset) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(offset);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(offset);
    f.write(&c, 1);
  }

  static void EditManifest(const std::string& dir,
                           const std::function<void(nlohmann::json&)>& edit) {
    const std::string path = dir + "/herd.json";
    nlohmann::json manifest = nlohmann::json::parse(ReadFileText(path));
    edit(manifest);
    WriteFileText(path, manifest.dump(2));
  }

  TempDir dir_;
};

const char kExpertWeight[] = "model.layers.1.block_sparse_moe.experts.2.w1.weight";

TEST_F(HerdCheckpointTest, UnquantizedWeightsKeepTheirValuesExactly) {
  for (DType dtype : {DType::kF16, DType::kQ8_0, DType::kQ4_0}) {
    SCOPED_TRACE(DTypeName(dtype));
    const std::unique_ptr<Model> source = Source(dtype);
    const std::string out = dir_.Join(std::string("plain-") + DTypeName(dtype));
    ASSERT_TRUE(WriteHerdCheckpoint(*source, {}, out).ok());
    auto loaded = LoadModel(out);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->format, "herd");
    // An expert's rows, dequantized, are the source's rows.
    const TensorView& a = source->layers[1].experts[2].down;
    const TensorView& b = (*loaded)->layers[1].experts[2].down;
    ASSERT_EQ(b.dtype(), dtype == DType::kF16 ? DType::kF16 : DType::kQuant);
    std::vector<float> ra(a.dim(1)), rb(b.dim(1));
    for (int64_t r = 0; r < a.dim(0); r += 7) {
      DequantizeRow(a.dtype(), a.row(r), ra.data(), a.dim(1));
      if (b.dtype() == DType::kQuant) {
        DequantizeQuantizedRow(b.quant_format(), b.quantized(), b.dim(1), r, rb.data());
      } else {
        DequantizeRow(b.dtype(), b.row(r), rb.data(), b.dim(1));
      }
      ASSERT_EQ(ra, rb) << "row " << r;
    }
  }
}

TEST_F(HerdCheckpointTest, ChosenFormatHoldsRoundToNearestOfTheSource) {
  const std::unique_ptr<Model> source = Source(DType::kF32);
  const std::string out = WriteQuantizedExperts(*source, "q");
  auto loaded = LoadModel(out);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const TensorView& src = source->layers[1].experts[2].gate;
  const TensorView& q = (*loaded)->layers[1].experts[2].gate;
  ASSERT_EQ(q.dtype(), DType::kQuant);
  EXPECT_EQ(q.quant_format(), kExpertFormat);
  const int64_t rows = src.dim(0), cols = src.dim(1);
  const QuantizedMatrixSizes sizes = QuantizedSizes(kExpertFormat, rows, cols);
  std::vector<uint8_t> codes(sizes.codes);
  std::vector<uint16_t> scales(sizes.scales / 2), mins(sizes.mins / 2);
  QuantizeMatrixRtn(kExpertFormat, src.as<float>(), rows, cols, codes.data(), scales.data(),
                    mins.data());
  EXPECT_EQ(std::memcmp(q.quantized().codes, codes.data(), codes.size()), 0);
  EXPECT_EQ(std::memcmp(q.quantized().scales, scales.data(), sizes.scales), 0);
  EXPECT_EQ(std::memcmp(q.quantized().mins, mins.data(), sizes.mins), 0);
  // Attention was not chosen: it stays F32.
  EXPECT_EQ((*loaded)->layers[0].o.weight.dtype(), DType::kF32);
  const nlohmann::json manifest = nlohmann::json::parse(ReadFileText(out + "/herd.json"));
  EXPECT_EQ(manifest["quantized"][kExpertWeight]["format"], "int4-g64-asym-bf16");
}

TEST_F(HerdCheckpointTest, FlippedByteIsDataLossNamingTheTensor) {
  const std::string out = WriteQuantizedExperts(*Source(DType::kF32), "q");
  const std::string file = out + "/model.safetensors";
  const std::string codes = QuantizedCodesName(kExpertWeight);
  FlipByte(file, OffsetOf(file, codes) + 100);
  const auto loaded = LoadModel(out);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
  EXPECT_NE(loaded.status().message().find(codes), std::string::npos) << loaded.status();
  EXPECT_NE(loaded.status().message().find("model.safetensors"), std::string::npos);

  // A rank that does not hold that expert never reads it, so it loads.
  ModelLoadOptions others;
  others.load_expert = [](int layer, int expert) { return !(layer == 1 && expert == 2); };
  const auto partial = LoadModel(out, others);
  EXPECT_TRUE(partial.ok()) << partial.status();
}

TEST_F(HerdCheckpointTest, TruncatedTensorFileIsAnErrorNamingIt) {
  const std::string out = WriteQuantizedExperts(*Source(DType::kF32), "q");
  const std::string file = out + "/model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) / 2);
  const auto loaded = LoadModel(out);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("model.safetensors"), std::string::npos)
      << loaded.status();
}

TEST_F(HerdCheckpointTest, ManifestThatDisagreesWithTheTensorsIsRefused) {
  const std::unique_ptr<Model> source = Source(DType::kF32);
  struct Damage {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    absl::StatusCode code;
    const char* message;
  };
  const std::vector<Damage> damages = {
      {"missing checksum", [](nlohmann::json& m) { m["tensors"].erase("model.norm.weight"); },
       absl::StatusCode::kInvalidArgument, "model.norm.weight"},
      {"listed but absent",
       [](nlohmann::json& m) {
         m["tensors"]["ghost.weight"] = {{"checksum", "crc32c:00000000"}};
       },
       absl::StatusCode::kInvalidArgument, "ghost.weight"},
      {"wrong checksum",
       [](nlohmann::json& m) { m["tensors"]["model.norm.weight"]["checksum"] = "crc32c:00000001"; },
       absl::StatusCode::kDataLoss, "model.norm.weight"},
      {"bad checksum spelling",
       [](nlohmann::json& m) { m["tensors"]["model.norm.weight"]["checksum"] = "md5:abc"; },
       absl::StatusCode::kInvalidArgument, "crc32c"},
      {"future version", [](nlohmann::json& m) { m["version"] = 99; },
       absl::StatusCode::kUnimplemented, "version 99"},
      {"unknown format",
       [](nlohmann::json& m) { m["quantized"][kExpertWeight]["format"] = "int5-g64-asym-bf16"; },
       absl::StatusCode::kInvalidArgument, kExpertWeight},
      {"format that does not match the stored bytes",
       [](nlohmann::json& m) { m["quantized"][kExpertWeight]["format"] = "int8-g64-asym-bf16"; },
       absl::StatusCode::kInvalidArgument, "bytes"},
      {"wrong shape",
       [](nlohmann::json& m) {
         m["quantized"][kExpertWeight]["shape"] = {64, 128};
       },
       absl::StatusCode::kInvalidArgument, kExpertWeight},
      {"not a herd manifest", [](nlohmann::json& m) { m["format"] = "other"; },
       absl::StatusCode::kInvalidArgument, "format"},
  };
  for (const Damage& d : damages) {
    SCOPED_TRACE(d.what);
    const std::string out = WriteQuantizedExperts(*source, std::string("d-") + d.what);
    EditManifest(out, d.edit);
    const auto loaded = LoadModel(out);
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), d.code) << loaded.status();
    EXPECT_NE(loaded.status().message().find(d.message), std::string::npos) << loaded.status();
    EXPECT_NE(loaded.status().message().find(out), std::string::npos) << loaded.status();
  }
  const std::string broken = WriteQuantizedExperts(*source, "broken-json");
  WriteFileText(broken + "/herd.json", "{\"format\": \"herd\", ");
  const auto loaded = LoadModel(broken);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("herd.json"), std::string::npos) << loaded.status();
}

TEST_F(HerdCheckpointTest, WriterRefusesToOverwriteAndLeavesNothingOnFailure) {
  const std::unique_ptr<Model> source = Source(DType::kF32);
  const std::string out = dir_.Join("out");
  ASSERT_TRUE(WriteHerdCheckpoint(*source, {}, out).ok());
  const absl::Status again = WriteHerdCheckpoint(*source, {}, out);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists) << again;
  HerdCheckpointOptions overwrite;
  overwrite.overwrite = true;
  EXPECT_TRUE(WriteHerdCheckpoint(*source, overwrite, out).ok());

  // A group of 128 does not divide the FFN size of 192: refused, and neither
  // the output nor its temporary is left behind.
  HerdCheckpointOptions bad;
  bad.choose_format = [](const WeightInfo&) -> std::optional<QuantFormat> {
    return QuantFormat{4, true, 128, DType::kF16};
  };
  const std::string failed = dir_.Join("failed");
  const absl::Status status = WriteHerdCheckpoint(*source, bad, failed);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("int4-g128-sym-f16"), std::string::npos) << status;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    EXPECT_EQ(entry.path().filename().string().find("failed"), std::string::npos)
        << entry.path() << " was left behind";
  }
}

}  // namespace
}  // namespace herd
