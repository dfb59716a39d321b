#include "model/gguf_loader.h"

#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf_file.h"
#include "model/gguf_writer.h"
#include "model/model_loader.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::herd::testing::ReadFileBytes;
using ::herd::testing::TempDir;
using ::herd::testing::TestDataPath;
using ::herd::testing::WriteFileBytes;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// The llama.cpp fixtures (tests/data/llamacpp-tiny/README.md).

struct FixtureCase {
  const char* file;
  DType expert_dtype;
};

class GgufFixtureTest : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(GgufFixtureTest, LoadsSpecAndWeights) {
  const std::string path = TestDataPath(absl::StrCat("llamacpp-tiny/", GetParam().file));
  auto model_or = LoadGgufModel(path, {});
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  const Model& m = **model_or;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kMixtral);
  EXPECT_EQ(s.vocab_size, 512);
  EXPECT_EQ(s.hidden_size, 64);
  EXPECT_EQ(s.num_layers, 2);
  EXPECT_EQ(s.num_heads, 4);
  EXPECT_EQ(s.num_kv_heads, 2);
  EXPECT_EQ(s.head_dim, 16);
  EXPECT_EQ(s.context_length, 2048);
  EXPECT_EQ(s.num_experts, 8);
  EXPECT_EQ(s.num_experts_per_token, 2);
  EXPECT_EQ(s.expert_ffn_size, 128);
  EXPECT_EQ(s.shared_expert_ffn_size, 0);
  EXPECT_FALSE(s.shared_expert_gated);
  EXPECT_EQ(s.router_scoring, RouterScoring::kSoftmax);
  EXPECT_TRUE(s.norm_topk_prob);
  EXPECT_FALSE(s.attention_bias);
  EXPECT_EQ(s.qk_norm, QkNorm::kNone);
  EXPECT_EQ(s.rope_style, RopeStyle::kGptJ);
  EXPECT_EQ(s.rope_theta, 10000.0f);
  EXPECT_EQ(s.rope_dim, 16);
  EXPECT_FLOAT_EQ(s.rms_norm_eps, 1e-5f);
  EXPECT_FALSE(s.tied_embeddings);
  EXPECT_EQ(m.format, "gguf");
  EXPECT_EQ(m.source_path, path);
  ASSERT_EQ(m.mapped_files.size(), 1u);

  EXPECT_EQ(m.token_embedding.DebugString(), "F32 [512, 64]");
  EXPECT_EQ(m.lm_head.DebugString(), "F32 [512, 64]");
  EXPECT_NE(m.lm_head.data(), m.token_embedding.data());
  EXPECT_EQ(m.output_norm.DebugString(), "F32 [64]");
  ASSERT_EQ(m.layers.size(), 2u);
  for (const LayerWeights& l : m.layers) {
    EXPECT_EQ(l.q.weight.DebugString(), "F32 [64, 64]");
    EXPECT_EQ(l.k.weight.DebugString(), "F32 [32, 64]");
    EXPECT_EQ(l.v.weight.DebugString(), "F32 [32, 64]");
    EXPECT_EQ(l.o.weight.DebugString(), "F32 [64, 64]");
    EXPECT_TRUE(l.q.bias.empty());
    EXPECT_TRUE(l.q_norm.empty());
    EXPECT_EQ(l.router.DebugString(), "F32 [8, 64]");
    ASSERT_EQ(l.experts.size(), 8u);
    for (const ExpertFfnWeights& x : l.experts) {
      ASSERT_TRUE(x.resident());
      EXPECT_EQ(x.gate.dtype(), GetParam().expert_dtype);
      EXPECT_EQ(x.gate.rank(), 2);
      EXPECT_EQ(x.gate.dim(0), 128);
      EXPECT_EQ(x.gate.dim(1), 64);
      EXPECT_EQ(x.up.dim(0), 128);
      EXPECT_EQ(x.down.dim(0), 64);
      EXPECT_EQ(x.down.dim(1), 128);
      EXPECT_EQ(x.down.dtype(), GetParam().expert_dtype);
    }
    EXPECT_FALSE(l.shared_expert.resident());
  }
  // Norm weights are 1 + N(0, 0.05^2): close to 1.
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(m.layers[0].attn_norm.as<float>()[i], 1.0f, 0.3f);

  // One record per tensor in the file, each with the right module.
  ASSERT_EQ(m.tensors.size(), 23u);
  std::set<std::string> names;
  for (const TensorRecord& r : m.tensors) {
    names.insert(r.name);
    ModuleKind expected = ModuleKind::kAttention;
    if (r.name.find("_exps") != std::string::npos) expected = ModuleKind::kExperts;
    if (r.name.find("norm") != std::string::npos) expected = ModuleKind::kNorms;
    if (r.name.find("gate_inp") != std::string::npos) expected = ModuleKind::kRouter;
    if (r.name == "token_embd.weight" || r.name == "output.weight") {
      expected = ModuleKind::kEmbeddings;
    }
    EXPECT_EQ(r.module, expected) << r.name;
  }
  EXPECT_EQ(names.size(), 23u);
  EXPECT_TRUE(names.contains("blk.1.ffn_down_exps.weight"));
}

