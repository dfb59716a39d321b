// herd bench serve: a load generator for `herd serve` (or any OpenAI-compatible
// server), in the manner of vLLM's benchmark_serving.py. C client threads keep
// one /v1/completions request each in flight until R requests are done; each
// request is P random prompt ids and asks for G tokens at temperature 0. The
// table reports throughput and the latency percentiles of time to first
// token (TTFT), inter-token latency (ITL) and the whole request (E2E).
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "core/status.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/sse_client.h"

namespace herd {
namespace {

// Prompt ids are drawn from [kFirstPromptId, vocab): the lowest ids are the
// special tokens (unk, BOS, EOS) of llama-family vocabularies.
constexpr int32_t kFirstPromptId = 3;
// Without --vocab and a vocab_size in /v1/models.
constexpr int64_t kDefaultVocab = 1000;
// Ids are int32 on the wire and in the engine.
constexpr int64_t kMaxVocab = int64_t{1} << 31;
constexpr int64_t kMaxPromptIds = int64_t{1} << 29;
// A 429 without a usable Retry-After waits this long; a longer one is capped.
constexpr double kDefaultRetryAfterSeconds = 1.0;
constexpr double kMaxRetryAfterSeconds = 60.0;
// Distinct error messages listed: the table's, the JSON's.
constexpr size_t kMaxTableErrors = 10;
constexpr size_t kMaxJsonErrors = 100;

const std::vector<FlagSpec> kBenchServeFlags = {
    {"url", true, "server base URL, e.g. http://127.0.0.1:8000 (required)"},
    {"concurrency", true, "client threads, each keeping one request in flight (default 8)"},
    {"requests", true, "requests in all (default 64)"},
    {"prompt-len", true, "prompt tokens of each request (default 128)"},
    {"prefix-len", true,
     "tokens of one shared prefix before every prompt, as a system prompt (default 0)"},
    {"json-mode", false, "ask for JSON output (response_format json_object)"},
    {"json-schema", true,
     "ask for output that follows the JSON schema in this file (response_format json_schema)"},
    {"gen-len", true, "max_tokens of each request (default 128)"},
    {"api-key", true, "sent as 'Authorization: Bearer KEY'"},
    {"vocab", true,
     "prompt ids are drawn from [3, V) (default: vocab_size from /v1/models if the server "
     "reports it, else 1000)"},
    {"model-name", true, "the requests' model (default: the first of /v1/models)"},
    {"seed", true, "seed of the random prompts (default 1)"},
    {"stream", true,
     "true: SSE streaming, TTFT and ITL measured; false: one JSON response each (default true)"},
    {"timeout-s", true, "deadline of one request in seconds (default 600)"},
    {"max-retries", true, "retries of one request answered 429 before it fails (default 100)"},
    {"json", false, "print one JSON object instead of the table"},
    {"help", false, "show this help"},
};

struct BenchServeOptions {
  std::string url;
  int64_t concurrency = 8;
  int64_t num_requests = 64;
  int64_t prompt_tokens = 128;
  // The same random ids before every prompt (vLLM's benchmark --prefix-len).
  int64_t prefix_tokens = 0;
  // response_format {"type": "json_object"} on every request.
  bool json_mode = false;
  // Or {"type": "json_schema"} with this schema (keys in the file's order);
  // null: none.
  nlohmann::ordered_json json_schema;
  // max_tokens. Requests ask for ignore_eos (herd's and vLLM's extension;
  // OpenAI ignores unknown fields), but a server without it may stop at EOS,
  // so the tokens that came back are what the throughput counts.
  int64_t gen_tokens = 128;
  std::string api_key;
  int64_t vocab_size = 0;  // 0: ask /v1/models
  std::string model_name;  // empty: ask /v1/models
  uint64_t seed = 1;
  bool stream = true;
  double timeout_seconds = 600;
  int64_t max_retries = 100;
};

// What one request measured. Latencies are those of the attempt the server
// accepted; time spent backing off after a 429 counts in the run's duration
// only.
struct RequestResult {
  bool ok = false;
  std::string error;  // when !ok
  int64_t output_tokens = 0;
  // usage.prompt_tokens_details.cached_tokens, when the server sends it.
  int64_t cached_tokens = 0;
  int64_t num_retries = 0;  // 429s before the accepted attempt
  double ttft_seconds = 0;  // streaming: to the first chunk with tokens; else = e2e
  double e2e_seconds = 0;
  // One entry per token of every chunk after the first: the gap between its
  // chunk and the one before, divided by the tokens in its chunk. Tokens that
  // came in the first chunk have none (no gap was seen).
  std::vector<double> itl_seconds;
};

struct LatencyStats {
  int64_t num_samples = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;  // seconds
};

// Percentile with linear interpolation between closest ranks (numpy's
// default), over sorted values.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (rank - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

LatencyStats ComputeLatencyStats(std::vector<double> values) {
  LatencyStats s;
  s.num_samples = static_cast<int64_t>(values.size());
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (const double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.p50 = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p99 = Percentile(values, 99);
  return s;
}

// The message of an OpenAI error body ({"error": {"message": ...}}), else the
// start of the body.
std::string ErrorMessage(const std::string& body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("error")) {
    const nlohmann::json& e = j["error"];
    if (e.is_object() && e.contains("message") && e["message"].is_string()) {
      return e["message"].get<std::string>();
    }
    if (e.is_string()) return e.get<std::string>();
  }
  std::string start = body.substr(0, 200);
  for (char& c : start) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return start.empty() ? "(empty body)" : start;
}

// Tokens a completion (or a streamed chunk of one) carries: the ids of
// choices[*].token_ids (herd serve's extension). Servers that send no ids
// count one token per choice with non-empty text, as benchmark_serving.py
// does for streams.
int64_t CountTokens(const nlohmann::json& completion) {
  if (!completion.is_object() || !completion.contains("choices")) return 0;
  const nlohmann::json& choices = completion["choices"];
  if (!choices.is_array()) return 0;
  int64_t num_tokens = 0;
  for (const nlohmann::json& choice : choices) {
    if (!choice.is_object()) continue;
    if (choice.contains("token_ids") && choice["token_ids"].is_array()) {
      num_tokens += static_cast<int64_t>(choice["token_ids"].size());
    } else if (choice.contains("text") && choice["text"].is_string() &&
               !choice["text"].get<std::string>().empty()) {
      num_tokens += 1;
    }
  }
  return num_tokens;
}

// The server's own count, usage.completion_tokens, when the object has one.
std::optional<int64_t> UsageCompletionTokens(const nlohmann::json& completion) {
  if (completion.is_object() && completion.contains("usage") && completion["usage"].is_object() &&
      completion["usage"].contains("completion_tokens") &&
      completion["usage"]["completion_tokens"].is_number_integer()) {
    return completion["usage"]["completion_tokens"].get<int64_t>();
  }
  return std::nullopt;
}

// Prompt tokens the server's prefix cache held:
// usage.prompt_tokens_details.cached_tokens (OpenAI's; vLLM's and herd's), when
// the object has it.
std::optional<int64_t> UsageCachedTokens(const nlohmann::json& completion) {
  if (!completion.is_object() || !completion.contains("usage")) return std::nullopt;
  const nlohmann::json& usage = completion["usage"];
  if (usage.is_object() && usage.contains("prompt_tokens_details") &&
      usage["prompt_tokens_details"].is_object() &&
      usage["prompt_tokens_details"].contains("cached_tokens") &&
      usage["prompt_tokens_details"]["cached_tokens"].is_number_integer()) {
    return usage["prompt_tokens_details"]["cached_tokens"].get<int64_t>();
  }
  return std::nullopt;
}

// Tokens of a whole (non-streamed) completion: usage.completion_tokens, else
// as CountTokens.
int64_t CountCompletionTokens(const nlohmann::json& completion) {
  return UsageCompletionTokens(completion).value_or(CountTokens(completion));
}

// Seconds a 429's Retry-After asks for (delay-seconds; an HTTP-date or
// anything else gets the default), capped.
double RetryAfterSeconds(const std::string& header) {
  double seconds = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(header), &seconds) || !(seconds >= 0)) {
    return kDefaultRetryAfterSeconds;
  }
  return std::min(seconds, kMaxRetryAfterSeconds);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Sends one request until it is accepted (retrying 429s) and records what it
// measured. Every failure ends up in result->error; nothing is thrown.
void RunRequest(HttpClient& client, const BenchServeOptions& options, const std::string& body,
                RequestResult* result) {
  for (int64_t attempt = 0;; ++attempt) {
    const auto start = std::chrono::steady_clock::now();
    auto last_chunk = start;
    bool have_first = false;
    bool done = false;
    std::string stream_error;
    int64_t output_tokens = 0;
    // The server's own count (usage.completion_tokens of the last chunk), when
    // it sends one: a server that holds back the text of a token ending in
    // the middle of a UTF-8 character streams a chunk with no text for it.
    int64_t usage_tokens = 0;
    result->itl_seconds.clear();
    const SseEventFn on_event = [&](absl::string_view data) {
      const auto now = std::chrono::steady_clock::now();
      if (data == "[DONE]") {
        done = true;
        return true;
      }
      const nlohmann::json chunk = nlohmann::json::parse(data, nullptr, false);
      if (chunk.is_discarded()) {
        stream_error = absl::StrCat("malformed SSE event: ", data.substr(0, 200));
        return false;
      }
      if (chunk.is_object() && chunk.contains("error")) {
        stream_error = absl::StrCat("error in the stream: ", ErrorMessage(std::string(data)));
        return false;
      }
      if (const std::optional<int64_t> usage = UsageCompletionTokens(chunk)) usage_tokens = *usage;
      if (const std::optional<int64_t> cached = UsageCachedTokens(chunk)) {
        result->cached_tokens = *cached;
      }
      const int64_t n = CountTokens(chunk);
      if (n == 0) return true;  // a role, usage or finish-only chunk
      if (!have_first) {
        result->ttft_seconds = std::chrono::duration<double>(now - start).count();
        have_first = true;
      } else {
        const double gap = std::chrono::duration<double>(now - last_chunk).count();
        result->itl_seconds.insert(result->itl_seconds.end(), n, gap / static_cast<double>(n));
      }
      last_chunk = now;
      output_tokens += n;
      return true;
    };
    const absl::StatusOr<HttpResponse> response = client.Post("/v1/completions", body, on_event);
    if (!response.ok()) {
      result->error =
          stream_error.empty() ? std::string(response.status().message()) : stream_error;
      return;
    }
    if (response->status == 429) {
      if (attempt >= options.max_retries) {
        result->error =
            absl::StrCat("HTTP 429 after ", attempt, " retries: ", ErrorMessage(response->body));
        return;
      }
      ++result->num_retries;
      std::this_thread::sleep_for(
          std::chrono::duration<double>(RetryAfterSeconds(response->retry_after)));
      continue;
    }
    result->e2e_seconds = SecondsSince(start);
    if (response->status != 200) {
      result->error = absl::StrCat("HTTP ", response->status, ": ", ErrorMessage(response->body));
      return;
    }
    if (options.stream) {
      if (response->content_type.rfind("text/event-stream", 0) != 0) {
        result->error =
            absl::StrCat("asked for a stream, got Content-Type '", response->content_type, "'");
        return;
      }
      if (!done) {
        result->error = response->truncated_event ? "the stream ended in the middle of an event"
                                                  : "the stream ended without 'data: [DONE]'";
        return;
      }
      if (usage_tokens > 0) output_tokens = usage_tokens;
    } else {
      const nlohmann::json completion = nlohmann::json::parse(response->body, nullptr, false);
      if (!completion.is_object()) {
        result->error = absl::StrCat("malformed response: ", ErrorMessage(response->body));
        return;
      }
      output_tokens = CountCompletionTokens(completion);
      result->cached_tokens = UsageCachedTokens(completion).value_or(0);
      result->ttft_seconds = result->e2e_seconds;
    }
    if (output_tokens == 0) {
      result->error = "the response carried no tokens";
      return;
    }
    result->output_tokens = output_tokens;
    result->ok = true;
    return;
  }
}

// Fills in the model name and vocabulary the flags left open from GET
// /v1/models: data[0].id, and a vocab_size field when the server reports one.
absl::Status ResolveModel(HttpClient& client, BenchServeOptions* options,
                          std::string* vocab_source) {
  if (!options->model_name.empty() && options->vocab_size > 0) return absl::OkStatus();
  absl::StatusOr<HttpResponse> response = client.Get("/v1/models");
  if (!response.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the server: ", response.status().message()));
  }
  const nlohmann::json j = nlohmann::json::parse(response->body, nullptr, false);
  const bool has_model = response->status == 200 && j.is_object() && j.contains("data") &&
                         j["data"].is_array() && !j["data"].empty() && j["data"][0].is_object() &&
                         j["data"][0].contains("id") && j["data"][0]["id"].is_string();
  if (options->model_name.empty()) {
    if (!has_model) {
      return absl::FailedPreconditionError(
          absl::StrCat("GET /v1/models named no model (HTTP ", response->status, ": ",
                       ErrorMessage(response->body), "); pass --model-name"));
    }
    options->model_name = j["data"][0]["id"].get<std::string>();
  }
  if (options->vocab_size == 0) {
    if (has_model && j["data"][0].contains("vocab_size") &&
        j["data"][0]["vocab_size"].is_number_integer() &&
        j["data"][0]["vocab_size"].get<int64_t>() > kFirstPromptId &&
        j["data"][0]["vocab_size"].get<int64_t>() <= kMaxVocab) {
      options->vocab_size = j["data"][0]["vocab_size"].get<int64_t>();
      *vocab_source = "from /v1/models";
    } else {
      options->vocab_size = kDefaultVocab;
      *vocab_source = "default; the server reports none";
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> ParseBool(const std::string& name, const std::string& value) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("--", name, " must be true or false, got '", value, "'"));
}

nlohmann::json LatencyJson(const LatencyStats& s) {
  return {{"samples", s.num_samples},
          {"mean_ms", 1e3 * s.mean},
          {"p50_ms", 1e3 * s.p50},
          {"p90_ms", 1e3 * s.p90},
          {"p99_ms", 1e3 * s.p99}};
}

std::string LatencyRow(const char* name, const LatencyStats& s) {
  if (s.num_samples == 0) {
    return absl::StrFormat("| %-10s | %9s | %9s | %9s | %9s |\n", name, "-", "-", "-", "-");
  }
  return absl::StrFormat("| %-10s | %9.2f | %9.2f | %9.2f | %9.2f |\n", name, 1e3 * s.mean,
                         1e3 * s.p50, 1e3 * s.p90, 1e3 * s.p99);
}

}  // namespace

absl::Status RunBenchServeCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kBenchServeFlags));
  if (flags.Has("help")) {
    out << "usage: herd bench serve --url URL [--concurrency 8] [--requests 64]\n"
        << "                        [--prompt-len 128] [--prefix-len 0] [--gen-len 128] "
           "[--json-mode | --json-schema FILE]\n"
        << "                        [--api-key K] [--vocab V]\n"
        << "                        [--seed 1] [--stream true] [--json]\n"
        << FlagsHelp(kBenchServeFlags)
        << "Each request is /v1/completions with random prompt ids, temperature 0, no stop ids\n"
        << "and ignore_eos (streamed: with stream_options.include_usage); a 429 is retried\n"
        << "after its Retry-After. Output tokens: the server's usage.completion_tokens when it\n"
        << "sends one, else the tokens of the chunks. TTFT: to the first chunk with tokens;\n"
        << "ITL: between chunks, divided by the tokens in a chunk; E2E: the whole request.\n";
    return absl::OkStatus();
  }
  if (!flags.Has("url")) return absl::InvalidArgumentError("--url is required");
  BenchServeOptions options;
  options.url = flags.GetString("url");
  options.api_key = flags.GetString("api-key");
  options.model_name = flags.GetString("model-name");
  HERD_ASSIGN_OR_RETURN(options.concurrency, flags.GetInt("concurrency", options.concurrency));
  HERD_ASSIGN_OR_RETURN(options.num_requests, flags.GetInt("requests", options.num_requests));
  HERD_ASSIGN_OR_RETURN(options.prompt_tokens, flags.GetInt("prompt-len", options.prompt_tokens));
  HERD_ASSIGN_OR_RETURN(options.prefix_tokens, flags.GetInt("prefix-len", options.prefix_tokens));
  options.json_mode = flags.Has("json-mode");
  if (flags.Has("json-schema")) {
    if (options.json_mode) {
      return absl::InvalidArgumentError("give --json-mode or --json-schema, not both");
    }
    const std::string path = flags.GetString("json-schema");
    HERD_ASSIGN_OR_RETURN(const std::string text, ReadFlagFile("--json-schema", path));
    options.json_schema = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (options.json_schema.is_discarded() || !options.json_schema.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--json-schema ", path, ": not a JSON object (a JSON schema)"));
    }
  }
  HERD_ASSIGN_OR_RETURN(options.gen_tokens, flags.GetInt("gen-len", options.gen_tokens));
  HERD_ASSIGN_OR_RETURN(options.vocab_size, flags.GetInt("vocab", 0));
  HERD_ASSIGN_OR_RETURN(options.seed, flags.GetUint("seed", options.seed));
  HERD_ASSIGN_OR_RETURN(options.timeout_seconds,
                        flags.GetDouble("timeout-s", options.timeout_seconds));
  HERD_ASSIGN_OR_RETURN(options.max_retries, flags.GetInt("max-retries", options.max_retries));
  HERD_ASSIGN_OR_RETURN(options.stream, ParseBool("stream", flags.GetString("stream", "true")));
  if (options.concurrency < 1 || options.concurrency > 4096 || options.num_requests < 1 ||
      options.num_requests > 10000000 || options.prompt_tokens < 1 ||
      options.prompt_tokens > 10000000 || options.prefix_tokens < 0 ||
      options.prefix_tokens > 10000000 || options.gen_tokens < 1 || options.gen_tokens > 10000000 ||
      !(options.timeout_seconds > 0) || options.max_retries < 0 || options.max_retries > 1000000) {
    return absl::InvalidArgumentError(
        "--concurrency must be in [1, 4096], --requests, --prompt-len and --gen-len in "
        "[1, 10^7], --prefix-len in [0, 10^7], --timeout-s > 0, --max-retries in [0, 10^6]");
  }
  if (flags.Has("vocab") &&
      (options.vocab_size <= kFirstPromptId || options.vocab_size > kMaxVocab)) {
    return absl::InvalidArgumentError(absl::StrCat("--vocab must be in (", kFirstPromptId, ", ",
                                                   kMaxVocab, "] (ids below ", kFirstPromptId,
                                                   " are not drawn)"));
  }
  // The bodies are built before the clock starts; keep them to a few GiB.
  if (options.num_requests * (options.prefix_tokens + options.prompt_tokens) > kMaxPromptIds) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--requests x (--prefix-len + --prompt-len) must be <= ", kMaxPromptIds, " ids"));
  }
  // A server that closes a connection while a request is being written must
  // give this client an error, not kill it with SIGPIPE.
  signal(SIGPIPE, SIG_IGN);

  HttpClientOptions client_options;
  client_options.api_key = options.api_key;
  client_options.request_timeout = absl::Seconds(options.timeout_seconds);
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> probe,
                        HttpClient::Create(options.url, client_options));
  std::string vocab_source = "--vocab";
  HERD_RETURN_IF_ERROR(ResolveModel(*probe, &options, &vocab_source));
  probe.reset();

  // Every body is built before the clock starts.
  std::mt19937_64 rng(options.seed);
  std::uniform_int_distribution<int32_t> id_dist(kFirstPromptId,
                                                 static_cast<int32_t>(options.vocab_size - 1));
  std::vector<int32_t> prefix(options.prefix_tokens);
  for (int32_t& id : prefix) id = id_dist(rng);
  std::vector<std::string> bodies(options.num_requests);
  for (std::string& body : bodies) {
    std::vector<int32_t> prompt = prefix;
    for (int64_t i = 0; i < options.prompt_tokens; ++i) prompt.push_back(id_dist(rng));
    nlohmann::ordered_json json_body{{"model", options.model_name},
                                     {"prompt", prompt},
                                     {"max_tokens", options.gen_tokens},
                                     {"temperature", 0},
                                     {"ignore_eos", true},
                                     {"stream", options.stream}};
    if (options.stream) json_body["stream_options"] = {{"include_usage", true}};
    if (options.json_mode) json_body["response_format"] = {{"type", "json_object"}};
    if (!options.json_schema.is_null()) {
      json_body["response_format"] = {
          {"type", "json_schema"},
          {"json_schema", {{"name", "bench"}, {"schema", options.json_schema}}}};
    }
    body = json_body.dump();
  }

  std::vector<RequestResult> results(options.num_requests);
  std::atomic<int64_t> next_request{0};
  const int64_t num_threads = std::min(options.concurrency, options.num_requests);
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t t = 0; t < num_threads; ++t) {
    threads.emplace_back([&] {
      absl::StatusOr<std::unique_ptr<HttpClient>> client =
          HttpClient::Create(options.url, client_options);
      for (int64_t i = next_request++; i < options.num_requests; i = next_request++) {
        if (!client.ok()) {
          results[i].error = std::string(client.status().message());
          continue;
        }
        RunRequest(**client, options, bodies[i], &results[i]);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const double duration_seconds = SecondsSince(start);

  int64_t num_ok = 0, num_retries = 0, output_tokens = 0, cached_tokens = 0;
  std::vector<double> ttft, itl, e2e;
  std::map<std::string, int64_t> errors;
  for (const RequestResult& r : results) {
    num_retries += r.num_retries;
    if (!r.ok) {
      ++errors[r.error];
      continue;
    }
    ++num_ok;
    output_tokens += r.output_tokens;
    cached_tokens += r.cached_tokens;
    if (options.stream) {
      ttft.push_back(r.ttft_seconds);
      itl.insert(itl.end(), r.itl_seconds.begin(), r.itl_seconds.end());
    }
    e2e.push_back(r.e2e_seconds);
  }
  const int64_t num_failed = options.num_requests - num_ok;
  // The most frequent first.
  std::vector<std::pair<std::string, int64_t>> sorted_errors(errors.begin(), errors.end());
  std::stable_sort(sorted_errors.begin(), sorted_errors.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  const int64_t input_tokens = num_ok * (options.prefix_tokens + options.prompt_tokens);
  const LatencyStats ttft_stats = ComputeLatencyStats(std::move(ttft));
  const LatencyStats itl_stats = ComputeLatencyStats(std::move(itl));
  const LatencyStats e2e_stats = ComputeLatencyStats(std::move(e2e));
  const double request_throughput = num_ok / duration_seconds;
  const double output_throughput = output_tokens / duration_seconds;
  const double total_throughput = (input_tokens + output_tokens) / duration_seconds;

  if (flags.Has("json")) {
    nlohmann::json j;
    j["url"] = options.url;
    j["model"] = options.model_name;
    j["vocab"] = options.vocab_size;
    j["concurrency"] = options.concurrency;
    j["requests"] = options.num_requests;
    j["prompt_len"] = options.prompt_tokens;
    j["prefix_len"] = options.prefix_tokens;
    j["json_mode"] = options.json_mode;
    j["json_schema"] = !options.json_schema.is_null();
    j["gen_len"] = options.gen_tokens;
    j["stream"] = options.stream;
    j["seed"] = options.seed;
    j["completed"] = num_ok;
    j["failed"] = num_failed;
    j["retries_429"] = num_retries;
    j["duration_s"] = duration_seconds;
    j["total_input_tokens"] = input_tokens;
    j["total_output_tokens"] = output_tokens;
    j["total_cached_tokens"] = cached_tokens;
    j["request_throughput"] = request_throughput;
    j["output_throughput"] = output_throughput;
    j["total_token_throughput"] = total_throughput;
    j["ttft"] = LatencyJson(ttft_stats);
    j["itl"] = LatencyJson(itl_stats);
    j["e2e"] = LatencyJson(e2e_stats);
    j["errors"] = nlohmann::json::array();
    for (size_t i = 0; i < sorted_errors.size() && i < kMaxJsonErrors; ++i) {
      j["errors"].push_back(
          {{"message", sorted_errors[i].first}, {"count", sorted_errors[i].second}});
    }
    j["distinct_errors"] = sorted_errors.size();
    out << j.dump(2) << "\n";
  } else {
    out << absl::StrFormat("url       %s/v1/completions, model %s\n", options.url,
                           options.model_name);
    out << absl::StrFormat(
        "load      %d requests, %d at a time; prompt %d shared + %d ids in [%d, %d) (vocab %s), "
        "max_tokens %d, temperature 0%s, %s, seed %d\n\n",
        options.num_requests, num_threads, options.prefix_tokens, options.prompt_tokens,
        kFirstPromptId, options.vocab_size, vocab_source, options.gen_tokens,
        options.json_mode               ? ", JSON mode"
        : options.json_schema.is_null() ? ""
                                        : ", JSON schema",
        options.stream ? "streamed" : "not streamed", options.seed);
    out << "| requests ok | failed | 429 retries | duration s |    req/s | output tok/s | "
           "total tok/s |\n";
    out << "|------------:|-------:|------------:|-----------:|---------:|-------------:|"
           "------------:|\n";
    out << absl::StrFormat("| %11d | %6d | %11d | %10.3f | %8.2f | %12.2f | %11.2f |\n\n", num_ok,
                           num_failed, num_retries, duration_seconds, request_throughput,
                           output_throughput, total_throughput);
    out << "| latency ms |      mean |       p50 |       p90 |       p99 |\n";
    out << "|------------|----------:|----------:|----------:|----------:|\n";
    out << LatencyRow("TTFT", ttft_stats) << LatencyRow("ITL", itl_stats)
        << LatencyRow("E2E", e2e_stats);
    out << absl::StrFormat(
        "\ntokens    %d in (%d from the server's prefix cache), %d out (%.1f per request of %d "
        "asked)\n",
        input_tokens, cached_tokens, output_tokens,
        num_ok > 0 ? static_cast<double>(output_tokens) / num_ok : 0.0, options.gen_tokens);
    if (!sorted_errors.empty()) out << "errors:\n";
    for (size_t i = 0; i < sorted_errors.size() && i < kMaxTableErrors; ++i) {
      out << absl::StrFormat("  %d x %s\n", sorted_errors[i].second, sorted_errors[i].first);
    }
    if (sorted_errors.size() > kMaxTableErrors) {
      out << absl::StrFormat("  ... and %d other messages (--json lists %d)\n",
                             sorted_errors.size() - kMaxTableErrors, kMaxJsonErrors);
    }
  }
  if (num_ok == 0) {
    return absl::UnavailableError(
        absl::StrCat("all ", options.num_requests,
                     " requests failed; the most frequent error: ", sorted_errors.front().first));
  }
  return absl::OkStatus();
}

}  // namespace herd
