// The typed YAML config: defaults, overrides, every kind of bad input, and
// every example under configs/ (and the Kubernetes one) loads and validates.
#include "core/config.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

TEST(ConfigTest, EmptyTextGivesDefaults) {
  auto config = ParseConfig("", "empty.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->engine.threads, 0);
  EXPECT_EQ(config->engine.device, "cpu");
  EXPECT_EQ(config->log_level, "info");
}

TEST(ConfigTest, ReadsEveryField) {
  auto config = ParseConfig(
      "model: /m.gguf\nengine:\n  device: cuda\n  threads: 2\n  max_context_tokens: 4096\n"
      "log_level: debug\n",
      "x.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model, "/m.gguf");
  EXPECT_EQ(config->engine.device, "cuda");
  EXPECT_EQ(config->engine.threads, 2);
  EXPECT_EQ(config->engine.max_context_tokens, 4096);
  EXPECT_EQ(config->log_level, "debug");
}

TEST(ConfigTest, BadInputNamesFileLineAndKey) {
  struct Case {
    const char* text;
    const char* expected;
  };
  for (const Case& c : std::vector<Case>{
           {"engine:\n  thread: 2\n", "x.yaml:2: unknown key 'thread' in 'engine'"},
           {"modle: a\n", "unknown key 'modle'"},
           {"engine:\n  threads: two\n", "'engine.threads' has the wrong type"},
           {"engine: [1, 2]\n", "'engine' must be a mapping"},
           {"engine:\n  threads: -1\n", "engine.threads must be in [0, 1024]"},
           {"engine:\n  device: tpu\n", "engine.device must be cpu or cuda, got 'tpu'"},
           {"log_level: loud\n", "log_level must be"},
           {"model: [unclosed\n", "invalid YAML"},
       }) {
    SCOPED_TRACE(c.text);
    auto config = ParseConfig(c.text, "x.yaml");
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(c.expected), std::string::npos) << config.status();
    EXPECT_NE(config.status().message().find("x.yaml"), std::string::npos) << config.status();
  }
}

TEST(ConfigTest, MissingFileIsNotFound) {
  auto config = LoadConfigFile("/nonexistent/herd.yaml");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
}

TEST(ConfigTest, ReadsTheServeSection) {
  auto config = ParseConfig(
      "serve:\n  host: 0.0.0.0\n  port: 9000\n  api_key: k\n  kv_cache_bytes: 1024\n"
      "  kv_block_tokens: 8\n  max_step_tokens: 64\n  max_waiting: 3\n  max_running: 2\n"
      "  max_body_bytes: 100\n  drain_timeout_s: 1.5\n  request_timeout_s: 9\n"
      "  detailed_expert_metrics: true\n  model_name: m\n  kv_cache_type: f16\n"
      "  prefix_caching: false\n",
      "serve.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  const ServeConfig& s = config->serve;
  EXPECT_EQ(s.host, "0.0.0.0");
  EXPECT_EQ(s.port, 9000);
  EXPECT_EQ(s.api_key, "k");
  EXPECT_EQ(s.model_name, "m");
  EXPECT_EQ(s.kv_cache_bytes, 1024);
  EXPECT_EQ(s.kv_block_tokens, 8);
  EXPECT_EQ(s.max_step_tokens, 64);
  EXPECT_EQ(s.max_waiting, 3);
  EXPECT_EQ(s.max_running, 2);
  EXPECT_EQ(s.max_body_bytes, 100);
  EXPECT_DOUBLE_EQ(s.drain_timeout_s, 1.5);
  EXPECT_DOUBLE_EQ(s.request_timeout_s, 9);
  EXPECT_TRUE(s.detailed_expert_metrics);
  EXPECT_EQ(s.kv_cache_type, DType::kF16);
  EXPECT_FALSE(s.prefix_caching);
  EXPECT_EQ(ParseConfig("", "empty.yaml")->serve.kv_cache_type, DType::kF32);
  EXPECT_TRUE(ParseConfig("", "empty.yaml")->serve.prefix_caching);
}

TEST(ConfigTest, RejectsBadServeValues) {
  for (const char* text :
       {"serve:\n  port: 70000\n", "serve:\n  max_waiting: 0\n", "serve:\n  kv_block_tokens: -1\n",
        "serve:\n  kv_cache_bytes: -5\n", "serve:\n  drain_timeout_s: -1\n", "serve:\n  host: ''\n",
        "serve:\n  prot: 1\n", "serve:\n  port: eighty\n", "serve:\n  kv_cache_type: bf16\n",
        "serve:\n  kv_cache_type: [f16]\n", "serve:\n  prefix_caching: maybe\n",
        "engine:\n  device: cuda\nserve:\n  kv_cache_type: f16\n"}) {
    SCOPED_TRACE(text);
    auto config = ParseConfig(text, "bad.yaml");
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ConfigTest, EveryExampleInConfigsValidates) {
  int checked = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(HERD_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    auto config = LoadConfigFile(entry.path().string());
    EXPECT_TRUE(config.ok()) << config.status();
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// The config the Kubernetes manifests mount from a ConfigMap (deploy/k8s/).
TEST(ConfigTest, KubernetesConfigValidates) {
  auto config = LoadConfigFile(std::string(HERD_SOURCE_DIR) + "/deploy/k8s/base/herd-config.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->serve.host, "0.0.0.0");  // reachable by the Service and the probes
  EXPECT_EQ(config->serve.api_key, "");      // from a Secret, on the command line
}

}  // namespace
}  // namespace herd