TEST_P(GgufFixtureTest, ExpertViewsPointAtTheirSlab) {
  const std::string path = TestDataPath(absl::StrCat("llamacpp-tiny/", GetParam().file));
  auto model_or = LoadGgufModel(path, {});
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  const Model& m = **model_or;
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  const std::vector<uint8_t> bytes = ReadFileBytes(path);
  const DType dtype = GetParam().expert_dtype;

  const GgufTensorInfo* gate = (*gguf)->FindTensor("blk.1.ffn_gate_exps.weight");
  ASSERT_NE(gate, nullptr);
  const int64_t slab_bytes = 128 * RowBytes(dtype, 64);
  const uint64_t expected_offset = (*gguf)->data_offset() + gate->offset + 3 * slab_bytes;
  const TensorView& view = m.layers[1].experts[3].gate;
  const uint8_t* base = m.mapped_files[0]->data();
  EXPECT_EQ(static_cast<const uint8_t*>(view.data()) - base,
            static_cast<std::ptrdiff_t>(expected_offset));
  EXPECT_EQ(view.num_bytes(), slab_bytes);
  EXPECT_EQ(std::memcmp(view.data(), bytes.data() + expected_offset, slab_bytes), 0);

  const GgufTensorInfo* down = (*gguf)->FindTensor("blk.0.ffn_down_exps.weight");
  const TensorView& down_view = m.layers[0].experts[7].down;
  EXPECT_EQ(static_cast<const uint8_t*>(down_view.data()) - base,
            static_cast<std::ptrdiff_t>((*gguf)->data_offset() + down->offset +
                                        7 * 64 * RowBytes(dtype, 128)));
}

TEST_P(GgufFixtureTest, LoadExpertFilterLeavesOthersEmpty) {
  const std::string path = TestDataPath(absl::StrCat("llamacpp-tiny/", GetParam().file));
  ModelLoadOptions options;
  std::vector<std::pair<int, int>> asked;
  options.load_expert = [&](int layer_idx, int expert_idx) {
    asked.emplace_back(layer_idx, expert_idx);
    return layer_idx == 0 && expert_idx % 3 == 1;  // layer 0: experts 1, 4, 7; layer 1: none
  };
  auto model_or = LoadGgufModel(path, options);
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  const Model& m = **model_or;
  EXPECT_EQ(asked.size(), 16u);
  ASSERT_EQ(m.layers[0].experts.size(), 8u);
  ASSERT_EQ(m.layers[1].experts.size(), 8u);
  for (int e = 0; e < 8; ++e) {
    EXPECT_EQ(m.layers[0].experts[e].resident(), e % 3 == 1) << e;
    EXPECT_EQ(m.layers[0].experts[e].down.empty(), e % 3 != 1) << e;
    EXPECT_FALSE(m.layers[1].experts[e].resident()) << e;
  }
  // Layer 1 holds no expert here, so its expert tensors are not recorded.
  int num_expert_records = 0;
  for (const TensorRecord& r : m.tensors) {
    if (r.module == ModuleKind::kExperts) {
      ++num_expert_records;
      EXPECT_EQ(r.name.rfind("blk.0.", 0), 0u) << r.name;
    }
  }
  EXPECT_EQ(num_expert_records, 3);
}

