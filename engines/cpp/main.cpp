// s2mlpv2_classify MODEL IMAGE... [--top-k K]: the most probable classes of each image.
//
// MODEL is a build directory of `python build_engine.py` or an .xml (OpenVINO IR), .onnx or
// .plan (TensorRT) file. Preprocessing and class names come from the model card inside it. One
// line per image and class: IMAGE <tab> CLASS_INDEX <tab> LABEL <tab> PROBABILITY.
//
// Exit status: 0 when every image was classified; 1 when some image could not be read (the
// others are still classified); 2 for a bad argument or a model that cannot be loaded. Every
// failure is one line on stderr.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "classify.h"
#include "errors.h"

namespace {

constexpr const char* kUsage =
    "usage: s2mlpv2_classify MODEL IMAGE... [--top-k K] [--batch N] [--backend auto|openvino|tensorrt]\n"
    "                        [--device CPU] [--threads N] [--inference-precision f32|bf16|f16|default]\n"
    "                        [--hint LATENCY|THROUGHPUT] [--verbose]\n";

constexpr const char* kHelp =
    "Classify images with an S2-MLPv2 model; one line per image (per class with --top-k):\n"
    "IMAGE<TAB>CLASS_INDEX<TAB>LABEL<TAB>PROBABILITY (softmax of the logits).\n"
    "\n"
    "  MODEL                  a build directory of python build_engine.py, or an .xml, .onnx or .plan file\n"
    "                         (a directory: OpenVINO runs model.xml, model-int8.onnx, model-fp16.onnx or\n"
    "                         model.onnx, the first present; TensorRT runs model.plan)\n"
    "  IMAGE                  JPEG, PNG, BMP, GIF or PNM files, or folders of them\n"
    "  --top-k K              the K most probable classes of each image (default: 1)\n"
    "  --verbose              say on stderr which runtime and file run\n";

constexpr const char* kExitStatus =
    "\n"
    "Exit status: 0 all classified, 1 some image unreadable (the others are classified), 2 bad\n"
    "arguments or a model that cannot be loaded.\n";

struct Arguments {
  std::string model;
  std::vector<std::string> images;
  int64_t topK = 1;
  bool verbose = false;
  s2mlpv2::BackendOptions backend;
};

// Throws Error for a bad argument; returns false when --help was asked for.
bool parse(int argc, char** argv, Arguments& args) {
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") return false;
    if (arg == "--verbose") {
      args.verbose = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      positional.push_back(arg);
      continue;
    }
    if (i + 1 >= argc) throw s2mlpv2::Error(arg + " needs a value");
    const std::string value = argv[++i];
    if (arg == "--top-k") {
      args.topK = s2mlpv2::positiveInteger(arg, value);
    } else if (!s2mlpv2::setBackendOption(args.backend, arg, value)) {
      throw s2mlpv2::Error("unknown option " + arg + " (see --help)");
    }
  }
  if (positional.size() < 2) throw s2mlpv2::Error("give a MODEL and at least one IMAGE");
  args.model = positional[0];
  args.images.assign(positional.begin() + 1, positional.end());
  return true;
}

int run(int argc, char** argv) {
  Arguments args;
  try {
    if (!parse(argc, argv, args)) {
      std::cout << kUsage << "\n" << kHelp << s2mlpv2::kBackendOptionsHelp << kExitStatus;
      return 0;
    }
  } catch (const s2mlpv2::Error& e) {
    std::cerr << kUsage << "error: " << e.what() << "\n";
    return 2;
  }

  std::unique_ptr<s2mlpv2::Backend> backend;
  try {
    backend = s2mlpv2::openModel(args.model, args.backend);
  } catch (const s2mlpv2::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  if (args.verbose) std::cerr << backend->description() << "\n";

  bool unreadable = false;
  const s2mlpv2::ModelCard& card = backend->card();
  s2mlpv2::Classifier classifier(*backend, args.topK);
  try {
    classifier.run(s2mlpv2::listImages(args.images), [&](const s2mlpv2::ImageResult& result) {
      if (!result.error.empty()) {
        std::cerr << "error: " << result.error << "\n";
        unreadable = true;
        return;
      }
      for (const s2mlpv2::Prediction& p : result.top) {
        std::printf("%s\t%lld\t%s\t%.6f\n", result.path.c_str(), static_cast<long long>(p.index), card.label(p.index).c_str(),
                    p.probability);
      }
    });
  } catch (const s2mlpv2::Error& e) {  // inference itself failed
    std::fflush(stdout);
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return unreadable ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory; give smaller images or a smaller --batch\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << s2mlpv2::oneLine(e.what()) << "\n";
  } catch (...) {
    std::cerr << "error: unexpected failure\n";
  }
  return 2;
}
