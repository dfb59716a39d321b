// The wire format of the OpenAI-compatible API: request bodies parsed and
// validated into GenerationRequests, the executor's output turned into
// completion objects and server-sent events, errors in OpenAI's shape
// {"error": {"message", "type", "param", "code"}}.
//
// Everything here is pure: no I/O, no clock, no randomness (response ids,
// timestamps and default seeds come from the caller), so every field and
// every error is unit-tested without a server. docs/serving.md describes the
// API from a client's side.
//
// Text: when the model has a tokenizer, prompts and stop sequences may be
// strings and the output carries decoded text next to the token ids; without
// one, the API speaks token ids only (text fields are "").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "coordinator/api/json_schema.h"
#include "coordinator/scheduler/executor.h"
#include "model/chat_template.h"
#include "model/tokenizer/tokenizer.h"

namespace herd {

// The served model, as the API sees it.
struct ApiModel {
  // The id of /v1/models and of every response; a request naming another
  // model is refused (404 model_not_found).
  std::string name;
  int64_t vocab_size = 0;
  // Longest sequence, prompt plus generated tokens.
  int64_t max_context_tokens = 0;
  // Borrowed, may be nullptr (token ids only). Must outlive every use.
  const Tokenizer* tokenizer = nullptr;
  // EOS and the other ids that end a generated turn: added to every
  // request's stop ids unless it sets ignore_eos.
  std::vector<int32_t> end_of_generation_ids;
  // The chat format, or why /v1/chat/completions is unavailable.
  absl::StatusOr<ChatTemplate> chat_template =
      absl::FailedPreconditionError("the model has no chat template");
};

// Fills an ApiModel: the tokenizer's end-of-generation ids and the chat
// format recognised in `chat_template_text` (chat needs a tokenizer and a
// recognised template; otherwise chat_template holds the reason).
ApiModel MakeApiModel(std::string name, int64_t vocab_size, int64_t max_context_tokens,
                      const Tokenizer* tokenizer, absl::string_view chat_template_text);

enum class ApiEndpoint { kCompletions, kChatCompletions };

// Most choices one request may ask for: prompts x n (OpenAI's limit on n).
inline constexpr int64_t kMaxChoices = 128;
// The most functions one request's tools may list.
inline constexpr size_t kMaxTools = 128;
// The most strings one guided_choice may list.
inline constexpr size_t kMaxGuidedChoices = 256;

// How a chat's output is a tool call (tool_choice): not (none), the named
// function's arguments (a named function), a list of calls ("required"), or
// text that may end in calls the model writes as <tool_call> blocks
// ("auto", read as Qwen's and Hermes' templates teach).
enum class ToolCallForm { kNone, kNamed, kRequired, kAuto };

// What starts a call in an "auto" reply.
inline constexpr char kToolCallOpen[] = "<tool_call>";
inline constexpr char kToolCallClose[] = "</tool_call>";

// A validated request, ready for Executor::Enqueue.
struct ApiRequest {
  ApiEndpoint endpoint = ApiEndpoint::kCompletions;
  // Prompt ids (of the first prompt), max_tokens, sampling and stop ids (the
  // request's plus the end-of-generation ids). The deadline is left to the
  // server.
  GenerationRequest generation;
  // Completions' further prompts: `prompt` as a batch, a list of several.
  std::vector<std::vector<int32_t>> extra_prompts;
  // Choices per prompt (`n`). Choice i answers prompt i / n, as OpenAI
  // indexes them.
  int64_t n = 1;
  // Whether the request chose its seed; if not, the server picks one so that
  // equal requests give different samples, as OpenAI's do.
  bool has_seed = false;
  bool stream = false;
  // Completions' echo: the output starts with the prompt's text (and, with
  // log probabilities, its tokens').
  bool echo = false;
  // stream_options.include_usage: a last chunk with the usage.
  bool include_usage = false;
  // Guided JSON (response_format json_object or json_schema, guided_json):
  // each choice's output is a JSON value this schema accepts (JSON mode: any
  // object; the server gives each choice a JsonConstraint). Null: free text.
  std::shared_ptr<const JsonSchema> json_schema;
  // vLLM's guided_regex or guided_choice: each choice's output is a text the
  // regular expression matches whole (the server gives each a
  // RegexConstraint); the key names it among the server's mask caches.
  std::shared_ptr<const Regex> text_regex;
  std::string text_regex_key;
  // Chat tool calls: named and required constrain the output to the
  // call(s) (json_schema holds their schema); returned as
  // message.tool_calls.
  ToolCallForm tool_calls = ToolCallForm::kNone;
  std::string tool_name;                // kNamed: the function
  std::vector<std::string> tool_names;  // kAuto: the functions a call may name
  // Text stop sequences (tokenizer only). The output ends before the first
  // occurrence (which is not part of the returned text); the token ids run up
  // to and including the token that completed it.
  std::vector<std::string> stop_strings;

