// Fuzzes what `kiln serve` parses from outside: KServe v2 HTTP inference bodies (JSON, and the
// binary tensor extension with a header length taken from the input) and config.pbtxt text.
// ServeError and kiln::Error are the expected answers to bad input; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/error.h"
#include "serve/http_server.h"
#include "serve/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const uint8_t mode = data[0];
  const size_t header = static_cast<size_t>(data[1]) | (static_cast<size_t>(data[2]) << 8);
  const std::string text(reinterpret_cast<const char*>(data + 3), size - 3);
  if (mode % 3 == 2) {
    try {
      (void)kiln::serve::parse_model_config(text, "fuzz/config.pbtxt", "fuzz");
    } catch (const kiln::Error&) {
    }
    return 0;
  }
  auto body = std::make_shared<const std::string>(text);
  try {
    std::optional<size_t> length;
    if (mode % 3 == 1) length = header;
    kiln::serve::HttpInferRequest r = kiln::serve::parse_infer_request(body, length, 64);
    // Touch every input's bytes: they must lie inside the body.
    size_t sum = 0;
    for (const auto& in : r.request.inputs)
      for (size_t i = 0; i < in.byte_size; ++i) sum += static_cast<const uint8_t*>(in.data)[i];
    (void)sum;
  } catch (const kiln::serve::ServeError&) {
  } catch (const kiln::Error&) {
  }
  return 0;
}
