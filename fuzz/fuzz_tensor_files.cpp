// Fuzzes the .npy parser and the TensorProto decoder used for test data.
#include <cstddef>
#include <cstdint>
#include <span>

#include "onnx/onnx.pb.h"
#include "onnx/onnx_import.h"
#include "util/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    kiln::Tensor t = kiln::parse_npy(std::span<const uint8_t>(data, size), "fuzz.npy");
    (void)kiln::serialize_npy(t);
  } catch (const kiln::Error&) {
  }
  onnx::TensorProto proto;
  if (proto.ParseFromArray(data, static_cast<int>(size))) {
    try {
      (void)kiln::tensor_from_proto(proto, "", "fuzz.pb");
    } catch (const kiln::Error&) {
    }
  }
  return 0;
}
