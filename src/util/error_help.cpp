// Links every error the tools print to its section of docs/troubleshooting.md.
#include <cctype>
#include <string>

#include "kiln/error.h"

namespace kiln {
namespace {

constexpr const char* kDoc = "docs/troubleshooting.md#";

const char* kind_section(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidModel: return "invalid-model";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kIo: return "io-error";
    case ErrorCode::kInternal: return "internal-error";
  }
  return "internal-error";
}

}  // namespace

std::string troubleshooting_section(const Error& e) {
  const std::string msg = e.what();
  const size_t at = msg.find(kDoc);
  if (at != std::string::npos) {
    size_t begin = at + std::char_traits<char>::length(kDoc), end = begin;
    while (end < msg.size() && (std::isalnum(static_cast<unsigned char>(msg[end])) || msg[end] == '-')) ++end;
    if (end > begin) return msg.substr(begin, end - begin);
  }
  return kind_section(e.code());
}

std::string error_message_with_help(const Error& e) {
  const std::string msg = e.what();
  if (msg.find(kDoc) != std::string::npos) return msg;
  return msg + " (see " + kDoc + kind_section(e.code()) + ")";
}

}  // namespace kiln
