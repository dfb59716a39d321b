#include "tools/sse_client.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace herd {

std::vector<std::string> SseParser::Feed(absl::string_view bytes) {
  events_.clear();
  for (const char c : bytes) {
    if (last_was_cr_) {
      last_was_cr_ = false;
      if (c == '\n') continue;  // the LF of a CRLF
    }
    if (c == '\r' || c == '\n') {
      last_was_cr_ = c == '\r';
      EndLine();
    } else {
      line_.push_back(c);
    }
  }
  return std::move(events_);
}

void SseParser::EndLine() {
  if (line_.empty()) {  // the blank line that ends an event
    if (has_data_) events_.push_back(std::move(data_));
    data_.clear();
    has_data_ = false;
    return;
  }
  absl::string_view line = line_;
  absl::string_view field = line;
  absl::string_view value;
  if (const size_t colon = line.find(':'); colon != absl::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (absl::StartsWith(value, " ")) value.remove_prefix(1);
  }
  // An empty field name is a comment; event, id and retry mean nothing here.
  if (field == "data") {
    if (has_data_) data_.push_back('\n');
    data_.append(value.data(), value.size());
    has_data_ = true;
  }
  line_.clear();
}

namespace {

// httplib's names for its errors are single words ("Connection", "Read").
std::string DescribeError(httplib::Error error) {
  switch (error) {
    case httplib::Error::Connection:
      return "could not connect";
    case httplib::Error::ConnectionTimeout:
      return "timed out connecting";
    case httplib::Error::Read:
      return "reading the response failed (connection closed, reset or timed out)";
    case httplib::Error::Write:
      return "sending the request failed (connection closed or reset)";
    default:
      return httplib::to_string(error);
  }
}

}  // namespace

struct HttpClient::Impl {
  Impl(const std::string& scheme_host_port, std::string prefix, const HttpClientOptions& options)
      : client(scheme_host_port),
        base_url(scheme_host_port + prefix),
        path_prefix(std::move(prefix)),
        options(options) {}

  httplib::Headers Headers() const {
    httplib::Headers headers;
    if (!options.api_key.empty()) headers.emplace("Authorization", "Bearer " + options.api_key);
    return headers;
  }

  std::string Describe(const std::string& method, const std::string& path) const {
    return absl::StrCat(method, " ", base_url, path);
  }

  // Sends `request` once more on a new connection when it failed on a
  // kept-alive one before any response came: the server had closed that
  // connection (llama.cpp's server closes it after every streamed response
  // although it announces keep-alive), as curl and Go's net/http do.
  // `responded` says whether a response began to arrive.
  bool Send(httplib::Request& request, httplib::Response& response, httplib::Error& error,
            const std::function<bool()>& responded) {
    const bool reused = used_before;
    bool sent = client.send(request, response, error);
    if (!sent && reused && !responded() &&
        (error == httplib::Error::Read || error == httplib::Error::Write)) {
      sent = client.send(request, response, error);
    }
    used_before = sent;
    return sent;
  }

