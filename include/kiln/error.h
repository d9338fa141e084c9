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

class Error;
// The troubleshooting section of docs/troubleshooting.md that explains `e`: the one the message
// already names ("see docs/troubleshooting.md#unknown-op"), else the section of its kind
// ("invalid-model", "unsupported", "invalid-argument", "io-error", "internal-error").
std::string troubleshooting_section(const Error& e);
// The message as the tools print it: e.what(), followed by " (see docs/troubleshooting.md#SECTION)"
// unless the message already links to a section. The CLI and the Python package both use it.
std::string error_message_with_help(const Error& e);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace kiln
