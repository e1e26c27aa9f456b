// The OpenVINO backend: an IR (.xml + .bin) or an ONNX graph, compiled for a CPU (or any device
// OpenVINO names), with the model card from the model's rt_info.
#include <openvino/frontend/manager.hpp>
#include <openvino/openvino.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <vector>

#include "backend.h"
#include "errors.h"

namespace s2mlpv2 {
namespace {

// Core::read_model, with the frontend named by the file's suffix: read_model tries every
// frontend on a file the right one rejects, and some of them log pages of parse errors first.
std::shared_ptr<ov::Model> readModel(const std::string& path) {
  const bool onnx = std::filesystem::path(path).extension() == ".onnx";
  if (onnx && !onnxMetadata(path, kCardKey)) return nullptr;  // not ours: no card (or Error: not ONNX at all)
  ov::frontend::FrontEndManager frontends;
  const ov::frontend::FrontEnd::Ptr frontend = frontends.load_by_framework(onnx ? "onnx" : "ir");
  const ov::frontend::InputModel::Ptr input = frontend->load(path);
  if (!input) throw Error(path + " is not a readable " + (onnx ? "ONNX graph" : "OpenVINO IR") + "; re-export it");
  return frontend->convert(input);
}

class OpenVinoBackend final : public Backend {
 public:
  OpenVinoBackend(const std::string& path, const BackendOptions& options) : path_(path), device_(options.device) {
    const std::shared_ptr<ov::Model> model = readModel(path);
    // read_model keeps an ONNX graph's metadata_props in rt_info["framework"], and an IR saved
    // from it keeps them too.
    if (!model || !model->has_rt_info("framework", kCardKey)) throw noCard();
    card_ = parseCard(model->get_rt_info<std::string>("framework", kCardKey), "the card in " + path);
    if (model->inputs().size() != 1 || model->outputs().size() != 1) {
      throw Error(path + " has " + std::to_string(model->inputs().size()) + " inputs and " +
                  std::to_string(model->outputs().size()) +
                  " outputs; an S2-MLPv2 classifier has one of each (images in, logits out)");
    }
    checkShapes(*model);
    const ov::Dimension batch = model->input().get_partial_shape()[0];
    staticBatch_ = batch.is_static();
    batch_ = staticBatch_ ? batch.get_length() : (options.batch > 0 ? options.batch : kDefaultBatch);
    if (staticBatch_ && options.batch > batch_) {
      throw Error(path + " takes batches of exactly " + std::to_string(batch_) +
                  " images; drop --batch or re-export with a dynamic batch");
    }
    classes_ = model->output().get_partial_shape()[1].get_length();

    ov::AnyMap config{{"PERFORMANCE_HINT", options.hint}};
    if (options.threads > 0) config.emplace("INFERENCE_NUM_THREADS", options.threads);
    std::string precision = options.precision;
    if (precision.empty() && std::filesystem::path(path).extension() == ".xml") precision = irPrecisionHint(path).value_or("");
    if (precision.empty()) precision = "f32";
    if (precision != "default") config.emplace("INFERENCE_PRECISION_HINT", precision);
    ov::Core core;
    compiled_ = core.compile_model(model, options.device, config);
    request_ = compiled_.create_infer_request();
    // What the device computes in: where a hint is not supported, the plugin substitutes another.
    computesIn_ = compiled_.get_property(ov::hint::inference_precision).to_string();
    imageSize_ = 3 * static_cast<size_t>(card_.preprocessing.height) * static_cast<size_t>(card_.preprocessing.width);
  }

  const ModelCard& card() const override { return card_; }
  int64_t maxBatch() const override { return batch_; }
  int64_t classes() const override { return classes_; }

  const float* infer(const float* images, int64_t count) override {
    // A static batch is filled up with zeros; their rows are ignored.
    const int64_t rows = staticBatch_ ? batch_ : count;
    float* input = const_cast<float*>(images);  // ov::Tensor wraps, never writes, the caller's buffer
    if (rows != count) {
      padded_.assign(static_cast<size_t>(rows) * imageSize_, 0.0f);
      std::copy_n(images, static_cast<size_t>(count) * imageSize_, padded_.begin());
      input = padded_.data();
    }
    const Preprocessing& pre = card_.preprocessing;
    const ov::Shape shape{static_cast<size_t>(rows), 3, static_cast<size_t>(pre.height), static_cast<size_t>(pre.width)};
    try {
      request_.set_input_tensor(ov::Tensor(ov::element::f32, shape, input));
      request_.infer();
      return request_.get_output_tensor().data<const float>();
    } catch (const std::exception& e) {  // ov::Exception
      throw Error("OpenVINO inference failed on " + path_ + " (" + oneLine(e.what(), 240) + ")");
    }
  }

  std::string description() const override {
    return std::string("OpenVINO ") + ov::get_openvino_version().buildNumber + " on " + device_ + " (" + computesIn_ + "), " +
           path_ + ", batch " + std::to_string(batch_) + (staticBatch_ ? " (static)" : "");
  }

 private:
  Error noCard() const {
    return Error(path_ + " carries no model card (no " + kCardKey +
                 " in its metadata): it was not written by this project; export it with python -m pipeline.export");
  }

  // Refuse a graph whose input is not 3 x H x W float32 as the card says, or whose output is not
  // (batch, classes), before compiling anything.
  void checkShapes(const ov::Model& model) const {
    const ov::PartialShape input = model.input().get_partial_shape();
    const Preprocessing& pre = card_.preprocessing;
    const bool inputMatches = input.rank().is_static() && input.rank().get_length() == 4 && input[1].compatible(3) &&
                              input[2].compatible(pre.height) && input[3].compatible(pre.width) &&
                              model.input().get_element_type() == ov::element::f32;
    if (!inputMatches) {
      throw Error(path_ + " takes " + input.to_string() + " " + model.input().get_element_type().get_type_name() +
                  ", but its card says 3x" + std::to_string(pre.height) + "x" + std::to_string(pre.width) +
                  " f32 images; re-export the model with python -m pipeline.export");
    }
    const ov::PartialShape output = model.output().get_partial_shape();
    if (!(output.rank().is_static() && output.rank().get_length() == 2 && output[1].is_static()) ||
        model.output().get_element_type() != ov::element::f32) {
      throw Error(path_ + " outputs " + output.to_string() + " " + model.output().get_element_type().get_type_name() +
                  "; expected (batch, classes) f32 logits");
    }
  }

  std::string path_;
  std::string device_;
  std::string computesIn_;
  ModelCard card_;
  bool staticBatch_ = false;
  int64_t batch_ = 0;
  int64_t classes_ = 0;
  size_t imageSize_ = 0;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  std::vector<float> padded_;
};

}  // namespace

std::unique_ptr<Backend> openOpenVino(const std::string& path, const BackendOptions& options) {
  try {
    return std::make_unique<OpenVinoBackend>(path, options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // ov::Exception: a file OpenVINO cannot read or compile
    throw Error("OpenVINO cannot load " + path + " (" + oneLine(e.what(), 240) +
                "); re-export it, or check --device, --inference-precision and --hint");
  }
}

}  // namespace s2mlpv2