  httplib::Client client;
  bool used_before = false;  // the last request succeeded: its connection may be reused
  std::string base_url;      // for messages
  std::string path_prefix;   // "" or "/something", never ending in '/'
  HttpClientOptions options;
};

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpClient::~HttpClient() = default;

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(absl::string_view url,
                                                               const HttpClientOptions& options) {
  absl::string_view rest = url;
  std::string scheme;
  if (absl::ConsumePrefix(&rest, "http://")) {
    scheme = "http://";
  } else if (absl::ConsumePrefix(&rest, "https://")) {
    scheme = "https://";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("URL '", url, "' must start with http:// or https://"));
  }
  const size_t slash = rest.find('/');
  const absl::string_view host_port = rest.substr(0, slash);
  std::string prefix =
      slash == absl::string_view::npos ? std::string() : std::string(rest.substr(slash));
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (host_port.empty() || absl::StrContains(prefix, '?') || absl::StrContains(prefix, '#')) {
    return absl::InvalidArgumentError(
        absl::StrCat("URL '", url, "' is not http(s)://host[:port][/prefix]"));
  }
  auto impl = std::make_unique<Impl>(absl::StrCat(scheme, host_port), std::move(prefix), options);
  if (!impl->client.is_valid()) {
    return absl::InvalidArgumentError(absl::StrCat("URL '", url, "': bad host or port"));
  }
  const auto to_chrono = [](absl::Duration d) {
    return std::chrono::microseconds(std::max<int64_t>(1, absl::ToInt64Microseconds(d)));
  };
  impl->client.set_connection_timeout(to_chrono(options.connect_timeout));
  impl->client.set_read_timeout(to_chrono(options.request_timeout));
  impl->client.set_write_timeout(to_chrono(options.request_timeout));
  impl->client.set_keep_alive(true);
  // A request goes out as headers and then a body: with Nagle's algorithm the
  // body waits for the server's (delayed, up to 40 ms on Linux) ACK of the
  // headers, which would be counted in every latency.
  impl->client.set_tcp_nodelay(true);
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(impl)));
}

absl::StatusOr<HttpResponse> HttpClient::Get(const std::string& path) {
  const std::string full_path = impl_->path_prefix + path;
  httplib::Request request;
  request.method = "GET";
  request.path = full_path;
  request.headers = impl_->Headers();
  httplib::Response raw;
  httplib::Error error = httplib::Error::Success;
  if (!impl_->Send(request, raw, error, [&] { return raw.status != -1; })) {
    return absl::UnavailableError(
        absl::StrCat(impl_->Describe("GET", path), ": ", DescribeError(error)));
  }
  HttpResponse response;
  response.status = raw.status;
  response.content_type = raw.get_header_value("Content-Type");
  response.retry_after = raw.get_header_value("Retry-After");
  response.body = std::move(raw.body);
  return response;
}

absl::StatusOr<HttpResponse> HttpClient::Post(const std::string& path, const std::string& json_body,
                                              const SseEventFn& on_event) {
  const absl::Time deadline = absl::Now() + impl_->options.request_timeout;
  HttpResponse response;
  bool streaming = false;
  bool cancelled = false;
  bool timed_out = false;
  SseParser parser;

  httplib::Request request;
  request.method = "POST";
  request.path = impl_->path_prefix + path;
  request.headers = impl_->Headers();
  request.set_header("Content-Type", "application/json");
  request.body = json_body;
  request.response_handler = [&](const httplib::Response& r) {
    response.status = r.status;
    response.content_type = r.get_header_value("Content-Type");
    response.retry_after = r.get_header_value("Retry-After");
    streaming = r.status / 100 == 2 && absl::StartsWith(response.content_type, "text/event-stream");
    return true;
  };
  request.content_receiver = [&](const char* data, size_t size, uint64_t /*offset*/,
                                 uint64_t /*total*/) {
    if (absl::Now() > deadline) {
      timed_out = true;
      return false;
    }
    if (!streaming) {
      response.body.append(data, size);
      return true;
    }
    for (const std::string& event : parser.Feed(absl::string_view(data, size))) {
      if (!on_event(event)) {
        cancelled = true;
        return false;
      }
    }
    return true;
  };

  httplib::Response raw;
  httplib::Error error = httplib::Error::Success;
  const bool sent =
      impl_->Send(request, raw, error, [&] { return response.status != 0 || cancelled; });
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(impl_->Describe("POST", path), ": no complete response within ",
                     absl::FormatDuration(impl_->options.request_timeout)));
  }
  if (cancelled) {
    return absl::CancelledError(absl::StrCat(impl_->Describe("POST", path), ": abandoned"));
  }
  if (!sent) {
    return absl::UnavailableError(absl::StrCat(
        impl_->Describe("POST", path), ": ", DescribeError(error),
        response.status != 0 ? absl::StrCat(" (after HTTP ", response.status, ")") : ""));
  }
  response.truncated_event = streaming && parser.HasPartialEvent();
  return response;
}

}  // namespace herd
