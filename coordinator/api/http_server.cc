#include "coordinator/api/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/api/peer_socket.h"
#include "core/logging.h"

namespace herd {
namespace {

// How long one AwaitResponses call waits: the delay with which a stream
// notices its client left, or a handler notices Stop.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// How long an abandoned request's handler waits for the executor to confirm
// the cancellation (normally one step).
constexpr absl::Duration kCancelWait = absl::Seconds(10);
// How long Stop waits for running requests to send their last words.
constexpr absl::Duration kStopGrace = absl::Seconds(2);
constexpr char kJson[] = "application/json";
// Exactly this type: cpp-httplib never compresses it, so events are not
// held back in a gzip buffer.
constexpr char kEventStream[] = "text/event-stream";
constexpr char kPrometheusText[] = "text/plain; version=0.0.4; charset=utf-8";

// The routes and the one method each accepts (for 405 and Allow).
struct Route {
  const char* path;
  const char* method;
};
constexpr Route kRoutes[] = {
    {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"},
    {"/v1/models", "GET"},       {"/tokenize", "POST"},
    {"/detokenize", "POST"},     {"/health", "GET"},
    {"/ready", "GET"},           {"/metrics", "GET"},
};

void WriteError(httplib::Response& res, const ApiError& error) {
  res.status = error.http_status;
  if (error.http_status == 429) res.set_header("Retry-After", "1");
  if (error.http_status == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(ApiErrorBody(error), kJson);
}

ApiError MakeError(int http_status, std::string message,
                   std::string type = "invalid_request_error") {
  ApiError error;
  error.http_status = http_status;
  error.message = std::move(message);
  error.type = std::move(type);
  return error;
}

// Compares without an early exit, so the time taken does not tell how much
// of a guessed key was right.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

// An AwaitResponses error: the id is ours, so only a stopped executor
// (Unavailable) is expected; anything else is a bug.
absl::Status AwaitError(const absl::Status& status) {
  if (absl::IsUnavailable(status) || absl::IsCancelled(status)) return status;
  return absl::InternalError(absl::StrCat("lost track of the request: ", status.message()));
}

ApiError StoppingError() {
  return MakeError(503, "the server is shutting down", "service_unavailable");
}

}  // namespace

// The executor requests of one API request (one per choice: prompts x n),
// owned by the HTTP exchange that made them. When the exchange ends before
// the executor finished them (the client left, a stop string matched, the
// server stops, an error), the destructor cancels what is left and waits
// for the last responses so that the executor forgets them.
struct HttpServer::Generation {
  struct Choice {
    Choice(RequestId id, const ApiRequest& request, int64_t index, const ApiModel& model)
        : id(id), output(request, index, model) {}
    RequestId id;
    OutputAccumulator output;
  };

  Generation(Executor* executor, std::atomic<int>* num_generations, ResponseMeta meta)
      : executor(executor), num_generations(num_generations), meta(std::move(meta)) {
    ++*num_generations;
  }

  ~Generation() {
    Release();
    --*num_generations;
  }

  // Ends the requests the executor has not finished (as stopped where a stop
  // string ended the output, else as aborted), and waits for the executor to
  // confirm.
  void Release() {
    std::vector<RequestId> open;
    for (Choice& choice : choices) {
      if (choice.output.executor_finished()) continue;
      if (choice.output.finished()) {
        executor->FinishAsStopped(choice.id);
      } else {
        executor->Cancel(choice.id);
      }
      open.push_back(choice.id);
    }
    const absl::Time give_up = absl::Now() + kCancelWait;
    while (!open.empty() && absl::Now() < give_up) {
      absl::StatusOr<std::vector<GenerationResponse>> responses =
          executor->AwaitResponses(open, kPollInterval);
      if (!responses.ok()) return;  // already forgotten, or the executor stopped
      for (const GenerationResponse& response : *responses) {
        if (response.finished) std::erase(open, response.request_id);
      }
    }
    if (!open.empty()) {
      HERD_LOG(WARN) << open.size() << " request(s) (" << open.front()
                     << "...) were cancelled but did not finish within "
                     << absl::FormatDuration(kCancelWait);
    }
  }

  bool finished() const {
    return std::all_of(choices.begin(), choices.end(),
                       [](const Choice& c) { return c.output.finished(); });
  }

  // The executor ids of the choices whose output is not complete.
  std::vector<RequestId> OpenIds() const {
    std::vector<RequestId> ids;
    for (const Choice& choice : choices) {
      if (!choice.output.finished()) ids.push_back(choice.id);
    }
    return ids;
  }

  Choice* Find(RequestId id) {
    for (Choice& choice : choices) {
      if (choice.id == id) return &choice;
    }
    return nullptr;
  }

  std::vector<const OutputAccumulator*> Outputs() const {
    std::vector<const OutputAccumulator*> outputs;
    for (const Choice& choice : choices) outputs.push_back(&choice.output);
    return outputs;
  }

  // Adds `response` to its choice's output. A choice that a stop string ended
  // stops running in the executor at once; the others go on.
  absl::StatusOr<OutputDelta> Add(const GenerationResponse& response) {
    Choice* choice = Find(response.request_id);
    if (choice == nullptr || choice->output.finished()) {
      return absl::InternalError(
          absl::StrCat("a response for request ", response.request_id, ", not awaited"));
    }
    absl::StatusOr<OutputDelta> delta = choice->output.Add(response);
    if (delta.ok() && choice->output.finished() && !choice->output.executor_finished()) {
      executor->FinishAsStopped(choice->id);
    }
    return delta;
  }

  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  Executor* const executor;
  // The server's count of live Generations (Stop waits for it to drop to 0).
  std::atomic<int>* const num_generations;
  const ResponseMeta meta;
  // In choice index order. std::deque: an OutputAccumulator does not move.
  std::deque<Choice> choices;
  // A stream's first provider call has happened (chat: the role chunks are out).
  bool stream_started = false;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Create(Executor* executor,
                                                               ServingMetrics* metrics,
                                                               const HttpServerOptions& options) {
  if (executor == nullptr) return absl::InvalidArgumentError("HttpServer needs an executor");
  if (options.model_name.empty()) return absl::InvalidArgumentError("the model name is empty");
  if (options.vocab_size <= 0 || options.max_context_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size (", options.vocab_size, ") and max_context_tokens (",
                     options.max_context_tokens, ") must be positive"));
  }
  if (options.num_http_threads < 1 || options.max_body_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_http_threads (", options.num_http_threads,
                                                   ") and max_body_bytes (", options.max_body_bytes,
                                                   ") must be positive"));
  }
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port ", options.port, " is outside [0, 65535]"));
  }
  return std::unique_ptr<HttpServer>(new HttpServer(executor, metrics, options));
}

HttpServer::HttpServer(Executor* executor, ServingMetrics* metrics,
                       const HttpServerOptions& options)
    : executor_(executor),
      metrics_(metrics),
      options_(options),
      model_(MakeApiModel(options.model_name, options.vocab_size, options.max_context_tokens,
                          options.tokenizer, options.chat_template)),
      token_texts_(options.tokenizer != nullptr
                       ? std::make_unique<TokenTexts>(*options.tokenizer, options.vocab_size)
                       : nullptr),
      json_masks_(token_texts_ != nullptr
                      ? std::make_unique<MaskCaches<JsonPrefix>>(token_texts_.get())
                      : nullptr),
      regex_masks_(token_texts_ != nullptr
                       ? std::make_unique<MaskCaches<RegexPrefix>>(token_texts_.get())
                       : nullptr),
      started_seconds_(absl::ToUnixSeconds(absl::Now())),
      server_(std::make_unique<httplib::Server>()),
      rng_(std::random_device{}()) {
  RegisterRoutes();
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::RegisterRoutes() {
  httplib::Server& server = *server_;
  const size_t num_threads = static_cast<size_t>(options_.num_http_threads);
  server.new_task_queue = [num_threads] { return new httplib::ThreadPool(num_threads); };
  server.set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  // A stream writes one small chunk per token, which should leave at once
  // rather than wait, by Nagle's algorithm, for the ACK of the one before (as
  // uvicorn and Go's net/http, TCP_NODELAY on every connection).
  server.set_tcp_nodelay(true);
  // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, with which a
  // second server would silently share a taken port instead of failing.
  // Called for the listening socket only (the last call is the bound one).
  server.set_socket_options([this](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_socket_ = sock;
  });

  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res,
                                        const httplib::ContentReader& reader) {
    HandleGeneration(req, res, reader, ApiEndpoint::kCompletions);
  });
  server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res,
                                             const httplib::ContentReader& reader) {
    HandleGeneration(req, res, reader, ApiEndpoint::kChatCompletions);
  });
  server.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    HandleModels(req, res);
  });
  server.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res,
                                  const httplib::ContentReader& reader) {
    HandleTokenizer(req, res, reader, Tokenize);
  });
  server.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res,
                                    const httplib::ContentReader& reader) {
    HandleTokenizer(req, res, reader, Detokenize);
  });
  server.Get("/health",
             [this](const httplib::Request&, httplib::Response& res) { HandleHealth(res); });
  server.Get("/ready",
             [this](const httplib::Request&, httplib::Response& res) { HandleReady(res); });
  server.Get("/metrics",
             [this](const httplib::Request&, httplib::Response& res) { HandleMetrics(res); });

  // Errors cpp-httplib answers itself (no route, body too large, malformed
  // request) get an OpenAI error body; responses with a body are ours.
  httplib::Server::HandlerWithResponse error_handler = [this](const httplib::Request& req,
                                                              httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 404) {
      for (const Route& route : kRoutes) {
        if (req.path == route.path) {
          res.set_header("Allow", route.method);
          WriteError(res, MakeError(405, absl::StrCat("method ", req.method, " is not allowed on ",
                                                      req.path, "; use ", route.method)));
          return httplib::Server::HandlerResponse::Handled;
        }
      }
      WriteError(res,
                 MakeError(404, absl::StrCat("Invalid URL (", req.method, " ", req.path, ")")));
    } else if (res.status == 413) {
      WriteError(res, MakeError(413, absl::StrCat("the request body is larger than ",
                                                  options_.max_body_bytes, " bytes")));
    } else {
      WriteError(
          res, MakeError(res.status, res.status == 400 ? "malformed HTTP request"
                                                       : absl::StrCat("HTTP error ", res.status)));
    }
    return httplib::Server::HandlerResponse::Handled;
  };
  server.set_error_handler(std::move(error_handler));
  server.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, const std::exception_ptr&) {
        HERD_LOG(ERROR) << req.method << " " << req.path << ": unexpected exception";
        WriteError(res, MakeError(500, "internal error", "server_error"));
      });
  server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    // 503 is the expected answer while draining, not worth a warning.
    if (res.status >= 500 && res.status != 503) {
      HERD_LOG(WARN) << req.method << " " << req.path << " " << res.status << " " << res.body;
    } else {
      HERD_LOG(DEBUG) << req.method << " " << req.path << " " << res.status;
    }
  });
}

