#include "model/chat_template.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {
namespace {

absl::Status CheckRoles(absl::Span<const ChatMessage> messages) {
  if (messages.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role '", role,
                                                     "'; expected system, user or assistant"));
    }
    if (role == "system" && i != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i, " is a system message; only the first message may be one"));
    }
  }
  return absl::OkStatus();
}

// Turns must go user, assistant, user, ... after an optional system message.
absl::Status CheckAlternation(absl::Span<const ChatMessage> messages, ChatFormat format) {
  const size_t first = messages[0].role == "system" ? 1 : 0;
  for (size_t i = first; i < messages.size(); ++i) {
    const char* expected = (i - first) % 2 == 0 ? "user" : "assistant";
    if (messages[i].role != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          "message ", i, " is '", messages[i].role, "' but the ", ChatFormatName(format),
          " format needs user and assistant turns to alternate, user first"));
    }
  }
  return absl::OkStatus();
}

// The literal system prompt in `'<|im_start|>system\n...<|im_end|>` of a
// ChatML template (Qwen2's "You are a helpful assistant."), or empty.
std::string ChatMlDefaultSystem(absl::string_view text) {
  constexpr absl::string_view kStart = "<|im_start|>system\\n";
  const size_t begin = text.find(kStart);
  if (begin == absl::string_view::npos) return "";
  const size_t content = begin + kStart.size();
  const size_t end = text.find("<|im_end|>", content);
  if (end == absl::string_view::npos) return "";
  const absl::string_view found = text.substr(content, end - content);
  if (found.empty() || absl::StrContains(found, "'") || absl::StrContains(found, "{") ||
      absl::StrContains(found, "\"")) {
    return "";
  }
  return std::string(found);
}

}  // namespace

const char* ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kChatMl:
      return "chatml";
    case ChatFormat::kDeepSeekV3:
      return "deepseek-v3";
    case ChatFormat::kPhi3:
      return "phi3";
    case ChatFormat::kMistral:
      return "mistral";
    case ChatFormat::kDeepSeek:
      return "deepseek";
  }
  return "unknown";
}

absl::StatusOr<ChatTemplate> DetectChatTemplate(absl::string_view text) {
  if (absl::StrContains(text, "<|start_header_id|>")) return ChatTemplate{ChatFormat::kLlama3, ""};
  if (absl::StrContains(text, "<|im_start|>")) {
    return ChatTemplate{ChatFormat::kChatMl, ChatMlDefaultSystem(text)};
  }
  if (absl::StrContains(text, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>")) {
    return ChatTemplate{ChatFormat::kDeepSeekV3, ""};
  }
  if (absl::StrContains(text, "<|user|>") && absl::StrContains(text, "<|end|>")) {
    return ChatTemplate{ChatFormat::kPhi3, ""};
  }
  if (absl::StrContains(text, "[INST]")) return ChatTemplate{ChatFormat::kMistral, ""};
  if (absl::StrContains(text, "User: ") && absl::StrContains(text, "Assistant:")) {
    return ChatTemplate{ChatFormat::kDeepSeek, ""};
  }
  return absl::UnimplementedError(absl::StrCat(
      text.empty() ? "the model has no chat template"
                   : "the chat template is not one Herd recognises",
      "; Herd renders Llama-3 (<|start_header_id|>), ChatML (<|im_start|>), DeepSeek-V3 "
      "(<\xEF\xBD\x9CUser\xEF\xBD\x9C>), Phi-3 (<|user|>), Mistral/Mixtral ([INST]) and "
      "DeepSeek ('User: ' / 'Assistant:') templates"));
}

absl::StatusOr<std::string> RenderChat(ChatFormat format, absl::Span<const ChatMessage> messages,
                                       const ChatTemplateOptions& options) {
  HERD_RETURN_IF_ERROR(CheckRoles(messages));
  std::string out;
  const bool has_system = messages[0].role == "system";
  switch (format) {
    case ChatFormat::kLlama3:
      out = options.bos_token;
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n",
                        absl::StripAsciiWhitespace(m.content), "<|eot_id|>");
      }
      if (options.add_generation_prompt) {
        absl::StrAppend(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
      }
      break;
    case ChatFormat::kChatMl:
      if (!has_system && !options.default_system.empty()) {
        absl::StrAppend(&out, "<|im_start|>system\n", options.default_system, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
      }
      if (options.add_generation_prompt) absl::StrAppend(&out, "<|im_start|>assistant\n");
      break;
    case ChatFormat::kDeepSeekV3:
      HERD_RETURN_IF_ERROR(CheckAlternation(messages, format));
      out = options.bos_token;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          absl::StrAppend(&out, m.content);
        } else if (m.role == "user") {
          absl::StrAppend(&out, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>", m.content);
        } else {
          absl::StrAppend(&out,
                          "<\xEF\xBD\x9C"
                          "Assistant\xEF\xBD\x9C>",
                          m.content, options.eos_token);
        }
      }
      if (options.add_generation_prompt && messages.back().role == "user") {
        absl::StrAppend(&out,
                        "<\xEF\xBD\x9C"
                        "Assistant\xEF\xBD\x9C>");
      }
      break;
    case ChatFormat::kPhi3:
      out = options.bos_token;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          absl::StrAppend(&out, "<|system|>\n", m.content, "<|end|>\n");
        } else if (m.role == "user") {
          absl::StrAppend(&out, "<|user|>\n", m.content, "<|end|>\n<|assistant|>\n");
        } else {
          absl::StrAppend(&out, m.content, "<|end|>\n");
        }
      }
      break;
    case ChatFormat::kMistral: {
      HERD_RETURN_IF_ERROR(CheckAlternation(messages, format));
      out = options.bos_token;
      for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          // A system message goes into the first user turn.
          const bool first_user = has_system && i == 1;
          absl::StrAppend(&out, "[INST] ", first_user ? messages[0].content + "\n\n" : "",
                          m.content, " [/INST]");
        } else {
          absl::StrAppend(&out, m.content, options.eos_token);
        }
      }
      break;
    }
    case ChatFormat::kDeepSeek:
      out = options.bos_token;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          absl::StrAppend(&out, m.content, "\n\n");
        } else if (m.role == "user") {
          absl::StrAppend(&out, "User: ", m.content, "\n\n");
        } else {
          absl::StrAppend(&out, "Assistant: ", m.content, options.eos_token);
        }
      }
      if (options.add_generation_prompt) absl::StrAppend(&out, "Assistant:");
      break;
  }
  return out;
}

absl::StatusOr<std::string> ApplyChatTemplate(absl::string_view template_text,
                                              absl::Span<const ChatMessage> messages,
                                              ChatTemplateOptions options) {
  HERD_ASSIGN_OR_RETURN(ChatTemplate detected, DetectChatTemplate(template_text));
  if (options.default_system.empty()) options.default_system = detected.default_system;
  return RenderChat(detected.format, messages, options);
}

}  // namespace herd
