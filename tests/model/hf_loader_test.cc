// Tests for the Hugging Face loader: tiny random checkpoints of each supported
// architecture, sharded and unsharded, and every kind of bad input.
#include "model/hf_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/safetensors_writer.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::herd::testing::TempDir;
using ::herd::testing::WriteFileBytes;
using ::herd::testing::WriteFileText;
using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr int64_t kVocab = 64;
constexpr int64_t kHidden = 32;
constexpr int64_t kLayers = 2;
constexpr int64_t kHeads = 4;
constexpr int64_t kKvHeads = 2;
constexpr int64_t kExperts = 4;
constexpr int64_t kTopK = 2;
constexpr int64_t kFfn = 16;
constexpr int64_t kSharedFfn = 24;
constexpr int64_t kQwen3HeadDim = 16;  // differs from hidden / heads = 8

// A checkpoint in memory: config.json and F32 values of every tensor.
struct Checkpoint {
  Json config;
  std::map<std::string, std::vector<int64_t>> shapes;
  std::map<std::string, std::vector<float>> values;

  void Add(const std::string& name, std::vector<int64_t> shape) {
    // Values derived from the name so that every tensor differs.
    std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>()(name)));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    shapes[name] = std::move(shape);
    values[name] = std::move(v);
  }
  void Remove(const std::string& name) {
    shapes.erase(name);
    values.erase(name);
  }
};

Checkpoint MakeTiny(const std::string& arch) {
  Checkpoint c;
  Json& cfg = c.config;
  cfg["architectures"] = {arch};
  cfg["vocab_size"] = kVocab;
  cfg["hidden_size"] = kHidden;
  cfg["num_hidden_layers"] = kLayers;
  cfg["num_attention_heads"] = kHeads;
  cfg["num_key_value_heads"] = kKvHeads;
  cfg["num_experts_per_tok"] = kTopK;
  cfg["rms_norm_eps"] = 1e-6;
  cfg["rope_theta"] = 1000000.0;
  cfg["max_position_embeddings"] = 128;
  cfg["hidden_act"] = "silu";
  cfg["tie_word_embeddings"] = false;
  cfg["torch_dtype"] = "bfloat16";
  cfg["rope_scaling"] = nullptr;

  int64_t head_dim = kHidden / kHeads;
  std::string moe = "mlp";
  std::string gate = "gate_proj", up = "up_proj", down = "down_proj";
  bool qkv_bias = false, shared = false;
  enum { kNoNorm, kPerHead, kAllHeads } qk_norm = kNoNorm;
  if (arch == "MixtralForCausalLM") {
    cfg["num_local_experts"] = kExperts;
    cfg["intermediate_size"] = kFfn;
    cfg["sliding_window"] = nullptr;
    moe = "block_sparse_moe";
    gate = "w1";
    up = "w3";
    down = "w2";
  } else if (arch == "Qwen2MoeForCausalLM") {
    cfg["num_experts"] = kExperts;
    cfg["moe_intermediate_size"] = kFfn;
    cfg["shared_expert_intermediate_size"] = kSharedFfn;
    cfg["intermediate_size"] = 999;  // the dense MLP size, unused
    cfg["norm_topk_prob"] = false;
    cfg["decoder_sparse_step"] = 1;
    cfg["mlp_only_layers"] = Json::array();
    cfg["use_sliding_window"] = false;
    cfg["sliding_window"] = 32;  // ignored while use_sliding_window is false
    qkv_bias = true;
    shared = true;
  } else if (arch == "Qwen3MoeForCausalLM") {
    cfg["num_experts"] = kExperts;
    cfg["moe_intermediate_size"] = kFfn;
    cfg["head_dim"] = kQwen3HeadDim;
    cfg["norm_topk_prob"] = true;
    cfg["attention_bias"] = false;
    cfg["decoder_sparse_step"] = 1;
    cfg["mlp_only_layers"] = Json::array();
    head_dim = kQwen3HeadDim;
    qk_norm = kPerHead;
  } else if (arch == "OlmoeForCausalLM") {
    cfg["num_experts"] = kExperts;
    cfg["intermediate_size"] = kFfn;
    cfg["clip_qkv"] = nullptr;
    cfg["attention_bias"] = false;
    qk_norm = kAllHeads;
  }
  const int64_t q_dim = kHeads * head_dim;
  const int64_t kv_dim = kKvHeads * head_dim;

  c.Add("model.embed_tokens.weight", {kVocab, kHidden});
  c.Add("model.norm.weight", {kHidden});
  c.Add("lm_head.weight", {kVocab, kHidden});
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    c.Add(p + "input_layernorm.weight", {kHidden});
    c.Add(p + "post_attention_layernorm.weight", {kHidden});
    c.Add(p + "self_attn.q_proj.weight", {q_dim, kHidden});
    c.Add(p + "self_attn.k_proj.weight", {kv_dim, kHidden});
    c.Add(p + "self_attn.v_proj.weight", {kv_dim, kHidden});
    c.Add(p + "self_attn.o_proj.weight", {kHidden, q_dim});
    if (qkv_bias) {
      c.Add(p + "self_attn.q_proj.bias", {q_dim});
      c.Add(p + "self_attn.k_proj.bias", {kv_dim});
      c.Add(p + "self_attn.v_proj.bias", {kv_dim});
    }
    if (qk_norm == kPerHead) {
      c.Add(p + "self_attn.q_norm.weight", {head_dim});
      c.Add(p + "self_attn.k_norm.weight", {head_dim});
    } else if (qk_norm == kAllHeads) {
      c.Add(p + "self_attn.q_norm.weight", {q_dim});
      c.Add(p + "self_attn.k_norm.weight", {kv_dim});
    }
    const std::string m = p + moe + ".";
    c.Add(m + "gate.weight", {kExperts, kHidden});
    for (int e = 0; e < kExperts; ++e) {
      const std::string x = m + "experts." + std::to_string(e) + ".";
      c.Add(x + gate + ".weight", {kFfn, kHidden});
      c.Add(x + up + ".weight", {kFfn, kHidden});
      c.Add(x + down + ".weight", {kHidden, kFfn});
    }
    if (shared) {
      c.Add(m + "shared_expert.gate_proj.weight", {kSharedFfn, kHidden});
      c.Add(m + "shared_expert.up_proj.weight", {kSharedFfn, kHidden});
      c.Add(m + "shared_expert.down_proj.weight", {kHidden, kSharedFfn});
      c.Add(m + "shared_expert_gate.weight", {1, kHidden});
    }
  }
  return c;
}

