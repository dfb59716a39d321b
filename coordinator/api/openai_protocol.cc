#include "coordinator/api/openai_protocol.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

using Json = nlohmann::json;
// Responses keep OpenAI's field order, which is easier to read in a terminal.
using OrderedJson = nlohmann::ordered_json;

constexpr char kParamPayloadUrl[] = "type.googleapis.com/herd.api.Param";
constexpr int64_t kDefaultCompletionMaxTokens = 16;
constexpr double kDefaultTemperature = 1.0;
constexpr double kMaxTemperature = 2.0;
// Values quoted in error messages are cut to this many bytes.
constexpr size_t kMaxQuotedBytes = 64;

absl::Status Invalid(absl::string_view param, absl::string_view message) {
  return WithParam(absl::InvalidArgumentError(message), param);
}

// Serializes without throwing: invalid UTF-8 (only possible in text the
// caller built, never in decoded output) becomes U+FFFD.
template <typename JsonType>
std::string Dump(const JsonType& value) {
  return value.dump(-1, ' ', false, JsonType::error_handler_t::replace);
}

// A value as quoted in an error message.
std::string Quote(const Json& value) {
  std::string text = Dump(value);
  if (text.size() > kMaxQuotedBytes) text = absl::StrCat(text.substr(0, kMaxQuotedBytes), "...");
  return text;
}

// The field `key` of `object`, or nullptr when it is absent or null (null
// means "default" for every optional field, as in OpenAI's API).
const Json* Find(const Json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer JSON value as int64, saturating unsigned values past INT64_MAX
// (range checks then reject them, quoting the original text).
int64_t SaturatedInt(const Json& value) {
  if (value.is_number_unsigned() &&
      value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return std::numeric_limits<int64_t>::max();
  }
  return value.get<int64_t>();
}

// Reads optional integer `key` (>= min_value) into *out, unchanged when
// absent; *present says which.
absl::Status ReadInt(const Json& object, const char* key, int64_t min_value, int64_t* out,
                     bool* present) {
  const Json* value = Find(object, key);
  *present = value != nullptr;
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number_integer()) {
    return Invalid(key, absl::StrCat("'", key, "' must be an integer, got ", Quote(*value)));
  }
  const int64_t v = SaturatedInt(*value);
  if (v < min_value) {
    return Invalid(key, absl::StrCat("'", key, "' = ", Quote(*value), " must be >= ", min_value));
  }
  *out = v;
  return absl::OkStatus();
}

// Reads optional number `key` (integer or not) into *out, unchanged when absent.
absl::Status ReadNumber(const Json& object, const char* key, double* out) {
  const Json* value = Find(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number()) {
    return Invalid(key, absl::StrCat("'", key, "' must be a number, got ", Quote(*value)));
  }
  *out = value->get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const Json& object, const char* key, absl::string_view param, bool* out) {
  const Json* value = Find(object, key);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_boolean()) {
    return Invalid(param, absl::StrCat("'", param, "' must be true or false, got ", Quote(*value)));
  }
  *out = value->get<bool>();
  return absl::OkStatus();
}

// A token id at `where` (for messages): an integer in [0, vocab_size).
absl::StatusOr<int32_t> ReadTokenId(const Json& value, absl::string_view param,
                                    absl::string_view where, int64_t vocab_size) {
  if (!value.is_number_integer()) {
    return Invalid(param, absl::StrCat(where, " must be an integer token id, got ", Quote(value)));
  }
  const int64_t id = SaturatedInt(value);
  if (id < 0 || id >= vocab_size) {
    return Invalid(param, absl::StrCat(where, " = ", Quote(value),
                                       " is outside the vocabulary [0, ", vocab_size, ")"));
  }
  return static_cast<int32_t>(id);
}

absl::StatusOr<Json> ParseBody(absl::string_view body) {
  Json root;
  try {
    root = Json::parse(body.begin(), body.end());
  } catch (const Json::exception& e) {
    return Invalid("", absl::StrCat("the request body is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return Invalid("",
                   absl::StrCat("the request body must be a JSON object, got ", root.type_name()));
  }
  return root;
}

// The request body with its keys in the order written (schemas' properties
// and tools are used in that order), parsed once, on first use: most
// requests never need it. Its text parsed as `Json` already.
class OrderedBody {
 public:
  explicit OrderedBody(absl::string_view text) : text_(text) {}

  const OrderedJson& json() {
    if (!json_.has_value()) json_ = OrderedJson::parse(text_.begin(), text_.end());
    return *json_;
  }

 private:
  const absl::string_view text_;
  std::optional<OrderedJson> json_;
};

absl::Status CheckModel(const Json& root, const ApiModel& model) {
  const Json* value = Find(root, "model");
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_string()) {
    return Invalid("model", absl::StrCat("'model' must be a string, got ", Quote(*value)));
  }
  if (value->get<std::string>() != model.name) {
    return WithParam(absl::NotFoundError(absl::StrCat("The model `", value->get<std::string>(),
                                                      "` does not exist; this server serves `",
                                                      model.name, "`.")),
                     "model");
  }
  return absl::OkStatus();
}

// An option Herd does not implement is accepted only at one of its neutral
// values (or null/absent).
absl::Status RequireNeutral(const Json& root, const char* key, std::initializer_list<Json> neutral,
                            absl::string_view why) {
  const Json* value = Find(root, key);
  if (value == nullptr) return absl::OkStatus();
  for (const Json& ok : neutral) {
    // NOTE: nlohmann compares numbers by value, so 1 == 1.0; a boolean never
    // equals a number.
    if (*value == ok) return absl::OkStatus();
  }
  return Invalid(key, absl::StrCat("'", key, "' = ", Quote(*value), " is not supported: ", why));
}

absl::Status CheckUnsupported(const Json& root, ApiEndpoint endpoint) {
  if (endpoint == ApiEndpoint::kCompletions) {
    HERD_RETURN_IF_ERROR(RequireNeutral(root, "suffix", {""}, "no insertion (suffix)"));
    HERD_RETURN_IF_ERROR(
        RequireNeutral(root, "top_logprobs", {0}, "completions take 'logprobs': N"));
  } else {
    HERD_RETURN_IF_ERROR(
        RequireNeutral(root, "functions", {Json::array()}, "the legacy 'functions': use 'tools'"));
    HERD_RETURN_IF_ERROR(RequireNeutral(root, "function_call", {"none"},
                                        "the legacy 'function_call': use 'tool_choice'"));
  }
  return absl::OkStatus();
}

// Token ids of a text prompt, with BOS as the model's tokenizer asks.
absl::StatusOr<std::vector<int32_t>> EncodePrompt(const std::string& text, absl::string_view param,
                                                  const ApiModel& model) {
  if (model.tokenizer == nullptr) {
    return Invalid(param, absl::StrCat("'", param, "' is text but model `", model.name,
                                       "` has no tokenizer: send a list of token ids"));
  }
  EncodeOptions options;
  options.add_bos = model.tokenizer->add_bos();
  // Like Hugging Face tokenizers, a raw completion prompt may spell control
  // tokens ("<|im_start|>") to build its own format.
  options.parse_special = true;
  absl::StatusOr<std::vector<int32_t>> ids = model.tokenizer->Encode(text, options);
  if (!ids.ok()) {
    return Invalid(param, absl::StrCat("cannot tokenize '", param, "': ", ids.status().message()));
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ReadIdList(const Json& list, absl::string_view where,
                                                const ApiModel& model) {
  std::vector<int32_t> ids;
  ids.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    HERD_ASSIGN_OR_RETURN(
        int32_t id,
        ReadTokenId(list[i], "prompt", absl::StrCat(where, "[", i, "]"), model.vocab_size));
    ids.push_back(id);
  }
  return ids;
}

// One prompt: a string or token ids; `where` names it in errors.
absl::StatusOr<std::vector<int32_t>> ParseOnePrompt(const Json& prompt, const std::string& where,
                                                    const ApiModel& model) {
  std::vector<int32_t> ids;
  if (prompt.is_string()) {
    HERD_ASSIGN_OR_RETURN(ids, EncodePrompt(prompt.get<std::string>(), "prompt", model));
  } else if (prompt.is_array()) {
    HERD_ASSIGN_OR_RETURN(ids, ReadIdList(prompt, where, model));
  } else {
    return Invalid(
        "prompt",
        absl::StrCat("'", where, "' must be a string or a list of token ids, got ", Quote(prompt)));
  }
  if (ids.empty()) return Invalid("prompt", absl::StrCat("'", where, "' is empty"));
  for (size_t i = 0; i < ids.size(); ++i) {
    // Text prompts: the tokenizer's vocabulary may be larger than the model's.
    if (ids[i] >= model.vocab_size) {
      return Invalid("prompt", absl::StrCat("the token ", i, " = ", ids[i], " of '", where,
                                            "' is outside the model's vocabulary [0, ",
                                            model.vocab_size, ")"));
    }
  }
  return ids;
}

// `prompt`: token ids, a string, or a batch: a list of strings or of token
// id lists.
absl::StatusOr<std::vector<std::vector<int32_t>>> ParsePrompts(const Json& root,
                                                               const ApiModel& model) {
  const Json* prompt = Find(root, "prompt");
  if (prompt == nullptr) return Invalid("prompt", "'prompt' is required");
  std::vector<std::vector<int32_t>> prompts;
  if (prompt->is_array() && !prompt->empty() &&
      ((*prompt)[0].is_string() || (*prompt)[0].is_array())) {
    if (static_cast<int64_t>(prompt->size()) > kMaxChoices) {
      return Invalid("prompt", absl::StrCat("'prompt' holds ", prompt->size(), " prompts; at most ",
                                            kMaxChoices, " per request"));
    }
    for (size_t i = 0; i < prompt->size(); ++i) {
      HERD_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                            ParseOnePrompt((*prompt)[i], absl::StrCat("prompt[", i, "]"), model));
      prompts.push_back(std::move(ids));
    }
  } else {
    HERD_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseOnePrompt(*prompt, "prompt", model));
    prompts.push_back(std::move(ids));
  }
  return prompts;
}