TEST_P(GgufFixtureTest, LoadModelDispatchesToGguf) {
  const std::string path = TestDataPath(absl::StrCat("llamacpp-tiny/", GetParam().file));
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->format, "gguf");
}

INSTANTIATE_TEST_SUITE_P(LlamaCppTiny, GgufFixtureTest,
                         ::testing::Values(FixtureCase{"tiny-f32.gguf", DType::kF32},
                                           FixtureCase{"tiny-q8_0.gguf", DType::kQ8_0},
                                           FixtureCase{"tiny-q4_0.gguf", DType::kQ4_0}),
                         [](const auto& info) {
                           std::string name = info.param.file;
                           return name.substr(5, name.find('.') - 5);
                         });

TEST(GgufTruncationTest, EveryTruncationOfTheFixtureFailsToLoad) {
  TempDir dir;
  const std::vector<uint8_t> bytes = ReadFileBytes(TestDataPath("llamacpp-tiny/tiny-q8_0.gguf"));
  const std::string path = dir.Join("cut.gguf");
  for (size_t n = 0; n < bytes.size(); n += (n < 4096 ? 7 : 8191)) {
    WriteFileBytes(path, bytes.data(), n);
    auto model = LoadGgufModel(path, {});
    ASSERT_FALSE(model.ok()) << "prefix of " << n << " bytes loaded";
    EXPECT_THAT(model.status().message(), HasSubstr(path)) << n;
  }
}

// ---------------------------------------------------------------------------
// Synthetic models written with GgufWriter.

struct TinyMoe {
  std::string arch = "qwen2moe";
  int64_t vocab = 40;
  int64_t hidden = 32;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 8;
  int64_t experts = 4;
  int64_t top_k = 2;
  int64_t ffn = 32;
  int64_t shared_ffn = 0;
  bool bias = false;
  bool qk_norm = false;
  bool shared_gate = false;
  bool shared_gate_2d = true;  // store ffn_gate_inp_shexp as ggml ne [hidden, 1]
  bool tied = false;
  bool write_key_length = false;
  DType expert_dtype = DType::kF32;
  DType vector_dtype = DType::kF32;  // norms and biases
  std::optional<bool> weights_norm;
  bool per_expert_tensors = false;  // blk.L.ffn_gate.E.weight instead of stacked _exps
  // Edits for bad files.
  std::string skip_tensor;
  std::string wrong_shape_tensor;  // written with one extra output row
  std::string k_quant_tensor;      // written as Q4_K
};

std::vector<uint8_t> RandomBytes(DType dtype, int64_t num_values, std::mt19937* rng) {
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<uint8_t> out(num_values / BlockSize(dtype) * BlockBytes(dtype));
  switch (dtype) {
    case DType::kF32:
      for (int64_t i = 0; i < num_values; ++i) {
        const float v = normal(*rng);
        std::memcpy(out.data() + 4 * i, &v, 4);
      }
      break;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < num_values; ++i) {
        const float v = 1.0f + normal(*rng);
        const uint16_t h = dtype == DType::kF16 ? F32ToF16(v) : F32ToBF16(v);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
      break;
    default:  // quantized: small f16 scales, random quants
      for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>((*rng)());
      for (size_t b = 0; b < out.size(); b += BlockBytes(dtype)) {
        const uint16_t d = F32ToF16(0.001f);
        std::memcpy(out.data() + b, &d, 2);
      }
      break;
  }
  return out;
}

