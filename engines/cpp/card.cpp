#include "card.h"

#include <nlohmann/json.hpp>

#include <utility>

#include "errors.h"

namespace s2mlpv2 {
namespace {

constexpr const char* kCardFormat = "s2mlpv2-card/1";

const std::pair<const char*, Interpolation> kInterpolations[] = {
    {"nearest", Interpolation::Nearest}, {"box", Interpolation::Box},         {"bilinear", Interpolation::Bilinear},
    {"hamming", Interpolation::Hamming}, {"bicubic", Interpolation::Bicubic}, {"lanczos", Interpolation::Lanczos},
};

Interpolation interpolationNamed(const std::string& name) {
  std::string known;
  for (const auto& [text, value] : kInterpolations) {
    if (name == text) return value;
    known += known.empty() ? text : std::string(", ") + text;
  }
  throw std::invalid_argument("interpolation '" + name + "' is not one of " + known);
}

std::array<float, 3> threeFloats(const nlohmann::json& value, const char* what) {
  const auto numbers = value.get<std::vector<double>>();
  if (numbers.size() != 3) throw std::invalid_argument(std::string(what) + " must hold 3 values (R, G, B)");
  return {static_cast<float>(numbers[0]), static_cast<float>(numbers[1]), static_cast<float>(numbers[2])};
}

Preprocessing parsePreprocessing(const nlohmann::json& p) {
  Preprocessing pre;
  const auto inputSize = p.at("input_size").get<std::vector<int64_t>>();
  if (inputSize.size() != 3 || inputSize[0] != 3 || inputSize[1] <= 0 || inputSize[2] <= 0 || inputSize[1] > 1 << 16 ||
      inputSize[2] > 1 << 16) {
    throw std::invalid_argument("input_size must be [3, H, W] with positive H and W (RGB input)");
  }
  pre.height = static_cast<int>(inputSize[1]);
  pre.width = static_cast<int>(inputSize[2]);
  pre.mean = threeFloats(p.at("mean"), "mean");
  pre.std = threeFloats(p.at("std"), "std");
  for (const float s : pre.std) {
    if (!(s > 0.0f)) throw std::invalid_argument("std must be positive");
  }
  pre.cropPct = p.at("crop_pct").get<double>();
  if (!(pre.cropPct > 0.0)) throw std::invalid_argument("crop_pct must be positive");
  pre.interpolation = interpolationNamed(p.at("interpolation").get<std::string>());
  return pre;
}

}  // namespace

std::string ModelCard::label(int64_t index) const {
  if (index >= 0 && static_cast<size_t>(index) < classNames.size()) return classNames[static_cast<size_t>(index)];
  return std::to_string(index);
}

ModelCard parseCard(const std::string& json, const std::string& source) {
  try {
    const nlohmann::json card = nlohmann::json::parse(json);
    if (!card.is_object() || card.value("format", "") != kCardFormat) {
      throw std::invalid_argument(std::string("format is not ") + kCardFormat);
    }
    ModelCard result;
    result.model = card.value("model", "");
    result.preprocessing = parsePreprocessing(card.at("preprocessing"));
    const auto names = card.find("class_names");
    if (names != card.end() && !names->is_null()) result.classNames = names->get<std::vector<std::string>>();
    return result;
  } catch (const std::exception& e) {  // nlohmann's parse, type and missing-key errors, and ours
    throw Error(source + " is not a valid S2-MLPv2 model card (" + oneLine(e.what(), 160) +
                "); re-export the model with python -m pipeline.export");
  }
}

}  // namespace s2mlpv2