// `n` (choices per prompt) and completions' `best_of`, which may only repeat
// it: Herd returns every candidate it generates.
absl::Status ParseChoiceCount(const Json& root, int64_t num_prompts, ApiRequest* request) {
  bool given = false;
  HERD_RETURN_IF_ERROR(ReadInt(root, "n", 1, &request->n, &given));
  if (request->n * num_prompts > kMaxChoices) {
    return Invalid("n", absl::StrCat("the request asks for ", request->n * num_prompts,
                                     " choices (n = ", request->n, " for each of ", num_prompts,
                                     " prompt(s)); at most ", kMaxChoices, " per request"));
  }
  if (request->endpoint == ApiEndpoint::kCompletions) {
    int64_t best_of = request->n;
    HERD_RETURN_IF_ERROR(ReadInt(root, "best_of", 1, &best_of, &given));
    if (best_of != request->n) {
      return Invalid("best_of", absl::StrCat("'best_of' = ", best_of, " is not supported: ",
                                             "every candidate is returned, so best_of must equal "
                                             "n (",
                                             request->n, ")"));
    }
  }
  return absl::OkStatus();
}

void AddStopId(int32_t id, std::vector<int32_t>* stop_ids) {
  if (std::find(stop_ids->begin(), stop_ids->end(), id) == stop_ids->end()) {
    stop_ids->push_back(id);
  }
}

absl::Status AddStopString(const Json& value, absl::string_view where, const ApiModel& model,
                           ApiRequest* request) {
  std::string text = value.get<std::string>();
  if (text.empty()) return Invalid("stop", absl::StrCat(where, " is an empty stop string"));
  if (model.tokenizer == nullptr) {
    return Invalid("stop", absl::StrCat(where, " is a stop string but model `", model.name,
                                        "` has no tokenizer: give stop token ids instead"));
  }
  request->stop_strings.push_back(std::move(text));
  return absl::OkStatus();
}

// `stop`: a string, or a list of strings and token ids; `stop_token_ids`: a
// list of token ids; and the end-of-generation ids unless `ignore_eos`.
absl::Status ParseStop(const Json& root, const ApiModel& model, ApiRequest* request) {
  std::vector<int32_t>& stop_ids = request->generation.stop_ids;
  if (const Json* stop = Find(root, "stop"); stop != nullptr) {
    if (stop->is_string()) {
      HERD_RETURN_IF_ERROR(AddStopString(*stop, "'stop'", model, request));
    } else if (stop->is_array()) {
      for (size_t i = 0; i < stop->size(); ++i) {
        const Json& entry = (*stop)[i];
        const std::string where = absl::StrCat("stop[", i, "]");
        if (entry.is_string()) {
          HERD_RETURN_IF_ERROR(AddStopString(entry, where, model, request));
        } else if (entry.is_number_integer()) {
          HERD_ASSIGN_OR_RETURN(int32_t id, ReadTokenId(entry, "stop", where, model.vocab_size));
          AddStopId(id, &stop_ids);
        } else {
          return Invalid(
              "stop", absl::StrCat(where, " must be a string or a token id, got ", Quote(entry)));
        }
      }
    } else {
      return Invalid("stop", absl::StrCat("'stop' must be a string or a list, got ", Quote(*stop)));
    }
  }
  if (const Json* ids = Find(root, "stop_token_ids"); ids != nullptr) {
    if (!ids->is_array()) {
      return Invalid("stop_token_ids", absl::StrCat("'stop_token_ids' must be a list of token "
                                                    "ids, got ",
                                                    Quote(*ids)));
    }
    for (size_t i = 0; i < ids->size(); ++i) {
      HERD_ASSIGN_OR_RETURN(int32_t id,
                            ReadTokenId((*ids)[i], "stop_token_ids",
                                        absl::StrCat("stop_token_ids[", i, "]"), model.vocab_size));
      AddStopId(id, &stop_ids);
    }
  }
  bool ignore_eos = false;
  HERD_RETURN_IF_ERROR(ReadBool(root, "ignore_eos", "ignore_eos", &ignore_eos));
  if (!ignore_eos) {
    for (int32_t id : model.end_of_generation_ids) AddStopId(id, &stop_ids);
  }
  return absl::OkStatus();
}

absl::Status ParseSampling(const Json& root, int64_t vocab_size, ApiRequest* request) {
  SamplingParams& sampling = request->generation.sampling;
  double temperature = kDefaultTemperature;
  HERD_RETURN_IF_ERROR(ReadNumber(root, "temperature", &temperature));
  if (temperature < 0 || temperature > kMaxTemperature) {
    return Invalid("temperature", absl::StrCat("'temperature' = ", temperature, " is outside [0, ",
                                               kMaxTemperature, "]"));
  }
  sampling.temperature = static_cast<float>(temperature);
  double top_p = 1.0;
  HERD_RETURN_IF_ERROR(ReadNumber(root, "top_p", &top_p));
  if (!(top_p > 0 && top_p <= 1)) {
    return Invalid("top_p", absl::StrCat("'top_p' = ", top_p, " is outside (0, 1]"));
  }
  sampling.top_p = static_cast<float>(top_p);
  // vLLM's extensions: top_k (-1 or 0: off) and min_p.
  int64_t top_k = 0;
  bool top_k_given = false;
  HERD_RETURN_IF_ERROR(ReadInt(root, "top_k", -1, &top_k, &top_k_given));
  sampling.top_k = static_cast<int32_t>(
      std::min<int64_t>(std::max<int64_t>(top_k, 0), std::numeric_limits<int32_t>::max()));
  double min_p = 0.0;
  HERD_RETURN_IF_ERROR(ReadNumber(root, "min_p", &min_p));
  if (!(min_p >= 0 && min_p <= 1)) {
    return Invalid("min_p", absl::StrCat("'min_p' = ", min_p, " is outside [0, 1]"));
  }
  sampling.min_p = static_cast<float>(min_p);
  // OpenAI's penalties, and vLLM's repetition_penalty.
  for (const auto& [key, out] :
       {std::pair<const char*, float*>{"presence_penalty", &sampling.presence_penalty},
        {"frequency_penalty", &sampling.frequency_penalty}}) {
    double value = 0.0;
    HERD_RETURN_IF_ERROR(ReadNumber(root, key, &value));
    if (!(value >= -2 && value <= 2)) {
      return Invalid(key, absl::StrCat("'", key, "' = ", value, " is outside [-2, 2]"));
    }
    *out = static_cast<float>(value);
  }
  double repetition = 1.0;
  HERD_RETURN_IF_ERROR(ReadNumber(root, "repetition_penalty", &repetition));
  if (!(repetition > 0 && repetition <= 1e6)) {
    return Invalid("repetition_penalty",
                   absl::StrCat("'repetition_penalty' = ", repetition, " must be > 0"));
  }
  sampling.repetition_penalty = static_cast<float>(repetition);
  // logit_bias: {"token id": bias in [-100, 100]}.
  if (const Json* bias = Find(root, "logit_bias"); bias != nullptr) {
    if (!bias->is_object()) {
      return Invalid("logit_bias", absl::StrCat("'logit_bias' must be an object of token ids to "
                                                "biases, got ",
                                                Quote(*bias)));
    }
    for (const auto& [key, value] : bias->items()) {
      int32_t id = -1;
      if (!absl::SimpleAtoi(key, &id) || id < 0 || id >= vocab_size) {
        return Invalid("logit_bias", absl::StrCat("'logit_bias' key ", Quote(Json(key)),
                                                  " is not a token id in [0, ", vocab_size, ")"));
      }
      if (!value.is_number() || !(std::fabs(value.get<double>()) <= 100)) {
        return Invalid("logit_bias", absl::StrCat("'logit_bias'[", key, "] = ", Quote(value),
                                                  " is not a number in [-100, 100]"));
      }
      sampling.logit_bias.push_back({id, static_cast<float>(value.get<double>())});
    }
  }
  if (const Json* seed = Find(root, "seed"); seed != nullptr) {
    if (!seed->is_number_integer()) {
      return Invalid("seed", absl::StrCat("'seed' must be an integer, got ", Quote(*seed)));
    }
    // Negative seeds are as good as any: their two's complement selects the stream.
    sampling.seed = seed->is_number_unsigned() ? seed->get<uint64_t>()
                                               : static_cast<uint64_t>(seed->get<int64_t>());
    request->has_seed = true;
  }
  return absl::OkStatus();
}

