// The OpenAI wire format: every request field with good values, wrong types,
// out-of-range values and unsupported options; prompts as ids and as text;
// chat rendering; error objects; incremental text with UTF-8 hold-back and
// stop strings; response objects and server-sent-event framing.
//
// Text tests use tests/data/tokenizers/ggml-vocab-llama-spm.gguf (LLaMA's
// SentencePiece vocabulary: BOS 1, EOS 2, <0xXX> byte tokens).
#include "coordinator/api/openai_protocol.h"

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coordinator/api/json_prefix.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

constexpr int64_t kIdVocab = 512;
constexpr int64_t kContext = 64;
constexpr int64_t kTextVocab = 32000;
constexpr char kMistralTemplate[] =
    R"({{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %})";

// A model without a tokenizer: token ids only.
ApiModel IdModel() { return MakeApiModel("tiny", kIdVocab, kContext, nullptr, ""); }

class TextModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer =
        Tokenizer::Load(herd::testing::TestDataPath("tokenizers/ggml-vocab-llama-spm.gguf"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  static ApiModel TextModel(absl::string_view chat_template = kMistralTemplate) {
    return MakeApiModel("llama", kTextVocab, kContext, tokenizer_, chat_template);
  }
  static std::vector<int32_t> Encode(absl::string_view text, bool add_bos = false) {
    EncodeOptions options;
    options.add_bos = add_bos;
    options.parse_special = true;
    auto ids = tokenizer_->Encode(text, options);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }
  static int32_t Id(absl::string_view token) { return *tokenizer_->TokenId(token); }

  static const Tokenizer* tokenizer_;
};
const Tokenizer* TextModelTest::tokenizer_ = nullptr;

// Checks that `result` failed with `code`, naming `param`, with `message` in
// its message; and that it maps to `http_status`.
template <typename T>
void ExpectError(const absl::StatusOr<T>& result, absl::StatusCode code, const std::string& param,
                 const std::string& message, int http_status = 400) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_EQ(ParamOf(result.status()), param) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(message));
  EXPECT_EQ(ApiErrorFromStatus(result.status()).http_status, http_status);
}

void ExpectInvalid(const std::string& body, const ApiModel& model, const std::string& param,
                   const std::string& message) {
  SCOPED_TRACE(body);
  ExpectError(ParseCompletionRequest(body, model), absl::StatusCode::kInvalidArgument, param,
              message);
}

// ---------------------------------------------------------------- completions

TEST(CompletionRequestTest, IdPromptTakesOpenAiDefaults) {
  auto request = ParseCompletionRequest(R"({"prompt": [1, 2, 3]})", IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->endpoint, ApiEndpoint::kCompletions);
  EXPECT_THAT(request->generation.prompt_ids, ElementsAre(1, 2, 3));
  EXPECT_EQ(request->generation.max_tokens, 16);
  EXPECT_FLOAT_EQ(request->generation.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(request->generation.sampling.top_p, 1.0f);
  EXPECT_FALSE(request->has_seed);
  EXPECT_FALSE(request->stream);
  EXPECT_FALSE(request->include_usage);
  EXPECT_THAT(request->generation.stop_ids, IsEmpty());
  EXPECT_THAT(request->stop_strings, IsEmpty());
  EXPECT_EQ(request->generation.deadline, absl::InfiniteFuture());
}

TEST(CompletionRequestTest, ReadsEveryField) {
  auto request = ParseCompletionRequest(R"({
      "model": "tiny", "prompt": [5, 6], "max_tokens": 7, "temperature": 0,
      "top_p": 0.5, "seed": 42, "stop": [9, 10], "stop_token_ids": [10, 11],
      "stream": true, "stream_options": {"include_usage": true},
      "n": 1, "best_of": 1, "echo": false, "logprobs": null, "suffix": null,
      "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
      "user": "someone", "unknown_field": {"nested": [1, 2]}})",
                                        IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_THAT(request->generation.prompt_ids, ElementsAre(5, 6));
  EXPECT_EQ(request->generation.max_tokens, 7);
  EXPECT_FLOAT_EQ(request->generation.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(request->generation.sampling.top_p, 0.5f);
  EXPECT_TRUE(request->has_seed);
  EXPECT_EQ(request->generation.sampling.seed, 42u);
  EXPECT_THAT(request->generation.stop_ids, ElementsAre(9, 10, 11));
  EXPECT_TRUE(request->stream);
  EXPECT_TRUE(request->include_usage);
}

TEST(CompletionRequestTest, NullMeansDefault) {
  auto request = ParseCompletionRequest(
      R"({"prompt": [1], "model": null, "max_tokens": null, "temperature": null,
          "top_p": null, "seed": null, "stop": null, "stream": null,
          "stream_options": null, "n": null, "echo": null, "ignore_eos": null})",
      IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->generation.max_tokens, 16);
  EXPECT_FLOAT_EQ(request->generation.sampling.temperature, 1.0f);
  EXPECT_FALSE(request->has_seed);
  EXPECT_FALSE(request->stream);
}

TEST(CompletionRequestTest, AcceptsBoundaryValues) {
  const char* bodies[] = {
      R"({"prompt": [0, 511], "temperature": 2, "top_p": 1, "max_tokens": 1})",
      R"({"prompt": [1], "temperature": 0.0, "top_p": 1e-6})",
      R"({"prompt": [1], "seed": -1})",
      R"({"prompt": [1], "seed": 18446744073709551615})",
      R"({"prompt": [[1, 2]]})",
      R"({"prompt": [1], "stop": [], "stop_token_ids": []})",
  };
  for (const char* body : bodies) {
    auto request = ParseCompletionRequest(body, IdModel());
    EXPECT_TRUE(request.ok()) << body << ": " << request.status();
  }
  auto negative_seed = ParseCompletionRequest(R"({"prompt": [1], "seed": -1})", IdModel());
  EXPECT_EQ(negative_seed->generation.sampling.seed, ~uint64_t{0});
  auto nested = ParseCompletionRequest(R"({"prompt": [[1, 2]]})", IdModel());
  EXPECT_THAT(nested->generation.prompt_ids, ElementsAre(1, 2));
}

TEST(CompletionRequestTest, RejectsMalformedBodies) {
  const std::pair<std::string, std::string> cases[] = {
      {"", "not valid JSON"},
      {"{", "not valid JSON"},
      {R"({"prompt": [1],})", "not valid JSON"},
      {"{\"prompt\": \"\xFF\"}", "not valid JSON"},
      {"[1, 2]", "must be a JSON object, got array"},
      {"null", "must be a JSON object, got null"},
      {"\"text\"", "must be a JSON object, got string"},
  };
  for (const auto& [body, message] : cases) ExpectInvalid(body, IdModel(), "", message);
}

TEST(CompletionRequestTest, RejectsBadPrompts) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({})", "'prompt' is required"},
      {R"({"prompt": null})", "'prompt' is required"},
      {R"({"prompt": []})", "'prompt' is empty"},
      {R"({"prompt": [[]]})", "'prompt[0]' is empty"},
      {R"({"prompt": [[1], []]})", "'prompt[1]' is empty"},
      {R"({"prompt": 5})", "must be a string or a list of token ids, got 5"},
      {R"({"prompt": {"ids": [1]}})", "must be a string or a list of token ids"},
      {R"({"prompt": [1, "a"]})", "prompt[1] must be an integer token id, got \"a\""},
      {R"({"prompt": [1, 2.5]})", "prompt[1] must be an integer token id, got 2.5"},
      {R"({"prompt": [true]})", "prompt[0] must be an integer token id, got true"},
      {R"({"prompt": [-1]})", "prompt[0] = -1 is outside the vocabulary [0, 512)"},
      {R"({"prompt": [1, 512]})", "prompt[1] = 512 is outside the vocabulary [0, 512)"},
      {R"({"prompt": [18446744073709551615]})", "prompt[0] = 18446744073709551615 is outside"},
      {R"({"prompt": [[1], [1, 512]]})", "prompt[1][1] = 512 is outside the vocabulary"},
      {R"({"prompt": [[1], 2]})", "'prompt[1]' must be a string or a list of token ids, got 2"},
      {R"({"prompt": [[1, "x"]]})", "prompt[0][1] must be an integer token id"},
      {R"({"prompt": "hello"})", "'prompt' is text but model `tiny` has no tokenizer"},
      {R"({"prompt": ["hello"]})", "has no tokenizer"},
  };
  for (const auto& [body, message] : cases) ExpectInvalid(body, IdModel(), "prompt", message);
}

TEST(CompletionRequestTest, RejectsWrongTypes) {
  struct Case {
    std::string fields;  // added to a valid request
    std::string param;
    std::string message;
  };
  const Case cases[] = {
      {R"("max_tokens": "5")", "max_tokens", "'max_tokens' must be an integer, got \"5\""},
      {R"("max_tokens": 5.5)", "max_tokens", "'max_tokens' must be an integer, got 5.5"},
      {R"("max_tokens": true)", "max_tokens", "must be an integer, got true"},
      {R"("max_tokens": 1e30)", "max_tokens", "must be an integer"},
      {R"("temperature": "hot")", "temperature", "'temperature' must be a number, got \"hot\""},
      {R"("temperature": false)", "temperature", "must be a number, got false"},
      {R"("top_p": [1])", "top_p", "'top_p' must be a number, got [1]"},
      {R"("seed": 1.5)", "seed", "'seed' must be an integer, got 1.5"},
      {R"("seed": "7")", "seed", "'seed' must be an integer"},
      {R"("stream": "yes")", "stream", "'stream' must be true or false, got \"yes\""},
      {R"("stream": 1)", "stream", "'stream' must be true or false, got 1"},
      {R"("stream": true, "stream_options": 5)", "stream_options",
       "'stream_options' must be an object, got 5"},
      {R"("stream": true, "stream_options": {"include_usage": "yes"})",
       "stream_options.include_usage", "'stream_options.include_usage' must be true or false"},
      {R"("stop": 5)", "stop", "'stop' must be a string or a list, got 5"},
      {R"("stop": {"a": 1})", "stop", "'stop' must be a string or a list"},
      {R"("stop": [1.5])", "stop", "stop[0] must be a string or a token id, got 1.5"},
      {R"("stop": [1, null])", "stop", "stop[1] must be a string or a token id, got null"},
      {R"("stop_token_ids": 5)", "stop_token_ids", "'stop_token_ids' must be a list"},
      {R"("stop_token_ids": ["a"])", "stop_token_ids", "stop_token_ids[0] must be an integer"},
      {R"("ignore_eos": "no")", "ignore_eos", "'ignore_eos' must be true or false"},
      {R"("model": 5)", "model", "'model' must be a string, got 5"},
  };
  for (const Case& c : cases) {
    ExpectInvalid(absl::StrCat(R"({"prompt": [1], )", c.fields, "}"), IdModel(), c.param,
                  c.message);
  }
}

