// The HTTP server over the real executor and engine (the shipped tiny model,
// one rank), driven with cpp-httplib's client: status codes, headers and
// error bodies; non-streaming and streaming completions against Generate;
// chat with a byte-level tokenizer; auth; body limits; queue-full 429; drain;
// timeouts; client disconnects; Stop during a stream; 64 concurrent streams.
#include "coordinator/api/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "model/tokenizer/unicode.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/generator.h"
#include "worker/step_runner.h"

namespace herd {
namespace {

using Json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

constexpr char kModelPath[] = "llamacpp-tiny/tiny-q4_0.gguf";
constexpr char kModelName[] = "tiny";
// Long enough that a request of kLongTokens runs for seconds on the tiny model.
constexpr int64_t kContext = 32768;
constexpr int64_t kLongTokens = 30000;
constexpr int64_t kBlockTokens = 16;
constexpr char kMistralTemplate[] = "{{ bos_token }}[INST] {{ content }} [/INST]";
const std::vector<int32_t> kPrompt = {1, 17, 255, 3, 99, 42};

// The parsed events of a server-sent-event body.
struct Events {
  std::vector<Json> chunks;
  bool done = false;      // ended with "data: [DONE]"
  std::string malformed;  // the first piece that was not a data event
};

Events ParseEvents(const std::string& body) {
  Events events;
  for (absl::string_view piece : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    if (!absl::StartsWith(piece, "data: ") || events.done) {
      if (events.malformed.empty()) events.malformed = std::string(piece);
      continue;
    }
    piece.remove_prefix(6);
    if (piece == "[DONE]") {
      events.done = true;
    } else {
      events.chunks.push_back(Json::parse(piece));
    }
  }
  return events;
}

// The value of the first sample of `family` whose line holds `label`.
double MetricValue(const std::string& text, const std::string& family, const std::string& label) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, family) && absl::StrContains(line, label)) {
      return std::stod(std::string(line.substr(line.rfind(' ') + 1)));
    }
  }
  ADD_FAILURE() << "no " << family << " sample with " << label;
  return -1;
}

// The token ids of every chunk, concatenated.
std::vector<int32_t> StreamedIds(const Events& events) {
  std::vector<int32_t> ids;
  for (const Json& chunk : events.chunks) {
    if (!chunk.contains("choices") || chunk["choices"].empty() ||
        !chunk["choices"][0].contains("token_ids")) {
      continue;
    }
    for (const Json& id : chunk["choices"][0]["token_ids"]) ids.push_back(id.get<int32_t>());
  }
  return ids;
}

// Code points in UTF-8 `text` (its bytes that do not continue a character).
int64_t Utf8Length(const std::string& text) {
  return std::count_if(text.begin(), text.end(),
                       [](char c) { return (static_cast<uint8_t>(c) & 0xC0) != 0x80; });
}

