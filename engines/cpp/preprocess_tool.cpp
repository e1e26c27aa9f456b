// s2mlpv2_preprocess CARD IMAGE OUT.f32 [--resized OUT.rgb]
//
// Writes IMAGE as the model sees it (3 x H x W float32, the card's preprocessing) to OUT.f32 and,
// with --resized, the image after the resize and before the crop (H x W x 3 bytes). CARD is a
// card's JSON file (a checkpoint's NAME.json), an ONNX graph or a plan (its sidecar's card). A check of the C++
// preprocessing against Python's (tests/engines/test_cpp_classify.py), and a way to feed
// another runtime with it.
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "errors.h"
#include "model_files.h"
#include "preprocess.h"

namespace {

void writeFile(const std::string& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) throw s2mlpv2::Error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() != 3 && !(args.size() == 5 && args[3] == "--resized")) {
    std::cerr << "usage: s2mlpv2_preprocess CARD IMAGE OUT.f32 [--resized OUT.rgb]\n";
    return 2;
  }
  try {
    const s2mlpv2::ModelCard card = s2mlpv2::readCardFile(args[0]);
    const s2mlpv2::Preprocessing& pre = card.preprocessing;
    const s2mlpv2::RgbImage image = s2mlpv2::decodeImage(args[1]);
    std::vector<float> tensor(3 * static_cast<std::size_t>(pre.height) * static_cast<std::size_t>(pre.width));
    s2mlpv2::preprocess(image, pre, tensor.data());
    writeFile(args[2], tensor.data(), tensor.size() * sizeof(float));
    if (args.size() == 5) {
      const s2mlpv2::Size size = s2mlpv2::resizeTarget(image.width, image.height, pre);
      const s2mlpv2::RgbImage resized = s2mlpv2::resizeLikePil(image, size, pre.interpolation);
      writeFile(args[4], resized.pixels.data(), resized.pixels.size());
      std::printf("%d %d\n", resized.width, resized.height);
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
