// An SVG heatmap of rank loads per layer: one panel per placement (e.g.
// before and after planning), rows are layers, columns are ranks, colour is
// rank load / mean rank load on one shared scale (blue below 1, white at 1,
// red above).
#pragma once

#include <string>
#include <vector>

namespace herd {

struct HeatmapPanel {
  std::string title;  // e.g. "before (contiguous): imbalance 4.79"
  int num_layers = 0;
  int num_ranks = 0;
  // F64 [num_layers, num_ranks]: rank load / mean rank load of the layer.
  std::vector<double> ratio;
};

// A standalone SVG document. Panels with mismatched sizes are drawn as
// they are (each has its own grid); an empty list gives an empty figure.
std::string LoadHeatmapSvg(const std::string& title, const std::vector<HeatmapPanel>& panels);

}  // namespace herd