// A byte-level tokenizer inside the tiny model's 512 ids: one token per byte,
// then <s> and </s>.
std::unique_ptr<Tokenizer> ByteTokenizer() {
  TokenizerSpec spec;
  spec.source = "bytes";
  spec.kind = TokenizerKind::kByteLevelBpe;
  for (int b = 0; b < 256; ++b) {
    spec.tokens.push_back(tokenizer::ByteLevelMap::Get().CharFor(static_cast<uint8_t>(b)));
    spec.types.push_back(TokenType::kNormal);
  }
  for (const char* special : {"<s>", "</s>"}) {
    tokenizer::AddedToken added;
    added.id = static_cast<int32_t>(spec.tokens.size());
    added.text = special;
    added.special = true;
    spec.added_tokens.push_back(added);
    spec.tokens.push_back(special);
    spec.types.push_back(TokenType::kControl);
  }
  spec.bos_id = 256;
  spec.eos_id = 257;
  spec.add_bos = true;
  spec.pre_tokenizer.AddByteLevel(/*add_prefix_space=*/false, /*use_regex=*/false, nullptr);
  spec.decode_byte_level = true;
  auto tokenizer = Tokenizer::Create(std::move(spec));
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

class HttpServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = LoadModel(herd::testing::TestDataPath(kModelPath));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    EngineOptions engine_options;
    engine_options.num_threads = 1;
    engine_ = Engine::Create(*model_, engine_options)->release();
    reference_engine_ = Engine::Create(*model_, engine_options)->release();
  }
  static void TearDownTestSuite() {
    delete reference_engine_;
    delete engine_;
    delete model_;
  }

  void TearDown() override { StopAll(); }

  // Starts an executor and a server; `options` gets the model's fields.
  void StartServer(HttpServerOptions options = {}, ExecutorOptions executor_options = {}) {
    StepRunnerOptions runner_options;
    runner_options.num_kv_blocks = kContext / kBlockTokens;
    runner_options.kv_block_tokens = kBlockTokens;
    auto runner = StepRunner::Create(engine_, runner_options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    runner_ = std::move(*runner);
    ServingMetricsOptions metrics_options;
    metrics_options.model_name = kModelName;
    metrics_options.num_layers = static_cast<int>(model_->spec.num_layers);
    metrics_options.num_experts = static_cast<int>(model_->spec.num_experts);
    metrics_ = std::make_unique<ServingMetrics>(metrics_options);
    executor_options.num_kv_blocks = runner_options.num_kv_blocks;
    executor_options.kv_block_tokens = kBlockTokens;
    executor_options.max_context_tokens = kContext;
    executor_options.vocab_size = model_->spec.vocab_size;
    auto executor = Executor::Create(runner_.get(), nullptr, executor_options, metrics_.get());
    ASSERT_TRUE(executor.ok()) << executor.status();
    executor_ = std::move(*executor);
    options.model_name = kModelName;
    options.vocab_size = model_->spec.vocab_size;
    options.max_context_tokens = kContext;
    auto server = HttpServer::Create(executor_.get(), metrics_.get(), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_GT(server_->port(), 0);
    client_ = Client();
  }

  // The documented shutdown order.
  void StopAll() {
    if (server_ != nullptr) server_->BeginDrain();
    if (executor_ != nullptr) executor_->Shutdown(absl::ZeroDuration()).IgnoreError();
    server_.reset();
    executor_.reset();
    runner_.reset();
  }

  std::unique_ptr<httplib::Client> Client() const {
    auto client = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client->set_read_timeout(60);
    return client;
  }

  httplib::Result Post(const std::string& path, const Json& body,
                       const httplib::Headers& headers = {}) {
    return client_->Post(path.c_str(), headers, body.dump(), "application/json");
  }
  // Post with the body's keys in the order written (a schema's properties).
  httplib::Result PostOrdered(const std::string& path, const nlohmann::ordered_json& body) {
    return client_->Post(path.c_str(), {}, body.dump(), "application/json");
  }

  struct ChoiceOutput {
    std::string text;
    Json finish_reason;
  };
  // POSTs `request` to `path` with `user_text` as the prompt (completions)
  // or the one user message (chat); each choice's text and finish reason
  // (none, and a failure, if the request failed).
  std::vector<ChoiceOutput> PostForOutputs(const std::string& path, nlohmann::ordered_json request,
                                           const std::string& user_text) {
    if (path == "/v1/completions") {
      request["prompt"] = user_text;
    } else {
      request["messages"] = {{{"role", "user"}, {"content", user_text}}};
    }
    auto res = PostOrdered(path, request);
    std::vector<ChoiceOutput> outputs;
    if (!res || res->status != 200) {
      ADD_FAILURE() << path << ": " << (res ? res->body : "no response");
      return outputs;
    }
    const Json body = Json::parse(res->body);
    for (const Json& choice : body["choices"]) {
      outputs.push_back({choice.contains("text") ? choice["text"].get<std::string>()
                                                 : choice["message"]["content"].get<std::string>(),
                         choice["finish_reason"]});
    }
    EXPECT_FALSE(outputs.empty()) << res->body;
    return outputs;
  }

  std::vector<int32_t> Greedy(const std::vector<int32_t>& prompt, int64_t max_tokens) {
    GenerateOptions options;
    options.max_new_tokens = max_tokens;
    auto result = Generate(*reference_engine_, prompt, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->tokens : std::vector<int32_t>{};
  }

  // Waits up to `timeout` for the executor to have nothing running or waiting.
  // Starts a server whose executor runs one sequence at a time and queues
  // `max_waiting`, with a long request running (returned); the test cancels
  // it or leaves it to StopAll.
  RequestId StartWithOneSlotTaken(int64_t max_waiting) {
    ExecutorOptions executor_options;
    executor_options.max_running_per_rank = 1;
    executor_options.max_waiting_requests = max_waiting;
    StartServer({}, executor_options);
    GenerationRequest long_request;
    long_request.prompt_ids = kPrompt;
    long_request.max_tokens = kLongTokens;
    const absl::StatusOr<RequestId> running = executor_->Enqueue(long_request);
    EXPECT_TRUE(running.ok()) << running.status();
    for (int i = 0; i < 1000 && executor_->stats().num_running == 0; ++i) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    EXPECT_EQ(executor_->stats().num_running, 1);
    return running.value_or(0);
  }

  // StartServer with the byte-level tokenizer (byte_tokenizer_) and the
  // Mistral chat template.
  void StartTextServer(HttpServerOptions options = {}) {
    byte_tokenizer_ = ByteTokenizer();
    ASSERT_NE(byte_tokenizer_, nullptr);
    options.tokenizer = byte_tokenizer_.get();
    options.chat_template = kMistralTemplate;
    StartServer(options);
  }

  bool WaitIdle(absl::Duration timeout) {
    const absl::Time give_up = absl::Now() + timeout;
    while (absl::Now() < give_up) {
      const ExecutorStats stats = executor_->stats();
      if (stats.num_running == 0 && stats.num_waiting == 0) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }
  // The server's one request was cancelled (a client went away) within 5 s
  // of `start`, counted as aborted, and the server is idle again.
  void ExpectOneAbortedRequestSince(absl::Time start) {
    EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
    EXPECT_EQ(executor_->stats().num_finished, 1);
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
    EXPECT_EQ(MetricValue(metrics_->Serialize(), "herd:request_success_total{",
                          "finished_reason=\"abort\""),
              1);
  }

  static void ExpectError(const httplib::Result& res, int status, const std::string& type,
                          const std::string& message, const std::string& param = "") {
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    const Json body = Json::parse(res->body);
    ASSERT_TRUE(body.contains("error")) << res->body;
    EXPECT_EQ(body["error"]["type"], type) << res->body;
    EXPECT_THAT(body["error"]["message"].get<std::string>(), HasSubstr(message));
    if (param.empty()) {
      EXPECT_TRUE(body["error"]["param"].is_null()) << res->body;
    } else {
      EXPECT_EQ(body["error"]["param"], param) << res->body;
    }
    EXPECT_TRUE(body["error"].contains("code"));
  }

  static Model* model_;
  static Engine* engine_;
  static Engine* reference_engine_;
  // Outlives the server (StopAll runs in TearDown).
  std::unique_ptr<Tokenizer> byte_tokenizer_;
  std::unique_ptr<StepRunner> runner_;
  std::unique_ptr<ServingMetrics> metrics_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
};
Model* HttpServerTest::model_ = nullptr;
Engine* HttpServerTest::engine_ = nullptr;
Engine* HttpServerTest::reference_engine_ = nullptr;

TEST_F(HttpServerTest, CompletionMatchesGenerate) {
  StartServer();
  auto res =
      Post("/v1/completions",
           {{"model", kModelName}, {"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  const Json body = Json::parse(res->body);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_TRUE(absl::StartsWith(body["id"].get<std::string>(), "cmpl-")) << body["id"];
  EXPECT_EQ(body["model"], kModelName);
  EXPECT_NEAR(body["created"].get<double>(), absl::ToUnixSeconds(absl::Now()), 60);
  const Json& choice = body["choices"][0];
  EXPECT_EQ(choice["text"], "");
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_THAT(choice["token_ids"].get<std::vector<int32_t>>(),
              ElementsAreArray(Greedy(kPrompt, 12)));
  EXPECT_EQ(body["usage"], Json({{"prompt_tokens", kPrompt.size()},
                                 {"completion_tokens", 12},
                                 {"total_tokens", kPrompt.size() + 12},
                                 {"prompt_tokens_details", {{"cached_tokens", 0}}}}));
  // A stop id ends the completion after it (the id is part of the output).
  const std::vector<int32_t> greedy = Greedy(kPrompt, 12);
  auto stopped = Post("/v1/completions", {{"prompt", kPrompt},
                                          {"max_tokens", 12},
                                          {"temperature", 0},
                                          {"stop", Json::array({greedy[3]})}});
  ASSERT_TRUE(stopped);
  ASSERT_EQ(stopped->status, 200) << stopped->body;
  const Json stop_body = Json::parse(stopped->body);
  const auto stop_ids = stop_body["choices"][0]["token_ids"].get<std::vector<int32_t>>();
  ASSERT_FALSE(stop_ids.empty());
  EXPECT_EQ(stop_ids.back(), greedy[3]);
  EXPECT_LE(stop_ids.size(), 4u);
  EXPECT_EQ(stop_body["choices"][0]["finish_reason"], "stop");
}

TEST_F(HttpServerTest, SeededSamplingRepeats) {
  StartServer();
  const Json request = {{"prompt", kPrompt},
                        {"max_tokens", 10},
                        {"temperature", 1.0},
                        {"top_p", 0.9},
                        {"seed", 1234}};
  auto first = Post("/v1/completions", request);
  auto second = Post("/v1/completions", request);
  ASSERT_TRUE(first && second);
  ASSERT_EQ(first->status, 200) << first->body;
  EXPECT_EQ(Json::parse(first->body)["choices"][0]["token_ids"],
            Json::parse(second->body)["choices"][0]["token_ids"]);
}

TEST_F(HttpServerTest, StreamCarriesTheSameTokens) {
  StartServer();
  auto res = Post("/v1/completions", {{"prompt", kPrompt},
                                      {"max_tokens", 12},
                                      {"temperature", 0},
                                      {"stream", true},
                                      {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  EXPECT_EQ(res->get_header_value("Cache-Control"), "no-cache");
  const Events events = ParseEvents(res->body);
  EXPECT_TRUE(events.done);
  EXPECT_EQ(events.malformed, "");
  ASSERT_GE(events.chunks.size(), 2u);
  EXPECT_THAT(StreamedIds(events), ElementsAreArray(Greedy(kPrompt, 12)));
  const std::string id = events.chunks[0]["id"];
  for (size_t i = 0; i + 1 < events.chunks.size(); ++i) {
    const Json& chunk = events.chunks[i];
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_EQ(chunk["id"], id);
    EXPECT_TRUE(chunk["usage"].is_null());
    const bool last = i + 2 == events.chunks.size();
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], last ? Json("length") : Json(nullptr)) << i;
  }
  const Json& usage = events.chunks.back();
  EXPECT_EQ(usage["choices"], Json::array());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 12);
  EXPECT_EQ(usage["usage"]["prompt_tokens"], kPrompt.size());
}

// `n` choices of each prompt of a batch: choice i answers prompt i / n, whole
// or streamed (each chunk naming its choice), with the usage counting each
// prompt once; seeded samples differ between the choices and repeat.
TEST_F(HttpServerTest, SeveralChoicesOfABatchOfPrompts) {
  StartServer();
  const std::vector<std::vector<int32_t>> prompts = {kPrompt, {5, 6, 7, 300}};
  auto res = Post("/v1/completions",
                  {{"prompt", prompts}, {"n", 2}, {"max_tokens", 6}, {"temperature", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json body = Json::parse(res->body);
  ASSERT_EQ(body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    const Json& choice = body["choices"][i];
    EXPECT_EQ(choice["index"], i);
    EXPECT_THAT(choice["token_ids"].get<std::vector<int32_t>>(),
                ElementsAreArray(Greedy(prompts[i / 2], 6)))
        << "choice " << i;
    EXPECT_EQ(choice["finish_reason"], "length");
  }
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompts[0].size() + prompts[1].size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 24);

  auto streamed = Post("/v1/completions", {{"prompt", prompts},
                                           {"n", 2},
                                           {"max_tokens", 6},
                                           {"temperature", 0},
                                           {"stream", true},
                                           {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  const Events events = ParseEvents(streamed->body);
  EXPECT_TRUE(events.done);
  EXPECT_EQ(events.malformed, "");
  std::vector<std::vector<int32_t>> ids(4);
  std::vector<int> finishes(4, 0);
  for (size_t c = 0; c + 1 < events.chunks.size(); ++c) {
    const Json& choices = events.chunks[c]["choices"];
    ASSERT_EQ(choices.size(), 1u) << events.chunks[c];
    const int index = choices[0]["index"].get<int>();
    ASSERT_TRUE(index >= 0 && index < 4) << events.chunks[c];
    for (const Json& id : choices[0]["token_ids"]) ids[index].push_back(id.get<int32_t>());
    finishes[index] += choices[0]["finish_reason"].is_null() ? 0 : 1;
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_THAT(ids[i], ElementsAreArray(Greedy(prompts[i / 2], 6))) << "choice " << i;
    EXPECT_EQ(finishes[i], 1) << "choice " << i;
  }
  EXPECT_EQ(events.chunks.back()["usage"]["completion_tokens"], 24);

  const Json sampled = {{"prompt", kPrompt}, {"n", 3}, {"max_tokens", 8}, {"seed", 5}};
  auto first = Post("/v1/completions", sampled);
  auto again = Post("/v1/completions", sampled);
  ASSERT_TRUE(first && again);
  ASSERT_EQ(first->status, 200) << first->body;
  const Json a = Json::parse(first->body)["choices"];
  const Json b = Json::parse(again->body)["choices"];
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  EXPECT_FALSE(a[0]["token_ids"] == a[1]["token_ids"] && a[1]["token_ids"] == a[2]["token_ids"])
      << "the three seeded choices sampled the same tokens: " << a;
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

// A request whose choices do not all fit the queue is refused whole: with
// one running sequence per rank taken, its three choices wait in a queue of
// two, so the third is refused and the first two are cancelled.
TEST_F(HttpServerTest, ChoicesThatDoNotFitTheQueueAre429AndNoneRuns) {
  const RequestId running = StartWithOneSlotTaken(/*max_waiting=*/2);
  auto res = Post("/v1/completions", {{"prompt", kPrompt}, {"n", 3}, {"max_tokens", 4}});
  ExpectError(res, 429, "server_overloaded", "the request queue is full");
  EXPECT_EQ(executor_->stats().num_waiting, 0);
  executor_->Cancel(running);
  EXPECT_TRUE(WaitIdle(absl::Seconds(10)));
}

// JSON mode: every choice's text is a JSON object, or (cut by max_tokens) a
// prefix of one, as nlohmann::json judges it: it parses, or fails only at the
// end of the text; an object that closes ends its choice as stopped.
TEST_F(HttpServerTest, JsonModeOutputsAreObjectsOrTheirPrefixes) {
  StartTextServer();
  const Json format = {{"type", "json_object"}};
  int objects = 0;
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    for (const auto& [text, finish_reason] : PostForOutputs(
             path, {{"n", 8}, {"max_tokens", 96}, {"seed", 4}, {"response_format", format}},
             "Here is the JSON:")) {
      SCOPED_TRACE(::testing::Message() << path << ": " << text);
      ASSERT_FALSE(text.empty());
      EXPECT_EQ(text[0], '{');
      try {
        EXPECT_TRUE(Json::parse(text).is_object());
        EXPECT_EQ(finish_reason, "stop");
        ++objects;
      } catch (const Json::parse_error& e) {
        EXPECT_EQ(e.byte, text.size() + 1) << e.what();
        EXPECT_EQ(finish_reason, "length");
      }
    }
  }
  std::cout << objects << " of 16 choices closed their object within 96 tokens\n";
  // Biased toward '"', ':', '1' and '}' (the mask still decides what is
  // valid), the objects close: `{"":1}`-like outputs that end as stopped.
  auto biased =
      Post("/v1/completions", {{"prompt", "x"},
                               {"n", 4},
                               {"max_tokens", 96},
                               {"seed", 4},
                               {"response_format", format},
                               {"logit_bias", {{"34", 10}, {"58", 10}, {"49", 10}, {"125", 10}}}});
  ASSERT_TRUE(biased);
  ASSERT_EQ(biased->status, 200) << biased->body;
  const Json biased_body = Json::parse(biased->body);
  ASSERT_FALSE(biased_body["choices"].empty()) << biased->body;
  for (const Json& choice : biased_body["choices"]) {
    const std::string text = choice["text"];
    EXPECT_EQ(choice["finish_reason"], "stop") << text;
    EXPECT_NO_THROW(EXPECT_TRUE(Json::parse(text).is_object())) << text;
  }
}

// Structured outputs: with whitespace biased away (the schema's values are
// all bounded), every choice of every form (response_format json_schema on
// both endpoints, streamed, and vLLM's guided_json) is a whole object that
// has exactly the schema's properties in order, each of its type, and ends
// as stopped. A schema outside the subset is a 400 naming the keyword.
TEST_F(HttpServerTest, JsonSchemaOutputsFollowTheSchema) {
  StartTextServer();
  using Ordered = nlohmann::ordered_json;
  const Ordered schema = Ordered::parse(R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 6},
      "kind": {"enum": ["cat", "dog"]},
      "legs": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
      "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}},
      "required": ["name", "kind", "legs", "tags"], "additionalProperties": false})");
  const Ordered format = {{"type", "json_schema"},
                          {"json_schema", {{"name", "pet"}, {"strict", true}, {"schema", schema}}}};
  const Ordered no_whitespace = {{"32", -100}, {"10", -100}, {"9", -100}, {"13", -100}};
  const auto check = [](const std::string& text, const Json& finish_reason) {
    SCOPED_TRACE(text);
    EXPECT_EQ(finish_reason, "stop");
    const Ordered value = Ordered::parse(text);
    std::vector<std::string> keys;
    for (const auto& [key, item] : value.items()) keys.push_back(key);
    EXPECT_THAT(keys, ElementsAre("name", "kind", "legs", "tags"));
    ASSERT_TRUE(value["name"].is_string());
    EXPECT_LE(Utf8Length(value["name"].get<std::string>()), 6);
    EXPECT_THAT(value["kind"].get<std::string>(), ::testing::AnyOf("cat", "dog"));
    EXPECT_TRUE(value["legs"].is_boolean() || value["legs"].is_null());
    ASSERT_TRUE(value["tags"].is_array());
    EXPECT_LE(value["tags"].size(), 2u);
    for (const auto& tag : value["tags"]) EXPECT_THAT(tag, ::testing::AnyOf("a", "b"));
  };
  int outputs = 0;
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    for (const bool vllm : {false, true}) {
      Ordered request = {{"n", 4}, {"max_tokens", 160}, {"seed", 9}, {"logit_bias", no_whitespace}};
      request[vllm ? "guided_json" : "response_format"] = vllm ? schema : format;
      for (const auto& [text, finish_reason] : PostForOutputs(path, request, "A pet, please")) {
        check(text, finish_reason);
        ++outputs;
      }
    }
  }
  EXPECT_EQ(outputs, 16);
  auto streamed =
      PostOrdered("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "A pet"}}}},
                                           {"max_tokens", 160},
                                           {"seed", 2},
                                           {"stream", true},
                                           {"logit_bias", no_whitespace},
                                           {"response_format", format}});
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200) << streamed->body;
  const Events events = ParseEvents(streamed->body);
  std::string text;
  Json finish_reason;
  for (const Json& chunk : events.chunks) {
    for (const Json& choice : chunk["choices"]) {
      if (choice["delta"].contains("content"))
        text += choice["delta"]["content"].get<std::string>();
      if (!choice["finish_reason"].is_null()) finish_reason = choice["finish_reason"];
    }
  }
  check(text, finish_reason);
  ExpectError(
      Post("/v1/completions",
           {{"prompt", "x"},
            {"response_format",
             {{"type", "json_schema"},
              {"json_schema",
               {{"name", "d"}, {"schema", {{"type", "string"}, {"pattern", "(a)\\1"}}}}}}}}),
      400, "invalid_request_error", "a backreference (not supported)", "response_format");
  ExpectError(Post("/v1/completions", {{"prompt", "x"}, {"guided_json", {{"type", "integer"}}}}),
              400, "invalid_request_error", "may not be a number", "guided_json");
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

// vLLM's guided_choice and guided_regex: every choice's text is one of the
// strings / matches the pattern (std::regex judges), and ends as stopped,
// on both endpoints; an ambiguous choice ("no" beside "none") may stop at
// the shorter one, where the end-of-text id is allowed.
TEST_F(HttpServerTest, GuidedChoiceAndRegexOutputsMatch) {
  StartTextServer();
  const std::vector<std::string> options = {"yes", "no", "none", "maybe (later)"};
  const std::string pattern = R"([a-z]{2,4}-\d{1,2}(\.[A-Z])?)";
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    for (const bool choice : {true, false}) {
      nlohmann::ordered_json request = {{"n", 6}, {"max_tokens", 24}, {"seed", 5}};
      if (choice) {
        request["guided_choice"] = options;
      } else {
        request["guided_regex"] = pattern;
      }
      const std::vector<ChoiceOutput> outputs = PostForOutputs(path, request, "Well?");
      EXPECT_EQ(outputs.size(), 6u);
      for (const auto& [text, finish_reason] : outputs) {
        SCOPED_TRACE(::testing::Message() << path << ": " << text);
        EXPECT_EQ(finish_reason, "stop");
        if (choice) {
          EXPECT_THAT(options, ::testing::Contains(text));
        } else {
          EXPECT_TRUE(std::regex_match(text, std::regex(pattern)));
        }
      }
    }
  }
  ExpectError(Post("/v1/completions", {{"prompt", "x"}, {"guided_regex", "a(?=b)"}}), 400,
              "invalid_request_error", "lookaround", "guided_regex");
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

// Tool calls: with a named function or "required" (one call: no parallel
// calls), every choice comes back as message.tool_calls whose arguments
// parse and follow the function's parameters, finish_reason "tool_calls";
// streamed, the calls come whole in the last chunk and no content before.
TEST_F(HttpServerTest, ToolCallsFollowTheFunctionsParameters) {
  StartTextServer();
  const auto tools = nlohmann::ordered_json::parse(R"([
      {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
       "properties": {"city": {"type": "string", "maxLength": 5}, "unit": {"enum": ["C", "F"]}},
       "required": ["city", "unit"], "additionalProperties": false}}},
      {"type": "function", "function": {"name": "ping", "parameters": {"type": "object",
       "properties": {}, "additionalProperties": false}}}])");
  const nlohmann::ordered_json no_whitespace = {
      {"32", -100}, {"10", -100}, {"9", -100}, {"13", -100}};
  const auto check_call = [](const Json& call) {
    SCOPED_TRACE(call.dump());
    EXPECT_EQ(call["type"], "function");
    EXPECT_THAT(call["id"].get<std::string>(), ::testing::StartsWith("call_"));
    const std::string name = call["function"]["name"];
    const Json arguments = Json::parse(call["function"]["arguments"].get<std::string>());
    if (name == "ping") {
      EXPECT_EQ(arguments, Json::object());
      return;
    }
    ASSERT_EQ(name, "get_weather");
    EXPECT_LE(Utf8Length(arguments["city"].get<std::string>()), 5);
    EXPECT_THAT(arguments["unit"].get<std::string>(), ::testing::AnyOf("C", "F"));
  };
  const nlohmann::ordered_json messages = {{{"role", "user"}, {"content", "Weather in Oslo?"}}};
  for (const nlohmann::ordered_json& choice :
       {nlohmann::ordered_json("required"),
        nlohmann::ordered_json{{"type", "function"}, {"function", {{"name", "get_weather"}}}}}) {
    SCOPED_TRACE(choice.dump());
    nlohmann::ordered_json request = {{"messages", messages},
                                      {"tools", tools},
                                      {"tool_choice", choice},
                                      {"parallel_tool_calls", false},
                                      {"n", 4},
                                      {"max_tokens", 96},
                                      {"seed", 7},
                                      {"logit_bias", no_whitespace}};
    auto res = PostOrdered("/v1/chat/completions", request);
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    const Json body = Json::parse(res->body);
    ASSERT_EQ(body["choices"].size(), 4u) << res->body;
    for (const Json& c : body["choices"]) {
      EXPECT_EQ(c["finish_reason"], "tool_calls") << c;
      EXPECT_TRUE(c["message"]["content"].is_null()) << c;
      ASSERT_EQ(c["message"]["tool_calls"].size(), 1u) << c;
      check_call(c["message"]["tool_calls"][0]);
      if (choice.is_object()) {
        EXPECT_EQ(c["message"]["tool_calls"][0]["function"]["name"], "get_weather");
      }
    }
    request["stream"] = true;
    request["n"] = 1;
    auto streamed = PostOrdered("/v1/chat/completions", request);
    ASSERT_TRUE(streamed);
    const Events events = ParseEvents(streamed->body);
    ASSERT_TRUE(events.done) << streamed->body;
    Json calls;
    Json finish_reason;
    for (const Json& chunk : events.chunks) {
      for (const Json& c : chunk["choices"]) {
        EXPECT_FALSE(c["delta"].contains("content") &&
                     !c["delta"]["content"].get<std::string>().empty())
            << "content streamed beside a tool call: " << chunk;
        if (c["delta"].contains("tool_calls")) calls = c["delta"]["tool_calls"];
        if (!c["finish_reason"].is_null()) finish_reason = c["finish_reason"];
      }
    }
    EXPECT_EQ(finish_reason, "tool_calls");
    ASSERT_EQ(calls.size(), 1u) << streamed->body;
    check_call(calls[0]);
  }
  // Cut by max_tokens, a call comes back as its raw text.
  auto cut = PostOrdered(
      "/v1/chat/completions",
      {{"messages", messages}, {"tools", tools}, {"tool_choice", "required"}, {"max_tokens", 2}});
  ASSERT_TRUE(cut);
  ASSERT_EQ(cut->status, 200) << cut->body;
  const Json cut_choice = Json::parse(cut->body)["choices"][0];
  EXPECT_EQ(cut_choice["finish_reason"], "length");
  EXPECT_FALSE(cut_choice["message"].contains("tool_calls"));
  EXPECT_EQ(cut_choice["message"]["content"].get<std::string>().substr(0, 1), "[");
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

// tool_choice "auto": the reply's <tool_call> blocks (forced here with
// guided_regex, as a trained model would write them) come back as
// tool_calls with the text before them as content, streamed or not (the
// call's text never comes as content); a call naming no offered function
// leaves the whole reply as text; a reply without calls is plain text.
TEST_F(HttpServerTest, AutoToolCallsAreReadFromTheReply) {
  StartTextServer();
  const auto tools = nlohmann::ordered_json::parse(R"([{"type": "function", "function": {
      "name": "get_weather", "parameters": {"type": "object",
      "properties": {"city": {"type": "string"}}}}}])");
  const nlohmann::ordered_json messages = {{{"role", "user"}, {"content", "Weather?"}}};
  const std::string call =
      R"(<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Oslo"\}\}\n</tool_call>)";
  for (const bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streamed" : "whole");
    const auto post = [&](const std::string& pattern) {
      return PostOrdered("/v1/chat/completions", {{"messages", messages},
                                                  {"tools", tools},
                                                  {"max_tokens", 120},
                                                  {"stream", stream},
                                                  {"guided_regex", pattern}});
    };
    // The message the response (or its chunks, joined) carries.
    const auto message = [&](const httplib::Result& res, Json* finish_reason) {
      EXPECT_TRUE(res && res->status == 200) << (res ? res->body : "no response");
      if (!stream) {
        const Json choice = Json::parse(res->body)["choices"][0];
        *finish_reason = choice["finish_reason"];
        return choice["message"];
      }
      Json joined = {{"content", ""}};
      for (const Json& chunk : ParseEvents(res->body).chunks) {
        for (const Json& c : chunk["choices"]) {
          if (c["delta"].contains("content")) {
            joined["content"] =
                joined["content"].get<std::string>() + c["delta"]["content"].get<std::string>();
          }
          if (c["delta"].contains("tool_calls")) joined["tool_calls"] = c["delta"]["tool_calls"];
          if (!c["finish_reason"].is_null()) *finish_reason = c["finish_reason"];
        }
      }
      // Streamed text cannot take back the whitespace before a call.
      joined["content"] = absl::StripTrailingAsciiWhitespace(joined["content"].get<std::string>());
      if (joined["content"] == "") joined["content"] = nullptr;
      return joined;
    };
    Json finish_reason;
    const Json called = message(post("Let me check\\.\n" + call), &finish_reason);
    EXPECT_EQ(finish_reason, "tool_calls");
    EXPECT_EQ(called["content"], "Let me check.");
    ASSERT_EQ(called["tool_calls"].size(), 1u) << called;
    EXPECT_EQ(called["tool_calls"][0]["function"]["name"], "get_weather");
    EXPECT_EQ(Json::parse(called["tool_calls"][0]["function"]["arguments"].get<std::string>()),
              Json({{"city", "Oslo"}}));
    const Json unknown =
        message(post(R"(<tool_call>\n\{"name": "nope", "arguments": \{\}\}\n</tool_call>)"),
                &finish_reason);
    EXPECT_EQ(finish_reason, "stop");
    EXPECT_FALSE(unknown.contains("tool_calls"));
    EXPECT_EQ(unknown["content"],
              "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>");
    const Json text = message(post("Sunny"), &finish_reason);
    EXPECT_EQ(finish_reason, "stop");
    EXPECT_EQ(text["content"], "Sunny");
    EXPECT_FALSE(text.contains("tool_calls"));
  }
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