TEST(CompletionRequestTest, RejectsValuesOutOfRange) {
  struct Case {
    std::string fields;
    std::string param;
    std::string message;
  };
  const Case cases[] = {
      {R"("max_tokens": 0)", "max_tokens", "'max_tokens' = 0 must be >= 1"},
      {R"("max_tokens": -3)", "max_tokens", "'max_tokens' = -3 must be >= 1"},
      {R"("temperature": -0.5)", "temperature", "'temperature' = -0.5 is outside [0, 2]"},
      {R"("temperature": 2.01)", "temperature", "is outside [0, 2]"},
      {R"("top_p": 0)", "top_p", "'top_p' = 0 is outside (0, 1]"},
      {R"("top_p": 1.5)", "top_p", "'top_p' = 1.5 is outside (0, 1]"},
      {R"("top_p": -1)", "top_p", "is outside (0, 1]"},
      {R"("stop": [512])", "stop", "stop[0] = 512 is outside the vocabulary [0, 512)"},
      {R"("stop": [-2])", "stop", "stop[0] = -2 is outside the vocabulary"},
      {R"("stop_token_ids": [3, 600])", "stop_token_ids", "stop_token_ids[1] = 600 is outside"},
      {R"("stop": "x")", "stop", "'stop' is a stop string but model `tiny` has no tokenizer"},
      {R"("stop": [1, "x"])", "stop", "stop[1] is a stop string but model `tiny` has no"},
      {R"("stream_options": {"include_usage": true})", "stream_options",
       "'stream_options' is only allowed when 'stream' is true"},
      {R"("stream": false, "stream_options": {})", "stream_options", "only allowed when"},
  };
  for (const Case& c : cases) {
    ExpectInvalid(absl::StrCat(R"({"prompt": [1], )", c.fields, "}"), IdModel(), c.param,
                  c.message);
  }
}

TEST(CompletionRequestTest, RejectsUnsupportedOptionsButAcceptsTheirDefaults) {
  const std::pair<std::string, std::string> rejected[] = {
      {R"("best_of": 3)", "best_of"},
      {R"("n": 2, "best_of": 3)", "best_of"},
      {R"("suffix": "end")", "suffix"},
      {R"("top_logprobs": 2)", "top_logprobs"},
  };
  for (const auto& [fields, param] : rejected) {
    ExpectInvalid(absl::StrCat(R"({"prompt": [1], )", fields, "}"), IdModel(), param,
                  "is not supported");
  }
  const char* accepted[] = {R"("n": 1)",           R"("n": 2, "best_of": 2)",
                            R"("best_of": 1)",     R"("echo": false)",
                            R"("suffix": "")",     R"("presence_penalty": 0.0)",
                            R"("logit_bias": {})", R"("top_logprobs": 0)"};
  for (const char* fields : accepted) {
    auto request =
        ParseCompletionRequest(absl::StrCat(R"({"prompt": [1], )", fields, "}"), IdModel());
    EXPECT_TRUE(request.ok()) << fields << ": " << request.status();
  }
}

// max_tokens 0 only scores the prompt: with echo and logprobs.
TEST(CompletionRequestTest, MaxTokensZeroScoresThePrompt) {
  auto scored = ParseCompletionRequest(
      R"({"prompt": [1, 2, 3], "max_tokens": 0, "echo": true, "logprobs": 1})", IdModel());
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_EQ(scored->generation.max_tokens, 0);
  EXPECT_TRUE(scored->generation.prompt_logprobs);
  ExpectInvalid(R"({"prompt": [1], "max_tokens": 0})", IdModel(), "max_tokens", "must be >= 1");
  ExpectInvalid(R"({"prompt": [1], "max_tokens": 0, "echo": true})", IdModel(), "max_tokens",
                "must be >= 1");
  ExpectInvalid(R"({"prompt": [1], "max_tokens": -1, "echo": true, "logprobs": 0})", IdModel(),
                "max_tokens", "must be >= 0");
}

// A batch of prompts and n choices each: choice i answers prompt i / n, with
// seed + i % n; at most kMaxChoices in all.
TEST(CompletionRequestTest, BatchesOfPromptsAndSeveralChoices) {
  auto request = ParseCompletionRequest(
      R"({"prompt": [[1, 2], [3], [4, 5, 6]], "n": 2, "seed": 10})", IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->num_prompts(), 3);
  EXPECT_EQ(request->num_choices(), 6);
  const std::vector<std::vector<int32_t>> prompts = {{1, 2}, {3}, {4, 5, 6}};
  for (int64_t i = 0; i < 6; ++i) {
    const GenerationRequest choice = request->ChoiceRequest(i);
    EXPECT_EQ(choice.prompt_ids, prompts[i / 2]) << i;
    EXPECT_EQ(choice.sampling.seed, 10u + i % 2) << i;
    EXPECT_EQ(choice.max_tokens, 16) << i;
  }
  auto single = ParseCompletionRequest(R"({"prompt": [7], "n": 3})", IdModel());
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ(single->num_choices(), 3);
  EXPECT_EQ(single->ChoiceRequest(2).prompt_ids, std::vector<int32_t>{7});

  ExpectInvalid(R"({"prompt": [1], "n": 0})", IdModel(), "n", "must be >= 1");
  ExpectInvalid(R"({"prompt": [1], "n": "2"})", IdModel(), "n", "must be an integer");
  ExpectInvalid(R"({"prompt": [1], "n": 129})", IdModel(), "n", "at most 128 per request");
  ExpectInvalid(R"({"prompt": [[1], [2]], "n": 65})", IdModel(), "n",
                "asks for 130 choices (n = 65 for each of 2 prompt(s))");
  std::string many = R"({"prompt": [)";
  for (int i = 0; i < 129; ++i) absl::StrAppend(&many, i > 0 ? ", " : "", "[1]");
  ExpectInvalid(many + "]}", IdModel(), "prompt", "holds 129 prompts; at most 128");
  // Every prompt must fit the context (64) with max_tokens.
  const std::string long_prompt =
      absl::StrCat("[", absl::StrJoin(std::vector<int>(60, 1), ","), "]");
  ExpectInvalid(absl::StrCat(R"({"prompt": [[1], )", long_prompt, R"(], "max_tokens": 8})"),
                IdModel(), "max_tokens", "maximum context length");
}

// Completions' logprobs: N is the number of top tokens beside the sampled one.
TEST(CompletionRequestTest, LogprobsAskForTheTopTokens) {
  for (const auto& [field, want] :
       std::vector<std::pair<std::string, int32_t>>{{"", -1},
                                                    {R"(, "logprobs": null)", -1},
                                                    {R"(, "logprobs": 0)", 0},
                                                    {R"(, "logprobs": 5)", 5},
                                                    {R"(, "logprobs": 20)", 20}}) {
    auto request = ParseCompletionRequest(absl::StrCat(R"({"prompt": [1])", field, "}"), IdModel());
    ASSERT_TRUE(request.ok()) << field << ": " << request.status();
    EXPECT_EQ(request->generation.sampling.top_logprobs, want) << field;
  }
  ExpectInvalid(R"({"prompt": [1], "logprobs": 21})", IdModel(), "logprobs",
                "more than the 20 log probabilities");
  ExpectInvalid(R"({"prompt": [1], "logprobs": -1})", IdModel(), "logprobs", "must be >= 0");
  ExpectInvalid(R"({"prompt": [1], "logprobs": true})", IdModel(), "logprobs",
                "must be an integer");
}

// OpenAI's presence and frequency penalties ([-2, 2]), vLLM's repetition
// penalty (> 0).
TEST(CompletionRequestTest, Penalties) {
  auto request = ParseCompletionRequest(
      R"({"prompt": [1], "presence_penalty": 0.5, "frequency_penalty": -1,
          "repetition_penalty": 1.1})",
      IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_FLOAT_EQ(request->generation.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(request->generation.sampling.frequency_penalty, -1.0f);
  EXPECT_FLOAT_EQ(request->generation.sampling.repetition_penalty, 1.1f);
  ExpectInvalid(R"({"prompt": [1], "presence_penalty": 2.5})", IdModel(), "presence_penalty",
                "outside [-2, 2]");
  ExpectInvalid(R"({"prompt": [1], "frequency_penalty": -3})", IdModel(), "frequency_penalty",
                "outside [-2, 2]");
  ExpectInvalid(R"({"prompt": [1], "repetition_penalty": 0})", IdModel(), "repetition_penalty",
                "must be > 0");
}