// Log probabilities: completions' 'logprobs': N (the sampled token's and the
// N most likely tokens'), chat's 'logprobs': true with 'top_logprobs': N
// (0 when absent).
absl::Status ParseLogprobs(const Json& root, ApiRequest* request) {
  int32_t& top = request->generation.sampling.top_logprobs;
  const auto read_count = [&](const char* key) -> absl::Status {
    int64_t n = 0;
    bool given = false;
    HERD_RETURN_IF_ERROR(ReadInt(root, key, 0, &n, &given));
    if (n > kMaxTopLogprobs) {
      return Invalid(key, absl::StrCat("'", key, "' = ", n, " is more than the ", kMaxTopLogprobs,
                                       " log probabilities Herd returns per token"));
    }
    if (given) top = static_cast<int32_t>(n);
    return absl::OkStatus();
  };
  if (request->endpoint == ApiEndpoint::kCompletions) return read_count("logprobs");
  bool logprobs = false;
  HERD_RETURN_IF_ERROR(ReadBool(root, "logprobs", "logprobs", &logprobs));
  HERD_RETURN_IF_ERROR(read_count("top_logprobs"));
  if (!logprobs) {
    if (top > 0) {
      return Invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    }
    top = -1;
  } else if (top < 0) {
    top = 0;
  }
  return absl::OkStatus();
}

absl::Status ParseStreaming(const Json& root, ApiRequest* request) {
  HERD_RETURN_IF_ERROR(ReadBool(root, "stream", "stream", &request->stream));
  const Json* options = Find(root, "stream_options");
  if (options == nullptr) return absl::OkStatus();
  if (!request->stream) {
    return Invalid("stream_options", "'stream_options' is only allowed when 'stream' is true");
  }
  if (!options->is_object()) {
    return Invalid("stream_options",
                   absl::StrCat("'stream_options' must be an object, got ", Quote(*options)));
  }
  return ReadBool(*options, "include_usage", "stream_options.include_usage",
                  &request->include_usage);
}

// vLLM's wording, so that clients which parse it keep working.
// `max_tokens_param` names the field max_tokens came from, "" for a default.
absl::Status CheckContext(const ApiModel& model, ApiEndpoint endpoint, int64_t prompt_tokens,
                          int64_t max_tokens, absl::string_view max_tokens_param) {
  const char* input = endpoint == ApiEndpoint::kChatCompletions ? "messages" : "prompt";
  if (prompt_tokens >= model.max_context_tokens) {
    return Invalid(
        input, absl::StrCat("This model's maximum context length is ", model.max_context_tokens,
                            " tokens. However, your request has ", prompt_tokens,
                            " input tokens. Please reduce the length of the input ", input, "."));
  }
  if (max_tokens > model.max_context_tokens - prompt_tokens) {
    const int64_t requested = max_tokens > std::numeric_limits<int64_t>::max() - prompt_tokens
                                  ? std::numeric_limits<int64_t>::max()
                                  : prompt_tokens + max_tokens;
    return Invalid(max_tokens_param.empty() ? input : max_tokens_param,
                   absl::StrCat("This model's maximum context length is ", model.max_context_tokens,
                                " tokens. However, you requested ", requested, " tokens (",
                                prompt_tokens, " in the ", input, ", ", max_tokens,
                                " in the completion). Please reduce the length of the ", input,
                                " or completion."));
  }
  return absl::OkStatus();
}

// The fields both endpoints share: model, unsupported options, sampling,
// stop and streaming.
// The schema at `path` in `body` with its keys in the order written (the
// order generated objects write their properties in), compiled; errors name
// `param` and say where (`label`).
absl::StatusOr<std::shared_ptr<const JsonSchema>> CompileSchemaAt(
    OrderedBody& body, std::initializer_list<const char*> path, const std::string& param,
    const std::string& label, const std::optional<std::string>& whitespace) {
  const OrderedJson* at = &body.json();
  for (const char* key : path) at = &(*at)[key];
  OrderedJson schema = *at;
  if (schema.is_string()) {
    // vLLM's guided_json may be the schema's text.
    try {
      schema = OrderedJson::parse(schema.get<std::string>());
    } catch (const OrderedJson::exception& e) {
      return Invalid(param, absl::StrCat("'", label, "' is a string that is not JSON: ", e.what()));
    }
  }
  absl::StatusOr<std::shared_ptr<const JsonSchema>> compiled =
      JsonSchema::Compile(schema, whitespace);
  if (!compiled.ok()) {
    return Invalid(param, absl::StrCat("'", label, "': ", compiled.status().message()));
  }
  return compiled;
}

// Guided JSON: `response_format` {"type": "text"} (the default),
// {"type": "json_object"} (JSON mode) or {"type": "json_schema",
// "json_schema": {"name", "schema", "strict", "description"}} (structured
// outputs), or vLLM's `guided_json` (a schema, or its text), with vLLM's
// `guided_whitespace_pattern` (what may come between tokens). Both need the
// model's tokenizer to know what text each token adds.
absl::Status ParseGuidedJson(const Json& root, OrderedBody& body, const ApiModel& model,
                             ApiRequest* request) {
  const Json* format = Find(root, "response_format");
  const Json* guided = Find(root, "guided_json");
  std::optional<std::string> whitespace;
  if (const Json* pattern = Find(root, "guided_whitespace_pattern"); pattern != nullptr) {
    if (!pattern->is_string()) {
      return Invalid(
          "guided_whitespace_pattern",
          absl::StrCat("'guided_whitespace_pattern' must be a string, got ", Quote(*pattern)));
    }
    whitespace = pattern->get<std::string>();
  }
  // JSON mode's schema, with the whitespace pattern if any.
  const auto any_object = [&]() -> absl::StatusOr<std::shared_ptr<const JsonSchema>> {
    if (!whitespace.has_value()) return JsonSchema::AnyObject();
    absl::StatusOr<std::shared_ptr<const JsonSchema>> compiled =
        JsonSchema::Compile(OrderedJson{{"type", "object"}}, whitespace);
    if (!compiled.ok()) {
      return Invalid("guided_whitespace_pattern",
                     absl::StrCat("'guided_whitespace_pattern': ", compiled.status().message()));
    }
    return compiled;
  };
  if (whitespace.has_value()) {
    HERD_RETURN_IF_ERROR(any_object().status());  // the pattern's own errors, named so
  }
  const char* param = guided != nullptr ? "guided_json" : "response_format";
  if (format != nullptr) {
    const Json* type = format->is_object() ? Find(*format, "type") : nullptr;
    if (type == nullptr || !type->is_string()) {
      return Invalid("response_format", absl::StrCat("'response_format' must be an object with a "
                                                     "string 'type', got ",
                                                     Quote(*format)));
    }
    if (*type != "text" && *type != "json_object" && *type != "json_schema") {
      return Invalid("response_format",
                     absl::StrCat("'response_format' type ", Quote(*type),
                                  " is not supported: \"text\", \"json_object\" or "
                                  "\"json_schema\""));
    }
    if (*type == "text") {
      format = nullptr;
    } else if (guided != nullptr) {
      return Invalid("guided_json", "give 'response_format' or 'guided_json', not both");
    }
  }
  if (format == nullptr && guided == nullptr) {
    const Json* tool_choice = Find(root, "tool_choice");
    const bool tool_call =
        tool_choice != nullptr && (*tool_choice == "required" || tool_choice->is_object());
    if (whitespace.has_value() && !tool_call) {
      return Invalid("guided_whitespace_pattern",
                     "'guided_whitespace_pattern' applies to guided JSON only (response_format "
                     "json_object or json_schema, guided_json, a tool call)");
    }
    return absl::OkStatus();
  }
  if (model.tokenizer == nullptr) {
    return Invalid(param, absl::StrCat("guided JSON ('", param, "') needs a tokenizer and model `",
                                       model.name, "` has none"));
  }
  if (guided != nullptr) {
    if (!guided->is_object() && !guided->is_boolean() && !guided->is_string()) {
      return Invalid(param,
                     absl::StrCat("'guided_json' must be a JSON schema, got ", Quote(*guided)));
    }
    HERD_ASSIGN_OR_RETURN(request->json_schema,
                          CompileSchemaAt(body, {"guided_json"}, param, param, whitespace));
    return absl::OkStatus();
  }
  if (Find(*format, "type")->get<std::string>() == "json_object") {
    HERD_ASSIGN_OR_RETURN(request->json_schema, any_object());
    return absl::OkStatus();
  }
  const Json* spec = Find(*format, "json_schema");
  if (spec == nullptr || !spec->is_object()) {
    return Invalid(param,
                   "'response_format' of type \"json_schema\" needs a 'json_schema' "
                   "object: {\"name\": ..., \"schema\": {...}}");
  }
  if (const Json* name = Find(*spec, "name"); name != nullptr && !name->is_string()) {
    return Invalid(param, absl::StrCat("'response_format.json_schema.name' must be a string, got ",
                                       Quote(*name)));
  }
  if (const Json* strict = Find(*spec, "strict"); strict != nullptr && !strict->is_boolean()) {
    return Invalid(param, absl::StrCat("'response_format.json_schema.strict' must be a boolean, "
                                       "got ",
                                       Quote(*strict)));
  }
  const Json* schema = Find(*spec, "schema");
  if (schema == nullptr || !(schema->is_object() || schema->is_boolean())) {
    return Invalid(param, "'response_format.json_schema.schema' must be a JSON schema (an object)");
  }
  HERD_ASSIGN_OR_RETURN(request->json_schema,
                        CompileSchemaAt(body, {"response_format", "json_schema", "schema"}, param,
                                        "response_format.json_schema.schema", whitespace));
  return absl::OkStatus();
}

