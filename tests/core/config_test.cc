// The typed YAML config: defaults, overrides, every kind of bad input, and
// every example under configs/ loads and validates.
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
  EXPECT_EQ(config->log_level, "info");
}

TEST(ConfigTest, ReadsEveryField) {
  auto config = ParseConfig(
      "model: /m.gguf\nengine:\n  threads: 2\n  max_context_tokens: 4096\nlog_level: debug\n",
      "x.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model, "/m.gguf");
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

}  // namespace
}  // namespace herd
