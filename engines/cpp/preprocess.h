// The card's preprocessing, as timm's eval transform does it in Python (common.images.preprocess):
// resize with PIL's antialiased resampling, center-crop, scale to [0, 1], normalise, CHW float32.
#pragma once

#include "card.h"
#include "image.h"

namespace s2mlpv2 {

struct Size {
  int width = 0;
  int height = 0;
};

// The size timm's eval transform resizes `width` x `height` to before the center crop: with a
// square target, torchvision's Resize(floor(size / crop_pct)) (the shorter side becomes that,
// the longer one scales, truncated); otherwise timm's ResizeKeepRatio.
Size resizeTarget(int width, int height, const Preprocessing& pre);

// PIL's Image.resize(size, filter) for an RGB image: separable, antialiased (the filter widened
// by the downscale factor), 8-bit fixed-point, horizontal pass first. The same image, unchanged,
// where the size already matches.
RgbImage resizeLikePil(const RgbImage& image, Size size, Interpolation interpolation);

// Resize, center-crop (zero padding where the crop is larger, as torchvision pads) and
// normalise `image` into `out`: 3 x height x width float32, channel-major.
void preprocess(const RgbImage& image, const Preprocessing& pre, float* out);

}  // namespace s2mlpv2
