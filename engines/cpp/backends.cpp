// openModel: which backend runs MODEL and which file of a build directory it loads; and the
// command-line options that configure it.
#include <algorithm>
#include <exception>
#include <filesystem>
#include <iterator>

#include "backend.h"
#include "errors.h"

namespace s2mlpv2 {
namespace {

namespace fs = std::filesystem;

bool isPlan(const fs::path& path) { return path.extension() == ".plan" || path.extension() == ".engine"; }

std::unique_ptr<Backend> openPlan(const fs::path& model, const BackendOptions& options) {
  std::string plan = model.string();
  if (fs::is_directory(model)) {
    const std::optional<std::string> found = readPackage(model.string()).plan;
    if (!found) {
      throw Error(model.string() + " holds no TensorRT plan; build one with python build_engine.py --backend tensorrt-rtx (or tensorrt)");
    }
    plan = *found;
  }
#ifdef S2MLPV2_WITH_TENSORRT
  const PlanSidecar sidecar = readPlanSidecar(plan);
  if (sidecar.flavour != S2MLPV2_TENSORRT_FLAVOUR) {
    throw Error(plan + " was built with " + sidecar.flavour + " " + sidecar.flavourVersion + ", but this program links " +
                S2MLPV2_TENSORRT_FLAVOUR + "; rebuild the plan with --backend " + S2MLPV2_TENSORRT_FLAVOUR +
                ", or configure CMake with the other SDK's TENSORRT_ROOT");
  }
  return openTensorRt(plan, planCard(plan, sidecar), sidecar, options.batch);
#else
  (void)options;
  throw Error("this s2mlpv2_classify was built without the TensorRT backend, so it cannot run " + plan +
              "; configure CMake with -DTENSORRT_ROOT=<TensorRT SDK> (and CUDA), or give an .xml or .onnx model");
#endif
}

std::unique_ptr<Backend> openGraph(const fs::path& model, const BackendOptions& options) {
  std::string graph = model.string();
  if (fs::is_directory(model)) {
    const std::optional<std::string> found = readPackage(model.string()).openVino;
    if (!found) {
      throw Error(model.string() + " holds no model OpenVINO reads (no IR and no portable ONNX graph); build one with " +
                  "python build_engine.py --backend openvino");
    }
    graph = *found;
  } else if (model.extension() != ".xml" && model.extension() != ".onnx") {
    throw Error(model.string() + ": not a model this program runs; give a build directory, or an .xml, .onnx or .plan file");
  }
#ifdef S2MLPV2_WITH_OPENVINO
  return openOpenVino(graph, options);
#else
  (void)options;
  throw Error("this s2mlpv2_classify was built without the OpenVINO backend, so it cannot run " + graph +
              "; configure CMake with -DOpenVINO_DIR=<site-packages>/openvino/cmake, or give a .plan");
#endif
}

// Where `auto` sends a build directory: to TensorRT where it holds a plan and a GPU is present.
bool preferPlan(const fs::path& directory) {
#ifdef S2MLPV2_WITH_TENSORRT
  return readPackage(directory.string()).plan.has_value() && tensorRtDeviceAvailable();
#else
  (void)directory;
  return false;
#endif
}

}  // namespace

int64_t positiveInteger(const std::string& option, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == text.size() && value > 0) return value;
  } catch (const std::exception&) {  // not a number, or out of range
  }
  throw Error(option + " must be a positive integer, got '" + text + "'");
}

bool setBackendOption(BackendOptions& options, const std::string& option, const std::string& value) {
  if (option == "--batch") {
    options.batch = positiveInteger(option, value);
  } else if (option == "--backend") {
    options.backend = value;
  } else if (option == "--device") {
    options.device = value;
  } else if (option == "--threads") {
    options.threads = static_cast<int>(std::min<int64_t>(positiveInteger(option, value), 4096));
  } else if (option == "--inference-precision") {
    options.precision = value;
  } else if (option == "--hint") {
    options.hint = value;
  } else {
    return false;
  }
  return true;
}

std::unique_ptr<Backend> openModel(const std::string& model, const BackendOptions& options) {
  const fs::path path(model);
  if (!fs::is_directory(path) && !fs::is_regular_file(path)) throw Error(model + ": no such model file or build directory");
  if (options.backend == "tensorrt") return openPlan(path, options);
  if (options.backend == "openvino") return openGraph(path, options);
  if (options.backend != "auto") throw Error("--backend must be auto, openvino or tensorrt, got '" + options.backend + "'");
  if (isPlan(path) || (fs::is_directory(path) && preferPlan(path))) return openPlan(path, options);
  return openGraph(path, options);
}

}  // namespace s2mlpv2