// The value a float has after storage as `dtype`.
float Stored(float v, DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return F16ToF32(F32ToF16(v));
    case DType::kBF16:
      return BF16ToF32(F32ToBF16(v));
    default:
      return v;
  }
}

// Reads element `idx` of a F32/F16/BF16 view.
float Element(const TensorView& view, int64_t idx) {
  switch (view.dtype()) {
    case DType::kF16:
      return F16ToF32(view.as<uint16_t>()[idx]);
    case DType::kBF16:
      return BF16ToF32(view.as<uint16_t>()[idx]);
    default:
      return view.as<float>()[idx];
  }
}

std::vector<uint8_t> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<uint8_t> bytes;
  if (dtype == DType::kF32) {
    bytes.resize(v.size() * 4);
    std::memcpy(bytes.data(), v.data(), bytes.size());
    return bytes;
  }
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    h[i] = dtype == DType::kF16 ? F32ToF16(v[i]) : F32ToBF16(v[i]);
  }
  bytes.resize(h.size() * 2);
  std::memcpy(bytes.data(), h.data(), bytes.size());
  return bytes;
}

// Writes `c` into `dir`: config.json and `num_files` safetensors files,
// described by model.safetensors.index.json when `with_index`.
void WriteCheckpoint(const Checkpoint& c, const std::string& dir, DType dtype, int num_files = 1,
                     bool with_index = false) {
  WriteFileText(dir + "/config.json", c.config.dump(2));
  std::vector<SafetensorsWriter> writers(num_files);
  Json weight_map = Json::object();
  std::vector<std::string> file_names;
  for (int i = 0; i < num_files; ++i) {
    file_names.push_back(num_files == 1 && !with_index
                             ? "model.safetensors"
                             : "model-0000" + std::to_string(i + 1) + "-of-0000" +
                                   std::to_string(num_files) + ".safetensors");
  }
  int i = 0;
  for (const auto& [name, shape] : c.shapes) {
    const std::vector<uint8_t> bytes = Encode(c.values.at(name), dtype);
    const int file_idx = i++ % num_files;
    ASSERT_TRUE(writers[file_idx].AddTensor(name, dtype, shape, bytes.data(), bytes.size()).ok());
    weight_map[name] = file_names[file_idx];
  }
  for (int f = 0; f < num_files; ++f) {
    writers[f].SetMetadata("format", "pt");
    ASSERT_TRUE(writers[f].WriteFile(dir + "/" + file_names[f]).ok());
  }
  if (with_index) {
    Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    WriteFileText(dir + "/model.safetensors.index.json", index.dump(2));
  }
}