  int64_t num_prompts() const { return 1 + static_cast<int64_t>(extra_prompts.size()); }
  int64_t num_choices() const { return num_prompts() * n; }
  // Prompt `prompt`'s ids (< num_prompts()).
  const std::vector<int32_t>& prompt_ids(int64_t prompt) const {
    return prompt == 0 ? generation.prompt_ids : extra_prompts[prompt - 1];
  }
  // The executor's request for choice `index` (< num_choices()): `generation`
  // with prompt index / n and seed + index % n, so that the n choices of a
  // prompt sample differently and a seeded request repeats.
  GenerationRequest ChoiceRequest(int64_t index) const;
};

// Parses the body of POST /v1/completions.
//
// Fields: prompt (token ids, a string when the model has a tokenizer, or a
// batch: a list of strings or of id lists, one choice each), n (choices per
// prompt; best_of may only repeat it), max_tokens (default 16), temperature ([0, 2],
// default 1; 0 is greedy), top_p ((0, 1]), top_k (>= -1; -1 and 0: off) and
// min_p ([0, 1]) as vLLM's, presence_penalty and frequency_penalty ([-2, 2]),
// repetition_penalty (> 0, vLLM's), logit_bias ({"id": [-100, 100]}), seed,
// stop (a string, or a list
// of strings and token ids), stop_token_ids, ignore_eos, stream,
// stream_options.include_usage, logprobs (0..kMaxTopLogprobs: the top tokens
// returned beside each sampled one), echo (with logprobs: the prompt's log
// probabilities too), response_format ({"type": "text"}, {"type":
// "json_object"}: JSON mode, or {"type": "json_schema", "json_schema":
// {"name", "schema", "strict"}}: structured outputs; with a tokenizer) or
// vLLM's guided_json (a schema), guided_regex (a pattern the output
// matches) or guided_choice (strings, one of which the output is), model
// (when given, the served model's name); at most
// kMaxChoices choices in all. top_logprobs and suffix must be left at their
// defaults. null means "default"; unknown fields are ignored, as OpenAI
// does.
//
// Errors: InvalidArgument naming the field (ParamOf gives it) for malformed
// JSON, a wrong type, a value out of range, an id outside the vocabulary, an
// unsupported option or a prompt + max_tokens longer than the context;
// NotFound for another model's name.
absl::StatusOr<ApiRequest> ParseCompletionRequest(absl::string_view body, const ApiModel& model);

// Parses the body of POST /v1/chat/completions: messages [{role, content}]
// (role system, developer (as system), user, assistant (with tool_calls) or
// tool (with tool_call_id); content a string or a list of {"type": "text",
// "text": ...} parts), rendered with the model's chat template and
// tokenized; max_completion_tokens or max_tokens (default: the rest of the
// context); n and the sampling, stop and stream fields of
// ParseCompletionRequest; logprobs (true or false) with top_logprobs
// (0..kMaxTopLogprobs, needs logprobs true); tools (functions with a JSON
// schema of their parameters, described to the model in the system message
// as Qwen's and Hermes' templates do) with tool_choice "none", "auto"
// (calls read from the reply's <tool_call> blocks), "required" or a named
// function (the output is constrained to the call), parallel_tool_calls.
//
// Errors: those of ParseCompletionRequest, and FailedPrecondition when the
// model has no tokenizer or chat template.
absl::StatusOr<ApiRequest> ParseChatCompletionRequest(absl::string_view body,
                                                      const ApiModel& model);

// POST /tokenize (vLLM's): {"prompt": text, "add_special_tokens": true}
// (encoded as a completion prompt is: BOS when the tokenizer says so and
// add_special_tokens, control tokens recognised), or {"messages": [...]}
// (rendered and encoded as chat completions does). Returns the response
// body {"count", "max_model_len", "tokens"}. Errors: InvalidArgument naming
// the field, NotFound for another model, FailedPrecondition without a
// tokenizer (or, for messages, a chat template).
absl::StatusOr<std::string> Tokenize(absl::string_view body, const ApiModel& model);

// POST /detokenize (vLLM's): {"tokens": [ids]} -> {"prompt": text}, decoded
// as Hugging Face's tokenizer.decode does (special tokens spelled out,
// SentencePiece's leading space dropped). Errors as Tokenize's.
absl::StatusOr<std::string> Detokenize(absl::string_view body, const ApiModel& model);

// ---------------------------------------------------------------- errors

// An error as the API reports it.
struct ApiError {
  int http_status = 500;
  std::string message;
  // "invalid_request_error" (4xx but 429), "server_overloaded" (429),
  // "service_unavailable" (503), "timeout_error" (504) or "server_error".
  std::string type;
  std::string param;  // the request field at fault; empty: null
  std::string code;   // a machine-readable reason; empty: null
};

// `status` with the request field at fault attached (as a payload).
absl::Status WithParam(absl::Status status, absl::string_view param);
// The field WithParam attached, or "".
std::string ParamOf(const absl::Status& status);

// The API error for a status, keeping its message and param:
// InvalidArgument, OutOfRange and FailedPrecondition 400; Unauthenticated 401
// (code invalid_api_key); NotFound 404 (code model_not_found when the param is
// "model"); ResourceExhausted 429; Unavailable and Cancelled 503;
// DeadlineExceeded 504; anything else 500. `status` must not be OK.
ApiError ApiErrorFromStatus(const absl::Status& status);

// {"error": {"message", "type", "param", "code"}} (param and code null when empty).
std::string ApiErrorBody(const ApiError& error);

// ---------------------------------------------------------------- output

// One generated token's log probabilities as the API reports them.
struct OutputLogprob {
  // False for the first token of an echoed prompt, which has none (null).
  bool has_logprob = true;
  // The token's text: its bytes on its own (possibly part of a UTF-8
  // character; the JSON shows U+FFFD for such bytes), or "token_id:N" for an
  // id the tokenizer does not have (or without a tokenizer), as vLLM's
  // return_tokens_as_token_ids.
  std::string token;
  float logprob = 0.0f;  // -inf (a token top-p could not reach) as -9999.0, OpenAI's
  // The most likely tokens, most likely first.
  std::vector<std::pair<std::string, float>> top;
  // Characters of the earlier tokens' texts: where this one starts in the
  // completion (completions' text_offset).
  int64_t text_offset = 0;
};

// What one executor response adds to a choice's output.
struct OutputDelta {
  int64_t index = 0;  // the choice's
  std::vector<int32_t> token_ids;
  // One per token id when the request asked for log probabilities.
  std::vector<OutputLogprob> logprobs;
  std::string text;
  // "stop" or "length" on the last delta; empty before.
  std::string finish_reason;
};

// Turns the executor's responses for one choice of a request into OpenAI
// output: the
// token ids, the text decoded incrementally (never ending inside a UTF-8
// character), the stop strings matched on that text (text that may be the
// start of a stop string is held back until it is known not to be), and the
// usage. Used alike for streaming (each delta is a chunk) and non-streaming
// (the totals are the response).
//
// Borrows `model`'s tokenizer. Not thread-safe: one per request.
class OutputAccumulator {
 public:
  // For choice `index` of `request` (< request.num_choices()).
  OutputAccumulator(const ApiRequest& request, int64_t index, const ApiModel& model);

