#include "kernels/cpu_features.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace herd::cpu {
namespace {

bool OsSavesAvx512State() {
  // XCR0 bits 1, 2 (SSE, AVX) and 5-7 (opmask, ZMM) must be enabled by the OS.
  uint32_t eax, edx;
  __asm__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (eax & 0xE6) == 0xE6;
}

bool OsSavesAvxState() {
  uint32_t eax, edx;
  __asm__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (eax & 0x6) == 0x6;
}

CpuFeatures Detect() {
  CpuFeatures f;
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = ecx & bit_OSXSAVE;
  if (!osxsave || !OsSavesAvxState()) return f;
  f.fma = ecx & bit_FMA;
  f.f16c = ecx & bit_F16C;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    f.avx2 = ebx & bit_AVX2;
    if (OsSavesAvx512State()) {
      f.avx512f = ebx & bit_AVX512F;
      f.avx512bw = ebx & bit_AVX512BW;
      f.avx512vl = ebx & bit_AVX512VL;
      f.avx512vnni = ecx & bit_AVX512VNNI;
    }
    f.gfni = ecx & bit_GFNI;
  }
  if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) {
    f.avxvnni = eax & (1u << 4);
    f.avx512bf16 = f.avx512f && (eax & (1u << 5));
  }
  return f;
}

Isa BestSupported(const CpuFeatures& f) {
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.f16c && f.fma) {
    return f.gfni ? Isa::kAvx512Gfni : Isa::kAvx512;
  }
  if (f.avx2 && f.fma && f.f16c) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa Cap(Isa best, Isa requested) { return requested < best ? requested : best; }

Isa FromEnvironment() {
  const Isa best = BestSupported(DetectCpuFeatures());
  const char* env = std::getenv("HERD_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  if (std::strcmp(env, "scalar") == 0) return Isa::kScalar;
  if (std::strcmp(env, "avx2") == 0) return Cap(best, Isa::kAvx2);
  if (std::strcmp(env, "avx512") == 0) return Cap(best, Isa::kAvx512);
  return best;
}

std::atomic<int>& ActiveIsaStorage() {
  static std::atomic<int> isa{static_cast<int>(FromEnvironment())};
  return isa;
}

}  // namespace

const CpuFeatures& DetectCpuFeatures() {
  static const CpuFeatures kFeatures = Detect();
  return kFeatures;
}

Isa ActiveIsa() { return static_cast<Isa>(ActiveIsaStorage().load(std::memory_order_relaxed)); }

void SetIsaForTesting(Isa isa) {
  ActiveIsaStorage().store(static_cast<int>(Cap(BestSupported(DetectCpuFeatures()), isa)));
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Gfni:
      return "avx512-gfni";
  }
  return "?";
}

std::string DescribeCpu() {
  const CpuFeatures& f = DetectCpuFeatures();
  std::string out = IsaName(ActiveIsa());
  out += " (";
  const std::pair<const char*, bool> flags[] = {{"avx512f", f.avx512f},
                                                {"avx512bw", f.avx512bw},
                                                {"avx512vl", f.avx512vl},
                                                {"avx512vnni", f.avx512vnni},
                                                {"avx512bf16", f.avx512bf16},
                                                {"avxvnni", f.avxvnni},
                                                {"gfni", f.gfni},
                                                {"avx2", f.avx2},
                                                {"fma", f.fma},
                                                {"f16c", f.f16c}};
  bool first = true;
  for (const auto& [name, present] : flags) {
    if (!present) continue;
    out += first ? "" : " ";
    out += name;
    first = false;
  }
  return out + ")";
}

}  // namespace herd::cpu
