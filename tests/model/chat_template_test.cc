// Chat templates: each format recognised from real template texts and
// rendered to the exact prompt text the template produces (the expected
// strings were rendered from these templates with Python's jinja2).
#include "model/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

using ::testing::HasSubstr;

// Template texts as the checkpoints ship them (Jinja source).
constexpr char kMixtral[] =
    R"({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})";
constexpr char kQwen2[] =
    R"({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";
constexpr char kDeepSeek[] =
    R"({% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %})";
constexpr char kLlama3[] =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})";
// tests/data/tokenizers/ggml-vocab-phi-3.gguf's tokenizer.chat_template.
constexpr char kPhi3[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') "
    "%}{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>' + "
    "'\\n'}}{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + "
    "'\\n'}}{% endif %}{% endfor %}";

const std::vector<ChatMessage> kConversation = {
    {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye?"}};
std::vector<ChatMessage> WithSystem() {
  std::vector<ChatMessage> m = {{"system", "Be brief."}};
  m.insert(m.end(), kConversation.begin(), kConversation.end());
  return m;
}

ChatTemplateOptions Options(std::string bos, std::string eos) {
  ChatTemplateOptions options;
  options.bos_token = std::move(bos);
  options.eos_token = std::move(eos);
  return options;
}

TEST(ChatTemplateTest, RecognisesFormats) {
  const std::pair<const char*, ChatFormat> cases[] = {
      {kMixtral, ChatFormat::kMistral},
      {kQwen2, ChatFormat::kChatMl},
      {kDeepSeek, ChatFormat::kDeepSeek},
      {kLlama3, ChatFormat::kLlama3},
      {kPhi3, ChatFormat::kPhi3},
      {"{{ bos_token }}{% for m in messages %}{{ '<\xEF\xBD\x9CUser\xEF\xBD\x9C>' }}{% endfor %}",
       ChatFormat::kDeepSeekV3}};
  for (const auto& [text, format] : cases) {
    auto detected = DetectChatTemplate(text);
    ASSERT_TRUE(detected.ok()) << detected.status();
    EXPECT_EQ(detected->format, format) << ChatFormatName(detected->format);
  }
  EXPECT_EQ(DetectChatTemplate(kQwen2)->default_system, "You are a helpful assistant.");
  EXPECT_EQ(DetectChatTemplate(kDeepSeek)->default_system, "");
}

TEST(ChatTemplateTest, UnknownTemplatesAreErrors) {
  auto none = DetectChatTemplate("");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(none.status().message(), HasSubstr("no chat template"));
  auto other = DetectChatTemplate("{% for m in messages %}<start_of_turn>{% endfor %}");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(other.status().message(), HasSubstr("[INST]"));
}

TEST(ChatTemplateTest, ChatMlWithDefaultSystem) {
  auto out = ApplyChatTemplate(kQwen2, kConversation, Options("", ""));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_"
            "end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n<|"
            "im_start|>assistant\n");
  out = ApplyChatTemplate(kQwen2, WithSystem(), Options("", ""));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|"
            ">assistant\nHello!<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n<|im_start|>"
            "assistant\n");
  ChatTemplateOptions no_prompt;
  no_prompt.add_generation_prompt = false;
  out = RenderChat(ChatFormat::kChatMl, {{"user", "x"}}, no_prompt);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<|im_start|>user\nx<|im_end|>\n");
}

TEST(ChatTemplateTest, Mixtral) {
  auto out = ApplyChatTemplate(kMixtral, kConversation, Options("<s>", "</s>"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "<s>[INST] Hi [/INST]Hello!</s>[INST] Bye? [/INST]");
  // A system message goes into the first user turn.
  out = ApplyChatTemplate(kMixtral, WithSystem(), Options("<s>", "</s>"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye? [/INST]");
  auto bad = ApplyChatTemplate(kMixtral, {{"assistant", "a"}, {"user", "b"}}, Options("", ""));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("alternate"));
}

TEST(ChatTemplateTest, DeepSeek) {
  const std::string bos =
      "<\xEF\xBD\x9C"
      "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::string eos =
      "<\xEF\xBD\x9C"
      "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  auto out = ApplyChatTemplate(kDeepSeek, WithSystem(), Options(bos, eos));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            bos + "Be brief.\n\nUser: Hi\n\nAssistant: Hello!" + eos + "User: Bye?\n\nAssistant:");
}

TEST(ChatTemplateTest, DeepSeekV3) {
  auto out = RenderChat(ChatFormat::kDeepSeekV3, WithSystem(), Options("<bos>", "<eos>"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<bos>Be brief.<\xEF\xBD\x9CUser\xEF\xBD\x9C>Hi<\xEF\xBD\x9C"
            "Assistant\xEF\xBD\x9C>Hello!<eos><\xEF\xBD\x9CUser\xEF\xBD\x9C>Bye?<\xEF\xBD\x9C"
            "Assistant\xEF\xBD\x9C>");
}

TEST(ChatTemplateTest, Llama3TrimsContent) {
  std::vector<ChatMessage> messages = WithSystem();
  messages[1].content = "  Hi\n";
  auto out = ApplyChatTemplate(kLlama3, messages, Options("<|begin_of_text|>", "<|eot_id|>"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|"
            "start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|"
            "end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye?<|"
            "eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, Phi3FromTheFixtureTemplate) {
  auto out = ApplyChatTemplate(kPhi3, kConversation, Options("<s>", "<|endoftext|>"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out,
            "<s><|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nBye?<|end|>\n<|"
            "assistant|>\n");
}

TEST(ChatTemplateTest, RejectsBadConversations) {
  auto empty = RenderChat(ChatFormat::kChatMl, {}, {});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  auto role = RenderChat(ChatFormat::kChatMl, {{"user", "a"}, {"tool", "b"}}, {});
  EXPECT_EQ(role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(role.status().message(), HasSubstr("'tool'"));
  auto late_system = RenderChat(ChatFormat::kLlama3, {{"user", "a"}, {"system", "b"}}, {});
  EXPECT_EQ(late_system.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(late_system.status().message(), HasSubstr("message 1"));
}

}  // namespace
}  // namespace herd
