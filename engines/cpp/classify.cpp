#include "classify.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "errors.h"
#include "preprocess.h"

namespace s2mlpv2 {
namespace {

namespace fs = std::filesystem;

bool hasImageSuffix(const fs::path& path) {
  std::string suffix = path.extension().string();
  std::transform(suffix.begin(), suffix.end(), suffix.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* known : {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pnm"}) {
    if (suffix == known) return true;
  }
  return false;
}

}  // namespace

std::vector<Prediction> topK(const float* logits, int64_t classes, int64_t k) {
  const auto count = static_cast<size_t>(classes);
  const float largest = *std::max_element(logits, logits + count);
  std::vector<double> exps(count);
  double total = 0.0;
  for (size_t i = 0; i < count; ++i) total += exps[i] = std::exp(static_cast<double>(logits[i] - largest));
  std::vector<size_t> order(count);
  std::iota(order.begin(), order.end(), size_t{0});
  const auto kept = static_cast<size_t>(std::clamp<int64_t>(k, 1, classes));
  // Ties keep the lower index first, as numpy's argmax does.
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(kept), order.end(),
                    [&](size_t a, size_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  std::vector<Prediction> top(kept);
  for (size_t i = 0; i < kept; ++i) top[i] = {static_cast<int64_t>(order[i]), exps[order[i]] / total};
  return top;
}

std::vector<std::string> listImages(const std::vector<std::string>& paths) {
  std::vector<std::string> images;
  for (const std::string& path : paths) {
    std::error_code error;
    if (!fs::is_directory(path, error)) {
      images.push_back(path);
      continue;
    }
    std::vector<std::string> found;
    for (fs::recursive_directory_iterator it(path, error), end; !error && it != end; it.increment(error)) {
      if (it->is_regular_file(error) && hasImageSuffix(it->path())) found.push_back(it->path().string());
    }
    std::sort(found.begin(), found.end());
    if (found.empty()) found.push_back(path);  // reported as "not an image" by the decoder
    images.insert(images.end(), found.begin(), found.end());
  }
  return images;
}

Classifier::Classifier(Backend& backend, int64_t topK) : backend_(backend), topK_(topK) {}

void Classifier::run(const std::vector<std::string>& paths, const std::function<void(const ImageResult&)>& report) {
  const Preprocessing& pre = backend_.card().preprocessing;
  const size_t imageSize = 3 * static_cast<size_t>(pre.height) * static_cast<size_t>(pre.width);
  const int64_t capacity = backend_.maxBatch();
  std::vector<float> batch(static_cast<size_t>(capacity) * imageSize);
  std::vector<ImageResult> pending;  // in order; those without an error fill the batch's slots in order
  int64_t filled = 0;

  const auto flush = [&] {
    if (filled > 0) {
      const float* logits = backend_.infer(batch.data(), filled);
      int64_t row = 0;
      for (ImageResult& result : pending) {
        if (result.error.empty()) result.top = topK(logits + row++ * backend_.classes(), backend_.classes(), topK_);
      }
    }
    for (const ImageResult& result : pending) report(result);
    pending.clear();
    filled = 0;
  };

  for (const std::string& path : paths) {
    ImageResult result{path, {}, {}};
    try {
      const RgbImage image = decodeImage(path);  // its errors name the file
      try {
        preprocess(image, pre, batch.data() + static_cast<size_t>(filled) * imageSize);
        ++filled;
      } catch (const Error& e) {
        result.error = path + ": " + e.what();
      }
    } catch (const Error& e) {
      result.error = e.what();
    }
    pending.push_back(std::move(result));
    if (filled == capacity) flush();
  }
  flush();
}

}  // namespace s2mlpv2
