// herd tokenize / herd detokenize: text <-> token ids with a model's own
// tokenizer (GGUF file or Hugging Face directory).

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "model/tokenizer/tokenizer.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kTokenizeFlags = {
    {"model", true, "GGUF file or Hugging Face directory whose tokenizer to use (required)"},
    {"text", true, "the text to tokenize"},
    {"text-file", true, "read the text from this file instead (UTF-8, used as is)"},
    {"bos", false, "put the BOS token first"},
    {"eos", false, "put the EOS token last"},
    {"special", false, "recognise control tokens written in the text (<|im_start|>, <s>)"},
    {"help", false, "show this help"},
};

const std::vector<FlagSpec> kDetokenizeFlags = {
    {"model", true, "GGUF file or Hugging Face directory whose tokenizer to use (required)"},
    {"ids", true, "token ids, comma-separated (required)"},
    {"special", false, "print control tokens (BOS, EOS, <|im_end|>) as their text"},
    {"keep-space-prefix", false, "keep the space SentencePiece puts before the first word"},
    {"help", false, "show this help"},
};

}  // namespace

absl::Status RunTokenizeCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kTokenizeFlags));
  if (flags.Has("help")) {
    out << "usage: herd tokenize --model PATH (--text S | --text-file F) [flags]\n"
        << "Prints the token ids, separated by spaces, on one line.\n"
        << FlagsHelp(kTokenizeFlags);
    return absl::OkStatus();
  }
  const std::string model_path = flags.GetString("model");
  if (model_path.empty()) return absl::InvalidArgumentError("--model is required");
  if (flags.Has("text") == flags.Has("text-file")) {
    return absl::InvalidArgumentError("give exactly one of --text and --text-file");
  }
  std::string text = flags.GetString("text");
  if (flags.Has("text-file")) {
    HERD_ASSIGN_OR_RETURN(text, ReadFlagFile("--text-file", flags.GetString("text-file")));
  }
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(model_path));
  EncodeOptions options;
  options.add_bos = flags.Has("bos");
  options.add_eos = flags.Has("eos");
  options.parse_special = flags.Has("special");
  HERD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(text, options));
  out << absl::StrJoin(ids, " ") << "\n";
  return absl::OkStatus();
}

absl::Status RunDetokenizeCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kDetokenizeFlags));
  if (flags.Has("help")) {
    out << "usage: herd detokenize --model PATH --ids 1,2,3 [flags]\n"
        << "Prints the text of the ids, followed by a newline.\n"
        << FlagsHelp(kDetokenizeFlags);
    return absl::OkStatus();
  }
  const std::string model_path = flags.GetString("model");
  if (model_path.empty()) return absl::InvalidArgumentError("--model is required");
  if (!flags.Has("ids")) return absl::InvalidArgumentError("--ids is required");
  HERD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, flags.GetIntList("ids"));
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::Load(model_path));
  DecodeOptions options;
  options.render_special = flags.Has("special");
  options.strip_space_prefix = !flags.Has("keep-space-prefix");
  HERD_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(ids, options));
  out << text << "\n";
  return absl::OkStatus();
}

}  // namespace herd