GgufWriter MakeWriter(const TinyMoe& c) {
  std::mt19937 rng(7);
  GgufWriter w;
  const std::string a = c.arch;
  w.AddString("general.architecture", a);
  w.AddString("general.name", "tiny " + a);
  w.AddU32(a + ".vocab_size", static_cast<uint32_t>(c.vocab));
  w.AddU32(a + ".context_length", 4096);
  w.AddU32(a + ".embedding_length", static_cast<uint32_t>(c.hidden));
  w.AddU32(a + ".block_count", static_cast<uint32_t>(c.layers));
  w.AddU32(a + ".attention.head_count", static_cast<uint32_t>(c.heads));
  w.AddU32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.kv_heads));
  w.AddF32(a + ".rope.freq_base", 1000000.0f);
  w.AddF32(a + ".attention.layer_norm_rms_epsilon", 1e-6f);
  w.AddU32(a + ".expert_count", static_cast<uint32_t>(c.experts));
  w.AddU32(a + ".expert_used_count", static_cast<uint32_t>(c.top_k));
  if (a == "llama") {
    w.AddU32(a + ".feed_forward_length", static_cast<uint32_t>(c.ffn));
  } else {
    w.AddU32(a + ".feed_forward_length", static_cast<uint32_t>(4 * c.ffn));
    w.AddU32(a + ".expert_feed_forward_length", static_cast<uint32_t>(c.ffn));
  }
  if (c.shared_ffn > 0) {
    w.AddU32(a + ".expert_shared_feed_forward_length", static_cast<uint32_t>(c.shared_ffn));
  }
  if (c.write_key_length) {
    w.AddU32(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
    w.AddU32(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
  }
  if (c.weights_norm.has_value()) w.AddBool(a + ".expert_weights_norm", *c.weights_norm);

  // shape outermost first, as a TensorView.
  auto add = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
    if (name == c.skip_tensor) return;
    if (name == c.wrong_shape_tensor) shape[shape.size() >= 2 ? shape.size() - 2 : 0] += 1;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (name == c.k_quant_tensor) {
      std::vector<int64_t> ne(shape.rbegin(), shape.rend());
      ne[0] = 256;  // Q4_K rows are 256 values
      int64_t rows = n / shape.back();
      ASSERT_TRUE(w.AddRawTensor(name, 12, ne, std::vector<uint8_t>(rows * 144)).ok());
      return;
    }
    ASSERT_TRUE(w.AddTensor(name, dtype, shape, RandomBytes(dtype, n, &rng)).ok()) << name;
  };
  const int64_t h = c.hidden;
  const int64_t q_dim = c.heads * c.head_dim;
  const int64_t kv_dim = c.kv_heads * c.head_dim;
  add("token_embd.weight", DType::kF32, {c.vocab, h});
  add("output_norm.weight", c.vector_dtype, {h});
  if (!c.tied) add("output.weight", DType::kF32, {c.vocab, h});
  for (int64_t l = 0; l < c.layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    add(p + "attn_norm.weight", c.vector_dtype, {h});
    add(p + "attn_q.weight", DType::kF32, {q_dim, h});
    add(p + "attn_k.weight", DType::kF32, {kv_dim, h});
    add(p + "attn_v.weight", DType::kF32, {kv_dim, h});
    add(p + "attn_output.weight", DType::kF32, {h, q_dim});
    if (c.bias) {
      add(p + "attn_q.bias", c.vector_dtype, {q_dim});
      add(p + "attn_k.bias", c.vector_dtype, {kv_dim});
      add(p + "attn_v.bias", c.vector_dtype, {kv_dim});
    }
    if (c.qk_norm) {
      add(p + "attn_q_norm.weight", c.vector_dtype, {c.head_dim});
      add(p + "attn_k_norm.weight", c.vector_dtype, {c.head_dim});
    }
    add(p + "ffn_norm.weight", c.vector_dtype, {h});
    add(p + "ffn_gate_inp.weight", DType::kF32, {c.experts, h});
    if (c.per_expert_tensors) {
      for (int64_t e = 0; e < c.experts; ++e) {
        const std::string q = absl::StrCat(".", e, ".weight");
        add(p + "ffn_gate" + q, c.expert_dtype, {c.ffn, h});
        add(p + "ffn_up" + q, c.expert_dtype, {c.ffn, h});
        add(p + "ffn_down" + q, c.expert_dtype, {h, c.ffn});
      }
    } else {
      add(p + "ffn_gate_exps.weight", c.expert_dtype, {c.experts, c.ffn, h});
      add(p + "ffn_up_exps.weight", c.expert_dtype, {c.experts, c.ffn, h});
      add(p + "ffn_down_exps.weight", c.expert_dtype, {c.experts, h, c.ffn});
    }
    if (c.shared_ffn > 0) {
      add(p + "ffn_gate_shexp.weight", c.expert_dtype, {c.shared_ffn, h});
      add(p + "ffn_up_shexp.weight", c.expert_dtype, {c.shared_ffn, h});
      add(p + "ffn_down_shexp.weight", c.expert_dtype, {h, c.shared_ffn});
      if (c.shared_gate) {
        if (c.shared_gate_2d) {
          add(p + "ffn_gate_inp_shexp.weight", c.vector_dtype, {1, h});
        } else {
          add(p + "ffn_gate_inp_shexp.weight", c.vector_dtype, {h});
        }
      }
    }
  }
  return w;
}

