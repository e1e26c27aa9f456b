// s2mlpv2_bench MODEL IMAGE... [--batches 1,8] [--iterations N] [--warmup N] [OpenVINO settings]
//
// Times what s2mlpv2_classify does, per batch size: the whole pipeline (decode, preprocess,
// infer, top-1 of `batch` image files), decoding and preprocessing alone, and inference alone
// (one preprocessed batch), each call timed on its own. Prints one JSON object: {"runtime": ...,
// "rows": [{"batch": B, "pipeline_ms": [...], "prepare_ms": [...], "infer_ms": [...]}]}. engines/cpp/bench.py runs it beside the
// same work in Python and prints the comparison.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "backend.h"
#include "classify.h"
#include "errors.h"
#include "preprocess.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Settings {
  std::string model;
  std::vector<std::string> images;
  std::vector<int64_t> batches{1, 8};
  int iterations = 30;
  int warmup = 3;
  s2mlpv2::BackendOptions backend;
};

int count(const std::string& option, const std::string& text) {
  return static_cast<int>(std::min<int64_t>(s2mlpv2::positiveInteger(option, text), 1'000'000));
}

Settings parse(int argc, char** argv) {
  Settings settings;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      positional.push_back(arg);
      continue;
    }
    if (i + 1 >= argc) throw s2mlpv2::Error(arg + " needs a value");
    const std::string value = argv[++i];
    if (arg == "--batches") {
      settings.batches.clear();
      std::stringstream list(value);
      for (std::string item; std::getline(list, item, ',');) settings.batches.push_back(count(arg, item));
    } else if (arg == "--iterations") {
      settings.iterations = count(arg, value);
    } else if (arg == "--warmup") {
      settings.warmup = count(arg, value);
    } else if (arg == "--batch" || !s2mlpv2::setBackendOption(settings.backend, arg, value)) {
      throw s2mlpv2::Error("unknown option " + arg);
    }
  }
  if (positional.size() < 2) {
    throw s2mlpv2::Error(
        "usage: s2mlpv2_bench MODEL IMAGE... [--batches 1,8] [--iterations N] [--warmup N] [--threads N] "
        "[--inference-precision P] [--device D] [--hint LATENCY|THROUGHPUT] [--backend B]");
  }
  settings.model = positional[0];
  settings.images = s2mlpv2::listImages({positional.begin() + 1, positional.end()});
  return settings;
}

template <typename Work>
std::vector<double> timed(int warmup, int iterations, Work work) {
  std::vector<double> milliseconds;
  for (int i = 0; i < warmup + iterations; ++i) {
    const auto start = Clock::now();
    work();
    const std::chrono::duration<double, std::milli> took = Clock::now() - start;
    if (i >= warmup) milliseconds.push_back(took.count());
  }
  return milliseconds;
}

nlohmann::json benchBatch(const Settings& settings, int64_t batch, std::string& runtime) {
  s2mlpv2::BackendOptions options = settings.backend;
  options.batch = batch;
  const std::unique_ptr<s2mlpv2::Backend> backend = s2mlpv2::openModel(settings.model, options);
  if (backend->maxBatch() < batch) {
    throw s2mlpv2::Error(settings.model + " runs at most batch " + std::to_string(backend->maxBatch()));
  }
  runtime = backend->description();

  // The next `batch` images, cycling through the list.
  size_t cursor = 0;
  const auto next = [&] {
    std::vector<std::string> paths;
    for (int64_t i = 0; i < batch; ++i) paths.push_back(settings.images[cursor++ % settings.images.size()]);
    return paths;
  };

  const s2mlpv2::Preprocessing& pre = backend->card().preprocessing;
  const size_t imageSize = 3 * static_cast<size_t>(pre.height) * static_cast<size_t>(pre.width);
  std::vector<float> images(static_cast<size_t>(batch) * imageSize);
  const auto prepare = [&] {
    const std::vector<std::string> paths = next();
    for (size_t i = 0; i < paths.size(); ++i)
      s2mlpv2::preprocess(s2mlpv2::decodeImage(paths[i]), pre, images.data() + i * imageSize);
  };
  const auto prepareOnly = timed(settings.warmup, settings.iterations, prepare);
  const auto inferOnly = timed(settings.warmup, settings.iterations, [&] { backend->infer(images.data(), batch); });

  s2mlpv2::Classifier classifier(*backend, 1);
  const auto pipeline = timed(settings.warmup, settings.iterations, [&] {
    classifier.run(next(), [](const s2mlpv2::ImageResult& result) {
      if (!result.error.empty()) throw s2mlpv2::Error(result.error);
    });
  });
  return {{"batch", batch}, {"pipeline_ms", pipeline}, {"prepare_ms", prepareOnly}, {"infer_ms", inferOnly}};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Settings settings = parse(argc, argv);
    nlohmann::json rows = nlohmann::json::array();
    std::string runtime;
    for (const int64_t batch : settings.batches) rows.push_back(benchBatch(settings, batch, runtime));
    std::cout << nlohmann::json{{"runtime", runtime}, {"rows", rows}}.dump() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << s2mlpv2::oneLine(e.what()) << "\n";
    return 2;
  }
}
