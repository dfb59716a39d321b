// Memory for large, long-lived buffers that kernels stream through (repacked
// weights, the KV cache), placed so that transparent huge pages can back it.
//
// With 4 KiB pages a decode step that streams a 6 MB matrix, or attention
// reading a kv head's rows a few hundred bytes apart, needs a new TLB entry
// every 4 KiB, and the hardware prefetchers stop at every page boundary. A
// buffer of 2 MiB or more is therefore mapped on its own, its start aligned
// to 2 MiB, and advised MADV_HUGEPAGE: where the kernel's transparent huge
// pages are "always" or "madvise", every whole 2 MiB of it can live in one
// huge page. Smaller buffers come from the heap. Either way the memory is
// zeroed and only what is touched becomes resident.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace herd {

// Buffers from this size up get a mapping of their own, aligned for huge pages.
inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// `bytes` zeroed bytes (at least 1), aligned to at least 64 bytes, freed with
// the last owner; null if the memory cannot be had.
std::shared_ptr<uint8_t[]> AllocateHugePageBacked(size_t bytes);

}  // namespace herd
