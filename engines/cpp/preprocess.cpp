#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "errors.h"

namespace s2mlpv2 {
namespace {

// ---- PIL's resampling filters: weight(x) for x in input pixels at scale 1, and the support
// (the half-width beyond which the weight is zero). Bicubic is Keys' cubic with a = -0.5.

constexpr double kPi = 3.14159265358979323846;

double boxWeight(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double triangleWeight(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hammingWeight(double x) {
  x = std::fabs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x *= kPi;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // PIL's constants are single precision
}

double cubicWeight(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

double sinc(double x) { return x == 0.0 ? 1.0 : std::sin(x * kPi) / (x * kPi); }

double lanczosWeight(double x) { return (x >= -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

struct Filter {
  double support;
  double (*weight)(double);
};

Filter filterFor(Interpolation interpolation) {
  switch (interpolation) {
    case Interpolation::Box:
      return {0.5, boxWeight};
    case Interpolation::Bilinear:
      return {1.0, triangleWeight};
    case Interpolation::Hamming:
      return {1.0, hammingWeight};
    case Interpolation::Lanczos:
      return {3.0, lanczosWeight};
    case Interpolation::Bicubic:
    case Interpolation::Nearest:
      break;
  }
  return {2.0, cubicWeight};
}

// Weights are fixed point with this many fraction bits: 8-bit pixels times weights summed in 32
// bits leave 2 bits of headroom for the filters' negative lobes.
constexpr int kFractionBits = 32 - 8 - 2;

// For each output position along one axis: the first input pixel it reads, how many, and their
// fixed-point weights (row `o` of `weights`, `stride` wide).
struct Taps {
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
  int stride = 0;
};

Taps tapsFor(int inSize, int outSize, const Filter& filter) {
  const double scale = static_cast<double>(inSize) / outSize;
  // Downscaling widens the filter by the scale factor: every input pixel contributes (antialiasing).
  const double filterScale = std::max(scale, 1.0);
  const double support = filter.support * filterScale;
  const double inverse = 1.0 / filterScale;
  Taps taps;
  taps.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(static_cast<size_t>(outSize));
  taps.count.resize(static_cast<size_t>(outSize));
  taps.weights.assign(static_cast<size_t>(outSize) * static_cast<size_t>(taps.stride), 0);
  std::vector<double> weights(static_cast<size_t>(taps.stride));
  for (int o = 0; o < outSize; ++o) {
    const double center = (o + 0.5) * scale;
    // Truncation toward zero, then clamping to the image: exactly PIL's window.
    const int first = std::max(static_cast<int>(center - support + 0.5), 0);
    const int last = std::min(static_cast<int>(center + support + 0.5), inSize);
    const int count = last - first;
    double total = 0.0;
    for (int i = 0; i < count; ++i) {
      const double w = filter.weight((i + first - center + 0.5) * inverse);
      weights[static_cast<size_t>(i)] = w;
      total += w;
    }
    int32_t* fixed = &taps.weights[static_cast<size_t>(o) * static_cast<size_t>(taps.stride)];
    for (int i = 0; i < count; ++i) {
      const double w = total != 0.0 ? weights[static_cast<size_t>(i)] / total : weights[static_cast<size_t>(i)];
      const double scaled = w * (1 << kFractionBits);
      fixed[i] = static_cast<int32_t>(w < 0.0 ? scaled - 0.5 : scaled + 0.5);  // rounded half away from zero
    }
    taps.first[static_cast<size_t>(o)] = first;
    taps.count[static_cast<size_t>(o)] = std::max(count, 0);
  }
  return taps;
}

uint8_t clip8(int32_t value) {
  // >> on a negative value floors (arithmetic shift), as in PIL; then clamp to a byte.
  return static_cast<uint8_t>(std::clamp(value >> kFractionBits, 0, 255));
}

// One separable pass along an axis. `lines` lines cross the axis; a line starts at
// `line * lineStep` (in bytes) and its pixels are `step` bytes apart, in input and output alike
// except that the output's steps are `outLineStep`/`outStep`.
struct Axis {
  int lines;
  size_t lineStep, step, outLineStep, outStep;
};

void resamplePass(const uint8_t* in, uint8_t* out, const Axis& axis, const Taps& taps) {
  const size_t outSize = taps.first.size();
  for (int line = 0; line < axis.lines; ++line) {
    const uint8_t* src = in + static_cast<size_t>(line) * axis.lineStep;
    uint8_t* dst = out + static_cast<size_t>(line) * axis.outLineStep;
    for (size_t o = 0; o < outSize; ++o) {
      const int32_t* w = &taps.weights[o * static_cast<size_t>(taps.stride)];
      const uint8_t* window = src + static_cast<size_t>(taps.first[o]) * axis.step;
      const int count = taps.count[o];
      for (size_t c = 0; c < 3; ++c) {
        int32_t sum = 1 << (kFractionBits - 1);  // rounds the final shift to nearest
        for (int i = 0; i < count; ++i) sum += window[static_cast<size_t>(i) * axis.step + c] * w[i];
        dst[o * axis.outStep + c] = clip8(sum);
      }
    }
  }
}

RgbImage resampleHorizontal(const RgbImage& image, int width, const Filter& filter) {
  RgbImage out{width, image.height, std::vector<uint8_t>(static_cast<size_t>(width) * static_cast<size_t>(image.height) * 3)};
  const Axis axis{image.height, static_cast<size_t>(image.width) * 3, 3, static_cast<size_t>(width) * 3, 3};
  resamplePass(image.pixels.data(), out.pixels.data(), axis, tapsFor(image.width, width, filter));
  return out;
}

RgbImage resampleVertical(const RgbImage& image, int height, const Filter& filter) {
  RgbImage out{image.width, height, std::vector<uint8_t>(static_cast<size_t>(image.width) * static_cast<size_t>(height) * 3)};
  const size_t row = static_cast<size_t>(image.width) * 3;
  const Axis axis{image.width, 3, row, 3, row};
  resamplePass(image.pixels.data(), out.pixels.data(), axis, tapsFor(image.height, height, filter));
  return out;
}

// Source pixel of each output pixel along an axis for PIL's NEAREST: the input pixel under the
// output pixel's centre, with the centre advanced by adding the scale once per pixel, as PIL
// does (a product instead differs by one pixel now and then).
std::vector<size_t> nearestSources(int inSize, int outSize) {
  const double scale = static_cast<double>(inSize) / outSize;
  std::vector<size_t> sources(static_cast<size_t>(outSize));
  double center = scale * 0.5;
  for (size_t o = 0; o < sources.size(); ++o, center += scale) {
    sources[o] = static_cast<size_t>(std::clamp(static_cast<int>(center), 0, inSize - 1));
  }
  return sources;
}

// PIL's NEAREST is not a convolution: each output pixel copies one input pixel.
RgbImage resampleNearest(const RgbImage& image, Size size) {
  RgbImage out{size.width, size.height,
               std::vector<uint8_t>(static_cast<size_t>(size.width) * static_cast<size_t>(size.height) * 3)};
  const std::vector<size_t> columns = nearestSources(image.width, size.width);
  const std::vector<size_t> rows = nearestSources(image.height, size.height);
  for (size_t y = 0; y < rows.size(); ++y) {
    const uint8_t* src = &image.pixels[rows[y] * static_cast<size_t>(image.width) * 3];
    uint8_t* dst = &out.pixels[y * static_cast<size_t>(size.width) * 3];
    for (size_t x = 0; x < columns.size(); ++x) std::copy_n(src + columns[x] * 3, 3, dst + x * 3);
  }
  return out;
}

// Python's round(): halves go to the even neighbour (std::nearbyint in the default rounding mode).
int roundHalfEven(double value) { return static_cast<int>(std::nearbyint(value)); }

}  // namespace

Size resizeTarget(int width, int height, const Preprocessing& pre) {
  const double scaleHeight = std::floor(pre.height / pre.cropPct);
  const double scaleWidth = std::floor(pre.width / pre.cropPct);
  double targetWidth = 0.0, targetHeight = 0.0;
  if (scaleHeight == scaleWidth) {
    // torchvision's Resize(int): the shorter side becomes `scale`, the longer int(scale * long / short).
    const double longer = std::trunc(scaleHeight * std::max(width, height) / std::min(width, height));
    targetWidth = width <= height ? scaleWidth : longer;
    targetHeight = width <= height ? longer : scaleHeight;
  } else {
    // timm's ResizeKeepRatio: scale so that both sides reach their target, the nearer one exactly.
    const double ratio = std::min(height / scaleHeight, width / scaleWidth);
    targetWidth = std::nearbyint(width / ratio);  // Python's round(): halves to even
    targetHeight = std::nearbyint(height / ratio);
  }
  if (!(targetWidth >= 1.0 && targetHeight >= 1.0 && targetWidth * targetHeight <= static_cast<double>(kMaxPixels))) {
    throw Error("a " + std::to_string(width) + "x" + std::to_string(height) + " image would be resized to " +
                std::to_string(static_cast<int64_t>(targetWidth)) + "x" + std::to_string(static_cast<int64_t>(targetHeight)) +
                ", outside 1 to " + std::to_string(kMaxPixels) + " pixels; crop its extreme aspect ratio first");
  }
  return Size{static_cast<int>(targetWidth), static_cast<int>(targetHeight)};
}

RgbImage resizeLikePil(const RgbImage& image, Size size, Interpolation interpolation) {
  if (size.width == image.width && size.height == image.height) return image;
  if (interpolation == Interpolation::Nearest) return resampleNearest(image, size);
  const Filter filter = filterFor(interpolation);
  // A pass runs only along an axis whose size changes; the horizontal one first.
  if (size.height == image.height) return resampleHorizontal(image, size.width, filter);
  if (size.width == image.width) return resampleVertical(image, size.height, filter);
  return resampleVertical(resampleHorizontal(image, size.width, filter), size.height, filter);
}

void preprocess(const RgbImage& image, const Preprocessing& pre, float* out) {
  const Size target = resizeTarget(image.width, image.height, pre);
  RgbImage resizedStorage;
  const RgbImage* resized = &image;
  if (target.width != image.width || target.height != image.height) {
    resizedStorage = resizeLikePil(image, target, pre.interpolation);
    resized = &resizedStorage;
  }
  // torchvision's CenterCrop: where the image is smaller than the crop it is first padded with
  // zeros ((crop - size) // 2 before); otherwise the window starts at round((size - crop) / 2).
  const int left =
      pre.width > resized->width ? -((pre.width - resized->width) / 2) : roundHalfEven((resized->width - pre.width) / 2.0);
  const int top =
      pre.height > resized->height ? -((pre.height - resized->height) / 2) : roundHalfEven((resized->height - pre.height) / 2.0);
  const size_t plane = static_cast<size_t>(pre.width) * static_cast<size_t>(pre.height);
  const auto pixelAt = [resized](int x, int y) {
    return &resized->pixels[(static_cast<size_t>(y) * static_cast<size_t>(resized->width) + static_cast<size_t>(x)) * 3];
  };
  for (int y = 0; y < pre.height; ++y) {
    const int sourceY = y + top;
    for (int x = 0; x < pre.width; ++x) {
      const int sourceX = x + left;
      const bool inside = sourceY >= 0 && sourceY < resized->height && sourceX >= 0 && sourceX < resized->width;
      const uint8_t* pixel = inside ? pixelAt(sourceX, sourceY) : nullptr;
      for (size_t c = 0; c < 3; ++c) {
        // float32 throughout, in torchvision's order: x / 255, then (x - mean) / std.
        const float value = inside ? static_cast<float>(pixel[c]) / 255.0f : 0.0f;
        out[c * plane + static_cast<size_t>(y) * static_cast<size_t>(pre.width) + static_cast<size_t>(x)] =
            (value - pre.mean[c]) / pre.std[c];
      }
    }
  }
}

}  // namespace s2mlpv2
