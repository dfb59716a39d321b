#include "comm/ucx/ucx_env.h"

#include <cstdlib>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace herd::comm {
namespace {

constexpr int kMaxWorldSize = 65535;  // ranks travel in 16 bits of a UCP tag

struct Found {
  std::string name;
  std::string value;
};

// The first of `names` that is set and not empty.
std::optional<Found> FirstSet(const std::function<const char*(const char*)>& lookup,
                              std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const char* value = lookup(name);
    if (value != nullptr && value[0] != '\0') return Found{name, value};
  }
  return std::nullopt;
}

absl::StatusOr<int> ParseInRange(const Found& found, int min, int max) {
  int value = 0;
  if (!absl::SimpleAtoi(found.value, &value) || value < min || value > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        found.name, "='", found.value, "' is not an integer in [", min, ", ", max, "]"));
  }
  return value;
}

// "herd-worker-2" -> {"HOSTNAME", "2"}: the StatefulSet pod ordinal.
std::optional<Found> OrdinalOfHostname(const std::function<const char*(const char*)>& lookup) {
  const char* hostname = lookup("HOSTNAME");
  if (hostname == nullptr) return std::nullopt;
  const absl::string_view name(hostname);
  const size_t dash = name.rfind('-');
  if (dash == absl::string_view::npos || dash + 1 == name.size()) return std::nullopt;
  const absl::string_view digits = name.substr(dash + 1);
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  return Found{absl::StrCat("HOSTNAME (", name, ")"), std::string(digits)};
}

}  // namespace

absl::StatusOr<UcxBootstrapEnv> ParseUcxBootstrapEnv(
    const std::function<const char*(const char*)>& lookup) {
  UcxBootstrapEnv env;
  const std::optional<Found> world = FirstSet(lookup, {"HERD_WORLD_SIZE", "LWS_GROUP_SIZE"});
  if (!world) {
    return absl::InvalidArgumentError(
        "ucx: set HERD_WORLD_SIZE (or LWS_GROUP_SIZE) to the number of ranks");
  }
  auto world_size = ParseInRange(*world, 1, kMaxWorldSize);
  if (!world_size.ok()) return world_size.status();
  env.world_size = *world_size;
  env.world_size_source = world->name;

  std::optional<Found> rank = FirstSet(lookup, {"HERD_RANK", "LWS_WORKER_INDEX"});
  if (!rank) rank = OrdinalOfHostname(lookup);
  if (!rank) {
    return absl::InvalidArgumentError(
        "ucx: set HERD_RANK (or LWS_WORKER_INDEX, or a HOSTNAME ending in -N as a StatefulSet "
        "pod has) to this process's rank");
  }
  auto rank_value = ParseInRange(*rank, 0, kMaxWorldSize - 1);
  if (!rank_value.ok()) return rank_value.status();
  if (*rank_value >= env.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("ucx: rank ", *rank_value, " from ", rank->name,
                                                   " is not below the world size ", env.world_size,
                                                   " from ", world->name));
  }
  env.rank = *rank_value;
  env.rank_source = rank->name;

  if (const std::optional<Found> port = FirstSet(lookup, {"HERD_LEADER_PORT"})) {
    auto value = ParseInRange(*port, 1, 65535);
    if (!value.ok()) return value.status();
    env.leader_port = *value;
  }
  if (const std::optional<Found> address =
          FirstSet(lookup, {"HERD_LEADER_ADDRESS", "LWS_LEADER_ADDRESS"})) {
    env.leader_address = address->value;
    env.leader_address_source = address->name;
  } else if (env.rank != 0 && env.world_size > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx: rank ", env.rank,
                     " needs HERD_LEADER_ADDRESS (or LWS_LEADER_ADDRESS): the host "
                     "name or address of rank 0"));
  }
  return env;
}

absl::StatusOr<UcxBootstrapEnv> UcxBootstrapEnvFromProcess() {
  return ParseUcxBootstrapEnv([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace herd::comm
