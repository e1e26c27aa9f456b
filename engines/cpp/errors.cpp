#include "errors.h"

#include <cctype>

namespace s2mlpv2 {

std::string oneLine(const std::string& text, std::size_t limit) {
  std::string line;
  bool space = false;
  for (const char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !line.empty();
      continue;
    }
    if (space) line += ' ';
    space = false;
    line += c;
  }
  if (line.size() > limit) line = line.substr(0, limit) + "...";
  return line;
}

}  // namespace s2mlpv2
