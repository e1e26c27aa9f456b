// Classifying image files with a backend: decoding and preprocessing them into batches, running
// the batches, and the most probable classes of each image.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend.h"

namespace s2mlpv2 {

struct Prediction {
  int64_t index = 0;
  double probability = 0.0;  // softmax of the logits
};

// The `k` most probable classes of one row of logits, most probable first.
std::vector<Prediction> topK(const float* logits, int64_t classes, int64_t k);

struct ImageResult {
  std::string path;
  std::vector<Prediction> top;  // empty when the image could not be used
  std::string error;            // why not ("PATH: reason"), else empty
};

// The image files of `paths`: files as they are, folders as the image files below them (JPEG,
// PNG, BMP, GIF, PNM by suffix), sorted. A folder without any is returned as it is, so that
// classifying it reports the problem.
std::vector<std::string> listImages(const std::vector<std::string>& paths);

class Classifier {
 public:
  Classifier(Backend& backend, int64_t topK);

  // Classifies `paths` in batches of up to backend.maxBatch() images and calls `report` once per
  // image, in the order given; an image that cannot be read is reported with its error and the
  // others go on.
  void run(const std::vector<std::string>& paths, const std::function<void(const ImageResult&)>& report);

 private:
  Backend& backend_;
  int64_t topK_;
};

}  // namespace s2mlpv2