// /tokenize and /detokenize answer with the served tokenizer's ids and text,
// behind the API key like /v1.
TEST_F(HttpServerTest, TokenizerRoutes) {
  HttpServerOptions options;
  options.api_key = "k";
  StartTextServer(options);
  const Tokenizer* tokenizer = byte_tokenizer_.get();
  const httplib::Headers auth = {{"Authorization", "Bearer k"}};
  ExpectError(Post("/tokenize", {{"prompt", "hi"}}), 401, "invalid_request_error",
              "missing API key");
  auto res = Post("/tokenize", {{"prompt", "hi"}}, auth);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EncodeOptions encode;
  encode.add_bos = tokenizer->add_bos();
  encode.parse_special = true;
  const std::vector<int32_t> ids = *tokenizer->Encode("hi", encode);
  const Json body = Json::parse(res->body);
  EXPECT_EQ(body["tokens"], Json(ids));
  EXPECT_EQ(body["count"], ids.size());
  EXPECT_EQ(body["max_model_len"], kContext);
  const std::vector<int32_t> h_i = {'h', 'i'};
  auto text = Post("/detokenize", {{"tokens", h_i}}, auth);
  ASSERT_TRUE(text);
  ASSERT_EQ(text->status, 200) << text->body;
  EXPECT_EQ(Json::parse(text->body)["prompt"], "hi");
  ExpectError(Post("/detokenize", {{"tokens", {1, 9999}}}, auth), 400, "invalid_request_error",
              "tokens[1] = 9999 is outside", "tokens");
  ExpectError(client_->Get("/tokenize"), 405, "invalid_request_error", "use POST");
}

