#include "worker/benchmark.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cpu_features.h"
#include "kernels/sampling.h"

namespace herd {
namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Sums 64-bit words with 8 independent accumulators so the loop is bound by
// loads, not by the add chain; the compiler vectorises it, for the widest
// ISA the CPU has: with baseline x86-64's 16-byte loads fewer cache lines are
// in flight, and on a Xeon with AVX-512 the sweep read 16.8 GB/s where
// 64-byte loads read 31 GB/s (and decode itself read weights at 38 GB/s).
__attribute__((target_clones("avx512f", "avx2", "default"))) uint64_t SumWords(const uint64_t* p,
                                                                               int64_t n) {
  uint64_t acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  }
  for (; i < n; ++i) acc[0] += p[i];
  uint64_t total = 0;
  for (uint64_t a : acc) total += a;
  return total;
}

// Vectors of 16, 8 and 4 floats (GCC's extension): one AVX-512, AVX2 or SSE
// register in the functions below, each built for that ISA.
typedef float Floats16 __attribute__((vector_size(64)));
typedef float Floats8 __attribute__((vector_size(32)));
typedef float Floats4 __attribute__((vector_size(16)));

// 12 chains of acc = acc * m + c over `Vec`, which the caller's target
// contracts to FMAs; returns a sum so that nothing is optimised away.
template <typename Vec>
__attribute__((always_inline)) inline float FmaChains(int64_t iterations) {
  constexpr int kLanes = sizeof(Vec) / sizeof(float);
  Vec acc[12];
#pragma GCC unroll 12
  for (int i = 0; i < 12; ++i) acc[i] = Vec{} + 0.001f * static_cast<float>(i);
  const Vec m = Vec{} + 0.999999f;
  const Vec c = Vec{} + 1e-7f;
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = acc[i] * m + c;
  }
  float total = 0;
  for (const Vec& v : acc) {
    for (int l = 0; l < kLanes; ++l) total += v[l];
  }
  return total;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // the vectors never cross a call
__attribute__((target("avx512f"))) float FmaChains512(int64_t n) { return FmaChains<Floats16>(n); }
__attribute__((target("avx2,fma"))) float FmaChains256(int64_t n) { return FmaChains<Floats8>(n); }
float FmaChains128(int64_t n) { return FmaChains<Floats4>(n); }
#pragma GCC diagnostic pop

// The matrices one token multiplies in every layer: each non-expert matrix
// and `experts_per_token` experts' FFNs (experts share one shape).
struct LayerMatrices {
  double bytes = 0;
  double elements = 0;
};

LayerMatrices LayerMatricesPerToken(const Model& model, double experts_per_token) {
  LayerMatrices sum;
  auto add = [&](const TensorView& t, double times) {
    sum.bytes += times * static_cast<double>(t.num_bytes());
    sum.elements += times * static_cast<double>(t.num_elements());
  };
  for (const LayerWeights& w : model.layers) {
    for (const TensorView* t :
         {&w.q.weight, &w.k.weight, &w.v.weight, &w.o.weight, &w.router, &w.shared_expert.gate,
          &w.shared_expert.up, &w.shared_expert.down}) {
      if (!t->empty()) add(*t, 1.0);
    }
    for (const ExpertFfnWeights& e : w.experts) {
      if (!e.resident()) continue;  // dropped (or another rank's)
      for (const TensorView* t : {&e.gate, &e.up, &e.down}) add(*t, experts_per_token);
      break;
    }
  }
  return sum;
}

}  // namespace

double MeasureFmaPeakGflops(int num_threads, int repetitions) {
  const cpu::CpuFeatures& cpu = cpu::DetectCpuFeatures();
  float (*chains)(int64_t) = &FmaChains128;
  int lanes = 4;
  if (cpu.avx512f) {
    chains = &FmaChains512;
    lanes = 16;
  } else if (cpu.avx2 && cpu.fma) {
    chains = &FmaChains256;
    lanes = 8;
  }
  // About 1 GFLOP per thread: 10 ms a repetition at 100 GFLOP/s a core.
  const int64_t iterations = int64_t{40} * 1000 * 1000 / lanes;
  ThreadPool pool(num_threads);
  std::vector<float> sums(num_threads);
  double best = 0;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(num_threads, 1, [&](int64_t b, int64_t e, int t) {
      for (int64_t i = b; i < e; ++i) sums[t] += chains(iterations);
    });
    best = std::max(best, 2.0 * 12 * lanes * iterations * num_threads / Seconds(start) / 1e9);
  }
  // Keep the sums observable so the chains are not optimised away.
  if (std::accumulate(sums.begin(), sums.end(), 0.0f) == 1.0f) std::fputc(' ', stderr);
  return best;
}

BandwidthResult MeasureMemoryBandwidth(int num_threads, int64_t buffer_bytes, int repetitions) {
  ThreadPool pool(num_threads);
  const int64_t words = buffer_bytes / 8;
  std::unique_ptr<uint64_t[]> src(new uint64_t[words]);
  std::unique_ptr<uint64_t[]> dst(new uint64_t[words]);
  pool.ParallelFor(words, 4096, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      src[i] = static_cast<uint64_t>(i);
      dst[i] = 0;
    }
  });
  BandwidthResult best;
  std::vector<uint64_t> sums(num_threads);
  for (int r = 0; r < repetitions; ++r) {
    auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(words, 4096, [&](int64_t b, int64_t e, int t) {
      sums[t] += SumWords(src.get() + b, e - b);
    });
    best.read_gbps = std::max(best.read_gbps, buffer_bytes / Seconds(start) / 1e9);
    start = std::chrono::steady_clock::now();
    pool.ParallelFor(words, 4096, [&](int64_t b, int64_t e, int) {
      std::memcpy(dst.get() + b, src.get() + b, (e - b) * 8);
    });
    best.copy_gbps = std::max(best.copy_gbps, 2.0 * buffer_bytes / Seconds(start) / 1e9);
  }
  // Keep the sums observable so the reads are not optimised away.
  if (std::accumulate(sums.begin(), sums.end(), uint64_t{0}) == 1) std::fputc(' ', stderr);
  return best;
}

