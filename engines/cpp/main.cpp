// Run an S2-MLPv2 TensorRT 11 plan on one batch read from a raw float32 file and print the top-5.
//
//   s2mlpv2_infer model.plan batch.f32 BATCH [CHANNELS HEIGHT WIDTH]
//
// batch.f32 holds BATCH x C x H x W float32 values, already preprocessed as the model card
// says (resize, crop, mean/std), e.g. numpy's array.astype("float32").tofile("batch.f32").
// The plan's SpatialShift nodes carry their kernel inside the plan (an AOT Python plugin), so
// nothing but libnvinfer and the CUDA runtime is needed here. TensorRT for RTX plans: see README.md.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << "\n";
  }
};

// A positive integer argument, or -1 with one line on stderr (never an uncaught exception).
int64_t positiveArg(const char* text, const char* what) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used == std::string(text).size() && value > 0) return static_cast<int64_t>(value);
  } catch (const std::exception&) {
  }
  std::cerr << "error: " << what << " must be a positive integer, got '" << text << "'\n";
  return -1;
}

bool check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::cerr << "error: " << what << ": " << cudaGetErrorString(status) << "\n";
    return false;
  }
  return true;
}

std::vector<char> readFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) return {};
  std::vector<char> bytes(static_cast<size_t>(file.tellg()));
  file.seekg(0);
  file.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 7) {
    std::cerr << "usage: " << argv[0] << " model.plan batch.f32 BATCH [CHANNELS HEIGHT WIDTH]\n";
    return 2;
  }
  const int64_t batch = positiveArg(argv[3], "BATCH");
  const int64_t channels = argc == 7 ? positiveArg(argv[4], "CHANNELS") : 3;
  const int64_t height = argc == 7 ? positiveArg(argv[5], "HEIGHT") : 224;
  const int64_t width = argc == 7 ? positiveArg(argv[6], "WIDTH") : 224;
  if (batch < 0 || channels < 0 || height < 0 || width < 0) return 2;

  Logger logger;
  const std::vector<char> plan = readFile(argv[1]);
  if (plan.empty()) {
    std::cerr << "error: cannot read plan " << argv[1] << "\n";
    return 2;
  }
  std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
  std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(plan.data(), plan.size())};
  if (!engine) {
    std::cerr << "error: TensorRT could not deserialize " << argv[1]
              << " (built for another TensorRT version or GPU? its .json sidecar says which)\n";
    return 2;
  }
  std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};

  const char* inputName = "input";
  const char* outputName = "logits";
  if (!context->setInputShape(inputName, nvinfer1::Dims4{batch, channels, height, width})) {
    std::cerr << "error: batch " << batch << " is outside the plan's optimization profile\n";
    return 2;
  }
  const nvinfer1::Dims outDims = context->getTensorShape(outputName);
  const int64_t classes = outDims.d[1];

  const size_t inputCount = static_cast<size_t>(batch * channels * height * width);
  const std::vector<char> raw = readFile(argv[2]);
  if (raw.size() != inputCount * sizeof(float)) {
    std::cerr << "error: " << argv[2] << " holds " << raw.size() << " bytes; expected " << inputCount * sizeof(float)
              << " (" << batch << "x" << channels << "x" << height << "x" << width << " float32)\n";
    return 2;
  }
  // The graphs keep float32 input and output (fp16 and int8 plans convert inside).
  void* dInput = nullptr;
  void* dOutput = nullptr;
  std::vector<float> logits(static_cast<size_t>(batch * classes));
  cudaStream_t stream = nullptr;
  bool ok = check(cudaStreamCreate(&stream), "cudaStreamCreate") &&
            check(cudaMalloc(&dInput, raw.size()), "cudaMalloc input") &&
            check(cudaMalloc(&dOutput, logits.size() * sizeof(float)), "cudaMalloc output") &&
            check(cudaMemcpyAsync(dInput, raw.data(), raw.size(), cudaMemcpyHostToDevice, stream), "copy input");
  ok = ok && context->setTensorAddress(inputName, dInput) && context->setTensorAddress(outputName, dOutput);
  ok = ok && context->enqueueV3(stream);
  ok = ok && check(cudaMemcpyAsync(logits.data(), dOutput, logits.size() * sizeof(float), cudaMemcpyDeviceToHost, stream), "copy output") &&
       check(cudaStreamSynchronize(stream), "synchronize");
  cudaFree(dInput);
  cudaFree(dOutput);
  if (stream) cudaStreamDestroy(stream);
  if (!ok) {
    std::cerr << "error: inference failed\n";
    return 1;
  }

  for (int64_t b = 0; b < batch; ++b) {
    const float* row = logits.data() + b * classes;
    std::vector<int> order(static_cast<size_t>(classes));
    std::iota(order.begin(), order.end(), 0);
    const int k = static_cast<int>(std::min<int64_t>(5, classes));
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int a, int c) { return row[a] > row[c]; });
    std::printf("image %lld:", static_cast<long long>(b));
    for (int i = 0; i < k; ++i) std::printf("  class %d (%.3f)", order[i], row[order[i]]);
    std::printf("\n");
  }
  return 0;
}
