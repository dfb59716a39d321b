// Helpers shared by tests: paths to committed test data, temporary
// directories that clean up after themselves, whole-file reads and writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace herd::testing {

// Absolute path of tests/data/<relative>.
std::string TestDataPath(const std::string& relative);

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::vector<uint8_t> ReadFileBytes(const std::string& path);
void WriteFileBytes(const std::string& path, const void* data, size_t size);
inline void WriteFileBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  WriteFileBytes(path, bytes.data(), bytes.size());
}
std::string ReadFileText(const std::string& path);
void WriteFileText(const std::string& path, const std::string& text);

// What a shell command did: its exit code (-1 if it did not exit normally),
// stdout, and stderr (captured separately).
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs `command` through /bin/sh and waits for it.
CommandResult RunCommand(const std::string& command);
// Runs the herd binary under test (HERD_CLI_PATH) with `args`.
CommandResult RunHerd(const std::string& args);

// Float32 little-endian file -> floats.
std::vector<float> ReadF32File(const std::string& path);

}  // namespace herd::testing
