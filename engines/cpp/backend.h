// An inference backend: preprocessed images in, logits out. OpenVINO (CPUs) and TensorRT (GPUs)
// implement it; openModel picks one for a model path.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "card.h"
#include "model_files.h"

namespace s2mlpv2 {

// Images per inference call for a graph whose batch is dynamic, unless told otherwise.
inline constexpr int64_t kDefaultBatch = 32;

struct BackendOptions {
  std::string backend = "auto";  // "auto": TensorRT for a plan (or a build directory, where a GPU is present), else OpenVINO
  int64_t batch = 0;  // images per call; 0: the model's own (a plan's profile maximum, a static batch, else kDefaultBatch)
  // OpenVINO's compile settings
  std::string device = "CPU";
  int threads = 0;  // INFERENCE_NUM_THREADS; 0 leaves it to OpenVINO
  // INFERENCE_PRECISION_HINT: f32, bf16 or f16; "default" leaves it to the device; empty: the hint
  // an IR was built with (its sidecar's), else f32
  std::string precision;
  std::string hint = "LATENCY";  // PERFORMANCE_HINT: LATENCY or THROUGHPUT
};

// The command-line options that choose and configure a backend, shared by the programs.
inline constexpr const char* kBackendOptionsHelp =
    "  --batch N              images per inference call (default: a plan's profile maximum, a static\n"
    "                         batch, else 32)\n"
    "  --backend B            auto (default): TensorRT for a plan, and for a build directory with a plan\n"
    "                         where a GPU is present; otherwise OpenVINO\n"
    "  --device D             OpenVINO device (default: CPU)\n"
    "  --threads N            OpenVINO's INFERENCE_NUM_THREADS (default: OpenVINO's choice)\n"
    "  --inference-precision P\n"
    "                         OpenVINO's INFERENCE_PRECISION_HINT: f32, bf16, f16, or default (the device's\n"
    "                         choice); by default the hint an IR's sidecar (NAME.openvino.json) records,\n"
    "                         else f32 (the graph's own numbers)\n"
    "  --hint H               OpenVINO's PERFORMANCE_HINT: LATENCY (default) or THROUGHPUT\n";

// Applies `option` (one of kBackendOptionsHelp's) with `value` to `options`; false when `option`
// is not a backend option. Throws Error for a bad value.
bool setBackendOption(BackendOptions& options, const std::string& option, const std::string& value);

// `text` as a positive integer, or Error naming `option`.
int64_t positiveInteger(const std::string& option, const std::string& text);

class Backend {
 public:
  virtual ~Backend() = default;
  // The model card the artifact carries.
  virtual const ModelCard& card() const = 0;
  // The most images one infer() call takes.
  virtual int64_t maxBatch() const = 0;
  virtual int64_t classes() const = 0;
  // Logits (count x classes, row-major) of `count` preprocessed images (count x 3 x H x W
  // float32); valid until the next call. Throws Error when inference fails.
  virtual const float* infer(const float* images, int64_t count) = 0;
  // One line: the runtime, its version, the device and the file.
  virtual std::string description() const = 0;
};

// The backend for MODEL: a build directory, or an .xml, .onnx or .plan file (backends.cpp).
// Throws Error with one line when it cannot be loaded.
std::unique_ptr<Backend> openModel(const std::string& model, const BackendOptions& options);

// OpenVINO, on an IR (.xml) or an ONNX graph (openvino_backend.cpp).
std::unique_ptr<Backend> openOpenVino(const std::string& path, const BackendOptions& options);

// TensorRT on a plan, with the card and sidecar read beside it (tensorrt_backend.cpp).
std::unique_ptr<Backend> openTensorRt(const std::string& planPath, const ModelCard& card, const PlanSidecar& sidecar,
                                      int64_t batch);
// Whether a CUDA device is present for TensorRT to run on.
bool tensorRtDeviceAvailable();

}  // namespace s2mlpv2