TinyMoe Qwen2Moe() {
  TinyMoe c;
  c.arch = "qwen2moe";
  c.shared_ffn = 64;
  c.bias = true;
  c.shared_gate = true;
  c.tied = true;
  c.vector_dtype = DType::kF16;
  return c;
}

TinyMoe Qwen3Moe() {
  TinyMoe c;
  c.arch = "qwen3moe";
  c.head_dim = 16;  // != hidden / heads, as in Qwen3
  c.write_key_length = true;
  c.qk_norm = true;
  c.expert_dtype = DType::kQ8_0;
  c.vector_dtype = DType::kBF16;
  return c;
}

TinyMoe Mixtral() {
  TinyMoe c;
  c.arch = "llama";
  c.expert_dtype = DType::kQ4_0;
  return c;
}

class GgufLoaderTest : public ::testing::Test {
 protected:
  std::string Write(const TinyMoe& config, const std::string& name = "model.gguf") {
    const std::string path = dir_.Join(name);
    const absl::Status status = MakeWriter(config).WriteFile(path);
    EXPECT_TRUE(status.ok()) << status;
    return path;
  }
  // Loads `config` expecting InvalidArgument naming the file and `fragments`.
  void ExpectLoadError(const TinyMoe& config, const std::vector<std::string>& fragments) {
    const std::string path = Write(config, "bad.gguf");
    auto model = LoadGgufModel(path, {});
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
    EXPECT_THAT(model.status().message(), HasSubstr(path));
    for (const std::string& f : fragments) {
      EXPECT_THAT(model.status().message(), HasSubstr(f));
    }
  }

  TempDir dir_;
};

