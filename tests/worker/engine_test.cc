// The engine over the paged KV cache, on the tiny llama.cpp fixture model: a
// sequence's logits do not depend on which blocks hold it, sequences batched
// together get the logits they get alone, and a batch the cache cannot take
// is refused before anything is written.
#include "worker/engine.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using testing::ReadFileText;
using testing::TestDataPath;

std::vector<int32_t> Iota(int32_t n, int32_t first = 0) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Every float of every layer's K and V blocks.
std::vector<float> Snapshot(const KvCache& cache, int64_t num_layers) {
  std::vector<float> all;
  for (int64_t l = 0; l < num_layers; ++l) {
    for (int64_t b = 0; b < cache.num_blocks(); ++b) {
      all.insert(all.end(), cache.keys(l, b), cache.keys(l, b) + cache.block_elements());
      all.insert(all.end(), cache.values(l, b), cache.values(l, b) + cache.block_elements());
    }
  }
  return all;
}

class PagedEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto manifest =
        nlohmann::json::parse(ReadFileText(TestDataPath("llamacpp-tiny/manifest.json")));
    prompt_ = manifest["ids"].get<std::vector<int32_t>>();
    continuation_ = manifest["models"]["tiny-q4_0"]["greedy"].get<std::vector<int32_t>>();
    auto model = LoadModel(TestDataPath("llamacpp-tiny/tiny-q4_0.gguf"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto engine = Engine::Create(*model_, {.num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    vocab_ = model_->spec.vocab_size;
  }

  std::unique_ptr<KvCache> NewCache(int64_t num_blocks, int64_t block_tokens) {
    auto cache = KvCache::Create(model_->spec, num_blocks, block_tokens);
    EXPECT_TRUE(cache.ok()) << cache.status();
    return cache.ok() ? std::move(*cache) : nullptr;
  }

  // The prompt in one batch, then the continuation one token at a time
  // (teacher-forced): logits of every position, F32 [positions, vocab].
  std::vector<float> RunSequence(KvCache& cache, const std::vector<int32_t>& block_table) {
    const int64_t num_prompt = static_cast<int64_t>(prompt_.size());
    const int64_t n = num_prompt + static_cast<int64_t>(continuation_.size());
    std::vector<float> logits(n * vocab_);
    Batch prefill;
    prefill.cache = &cache;
    prefill.token_ids = prompt_;
    prefill.chunks = {{block_table, 0, num_prompt}};
    for (int64_t i = 0; i < num_prompt; ++i) prefill.logit_rows.push_back(i);
    EXPECT_TRUE(engine_->Forward(prefill, logits.data()).ok());
    for (int64_t pos = num_prompt; pos < n; ++pos) {
      Batch step;
      step.cache = &cache;
      step.token_ids = {continuation_[pos - num_prompt]};
      step.chunks = {{block_table, pos, 1}};
      step.logit_rows = {0};
      EXPECT_TRUE(engine_->Forward(step, logits.data() + pos * vocab_).ok());
    }
    return logits;
  }

  std::vector<int32_t> prompt_;
  std::vector<int32_t> continuation_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
  int64_t vocab_ = 0;
};

TEST_F(PagedEngineTest, ShuffledBlockTableGivesBitIdenticalLogits) {
  // 32 positions in blocks of 3: 11 blocks.
  auto identity_cache = NewCache(11, 3);
  const std::vector<float> reference = RunSequence(*identity_cache, Iota(11));
  for (int64_t block_tokens : {1, 3, 5, 16}) {
    SCOPED_TRACE(::testing::Message() << "block_tokens=" << block_tokens);
    // Twice the blocks the sequence needs; it gets a random half of them.
    const int64_t needed = (32 + block_tokens - 1) / block_tokens;
    auto cache = NewCache(2 * needed, block_tokens);
    std::vector<int32_t> table = Iota(static_cast<int32_t>(2 * needed));
    std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<uint32_t>(block_tokens)));
    table.resize(needed);
    EXPECT_EQ(RunSequence(*cache, table), reference);
  }
}