// logit_bias: token id strings to biases in [-100, 100].
TEST(CompletionRequestTest, LogitBias) {
  auto request =
      ParseCompletionRequest(R"({"prompt": [1], "logit_bias": {"5": 100, "7": -2.5}})", IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  const auto& bias = request->generation.sampling.logit_bias;
  ASSERT_EQ(bias.size(), 2u);
  EXPECT_EQ(bias[0].token_id, 5);
  EXPECT_EQ(bias[0].bias, 100.0f);
  EXPECT_EQ(bias[1].token_id, 7);
  EXPECT_EQ(bias[1].bias, -2.5f);
  ExpectInvalid(R"({"prompt": [1], "logit_bias": {"x": 1}})", IdModel(), "logit_bias",
                "is not a token id");
  ExpectInvalid(R"({"prompt": [1], "logit_bias": {"99999999": 1}})", IdModel(), "logit_bias",
                "is not a token id");
  ExpectInvalid(R"({"prompt": [1], "logit_bias": {"5": 101}})", IdModel(), "logit_bias",
                "not a number in [-100, 100]");
  ExpectInvalid(R"({"prompt": [1], "logit_bias": [5]})", IdModel(), "logit_bias",
                "must be an object");
}

// vLLM's top_k (-1 or 0: off) and min_p.
TEST(CompletionRequestTest, TopKAndMinP) {
  auto request =
      ParseCompletionRequest(R"({"prompt": [1], "top_k": 40, "min_p": 0.05})", IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->generation.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(request->generation.sampling.min_p, 0.05f);
  auto off = ParseCompletionRequest(R"({"prompt": [1], "top_k": -1})", IdModel());
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->generation.sampling.top_k, 0);
  ExpectInvalid(R"({"prompt": [1], "top_k": -2})", IdModel(), "top_k", "must be >= -1");
  ExpectInvalid(R"({"prompt": [1], "top_k": 1.5})", IdModel(), "top_k", "must be an integer");
  ExpectInvalid(R"({"prompt": [1], "min_p": 1.5})", IdModel(), "min_p", "outside [0, 1]");
}

// echo: the prompt comes back; with logprobs, the prompt's too.
TEST(CompletionRequestTest, EchoAsksForThePromptsLogprobsWithLogprobs) {
  auto plain = ParseCompletionRequest(R"({"prompt": [1, 2], "echo": true})", IdModel());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(plain->echo);
  EXPECT_FALSE(plain->generation.prompt_logprobs);
  auto scored =
      ParseCompletionRequest(R"({"prompt": [1, 2], "echo": true, "logprobs": 1})", IdModel());
  ASSERT_TRUE(scored.ok()) << scored.status();
  EXPECT_TRUE(scored->generation.prompt_logprobs);
  ExpectInvalid(R"({"prompt": [1], "echo": "yes"})", IdModel(), "echo", "must be true or false");
}

TEST(CompletionRequestTest, ChecksTheContextLikeVllm) {
  std::vector<int32_t> ids(60, 1);
  Json body;
  body["prompt"] = ids;
  body["max_tokens"] = 4;
  EXPECT_TRUE(ParseCompletionRequest(body.dump(), IdModel()).ok());
  body["max_tokens"] = 5;
  ExpectInvalid(body.dump(), IdModel(), "max_tokens",
                "This model's maximum context length is 64 tokens. However, you requested 65 "
                "tokens (60 in the prompt, 5 in the completion). Please reduce the length of the "
                "prompt or completion.");
  body["max_tokens"] = 9223372036854775807;
  ExpectInvalid(body.dump(), IdModel(), "max_tokens", "maximum context length is 64 tokens");
  // The default max_tokens (16) does not fit either: the prompt is at fault.
  body.erase("max_tokens");
  ExpectInvalid(body.dump(), IdModel(), "prompt", "you requested 76 tokens");
  body["prompt"] = std::vector<int32_t>(64, 1);
  body["max_tokens"] = 1;
  ExpectInvalid(body.dump(), IdModel(), "prompt",
                "This model's maximum context length is 64 tokens. However, your request has 64 "
                "input tokens.");
}

TEST(CompletionRequestTest, RefusesAnotherModel) {
  auto request = ParseCompletionRequest(R"({"model": "gpt-4", "prompt": [1]})", IdModel());
  ExpectError(request, absl::StatusCode::kNotFound, "model",
              "The model `gpt-4` does not exist; this server serves `tiny`.", 404);
  EXPECT_EQ(ApiErrorFromStatus(request.status()).code, "model_not_found");
}

TEST_F(TextModelTest, TextPromptIsEncodedWithTheModelsBos) {
  ASSERT_TRUE(tokenizer_->add_bos());
  auto request = ParseCompletionRequest(R"({"prompt": "Hello world"})", TextModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->generation.prompt_ids, Encode("Hello world", /*add_bos=*/true));
  EXPECT_EQ(request->generation.prompt_ids.front(), tokenizer_->bos_id());
  auto listed = ParseCompletionRequest(R"({"prompt": ["Hello world"]})", TextModel());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->generation.prompt_ids, request->generation.prompt_ids);
  // Control tokens spelled in a raw prompt are recognised, as Hugging Face does.
  auto special = ParseCompletionRequest(R"({"prompt": "a</s>"})", TextModel());
  ASSERT_TRUE(special.ok()) << special.status();
  EXPECT_EQ(special->generation.prompt_ids.back(), tokenizer_->eos_id());
  // Ids still work with a tokenizer.
  auto ids = ParseCompletionRequest(R"({"prompt": [1, 15043]})", TextModel());
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(ids->generation.prompt_ids, ElementsAre(1, 15043));
}

TEST_F(TextModelTest, TextPromptErrors) {
  // An empty text prompt is just BOS.
  auto empty = ParseCompletionRequest(R"({"prompt": ""})", TextModel());
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_THAT(empty->generation.prompt_ids, ElementsAre(tokenizer_->bos_id()));
  std::string words;
  for (int i = 0; i < 100; ++i) words += "hello ";
  Json long_prompt;
  long_prompt["prompt"] = words;
  ExpectInvalid(long_prompt.dump(), TextModel(), "prompt", "maximum context length is 64");
  // A model vocabulary smaller than the tokenizer's (ids past it are refused).
  ApiModel small = MakeApiModel("llama", 100, kContext, tokenizer_, "");
  ExpectInvalid(R"({"prompt": "Hello"})", small, "prompt",
                "is outside the model's vocabulary [0, 100)");
}

TEST_F(TextModelTest, StopStringsAndEndOfGeneration) {
  const ApiModel model = TextModel();
  EXPECT_THAT(model.end_of_generation_ids, ::testing::Contains(tokenizer_->eos_id()));
  auto request = ParseCompletionRequest(R"({"prompt": "a", "stop": "\n"})", model);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_THAT(request->stop_strings, ElementsAre("\n"));
  EXPECT_THAT(request->generation.stop_ids, ElementsAre(tokenizer_->eos_id()));

  auto mixed = ParseCompletionRequest(
      R"({"prompt": "a", "stop": ["END", 13, "\u00e9"], "stop_token_ids": [13, 2]})", model);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_THAT(mixed->stop_strings, ElementsAre("END", "\xC3\xA9"));
  EXPECT_THAT(mixed->generation.stop_ids, ElementsAre(13, 2));

  auto ignore = ParseCompletionRequest(R"({"prompt": "a", "ignore_eos": true})", model);
  ASSERT_TRUE(ignore.ok());
  EXPECT_THAT(ignore->generation.stop_ids, IsEmpty());

  ExpectInvalid(R"({"prompt": "a", "stop": ""})", model, "stop", "'stop' is an empty stop string");
  ExpectInvalid(R"({"prompt": "a", "stop": ["x", ""]})", model, "stop",
                "stop[1] is an empty stop string");
}

// ---------------------------------------------------------------- chat

TEST(ChatRequestTest, NeedsATokenizer) {
  ExpectError(
      ParseChatCompletionRequest(R"({"messages": [{"role": "user", "content": "hi"}]})", IdModel()),
      absl::StatusCode::kFailedPrecondition, "",
      "model `tiny` has no tokenizer, so it cannot chat");
}

TEST_F(TextModelTest, ChatNeedsARecognisedTemplate) {
  const std::string body = R"({"messages": [{"role": "user", "content": "hi"}]})";
  ExpectError(ParseChatCompletionRequest(body, TextModel("")),
              absl::StatusCode::kFailedPrecondition, "", "has no chat template");
  ExpectError(ParseChatCompletionRequest(body, TextModel("{{ messages }}")),
              absl::StatusCode::kFailedPrecondition, "", "is not one Herd can render");
}

TEST_F(TextModelTest, ChatRendersTheTemplateAndFillsTheContext) {
  auto request = ParseChatCompletionRequest(
      R"({"model": "llama", "messages": [{"role": "user", "content": "hi"}]})", TextModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->endpoint, ApiEndpoint::kChatCompletions);
  const std::vector<int32_t> expected = Encode("<s>[INST] hi [/INST]");
  EXPECT_EQ(request->generation.prompt_ids, expected);
  EXPECT_EQ(request->generation.prompt_ids.front(), tokenizer_->bos_id());
  EXPECT_EQ(request->generation.max_tokens, kContext - static_cast<int64_t>(expected.size()));
  EXPECT_THAT(request->generation.stop_ids, ElementsAre(tokenizer_->eos_id()));
}

