// Fuzzes the engine loader: header checks, the flatbuffer verifier, decoding by name, tensor
// ranges, op checks, then the executor's type inference on what was loaded. The CRC check is off
// so mutations reach the decoder (a wrong CRC is tested in tests/unit/engine_file_test.cpp).
// Any kiln::Error is a correct rejection; anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "backends/reference/executor.h"
#include "engine/engine_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::EngineLoadOptions options;
    options.verify_crc = false;
    kiln::LoadedEngine engine = kiln::load_engine_from_memory(std::span<const uint8_t>(data, size), options, "fuzz.kiln");
    kiln::reference::Executor exec(std::move(engine.model));
  } catch (const kiln::Error&) {
  }
  return 0;
}
