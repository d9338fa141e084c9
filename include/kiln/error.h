// Kiln's error type: every failure that crosses an API boundary is a kiln::Error with a category
// and a message that names the file, node, op and opset involved where they are known.
#pragma once
#include <stdexcept>
#include <string>

namespace kiln {

enum class ErrorCode {
  kInvalidModel,     // the model file or graph is malformed
  kUnsupported,      // a valid construct Kiln does not implement (op, opset, dtype)
  kInvalidArgument,  // a bad flag, input shape, dtype or file given by the user
  kIo,               // a file that cannot be opened, read or written
  kInternal,         // a broken invariant inside Kiln
};

const char* error_code_name(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace kiln