// /tokenize and /detokenize (vLLM's): a prompt as completions encodes it, or
// messages as chat renders them; ids back to text.
TEST_F(TextModelTest, TokenizeAndDetokenize) {
  auto tokenized = Tokenize(R"({"model": "llama", "prompt": "Hello world"})", TextModel());
  ASSERT_TRUE(tokenized.ok()) << tokenized.status();
  const std::vector<int32_t> with_bos = Encode("Hello world", /*add_bos=*/true);
  EXPECT_EQ(Json::parse(*tokenized),
            Json({{"count", with_bos.size()}, {"max_model_len", kContext}, {"tokens", with_bos}}));
  auto plain = Tokenize(R"({"prompt": "Hello world", "add_special_tokens": false})", TextModel());
  ASSERT_TRUE(plain.ok()) << plain.status();
  const std::vector<int32_t> ids = Encode("Hello world");
  EXPECT_EQ(Json::parse(*plain)["tokens"], Json(ids));
  auto chat = Tokenize(R"({"messages": [{"role": "user", "content": "hi"}]})", TextModel());
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(Json::parse(*chat)["tokens"], Json(Encode("<s>[INST] hi [/INST]")));

  auto text = Detokenize(Json({{"tokens", ids}}).dump(), TextModel());
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(Json::parse(*text), Json({{"prompt", "Hello world"}}));
  auto special = Detokenize(Json({{"tokens", with_bos}}).dump(), TextModel());
  ASSERT_TRUE(special.ok()) << special.status();
  EXPECT_THAT(Json::parse(*special)["prompt"].get<std::string>(), StartsWith("<s>"));

  ExpectError(Tokenize(R"({"prompt": "a", "messages": []})", TextModel()),
              absl::StatusCode::kInvalidArgument, "prompt", "not both");
  ExpectError(Tokenize(R"({"prompt": [1, 2]})", TextModel()), absl::StatusCode::kInvalidArgument,
              "prompt", "'prompt' (a string) or 'messages' is required");
  ExpectError(Tokenize(R"({"prompt": "a", "model": "gpt-4"})", TextModel()),
              absl::StatusCode::kNotFound, "model", "does not exist", 404);
  ExpectError(Tokenize(R"({"messages": [{"role": "user", "content": "hi"}]})", TextModel("")),
              absl::StatusCode::kFailedPrecondition, "", "has no chat template");
  ExpectError(Tokenize(R"({"prompt": "a"})", IdModel()), absl::StatusCode::kFailedPrecondition, "",
              "has no tokenizer");
  ExpectError(Detokenize(R"({"tokens": [1, -1]})", TextModel()), absl::StatusCode::kInvalidArgument,
              "tokens", "tokens[1] = -1 is outside");
  ExpectError(Detokenize(R"({"tokens": "1"})", TextModel()), absl::StatusCode::kInvalidArgument,
              "tokens", "'tokens' (a list of token ids) is required");
  ExpectError(Detokenize(R"({"tokens": [1]})", IdModel()), absl::StatusCode::kFailedPrecondition,
              "", "has no tokenizer");
}

// response_format: text, json_object (JSON mode) or json_schema (structured
// outputs), or vLLM's guided_json, with a tokenizer.
TEST_F(TextModelTest, ResponseFormat) {
  for (const char* path : {"completions", "chat"}) {
    SCOPED_TRACE(path);
    const auto parse = [&](const std::string& format, const ApiModel& model) {
      const std::string body =
          std::string(path) == "chat"
              ? absl::StrCat(R"({"messages": [{"role": "user", "content": "hi"}], )", format, "}")
              : absl::StrCat(R"({"prompt": [1], )", format, "}");
      return std::string(path) == "chat" ? ParseChatCompletionRequest(body, model)
                                         : ParseCompletionRequest(body, model);
    };
    auto json = parse(R"("response_format": {"type": "json_object"})", TextModel());
    ASSERT_TRUE(json.ok()) << json.status();
    EXPECT_EQ(json->json_schema, JsonSchema::AnyObject());
    auto text = parse(R"("response_format": {"type": "text"})", TextModel());
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(text->json_schema, nullptr);
    // The properties keep the order written (not nlohmann's sorted one).
    auto schema = parse(R"("response_format": {"type": "json_schema", "json_schema": {
        "name": "pair", "strict": true, "schema": {"type": "object",
        "properties": {"b": {"type": "string"}, "a": {"type": "integer"}},
        "required": ["b", "a"], "additionalProperties": false}}})",
                        TextModel());
    ASSERT_TRUE(schema.ok()) << schema.status();
    ASSERT_NE(schema->json_schema, nullptr);
    const JsonSchema::Node& root = schema->json_schema->node(schema->json_schema->root());
    ASSERT_EQ(root.properties.size(), 2);
    EXPECT_EQ(root.properties[0].escaped_name, "b");
    EXPECT_EQ(root.properties[1].escaped_name, "a");
    for (const char* guided : {R"("guided_json": {"type": "array", "items": {"enum": [1, 2]}})",
                               R"("guided_json": "{\"type\": \"array\"}")"}) {
      auto vllm = parse(guided, TextModel());
      ASSERT_TRUE(vllm.ok()) << guided << ": " << vllm.status();
      ASSERT_NE(vllm->json_schema, nullptr) << guided;
      EXPECT_EQ(vllm->json_schema->node(vllm->json_schema->root()).types, JsonSchema::kArray);
    }
    ExpectError(parse(R"("response_format": "json")", TextModel()),
                absl::StatusCode::kInvalidArgument, "response_format", "string 'type'");
    ExpectError(parse(R"("response_format": {"type": "yaml"})", TextModel()),
                absl::StatusCode::kInvalidArgument, "response_format", "is not supported");
    ExpectError(parse(R"("response_format": {"type": "json_schema"})", TextModel()),
                absl::StatusCode::kInvalidArgument, "response_format", "needs a 'json_schema'");
    ExpectError(
        parse(R"("response_format": {"type": "json_schema", "json_schema": {}})", TextModel()),
        absl::StatusCode::kInvalidArgument, "response_format", "must be a JSON schema");
    ExpectError(parse(R"("response_format": {"type": "json_schema", "json_schema": {"name": 1,
                      "schema": {}}})",
                      TextModel()),
                absl::StatusCode::kInvalidArgument, "response_format", "name' must be a string");
    ExpectError(parse(R"("response_format": {"type": "json_schema", "json_schema": {"schema":
                      {"properties": {"id": {"type": "string", "format": "uri"}}}}})",
                      TextModel()),
                absl::StatusCode::kInvalidArgument, "response_format",
                "at '#/properties/id': 'format' \"uri\" is not supported");
    ExpectError(parse(R"("guided_json": {"type": "number"})", TextModel()),
                absl::StatusCode::kInvalidArgument, "guided_json", "may not be a number");
    ExpectError(parse(R"("guided_json": "{oops")", TextModel()), absl::StatusCode::kInvalidArgument,
                "guided_json", "not JSON");
    ExpectError(parse(R"("guided_json": 7)", TextModel()), absl::StatusCode::kInvalidArgument,
                "guided_json", "must be a JSON schema");
    ExpectError(
        parse(R"("guided_json": {}, "response_format": {"type": "json_object"})", TextModel()),
        absl::StatusCode::kInvalidArgument, "guided_json", "not both");
    // vLLM's guided_whitespace_pattern, with any guided JSON.
    auto tight = parse(R"("response_format": {"type": "json_object"},
                          "guided_whitespace_pattern": "")",
                       TextModel());
    ASSERT_TRUE(tight.ok()) << tight.status();
    ASSERT_NE(tight->json_schema->whitespace(), nullptr);
    ExpectError(parse(R"("guided_whitespace_pattern": " ")", TextModel()),
                absl::StatusCode::kInvalidArgument, "guided_whitespace_pattern",
                "applies to guided JSON only");
    ExpectError(parse(R"("guided_json": {}, "guided_whitespace_pattern": "x")", TextModel()),
                absl::StatusCode::kInvalidArgument, "guided_whitespace_pattern",
                "more than JSON whitespace");
    ExpectError(parse(R"("guided_json": {}, "guided_whitespace_pattern": 1)", TextModel()),
                absl::StatusCode::kInvalidArgument, "guided_whitespace_pattern",
                "must be a string");
    // vLLM's guided_regex and guided_choice: a text pattern, matched whole.
    auto regex = parse(R"("guided_regex": "[a-z]+\\d")", TextModel());
    ASSERT_TRUE(regex.ok()) << regex.status();
    EXPECT_EQ(regex->text_regex_key, "[a-z]+\\d");
    ASSERT_NE(regex->text_regex, nullptr);
    EXPECT_EQ(regex->json_schema, nullptr);
    auto choice = parse(R"j("guided_choice": ["yes", "no (maybe)"])j", TextModel());
    ASSERT_TRUE(choice.ok()) << choice.status();
    EXPECT_EQ(choice->text_regex_key, "(?:yes|no \\(maybe\\))");
    ExpectError(parse(R"("guided_regex": "(a")", TextModel()), absl::StatusCode::kInvalidArgument,
                "guided_regex", "without ')'");
    ExpectError(parse(R"("guided_regex": 5)", TextModel()), absl::StatusCode::kInvalidArgument,
                "guided_regex", "must be a string");
    ExpectError(parse(R"("guided_choice": [])", TextModel()), absl::StatusCode::kInvalidArgument,
                "guided_choice", "a list of 1 to 256");
    ExpectError(parse(R"("guided_choice": ["a", 1])", TextModel()),
                absl::StatusCode::kInvalidArgument, "guided_choice", "list of strings");
    ExpectError(parse(R"("guided_choice": ["a"], "guided_regex": "a")", TextModel()),
                absl::StatusCode::kInvalidArgument, "guided_regex", "not both");
    ExpectError(
        parse(R"("guided_choice": ["a"], "response_format": {"type": "json_object"})", TextModel()),
        absl::StatusCode::kInvalidArgument, "guided_choice", "or guided JSON");
  }
  ExpectError(ParseCompletionRequest(
                  R"({"prompt": [1], "response_format": {"type": "json_object"}})", IdModel()),
              absl::StatusCode::kInvalidArgument, "response_format", "needs a tokenizer");
  ExpectError(ParseCompletionRequest(R"({"prompt": [1], "guided_choice": ["a"]})", IdModel()),
              absl::StatusCode::kInvalidArgument, "guided_choice", "needs a tokenizer");
}

