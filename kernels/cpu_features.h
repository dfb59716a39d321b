// Which SIMD instruction sets the CPU kernels may use, decided once at run
// time. The scalar kernels are always built; faster ones are chosen when the
// CPU has their instructions. HERD_CPU_ISA=scalar|avx2|avx512|avx512-gfni caps the choice
// (for tests and for comparing paths on one machine); it never enables an
// instruction set the CPU lacks.
#pragma once

#include <string>

namespace herd::cpu {

enum class Isa {
  kScalar,  // portable C++
  kAvx2,    // AVX2 + FMA + F16C
  kAvx512,  // AVX-512 F/BW/VL + VNNI + F16C
  // kAvx512 plus GFNI, whose affine byte transform unpacks 2- and 3-bit codes
  // in one instruction per field (Ice Lake, Zen 4 and later; Cascade Lake
  // has VNNI without it).
  kAvx512Gfni,
};

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool avxvnni = false;
  bool gfni = false;
};

// What this CPU supports (cpuid), computed once.
const CpuFeatures& DetectCpuFeatures();
// The best Isa the CPU supports, capped by HERD_CPU_ISA; computed once.
Isa ActiveIsa();
// Overrides ActiveIsa() for this process (capped by what the CPU supports);
// for tests that run every path. Not thread-safe with concurrent kernels.
void SetIsaForTesting(Isa isa);
const char* IsaName(Isa isa);
// "avx512-gfni (avx512f avx512bw avx512vl avx512vnni avx512bf16 gfni avx2 fma f16c)"
std::string DescribeCpu();

}  // namespace herd::cpu