// Loads, expecting failure; returns the message after checking that it names the directory.
std::string LoadError(const std::string& dir, absl::StatusCode code,
                      const ModelLoadOptions& options = {}) {
  auto model = LoadHfModel(dir, options);
  EXPECT_FALSE(model.ok());
  if (model.ok()) return "";
  EXPECT_EQ(model.status().code(), code) << model.status();
  const std::string message(model.status().message());
  EXPECT_THAT(message, ::testing::StartsWith(dir));
  return message;
}

// Checks element `idx` of `view` against the checkpoint's value of `name`.
void ExpectElement(const Checkpoint& c, const std::string& name, const TensorView& view,
                   int64_t idx, DType stored) {
  ASSERT_FALSE(view.empty()) << name;
  EXPECT_FLOAT_EQ(Element(view, idx), Stored(c.values.at(name)[idx], stored)) << name;
}

int CountModule(const Model& model, ModuleKind kind) {
  int n = 0;
  for (const TensorRecord& r : model.tensors) n += r.module == kind;
  return n;
}

const TensorRecord* FindRecord(const Model& model, const std::string& name) {
  for (const TensorRecord& r : model.tensors) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

TEST(HfLoaderTest, LoadsMixtralF32) {
  TempDir dir;
  const Checkpoint c = MakeTiny("MixtralForCausalLM");
  WriteCheckpoint(c, dir.path(), DType::kF32);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kMixtral);
  EXPECT_EQ(s.vocab_size, kVocab);
  EXPECT_EQ(s.hidden_size, kHidden);
  EXPECT_EQ(s.num_layers, kLayers);
  EXPECT_EQ(s.num_heads, kHeads);
  EXPECT_EQ(s.num_kv_heads, kKvHeads);
  EXPECT_EQ(s.head_dim, kHidden / kHeads);
  EXPECT_EQ(s.num_experts, kExperts);
  EXPECT_EQ(s.num_experts_per_token, kTopK);
  EXPECT_EQ(s.expert_ffn_size, kFfn);
  EXPECT_EQ(s.shared_expert_ffn_size, 0);
  EXPECT_TRUE(s.norm_topk_prob);
  EXPECT_FALSE(s.attention_bias);
  EXPECT_EQ(s.qk_norm, QkNorm::kNone);
  EXPECT_EQ(s.rope_style, RopeStyle::kNeox);
  EXPECT_EQ(s.rope_dim, s.head_dim);
  EXPECT_EQ(s.router_scoring, RouterScoring::kSoftmax);
  EXPECT_FLOAT_EQ(s.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(s.rms_norm_eps, 1e-6f);
  EXPECT_EQ(s.context_length, 128);
  EXPECT_FALSE(s.tied_embeddings);
  EXPECT_EQ(m.format, "safetensors");
  EXPECT_EQ(m.source_path, dir.path());
  EXPECT_EQ(m.mapped_files.size(), 1u);

  ExpectElement(c, "lm_head.weight", m.lm_head, 77, DType::kF32);
  EXPECT_NE(m.lm_head.data(), m.token_embedding.data());
  const LayerWeights& w = m.layers[1];
  ExpectElement(c, "model.layers.1.block_sparse_moe.experts.3.w2.weight", w.experts[3].down, 100,
                DType::kF32);
  ExpectElement(c, "model.layers.1.block_sparse_moe.experts.0.w1.weight", w.experts[0].gate, 5,
                DType::kF32);
  ExpectElement(c, "model.layers.1.block_sparse_moe.experts.0.w3.weight", w.experts[0].up, 5,
                DType::kF32);
  ExpectElement(c, "model.layers.1.block_sparse_moe.gate.weight", w.router, 9, DType::kF32);
  EXPECT_EQ(w.experts[3].down.dim(0), kHidden);
  EXPECT_EQ(w.experts[3].down.dim(1), kFfn);
  EXPECT_TRUE(w.q.bias.empty());
  EXPECT_TRUE(w.shared_expert_gate.empty());

  // Every stored tensor is recorded once, under its module.
  EXPECT_EQ(m.tensors.size(), c.shapes.size());
  EXPECT_EQ(CountModule(m, ModuleKind::kExperts), kLayers * kExperts * 3);
  EXPECT_EQ(CountModule(m, ModuleKind::kRouter), kLayers);
  EXPECT_EQ(CountModule(m, ModuleKind::kAttention), kLayers * 4);
  EXPECT_EQ(CountModule(m, ModuleKind::kNorms), kLayers * 2 + 1);
  EXPECT_EQ(CountModule(m, ModuleKind::kEmbeddings), 2);
}

TEST(HfLoaderTest, LoadsQwen2MoeBf16ShardedWithIndex) {
  TempDir dir;
  const Checkpoint c = MakeTiny("Qwen2MoeForCausalLM");
  WriteCheckpoint(c, dir.path(), DType::kBF16, /*num_files=*/3, /*with_index=*/true);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kQwen2Moe);
  EXPECT_EQ(s.expert_ffn_size, kFfn);
  EXPECT_EQ(s.shared_expert_ffn_size, kSharedFfn);
  EXPECT_TRUE(s.shared_expert_gated);
  EXPECT_TRUE(s.attention_bias);
  EXPECT_FALSE(s.norm_topk_prob);
  EXPECT_EQ(s.qk_norm, QkNorm::kNone);
  EXPECT_EQ(s.context_length, 128);  // use_sliding_window is false
  EXPECT_EQ(m.mapped_files.size(), 3u);

  const LayerWeights& w = m.layers[0];
  EXPECT_EQ(w.q.weight.dtype(), DType::kBF16);
  ExpectElement(c, "model.layers.0.self_attn.q_proj.weight", w.q.weight, 33, DType::kBF16);
  // Biases and norms become owned F32 copies.
  EXPECT_EQ(w.q.bias.dtype(), DType::kF32);
  ExpectElement(c, "model.layers.0.self_attn.k_proj.bias", w.k.bias, 3, DType::kBF16);
  ExpectElement(c, "model.layers.0.input_layernorm.weight", w.attn_norm, 31, DType::kBF16);
  ExpectElement(c, "model.layers.0.mlp.shared_expert.down_proj.weight", w.shared_expert.down, 40,
                DType::kBF16);
  ASSERT_EQ(w.shared_expert_gate.rank(), 1);
  EXPECT_EQ(w.shared_expert_gate.dim(0), kHidden);
  EXPECT_EQ(w.shared_expert_gate.dtype(), DType::kF32);
  ExpectElement(c, "model.layers.0.mlp.shared_expert_gate.weight", w.shared_expert_gate, 7,
                DType::kBF16);
  ExpectElement(c, "model.layers.0.mlp.experts.2.up_proj.weight", w.experts[2].up, 50,
                DType::kBF16);

  const TensorRecord* gate = FindRecord(m, "model.layers.1.mlp.shared_expert_gate.weight");
  ASSERT_NE(gate, nullptr);
  EXPECT_EQ(gate->module, ModuleKind::kSharedExpert);
  EXPECT_EQ(gate->view.dtype(), DType::kBF16);  // as stored
  EXPECT_EQ(gate->view.rank(), 2);
  EXPECT_EQ(CountModule(m, ModuleKind::kSharedExpert), kLayers * 4);
  EXPECT_EQ(FindRecord(m, "model.layers.1.self_attn.v_proj.bias")->module, ModuleKind::kAttention);
  EXPECT_EQ(m.tensors.size(), c.shapes.size());
}

