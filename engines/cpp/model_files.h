// Where a model's files are and what they say: build directories, ONNX metadata, plan sidecars.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "card.h"

namespace s2mlpv2 {

// A build directory is a package: its package.json (schema "s2mlpv2-package", docs/PACKAGE.md,
// written by engines/package.py) names every file. This program reads these fields of it.
inline constexpr const char* kPackageFile = "package.json";
inline constexpr const char* kPackageSchema = "s2mlpv2-package";
inline constexpr int kPackageVersion = 1;  // the newest version this program reads

// What this program runs from a package.
struct PackageFiles {
  // The plan (a route whose runtime is tensorrt or tensorrt-rtx), where the package has a complete one.
  std::optional<std::string> plan;
  // What OpenVINO runs: the recorded CPU route where OpenVINO reads it (an IR, or the portable
  // ONNX graph), else the package's OpenVINO route, else its portable graph. ONNX Runtime's own
  // optimized graph (model.ort.onnx) is never given to OpenVINO.
  std::optional<std::string> openVino;
};

// DIRECTORY/package.json, or Error naming what is missing or wrong (not a build directory, an
// unknown schema, a newer version) and the command that fixes it. A route that lacks a file is
// passed over, as the Python API does; where nothing is left to run, the Error names that file.
PackageFiles readPackage(const std::string& directory);

// The first of `names` inside `directory`, or nothing.
std::optional<std::string> findInDirectory(const std::string& directory, const char* const* names, std::size_t count);

// The value of `key` in an ONNX graph's metadata_props, or nothing. Reads only the top level of
// the protobuf (the graph itself is skipped, not parsed). Throws Error for an unreadable file.
std::optional<std::string> onnxMetadata(const std::string& onnxPath, const std::string& key);

// A card from a card's own JSON file (a checkpoint's NAME.json), an ONNX graph or a plan (planCard).
ModelCard readCardFile(const std::string& path);

// The INFERENCE_PRECISION_HINT an OpenVINO IR was built and verified with, from the sidecar
// beside it (NAME.openvino.json, "inference_precision_hint"); nothing where there is none.
std::optional<std::string> irPrecisionHint(const std::string& xmlPath);

// The JSON written beside a plan (engines/sidecar.py): what the C++ runtime needs of it.
struct PlanSidecar {
  std::string flavour;  // "tensorrt" (TensorRT 11) or "tensorrt-rtx" (TensorRT for RTX)
  std::string flavourVersion;
  std::array<int64_t, 3> batchProfile{};  // min, opt, max
  std::array<int64_t, 3> inputShape{};    // C, H, W
  std::string inputName = "input";
  std::string outputName = "logits";
  std::optional<std::string> cardJson;  // the model card, where the sidecar carries it
};

// The sidecar of `planPath` (PLAN.json), or Error naming what is wrong with it.
PlanSidecar readPlanSidecar(const std::string& planPath);

// A plan's card: from its sidecar, else from an ONNX graph beside it (any of the build
// directory's graphs: they carry the same card).
ModelCard planCard(const std::string& planPath, const PlanSidecar& sidecar);

}  // namespace s2mlpv2