  // Adds the next response of the request. Returns what it adds to the
  // output; the last delta carries the finish reason. A response that
  // finished with kAbort or kError returns its status (Cancelled,
  // DeadlineExceeded, Internal...; Internal if it has none). Must not be
  // called once finished().
  absl::StatusOr<OutputDelta> Add(const GenerationResponse& response);

  // True once the output is complete: the executor finished the request, or
  // a stop string matched. In the second case the executor's request is still
  // running (executor_finished() is false) and the caller cancels it; its
  // further tokens are not part of the output.
  bool finished() const { return !finish_reason_.empty(); }
  bool executor_finished() const { return executor_finished_; }

  const std::vector<int32_t>& token_ids() const { return token_ids_; }
  // One per token id when the request asked for log probabilities.
  const std::vector<OutputLogprob>& logprobs() const { return logprobs_; }
  bool wants_logprobs() const { return wants_logprobs_; }
  // The text returned so far (the concatenation of every delta's text).
  const std::string& text() const { return text_; }
  const std::string& finish_reason() const { return finish_reason_; }
  int64_t index() const { return index_; }
  int64_t prompt_tokens() const { return prompt_tokens_; }
  // Whether this is the first choice of its prompt, which the usage counts
  // the prompt (and its cached tokens) for.
  bool first_of_prompt() const { return first_of_prompt_; }
  int64_t completion_tokens() const { return static_cast<int64_t>(token_ids_.size()); }
  // Prompt tokens the prefix cache held (usage.prompt_tokens_details).
  int64_t cached_prompt_tokens() const { return cached_prompt_tokens_; }
  // tool_choice "auto": the text from the first kToolCallOpen on, which is
  // not returned as text (the response turns it into tool calls).
  const std::string& tool_text() const { return tool_text_; }