Summary Summarize(std::vector<double> samples) {
  Summary s;
  s.samples = samples;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  s.median = n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
  const double mean = std::accumulate(samples.begin(), samples.end(), 0.0) / n;
  double var = 0;
  for (double v : samples) var += (v - mean) * (v - mean);
  s.stddev = n > 1 ? std::sqrt(var / (n - 1)) : 0.0;
  return s;
}

absl::StatusOr<ModelBenchResult> RunModelBenchmark(ForwardEngine& engine, const Model& model,
                                                   const ModelBenchOptions& options) {
  const ModelSpec& s = model.spec;
  const int64_t depth = options.depth;
  const int64_t capacity =
      depth + std::max<int64_t>({options.prompt_tokens, options.gen_tokens, 1});
  // One sequence in a paged cache of its own, in the block size serving uses.
  const int64_t num_blocks = (capacity + kDefaultKvBlockTokens - 1) / kDefaultKvBlockTokens;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        engine.CreateKvCache(num_blocks, kDefaultKvBlockTokens));
  std::vector<int32_t> block_table(num_blocks);
  std::iota(block_table.begin(), block_table.end(), 0);
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(s.vocab_size - 1));
  std::vector<float> logits(s.vocab_size);
  ModelBenchResult result;

  // Warm-up: one short prefill and decode so page faults and first-touch
  // costs stay out of the samples.
  {
    Batch warm;
    warm.cache = cache.get();
    warm.token_ids = {token(rng), token(rng)};
    warm.chunks = {{block_table, 0, 2}};
    warm.logit_rows = {1};
    HERD_RETURN_IF_ERROR(engine.Forward(warm, logits.data()));
  }

  std::vector<double> prefill, decode;
  int64_t decode_routed = 0, decode_skipped = 0;
  // `count` random tokens at positions [first, first + count), as one batch.
  const auto prompt = [&](int64_t first, int64_t count) {
    Batch batch;
    batch.cache = cache.get();
    for (int64_t i = 0; i < count; ++i) batch.token_ids.push_back(token(rng));
    batch.chunks = {{block_table, first, count}};
    batch.logit_rows = {count - 1};
    return batch;
  };
  for (int r = 0; r < options.repetitions; ++r) {
    if (depth > 0) HERD_RETURN_IF_ERROR(engine.Forward(prompt(0, depth), logits.data()));
    if (options.prompt_tokens > 0) {
      const Batch batch = prompt(depth, options.prompt_tokens);
      const auto start = std::chrono::steady_clock::now();
      HERD_RETURN_IF_ERROR(engine.Forward(batch, logits.data()));
      prefill.push_back(options.prompt_tokens / Seconds(start));
    }
    if (options.gen_tokens > 0) {
      int32_t next = token(rng);
      const EngineStats before = engine.stats();
      const auto start = std::chrono::steady_clock::now();
      for (int64_t pos = 0; pos < options.gen_tokens; ++pos) {
        Batch step;
        step.cache = cache.get();
        step.token_ids = {next};
        step.chunks = {{block_table, depth + pos, 1}};
        step.logit_rows = {0};
        HERD_RETURN_IF_ERROR(engine.Forward(step, logits.data()));
        next = cpu::ArgMax(logits.data(), s.vocab_size);
      }
      decode.push_back(options.gen_tokens / Seconds(start));
      decode_routed += engine.stats().routed_slots - before.routed_slots;
      decode_skipped += engine.stats().skipped_slots - before.skipped_slots;
    }
  }
  result.process_resident_bytes = ResidentBytes();
  result.prefill_tokens_per_second = Summarize(prefill);
  result.decode_tokens_per_second = Summarize(decode);

  // Routed experts read per token: top_k, less what dynamic skipping left out.
  result.decode_skipped_fraction =
      decode_routed > 0 ? static_cast<double>(decode_skipped) / decode_routed : 0.0;
  const double experts_per_token = s.num_experts_per_token * (1.0 - result.decode_skipped_fraction);
  const LayerMatrices decode_layers = LayerMatricesPerToken(model, experts_per_token);
  result.decode_weight_bytes = static_cast<int64_t>(decode_layers.bytes) +
                               model.lm_head.num_bytes() +
                               model.token_embedding.num_bytes() / model.spec.vocab_size;
  result.decode_weight_gbps =
      result.decode_weight_bytes * result.decode_tokens_per_second.median / 1e9;

  const double prompt_tokens = static_cast<double>(options.prompt_tokens);
  if (prompt_tokens > 0) {
    const LayerMatrices prefill_layers = LayerMatricesPerToken(model, s.num_experts_per_token);
    // Token t attends to depth + t + 1 positions: q.k and p.v, head_dim
    // multiply-adds each.
    const double attention =
        2.0 * 2.0 * s.num_heads * s.head_dim *
        (prompt_tokens * static_cast<double>(depth) + prompt_tokens * (prompt_tokens + 1) / 2) *
        static_cast<double>(model.layers.size());
    result.prefill_flops = 2.0 * prefill_layers.elements * prompt_tokens + attention +
                           2.0 * static_cast<double>(model.lm_head.num_elements());
    result.prefill_gflops =
        result.prefill_flops * result.prefill_tokens_per_second.median / prompt_tokens / 1e9;
  }
  return result;
}

int64_t ResidentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace herd