TEST(HfLoaderTest, LoadsQwen3MoeF16FromSeveralFilesWithoutIndex) {
  TempDir dir;
  const Checkpoint c = MakeTiny("Qwen3MoeForCausalLM");
  WriteCheckpoint(c, dir.path(), DType::kF16, /*num_files=*/2, /*with_index=*/false);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kQwen3Moe);
  EXPECT_EQ(s.head_dim, kQwen3HeadDim);
  EXPECT_EQ(s.rope_dim, kQwen3HeadDim);
  EXPECT_EQ(s.qk_norm, QkNorm::kPerHead);
  EXPECT_TRUE(s.norm_topk_prob);
  EXPECT_FALSE(s.attention_bias);
  EXPECT_EQ(s.shared_expert_ffn_size, 0);
  EXPECT_EQ(m.mapped_files.size(), 2u);

  const LayerWeights& w = m.layers[1];
  EXPECT_EQ(w.q.weight.dim(0), kHeads * kQwen3HeadDim);
  EXPECT_EQ(w.o.weight.dim(1), kHeads * kQwen3HeadDim);
  EXPECT_EQ(w.q.weight.dtype(), DType::kF16);
  ExpectElement(c, "model.layers.1.self_attn.o_proj.weight", w.o.weight, 200, DType::kF16);
  ASSERT_EQ(w.q_norm.num_elements(), kQwen3HeadDim);
  ExpectElement(c, "model.layers.1.self_attn.q_norm.weight", w.q_norm, 15, DType::kF16);
  ExpectElement(c, "model.layers.1.self_attn.k_norm.weight", w.k_norm, 0, DType::kF16);
  ExpectElement(c, "model.layers.1.mlp.experts.1.gate_proj.weight", w.experts[1].gate, 17,
                DType::kF16);
  EXPECT_EQ(FindRecord(m, "model.layers.0.self_attn.q_norm.weight")->module,
            ModuleKind::kAttention);
}