absl::Status HttpServer::Start() {
  absl::MutexLock lock(&lifecycle_mu_);
  if (started_) return absl::FailedPreconditionError("the HTTP server was already started");
  errno = 0;
  int port = options_.port;
  bool bound = false;
  if (port == 0) {
    port = server_->bind_to_any_port(options_.host);
    bound = port > 0;
  } else {
    bound = server_->bind_to_port(options_.host, port);
  }
  if (!bound) {
    const int error = errno;
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options_.host, ":", options_.port,
        error != 0 ? absl::StrCat(": ", std::strerror(error)) : std::string(" (port in use?)")));
  }
  // cpp-httplib listens with a backlog of 5 (built into the library): a
  // burst of clients (a benchmark opening 64 streams at once while the engine
  // keeps every core busy) overflows it and sees connections reset. Listening
  // again only raises the backlog.
  if (::listen(listen_socket_, SOMAXCONN) != 0) {
    HERD_LOG(WARN) << "cannot raise the listen backlog: " << std::strerror(errno);
  }
  port_ = port;
  started_ = true;
  listen_thread_ = std::thread([this] {
    if (!server_->listen_after_bind() && !stopping_) {
      HERD_LOG(ERROR) << "the HTTP server stopped accepting connections";
    }
    listen_done_ = true;
  });
  return absl::OkStatus();
}