TEST_F(TextModelTest, ChatMessageForms) {
  // Text parts joined by newlines, an assistant turn without content; then
  // developer as system (ChatML).
  auto request = ParseChatCompletionRequest(
      R"({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}], "name": "me"},
            {"role": "assistant", "content": null},
            {"role": "user", "content": "c"}]})",
      TextModel());
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->generation.prompt_ids, Encode("<s>[INST] a\nb [/INST]</s>[INST] c [/INST]"));
  auto developer = ParseChatCompletionRequest(
      R"({"messages": [{"role": "developer", "content": "Be brief."},
                       {"role": "user", "content": "hi"}]})",
      TextModel(
          "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{% endfor %}"));
  ASSERT_TRUE(developer.ok()) << developer.status();
  EXPECT_EQ(developer->generation.prompt_ids,
            Encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                   "<|im_start|>assistant\n"));
}

TEST_F(TextModelTest, ChatRejectsBadMessages) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({})", "'messages' is required"},
      {R"({"messages": []})", "'messages' must be a non-empty list, got []"},
      {R"({"messages": "hi"})", "'messages' must be a non-empty list"},
      {R"({"messages": [5]})", "messages[0] must be an object, got 5"},
      {R"({"messages": [{"content": "x"}]})", "messages[0].role must be a string"},
      {R"({"messages": [{"role": 1, "content": "x"}]})", "messages[0].role must be a string"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content is required"},
      {R"({"messages": [{"role": "user", "content": 5}]})",
       "messages[0].content must be a string or a list of text parts, got 5"},
      {R"({"messages": [{"role": "user", "content": [5]}]})",
       "messages[0].content[0] must be an object"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
       "messages[0].content[0] has type \"image_url\"; only \"text\" parts are supported"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})",
       "messages[0].content[0].text must be a string"},
      {R"({"messages": [{"role": "robot", "content": "x"}]})", "has role 'robot'"},
      {R"({"messages": [{"role": "user", "content": "x"},
                        {"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]})",
       "tool_calls[0] must be"},
      {R"({"messages": [{"role": "assistant", "content": "x"}]})", "user first"},
  };
  for (const auto& [body, message] : cases) {
    SCOPED_TRACE(body);
    ExpectError(ParseChatCompletionRequest(body, TextModel()), absl::StatusCode::kInvalidArgument,
                "messages", message);
  }
}

TEST_F(TextModelTest, ChatMaxTokensFieldsAndUnsupportedOptions) {
  const std::string messages = R"("messages": [{"role": "user", "content": "hi"}])";
  auto both = ParseChatCompletionRequest(
      absl::StrCat("{", messages, R"(, "max_completion_tokens": 3, "max_tokens": 9})"),
      TextModel());
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->generation.max_tokens, 3);
  auto legacy =
      ParseChatCompletionRequest(absl::StrCat("{", messages, R"(, "max_tokens": 9})"), TextModel());
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  EXPECT_EQ(legacy->generation.max_tokens, 9);
  ExpectError(ParseChatCompletionRequest(
                  absl::StrCat("{", messages, R"(, "max_completion_tokens": 1000})"), TextModel()),
              absl::StatusCode::kInvalidArgument, "max_completion_tokens",
              "in the messages, 1000 in the completion");
  ExpectError(ParseChatCompletionRequest(
                  absl::StrCat("{", messages, R"(, "max_completion_tokens": 0})"), TextModel()),
              absl::StatusCode::kInvalidArgument, "max_completion_tokens", "must be >= 1");

  const std::pair<std::string, std::string> rejected[] = {
      {R"("functions": [{"name": "f"}])", "functions"},
      {R"("function_call": "auto")", "function_call"},
  };
  for (const auto& [fields, param] : rejected) {
    SCOPED_TRACE(fields);
    ExpectError(
        ParseChatCompletionRequest(absl::StrCat("{", messages, ", ", fields, "}"), TextModel()),
        absl::StatusCode::kInvalidArgument, param, "is not supported");
  }
  auto neutral = ParseChatCompletionRequest(
      absl::StrCat("{", messages,
                   R"(, "logprobs": false, "tools": [], "tool_choice": "none",
                      "response_format": {"type": "text"}, "stream": true,
                      "stream_options": {"include_usage": false}, "temperature": 0.7,
                      "stop": ["\n\n"], "seed": 3})"),
      TextModel());
  ASSERT_TRUE(neutral.ok()) << neutral.status();
  EXPECT_EQ(neutral->json_schema, nullptr);
  EXPECT_TRUE(neutral->stream);
  EXPECT_FALSE(neutral->include_usage);
  EXPECT_THAT(neutral->stop_strings, ElementsAre("\n\n"));
  EXPECT_EQ(neutral->generation.sampling.seed, 3u);
  EXPECT_EQ(neutral->generation.sampling.top_logprobs, -1);
}

// Tools: tool_choice "required" or a named function constrains the output
// to the call(s) (their parameters' $refs moved with them); the tools and
// earlier calls and results are in the prompt; what cannot be honoured is a
// 400 naming the field.
TEST_F(TextModelTest, ToolCalls) {
  const std::string base = R"("messages": [{"role": "user", "content": "Weather?"}],
      "tools": [{"type": "function", "function": {"name": "get_weather",
                 "description": "The weather in a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                "unit": {"enum": ["C", "F"]}}, "required": ["city", "unit"],
                                "additionalProperties": false}}},
                {"type": "function", "function": {"name": "pick", "parameters": {
                 "$defs": {"Color": {"enum": ["red", "blue"]}}, "type": "object",
                 "properties": {"color": {"$ref": "#/$defs/Color"}}, "required": ["color"],
                 "additionalProperties": false}}}])";
  // Room for the tools in the prompt.
  const ApiModel model = MakeApiModel("llama", kTextVocab, 4096, tokenizer_, kMistralTemplate);
  const auto parse = [&](const std::string& more) {
    return ParseChatCompletionRequest(absl::StrCat("{", base, more, "}"), model);
  };
  const auto verdict = [](const JsonSchema& schema, const std::string& text) {
    JsonPrefix prefix(&schema);
    return prefix.Push(text) && prefix.complete();
  };
  auto named = parse(R"(, "tool_choice": {"type": "function", "function": {"name": "pick"}})");
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(named->tool_calls, ToolCallForm::kNamed);
  EXPECT_EQ(named->tool_name, "pick");
  EXPECT_TRUE(verdict(*named->json_schema, R"({"color":"red"})"));
  EXPECT_FALSE(verdict(*named->json_schema, R"({"color":"green"})"));
  auto required = parse(R"(, "tool_choice": "required")");
  ASSERT_TRUE(required.ok()) << required.status();
  EXPECT_EQ(required->tool_calls, ToolCallForm::kRequired);
  EXPECT_TRUE(verdict(*required->json_schema,
                      R"([{"name":"get_weather","arguments":{"city":"Oslo","unit":"C"}},)"
                      R"({"name":"pick","arguments":{"color":"blue"}}])"));
  EXPECT_FALSE(verdict(*required->json_schema, R"([])"));
  EXPECT_FALSE(verdict(*required->json_schema, R"([{"name":"pick","arguments":{"city":"x"}}])"));
  auto single = parse(R"(, "tool_choice": "required", "parallel_tool_calls": false)");
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_FALSE(verdict(*single->json_schema, R"([{"name":"pick","arguments":{"color":"red"}},)"
                                             R"({"name":"pick","arguments":{"color":"red"}}])"));
  EXPECT_TRUE(verdict(*single->json_schema, R"([{"name":"pick","arguments":{"color":"red"}}])"));
  // "auto", the default with tools: free text, calls read from it after.
  auto automatic = parse("");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ(automatic->tool_calls, ToolCallForm::kAuto);
  EXPECT_THAT(automatic->tool_names, ElementsAre("get_weather", "pick"));
  EXPECT_EQ(automatic->json_schema, nullptr);
  // "none": the tools are neither offered nor called.
  auto none = parse(R"(, "tool_choice": "none")");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->tool_calls, ToolCallForm::kNone);
  EXPECT_EQ(none->json_schema, nullptr);

  // The prompt: the tools in the system message; an earlier call and its
  // result as the model wrote and read them.
  auto tokens = Tokenize(absl::StrCat(R"({"messages": [{"role": "user", "content": "Weather?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
       "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"}], )",
                                      base.substr(base.find("\"tools\"")), "}"),
                         model);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  const std::vector<int32_t> ids = Json::parse(*tokens)["tokens"];
  const std::string prompt = *tokenizer_->Decode(ids);
  EXPECT_THAT(prompt, HasSubstr("<tools>\n{\"type\":\"function\",\"function\":{\"name\":"
                                "\"get_weather\",\"description\":\"The weather in a city\""));
  EXPECT_THAT(prompt, HasSubstr("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                                "{\"city\": \"Oslo\"}}\n</tool_call>"));
  EXPECT_THAT(prompt, HasSubstr("<tool_response>\n-3 C\n</tool_response>"));

  const std::pair<std::string, std::string> errors[] = {
      {R"(, "tool_choice": {"type": "function", "function": {"name": "nope"}})",
       "which 'tools' does not list"},
      {R"(, "tool_choice": "sometimes")", "'tool_choice' must be"},
      {R"(, "tool_choice": "required", "response_format": {"type": "json_object"})",
       "cannot also follow response_format"},
  };
  for (const auto& [more, message] : errors) {
    ExpectError(parse(more), absl::StatusCode::kInvalidArgument, "tool_choice", message);
  }
  const std::string user = R"("messages": [{"role": "user", "content": "x"}])";
  const std::pair<std::string, std::string> bad_tools[] = {
      {R"("tools": {})", "must be a list"},
      {R"("tools": [{"type": "function", "function": {"name": "a b"}}])", "1 to 64 letters"},
      {R"("tools": [{"type": "function", "function": {"name": "f"}},
                    {"type": "function", "function": {"name": "f"}}])",
       "repeats the name"},
      {R"("tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}])",
       "must be a JSON schema"},
      {R"("tools": [{"type": "function", "function": {"name": "f", "parameters":
                     {"type": "string", "pattern": "(a)\\1"}}}], "tool_choice": "required")",
       "backreference"},
  };
  for (const auto& [fields, message] : bad_tools) {
    ExpectError(ParseChatCompletionRequest(absl::StrCat("{", user, ", ", fields, "}"), model),
                absl::StatusCode::kInvalidArgument, "tools", message);
  }
  ExpectError(
      ParseChatCompletionRequest(absl::StrCat("{", user, R"(, "tool_choice": "required"})"), model),
      absl::StatusCode::kInvalidArgument, "tool_choice", "'tools' lists none");
  // "auto" with no tools is plain chat.
  auto no_tools = ParseChatCompletionRequest(
      absl::StrCat("{", user, R"(, "tools": [], "tool_choice": "auto"})"), model);
  ASSERT_TRUE(no_tools.ok()) << no_tools.status();
  EXPECT_EQ(no_tools->tool_calls, ToolCallForm::kNone);
}