TEST(HfLoaderTest, LoadsOlmoeTiedWithoutLmHead) {
  TempDir dir;
  Checkpoint c = MakeTiny("OlmoeForCausalLM");
  c.config["tie_word_embeddings"] = true;
  c.Remove("lm_head.weight");
  WriteCheckpoint(c, dir.path(), DType::kBF16);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  const ModelSpec& s = m.spec;
  EXPECT_EQ(s.architecture, Architecture::kOlmoe);
  EXPECT_EQ(s.qk_norm, QkNorm::kAllHeads);
  EXPECT_FALSE(s.norm_topk_prob);
  EXPECT_TRUE(s.tied_embeddings);
  EXPECT_EQ(m.lm_head.data(), m.token_embedding.data());
  ExpectElement(c, "model.embed_tokens.weight", m.lm_head, 123, DType::kBF16);
  const LayerWeights& w = m.layers[0];
  EXPECT_EQ(w.q_norm.num_elements(), kHidden);
  EXPECT_EQ(w.k_norm.num_elements(), kKvHeads * (kHidden / kHeads));
  ExpectElement(c, "model.layers.0.self_attn.k_norm.weight", w.k_norm, 15, DType::kBF16);
  ExpectElement(c, "model.norm.weight", m.output_norm, 4, DType::kBF16);
  EXPECT_EQ(CountModule(m, ModuleKind::kEmbeddings), 1);
}

TEST(HfLoaderTest, MissingLmHeadMeansTied) {
  TempDir dir;
  Checkpoint c = MakeTiny("MixtralForCausalLM");
  c.Remove("lm_head.weight");
  WriteCheckpoint(c, dir.path(), DType::kF32);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->spec.tied_embeddings);
  EXPECT_EQ((*model)->lm_head.data(), (*model)->token_embedding.data());
}

TEST(HfLoaderTest, AttentionBiasIncludesOutputProjection) {
  TempDir dir;
  Checkpoint c = MakeTiny("Qwen3MoeForCausalLM");
  c.config["attention_bias"] = true;
  const int64_t q_dim = kHeads * kQwen3HeadDim, kv_dim = kKvHeads * kQwen3HeadDim;
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    c.Add(p + "q_proj.bias", {q_dim});
    c.Add(p + "k_proj.bias", {kv_dim});
    c.Add(p + "v_proj.bias", {kv_dim});
    c.Add(p + "o_proj.bias", {kHidden});
  }
  WriteCheckpoint(c, dir.path(), DType::kF32);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE((*model)->spec.attention_bias);
  ExpectElement(c, "model.layers.1.self_attn.o_proj.bias", (*model)->layers[1].o.bias, 31,
                DType::kF32);
  ExpectElement(c, "model.layers.1.self_attn.v_proj.bias", (*model)->layers[1].v.bias, 1,
                DType::kF32);
}

TEST(HfLoaderTest, SlidingWindowCapsContext) {
  TempDir dir;
  Checkpoint c = MakeTiny("MixtralForCausalLM");
  c.config["sliding_window"] = 64;
  WriteCheckpoint(c, dir.path(), DType::kF32);
  auto model = LoadHfModel(dir.path());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->spec.context_length, 64);
}

