// The model card: how an image becomes the model's input, and the names of its classes.
//
// Every artifact the project writes carries it as JSON (layout "s2mlpv2-card/1"): an ONNX graph
// in metadata_props["s2mlpv2.card"], an OpenVINO model in rt_info ["framework"]["s2mlpv2.card"],
// a plan's sidecar under "card", a checkpoint in NAME.json beside it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace s2mlpv2 {

inline constexpr const char* kCardKey = "s2mlpv2.card";

// PIL's resampling filters, as the card names them (timm's eval transform resizes with PIL).
enum class Interpolation { Nearest, Box, Bilinear, Hamming, Bicubic, Lanczos };

struct Preprocessing {
  int height = 224;  // the model's input is 3 x height x width (RGB)
  int width = 224;
  std::array<float, 3> mean{};  // per channel, applied to pixel / 255
  std::array<float, 3> std{};
  double cropPct = 0.875;  // the image is resized to floor(size / crop_pct) before the center crop
  Interpolation interpolation = Interpolation::Bicubic;
};

struct ModelCard {
  std::string model;
  Preprocessing preprocessing;
  std::vector<std::string> classNames;  // empty when the card has none

  // The class name of `index`, or the index itself where the card names no classes.
  std::string label(int64_t index) const;
};

// Parse a card's JSON text; `source` names where it came from in the error.
ModelCard parseCard(const std::string& json, const std::string& source);

}  // namespace s2mlpv2
