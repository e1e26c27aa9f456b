// The TensorRT backend: a plan (TensorRT 11 or TensorRT for RTX: the same nvinfer1 API), run on
// a CUDA GPU. The plan's SpatialShift nodes, in plugin form, carry their kernel inside the plan
// (TensorRT 11's AOT plugin), so only the runtime library and CUDA's runtime are linked. A
// TensorRT for RTX plan from a plugin-form graph needs its plugin registered first: build those
// from the standard-ops graph (the default) for C++.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "backend.h"
#include "errors.h"

namespace s2mlpv2 {
namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw Error(std::string(what) + " failed: " + cudaGetErrorString(status));
}

// Device memory, freed with its owner.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) { check(cudaMalloc(&data_, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return data_; }

 private:
  void* data_ = nullptr;
};

class Stream {
 public:
  Stream() { check(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

std::vector<char> readPlan(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (!file.good() && !file.eof()) throw Error("cannot read plan " + path);
  if (bytes.empty()) throw Error("plan " + path + " is empty; rebuild it");
  return bytes;
}

class TensorRtBackend final : public Backend {
 public:
  TensorRtBackend(const std::string& path, const ModelCard& card, const PlanSidecar& sidecar, int64_t batch)
      : path_(path), card_(card), sidecar_(sidecar) {
    const int64_t low = sidecar.batchProfile[0];
    const int64_t high = sidecar.batchProfile[2];
    if (batch > high) {
      throw Error(path + " runs batches of " + std::to_string(low) + " to " + std::to_string(high) + " images; give --batch " +
                  std::to_string(high) + " or less, or rebuild the plan with a larger profile");
    }
    batch_ = batch > 0 ? batch : high;
    minBatch_ = low;
    const Preprocessing& pre = card.preprocessing;
    if (sidecar.inputShape != std::array<int64_t, 3>{3, pre.height, pre.width}) {
      throw Error(path + " takes " + std::to_string(sidecar.inputShape[1]) + "x" + std::to_string(sidecar.inputShape[2]) +
                  " images, but its card says " + std::to_string(pre.height) + "x" + std::to_string(pre.width) +
                  "; rebuild the plan");
    }
    imageSize_ = 3 * static_cast<size_t>(pre.height) * static_cast<size_t>(pre.width);

    const std::vector<char> plan = readPlan(path);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (runtime_) engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) {
      throw Error("TensorRT could not deserialize " + path + " (built for another TensorRT version or GPU? its sidecar " +
                  "says which: " + sidecar.flavour + " " + sidecar.flavourVersion + ")");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT could not create an execution context for " + path);
    const nvinfer1::Dims logits = engine_->getTensorShape(sidecar.outputName.c_str());
    if (logits.nbDims != 2 || logits.d[1] <= 0) {
      throw Error(path + " has no output '" + sidecar.outputName + "' of shape (batch, classes); rebuild the plan");
    }
    classes_ = logits.d[1];

    // Room for the largest batch run, padded up to the profile's minimum.
    const size_t rows = static_cast<size_t>(std::max(batch_, minBatch_));
    input_ = std::make_unique<DeviceBuffer>(rows * imageSize_ * sizeof(float));
    output_ = std::make_unique<DeviceBuffer>(rows * static_cast<size_t>(classes_) * sizeof(float));
    logits_.resize(rows * static_cast<size_t>(classes_));
  }

  const ModelCard& card() const override { return card_; }
  int64_t maxBatch() const override { return batch_; }
  int64_t classes() const override { return classes_; }

  const float* infer(const float* images, int64_t count) override {
    const int64_t rows = std::max(count, minBatch_);  // rows beyond `count` hold whatever was there; ignored
    const Preprocessing& pre = card_.preprocessing;
    const char* input = sidecar_.inputName.c_str();
    const char* output = sidecar_.outputName.c_str();
    if (!context_->setInputShape(input, nvinfer1::Dims4{rows, 3, pre.height, pre.width})) {
      throw Error("batch " + std::to_string(rows) + " is outside the optimization profile of " + path_);
    }
    const size_t inputBytes = static_cast<size_t>(count) * imageSize_ * sizeof(float);
    check(cudaMemcpyAsync(input_->get(), images, inputBytes, cudaMemcpyHostToDevice, stream_.get()), "copy to the GPU");
    // The graphs keep float32 input and output (fp16 and int8 plans convert inside).
    if (!context_->setTensorAddress(input, input_->get()) || !context_->setTensorAddress(output, output_->get()) ||
        !context_->enqueueV3(stream_.get())) {
      throw Error("TensorRT could not run " + path_);
    }
    const size_t outputBytes = static_cast<size_t>(count) * static_cast<size_t>(classes_) * sizeof(float);
    check(cudaMemcpyAsync(logits_.data(), output_->get(), outputBytes, cudaMemcpyDeviceToHost, stream_.get()),
          "copy from the GPU");
    check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    return logits_.data();
  }

  std::string description() const override {
    return "TensorRT (" + sidecar_.flavour + " " + sidecar_.flavourVersion + ") on the GPU, " + path_ + ", batch " +
           std::to_string(batch_);
  }

 private:
  std::string path_;
  ModelCard card_;
  PlanSidecar sidecar_;
  int64_t batch_ = 0;
  int64_t minBatch_ = 1;
  int64_t classes_ = 0;
  size_t imageSize_ = 0;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  Stream stream_;
  std::unique_ptr<DeviceBuffer> input_;
  std::unique_ptr<DeviceBuffer> output_;
  std::vector<float> logits_;
};

}  // namespace

std::unique_ptr<Backend> openTensorRt(const std::string& planPath, const ModelCard& card, const PlanSidecar& sidecar,
                                      int64_t batch) {
  return std::make_unique<TensorRtBackend>(planPath, card, sidecar, batch);
}

bool tensorRtDeviceAvailable() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
}

}  // namespace s2mlpv2
