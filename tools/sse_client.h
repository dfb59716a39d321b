// A small HTTP/1.1 client for OpenAI-style servers: plain GETs and JSON POSTs
// whose response may be a stream of Server-Sent Events (text/event-stream),
// handed to the caller event by event as the bytes arrive. `herd bench serve`
// uses it; it wraps cpp-httplib so that callers need not include it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace herd {

// Incremental parser of a text/event-stream body (the WHATWG "server-sent
// events" format): lines end in LF, CRLF or CR; an empty line ends an event;
// "data:" lines are joined with LF; comments (":...") and other fields
// (event, id, retry) are ignored. Bytes may be split anywhere between Feed
// calls. Not thread-safe.
class SseParser {
 public:
  // Parses `bytes` and returns the data of every event they complete, in
  // order. Events with no data line are skipped, as browsers do.
  std::vector<std::string> Feed(absl::string_view bytes);
  // True when bytes of an unfinished event are buffered (a stream cut short).
  bool HasPartialEvent() const { return !line_.empty() || has_data_; }

 private:
  void EndLine();

  std::string line_;  // the current line, without its end
  std::string data_;  // data of the current event so far
  bool has_data_ = false;
  bool last_was_cr_ = false;  // a CR ended the last line: skip an LF right after
  std::vector<std::string> events_;
};

struct HttpClientOptions {
  // Deadline of connecting (TCP and, for https, TLS).
  absl::Duration connect_timeout = absl::Seconds(10);
  // Deadline of one whole request, from sending it to the end of the body.
  absl::Duration request_timeout = absl::Seconds(600);
  // Sent as "Authorization: Bearer <api_key>" when not empty.
  std::string api_key;
};

struct HttpResponse {
  int status = 0;
  std::string content_type;
  // The Retry-After header, empty when absent.
  std::string retry_after;
  // The body, unless it was an event stream handed to the callback.
  std::string body;
  // For an event stream: whether bytes of an unfinished event were left when
  // the body ended (the server cut the stream short).
  bool truncated_event = false;
};

// Called with the data of each event of a text/event-stream response as it
// arrives; return false to abandon the request (Post then returns Cancelled).
using SseEventFn = std::function<bool(absl::string_view data)>;

// One connection to one server, kept alive between requests (TCP_NODELAY).
// A request that fails on a kept-alive connection before any response
// arrives (the server had closed it) is sent once more on a new connection.
// Not thread-safe: give each thread its own client.
class HttpClient {
 public:
  // `url` is "http://host[:port][/prefix]" or "https://..."; request paths are
  // appended to the prefix. InvalidArgument for anything else. Connects
  // lazily, on the first request.
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(absl::string_view url,
                                                            const HttpClientOptions& options);
  ~HttpClient();

  // GET `path`. A response with any HTTP status is OK; Unavailable when no
  // response came (connection refused, reset, timed out), naming the cause.
  absl::StatusOr<HttpResponse> Get(const std::string& path);

  // POST `json_body` to `path` as application/json. A 2xx text/event-stream
  // body is handed to `on_event` event by event (and not kept in the
  // response); any other body is returned whole. Errors as for Get, and
  // Cancelled when `on_event` returned false, DeadlineExceeded past
  // request_timeout.
  absl::StatusOr<HttpResponse> Post(const std::string& path, const std::string& json_body,
                                    const SseEventFn& on_event);

 private:
  struct Impl;
  explicit HttpClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace herd
