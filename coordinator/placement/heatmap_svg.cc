#include "coordinator/placement/heatmap_svg.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace herd {
namespace {

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Blue (0) -> white (1) -> red (top), red on a log scale.
std::string Colour(double ratio, double top) {
  double r = 255, g = 255, b = 255;
  if (ratio < 1.0) {
    const double t = std::clamp(1.0 - ratio, 0.0, 1.0);
    r = 255 + t * (44 - 255);
    g = 255 + t * (123 - 255);
    b = 255 + t * (182 - 255);
  } else if (ratio > 1.0) {
    const double t = std::clamp(std::log(ratio) / std::log(top), 0.0, 1.0);
    r = 255 + t * (215 - 255);
    g = 255 + t * (25 - 255);
    b = 255 + t * (28 - 255);
  }
  return absl::StrFormat("#%02x%02x%02x", static_cast<int>(std::lround(r)),
                         static_cast<int>(std::lround(g)), static_cast<int>(std::lround(b)));
}

}  // namespace

std::string LoadHeatmapSvg(const std::string& title, const std::vector<HeatmapPanel>& panels) {
  double top = 1.25;
  int max_layers = 1;
  for (const HeatmapPanel& p : panels) {
    for (double v : p.ratio) top = std::max(top, v);
    max_layers = std::max(max_layers, p.num_layers);
  }
  const double cell_h = std::clamp(420.0 / max_layers, 2.0, 14.0);
  const double margin_left = 44, margin_top = 56, gap = 36, legend_h = 56;
  std::vector<double> widths;
  double x = margin_left;
  std::string body;
  for (const HeatmapPanel& p : panels) {
    const double cell_w = std::clamp(520.0 / std::max(1, p.num_ranks), 1.0, 16.0);
    const double w = cell_w * p.num_ranks;
    absl::StrAppendFormat(&body, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">%s</text>\n", x,
                          margin_top - 22, Escape(p.title));
    absl::StrAppendFormat(&body, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">rank 0..%d</text>\n",
                          x, margin_top - 6, p.num_ranks - 1);
    absl::StrAppendFormat(&body, "<g shape-rendering=\"crispEdges\">\n");
    for (int l = 0; l < p.num_layers; ++l) {
      for (int r = 0; r < p.num_ranks; ++r) {
        const size_t i = static_cast<size_t>(l) * p.num_ranks + r;
        const double v = i < p.ratio.size() ? p.ratio[i] : 1.0;
        absl::StrAppendFormat(&body,
                              "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                              "fill=\"%s\"/>\n",
                              x + r * cell_w, margin_top + l * cell_h, cell_w, cell_h,
                              Colour(v, top));
      }
    }
    absl::StrAppend(&body, "</g>\n");
    absl::StrAppendFormat(&body,
                          "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                          "fill=\"none\" stroke=\"#444\"/>\n",
                          x, margin_top, w, cell_h * p.num_layers);
    widths.push_back(w);
    x += w + gap;
  }
  // Layer labels on the left, every few rows.
  const int step = std::max(1, static_cast<int>(std::ceil(12.0 / cell_h)));
  for (int l = 0; l < max_layers; l += step) {
    absl::StrAppendFormat(
        &body, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" text-anchor=\"end\">%d</text>\n",
        margin_left - 4, margin_top + (l + 0.8) * cell_h, l);
  }
  absl::StrAppendFormat(&body,
                        "<text x=\"10\" y=\"%.1f\" font-size=\"10\" "
                        "transform=\"rotate(-90 10 %.1f)\">layer</text>\n",
                        margin_top + 40, margin_top + 40);
  // Legend: a gradient from 0 to top.
  const double legend_y = margin_top + max_layers * cell_h + 20;
  const int steps = 60;
  const double legend_w = 300;
  for (int i = 0; i < steps; ++i) {
    const double ratio = top * i / (steps - 1);
    absl::StrAppendFormat(
        &body, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"10\" fill=\"%s\"/>\n",
        margin_left + legend_w * i / steps, legend_y, legend_w / steps + 0.5, Colour(ratio, top));
  }
  absl::StrAppendFormat(
      &body,
      "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">0</text>"
      "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\">1 "
      "(mean)</text>"
      "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.2f</text>\n",
      margin_left, legend_y + 22, margin_left + legend_w / top, legend_y + 22,
      margin_left + legend_w, legend_y + 22, top);
  absl::StrAppendFormat(&body,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">rank load / mean rank "
                        "load of the layer</text>\n",
                        margin_left + legend_w + 12, legend_y + 9);
  const double width = std::max(x - gap + 20, margin_left + legend_w + 260);
  const double height = legend_y + legend_h - 20;
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.1f\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s</text>\n",
      width, height, width, height, margin_left, Escape(title));
  absl::StrAppend(&svg, body, "</svg>\n");
  return svg;
}

}  // namespace herd
