// Numbers for people: sizes in binary units for reports and logs.
#pragma once

#include <string>

namespace herd {

// "512 B", "1.50 KiB", "343.72 MiB", "1.19 GiB" (two decimals above bytes).
std::string HumanBytes(double bytes);

}  // namespace herd
