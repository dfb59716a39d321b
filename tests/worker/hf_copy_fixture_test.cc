// A Hugging Face copy of the llama.cpp fixture model gives llama.cpp's logits
// through the HF loader. The test writes the copy itself: HF tensor names,
// Q/K rows un-permuted back to the NeoX (rotate-half) layout that
// convert_hf_to_gguf.py permuted into GPT-J pairs, config.json, and
// safetensors as one file and as shards with an index.
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "model/safetensors_writer.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace herd {
namespace {

using testing::ReadF32File;
using testing::TempDir;
using testing::TestDataPath;

std::vector<float> ToF32(const TensorView& v) {
  std::vector<float> out(v.num_elements());
  for (int64_t r = 0; r < v.num_rows(); ++r) {
    DequantizeRow(v.dtype(), v.row(r), out.data() + r * v.row_length(), v.row_length());
  }
  return out;
}

// GGUF row 2i+j of a head holds HF row j*(head_dim/2)+i (j in {0, 1}).
std::vector<float> UnpermuteRows(const std::vector<float>& w, int64_t num_heads, int64_t head_dim,
                                 int64_t cols) {
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t i = 0; i < head_dim / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t gguf_row = h * head_dim + 2 * i + j;
        const int64_t hf_row = h * head_dim + j * (head_dim / 2) + i;
        std::copy_n(w.data() + gguf_row * cols, cols, out.data() + hf_row * cols);
      }
    }
  }
  return out;
}

struct HfTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<HfTensor> HfTensorsOf(const Model& m) {
  const ModelSpec& s = m.spec;
  std::vector<HfTensor> out;
  auto add = [&](const std::string& name, const TensorView& v, std::vector<float> values = {}) {
    std::vector<int64_t> shape;
    for (int i = 0; i < v.rank(); ++i) shape.push_back(v.dim(i));
    out.push_back({name, shape, values.empty() ? ToF32(v) : std::move(values)});
  };
  add("model.embed_tokens.weight", m.token_embedding);
  add("model.norm.weight", m.output_norm);
  add("lm_head.weight", m.lm_head);
  for (int64_t l = 0; l < s.num_layers; ++l) {
    const LayerWeights& w = m.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", w.attn_norm);
    add(p + "post_attention_layernorm.weight", w.ffn_norm);
    add(p + "self_attn.q_proj.weight", w.q.weight,
        UnpermuteRows(ToF32(w.q.weight), s.num_heads, s.head_dim, s.hidden_size));
    add(p + "self_attn.k_proj.weight", w.k.weight,
        UnpermuteRows(ToF32(w.k.weight), s.num_kv_heads, s.head_dim, s.hidden_size));
    add(p + "self_attn.v_proj.weight", w.v.weight);
    add(p + "self_attn.o_proj.weight", w.o.weight);
    add(p + "block_sparse_moe.gate.weight", w.router);
    for (int64_t e = 0; e < s.num_experts; ++e) {
      const std::string pe = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      add(pe + "w1.weight", w.experts[e].gate);
      add(pe + "w3.weight", w.experts[e].up);
      add(pe + "w2.weight", w.experts[e].down);
    }
  }
  return out;
}

void WriteConfig(const ModelSpec& s, const std::string& dir) {
  const nlohmann::json config = {
      {"architectures", {"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"vocab_size", s.vocab_size},
      {"hidden_size", s.hidden_size},
      {"intermediate_size", s.expert_ffn_size},
      {"num_hidden_layers", s.num_layers},
      {"num_attention_heads", s.num_heads},
      {"num_key_value_heads", s.num_kv_heads},
      {"num_local_experts", s.num_experts},
      {"num_experts_per_tok", s.num_experts_per_token},
      {"rope_theta", s.rope_theta},
      {"rms_norm_eps", s.rms_norm_eps},
      {"max_position_embeddings", s.context_length},
      {"tie_word_embeddings", false},
      {"torch_dtype", "float32"},
  };
  testing::WriteFileText(dir + "/config.json", config.dump(2));
}

// Writes the tensors into `num_shards` files (with an index when > 1).
void WriteCheckpoint(const std::vector<HfTensor>& tensors, const std::string& dir, int num_shards) {
  std::vector<SafetensorsWriter> writers(num_shards);
  nlohmann::json weight_map;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int shard = static_cast<int>(i % num_shards);
    const HfTensor& t = tensors[i];
    ASSERT_TRUE(writers[shard]
                    .AddTensor(t.name, DType::kF32, t.shape, t.values.data(),
                               t.values.size() * sizeof(float))
                    .ok());
    weight_map[t.name] = num_shards == 1 ? "model.safetensors"
                                         : "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                                               std::to_string(num_shards) + ".safetensors";
  }
  for (int shard = 0; shard < num_shards; ++shard) {
    const std::string file = num_shards == 1
                                 ? "model.safetensors"
                                 : "model-0000" + std::to_string(shard + 1) + "-of-0000" +
                                       std::to_string(num_shards) + ".safetensors";
    ASSERT_TRUE(writers[shard].WriteFile(dir + "/" + file).ok());
  }
  if (num_shards > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    testing::WriteFileText(dir + "/model.safetensors.index.json", index.dump(2));
  }
}

class HfCopyTest : public ::testing::TestWithParam<int> {};

TEST_P(HfCopyTest, HfLoaderReproducesLlamaCppLogits) {
  const int num_shards = GetParam();
  auto gguf = LoadModel(TestDataPath("llamacpp-tiny/tiny-f32.gguf"));
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  TempDir dir;
  WriteConfig((*gguf)->spec, dir.path());
  WriteCheckpoint(HfTensorsOf(**gguf), dir.path(), num_shards);

  auto hf = LoadModel(dir.path());
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_EQ((*hf)->spec.rope_style, RopeStyle::kNeox);
  EXPECT_EQ((*hf)->format, "safetensors");

  const nlohmann::json manifest =
      nlohmann::json::parse(testing::ReadFileText(TestDataPath("llamacpp-tiny/manifest.json")));
  const auto ids = manifest["ids"].get<std::vector<int32_t>>();
  const auto greedy = manifest["models"]["tiny-f32"]["greedy"].get<std::vector<int32_t>>();

  auto engine = Engine::Create(**hf, {.num_threads = 2});
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerateOptions options;
  options.max_new_tokens = 16;
  options.keep_logits = true;
  auto result = Generate(**engine, ids, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens, greedy);

  std::vector<float> ref = ReadF32File(TestDataPath("llamacpp-tiny/tiny-f32.prefill.f32.bin"));
  const std::vector<float> decode =
      ReadF32File(TestDataPath("llamacpp-tiny/tiny-f32.decode.f32.bin"));
  ref.insert(ref.end(), decode.begin(), decode.end());
  ASSERT_EQ(result->logits.size(), ref.size());
  float max_diff = 0.0f;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(result->logits[i] - ref[i]));
  }
  EXPECT_LE(max_diff, 1e-4f);
  std::printf("[ hf copy, %d shard(s) ] max |herd - llama.cpp| = %.3g\n", num_shards, max_diff);
}

INSTANTIATE_TEST_SUITE_P(SingleAndSharded, HfCopyTest, ::testing::Values(1, 3));

}  // namespace
}  // namespace herd
