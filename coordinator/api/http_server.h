// The HTTP server of `herd serve`: OpenAI's completions and chat completions
// API over the executor, plus the probes and metrics an operator needs.
//
// Routes:
//   POST /v1/completions        text_completion, or server-sent events with "stream": true
//   POST /v1/chat/completions   chat.completion(.chunk); needs a tokenizer and a chat template
//   GET  /v1/models             the one served model
//   POST /tokenize, /detokenize vLLM's: text or messages to ids, ids to text
//   GET  /health                200 "ok" while the executor's step loop runs, else 503
//   GET  /ready                 200 "ready" while healthy and not draining, else 503
//   GET  /metrics               Prometheus text format 0.0.4 (ServingMetrics)
// Every error is OpenAI's JSON {"error": {"message", "type", "param", "code"}}
// with the HTTP status of ApiErrorFromStatus (openai_protocol.h); an unknown
// path gives 404, a known path with the wrong method 405, a body over
// max_body_bytes 413, a full executor queue 429 with `Retry-After: 1`, a
// draining server 503. docs/serving.md documents the API for clients.
//
// Each generation request is enqueued in the executor (one request per
// choice) and followed with AwaitResponses every 100 ms. A stream whose
// client goes away is cancelled at the next poll; a non-streaming request
// watches its client's socket (peer_socket.h) between polls and is cancelled
// when the client closes it.
//
// Thread-safety: BeginDrain and port may be called from any thread; Start and
// Stop from the owner's.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/api/guided_decoding.h"
#include "coordinator/api/openai_protocol.h"
#include "coordinator/metrics/serving_metrics.h"
#include "coordinator/scheduler/executor.h"
#include "model/tokenizer/tokenizer.h"

namespace httplib {
class ContentReader;
class DataSink;
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace herd {

struct HttpServerOptions {
  // 127.0.0.1 keeps the API on this machine; 0.0.0.0 serves every interface.
  std::string host = "127.0.0.1";
  // 0: the system picks a free port (port() tells which).
  int port = 0;
  // When set, /v1/* requires `Authorization: Bearer <api_key>` (401
  // otherwise); the probes and /metrics stay open.
  std::string api_key;
  // Larger request bodies are refused with 413 before they are read.
  int64_t max_body_bytes = int64_t{1} << 20;

  // The served model: its name in requests and responses, its vocabulary and
  // longest sequence (for validation), its tokenizer (borrowed, may be
  // nullptr: token ids only) and its chat template text (empty: no chat).
  std::string model_name;
  int64_t vocab_size = 0;
  int64_t max_context_tokens = 0;
  const Tokenizer* tokenizer = nullptr;
  std::string chat_template;

  // Connections served at once: cpp-httplib gives each one a thread for as
  // long as it is open, a stream included. Its default pool (about one thread
  // per core) would leave most of 64 concurrent streams queued.
  int num_http_threads = 256;
  // Deadline of each generation request, from its arrival (504 past it).
  absl::Duration request_timeout = absl::InfiniteDuration();
};

class HttpServer {
 public:
  // `executor` and `metrics` are borrowed and must outlive the server;
  // `metrics` may be nullptr (then /metrics is 404). InvalidArgument for an
  // empty model name, non-positive sizes or thread count.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Create(Executor* executor,
                                                            ServingMetrics* metrics,
                                                            const HttpServerOptions& options);
  // Stops.
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port and serves on a thread of its own; returns once
  // connections are accepted. Unavailable naming the address when it cannot
  // be bound (the port is taken); FailedPrecondition when called twice.
  absl::Status Start();
  // The bound port (the chosen one when options.port is 0); 0 before Start.
  int port() const { return port_.load(); }

  // From now on new /v1 requests get 503 and /ready says 503, while requests
  // already running finish. For a graceful shutdown: BeginDrain, then
  // Executor::Shutdown(drain timeout), then Stop.
  void BeginDrain();

  // Ends running requests (cancelled in the executor; non-streaming ones get
  // 503, streams an error event; up to 2 s is given for that), stops
  // accepting connections and joins the server's threads. Blocks up to the
  // keep-alive timeout (5 s) more while a client holds an idle connection.
  // Idempotent.
  void Stop();

 private:
  struct Generation;

  HttpServer(Executor* executor, ServingMetrics* metrics, const HttpServerOptions& options);
  void RegisterRoutes();

  // Admission of /v1 and the tokenizer routes: the API key and draining.
  // False when `res` is already an error.
  bool Admit(const httplib::Request& req, httplib::Response& res) const;
  // Reads a request body of at most max_body_bytes into `body`. False when
  // `res` is already an error (413, 400).
  bool ReadBody(const httplib::ContentReader& reader, httplib::Response& res,
                std::string* body) const;
  // /tokenize and /detokenize: `handle` (openai_protocol.h) turns the body
  // into the answer.
  void HandleTokenizer(const httplib::Request& req, httplib::Response& res,
                       const httplib::ContentReader& reader,
                       absl::StatusOr<std::string> (*handle)(absl::string_view, const ApiModel&));
  void HandleGeneration(const httplib::Request& req, httplib::Response& res,
                        const httplib::ContentReader& reader, ApiEndpoint endpoint);
  void CompleteNonStreaming(Generation& generation, const httplib::Request& req,
                            httplib::Response& res);
  // One call of a stream's content provider: waits for the next responses
  // and writes their events. False when the client is gone.
  bool WriteStreamEvents(Generation& generation, httplib::DataSink& sink);
  void HandleModels(const httplib::Request& req, httplib::Response& res) const;
  void HandleHealth(httplib::Response& res) const;
  void HandleReady(httplib::Response& res) const;
  void HandleMetrics(httplib::Response& res) const;

  // A fresh random number (response ids, default seeds).
  uint64_t NextRandom();

  Executor* const executor_;
  ServingMetrics* const metrics_;
  const HttpServerOptions options_;
  const ApiModel model_;
  // What each token adds to an output, and guided decoding's masks by
  // schema and by pattern; nullptr without a tokenizer.
  const std::unique_ptr<const TokenTexts> token_texts_;
  const std::unique_ptr<MaskCaches<JsonPrefix>> json_masks_;
  const std::unique_ptr<MaskCaches<RegexPrefix>> regex_masks_;
  const int64_t started_seconds_;  // "created" of /v1/models
  std::unique_ptr<httplib::Server> server_;

  std::atomic<int> port_{0};
  // The listening socket, as cpp-httplib's socket options callback saw it.
  int listen_socket_ = -1;
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopping_{false};
  // Generation requests between Enqueue and their release.
  std::atomic<int> num_generations_{0};
  // Set by the listen thread when it returns.
  std::atomic<bool> listen_done_{false};

  absl::Mutex lifecycle_mu_;
  bool started_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  std::thread listen_thread_;

  absl::Mutex rng_mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(rng_mu_);
};

}  // namespace herd