// vLLM's guided_regex (a pattern the whole output matches) and
// guided_choice (the output is one of the strings): text, not JSON.
absl::Status ParseGuidedText(const Json& root, const ApiModel& model, ApiRequest* request) {
  const Json* regex = Find(root, "guided_regex");
  const Json* choice = Find(root, "guided_choice");
  if (regex == nullptr && choice == nullptr) return absl::OkStatus();
  const char* param = regex != nullptr ? "guided_regex" : "guided_choice";
  if (regex != nullptr && choice != nullptr) {
    return Invalid(param, "give 'guided_regex' or 'guided_choice', not both");
  }
  if (request->json_schema != nullptr) {
    return Invalid(param, absl::StrCat("give '", param, "' or guided JSON, not both"));
  }
  if (model.tokenizer == nullptr) {
    return Invalid(param, absl::StrCat("'", param, "' needs a tokenizer and model `", model.name,
                                       "` has none"));
  }
  std::string pattern;
  if (regex != nullptr) {
    if (!regex->is_string()) {
      return Invalid(param, absl::StrCat("'guided_regex' must be a string, got ", Quote(*regex)));
    }
    pattern = regex->get<std::string>();
  } else {
    if (!choice->is_array() || choice->empty() || choice->size() > kMaxGuidedChoices) {
      return Invalid(param, absl::StrCat("'guided_choice' must be a list of 1 to ",
                                         kMaxGuidedChoices, " strings, got ", Quote(*choice)));
    }
    // The choices as literal alternatives: ASCII punctuation escaped.
    pattern = "(?:";
    for (size_t i = 0; i < choice->size(); ++i) {
      const Json& text = (*choice)[i];
      if (!text.is_string()) {
        return Invalid(
            param, absl::StrCat("'guided_choice' must be a list of strings, got ", Quote(text)));
      }
      if (i > 0) pattern += '|';
      for (const char c : text.get<std::string>()) {
        if (std::ispunct(static_cast<unsigned char>(c))) pattern += '\\';
        pattern += c;
      }
    }
    pattern += ')';
  }
  absl::StatusOr<std::shared_ptr<const Regex>> compiled =
      Regex::Compile(pattern, Regex::Mode::kFullMatch);
  if (!compiled.ok()) {
    return Invalid(param, absl::StrCat("'", param, "': ", compiled.status().message()));
  }
  request->text_regex = *std::move(compiled);
  request->text_regex_key = std::move(pattern);
  return absl::OkStatus();
}

absl::Status ParseCommon(const Json& root, OrderedBody& body, const ApiModel& model,
                         ApiRequest* request) {
  HERD_RETURN_IF_ERROR(CheckModel(root, model));
  HERD_RETURN_IF_ERROR(CheckUnsupported(root, request->endpoint));
  HERD_RETURN_IF_ERROR(ParseGuidedJson(root, body, model, request));
  HERD_RETURN_IF_ERROR(ParseGuidedText(root, model, request));
  HERD_RETURN_IF_ERROR(ParseSampling(root, model.vocab_size, request));
  HERD_RETURN_IF_ERROR(ParseLogprobs(root, request));
  HERD_RETURN_IF_ERROR(ParseStop(root, model, request));
  return ParseStreaming(root, request);
}

// `tools`: the functions' names (none without tools), each checked:
// {"type": "function", "function": {"name", "description"?, "parameters"?}}.
absl::StatusOr<std::vector<std::string>> ToolNames(const Json& root) {
  const Json* tools = Find(root, "tools");
  std::vector<std::string> names;
  if (tools == nullptr) return names;
  if (!tools->is_array() || tools->size() > kMaxTools) {
    return Invalid("tools", absl::StrCat("'tools' must be a list of at most ", kMaxTools,
                                         " functions, got ", Quote(*tools)));
  }
  for (size_t i = 0; i < tools->size(); ++i) {
    const Json& tool = (*tools)[i];
    const std::string where = absl::StrCat("tools[", i, "]");
    const Json* type = tool.is_object() ? Find(tool, "type") : nullptr;
    const Json* function = tool.is_object() ? Find(tool, "function") : nullptr;
    if (type == nullptr || *type != "function" || function == nullptr || !function->is_object()) {
      return Invalid("tools", absl::StrCat(where,
                                           " must be {\"type\": \"function\", "
                                           "\"function\": {...}}, got ",
                                           Quote(tool)));
    }
    const Json* name = Find(*function, "name");
    const bool named =
        name != nullptr && name->is_string() && !name->get<std::string>().empty() &&
        name->get<std::string>().size() <= 64 &&
        std::all_of(name->get_ref<const std::string&>().begin(),
                    name->get_ref<const std::string&>().end(), [](char c) {
                      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
                    });
    if (!named) {
      return Invalid("tools", absl::StrCat(where,
                                           ".function.name must be 1 to 64 letters, "
                                           "digits, '_' or '-', got ",
                                           name == nullptr ? "nothing" : Quote(*name)));
    }
    if (std::find(names.begin(), names.end(), name->get<std::string>()) != names.end()) {
      return Invalid("tools", absl::StrCat(where, " repeats the name ", Quote(*name)));
    }
    if (const Json* parameters = Find(*function, "parameters");
        parameters != nullptr && !parameters->is_object()) {
      return Invalid("tools", absl::StrCat(where,
                                           ".function.parameters must be a JSON schema "
                                           "(an object)"));
    }
    if (const Json* description = Find(*function, "description");
        description != nullptr && !description->is_string()) {
      return Invalid("tools", absl::StrCat(where, ".function.description must be a string"));
    }
    names.push_back(name->get<std::string>());
  }
  return names;
}

// Whether the model is told about the tools: some are given and
// tool_choice is not "none".
bool ToolsOffered(const Json& root) {
  const Json* tools = Find(root, "tools");
  const Json* choice = Find(root, "tool_choice");
  return tools != nullptr && tools->is_array() && !tools->empty() &&
         !(choice != nullptr && *choice == "none");
}

