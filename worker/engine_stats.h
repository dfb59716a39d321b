// Where an engine's time went, and what its experts computed.
#pragma once

#include <cstdint>
#include <vector>

namespace herd {

// Where an engine's time went, accumulated over its Forward calls.
struct EngineStats {
  int64_t forward_calls = 0;
  double forward_seconds = 0;
  double moe_seconds = 0;       // routed + shared experts, dispatch and combine included
  double dispatch_seconds = 0;  // expert parallelism: waiting in Dispatch
  double combine_seconds = 0;   // expert parallelism: waiting in Combine
  int64_t dispatched_slots = 0;
  int64_t received_rows = 0;
  // Routed expert calls (token, expert pairs) the routers chose, and how many
  // of them dynamic skipping left out (counted where the tokens are routed).
  int64_t routed_slots = 0;
  int64_t skipped_slots = 0;
  // Rows this rank's routed experts computed, per layer: tokens * top_k on a
  // single rank, the rows received in dispatch with expert parallelism.
  std::vector<int64_t> layer_expert_rows;
  // Expert parallelism: bytes this rank sent to other ranks in the experts'
  // all-to-alls (dispatch and combine, counts exchange included).
  int64_t all_to_all_bytes = 0;
};

}  // namespace herd
