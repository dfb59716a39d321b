// CRC-32C (Castagnoli), the checksum of every tensor in Herd's checkpoints.
//
// Uses the SSE4.2 crc32 instruction when the CPU has it (about 8 bytes per
// cycle-latency step) and a table otherwise; both give the same value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace herd {

// CRC-32C of `size` bytes, continuing from `crc` (0 to start). Crc32c("123456789") = 0xE3069283.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// The same with the table only (what CPUs without SSE4.2 run); for tests.
uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc = 0);

// "crc32c:e3069283", the spelling stored in checkpoints.
std::string Crc32cString(uint32_t crc);

}  // namespace herd