// Chat's logprobs: true (with top_logprobs: N, 0 when absent).
TEST_F(TextModelTest, ChatLogprobsAndTopLogprobs) {
  const std::string messages = R"("messages": [{"role": "user", "content": "hi"}])";
  for (const auto& [fields, want] :
       std::vector<std::pair<std::string, int32_t>>{{R"("logprobs": true)", 0},
                                                    {R"("logprobs": true, "top_logprobs": 4)", 4},
                                                    {R"("logprobs": false, "top_logprobs": 0)", -1},
                                                    {R"("top_logprobs": null)", -1}}) {
    auto request =
        ParseChatCompletionRequest(absl::StrCat("{", messages, ", ", fields, "}"), TextModel());
    ASSERT_TRUE(request.ok()) << fields << ": " << request.status();
    EXPECT_EQ(request->generation.sampling.top_logprobs, want) << fields;
  }
  ExpectError(ParseChatCompletionRequest(absl::StrCat("{", messages, R"(, "top_logprobs": 2})"),
                                         TextModel()),
              absl::StatusCode::kInvalidArgument, "top_logprobs", "needs 'logprobs': true");
  ExpectError(
      ParseChatCompletionRequest(
          absl::StrCat("{", messages, R"(, "logprobs": true, "top_logprobs": 21})"), TextModel()),
      absl::StatusCode::kInvalidArgument, "top_logprobs", "more than the 20");
  ExpectError(
      ParseChatCompletionRequest(absl::StrCat("{", messages, R"(, "logprobs": 1})"), TextModel()),
      absl::StatusCode::kInvalidArgument, "logprobs", "must be true or false");
}

// ---------------------------------------------------------------- errors

TEST(ApiErrorTest, MapsStatusCodes) {
  struct Case {
    absl::Status status;
    int http_status;
    std::string type;
    std::string code;
  };
  const Case cases[] = {
      {absl::InvalidArgumentError("x"), 400, "invalid_request_error", ""},
      {absl::OutOfRangeError("x"), 400, "invalid_request_error", ""},
      {absl::FailedPreconditionError("x"), 400, "invalid_request_error", ""},
      {absl::UnauthenticatedError("x"), 401, "invalid_request_error", "invalid_api_key"},
      {absl::NotFoundError("x"), 404, "invalid_request_error", ""},
      {WithParam(absl::NotFoundError("x"), "model"), 404, "invalid_request_error",
       "model_not_found"},
      {absl::ResourceExhaustedError("x"), 429, "server_overloaded", ""},
      {absl::UnavailableError("x"), 503, "service_unavailable", ""},
      {absl::CancelledError("x"), 503, "service_unavailable", ""},
      {absl::DeadlineExceededError("x"), 504, "timeout_error", ""},
      {absl::InternalError("x"), 500, "server_error", ""},
      {absl::UnknownError("x"), 500, "server_error", ""},
  };
  for (const Case& c : cases) {
    const ApiError error = ApiErrorFromStatus(c.status);
    EXPECT_EQ(error.http_status, c.http_status) << c.status;
    EXPECT_EQ(error.type, c.type) << c.status;
    EXPECT_EQ(error.code, c.code) << c.status;
    EXPECT_EQ(error.message, "x");
  }
}

TEST(ApiErrorTest, BodyHasOpenAisShape) {
  ApiError error;
  error.http_status = 400;
  error.message = "'top_p' = 2 is outside (0, 1]";
  error.type = "invalid_request_error";
  error.param = "top_p";
  EXPECT_EQ(ApiErrorBody(error),
            R"({"error":{"message":"'top_p' = 2 is outside (0, 1]","type":"invalid_request_error",)"
            R"("param":"top_p","code":null}})");
  error.param.clear();
  error.code = "invalid_api_key";
  const Json body = Json::parse(ApiErrorBody(error));
  EXPECT_TRUE(body["error"]["param"].is_null());
  EXPECT_EQ(body["error"]["code"], "invalid_api_key");
  // A message with bytes that are not UTF-8 still serializes.
  error.message = "bad \xFF byte";
  EXPECT_THAT(ApiErrorBody(error), HasSubstr("bad \xEF\xBF\xBD byte"));
}

TEST(ApiErrorTest, ParamRoundTrips) {
  EXPECT_EQ(ParamOf(absl::InvalidArgumentError("x")), "");
  EXPECT_EQ(ParamOf(WithParam(absl::InvalidArgumentError("x"), "stop")), "stop");
  EXPECT_EQ(ApiErrorFromStatus(WithParam(absl::InvalidArgumentError("x"), "stop")).param, "stop");
  EXPECT_TRUE(WithParam(absl::OkStatus(), "stop").ok());
}

// ---------------------------------------------------------------- output

GenerationResponse Response(std::vector<int32_t> ids, bool finished = false,
                            FinishReason reason = FinishReason::kStop) {
  GenerationResponse response;
  response.token_ids = std::move(ids);
  response.finished = finished;
  response.finish_reason = reason;
  return response;
}

ApiRequest IdRequest(size_t prompt_tokens = 3) {
  ApiRequest request;
  request.generation.prompt_ids.assign(prompt_tokens, 1);
  return request;
}

TEST(OutputAccumulatorTest, TokenIdsOnlyWithoutATokenizer) {
  OutputAccumulator output(IdRequest(), 0, IdModel());
  auto first = output.Add(Response({7, 8}));
  ASSERT_TRUE(first.ok());
  EXPECT_THAT(first->token_ids, ElementsAre(7, 8));
  EXPECT_EQ(first->text, "");
  EXPECT_EQ(first->finish_reason, "");
  EXPECT_FALSE(output.finished());
  auto last = output.Add(Response({9}, true, FinishReason::kLength));
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->finish_reason, "length");
  EXPECT_TRUE(output.finished());
  EXPECT_TRUE(output.executor_finished());
  EXPECT_THAT(output.token_ids(), ElementsAre(7, 8, 9));
  EXPECT_EQ(output.prompt_tokens(), 3);
  EXPECT_EQ(output.completion_tokens(), 3);

  OutputAccumulator stopped(IdRequest(), 0, IdModel());
  auto stop = stopped.Add(Response({4}, true, FinishReason::kStop));
  EXPECT_EQ(stop->finish_reason, "stop");
  // The last response may carry no tokens.
  OutputAccumulator empty_end(IdRequest(), 0, IdModel());
  ASSERT_TRUE(empty_end.Add(Response({5})).ok());
  auto end = empty_end.Add(Response({}, true, FinishReason::kLength));
  EXPECT_THAT(end->token_ids, IsEmpty());
  EXPECT_EQ(end->finish_reason, "length");
}