TEST(HfLoaderTest, ExpertFilterSkipsExperts) {
  TempDir dir;
  Checkpoint c = MakeTiny("Qwen2MoeForCausalLM");
  // The experts this rank does not load need not even be present.
  for (int l = 0; l < kLayers; ++l) {
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      c.Remove("model.layers." + std::to_string(l) + ".mlp.experts.1." + proj + ".weight");
    }
  }
  WriteCheckpoint(c, dir.path(), DType::kBF16, 2, true);
  ModelLoadOptions options;
  options.load_expert = [](int layer_idx, int expert_idx) {
    return expert_idx % 2 == 0 || (layer_idx == 1 && expert_idx == 3);
  };
  auto model = LoadHfModel(dir.path(), options);
  ASSERT_TRUE(model.ok()) << model.status();
  const Model& m = **model;
  ASSERT_EQ(m.layers[0].experts.size(), static_cast<size_t>(kExperts));
  EXPECT_TRUE(m.layers[0].experts[0].resident());
  EXPECT_FALSE(m.layers[0].experts[1].resident());
  EXPECT_TRUE(m.layers[0].experts[2].resident());
  EXPECT_FALSE(m.layers[0].experts[3].resident());
  EXPECT_TRUE(m.layers[1].experts[3].resident());
  EXPECT_EQ(CountModule(m, ModuleKind::kExperts), (2 + 3) * 3);
  EXPECT_EQ(FindRecord(m, "model.layers.0.mlp.experts.3.up_proj.weight"), nullptr);
  ExpectElement(c, "model.layers.1.mlp.experts.3.up_proj.weight", m.layers[1].experts[3].up, 11,
                DType::kBF16);
}

TEST(HfLoaderTest, MissingTensorNamesIt) {
  TempDir dir;
  Checkpoint c = MakeTiny("MixtralForCausalLM");
  c.Remove("model.layers.1.block_sparse_moe.experts.2.w3.weight");
  WriteCheckpoint(c, dir.path(), DType::kF32);
  EXPECT_THAT(LoadError(dir.path(), absl::StatusCode::kInvalidArgument),
              HasSubstr("missing tensor model.layers.1.block_sparse_moe.experts.2.w3.weight"));
}

TEST(HfLoaderTest, WrongShapeNamesIt) {
  TempDir dir;
  Checkpoint c = MakeTiny("OlmoeForCausalLM");
  c.Add("model.layers.0.self_attn.k_norm.weight", {kHidden});  // should be kv_dim = 16
  WriteCheckpoint(c, dir.path(), DType::kF32);
  const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("model.layers.0.self_attn.k_norm.weight"));
  EXPECT_THAT(message, HasSubstr("[32]"));
  EXPECT_THAT(message, HasSubstr("expected [16]"));
  EXPECT_THAT(message, HasSubstr("model.safetensors"));
}

TEST(HfLoaderTest, WrongDtypeNamesIt) {
  TempDir dir;
  const Checkpoint c = MakeTiny("MixtralForCausalLM");
  WriteCheckpoint(c, dir.path(), DType::kF32);
  // Replace the file with one whose router is I32.
  SafetensorsWriter writer;
  for (const auto& [name, shape] : c.shapes) {
    const std::vector<uint8_t> bytes = Encode(c.values.at(name), DType::kF32);
    const DType dtype =
        name == "model.layers.0.block_sparse_moe.gate.weight" ? DType::kI32 : DType::kF32;
    ASSERT_TRUE(writer.AddTensor(name, dtype, shape, bytes.data(), bytes.size()).ok());
  }
  ASSERT_TRUE(writer.WriteFile(dir.Join("model.safetensors")).ok());
  const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("model.layers.0.block_sparse_moe.gate.weight"));
  EXPECT_THAT(message, HasSubstr("I32"));
}

TEST(HfLoaderTest, UnknownArchitectureListsSupported) {
  TempDir dir;
  Checkpoint c = MakeTiny("MixtralForCausalLM");
  c.config["architectures"] = {"LlamaForCausalLM"};
  WriteCheckpoint(c, dir.path(), DType::kF32);
  const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("LlamaForCausalLM"));
  for (const char* arch :
       {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM"}) {
    EXPECT_THAT(message, HasSubstr(arch));
  }
}

TEST(HfLoaderTest, MissingConfig) {
  TempDir dir;
  const std::string message = LoadError(dir.path(), absl::StatusCode::kNotFound);
  EXPECT_THAT(message, HasSubstr("config.json"));
}