TEST_F(HttpServerTest, ChatWithATokenizer) {
  StartTextServer();
  const Json messages = Json::array({Json{{"role", "user"}, {"content", "hi"}}});
  auto res =
      Post("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json body = Json::parse(res->body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_TRUE(absl::StartsWith(body["id"].get<std::string>(), "chatcmpl-"));
  EXPECT_EQ(body["choices"][0]["message"]["role"], "assistant");
  // "<s>[INST] hi [/INST]": BOS and 17 bytes.
  EXPECT_EQ(body["usage"]["prompt_tokens"], 18);
  const auto ids = body["choices"][0]["token_ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> prompt = {256};
  for (char c : std::string("[INST] hi [/INST]")) prompt.push_back(static_cast<uint8_t>(c));
  const std::vector<int32_t> greedy = Greedy(prompt, 8);
  // Generation stops at EOS (257) if the model happens to produce it.
  ASSERT_FALSE(ids.empty());
  EXPECT_THAT(ids, ElementsAreArray(greedy.begin(), greedy.begin() + ids.size()));
  std::vector<int32_t> decodable;
  for (int32_t id : ids) {
    if (id < byte_tokenizer_->vocab_size()) decodable.push_back(id);
  }
  DecodeOptions decode;
  EXPECT_EQ(body["choices"][0]["message"]["content"], *byte_tokenizer_->Decode(decodable, decode));

  auto stream =
      Post("/v1/chat/completions",
           {{"messages", messages}, {"max_tokens", 8}, {"temperature", 0}, {"stream", true}});
  ASSERT_TRUE(stream);
  ASSERT_EQ(stream->status, 200) << stream->body;
  const Events events = ParseEvents(stream->body);
  ASSERT_TRUE(events.done);
  ASSERT_GE(events.chunks.size(), 2u);
  EXPECT_EQ(events.chunks[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(events.chunks[0]["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  for (const Json& chunk : events.chunks) {
    const Json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(content, body["choices"][0]["message"]["content"]);
  EXPECT_EQ(StreamedIds(events), ids);
}

TEST_F(HttpServerTest, StopStringEndsTheRequestAsStopped) {
  StartTextServer();
  // The first generated ASCII byte (ids below 128 are one-byte characters)
  // becomes the stop string; the tiny model's greedy run has one early.
  const std::vector<int32_t> greedy = Greedy(kPrompt, 64);
  size_t stop_at = 0;
  while (stop_at < greedy.size() && greedy[stop_at] >= 128) ++stop_at;
  ASSERT_LT(stop_at, greedy.size()) << "no ASCII byte in the first 64 greedy tokens";
  const std::string stop(1, static_cast<char>(greedy[stop_at]));
  // A long max_tokens, so the executor is still running when the text matches.
  auto res =
      Post("/v1/completions",
           {{"prompt", kPrompt}, {"max_tokens", kLongTokens}, {"temperature", 0}, {"stop", stop}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const Json body = Json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop") << res->body;
  EXPECT_EQ(body["choices"][0]["text"].get<std::string>().find(stop), std::string::npos);
  // The executor ended the request as stopped, not aborted (the metric the
  // operators read), and freed everything.
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
  EXPECT_EQ(executor_->stats().num_kv_blocks_used, 0);
  const std::string metrics = metrics_->Serialize();
  EXPECT_EQ(MetricValue(metrics, "herd:request_success_total{", "finished_reason=\"stop\""), 1);
  EXPECT_EQ(MetricValue(metrics, "herd:request_success_total{", "finished_reason=\"abort\""), 0);
}

TEST_F(HttpServerTest, RequestErrorsAreOpenAiJson) {
  StartServer();
  ExpectError(client_->Post("/v1/completions", "{\"prompt\": [1,", "application/json"), 400,
              "invalid_request_error", "not valid JSON");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", "many"}}), 400,
              "invalid_request_error", "'max_tokens' must be an integer", "max_tokens");
  ExpectError(Post("/v1/completions", {{"prompt", {1, 512}}}), 400, "invalid_request_error",
              "prompt[1] = 512 is outside the vocabulary [0, 512)", "prompt");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", kContext}}), 400,
              "invalid_request_error", "maximum context length is 32768 tokens", "max_tokens");
  ExpectError(Post("/v1/completions", {{"prompt", "hello"}}), 400, "invalid_request_error",
              "has no tokenizer", "prompt");
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"n", 0}}), 400,
              "invalid_request_error", "must be >= 1", "n");
  auto other = Post("/v1/completions", {{"model", "gpt-4"}, {"prompt", kPrompt}});
  ExpectError(other, 404, "invalid_request_error", "The model `gpt-4` does not exist", "model");
  EXPECT_EQ(Json::parse(other->body)["error"]["code"], "model_not_found");
  ExpectError(Post("/v1/chat/completions",
                   {{"messages", Json::array({Json{{"role", "user"}, {"content", "x"}}})}}),
              400, "invalid_request_error", "has no tokenizer, so it cannot chat");
  // Nothing was left behind in the executor.
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

TEST_F(HttpServerTest, UnknownPathsAndMethods) {
  StartServer();
  ExpectError(client_->Get("/v1/nothing"), 404, "invalid_request_error",
              "Invalid URL (GET /v1/nothing)");
  ExpectError(client_->Post("/v2/completions", "{}", "application/json"), 404,
              "invalid_request_error", "Invalid URL (POST /v2/completions)");
  auto get = client_->Get("/v1/completions");
  ExpectError(get, 405, "invalid_request_error", "method GET is not allowed on /v1/completions");
  EXPECT_EQ(get->get_header_value("Allow"), "POST");
  auto post = client_->Post("/health", "", "text/plain");
  ExpectError(post, 405, "invalid_request_error", "use GET");
  EXPECT_EQ(post->get_header_value("Allow"), "GET");
  ExpectError(client_->Delete("/v1/models"), 405, "invalid_request_error", "method DELETE");
}

TEST_F(HttpServerTest, BodyLimit) {
  HttpServerOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  Json big = {{"prompt", kPrompt}, {"user", std::string(2000, 'x')}};
  ExpectError(Post("/v1/completions", big), 413, "invalid_request_error",
              "the request body is larger than 1024 bytes");
  // Just under the limit is fine.
  Json fits = {{"prompt", kPrompt}, {"max_tokens", 1}};
  fits["user"] = std::string(1024 - fits.dump().size() - 10, 'x');
  auto ok = Post("/v1/completions", fits);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  // A chunked upload is held to the limit as it arrives. The server stops
  // reading at the limit, so the client may see the connection reset
  // instead of the answer; if an answer comes, it is 413.
  std::string chunked_body = big.dump();
  auto chunked = Client()->Post(
      "/v1/completions",
      [&](size_t offset, httplib::DataSink& sink) {
        sink.write(chunked_body.data(), chunked_body.size());
        sink.done();
        return true;
      },
      "application/json");
  if (chunked) {
    EXPECT_EQ(chunked->status, 413) << chunked->body;
  }
}

TEST_F(HttpServerTest, ApiKey) {
  HttpServerOptions options;
  options.api_key = "secret";
  StartServer(options);
  const Json request = {{"prompt", kPrompt}, {"max_tokens", 1}};
  auto missing = Post("/v1/completions", request);
  ExpectError(missing, 401, "invalid_request_error", "missing API key");
  EXPECT_EQ(Json::parse(missing->body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(missing->get_header_value("WWW-Authenticate"), "Bearer");
  ExpectError(Post("/v1/completions", request, {{"Authorization", "Bearer wrong"}}), 401,
              "invalid_request_error", "invalid API key");
  ExpectError(Post("/v1/completions", request, {{"Authorization", "secret"}}), 401,
              "invalid_request_error", "invalid API key");
  ExpectError(client_->Get("/v1/models"), 401, "invalid_request_error", "missing API key");
  auto ok = Post("/v1/completions", request, {{"Authorization", "Bearer secret"}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  // Probes and metrics stay open.
  EXPECT_EQ(client_->Get("/health")->status, 200);
  EXPECT_EQ(client_->Get("/ready")->status, 200);
  EXPECT_EQ(client_->Get("/metrics")->status, 200);
}

TEST_F(HttpServerTest, ModelsProbesAndMetrics) {
  StartServer();
  auto models = client_->Get("/v1/models");
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200);
  const Json list = Json::parse(models->body);
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], kModelName);
  EXPECT_EQ(list["data"][0]["max_model_len"], kContext);
  EXPECT_EQ(list["data"][0]["vocab_size"], model_->spec.vocab_size);

  auto health = client_->Get("/health");
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "ok\n");
  EXPECT_EQ(client_->Get("/ready")->status, 200);

  ASSERT_EQ(Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", 3}})->status, 200);
  auto metrics = client_->Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->get_header_value("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(metrics->body, HasSubstr("herd:request_success_total"));
  EXPECT_THAT(metrics->body, HasSubstr("herd:generation_tokens_total"));
}

TEST_F(HttpServerTest, DrainRefusesNewRequests) {
  StartServer();
  server_->BeginDrain();
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}}), 503, "service_unavailable",
              "shutting down");
  ExpectError(client_->Get("/v1/models"), 503, "service_unavailable", "shutting down");
  EXPECT_EQ(client_->Get("/ready")->status, 503);
  EXPECT_EQ(client_->Get("/health")->status, 200);
  EXPECT_EQ(client_->Get("/metrics")->status, 200);
  // Once the executor is gone, /health says so.
  ASSERT_TRUE(executor_->Shutdown(absl::Seconds(5)).ok());
  auto health = client_->Get("/health");
  EXPECT_EQ(health->status, 503);
  EXPECT_THAT(health->body, HasSubstr("unhealthy"));
}

TEST_F(HttpServerTest, FullQueueIs429WithRetryAfter) {
  StartWithOneSlotTaken(/*max_waiting=*/1);
  // The second waits behind the first, which runs alone: the queue is full.
  GenerationRequest long_request;
  long_request.prompt_ids = kPrompt;
  long_request.max_tokens = kLongTokens;
  const absl::StatusOr<RequestId> waiting = executor_->Enqueue(long_request);
  ASSERT_TRUE(waiting.ok()) << waiting.status();
  auto res = Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", 2}});
  ExpectError(res, 429, "server_overloaded", "the request queue is full");
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
}

TEST_F(HttpServerTest, RequestTimeoutIs504) {
  HttpServerOptions options;
  options.request_timeout = absl::Milliseconds(50);
  StartServer(options);
  ExpectError(Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", kLongTokens}}), 504,
              "timeout_error", "");
  auto stream =
      Post("/v1/completions", {{"prompt", kPrompt}, {"max_tokens", kLongTokens}, {"stream", true}});
  ASSERT_TRUE(stream);
  EXPECT_EQ(stream->status, 200);
  const Events events = ParseEvents(stream->body);
  EXPECT_TRUE(events.done);
  ASSERT_FALSE(events.chunks.empty());
  EXPECT_EQ(events.chunks.back()["error"]["type"], "timeout_error") << stream->body;
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
}

TEST_F(HttpServerTest, ClientDisconnectCancelsTheStream) {
  StartServer();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = Json({{"prompt", kPrompt}, {"max_tokens", kLongTokens}, {"stream", true}}).dump();
  req.set_header("Content-Type", "application/json");
  int num_chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
    return ++num_chunks < 3;  // hang up after a few chunks
  };
  const absl::Time start = absl::Now();
  auto res = Client()->send(req);
  EXPECT_FALSE(res);
  EXPECT_EQ(num_chunks, 3);
  // The request is cancelled well before it could have finished.
  ExpectOneAbortedRequestSince(start);
}