// The tools as the system message describes them (the format Qwen's and
// Hermes' chat templates write, which their models call tools in), each as
// the request wrote it (`body`'s key order).
std::string ToolsSystemText(OrderedBody& body) {
  std::string text =
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
  for (const OrderedJson& tool : body.json()["tools"]) absl::StrAppend(&text, "\n", tool.dump());
  absl::StrAppend(&text,
                  "\n</tools>\n\nFor each function call, return a json object with function "
                  "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                  "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
  return text;
}

// Moves a subschema's own "$ref"s ("#", "#/...") under `at`, where it now
// sits; InvalidArgument past a sane nesting.
absl::Status RebaseRefs(const std::string& at, OrderedJson* schema, int depth) {
  if (depth > 4 * JsonSchema::kMaxNesting) {
    return Invalid("tools", "a function's parameters nest too deep");
  }
  if (schema->is_object()) {
    for (auto& [key, value] : schema->items()) {
      if (key == "$ref" && value.is_string() && absl::StartsWith(value.get<std::string>(), "#")) {
        value = at + value.get<std::string>().substr(1);
      } else {
        HERD_RETURN_IF_ERROR(RebaseRefs(at, &value, depth + 1));
      }
    }
  } else if (schema->is_array()) {
    for (OrderedJson& item : *schema) HERD_RETURN_IF_ERROR(RebaseRefs(at, &item, depth + 1));
  }
  return absl::OkStatus();
}

// `tools` and `tool_choice` of a chat: with "required" or a named function
// the output is constrained to the call(s): the function's parameters
// schema, or a list of {"name", "arguments"} objects, one per call (at most
// one without parallel_tool_calls). With "auto" (the default with tools) the
// output is free: calls are read from its <tool_call> blocks.
absl::Status ParseTools(const Json& root, OrderedBody& body, ApiRequest* request) {
  HERD_ASSIGN_OR_RETURN(const std::vector<std::string> names, ToolNames(root));
  const Json* choice = Find(root, "tool_choice");
  std::string mode = names.empty() ? "none" : "auto";
  std::string named;
  if (choice != nullptr) {
    if (choice->is_string() && (*choice == "none" || *choice == "auto" || *choice == "required")) {
      mode = choice->get<std::string>();
    } else if (const Json* function = choice->is_object() ? Find(*choice, "function") : nullptr;
               function != nullptr && function->is_object() && Find(*function, "name") != nullptr &&
               Find(*function, "name")->is_string()) {
      mode = "named";
      named = Find(*function, "name")->get<std::string>();
    } else {
      return Invalid("tool_choice",
                     absl::StrCat("'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                  "{\"type\": \"function\", \"function\": {\"name\": ...}}, got ",
                                  Quote(*choice)));
    }
  }
  if (mode == "none" || (mode == "auto" && names.empty())) return absl::OkStatus();
  if (names.empty()) {
    return Invalid("tool_choice", "'tool_choice' asks for a tool call but 'tools' lists none");
  }
  if (mode == "auto") {
    // The model decides, writing calls as <tool_call> blocks after its text.
    request->tool_calls = ToolCallForm::kAuto;
    request->tool_names = names;
    return absl::OkStatus();
  }
  if (request->json_schema != nullptr || request->text_regex != nullptr) {
    return Invalid("tool_choice",
                   "a tool call cannot also follow response_format or guided decoding");
  }
  const auto index = std::find(names.begin(), names.end(), named) - names.begin();
  if (mode == "named" && index == static_cast<int64_t>(names.size())) {
    return Invalid("tool_choice", absl::StrCat("'tool_choice' names ", Quote(Json(named)),
                                               ", which 'tools' does not list"));
  }
  bool parallel = true;
  HERD_RETURN_IF_ERROR(ReadBool(root, "parallel_tool_calls", "parallel_tool_calls", &parallel));
  // The parameters schemas with their keys in the order written.
  const OrderedJson& tools = body.json()["tools"];
  const auto parameters = [&](size_t i) {
    const OrderedJson& function = tools[i]["function"];
    return function.contains("parameters")
               ? function["parameters"]
               : OrderedJson{{"type", "object"}, {"properties", OrderedJson::object()}};
  };
  OrderedJson schema;
  if (mode == "named") {
    schema = parameters(index);
  } else {
    OrderedJson calls = OrderedJson::array();
    for (size_t i = 0; i < names.size(); ++i) {
      // Each call's arguments sit at /items/anyOf/i/properties/arguments:
      // their own "$ref"s into the parameters schema move there too.
      const std::string at = absl::StrCat("#/items/anyOf/", i, "/properties/arguments");
      OrderedJson arguments = parameters(i);
      HERD_RETURN_IF_ERROR(RebaseRefs(at, &arguments, 0));
      calls.push_back({{"type", "object"},
                       {"properties", {{"name", {{"const", names[i]}}}, {"arguments", arguments}}},
                       {"required", {"name", "arguments"}},
                       {"additionalProperties", false}});
    }
    schema = {{"type", "array"}, {"items", {{"anyOf", calls}}}, {"minItems", 1}};
    if (!parallel) schema["maxItems"] = 1;
  }
  // vLLM's guided_whitespace_pattern holds for the call too (checked by
  // ParseGuidedJson).
  std::optional<std::string> whitespace;
  if (const Json* pattern = Find(root, "guided_whitespace_pattern"); pattern != nullptr) {
    whitespace = pattern->get<std::string>();
  }
  absl::StatusOr<std::shared_ptr<const JsonSchema>> compiled =
      JsonSchema::Compile(schema, whitespace);
  if (!compiled.ok()) {
    return Invalid("tools", absl::StrCat("a function's parameters: ", compiled.status().message()));
  }
  request->json_schema = *std::move(compiled);
  request->tool_calls = mode == "named" ? ToolCallForm::kNamed : ToolCallForm::kRequired;
  if (mode == "named") request->tool_name = named;
  return absl::OkStatus();
}

// messages[i].content: a string, or text parts joined by newlines (as vLLM
// does); null for an assistant turn (one that only called tools).
absl::StatusOr<std::string> ReadContent(const Json& message, size_t i, const std::string& role) {
  const std::string where = absl::StrCat("messages[", i, "].content");
  const Json* content = Find(message, "content");
  if (content == nullptr) {
    if (role == "assistant") return std::string();
    return Invalid("messages", absl::StrCat(where, " is required"));
  }
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) {
    return Invalid("messages", absl::StrCat(where,
                                            " must be a string or a list of text parts, "
                                            "got ",
                                            Quote(*content)));
  }
  std::vector<std::string> texts;
  for (size_t j = 0; j < content->size(); ++j) {
    const Json& part = (*content)[j];
    const std::string part_where = absl::StrCat(where, "[", j, "]");
    if (!part.is_object()) {
      return Invalid("messages", absl::StrCat(part_where, " must be an object, got ", Quote(part)));
    }
    const Json* type = Find(part, "type");
    if (type == nullptr || *type != "text") {
      return Invalid("messages",
                     absl::StrCat(part_where, " has type ", type == nullptr ? "null" : Quote(*type),
                                  "; only \"text\" parts are supported"));
    }
    const Json* text = Find(part, "text");
    if (text == nullptr || !text->is_string()) {
      return Invalid("messages", absl::StrCat(part_where, ".text must be a string"));
    }
    texts.push_back(text->get<std::string>());
  }
  return absl::StrJoin(texts, "\n");
}

// An assistant turn's tool_calls as the model wrote them: each a
// <tool_call> block with {"name", "arguments"} after the turn's text.
absl::Status AppendToolCalls(const Json& calls, size_t i, std::string* content) {
  const std::string where = absl::StrCat("messages[", i, "].tool_calls");
  if (!calls.is_array()) return Invalid("messages", absl::StrCat(where, " must be a list"));
  for (size_t k = 0; k < calls.size(); ++k) {
    const Json* function = calls[k].is_object() ? Find(calls[k], "function") : nullptr;
    const Json* name =
        function != nullptr && function->is_object() ? Find(*function, "name") : nullptr;
    const Json* arguments =
        function != nullptr && function->is_object() ? Find(*function, "arguments") : nullptr;
    if (name == nullptr || !name->is_string() || arguments == nullptr || !arguments->is_string()) {
      return Invalid("messages", absl::StrCat(where, "[", k,
                                              "] must be {\"function\": {\"name\": ..., "
                                              "\"arguments\": \"<JSON text>\"}}"));
    }
    absl::StrAppend(content, content->empty() ? "" : "\n", "<tool_call>\n{\"name\": ", name->dump(),
                    ", \"arguments\": ", arguments->get<std::string>(), "}\n</tool_call>");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ChatMessage>> ParseMessages(const Json& root) {
  const Json* messages = Find(root, "messages");
  if (messages == nullptr) return Invalid("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty()) {
    return Invalid("messages",
                   absl::StrCat("'messages' must be a non-empty list, got ", Quote(*messages)));
  }
  std::vector<ChatMessage> out;
  out.reserve(messages->size());
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& message = (*messages)[i];
    if (!message.is_object()) {
      return Invalid("messages",
                     absl::StrCat("messages[", i, "] must be an object, got ", Quote(message)));
    }
    const Json* role = Find(message, "role");
    if (role == nullptr || !role->is_string()) {
      return Invalid("messages", absl::StrCat("messages[", i, "].role must be a string"));
    }
    ChatMessage chat;
    chat.role = role->get<std::string>();
    // OpenAI's newer name for the system role.
    if (chat.role == "developer") chat.role = "system";
    HERD_ASSIGN_OR_RETURN(chat.content, ReadContent(message, i, chat.role));
    if (chat.role == "tool") {
      // A function's result, as Qwen's and Hermes' templates show it: a user
      // turn with the result in <tool_response> tags.
      chat.role = "user";
      chat.content = absl::StrCat("<tool_response>\n", chat.content, "\n</tool_response>");
    } else if (const Json* calls = Find(message, "tool_calls");
               calls != nullptr && chat.role == "assistant") {
      HERD_RETURN_IF_ERROR(AppendToolCalls(*calls, i, &chat.content));
    }
    out.push_back(std::move(chat));
  }
  return out;
}

// The text of a special token for the chat template ("<s>"), "" for none.
std::string SpecialTokenText(const Tokenizer& tokenizer, int32_t id) {
  if (id < 0 || id >= tokenizer.vocab_size()) return "";
  return tokenizer.token_text(id);
}

// Prompt tokens once per prompt (with those the prefix cache held for its
// first choice), completion tokens of every choice.
OrderedJson UsageJson(absl::Span<const OutputAccumulator* const> choices) {
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  for (const OutputAccumulator* choice : choices) {
    if (choice->first_of_prompt()) {
      prompt_tokens += choice->prompt_tokens();
      cached_tokens += choice->cached_prompt_tokens();
    }
    completion_tokens += choice->completion_tokens();
  }
  OrderedJson usage;
  usage["prompt_tokens"] = prompt_tokens;
  usage["completion_tokens"] = completion_tokens;
  usage["total_tokens"] = prompt_tokens + completion_tokens;
  OrderedJson details;
  details["cached_tokens"] = cached_tokens;
  usage["prompt_tokens_details"] = std::move(details);
  return usage;
}

OrderedJson ObjectHead(const ResponseMeta& meta, bool chunk) {
  OrderedJson object;
  object["id"] = meta.id;
  if (meta.endpoint == ApiEndpoint::kChatCompletions) {
    object["object"] = chunk ? "chat.completion.chunk" : "chat.completion";
  } else {
    object["object"] = "text_completion";
  }
  object["created"] = meta.created;
  object["model"] = meta.model;
  return object;
}

OrderedJson FinishReasonJson(const std::string& finish_reason) {
  return finish_reason.empty() ? OrderedJson(nullptr) : OrderedJson(finish_reason);
}

std::string SseEvent(const OrderedJson& object) {
  return absl::StrCat("data: ", Dump(object), "\n\n");
}

constexpr char kSseDone[] = "data: [DONE]\n\n";

}  // namespace

ApiModel MakeApiModel(std::string name, int64_t vocab_size, int64_t max_context_tokens,
                      const Tokenizer* tokenizer, absl::string_view chat_template_text) {
  ApiModel model;
  model.name = std::move(name);
  model.vocab_size = vocab_size;
  model.max_context_tokens = max_context_tokens;
  model.tokenizer = tokenizer;
  if (tokenizer == nullptr) {
    model.chat_template = absl::FailedPreconditionError(
        absl::StrCat("model `", model.name,
                     "` has no tokenizer, so it cannot chat; use /v1/completions "
                     "with token ids"));
    return model;
  }
  const int32_t num_ids =
      static_cast<int32_t>(std::min<int64_t>(tokenizer->vocab_size(), vocab_size));
  for (int32_t id = 0; id < num_ids; ++id) {
    if (tokenizer->IsEndOfGeneration(id)) model.end_of_generation_ids.push_back(id);
  }
  if (chat_template_text.empty()) {
    model.chat_template = absl::FailedPreconditionError(
        absl::StrCat("model `", model.name, "` has no chat template; use /v1/completions"));
    return model;
  }
  absl::StatusOr<ChatTemplate> chat_template = DetectChatTemplate(chat_template_text);
  if (!chat_template.ok()) {
    model.chat_template = absl::FailedPreconditionError(
        absl::StrCat("the chat template of model `", model.name, "` is not one Herd can render (",
                     chat_template.status().message(), "); use /v1/completions"));
    return model;
  }
  model.chat_template = *std::move(chat_template);
  return model;
}

// `messages` rendered with the model's chat template and tokenized, as the
// model sees a chat (the model must have a tokenizer and a chat template).
absl::StatusOr<std::vector<int32_t>> EncodeMessages(const Json& root, OrderedBody& body,
                                                    const ApiModel& model) {
  HERD_ASSIGN_OR_RETURN(std::vector<ChatMessage> messages, ParseMessages(root));
  if (ToolsOffered(root)) {
    // The tools close the system message (one is added if none leads).
    HERD_RETURN_IF_ERROR(ToolNames(root).status());
    const std::string tools = ToolsSystemText(body);
    if (messages.front().role == "system") {
      absl::StrAppend(&messages.front().content, "\n\n", tools);
    } else {
      messages.insert(messages.begin(), ChatMessage{"system", tools});
    }
  }
  const Tokenizer& tokenizer = *model.tokenizer;
  ChatTemplateOptions options;
  options.bos_token = SpecialTokenText(tokenizer, tokenizer.bos_id());
  options.eos_token = SpecialTokenText(tokenizer, tokenizer.eos_id());
  options.default_system = model.chat_template->default_system;
  absl::StatusOr<std::string> prompt = RenderChat(model.chat_template->format, messages, options);
  if (!prompt.ok()) return Invalid("messages", prompt.status().message());
  // The rendered prompt spells the template's special tokens (and its BOS).
  EncodeOptions encode;
  encode.parse_special = true;
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(*prompt, encode);
  if (!ids.ok()) {
    return Invalid("messages",
                   absl::StrCat("cannot tokenize the messages: ", ids.status().message()));
  }
  for (int32_t id : *ids) {
    if (id >= model.vocab_size) {
      return Invalid("messages", absl::StrCat("the messages' token ", id,
                                              " is outside the model's vocabulary [0, ",
                                              model.vocab_size, ")"));
    }
  }
  return ids;
}

absl::StatusOr<ApiRequest> ParseCompletionRequest(absl::string_view body, const ApiModel& model) {
  HERD_ASSIGN_OR_RETURN(const Json root, ParseBody(body));
  ApiRequest request;
  request.endpoint = ApiEndpoint::kCompletions;
  OrderedBody ordered(body);
  HERD_RETURN_IF_ERROR(ParseCommon(root, ordered, model, &request));
  HERD_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> prompts, ParsePrompts(root, model));
  HERD_RETURN_IF_ERROR(ParseChoiceCount(root, static_cast<int64_t>(prompts.size()), &request));
  HERD_RETURN_IF_ERROR(ReadBool(root, "echo", "echo", &request.echo));
  request.generation.prompt_logprobs =
      request.echo && request.generation.sampling.top_logprobs >= 0;
  int64_t max_tokens = kDefaultCompletionMaxTokens;
  bool max_tokens_given = false;
  // 0 scores the prompt and generates nothing (OpenAI's legacy loglikelihood
  // form: echo, logprobs, max_tokens 0).
  HERD_RETURN_IF_ERROR(ReadInt(root, "max_tokens", request.generation.prompt_logprobs ? 0 : 1,
                               &max_tokens, &max_tokens_given));
  for (const std::vector<int32_t>& ids : prompts) {
    HERD_RETURN_IF_ERROR(CheckContext(model, request.endpoint, static_cast<int64_t>(ids.size()),
                                      max_tokens, max_tokens_given ? "max_tokens" : ""));
  }
  request.generation.max_tokens = max_tokens;
  request.generation.prompt_ids = std::move(prompts.front());
  request.extra_prompts.assign(std::make_move_iterator(prompts.begin() + 1),
                               std::make_move_iterator(prompts.end()));
  return request;
}

