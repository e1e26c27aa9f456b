// The one exception type for expected failures (a bad image, model, card or argument).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace s2mlpv2 {

// what() is one line that names the problem and, where there is one, the fix.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// `text` on one line: runs of whitespace (a library's multi-line message) become one space, and
// anything past `limit` characters is cut.
std::string oneLine(const std::string& text, std::size_t limit = 300);

}  // namespace s2mlpv2