TEST(HfLoaderTest, InvalidConfigJson) {
  TempDir dir;
  WriteCheckpoint(MakeTiny("MixtralForCausalLM"), dir.path(), DType::kF32);
  for (const std::string text : {"{\"architectures\": [", "", "[1, 2]", "nope"}) {
    WriteFileText(dir.Join("config.json"), text);
    const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(message, HasSubstr("config.json")) << text;
  }
}

// One bad config.json value per case: the error must name config.json and the key.
struct ConfigCase {
  std::string arch;
  std::string key;
  Json value;  // null with `remove` = delete the key
  bool remove;
  absl::StatusCode code;
  std::string expect;  // extra substring of the message
};

TEST(HfLoaderTest, BadConfigValuesNameTheKey) {
  const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const absl::StatusCode kUnimplemented = absl::StatusCode::kUnimplemented;
  const std::vector<ConfigCase> cases = {
      {"MixtralForCausalLM", "hidden_size", nullptr, true, kInvalid, "missing"},
      {"MixtralForCausalLM", "vocab_size", "64", false, kInvalid, "integer"},
      {"MixtralForCausalLM", "num_hidden_layers", 0, false, kInvalid, "> 0"},
      {"MixtralForCausalLM", "num_attention_heads", -4, false, kInvalid, "> 0"},
      {"MixtralForCausalLM", "num_local_experts", nullptr, true, kInvalid, "missing"},
      {"MixtralForCausalLM", "intermediate_size", 16.5, false, kInvalid, "integer"},
      {"MixtralForCausalLM", "max_position_embeddings", nullptr, true, kInvalid, "missing"},
      {"MixtralForCausalLM", "rms_norm_eps", "small", false, kInvalid, "number"},
      {"MixtralForCausalLM", "rope_theta", -1.0, false, kInvalid, "> 0"},
      {"MixtralForCausalLM", "tie_word_embeddings", 1, false, kInvalid, "true or false"},
      {"MixtralForCausalLM", "hidden_size", 10000000000LL, false, kInvalid, "too large"},
      {"MixtralForCausalLM", "architectures", Json::array(), false, kInvalid, "non-empty"},
      {"MixtralForCausalLM", "num_experts_per_tok", 8, false, kInvalid, "exceeds"},
      {"MixtralForCausalLM", "rope_scaling", Json::object({{"type", "yarn"}, {"factor", 4.0}}),
       false, kUnimplemented, "rope_scaling not supported"},
      {"MixtralForCausalLM", "hidden_act", "gelu", false, kUnimplemented, "not supported"},
      {"Qwen2MoeForCausalLM", "moe_intermediate_size", nullptr, true, kInvalid, "missing"},
      {"Qwen2MoeForCausalLM", "shared_expert_intermediate_size", nullptr, true, kInvalid,
       "missing"},
      {"Qwen2MoeForCausalLM", "norm_topk_prob", "yes", false, kInvalid, "true or false"},
      {"Qwen2MoeForCausalLM", "decoder_sparse_step", 2, false, kUnimplemented,
       "dense MLP layers are not supported"},
      {"Qwen3MoeForCausalLM", "mlp_only_layers", Json::array({0}), false, kUnimplemented,
       "dense MLP layers are not supported"},
      {"Qwen3MoeForCausalLM", "head_dim", 0, false, kInvalid, "> 0"},
      {"OlmoeForCausalLM", "clip_qkv", 8.0, false, kUnimplemented, "clip_qkv"},
      {"OlmoeForCausalLM", "num_experts", "4", false, kInvalid, "integer"},
  };
  for (const ConfigCase& tc : cases) {
    SCOPED_TRACE(tc.arch + " " + tc.key);
    TempDir dir;
    Checkpoint c = MakeTiny(tc.arch);
    if (tc.remove) {
      c.config.erase(tc.key);
    } else {
      c.config[tc.key] = tc.value;
    }
    WriteCheckpoint(c, dir.path(), DType::kF32);
    const std::string message = LoadError(dir.path(), tc.code);
    EXPECT_THAT(message, HasSubstr("config.json"));
    EXPECT_THAT(message, HasSubstr(tc.key));
    EXPECT_THAT(message, HasSubstr(tc.expect));
  }
}