TEST_F(HttpServerTest, ClientDisconnectCancelsANonStreamingRequest) {
  StartServer();
  // The client gives up long before 30000 tokens could be generated; the
  // server notices the closed socket and cancels the request.
  std::unique_ptr<httplib::Client> impatient = Client();
  impatient->set_read_timeout(0, 300000);  // 0.3 s
  const absl::Time start = absl::Now();
  auto res = impatient->Post("/v1/completions",
                             Json({{"prompt", kPrompt}, {"max_tokens", kLongTokens}}).dump(),
                             "application/json");
  EXPECT_FALSE(res);
  impatient.reset();  // closes the connection
  ExpectOneAbortedRequestSince(start);
}

TEST_F(HttpServerTest, StopEndsOpenStreams) {
  StartServer();
  std::atomic<bool> first_chunk{false};
  std::string body;
  std::thread reader([&] {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = Json({{"prompt", kPrompt}, {"max_tokens", kLongTokens}, {"stream", true}}).dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
      body.append(data, size);
      first_chunk = true;
      return true;
    };
    Client()->send(req);
  });
  while (!first_chunk) absl::SleepFor(absl::Milliseconds(1));
  const absl::Time start = absl::Now();
  server_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  reader.join();
  const Events events = ParseEvents(body);
  EXPECT_TRUE(events.done);
  ASSERT_FALSE(events.chunks.empty());
  EXPECT_EQ(events.chunks.back()["error"]["type"], "service_unavailable") << body;
  EXPECT_TRUE(WaitIdle(absl::Seconds(5)));
  server_->Stop();  // idempotent
}