TEST_F(PagedEngineTest, SequencesBatchedWithInterleavedBlocksGetTheirLogitsAlone) {
  // Sequence a: the prompt; sequence b: a shorter, different prompt. Each
  // alone in a cache of its own, then both in one batch per step, a on the
  // even blocks and b on the odd ones of a shared cache.
  const std::vector<int32_t> a = prompt_;
  const std::vector<int32_t> b(prompt_.rbegin() + 5, prompt_.rend());
  const int64_t num_decode = 6;
  const int64_t block_tokens = 4;
  auto alone = [&](const std::vector<int32_t>& prompt) {
    auto cache = NewCache(8, block_tokens);
    const std::vector<int32_t> table = Iota(8);
    std::vector<float> logits((1 + num_decode) * vocab_);
    Batch prefill;
    prefill.cache = cache.get();
    prefill.token_ids = prompt;
    prefill.chunks = {{table, 0, static_cast<int64_t>(prompt.size())}};
    prefill.logit_rows = {static_cast<int64_t>(prompt.size()) - 1};
    EXPECT_TRUE(engine_->Forward(prefill, logits.data()).ok());
    for (int64_t g = 0; g < num_decode; ++g) {
      Batch step;
      step.cache = cache.get();
      step.token_ids = {continuation_[g]};
      step.chunks = {{table, static_cast<int64_t>(prompt.size()) + g, 1}};
      step.logit_rows = {0};
      EXPECT_TRUE(engine_->Forward(step, logits.data() + (1 + g) * vocab_).ok());
    }
    return logits;
  };
  const std::vector<float> a_alone = alone(a);
  const std::vector<float> b_alone = alone(b);

  auto shared = NewCache(16, block_tokens);
  std::vector<int32_t> a_table, b_table;
  for (int32_t i = 0; i < 8; ++i) {
    a_table.push_back(2 * i);
    b_table.push_back(2 * i + 1);
  }
  const int64_t num_a = static_cast<int64_t>(a.size());
  const int64_t num_b = static_cast<int64_t>(b.size());
  std::vector<float> a_batched((1 + num_decode) * vocab_), b_batched((1 + num_decode) * vocab_);
  std::vector<float> out(2 * vocab_);
  Batch prefill;
  prefill.cache = shared.get();
  prefill.token_ids = a;
  prefill.token_ids.insert(prefill.token_ids.end(), b.begin(), b.end());
  prefill.chunks = {{a_table, 0, num_a}, {b_table, 0, num_b}};
  prefill.logit_rows = {num_a - 1, num_a + num_b - 1};
  ASSERT_TRUE(engine_->Forward(prefill, out.data()).ok());
  std::copy_n(out.data(), vocab_, a_batched.data());
  std::copy_n(out.data() + vocab_, vocab_, b_batched.data());
  for (int64_t g = 0; g < num_decode; ++g) {
    Batch step;
    step.cache = shared.get();
    // b first this time: chunk order does not matter either.
    step.token_ids = {continuation_[g], continuation_[g]};
    step.chunks = {{b_table, num_b + g, 1}, {a_table, num_a + g, 1}};
    step.logit_rows = {1, 0};
    ASSERT_TRUE(engine_->Forward(step, out.data()).ok());
    std::copy_n(out.data(), vocab_, a_batched.data() + (1 + g) * vocab_);
    std::copy_n(out.data() + vocab_, vocab_, b_batched.data() + (1 + g) * vocab_);
  }
  EXPECT_NE(a_alone, b_alone);
  EXPECT_EQ(a_batched, a_alone);
  EXPECT_EQ(b_batched, b_alone);
}

