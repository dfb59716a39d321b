// Watching the client of a request whose response is not written yet.
//
// cpp-httplib gives a handler the connection's addresses but not its socket,
// and a non-streaming handler writes nothing until the completion is done, so
// it cannot see a client that gave up. PeerSocket finds the connection's
// socket among this process's descriptors (Linux: /proc/self/fd) by its two
// addresses, and then tells whether the client closed it.
#pragma once

#include <string>

namespace herd {

class PeerSocket {
 public:
  // The TCP socket of this process connected from local_port to
  // remote_addr:remote_port (IPv4 or IPv6 text, as cpp-httplib reports them).
  // Without one (not found, not Linux), the watcher is empty and PeerClosed()
  // is always false.
  static PeerSocket Find(int local_port, const std::string& remote_addr, int remote_port);

  bool found() const { return fd_ >= 0; }

  // True once the client closed its end: a non-blocking peek reads end of
  // file, or the connection failed. Data the client sent (a pipelined
  // request) is left in place and means it is still there.
  bool PeerClosed() const;

 private:
  explicit PeerSocket(int fd) : fd_(fd) {}
  int fd_ = -1;  // borrowed from cpp-httplib, which closes it after the handler
};

}  // namespace herd