TEST(HfLoaderTest, MissingShardListedInIndex) {
  TempDir dir;
  WriteCheckpoint(MakeTiny("Qwen3MoeForCausalLM"), dir.path(), DType::kBF16, 3, true);
  std::filesystem::remove(dir.Join("model-00002-of-00003.safetensors"));
  const std::string message = LoadError(dir.path(), absl::StatusCode::kNotFound);
  EXPECT_THAT(message, HasSubstr("model-00002-of-00003.safetensors"));
  EXPECT_THAT(message, HasSubstr("model.safetensors.index.json"));
}

TEST(HfLoaderTest, TensorMissingFromIndex) {
  TempDir dir;
  WriteCheckpoint(MakeTiny("Qwen3MoeForCausalLM"), dir.path(), DType::kBF16, 2, true);
  Json index = Json::parse(testing::ReadFileText(dir.Join("model.safetensors.index.json")));
  index["weight_map"].erase("model.layers.1.mlp.gate.weight");
  WriteFileText(dir.Join("model.safetensors.index.json"), index.dump());
  const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("missing tensor model.layers.1.mlp.gate.weight"));
  EXPECT_THAT(message, HasSubstr("model.safetensors.index.json"));
}

TEST(HfLoaderTest, IndexPointsAtWrongShard) {
  TempDir dir;
  WriteCheckpoint(MakeTiny("Qwen3MoeForCausalLM"), dir.path(), DType::kBF16, 2, true);
  const std::string index_path = dir.Join("model.safetensors.index.json");
  Json index = Json::parse(testing::ReadFileText(index_path));
  std::string& shard = index["weight_map"]["model.norm.weight"].get_ref<std::string&>();
  shard = shard == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                      : "model-00001-of-00002.safetensors";
  WriteFileText(index_path, index.dump());
  const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("missing tensor model.norm.weight"));
  EXPECT_THAT(message, HasSubstr(shard));
}

TEST(HfLoaderTest, BadIndex) {
  TempDir dir;
  WriteCheckpoint(MakeTiny("Qwen3MoeForCausalLM"), dir.path(), DType::kBF16, 2, true);
  const std::string index_path = dir.Join("model.safetensors.index.json");
  for (const std::string text :
       {"{", "{\"metadata\": {}}", "{\"weight_map\": {\"a\": 3}}",
        "{\"weight_map\": {\"a\": \"../model-00001-of-00002.safetensors\"}}"}) {
    SCOPED_TRACE(text);
    WriteFileText(index_path, text);
    EXPECT_THAT(LoadError(dir.path(), absl::StatusCode::kInvalidArgument),
                HasSubstr("model.safetensors.index.json"));
  }
}

TEST(HfLoaderTest, NoSafetensorsFiles) {
  TempDir dir;
  WriteFileText(dir.Join("config.json"), MakeTiny("OlmoeForCausalLM").config.dump());
  EXPECT_THAT(LoadError(dir.path(), absl::StatusCode::kNotFound), HasSubstr("*.safetensors"));
}

TEST(HfLoaderTest, TensorInTwoFiles) {
  TempDir dir;
  const Checkpoint c = MakeTiny("OlmoeForCausalLM");
  WriteCheckpoint(c, dir.path(), DType::kF32);
  SafetensorsWriter extra;
  const std::vector<uint8_t> bytes = Encode(c.values.at("model.norm.weight"), DType::kF32);
  ASSERT_TRUE(
      extra.AddTensor("model.norm.weight", DType::kF32, {kHidden}, bytes.data(), bytes.size())
          .ok());
  ASSERT_TRUE(extra.WriteFile(dir.Join("extra.safetensors")).ok());
  const std::string message = LoadError(dir.path(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message, HasSubstr("model.norm.weight"));
  EXPECT_THAT(message, HasSubstr("extra.safetensors"));
}

TEST(HfLoaderTest, TruncatedShardNamesFile) {
  TempDir dir;
  WriteCheckpoint(MakeTiny("MixtralForCausalLM"), dir.path(), DType::kBF16, 2, true);
  const std::string shard = dir.Join("model-00002-of-00002.safetensors");
  std::vector<uint8_t> bytes = testing::ReadFileBytes(shard);
  for (size_t cut : {size_t{0}, size_t{5}, size_t{100}, bytes.size() / 2, bytes.size() - 1}) {
    SCOPED_TRACE(cut);
    WriteFileBytes(shard, bytes.data(), cut);
    EXPECT_THAT(LoadError(dir.path(), absl::StatusCode::kInvalidArgument),
                HasSubstr("model-00002-of-00002.safetensors"));
  }
}

}  // namespace
}  // namespace herd