TEST_F(PagedEngineTest, BatchTheCacheCannotTakeIsRefusedWithTheCacheUntouched) {
  auto cache = NewCache(10, 4);
  RunSequence(*cache, {9, 2, 0, 1, 3, 4, 5, 6});  // fills 8 blocks
  // A sequence at position 10 of blocks 9, 2, 0 (12 positions), and bad
  // variants of its table.
  const std::vector<float> before = Snapshot(*cache, model_->spec.num_layers);
  const std::vector<int32_t> table = {9, 2, 0};
  const std::vector<int32_t> bad_low = {9, -1, 0};
  const std::vector<int32_t> bad_high = {9, 10, 0};
  const std::vector<int32_t> short_table = {9, 2};
  const std::vector<int32_t> other = {3, 0};        // position 6 is block 0 row 2, as table's 10
  const std::vector<int32_t> repeated = {9, 9, 0};  // positions 1 and 5 share a row
  struct BadBatch {
    std::string what;
    Batch batch;
  };
  std::vector<BadBatch> cases;
  auto add = [&](std::string what, std::vector<SequenceChunk> chunks, KvCache* c) {
    Batch batch;
    batch.cache = c;
    for (const SequenceChunk& chunk : chunks) {
      for (int64_t i = 0; i < chunk.num_tokens; ++i) batch.token_ids.push_back(7);
    }
    batch.chunks = std::move(chunks);
    cases.push_back({std::move(what), std::move(batch)});
  };
  add("negative block id", {{bad_low, 4, 2}}, cache.get());
  add("block id past the cache", {{bad_high, 4, 2}}, cache.get());
  add("table too short", {{short_table, 7, 2}}, cache.get());
  add("start past the table", {{short_table, 9, 1}}, cache.get());
  add("start near overflow", {{table, std::numeric_limits<int64_t>::max() - 1, 2}}, cache.get());
  add("valid chunk beside a bad one", {{table, 10, 1}, {bad_high, 0, 1}}, cache.get());
  add("two chunks write one position", {{table, 10, 1}, {other, 6, 1}}, cache.get());
  add("a chunk writes one position twice", {{repeated, 1, 5}}, cache.get());
  add("no cache", {{table, 10, 1}}, nullptr);
  add("empty chunk", {{table, 10, 0}}, cache.get());
  add("negative position", {{table, -1, 1}}, cache.get());
  // A cache in another device's memory (here host memory that says so, as a
  // CUDA engine's cache would): the CPU engine must not touch it.
  KvMemory elsewhere;
  elsewhere.device = "cuda:0";
  elsewhere.allocate = [](size_t bytes) -> absl::StatusOr<void*> {
    return new float[bytes / sizeof(float)]();
  };
  elsewhere.release = [](void* data) { delete[] static_cast<float*>(data); };
  auto device_cache = KvCache::Create(model_->spec, 10, 4, DType::kF32, &elsewhere);
  ASSERT_TRUE(device_cache.ok()) << device_cache.status();
  add("a cache on another device", {{table, 0, 1}}, device_cache->get());
  for (const BadBatch& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<float> logits(vocab_);
    const absl::Status status = engine_->Forward(c.batch, logits.data());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_EQ(engine_->ValidateBatch(c.batch).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Snapshot(*cache, model_->spec.num_layers), before);
  }
  // The same positions through distinct blocks are fine.
  Batch ok;
  ok.cache = cache.get();
  ok.token_ids = {7, 7};
  const std::vector<int32_t> disjoint = {3, 1};
  ok.chunks = {{table, 10, 1}, {disjoint, 6, 1}};
  EXPECT_TRUE(engine_->Forward(ok, nullptr).ok());
}

TEST_F(PagedEngineTest, StatsCountTheRowsEachLayersExpertsComputed) {
  auto cache = NewCache(11, 3);
  RunSequence(*cache, Iota(11));
  const EngineStats& stats = engine_->stats();
  ASSERT_EQ(stats.layer_expert_rows.size(), static_cast<size_t>(model_->spec.num_layers));
  for (int64_t rows : stats.layer_expert_rows) {
    EXPECT_EQ(rows, 32 * model_->spec.num_experts_per_token);
  }
  EXPECT_EQ(stats.all_to_all_bytes, 0);
}

}  // namespace
}  // namespace herd