absl::StatusOr<ApiRequest> ParseChatCompletionRequest(absl::string_view body,
                                                      const ApiModel& model) {
  if (!model.chat_template.ok()) return model.chat_template.status();
  HERD_ASSIGN_OR_RETURN(const Json root, ParseBody(body));
  ApiRequest request;
  request.endpoint = ApiEndpoint::kChatCompletions;
  OrderedBody ordered(body);
  HERD_RETURN_IF_ERROR(ParseCommon(root, ordered, model, &request));
  HERD_RETURN_IF_ERROR(ParseTools(root, ordered, &request));
  HERD_RETURN_IF_ERROR(ParseChoiceCount(root, 1, &request));
  HERD_ASSIGN_OR_RETURN(request.generation.prompt_ids, EncodeMessages(root, ordered, model));
  const auto prompt_tokens = static_cast<int64_t>(request.generation.prompt_ids.size());

  // max_completion_tokens replaced max_tokens in OpenAI's chat API; either
  // may come. Without them the reply may fill the context, as with OpenAI.
  int64_t max_tokens = 0;
  const char* max_tokens_param = "max_completion_tokens";
  bool given = false;
  HERD_RETURN_IF_ERROR(ReadInt(root, "max_completion_tokens", 1, &max_tokens, &given));
  if (!given) {
    max_tokens_param = "max_tokens";
    HERD_RETURN_IF_ERROR(ReadInt(root, "max_tokens", 1, &max_tokens, &given));
  }
  if (!given) {
    max_tokens_param = "";
    max_tokens = std::max<int64_t>(model.max_context_tokens - prompt_tokens, 1);
  }
  HERD_RETURN_IF_ERROR(
      CheckContext(model, request.endpoint, prompt_tokens, max_tokens, max_tokens_param));
  request.generation.max_tokens = max_tokens;
  return request;
}

absl::Status WithParam(absl::Status status, absl::string_view param) {
  if (!param.empty()) status.SetPayload(kParamPayloadUrl, absl::Cord(param));
  return status;
}

std::string ParamOf(const absl::Status& status) {
  const auto param = status.GetPayload(kParamPayloadUrl);
  return param.has_value() ? std::string(*param) : std::string();
}

ApiError ApiErrorFromStatus(const absl::Status& status) {
  ApiError error;
  error.message = std::string(status.message());
  error.param = ParamOf(status);
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      error.http_status = 400;
      error.type = "invalid_request_error";
      break;
    case absl::StatusCode::kUnauthenticated:
      error.http_status = 401;
      error.type = "invalid_request_error";
      error.code = "invalid_api_key";
      break;
    case absl::StatusCode::kNotFound:
      error.http_status = 404;
      error.type = "invalid_request_error";
      if (error.param == "model") error.code = "model_not_found";
      break;
    case absl::StatusCode::kResourceExhausted:
      error.http_status = 429;
      error.type = "server_overloaded";
      break;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      error.http_status = 503;
      error.type = "service_unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      error.http_status = 504;
      error.type = "timeout_error";
      break;
    default:
      error.http_status = 500;
      error.type = "server_error";
      break;
  }
  return error;
}

std::string ApiErrorBody(const ApiError& error) {
  OrderedJson inner;
  inner["message"] = error.message;
  inner["type"] = error.type;
  inner["param"] = error.param.empty() ? OrderedJson(nullptr) : OrderedJson(error.param);
  inner["code"] = error.code.empty() ? OrderedJson(nullptr) : OrderedJson(error.code);
  OrderedJson body;
  body["error"] = std::move(inner);
  return Dump(body);
}

GenerationRequest ApiRequest::ChoiceRequest(int64_t index) const {
  GenerationRequest choice = generation;
  if (index >= n) choice.prompt_ids = prompt_ids(index / n);
  choice.sampling.seed += static_cast<uint64_t>(index % n);
  return choice;
}

OutputAccumulator::OutputAccumulator(const ApiRequest& request, int64_t index,
                                     const ApiModel& model)
    : tokenizer_(model.tokenizer),
      index_(index),
      first_of_prompt_(index % request.n == 0),
      stop_strings_(request.stop_strings),
      prompt_tokens_(static_cast<int64_t>(request.prompt_ids(index / request.n).size())),
      wants_logprobs_(request.generation.sampling.top_logprobs >= 0),
      tool_marker_(request.tool_calls == ToolCallForm::kAuto ? kToolCallOpen : "") {
  if (request.echo) echo_ids_ = request.prompt_ids(index / request.n);
  if (tokenizer_ != nullptr) {
    DecodeOptions options;
    // A completion continues its prompt, so its leading space is part of the
    // text; a chat reply is a message of its own.
    options.strip_space_prefix = request.endpoint == ApiEndpoint::kChatCompletions;
    decoder_ = std::make_unique<StreamDecoder>(*tokenizer_, options);
  }
}

absl::StatusOr<OutputDelta> OutputAccumulator::Add(const GenerationResponse& response) {
  HERD_CHECK(!finished());
  if (response.finished && (response.finish_reason == FinishReason::kAbort ||
                            response.finish_reason == FinishReason::kError)) {
    executor_finished_ = true;
    if (!response.status.ok()) return response.status;
    return absl::InternalError(response.finish_reason == FinishReason::kAbort
                                   ? "the request was aborted"
                                   : "the request failed");
  }
  OutputDelta delta;
  delta.index = index_;
  cached_prompt_tokens_ = response.cached_prompt_tokens;
  if (!echo_ids_.empty()) Echo(response, &delta);
  const bool with_logprobs =
      wants_logprobs_ && response.logprobs.size() == response.token_ids.size();
  for (size_t i = 0; i < response.token_ids.size(); ++i) {
    const int32_t id = response.token_ids[i];
    token_ids_.push_back(id);
    delta.token_ids.push_back(id);
    if (with_logprobs) {
      logprobs_.push_back(MakeLogprob(id, &response.logprobs[i]));
      delta.logprobs.push_back(logprobs_.back());
    }
    if (decoder_ == nullptr) continue;
    // An id past the tokenizer's vocabulary (a model whose embedding is
    // padded beyond it) has no text.
    absl::StatusOr<std::string> piece = decoder_->Next(id);
    if (piece.ok() && AppendText(*piece, /*final=*/false, &delta)) {
      executor_finished_ = response.finished;
      finish_reason_ = "stop";
      delta.finish_reason = finish_reason_;
      return delta;
    }
  }
  if (response.finished) {
    executor_finished_ = true;
    const bool matched =
        decoder_ != nullptr && AppendText(decoder_->Finish(), /*final=*/true, &delta);
    finish_reason_ = matched || response.finish_reason == FinishReason::kStop ? "stop" : "length";
    delta.finish_reason = finish_reason_;
  }
  return delta;
}

