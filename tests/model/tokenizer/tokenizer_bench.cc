// Tokenizer encoding speed: a benchmark program, not a test.
//
//   build/tests/model/tokenizer/tokenizer_bench [--text-file F] [--mb N] [--repeats R] [VOCAB...]
//
// Encodes English text (by default the license texts every Debian system has
// in /usr/share/common-licenses, repeated to --mb megabytes) with each
// vocabulary on one thread, and prints MB/s per core as a table. The result
// goes to docs/performance.md. The tokenizers keep no cache, so repeating the
// text does not make later rounds cheaper.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "model/tokenizer/tokenizer.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// Distinct regular files of a directory (symlinked duplicates skipped), concatenated.
std::string ReadDirectory(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* entry = readdir(d)) names.push_back(entry->d_name);
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  std::string text;
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    struct stat st;
    if (lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    text += ReadFile(path);
    text += "\n";
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  std::string text_file;
  double megabytes = 16;
  int repeats = 3;
  std::vector<std::string> vocabs;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--text-file" && i + 1 < argc) {
      text_file = argv[++i];
    } else if (arg == "--mb" && i + 1 < argc) {
      megabytes = std::atof(argv[++i]);
    } else if (arg == "--repeats" && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--help") {
      std::printf("usage: tokenizer_bench [--text-file F] [--mb N] [--repeats R] [VOCAB...]\n");
      return 0;
    } else {
      vocabs.push_back(arg);
    }
  }
  if (vocabs.empty()) {
    for (const char* name : {"llama-spm", "phi-3", "gpt-2", "deepseek-llm"}) {
      vocabs.push_back(
          absl::StrFormat("%s/tests/data/tokenizers/ggml-vocab-%s.gguf", HERD_SOURCE_DIR, name));
    }
  }
  const std::string source =
      text_file.empty() ? ReadDirectory("/usr/share/common-licenses") : ReadFile(text_file);
  if (source.empty()) {
    std::fprintf(stderr, "no text to encode (pass --text-file)\n");
    return 2;
  }
  std::string text;
  const size_t target = static_cast<size_t>(megabytes * 1e6);
  while (text.size() < target) text += source;
  std::printf("text: %s, %.1f MB (%zu distinct bytes repeated), one thread, best of %d\n\n",
              text_file.empty() ? "/usr/share/common-licenses/*" : text_file.c_str(),
              text.size() / 1e6, source.size(), repeats);
  std::printf("| vocabulary | kind | tokens | bytes/token | seconds | MB/s per core |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const std::string& path : vocabs) {
    auto tokenizer = herd::Tokenizer::Load(path);
    if (!tokenizer.ok()) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(),
                   std::string(tokenizer.status().message()).c_str());
      return 1;
    }
    double best = 1e30;
    size_t num_tokens = 0;
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      auto ids = (*tokenizer)->Encode(text);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!ids.ok()) {
        std::fprintf(stderr, "%s: %s\n", path.c_str(), std::string(ids.status().message()).c_str());
        return 1;
      }
      num_tokens = ids->size();
      best = std::min(best, seconds);
    }
    std::string name = path.substr(path.find_last_of('/') + 1);
    std::printf("| %s | %s | %zu | %.2f | %.3f | %.1f |\n", name.c_str(),
                herd::TokenizerKindName((*tokenizer)->kind()), num_tokens,
                static_cast<double>(text.size()) / static_cast<double>(num_tokens), best,
                text.size() / 1e6 / best);
  }
  return 0;
}