TEST_F(GgufLoaderTest, LoadsQwen2Moe) {
  const std::string path = Write(Qwen2Moe());
  auto model_or = LoadGgufModel(path, {});
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  const Model& m = **model_or;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kQwen2Moe);
  EXPECT_EQ(s.name, "tiny qwen2moe");
  EXPECT_EQ(s.rope_style, RopeStyle::kNeox);
  EXPECT_EQ(s.rope_theta, 1000000.0f);
  EXPECT_FLOAT_EQ(s.rms_norm_eps, 1e-6f);
  EXPECT_EQ(s.vocab_size, 40);
  EXPECT_EQ(s.head_dim, 8);
  EXPECT_EQ(s.rope_dim, 8);
  EXPECT_EQ(s.expert_ffn_size, 32);
  EXPECT_EQ(s.shared_expert_ffn_size, 64);
  EXPECT_TRUE(s.shared_expert_gated);
  EXPECT_TRUE(s.attention_bias);
  EXPECT_EQ(s.qk_norm, QkNorm::kNone);
  EXPECT_FALSE(s.norm_topk_prob);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_EQ(m.lm_head.data(), m.token_embedding.data());

  const LayerWeights& l = m.layers[1];
  EXPECT_EQ(l.q.bias.DebugString(), "F32 [32]");
  EXPECT_EQ(l.k.bias.DebugString(), "F32 [16]");
  EXPECT_EQ(l.shared_expert.gate.DebugString(), "F32 [64, 32]");
  EXPECT_EQ(l.shared_expert.down.DebugString(), "F32 [32, 64]");
  EXPECT_EQ(l.shared_expert_gate.DebugString(), "F32 [32]");
  // F16 1-D tensors are converted exactly.
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok());
  auto stored_bias = (*gguf)->GetView("blk.1.attn_v.bias");
  ASSERT_TRUE(stored_bias.ok());
  EXPECT_EQ(stored_bias->dtype(), DType::kF16);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(l.v.bias.as<float>()[i], F16ToF32(stored_bias->as<uint16_t>()[i]));
  }

  int num_shared = 0;
  for (const TensorRecord& r : m.tensors) {
    if (r.name.find("_shexp") != std::string::npos) {
      EXPECT_EQ(r.module, ModuleKind::kSharedExpert) << r.name;
      ++num_shared;
    }
    if (r.name.find(".bias") != std::string::npos) {
      EXPECT_EQ(r.module, ModuleKind::kAttention) << r.name;
    }
  }
  EXPECT_EQ(num_shared, 8);
}

TEST_F(GgufLoaderTest, Qwen2MoeSharedGateMayBeOneDimensional) {
  TinyMoe c = Qwen2Moe();
  c.shared_gate_2d = false;
  auto model = LoadGgufModel(Write(c), {});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->layers[0].shared_expert_gate.DebugString(), "F32 [32]");
}

TEST_F(GgufLoaderTest, LoadsQwen3Moe) {
  const std::string path = Write(Qwen3Moe());
  auto model_or = LoadGgufModel(path, {});
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  const Model& m = **model_or;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kQwen3Moe);
  EXPECT_EQ(s.rope_style, RopeStyle::kNeox);
  EXPECT_EQ(s.head_dim, 16);
  EXPECT_EQ(s.rope_dim, 16);
  EXPECT_EQ(s.qk_norm, QkNorm::kPerHead);
  EXPECT_TRUE(s.norm_topk_prob);
  EXPECT_FALSE(s.attention_bias);
  EXPECT_EQ(s.shared_expert_ffn_size, 0);
  EXPECT_FALSE(s.tied_embeddings);
  const LayerWeights& l = m.layers[0];
  EXPECT_EQ(l.q.weight.DebugString(), "F32 [64, 32]");
  EXPECT_EQ(l.o.weight.DebugString(), "F32 [32, 64]");
  EXPECT_EQ(l.q_norm.DebugString(), "F32 [16]");
  EXPECT_EQ(l.k_norm.DebugString(), "F32 [16]");
  EXPECT_NEAR(l.q_norm.as<float>()[0], 1.0f, 0.2f);  // BF16 converted
  EXPECT_EQ(l.experts[2].gate.DebugString(), "Q8_0 [32, 32]");
  for (const TensorRecord& r : m.tensors) {
    if (r.name.find("attn_q_norm") != std::string::npos) {
      EXPECT_EQ(r.module, ModuleKind::kAttention);
      EXPECT_EQ(r.view.dtype(), DType::kBF16);  // records keep the stored dtype
    }
  }
}

TEST_F(GgufLoaderTest, ExpertWeightsNormOverridesTheDefault) {
  TinyMoe qwen3 = Qwen3Moe();
  qwen3.weights_norm = false;
  auto a = LoadGgufModel(Write(qwen3, "a.gguf"), {});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE((*a)->spec.norm_topk_prob);

  TinyMoe qwen2 = Qwen2Moe();
  qwen2.weights_norm = true;
  auto b = LoadGgufModel(Write(qwen2, "b.gguf"), {});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE((*b)->spec.norm_topk_prob);
}

