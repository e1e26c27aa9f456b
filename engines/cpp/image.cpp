#include "image.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <jerror.h>
#include <jpeglib.h>
#include <stb_image.h>

#include "errors.h"

namespace s2mlpv2 {
namespace {

std::vector<unsigned char> readBytes(const std::string& path) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) throw Error(path + ": a directory, not an image file");
  std::ifstream file(path, std::ios::binary);
  if (!file && errno == ENOENT) throw Error(path + ": no such file");
  if (!file) throw Error(path + ": cannot read (" + std::strerror(errno) + ")");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw Error(path + ": cannot read (" + std::strerror(errno) + ")");
  if (bytes.empty()) throw Error(path + ": empty (0 bytes)");
  return bytes;
}

void checkSize(const std::string& path, int64_t width, int64_t height) {
  if (width <= 0 || height <= 0) throw Error(path + ": has zero size");
  if (width * height > kMaxPixels) {
    throw Error(path + ": declares " + std::to_string(width) + "x" + std::to_string(height) + " pixels, over the " +
                std::to_string(kMaxPixels) + "-pixel limit (possible decompression bomb)");
  }
}

// ---- JPEG: libjpeg-turbo. Its errors longjmp back to the setjmp in readJpegHeader or
// readJpegPixels; neither frame (nor any libjpeg frame between) holds a C++ object with a
// destructor, so the jump skips no cleanup.

struct JpegErrors {
  jpeg_error_mgr base;  // first member: libjpeg hands back a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void onJpegError(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  (*info->err->format_message)(info, errors->message);
  std::longjmp(errors->jump, 1);
}

// Warnings about extraneous bytes are ignored (Pillow decodes such files); a file that ends
// before its last scan is an error, as in Pillow ("image file is truncated").
void onJpegMessage(j_common_ptr info, int level) {
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) onJpegError(info);
}

bool readJpegHeader(jpeg_decompress_struct& info, JpegErrors& errors, const std::vector<unsigned char>& bytes) {
  if (setjmp(errors.jump)) return false;
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  // RGB straight from the decoder (grayscale replicated, YCbCr converted); CMYK and YCCK as CMYK.
  const bool cmyk = info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK;
  info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  return true;
}

bool readJpegPixels(jpeg_decompress_struct& info, JpegErrors& errors, unsigned char* out, size_t rowBytes) {
  if (setjmp(errors.jump)) return false;
  jpeg_start_decompress(&info);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out + static_cast<size_t>(info.output_scanline) * rowBytes;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  return true;
}

uint8_t mulDiv255(unsigned a, unsigned b) { return static_cast<uint8_t>((a * b + 127) / 255); }

RgbImage decodeJpeg(const std::string& path, const std::vector<unsigned char>& bytes) {
  jpeg_decompress_struct info{};  // zeroed: jpeg_destroy_decompress is safe even if creating it failed
  JpegErrors errors{};
  info.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = onJpegError;
  errors.base.emit_message = onJpegMessage;

  RgbImage image;
  std::vector<unsigned char> cmyk;
  bool ok = readJpegHeader(info, errors, bytes);
  const int64_t width = ok ? info.image_width : 0;
  const int64_t height = ok ? info.image_height : 0;
  if (ok && width > 0 && height > 0 && width * height <= kMaxPixels) {
    image.width = static_cast<int>(width);
    image.height = static_cast<int>(height);
    const size_t channels = info.out_color_space == JCS_CMYK ? 4 : 3;
    std::vector<unsigned char>& target = channels == 4 ? cmyk : image.pixels;
    target.resize(static_cast<size_t>(width * height) * channels);
    ok = readJpegPixels(info, errors, target.data(), static_cast<size_t>(width) * channels);
  }
  const bool adobe = info.saw_Adobe_marker;
  jpeg_destroy_decompress(&info);
  if (!ok) throw Error(path + ": corrupt or truncated image (" + oneLine(errors.message, 120) + ")");
  checkSize(path, width, height);  // a refused size was never decoded

  if (!cmyk.empty()) {
    // Adobe's CMYK JPEGs store inverted inks; each channel is (1 - ink) * (1 - black), in 8 bits.
    image.pixels.resize(static_cast<size_t>(width * height) * 3);
    for (size_t i = 0, o = 0; i < cmyk.size(); i += 4, o += 3) {
      const unsigned black = adobe ? cmyk[i + 3] : 255u - cmyk[i + 3];
      for (size_t c = 0; c < 3; ++c) image.pixels[o + c] = mulDiv255(adobe ? cmyk[i + c] : 255u - cmyk[i + c], black);
    }
  }
  return image;
}

// ---- everything else: stb_image.

bool isJpeg(const std::vector<unsigned char>& bytes) {
  return bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF;
}

// Transparent pixels over white, as a viewer shows them (and as Python's loader composites).
uint8_t overWhite(unsigned colour, unsigned alpha) {
  return static_cast<uint8_t>((colour * alpha + 255u * (255u - alpha) + 127u) / 255u);
}

RgbImage decodeOther(const std::string& path, const std::vector<unsigned char>& bytes) {
  const auto* data = bytes.data();
  const int size = static_cast<int>(std::min<size_t>(bytes.size(), static_cast<size_t>(INT_MAX)));
  int width = 0, height = 0, channels = 0;
  if (!stbi_info_from_memory(data, size, &width, &height, &channels)) {
    throw Error(path + ": not a readable image (" + std::string(stbi_failure_reason()) +
                "; JPEG, PNG, BMP, GIF and PNM are read)");
  }
  checkSize(path, width, height);
  const bool alpha = channels == 2 || channels == 4;
  const int wanted = alpha ? 4 : 3;
  const size_t count = static_cast<size_t>(width) * static_cast<size_t>(height);
  std::vector<uint8_t> decoded(count * static_cast<size_t>(wanted));
  int w = 0, h = 0, n = 0;
  if (stbi_is_16_bit_from_memory(data, size)) {
    stbi_us* wide = stbi_load_16_from_memory(data, size, &w, &h, &n, wanted);
    if (wide == nullptr) throw Error(path + ": corrupt or truncated image (" + std::string(stbi_failure_reason()) + ")");
    // 16-bit grayscale is scaled by its range (Python: round(v / 65535 * 255)); 16-bit colour
    // keeps the high byte, as Pillow reads it.
    const bool gray = channels == 1;
    for (size_t i = 0; i < decoded.size(); ++i) {
      decoded[i] = gray ? static_cast<uint8_t>((wide[i] * 255u + 32767u) / 65535u) : static_cast<uint8_t>(wide[i] >> 8);
    }
    stbi_image_free(wide);
  } else {
    stbi_uc* narrow = stbi_load_from_memory(data, size, &w, &h, &n, wanted);
    if (narrow == nullptr) throw Error(path + ": corrupt or truncated image (" + std::string(stbi_failure_reason()) + ")");
    std::memcpy(decoded.data(), narrow, decoded.size());
    stbi_image_free(narrow);
  }
  RgbImage image{width, height, {}};
  if (!alpha) {
    image.pixels = std::move(decoded);
    return image;
  }
  image.pixels.resize(count * 3);
  for (size_t i = 0; i < count; ++i) {
    for (size_t c = 0; c < 3; ++c) image.pixels[i * 3 + c] = overWhite(decoded[i * 4 + c], decoded[i * 4 + 3]);
  }
  return image;
}

}  // namespace

RgbImage decodeImage(const std::string& path) {
  const std::vector<unsigned char> bytes = readBytes(path);
  return isJpeg(bytes) ? decodeJpeg(path, bytes) : decodeOther(path, bytes);
}

}  // namespace s2mlpv2