TEST(OutputAccumulatorTest, AbortAndErrorReturnTheirStatus) {
  OutputAccumulator cancelled(IdRequest(), 0, IdModel());
  GenerationResponse abort = Response({1}, true, FinishReason::kAbort);
  abort.status = absl::DeadlineExceededError("past its deadline");
  EXPECT_EQ(cancelled.Add(abort).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(cancelled.executor_finished());
  EXPECT_FALSE(cancelled.finished());

  OutputAccumulator failed(IdRequest(), 0, IdModel());
  EXPECT_EQ(failed.Add(Response({}, true, FinishReason::kError)).status().code(),
            absl::StatusCode::kInternal);
}

TEST_F(TextModelTest, CompletionTextKeepsItsLeadingSpaceChatDropsIt) {
  const std::vector<int32_t> ids = Encode("Hello world");
  ApiRequest completion = IdRequest();
  OutputAccumulator text(completion, 0, TextModel());
  std::string streamed;
  for (int32_t id : ids) streamed += text.Add(Response({id}))->text;
  streamed += text.Add(Response({}, true))->text;
  EXPECT_EQ(streamed, " Hello world");
  EXPECT_EQ(text.text(), " Hello world");

  ApiRequest chat = IdRequest();
  chat.endpoint = ApiEndpoint::kChatCompletions;
  OutputAccumulator reply(chat, 0, TextModel());
  ASSERT_TRUE(reply.Add(Response(ids, true)).ok());
  EXPECT_EQ(reply.text(), "Hello world");
  // EOS ends the turn and decodes to nothing.
  OutputAccumulator eos(chat, 0, TextModel());
  ASSERT_TRUE(eos.Add(Response({ids[0], tokenizer_->eos_id()}, true)).ok());
  EXPECT_EQ(eos.text(), "Hello");
  EXPECT_EQ(eos.completion_tokens(), 2);
}

TEST_F(TextModelTest, HoldsBackIncompleteUtf8) {
  // "🦙" is four byte tokens.
  const std::vector<int32_t> ids = {Id("<0xF0>"), Id("<0x9F>"), Id("<0xA6>"), Id("<0x99>")};
  OutputAccumulator output(IdRequest(), 0, TextModel());
  std::vector<std::string> deltas;
  for (int32_t id : ids) {
    auto delta = output.Add(Response({id}));
    ASSERT_TRUE(delta.ok());
    EXPECT_THAT(delta->token_ids, ElementsAre(id));
    deltas.push_back(delta->text);
  }
  EXPECT_THAT(deltas, ElementsAre("", "", "", "\xF0\x9F\xA6\x99"));
  // A stream that ends inside a character ends with U+FFFD.
  OutputAccumulator cut(IdRequest(), 0, TextModel());
  EXPECT_EQ(cut.Add(Response({ids[0], ids[1]}))->text, "");
  auto last = cut.Add(Response({}, true, FinishReason::kLength));
  EXPECT_EQ(last->text, "\xEF\xBF\xBD");
  EXPECT_EQ(last->finish_reason, "length");
}

TEST_F(TextModelTest, StopStringEndsTheTextBeforeIt) {
  // " Hello world" token by token; "o w" spans two tokens.
  const std::vector<int32_t> ids = Encode("Hello world again");
  ApiRequest request = IdRequest();
  request.stop_strings = {"o w"};
  OutputAccumulator output(request, 0, TextModel());
  auto hello = output.Add(Response({ids[0]}));
  ASSERT_TRUE(hello.ok());
  // " Hello" ends with "o", the start of the stop string: held back.
  EXPECT_EQ(hello->text, " Hell");
  auto world = output.Add(Response({ids[1], ids[2]}));
  ASSERT_TRUE(world.ok());
  EXPECT_EQ(world->text, "");
  EXPECT_EQ(world->finish_reason, "stop");
  // The ids run to the token that completed the match; later ones are dropped.
  EXPECT_THAT(world->token_ids, ElementsAre(ids[1]));
  EXPECT_TRUE(output.finished());
  EXPECT_FALSE(output.executor_finished());
  EXPECT_EQ(output.text(), " Hell");
  EXPECT_EQ(output.completion_tokens(), 2);
}

TEST_F(TextModelTest, HeldBackTextIsReleasedWhenItIsNoMatch) {
  const std::vector<int32_t> ids = Encode("Hello world");
  ApiRequest request = IdRequest();
  request.stop_strings = {"lox", "Hello!"};
  OutputAccumulator output(request, 0, TextModel());
  // " Hello" could start "Hello!" (and ends with "lo" of "lox").
  EXPECT_EQ(output.Add(Response({ids[0]}))->text, " ");
  EXPECT_EQ(output.Add(Response({ids[1]}))->text, "Hello world");
  // Nothing held at the end.
  auto last = output.Add(Response({}, true, FinishReason::kLength));
  EXPECT_EQ(last->text, "");
  EXPECT_EQ(output.text(), " Hello world");
  // Held text is flushed when the executor finishes.
  OutputAccumulator flushed(request, 0, TextModel());
  auto only = flushed.Add(Response({ids[0]}, true, FinishReason::kLength));
  EXPECT_EQ(only->text, " Hello");
  EXPECT_EQ(only->finish_reason, "length");
}

TEST_F(TextModelTest, StopStringInTheLastResponseAndEarliestMatchWins) {
  const std::vector<int32_t> ids = Encode("one two three");
  ApiRequest request = IdRequest();
  request.stop_strings = {"three", "two"};
  OutputAccumulator output(request, 0, TextModel());
  auto delta = output.Add(Response(ids, true, FinishReason::kLength));
  ASSERT_TRUE(delta.ok());
  EXPECT_EQ(delta->text, " one ");
  EXPECT_EQ(delta->finish_reason, "stop");
  EXPECT_TRUE(output.executor_finished());
  // A stop string matched at the very first token returns no text.
  ApiRequest first = IdRequest();
  first.stop_strings = {" one"};
  OutputAccumulator at_start(first, 0, TextModel());
  auto start = at_start.Add(Response(ids));
  EXPECT_EQ(start->text, "");
  EXPECT_THAT(start->token_ids, ElementsAre(ids[0]));
  EXPECT_EQ(start->finish_reason, "stop");
}

// ---------------------------------------------------------------- formatting

ResponseMeta Meta(ApiEndpoint endpoint, bool include_usage = false) {
  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id = endpoint == ApiEndpoint::kCompletions ? "cmpl-1" : "chatcmpl-1";
  meta.created = 1700000000;
  meta.model = "tiny";
  meta.include_usage = include_usage;
  return meta;
}

// The JSON of one "data: ...\n\n" event.
Json EventJson(const std::string& event) {
  EXPECT_THAT(event, StartsWith("data: "));
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  EXPECT_EQ(event.find("\n\n"), event.size() - 2) << "one event expected: " << event;
  return Json::parse(event.substr(6, event.size() - 8));
}

TEST(FormatTest, CompletionResponse) {
  OutputAccumulator output(IdRequest(4), 0, IdModel());
  GenerationResponse response = Response({7, 8}, true, FinishReason::kLength);
  response.cached_prompt_tokens = 3;  // the prefix cache held them
  ASSERT_TRUE(output.Add(response).ok());
  const std::string text = FormatResponse(Meta(ApiEndpoint::kCompletions), {&output});
  EXPECT_THAT(text, StartsWith(R"({"id":"cmpl-1","object":"text_completion","created":1700000000,)"
                               R"("model":"tiny","choices":[)"));
  const Json json = Json::parse(text);
  const Json& choice = json["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["text"], "");
  EXPECT_EQ(choice["token_ids"], Json({7, 8}));
  EXPECT_TRUE(choice["logprobs"].is_null());
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_EQ(json["usage"], Json({{"prompt_tokens", 4},
                                 {"completion_tokens", 2},
                                 {"total_tokens", 6},
                                 {"prompt_tokens_details", {{"cached_tokens", 3}}}}));
}

TEST_F(TextModelTest, ChatResponse) {
  ApiRequest request = IdRequest(5);
  request.endpoint = ApiEndpoint::kChatCompletions;
  OutputAccumulator output(request, 0, TextModel());
  const std::vector<int32_t> ids = Encode("Hi there");
  ASSERT_TRUE(output.Add(Response(ids, true, FinishReason::kStop)).ok());
  const Json json = Json::parse(FormatResponse(Meta(ApiEndpoint::kChatCompletions), {&output}));
  EXPECT_EQ(json["object"], "chat.completion");
  EXPECT_EQ(json["id"], "chatcmpl-1");
  const Json& choice = json["choices"][0];
  EXPECT_EQ(choice["message"], Json({{"role", "assistant"}, {"content", "Hi there"}}));
  EXPECT_EQ(choice["finish_reason"], "stop");
  EXPECT_EQ(choice["token_ids"], Json(ids));
  EXPECT_EQ(json["usage"]["total_tokens"], 5 + static_cast<int>(ids.size()));
}

// Two prompts, two choices each: every choice in index order, each chunk
// naming its choice, and the usage counting each prompt (and its cached
// tokens) once and every choice's tokens.
TEST(FormatTest, SeveralChoices) {
  auto request = ParseCompletionRequest(R"({"prompt": [[1, 2], [3]], "n": 2})", IdModel());
  ASSERT_TRUE(request.ok()) << request.status();
  const ResponseMeta meta = Meta(ApiEndpoint::kCompletions, /*include_usage=*/true);
  std::vector<std::unique_ptr<OutputAccumulator>> outputs;
  std::vector<const OutputAccumulator*> choices;
  for (int64_t i = 0; i < request->num_choices(); ++i) {
    outputs.push_back(std::make_unique<OutputAccumulator>(*request, i, IdModel()));
    choices.push_back(outputs.back().get());
    GenerationResponse response =
        Response({static_cast<int32_t>(10 + i), 20}, true, FinishReason::kLength);
    response.cached_prompt_tokens = i;  // the first choice of each prompt: 0, then 2
    auto delta = outputs.back()->Add(response);
    ASSERT_TRUE(delta.ok()) << delta.status();
    EXPECT_EQ(delta->index, i);
    EXPECT_EQ(EventJson(FormatStreamDelta(meta, *delta, *outputs.back()))["choices"][0]["index"],
              i);
    EXPECT_EQ(outputs.back()->first_of_prompt(), i % 2 == 0);
  }
  const Json json = Json::parse(FormatResponse(meta, choices));
  ASSERT_EQ(json["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(json["choices"][i]["index"], i);
    EXPECT_EQ(json["choices"][i]["token_ids"], Json({10 + i, 20}));
    EXPECT_EQ(json["choices"][i]["finish_reason"], "length");
  }
  const Json usage = Json({{"prompt_tokens", 3},
                           {"completion_tokens", 8},
                           {"total_tokens", 11},
                           {"prompt_tokens_details", {{"cached_tokens", 2}}}});
  EXPECT_EQ(json["usage"], usage);
  const std::string end = FormatStreamEnd(meta, choices);
  EXPECT_EQ(EventJson(end.substr(0, end.find("\n\n") + 2))["usage"], usage);
  EXPECT_EQ(
      EventJson(FormatStreamStart(Meta(ApiEndpoint::kChatCompletions), 3))["choices"][0]["index"],
      3);
}

TEST(FormatTest, CompletionStreamFraming) {
  const ResponseMeta meta = Meta(ApiEndpoint::kCompletions);
  const OutputAccumulator choice(IdRequest(2), 0, IdModel());  // the delta's
  OutputDelta delta;
  delta.token_ids = {3, 4};
  delta.text = "ab";
  const Json chunk = EventJson(FormatStreamDelta(meta, delta, choice));
  EXPECT_EQ(chunk["object"], "text_completion");
  EXPECT_EQ(chunk["id"], "cmpl-1");
  EXPECT_EQ(chunk["choices"][0]["text"], "ab");
  EXPECT_EQ(chunk["choices"][0]["token_ids"], Json({3, 4}));
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(chunk.contains("usage"));
  delta.finish_reason = "length";
  EXPECT_EQ(EventJson(FormatStreamDelta(meta, delta, choice))["choices"][0]["finish_reason"],
            "length");

  OutputAccumulator output(IdRequest(2), 0, IdModel());
  ASSERT_TRUE(output.Add(Response({1, 2, 3}, true)).ok());
  EXPECT_EQ(FormatStreamEnd(meta, {&output}), "data: [DONE]\n\n");
}

TEST(FormatTest, StreamUsageChunk) {
  const ResponseMeta meta = Meta(ApiEndpoint::kCompletions, /*include_usage=*/true);
  const OutputAccumulator choice(IdRequest(2), 0, IdModel());  // the delta's
  OutputDelta delta;
  delta.token_ids = {3};
  EXPECT_TRUE(EventJson(FormatStreamDelta(meta, delta, choice))["usage"].is_null());
  OutputAccumulator output(IdRequest(2), 0, IdModel());
  ASSERT_TRUE(output.Add(Response({1, 2, 3}, true)).ok());
  const std::string end = FormatStreamEnd(meta, {&output});
  const std::string done = "data: [DONE]\n\n";
  ASSERT_THAT(end, ::testing::EndsWith(done));
  const Json usage = EventJson(end.substr(0, end.size() - done.size()));
  EXPECT_EQ(usage["choices"], Json::array());
  EXPECT_EQ(usage["usage"], Json({{"prompt_tokens", 2},
                                  {"completion_tokens", 3},
                                  {"total_tokens", 5},
                                  {"prompt_tokens_details", {{"cached_tokens", 0}}}}));
}

TEST(FormatTest, ChatStreamFraming) {
  const ResponseMeta meta = Meta(ApiEndpoint::kChatCompletions);
  const OutputAccumulator choice(IdRequest(2), 0, IdModel());  // the delta's
  const Json start = EventJson(FormatStreamStart(meta, 0));
  EXPECT_EQ(start["object"], "chat.completion.chunk");
  EXPECT_EQ(start["choices"][0]["delta"], Json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(start["choices"][0]["finish_reason"].is_null());
  OutputDelta delta;
  delta.token_ids = {5};
  delta.text = "Hi";
  EXPECT_EQ(EventJson(FormatStreamDelta(meta, delta, choice))["choices"][0]["delta"],
            Json({{"content", "Hi"}}));
  // Held-back text: a chunk with ids but no content has an empty delta.
  delta.text.clear();
  delta.finish_reason = "stop";
  const Json last = EventJson(FormatStreamDelta(meta, delta, choice));
  EXPECT_EQ(last["choices"][0]["delta"], Json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
}

// Log probabilities: completions' four parallel lists (the sampled token is
// in its top map), chat's content entries with bytes, -inf as -9999, the
// stream's chunks carrying their own tokens' entries, and token_id:N for ids
// without text.
TEST_F(TextModelTest, LogprobsInResponsesAndStreamChunks) {
  const std::vector<int32_t> ids = Encode("Hello world");
  ASSERT_EQ(ids.size(), 2u);
  const auto logprobs = [&](float chosen) {
    return SampledLogprobs{chosen, {{ids[1], -0.5f}, {ids[0], chosen}}};
  };
  GenerationResponse first = Response({ids[0]});
  first.logprobs = {logprobs(-1.25f)};
  GenerationResponse last = Response({ids[1]}, true, FinishReason::kLength);
  last.logprobs = {SampledLogprobs{-std::numeric_limits<float>::infinity(), {}}};

  ApiRequest request = IdRequest();
  request.generation.sampling.top_logprobs = 2;
  OutputAccumulator completion(request, 0, TextModel());
  auto delta = completion.Add(first);
  ASSERT_TRUE(delta.ok());
  const Json chunk =
      EventJson(FormatStreamDelta(Meta(ApiEndpoint::kCompletions), *delta, completion));
  EXPECT_EQ(chunk["choices"][0]["logprobs"]["tokens"], Json({" Hello"}));
  ASSERT_TRUE(completion.Add(last).ok());
  const Json json = Json::parse(FormatResponse(Meta(ApiEndpoint::kCompletions), {&completion}));
  const Json& lp = json["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], Json({" Hello", " world"}));
  EXPECT_EQ(lp["token_logprobs"], Json({-1.25, -9999.0}));
  EXPECT_EQ(lp["text_offset"], Json({0, 6}));
  EXPECT_EQ(lp["top_logprobs"][0], Json({{" world", -0.5}, {" Hello", -1.25}}));
  EXPECT_EQ(lp["top_logprobs"][1], Json({{" world", -9999.0}}));  // the sampled token alone

  request.endpoint = ApiEndpoint::kChatCompletions;
  OutputAccumulator chat(request, 0, TextModel());
  ASSERT_TRUE(chat.Add(first).ok());
  const Json reply = Json::parse(FormatResponse(Meta(ApiEndpoint::kChatCompletions), {&chat}));
  const Json& content = reply["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 1u);
  EXPECT_EQ(content[0]["token"], " Hello");
  EXPECT_EQ(content[0]["logprob"], -1.25);
  EXPECT_EQ(content[0]["bytes"], Json({32, 72, 101, 108, 108, 111}));
  ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][0]["token"], " world");
  EXPECT_EQ(content[0]["top_logprobs"][0]["logprob"], -0.5);

  // Not asked: null, as before.
  OutputAccumulator plain(IdRequest(), 0, TextModel());
  ASSERT_TRUE(plain.Add(Response({ids[0]})).ok());
  EXPECT_TRUE(Json::parse(FormatResponse(Meta(ApiEndpoint::kCompletions),
                                         {&plain}))["choices"][0]["logprobs"]
                  .is_null());
  // Without a tokenizer: token_id:N.
  ApiRequest ids_only = IdRequest();
  ids_only.generation.sampling.top_logprobs = 0;
  OutputAccumulator no_text(ids_only, 0, IdModel());
  GenerationResponse seven = Response({7});
  seven.logprobs = {SampledLogprobs{-0.75f, {}}};
  ASSERT_TRUE(no_text.Add(seven).ok());
  EXPECT_EQ(Json::parse(FormatResponse(Meta(ApiEndpoint::kCompletions),
                                       {&no_text}))["choices"][0]["logprobs"]["tokens"],
            Json({"token_id:7"}));
}

// Echo: the prompt's text first, and with logprobs its tokens (the first
// with null), then the generated ones; a stream sends them in its first chunk.
TEST_F(TextModelTest, EchoedPromptWithLogprobs) {
  const std::vector<int32_t> ids = Encode("Hello world");
  ASSERT_EQ(ids.size(), 2u);
  const std::vector<int32_t> prompt = {ids[0]};
  const std::vector<int32_t> reply = {ids[1]};
  ApiRequest request = IdRequest();
  request.generation.prompt_ids = {prompt[0], reply[0]};  // " Hello world"
  request.echo = true;
  request.generation.sampling.top_logprobs = 1;
  GenerationResponse first = Response({reply[0]}, true, FinishReason::kLength);
  first.logprobs = {SampledLogprobs{-2.0f, {{reply[0], -2.0f}}}};
  first.prompt_logprobs = {SampledLogprobs{-3.0f, {{prompt[0], -1.0f}}}};
  OutputAccumulator output(request, 0, TextModel());
  auto delta = output.Add(first);
  ASSERT_TRUE(delta.ok());
  EXPECT_EQ(delta->text, " Hello world world");
  EXPECT_EQ(delta->logprobs.size(), 3u);
  const Json json = Json::parse(FormatResponse(Meta(ApiEndpoint::kCompletions), {&output}));
  const Json& lp = json["choices"][0]["logprobs"];
  EXPECT_EQ(json["choices"][0]["text"], " Hello world world");
  EXPECT_EQ(lp["tokens"], Json({" Hello", " world", " world"}));
  EXPECT_EQ(lp["token_logprobs"], Json({nullptr, -3.0, -2.0}));
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["top_logprobs"][1], Json({{" Hello", -1.0}, {" world", -3.0}}));
  EXPECT_EQ(lp["text_offset"], Json({0, 6, 12}));
  EXPECT_EQ(json["choices"][0]["token_ids"], Json({reply[0]}));  // the generated ones
  EXPECT_EQ(json["usage"]["completion_tokens"], 1);
}

TEST(FormatTest, StreamErrorAndModelList) {
  ApiError error = ApiErrorFromStatus(absl::DeadlineExceededError("past the deadline"));
  const std::string events = FormatStreamError(error);
  EXPECT_EQ(events, absl::StrCat("data: ", ApiErrorBody(error), "\n\ndata: [DONE]\n\n"));

  const Json list = Json::parse(FormatModelList(IdModel(), 1700000000));
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], "tiny");
  EXPECT_EQ(list["data"][0]["object"], "model");
  EXPECT_EQ(list["data"][0]["owned_by"], "herd");
  EXPECT_EQ(list["data"][0]["max_model_len"], kContext);
  EXPECT_EQ(list["data"][0]["vocab_size"], IdModel().vocab_size);
}

}  // namespace
}  // namespace herd