void HttpServer::BeginDrain() { draining_ = true; }

void HttpServer::Stop() {
  absl::MutexLock lock(&lifecycle_mu_);
  if (!started_ || stopped_) return;
  stopped_ = true;
  stopping_ = true;
  // Running requests notice within a poll interval and answer 503 or end
  // their stream with an error event; httplib would cut streams short.
  const absl::Time give_up = absl::Now() + kStopGrace;
  while (num_generations_ > 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  // NOTE: httplib's stop() does nothing until the listen thread has marked
  // the server running, and must be called only once.
  while (!server_->is_running() && !listen_done_) absl::SleepFor(absl::Milliseconds(1));
  if (!listen_done_) server_->stop();
  listen_thread_.join();
}

bool HttpServer::Admit(const httplib::Request& req, httplib::Response& res) const {
  if (!options_.api_key.empty()) {
    const std::string header = req.get_header_value("Authorization");
    constexpr absl::string_view kBearer = "Bearer ";
    if (!absl::StartsWith(header, kBearer) ||
        !ConstantTimeEquals(absl::string_view(header).substr(kBearer.size()), options_.api_key)) {
      WriteError(res, ApiErrorFromStatus(absl::UnauthenticatedError(
                          header.empty() ? "missing API key: send 'Authorization: Bearer <key>'"
                                         : "invalid API key")));
      return false;
    }
  }
  if (draining_ || stopping_) {
    WriteError(res, MakeError(503, "the server is shutting down and accepts no new requests",
                              "service_unavailable"));
    return false;
  }
  return true;
}

bool HttpServer::ReadBody(const httplib::ContentReader& reader, httplib::Response& res,
                          std::string* body) const {
  // The body is read here, not by cpp-httplib, so that a chunked upload is
  // held to max_body_bytes too (Content-Length bodies are refused unread).
  bool too_large = false;
  const bool read = reader([&](const char* data, size_t size) {
    if (body->size() + size > static_cast<size_t>(options_.max_body_bytes)) {
      too_large = true;
      return false;
    }
    body->append(data, size);
    return true;
  });
  if (too_large || res.status == 413) {
    WriteError(res, MakeError(413, absl::StrCat("the request body is larger than ",
                                                options_.max_body_bytes, " bytes")));
    return false;
  }
  if (!read) {
    WriteError(res, MakeError(400, "the request body could not be read"));
    return false;
  }
  return true;
}

void HttpServer::HandleTokenizer(const httplib::Request& req, httplib::Response& res,
                                 const httplib::ContentReader& reader,
                                 absl::StatusOr<std::string> (*handle)(absl::string_view,
                                                                       const ApiModel&)) {
  std::string body;
  if (!ReadBody(reader, res, &body) || !Admit(req, res)) return;
  absl::StatusOr<std::string> answer = handle(body, model_);
  if (!answer.ok()) {
    WriteError(res, ApiErrorFromStatus(answer.status()));
    return;
  }
  res.set_content(*answer, kJson);
}

void HttpServer::HandleGeneration(const httplib::Request& req, httplib::Response& res,
                                  const httplib::ContentReader& reader, ApiEndpoint endpoint) {
  std::string body;
  if (!ReadBody(reader, res, &body) || !Admit(req, res)) return;

  const absl::Time arrival = absl::Now();
  absl::StatusOr<ApiRequest> request = endpoint == ApiEndpoint::kCompletions
                                           ? ParseCompletionRequest(body, model_)
                                           : ParseChatCompletionRequest(body, model_);
  if (!request.ok()) {
    WriteError(res, ApiErrorFromStatus(request.status()));
    return;
  }
  if (!request->has_seed) request->generation.sampling.seed = NextRandom();
  if (options_.request_timeout != absl::InfiniteDuration()) {
    request->generation.deadline = arrival + options_.request_timeout;
  }

  ResponseMeta meta;
  meta.endpoint = endpoint;
  meta.id =
      absl::StrFormat("%s-%016x%08x", endpoint == ApiEndpoint::kCompletions ? "cmpl" : "chatcmpl",
                      NextRandom(), static_cast<uint32_t>(NextRandom()));
  meta.created = absl::ToUnixSeconds(arrival);
  meta.model = model_.name;
  meta.include_usage = request->include_usage;
  meta.tool_calls = request->tool_calls;
  meta.tool_name = request->tool_name;
  meta.tool_names = request->tool_names;

  auto generation = std::make_shared<Generation>(executor_, &num_generations_, std::move(meta));
  for (int64_t index = 0; index < request->num_choices(); ++index) {
    // The other choices of a prompt wait for its first to compute it, then
    // find it in the prefix cache (the executor sees to it).
    GenerationRequest choice = request->ChoiceRequest(index);
    const bool chat = endpoint == ApiEndpoint::kChatCompletions;
    if (request->json_schema != nullptr) {
      choice.constraint = std::make_shared<JsonConstraint>(
          json_masks_->For(request->json_schema->text(), request->json_schema), chat);
    } else if (request->text_regex != nullptr) {
      choice.constraint = std::make_shared<RegexConstraint>(
          regex_masks_->For(request->text_regex_key, request->text_regex), chat);
    }
    absl::StatusOr<RequestId> id = executor_->Enqueue(std::move(choice));
    if (!id.ok()) {
      WriteError(res, ApiErrorFromStatus(id.status()));
      return;  // the Generation cancels the choices already queued
    }
    generation->choices.emplace_back(*id, *request, index, model_);
  }
  if (!request->stream) {
    CompleteNonStreaming(*generation, req, res);
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  // Tells nginx-style proxies not to buffer the events.
  res.set_header("X-Accel-Buffering", "no");
  // The provider runs after this handler returned, on the same thread; it
  // owns the Generation, so the request is cancelled however the stream ends.
  res.set_chunked_content_provider(kEventStream,
                                   [this, generation](size_t, httplib::DataSink& sink) {
                                     return WriteStreamEvents(*generation, sink);
                                   });
}

void HttpServer::CompleteNonStreaming(Generation& generation, const httplib::Request& req,
                                      httplib::Response& res) {
  // Nothing is written until the completion is done, so the client's socket
  // is watched instead: a client that gave up cancels the request (the
  // Generation's destructor) rather than leaving it to run to max_tokens.
  const PeerSocket peer = PeerSocket::Find(req.local_port, req.remote_addr, req.remote_port);
  while (!generation.finished()) {
    if (peer.PeerClosed()) {
      HERD_LOG(DEBUG) << "request " << generation.choices.front().id
                      << ": the client closed its connection";
      return;
    }
    if (stopping_) {
      WriteError(res, StoppingError());
      return;
    }
    absl::StatusOr<std::vector<GenerationResponse>> responses =
        executor_->AwaitResponses(generation.OpenIds(), kPollInterval);
    if (!responses.ok()) {
      WriteError(res, ApiErrorFromStatus(AwaitError(responses.status())));
      return;
    }
    for (const GenerationResponse& response : *responses) {
      absl::StatusOr<OutputDelta> delta = generation.Add(response);
      if (!delta.ok()) {
        WriteError(res, ApiErrorFromStatus(delta.status()));
        return;
      }
    }
  }
  res.set_content(FormatResponse(generation.meta, generation.Outputs()), kJson);
}

bool HttpServer::WriteStreamEvents(Generation& generation, httplib::DataSink& sink) {
  // Returning false ends the exchange; the Generation's owner (the provider)
  // is then destroyed, cancelling the request.
  if (!sink.is_writable()) return false;
  const ResponseMeta& meta = generation.meta;
  if (!generation.stream_started) {
    generation.stream_started = true;
    if (meta.endpoint == ApiEndpoint::kChatCompletions) {
      std::string start;
      for (const Generation::Choice& choice : generation.choices) {
        absl::StrAppend(&start, FormatStreamStart(meta, choice.output.index()));
      }
      return sink.write(start.data(), start.size());
    }
  }
  std::string events;
  bool last = false;
  if (stopping_) {
    events = FormatStreamError(StoppingError());
    last = true;
  } else {
    absl::StatusOr<std::vector<GenerationResponse>> responses =
        executor_->AwaitResponses(generation.OpenIds(), kPollInterval);
    if (!responses.ok()) {
      events = FormatStreamError(ApiErrorFromStatus(AwaitError(responses.status())));
      last = true;
    } else {
      for (const GenerationResponse& response : *responses) {
        absl::StatusOr<OutputDelta> delta = generation.Add(response);
        if (!delta.ok()) {
          absl::StrAppend(&events, FormatStreamError(ApiErrorFromStatus(delta.status())));
          last = true;
          break;
        }
        if (!delta->token_ids.empty() || !delta->text.empty() || !delta->finish_reason.empty()) {
          absl::StrAppend(&events,
                          FormatStreamDelta(meta, *delta, generation.choices[delta->index].output));
        }
      }
      if (!last && generation.finished()) {
        absl::StrAppend(&events, FormatStreamEnd(meta, generation.Outputs()));
        last = true;
      }
    }
  }
  // NOTE: an empty write would end cpp-httplib's chunked stream.
  if (!events.empty() && !sink.write(events.data(), events.size())) return false;
  if (last) sink.done();
  return true;
}

void HttpServer::HandleModels(const httplib::Request& req, httplib::Response& res) const {
  if (!Admit(req, res)) return;
  res.set_content(FormatModelList(model_, started_seconds_), kJson);
}

void HttpServer::HandleHealth(httplib::Response& res) const {
  const absl::Status health = executor_->health();
  if (health.ok()) {
    res.set_content("ok\n", "text/plain");
    return;
  }
  res.status = 503;
  res.set_content(absl::StrCat("unhealthy: ", health.message(), "\n"), "text/plain");
}

void HttpServer::HandleReady(httplib::Response& res) const {
  const absl::Status health = executor_->health();
  if (draining_ || stopping_) {
    res.status = 503;
    res.set_content("draining\n", "text/plain");
  } else if (!health.ok()) {
    res.status = 503;
    res.set_content(absl::StrCat("not ready: ", health.message(), "\n"), "text/plain");
  } else {
    res.set_content("ready\n", "text/plain");
  }
}

void HttpServer::HandleMetrics(httplib::Response& res) const {
  if (metrics_ == nullptr) {
    WriteError(res, MakeError(404, "this server exports no metrics"));
    return;
  }
  res.set_content(metrics_->Serialize(), kPrometheusText);
}

uint64_t HttpServer::NextRandom() {
  absl::MutexLock lock(&rng_mu_);
  return rng_();
}

}  // namespace herd