std::string OutputAccumulator::TokenText(int32_t id) const {
  if (tokenizer_ != nullptr && id < tokenizer_->vocab_size()) {
    if (absl::StatusOr<std::string> bytes = tokenizer_->TokenBytes(id); bytes.ok()) return *bytes;
  }
  return absl::StrCat("token_id:", id);
}

OutputLogprob OutputAccumulator::MakeLogprob(int32_t id, const SampledLogprobs* logprobs) {
  // OpenAI reports what no sampling can reach as -9999.0; JSON has no -inf.
  constexpr float kLowest = -9999.0f;
  OutputLogprob out;
  out.token = TokenText(id);
  out.has_logprob = logprobs != nullptr;
  if (logprobs != nullptr) {
    out.logprob = std::max(logprobs->logprob, kLowest);
    for (const TokenLogprob& top : logprobs->top) {
      out.top.emplace_back(TokenText(top.token_id), std::max(top.logprob, kLowest));
    }
  }
  out.text_offset = text_offset_;
  // Characters: bytes that do not continue a UTF-8 sequence.
  for (const char c : out.token) text_offset_ += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
  return out;
}

void OutputAccumulator::Echo(const GenerationResponse& response, OutputDelta* delta) {
  if (tokenizer_ != nullptr) {
    DecodeOptions options;
    options.strip_space_prefix = false;
    if (absl::StatusOr<std::string> text = tokenizer_->Decode(echo_ids_, options); text.ok()) {
      delta->text = *text;
      text_ = *text;
    }
  }
  if (wants_logprobs_) {
    // Token 0 has no log probability; the others come with the first response.
    for (size_t p = 0; p < echo_ids_.size(); ++p) {
      const bool scored = p > 0 && p - 1 < response.prompt_logprobs.size();
      logprobs_.push_back(
          MakeLogprob(echo_ids_[p], scored ? &response.prompt_logprobs[p - 1] : nullptr));
      delta->logprobs.push_back(logprobs_.back());
    }
  }
  echo_ids_.clear();
}

bool OutputAccumulator::AppendText(absl::string_view piece, bool final, OutputDelta* delta) {
  if (!tool_text_.empty()) {
    // Past an "auto" reply's first call: the calls' text (a stop string
    // still ends it).
    const size_t from = tool_text_.size();
    tool_text_.append(piece.data(), piece.size());
    size_t match = std::string::npos;
    for (const std::string& stop : stop_strings_) {
      match = std::min(match, tool_text_.find(stop, from >= stop.size() ? from - stop.size() : 0));
    }
    if (match != std::string::npos) tool_text_.resize(match);
    return match != std::string::npos;
  }
  held_.append(piece.data(), piece.size());
  // NOTE: returned text never holds a stop string nor ends with the start of
  // one, so a match can only begin inside held_.
  size_t match = std::string::npos;
  for (const std::string& stop : stop_strings_) match = std::min(match, held_.find(stop));
  if (match != std::string::npos) {
    held_.resize(match);
    final = true;
  }
  if (!tool_marker_.empty()) {
    // The first call ends the text; what follows is the calls'.
    if (const size_t marker = held_.find(tool_marker_); marker != std::string::npos) {
      tool_text_ = held_.substr(marker);
      held_.resize(marker);
      final = true;
    }
  }
  size_t keep = 0;
  if (!final) {
    if (!tool_marker_.empty()) {
      for (size_t k = std::min(tool_marker_.size() - 1, held_.size()); k > keep; --k) {
        if (absl::EndsWith(held_, absl::string_view(tool_marker_).substr(0, k))) {
          keep = k;
          break;
        }
      }
    }
    for (const std::string& stop : stop_strings_) {
      for (size_t k = std::min(stop.size() - 1, held_.size()); k > keep; --k) {
        if (absl::EndsWith(held_, absl::string_view(stop).substr(0, k))) {
          keep = k;
          break;
        }
      }
    }
  }
  // A kept suffix starts where a stop string starts, so never inside a UTF-8
  // character.
  const size_t emit = held_.size() - keep;
  delta->text.append(held_, 0, emit);
  text_.append(held_, 0, emit);
  held_.erase(0, emit);
  return match != std::string::npos;
}

// The choice's "logprobs" for `tokens`: completions' {tokens, token_logprobs,
// top_logprobs (a map per token, with the sampled token in it), text_offset};
// chat's {content: [{token, logprob, bytes, top_logprobs: [...]}]}.
OrderedJson LogprobsJson(ApiEndpoint endpoint, const std::vector<OutputLogprob>& tokens) {
  const auto bytes = [](const std::string& text) {
    OrderedJson list = OrderedJson::array();
    for (const char c : text) list.push_back(static_cast<uint8_t>(c));
    return list;
  };
  OrderedJson out;
  if (endpoint == ApiEndpoint::kChatCompletions) {
    OrderedJson content = OrderedJson::array();
    for (const OutputLogprob& t : tokens) {
      OrderedJson entry;
      entry["token"] = t.token;
      entry["logprob"] = t.logprob;
      entry["bytes"] = bytes(t.token);
      entry["top_logprobs"] = OrderedJson::array();
      for (const auto& [token, logprob] : t.top) {
        OrderedJson top;
        top["token"] = token;
        top["logprob"] = logprob;
        top["bytes"] = bytes(token);
        entry["top_logprobs"].push_back(std::move(top));
      }
      content.push_back(std::move(entry));
    }
    out["content"] = std::move(content);
    return out;
  }
  out["tokens"] = OrderedJson::array();
  out["token_logprobs"] = OrderedJson::array();
  out["top_logprobs"] = OrderedJson::array();
  out["text_offset"] = OrderedJson::array();
  for (const OutputLogprob& t : tokens) {
    out["tokens"].push_back(t.token);
    out["text_offset"].push_back(t.text_offset);
    if (!t.has_logprob) {
      out["token_logprobs"].push_back(nullptr);
      out["top_logprobs"].push_back(nullptr);
      continue;
    }
    out["token_logprobs"].push_back(t.logprob);
    OrderedJson top = OrderedJson::object();
    for (const auto& [token, logprob] : t.top) {
      if (!top.contains(token)) top[token] = logprob;
    }
    if (!top.contains(t.token)) top[t.token] = t.logprob;
    out["top_logprobs"].push_back(std::move(top));
  }
  return out;
}

// One call read from {"name", "arguments"} (arguments an object, or its
// JSON text); false if `call` is not that or names no function offered.
bool ReadCall(const OrderedJson& call, const std::vector<std::string>* names,
              std::vector<std::pair<std::string, OrderedJson>>* calls) {
  if (!call.is_object() || !call.contains("name") || !call["name"].is_string() ||
      !call.contains("arguments")) {
    return false;
  }
  const std::string name = call["name"];
  if (names != nullptr && std::find(names->begin(), names->end(), name) == names->end()) {
    return false;
  }
  OrderedJson arguments = call["arguments"];
  if (arguments.is_string()) {
    arguments = OrderedJson::parse(arguments.get<std::string>(), nullptr, false);
    if (arguments.is_discarded()) return false;
  }
  calls->emplace_back(name, std::move(arguments));
  return true;
}

// A tool-call choice's calls: a named or required choice's from its whole
// text (the named function's arguments, or the list of {"name",
// "arguments"}), an "auto" one's from its <tool_call> blocks; ids unique
// within the response. Null if the text is not that (an "auto" reply's
// malformed or cut call; never a finished constrained one).
OrderedJson ToolCallsJson(const ResponseMeta& meta, const OutputAccumulator& output) {
  std::vector<std::pair<std::string, OrderedJson>> calls;
  if (meta.tool_calls == ToolCallForm::kAuto) {
    absl::string_view rest = output.tool_text();
    while (!(rest = absl::StripLeadingAsciiWhitespace(rest)).empty()) {
      const size_t close = rest.find(kToolCallClose);
      if (!absl::ConsumePrefix(&rest, kToolCallOpen) || close == absl::string_view::npos) {
        return nullptr;
      }
      const absl::string_view body = rest.substr(0, close - std::strlen(kToolCallOpen));
      if (!ReadCall(OrderedJson::parse(body, nullptr, false), &meta.tool_names, &calls)) {
        return nullptr;
      }
      rest.remove_prefix(body.size() + std::strlen(kToolCallClose));
    }
  } else {
    const OrderedJson parsed = OrderedJson::parse(output.text(), nullptr, false);
    if (parsed.is_discarded()) return nullptr;
    if (meta.tool_calls == ToolCallForm::kNamed) {
      calls.emplace_back(meta.tool_name, parsed);
    } else {
      if (!parsed.is_array()) return nullptr;
      for (const OrderedJson& call : parsed) {
        if (!ReadCall(call, nullptr, &calls)) return nullptr;
      }
    }
  }
  OrderedJson json = OrderedJson::array();
  for (size_t k = 0; k < calls.size(); ++k) {
    OrderedJson call;
    call["id"] =
        absl::StrCat("call_", meta.id.substr(meta.id.find('-') + 1), "_", output.index(), "_", k);
    call["type"] = "function";
    call["function"] = {{"name", calls[k].first}, {"arguments", calls[k].second.dump()}};
    json.push_back(std::move(call));
  }
  return json;
}

