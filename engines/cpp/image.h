// Decoding untrusted image files into 8-bit RGB, the way the Python side (Pillow) does.
//
// JPEG goes through libjpeg-turbo, the decoder Pillow bundles (with the same default IDCT and
// chroma upsampling the pixels are identical); PNG, BMP, GIF and PNM through stb_image.
// Grayscale, CMYK and 16-bit images become 8-bit RGB; transparent pixels are composited over
// white, as Python's loader does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace s2mlpv2 {

// Above this many pixels an image is refused before any pixel is decoded (a decompression bomb).
inline constexpr int64_t kMaxPixels = 64'000'000;

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // row-major, R G B interleaved
};

// Decode `path`, or throw Error("PATH: reason").
RgbImage decodeImage(const std::string& path);

}  // namespace s2mlpv2
