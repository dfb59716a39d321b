// Mixed precision for `herd compress`: which bits each weight matrix gets.
//
// A bit map assigns bits to "units" (weight matrices named as the checkpoint
// writer names them, with their module, layer and expert). It is built from
// rules in the config-string style of the MoE quantization benchmark
// (../shared/seeds-methods.md §4.2, §7.1 Q5), applied in order so that later
// rules override earlier ones:
//
//   main_B             every routed expert matrix
//   attn_B             every attention matrix (q, k, v, o)
//   shared_B           every shared-expert matrix
//   embed_B            token embedding and lm head
//   layer_L_B          the routed experts of layer L
//   exp_lLeE_B         expert E of layer L
//   keyword__TEXT__B   every matrix whose name contains TEXT
//
// B is 2, 3, 4, 8 or 16 (16 keeps the matrix unquantized). Policies then
// raise units from a low to a high width in a ranked order until the
// average reaches a budget (B7), where the ranking comes from a scorer:
// the outlier scorer of §4.2 item 5, expert routing frequency, or block
// position.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"

namespace herd {

// One weight matrix a bit map assigns bits to.
struct BitUnit {
  std::string name;
  ModuleKind module = ModuleKind::kOther;
  int layer = -1;
  int expert = -1;
  int64_t num_values = 0;
  int bits = 16;  // 16 = unquantized
};

// Every weight matrix of `model` that a bit map may quantize (attention,
// routed and shared experts, embeddings; the router never), named like the
// Herd checkpoint writer names them, all at 16 bits.
std::vector<BitUnit> WeightUnits(const Model& model);

// Applies comma-separated rules (see the file comment) to `units`.
// InvalidArgument naming the rule that does not parse, names a layer or expert
// the model does not have, or gives bits other than 2, 3, 4, 8, 16.
absl::Status ApplyBitRules(const std::string& rules, std::vector<BitUnit>* units);

// Nominal average bits Σ bits·values / Σ values over units with bits < 16
// (the quantized ones), and over all units.
double QuantizedAverageBits(const std::vector<BitUnit>& units);
double AverageBits(const std::vector<BitUnit>& units);

// The outlier score of a weight matrix W [rows, cols] (any stored dtype):
// max over input columns j of max_i |W_ij| / mean_i |W_ij|.
double OutlierScore(const TensorView& weight);

// Raises units, in the order of `ranked` (indices into `units`), from their
// current bits to `high_bits` until the nominal average over all quantized
// units reaches `target_bits`; returns how many were raised. Units already at
// or above high_bits are passed over.
int RaiseUntilAverage(const std::vector<size_t>& ranked, int high_bits, double target_bits,
                      std::vector<BitUnit>* units);

}  // namespace herd