// A tool-call choice's message: its calls (finish_reason "tool_calls"),
// with an "auto" reply's text before them as content (null if only
// whitespace); else all its text as content. A constrained call counts only
// if it stopped, not cut by max_tokens. Sets *finish_reason.
OrderedJson ToolCallMessage(const ResponseMeta& meta, const OutputAccumulator& output,
                            std::string* finish_reason) {
  OrderedJson message = {{"role", "assistant"}};
  *finish_reason = output.finish_reason();
  const bool auto_calls = meta.tool_calls == ToolCallForm::kAuto;
  OrderedJson calls = (auto_calls ? !output.tool_text().empty() : output.finish_reason() == "stop")
                          ? ToolCallsJson(meta, output)
                          : OrderedJson(nullptr);
  if (calls.is_null()) {
    message["content"] = absl::StrCat(output.text(), output.tool_text());
    return message;
  }
  const absl::string_view text = absl::StripTrailingAsciiWhitespace(output.text());
  message["content"] = auto_calls && !text.empty() ? OrderedJson(text) : OrderedJson(nullptr);
  message["tool_calls"] = std::move(calls);
  *finish_reason = "tool_calls";
  return message;
}

std::string FormatResponse(const ResponseMeta& meta,
                           absl::Span<const OutputAccumulator* const> choices) {
  OrderedJson object = ObjectHead(meta, /*chunk=*/false);
  object["choices"] = OrderedJson::array();
  for (const OutputAccumulator* output : choices) {
    OrderedJson choice;
    choice["index"] = output->index();
    std::string finish_reason = output->finish_reason();
    if (meta.tool_calls != ToolCallForm::kNone) {
      // "auto" too: a reply without calls is its text, as ToolCallMessage says.
      choice["message"] = ToolCallMessage(meta, *output, &finish_reason);
    } else if (meta.endpoint == ApiEndpoint::kChatCompletions) {
      choice["message"] = {{"role", "assistant"}, {"content", output->text()}};
    } else {
      choice["text"] = output->text();
    }
    choice["token_ids"] = output->token_ids();
    choice["logprobs"] =
        output->wants_logprobs() ? LogprobsJson(meta.endpoint, output->logprobs()) : nullptr;
    choice["finish_reason"] = FinishReasonJson(finish_reason);
    object["choices"].push_back(std::move(choice));
  }
  object["usage"] = UsageJson(choices);
  return Dump(object);
}

std::string FormatStreamStart(const ResponseMeta& meta, int64_t index) {
  OrderedJson object = ObjectHead(meta, /*chunk=*/true);
  OrderedJson choice;
  choice["index"] = index;
  choice["delta"] = {{"role", "assistant"}, {"content", ""}};
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = nullptr;
  object["choices"] = OrderedJson::array({std::move(choice)});
  if (meta.include_usage) object["usage"] = nullptr;
  return SseEvent(object);
}

std::string FormatStreamDelta(const ResponseMeta& meta, const OutputDelta& delta,
                              const OutputAccumulator& output) {
  OrderedJson object = ObjectHead(meta, /*chunk=*/true);
  OrderedJson choice;
  choice["index"] = delta.index;
  std::string finish_reason = delta.finish_reason;
  if (meta.tool_calls == ToolCallForm::kAuto) {
    // The text streams; the calls (or, if malformed, their raw text) come
    // with the last delta.
    choice["delta"] = OrderedJson::object();
    std::string content = delta.text;
    if (!delta.finish_reason.empty() && !output.tool_text().empty()) {
      OrderedJson calls = ToolCallsJson(meta, output);
      if (calls.is_null()) {
        content += output.tool_text();
      } else {
        choice["delta"]["tool_calls"] = std::move(calls);
        finish_reason = "tool_calls";
      }
    }
    if (!content.empty()) choice["delta"]["content"] = content;
  } else if (meta.tool_calls != ToolCallForm::kNone) {
    // The calls come whole with the last delta (the text before is not
    // content).
    choice["delta"] = OrderedJson::object();
    if (!delta.finish_reason.empty()) {
      OrderedJson message = ToolCallMessage(meta, output, &finish_reason);
      message.erase("role");
      if (message["content"].is_null()) message.erase("content");
      choice["delta"] = std::move(message);
    }
  } else if (meta.endpoint == ApiEndpoint::kChatCompletions) {
    choice["delta"] = OrderedJson::object();
    if (!delta.text.empty()) choice["delta"]["content"] = delta.text;
  } else {
    choice["text"] = delta.text;
  }
  choice["token_ids"] = delta.token_ids;
  choice["logprobs"] =
      delta.logprobs.empty() ? OrderedJson(nullptr) : LogprobsJson(meta.endpoint, delta.logprobs);
  choice["finish_reason"] = FinishReasonJson(finish_reason);
  object["choices"] = OrderedJson::array({std::move(choice)});
  if (meta.include_usage) object["usage"] = nullptr;
  return SseEvent(object);
}

std::string FormatStreamEnd(const ResponseMeta& meta,
                            absl::Span<const OutputAccumulator* const> choices) {
  std::string events;
  if (meta.include_usage) {
    OrderedJson object = ObjectHead(meta, /*chunk=*/true);
    object["choices"] = OrderedJson::array();
    object["usage"] = UsageJson(choices);
    events = SseEvent(object);
  }
  return absl::StrCat(events, kSseDone);
}

std::string FormatStreamError(const ApiError& error) {
  return absl::StrCat("data: ", ApiErrorBody(error), "\n\n", kSseDone);
}

absl::StatusOr<std::string> Tokenize(absl::string_view body, const ApiModel& model) {
  HERD_ASSIGN_OR_RETURN(const Json root, ParseBody(body));
  HERD_RETURN_IF_ERROR(CheckModel(root, model));
  if (model.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model `", model.name, "` has no tokenizer: it takes token ids only"));
  }
  std::vector<int32_t> ids;
  const Json* prompt = Find(root, "prompt");
  if (Find(root, "messages") != nullptr) {
    if (prompt != nullptr) return Invalid("prompt", "send 'prompt' or 'messages', not both");
    if (!model.chat_template.ok()) return model.chat_template.status();
    OrderedBody ordered(body);
    HERD_ASSIGN_OR_RETURN(ids, EncodeMessages(root, ordered, model));
  } else {
    if (prompt == nullptr || !prompt->is_string()) {
      return Invalid("prompt", "'prompt' (a string) or 'messages' is required");
    }
    bool add_special_tokens = true;
    HERD_RETURN_IF_ERROR(
        ReadBool(root, "add_special_tokens", "add_special_tokens", &add_special_tokens));
    EncodeOptions options;
    options.add_bos = add_special_tokens && model.tokenizer->add_bos();
    options.parse_special = true;
    absl::StatusOr<std::vector<int32_t>> encoded =
        model.tokenizer->Encode(prompt->get<std::string>(), options);
    if (!encoded.ok()) {
      return Invalid("prompt",
                     absl::StrCat("cannot tokenize 'prompt': ", encoded.status().message()));
    }
    ids = *std::move(encoded);
  }
  OrderedJson out;
  out["count"] = ids.size();
  out["max_model_len"] = model.max_context_tokens;
  out["tokens"] = ids;
  return Dump(out);
}

absl::StatusOr<std::string> Detokenize(absl::string_view body, const ApiModel& model) {
  HERD_ASSIGN_OR_RETURN(const Json root, ParseBody(body));
  HERD_RETURN_IF_ERROR(CheckModel(root, model));
  if (model.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model `", model.name, "` has no tokenizer: it has no text"));
  }
  const Json* tokens = Find(root, "tokens");
  if (tokens == nullptr || !tokens->is_array()) {
    return Invalid("tokens", "'tokens' (a list of token ids) is required");
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens->size(); ++i) {
    HERD_ASSIGN_OR_RETURN(
        int32_t id,
        ReadTokenId((*tokens)[i], "tokens", absl::StrCat("tokens[", i, "]"),
                    std::min<int64_t>(model.vocab_size, model.tokenizer->vocab_size())));
    ids.push_back(id);
  }
  // As Hugging Face's decode: special tokens spelled out, SentencePiece's
  // leading space dropped.
  DecodeOptions options;
  options.render_special = true;
  absl::StatusOr<std::string> text = model.tokenizer->Decode(ids, options);
  if (!text.ok()) return Invalid("tokens", text.status().message());
  OrderedJson out;
  out["prompt"] = *text;
  return Dump(out);
}

std::string FormatModelList(const ApiModel& model, int64_t created) {
  OrderedJson entry;
  entry["id"] = model.name;
  entry["object"] = "model";
  entry["created"] = created;
  entry["owned_by"] = "herd";
  entry["max_model_len"] = model.max_context_tokens;
  entry["vocab_size"] = model.vocab_size;  // Herd's: clients sending ids need it
  OrderedJson list;
  list["object"] = "list";
  list["data"] = OrderedJson::array({std::move(entry)});
  return Dump(list);
}

}  // namespace herd
