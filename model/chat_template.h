// Chat messages -> prompt text, in the format a model was trained on.
//
// Herd does not run Jinja: Debian ships no C++ Jinja engine. Instead the
// checkpoint's chat template text (GGUF `tokenizer.chat_template`,
// tokenizer_config.json `chat_template`) is recognised as one of the formats
// below by the markers it contains, and the prompt is rendered in code.
//
// Each format, the marker that selects it, and what one user turn "hi" plus
// the generation prompt renders to:
//   llama3       <|start_header_id|>
//                <bos><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>
//                <|start_header_id|>assistant<|end_header_id|>\n\n
//   chatml       <|im_start|> (Qwen)
//                <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n
//   deepseek-v3  <｜User｜>
//                <bos><｜User｜>hi<｜Assistant｜>
//   phi3         <|user|> and <|end|>
//                <bos><|user|>\nhi<|end|>\n<|assistant|>\n
//   mistral      [INST] (Mistral, Mixtral)
//                <bos>[INST] hi [/INST]
//   deepseek     'User: ' and 'Assistant:' (DeepSeek LLM / MoE)
//                <bos>User: hi\n\nAssistant:
//
// The rendered text contains special tokens as text: encode it with
// EncodeOptions::parse_special = true and without add_bos.
// All functions are pure and thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace herd {

enum class ChatFormat { kLlama3, kChatMl, kDeepSeekV3, kPhi3, kMistral, kDeepSeek };
// "llama3", "chatml", "deepseek-v3", "phi3", "mistral", "deepseek".
const char* ChatFormatName(ChatFormat format);

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplateOptions {
  // The model's BOS and EOS token text ("<s>", "</s>"); empty when it has none.
  std::string bos_token;
  std::string eos_token;
  // End with the header of an assistant turn, so the model writes the reply.
  bool add_generation_prompt = true;
  // ChatML: a system message put first when the conversation has none (Qwen2
  // templates carry one; DetectChatTemplate fills it in from the template).
  std::string default_system;
};

struct ChatTemplate {
  ChatFormat format;
  std::string default_system;  // ChatML only, from the template text
};

// Recognises the format of `template_text`. Unimplemented naming the markers
// Herd knows when none is found (including an empty template).
absl::StatusOr<ChatTemplate> DetectChatTemplate(absl::string_view template_text);

// Renders `messages` in `format`. InvalidArgument naming the message for an
// unknown role, an empty conversation, or (mistral, deepseek-v3) a role order
// the format cannot express (user/assistant must alternate, user first;
// a system message only first).
absl::StatusOr<std::string> RenderChat(ChatFormat format, absl::Span<const ChatMessage> messages,
                                       const ChatTemplateOptions& options);

// DetectChatTemplate + RenderChat (the template's default system message is
// used unless options.default_system is set).
absl::StatusOr<std::string> ApplyChatTemplate(absl::string_view template_text,
                                              absl::Span<const ChatMessage> messages,
                                              ChatTemplateOptions options);

}  // namespace herd
