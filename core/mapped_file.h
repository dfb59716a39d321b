// A read-only memory map of a whole file (RAII).
//
// Model weights are used in place from the map, so a model costs page cache,
// not heap. The map lives as long as the MappedFile; views into it must not
// outlive it. Thread-safe to read from many threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace herd {

class MappedFile {
 public:
  // Maps `path` read-only. NotFound / PermissionDenied / InvalidArgument (a
  // directory) with the path in the message. An empty file maps to size 0.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// Tells the kernel this process no longer needs the whole pages inside
// [data, data + bytes) of a read-only file mapping: they leave the process's
// resident set (the page cache keeps them), and a later read maps them back.
// Used after weights have been repacked into memory of their own. Does
// nothing unless the range lies inside one live MappedFile: heap or anonymous
// memory (a model built in memory) is left as it is, since dropping its
// pages would zero them.
void ReleaseMappedPages(const void* data, size_t bytes);

// Reads one byte of every page of [data, data + bytes), so that the pages are
// resident before a time-critical reader needs them (a page fault on a cold
// mapping reads the disk). Blocks for as long as that takes.
void PrefaultMappedPages(const void* data, size_t bytes);

}  // namespace herd