TEST_F(HttpServerTest, SixtyFourConcurrentStreams) {
  StartServer();
  constexpr int kClients = 64;
  std::vector<std::thread> clients;
  std::vector<int> statuses(kClients, 0);
  std::vector<size_t> num_tokens(kClients, 0);
  std::vector<int> done(kClients, 0);
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto client = Client();
      auto res = client->Post(
          "/v1/completions",
          Json({{"prompt", {1, 2, 3 + i}}, {"max_tokens", 8}, {"stream", true}}).dump(),
          "application/json");
      if (!res) {
        ADD_FAILURE() << "client " << i << ": " << httplib::to_string(res.error());
        return;
      }
      statuses[i] = res->status;
      const Events events = ParseEvents(res->body);
      num_tokens[i] = StreamedIds(events).size();
      done[i] = events.done;
    });
  }
  for (std::thread& client : clients) client.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(statuses[i], 200) << i;
    EXPECT_EQ(num_tokens[i], 8u) << i;
    EXPECT_TRUE(done[i]) << i;
  }
}

TEST_F(HttpServerTest, StartFailsOnATakenPort) {
  StartServer();
  HttpServerOptions options;
  options.model_name = kModelName;
  options.vocab_size = 512;
  options.max_context_tokens = kContext;
  options.port = server_->port();
  auto second = HttpServer::Create(executor_.get(), nullptr, options);
  ASSERT_TRUE(second.ok());
  const absl::Status status = (*second)->Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("127.0.0.1:", server_->port())));
  EXPECT_EQ((*second)->port(), 0);
  // Without metrics, /metrics is 404; a second Start is refused.
  options.port = 0;
  auto bare = HttpServer::Create(executor_.get(), nullptr, options);
  ASSERT_TRUE(bare.ok());
  ASSERT_TRUE((*bare)->Start().ok());
  EXPECT_EQ((*bare)->Start().code(), absl::StatusCode::kFailedPrecondition);
  httplib::Client client("127.0.0.1", (*bare)->port());
  ExpectError(client.Get("/metrics"), 404, "invalid_request_error", "exports no metrics");
}

TEST_F(HttpServerTest, CreateValidatesOptions) {
  StartServer();
  HttpServerOptions good;
  good.model_name = kModelName;
  good.vocab_size = 512;
  good.max_context_tokens = kContext;
  EXPECT_TRUE(HttpServer::Create(executor_.get(), nullptr, good).ok());
  EXPECT_EQ(HttpServer::Create(nullptr, nullptr, good).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto expect_invalid = [&](HttpServerOptions options) {
    EXPECT_EQ(HttpServer::Create(executor_.get(), nullptr, options).status().code(),
              absl::StatusCode::kInvalidArgument);
  };
  HttpServerOptions bad = good;
  bad.model_name.clear();
  expect_invalid(bad);
  bad = good;
  bad.vocab_size = 0;
  expect_invalid(bad);
  bad = good;
  bad.max_context_tokens = -1;
  expect_invalid(bad);
  bad = good;
  bad.num_http_threads = 0;
  expect_invalid(bad);
  bad = good;
  bad.max_body_bytes = 0;
  expect_invalid(bad);
  bad = good;
  bad.port = 70000;
  expect_invalid(bad);
}

}  // namespace
}  // namespace herd