 private:
  // Appends newly decoded text and moves what can no longer be part of a
  // stop string into `delta`. Returns true when a stop string matched.
  bool AppendText(absl::string_view piece, bool final, OutputDelta* delta);
  // The API's view of token `id`'s log probabilities (nullptr: none, the
  // first token of an echoed prompt); advances text_offset_.
  OutputLogprob MakeLogprob(int32_t id, const SampledLogprobs* logprobs);
  // The echoed prompt: its text, and its tokens' log probabilities.
  void Echo(const GenerationResponse& response, OutputDelta* delta);
  std::string TokenText(int32_t id) const;

  const Tokenizer* tokenizer_;
  const int64_t index_;
  const bool first_of_prompt_;
  std::vector<std::string> stop_strings_;
  std::unique_ptr<StreamDecoder> decoder_;  // nullptr without a tokenizer
  int64_t prompt_tokens_ = 0;
  int64_t cached_prompt_tokens_ = 0;

  std::vector<int32_t> token_ids_;
  const bool wants_logprobs_;
  std::vector<int32_t> echo_ids_;  // the prompt, until echoed (empty without echo)
  std::vector<OutputLogprob> logprobs_;
  int64_t text_offset_ = 0;  // characters of the tokens' texts so far
  // Decoded text: text_ has been returned, held_ is held back because it may
  // be the start of a stop string.
  std::string text_;
  std::string held_;
  // tool_choice "auto": kToolCallOpen (else empty), and the text from it on.
  std::string tool_marker_;
  std::string tool_text_;
  std::string finish_reason_;
  bool executor_finished_ = false;
};

// ---------------------------------------------------------------- responses

// What every object of one response shares.
struct ResponseMeta {
  ApiEndpoint endpoint = ApiEndpoint::kCompletions;
  std::string id;       // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;    // the served model's name
  bool include_usage = false;
  // Chat tool calls: a choice whose calls are whole is returned with
  // message.tool_calls (finish_reason "tool_calls"), else as its raw text.
  ToolCallForm tool_calls = ToolCallForm::kNone;
  std::string tool_name;                // kNamed: the function
  std::vector<std::string> tool_names;  // kAuto: the functions a call may name
};

// The non-streaming response: a "text_completion" object (choices[i].text)
// or a "chat.completion" (choices[i].message), with token_ids and usage
// (prompt tokens once per prompt, completion tokens of every choice). Every
// choice must be finished().
std::string FormatResponse(const ResponseMeta& meta,
                           absl::Span<const OutputAccumulator* const> choices);

// Server-sent events of a streaming response, each "data: <json>\n\n":
//   chat only: FormatStreamStart for each choice (delta.role = "assistant");
//   one FormatStreamDelta per delta ("text_completion" with text, or
//   "chat.completion.chunk" with delta.content; token_ids in both; the
//   delta's choice index), each choice's last with finish_reason;
//   FormatStreamEnd: the usage chunk (empty choices) when include_usage,
//   then "data: [DONE]\n\n".
// With include_usage every chunk before the usage chunk has "usage": null.
std::string FormatStreamStart(const ResponseMeta& meta, int64_t index);
// `output` is the delta's choice (with tool calls, the last delta carries
// them, built from its whole text; the deltas before carry no content).
std::string FormatStreamDelta(const ResponseMeta& meta, const OutputDelta& delta,
                              const OutputAccumulator& output);
std::string FormatStreamEnd(const ResponseMeta& meta,
                            absl::Span<const OutputAccumulator* const> choices);
// An error after the stream began: "data: {"error": ...}\n\n" then "data: [DONE]\n\n".
std::string FormatStreamError(const ApiError& error);

// GET /v1/models: a "list" with the one served model (id, owned_by "herd",
// max_model_len).
std::string FormatModelList(const ApiModel& model, int64_t created);

}  // namespace herd