TEST_F(GgufLoaderTest, LoadsSyntheticMixtral) {
  auto model = LoadGgufModel(Write(Mixtral()), {});
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->spec.architecture, Architecture::kMixtral);
  EXPECT_EQ((*model)->spec.rope_style, RopeStyle::kGptJ);
  EXPECT_EQ((*model)->layers[1].experts[3].down.DebugString(), "Q4_0 [32, 32]");
}

TEST_F(GgufLoaderTest, LoadsOneTensorPerExpert) {
  TinyMoe c = Mixtral();
  c.per_expert_tensors = true;
  const std::string path = Write(c);
  ModelLoadOptions options;
  options.load_expert = [](int layer_idx, int expert_idx) { return expert_idx != 2; };
  auto model = LoadGgufModel(path, options);
  ASSERT_TRUE(model.ok()) << model.status();
  const LayerWeights& l = (*model)->layers[1];
  ASSERT_EQ(l.experts.size(), 4u);
  EXPECT_FALSE(l.experts[2].resident());
  EXPECT_EQ(l.experts[3].down.DebugString(), "Q4_0 [32, 32]");
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok());
  const GgufTensorInfo* up = (*gguf)->FindTensor("blk.1.ffn_up.3.weight");
  EXPECT_EQ(l.experts[3].up.as<uint8_t>() - (*model)->mapped_files[0]->data(),
            static_cast<std::ptrdiff_t>((*gguf)->data_offset() + up->offset));
  int num_expert_records = 0;
  for (const TensorRecord& r : (*model)->tensors) {
    if (r.module == ModuleKind::kExperts) ++num_expert_records;
  }
  EXPECT_EQ(num_expert_records, 2 * 3 * 3);

  c.skip_tensor = "blk.0.ffn_down.1.weight";
  const std::string bad = Write(c, "bad.gguf");
  auto missing = LoadGgufModel(bad, {});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("missing tensor 'blk.0.ffn_down.1.weight'"));
}

TEST_F(GgufLoaderTest, RejectsUnknownArchitecture) {
  TinyMoe c = Qwen2Moe();
  c.arch = "gpt2";
  ExpectLoadError(c, {"unsupported architecture 'gpt2'", "qwen2moe", "qwen3moe", "llama"});
}

TEST_F(GgufLoaderTest, RejectsDenseLlama) {
  TinyMoe c = Mixtral();
  c.experts = 0;
  c.top_k = 0;
  ExpectLoadError(c, {"dense models are not supported"});
}

TEST_F(GgufLoaderTest, RejectsMissingTensor) {
  for (const std::string name :
       {"blk.1.attn_k.weight", "output_norm.weight", "blk.0.ffn_up_exps.weight",
        "blk.1.attn_q.bias", "blk.0.ffn_gate_inp_shexp.weight", "blk.1.ffn_down_shexp.weight",
        "token_embd.weight"}) {
    SCOPED_TRACE(name);
    TinyMoe c = Qwen2Moe();
    c.skip_tensor = name;
    ExpectLoadError(c, {"missing tensor '" + name + "'"});
  }
  TinyMoe c = Qwen3Moe();
  c.skip_tensor = "blk.1.attn_k_norm.weight";
  ExpectLoadError(c, {"missing tensor 'blk.1.attn_k_norm.weight'"});
}

TEST_F(GgufLoaderTest, RejectsWrongShape) {
  for (const std::string name :
       {"blk.0.attn_q.weight", "blk.1.ffn_gate_exps.weight", "blk.1.ffn_gate_inp.weight",
        "output.weight", "blk.1.ffn_norm.weight"}) {
    SCOPED_TRACE(name);
    TinyMoe c = Qwen3Moe();
    c.wrong_shape_tensor = name;
    ExpectLoadError(c, {"tensor '" + name + "' has shape", "expected"});
  }
}

