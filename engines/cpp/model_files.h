// Where a model's files are and what they say: build directories, ONNX metadata, plan sidecars.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "card.h"

namespace s2mlpv2 {

// What OpenVINO runs from a build directory (build/<model>-<precision>/): the CPU route its
// summary.json records (recordedCpuRoute), as the Python API does; without one, the first that
// exists of model.xml (its IR), the deployed precision's graph, the fp32 graph.
inline constexpr const char* kOpenVinoFiles[] = {"model.xml", "model-int8.onnx", "model-fp16.onnx", "model.onnx"};
// What TensorRT runs from a build directory.
inline constexpr const char* kPlanFile = "model.plan";

// The first of `names` inside `directory`, or nothing.
std::optional<std::string> findInDirectory(const std::string& directory, const char* const* names, std::size_t count);

// The file of the fastest CPU route that passed its gates, as `directory`/summary.json records it
// ("cpu_route": {"artifact": ...}), where that file is an .xml or .onnx that still exists; nothing
// otherwise (no summary, no route, an unreadable summary: the caller falls back to kOpenVinoFiles).
std::optional<std::string> recordedCpuRoute(const std::string& directory);

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