TEST_F(GgufLoaderTest, RejectsUnsupportedTensorType) {
  TinyMoe c = Mixtral();
  c.k_quant_tensor = "blk.1.ffn_down_exps.weight";
  ExpectLoadError(c, {"tensor 'blk.1.ffn_down_exps.weight' has unsupported type 12 (Q4_K)"});
}

TEST_F(GgufLoaderTest, RejectsMissingOrBadMetadata) {
  {
    GgufWriter w = MakeWriter(Mixtral());
    w.AddString("llama.embedding_length", "sixty-four");
    const std::string path = dir_.Join("bad_key.gguf");
    ASSERT_TRUE(w.WriteFile(path).ok());
    auto model = LoadGgufModel(path, {});
    ASSERT_FALSE(model.ok());
    EXPECT_THAT(model.status().message(), HasSubstr(path));
    EXPECT_THAT(model.status().message(), HasSubstr("llama.embedding_length"));
  }
  {
    // Absurd block count: rejected before anything is allocated for it.
    GgufWriter w = MakeWriter(Mixtral());
    w.AddU64("llama.block_count", 1ull << 40);
    const std::string path = dir_.Join("blocks.gguf");
    ASSERT_TRUE(w.WriteFile(path).ok());
    auto model = LoadGgufModel(path, {});
    ASSERT_FALSE(model.ok());
    EXPECT_THAT(model.status().message(), HasSubstr("llama.block_count"));
  }
  {
    GgufWriter w = MakeWriter(Qwen3Moe());
    w.AddString("qwen3moe.rope.scaling.type", "yarn");
    w.AddF32("qwen3moe.rope.scaling.factor", 4.0f);
    const std::string path = dir_.Join("yarn.gguf");
    ASSERT_TRUE(w.WriteFile(path).ok());
    auto model = LoadGgufModel(path, {});
    ASSERT_FALSE(model.ok());
    EXPECT_THAT(model.status().message(), HasSubstr("RoPE scaling 'yarn'"));
  }
  {
    GgufWriter w;
    w.AddString("general.name", "no architecture");
    const std::string path = dir_.Join("no_arch.gguf");
    ASSERT_TRUE(w.WriteFile(path).ok());
    auto model = LoadGgufModel(path, {});
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(model.status().message(), HasSubstr("general.architecture"));
  }
  TinyMoe c = Mixtral();
  c.top_k = 5;  // > experts: caught by ModelSpec::Validate
  ExpectLoadError(c, {"num_experts_per_token"});
}

TEST_F(GgufLoaderTest, RandomHeaderCorruptionNeverCrashes) {
  TinyMoe c = Qwen2Moe();
  c.vocab = 8;
  c.experts = 2;
  c.top_k = 1;
  c.shared_ffn = 32;
  const std::string source = Write(c, "source.gguf");
  const std::vector<uint8_t> bytes = ReadFileBytes(source);
  auto gguf = GgufFile::Open(source);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  const size_t header_bytes = (*gguf)->data_offset();
  ASSERT_TRUE(LoadGgufModel(source, {}).ok());

  std::mt19937 rng(1234);
  const std::string path = dir_.Join("mutant.gguf");
  int num_loaded = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::vector<uint8_t> b = bytes;
    const int num_edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < num_edits; ++e) {
      const size_t pos = rng() % header_bytes;
      switch (rng() % 3) {
        case 0:
          b[pos] = static_cast<uint8_t>(rng());
          break;
        case 1:
          b[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        default:
          b[pos] = (rng() % 2) ? 0xFF : 0x00;
          break;
      }
    }
    WriteFileBytes(path, b);
    auto model = LoadGgufModel(path, {});  // must return, never crash
    if (model.ok()) {
      ++num_loaded;
    } else {
      EXPECT_THAT(model.status().message(), HasSubstr(path)) << "iteration " << iter;
    }
  }
  // Some edits land on bytes that do not matter (e.g. inside general.name).
  EXPECT_LT(num_loaded, 1500);
}

TEST_F(GgufLoaderTest, MissingFileIsNotFound) {
  auto model = LoadGgufModel(dir_.Join("nope.gguf"), {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace herd
