// IR basics: dtypes, 16-bit float conversion, tensors, topological order, broadcasting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "ir/graph.h"
#include "ops/model_check.h"
#include "ops/op_schema.h"

using namespace kiln;

TEST(DType, NamesRoundTrip) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI8, DType::kU8, DType::kI16,
                   DType::kU16, DType::kI32, DType::kU32, DType::kI64, DType::kU64, DType::kBool}) {
    EXPECT_EQ(dtype_from_name(dtype_name(dt)), dt);
    EXPECT_EQ(dtype_from_onnx(dtype_to_onnx(dt)), dt);
    EXPECT_GT(dtype_size(dt), 0u);
  }
  EXPECT_EQ(dtype_from_name("float32"), DType::kF32);
  EXPECT_EQ(dtype_from_name("nonsense"), DType::kUndefined);
}

TEST(DType, HalfConversionIsExactForRepresentableValues) {
  // Every finite half value converts to float and back unchanged.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float f = half_to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(f))));
      continue;
    }
    ASSERT_EQ(float_to_half(f), h) << "bits " << bits;
  }
}

TEST(DType, HalfRoundsToNearestEven) {
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 1.0f / 4096)), 1.0f);           // below half an ulp
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);  // tie -> even
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(70000.0f))));
  EXPECT_EQ(half_to_float(float_to_half(65504.0f)), 65504.0f);
  EXPECT_EQ(half_to_float(float_to_half(5.9604645e-08f)), 5.9604645e-08f);      // smallest subnormal
}

TEST(DType, BFloat16RoundTrip) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1000, 1000);
  for (int i = 0; i < 1000; ++i) {
    float f = dist(rng);
    float r = bf16_to_float(float_to_bf16(f));
    EXPECT_NEAR(r, f, std::fabs(f) * (1.0f / 256));
  }
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
}


// Every E4M3 code decodes to a value that encodes back to the same code (NaN to NaN), and
// arbitrary floats round to the nearest code (ties to even), saturating at +-448.
TEST(DType, E4M3RoundTripsEveryCodeAndRoundsToNearest) {
  std::vector<float> finite;
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_float(static_cast<uint8_t>(c));
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << c;
      EXPECT_EQ(float_to_e4m3(v) & 0x7f, 0x7f);
      continue;
    }
    if (c == 0x80) continue;  // -0 encodes back as 0x80 too, but compares equal to +0
    EXPECT_EQ(float_to_e4m3(v), c) << "code " << c << " value " << v;
    if (c < 0x80) finite.push_back(v);
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.f, -6));
  EXPECT_EQ(float_to_e4m3(1e6f), 0x7e);
  EXPECT_EQ(float_to_e4m3(-INFINITY), 0xfe);
  EXPECT_EQ(float_to_e4m3(460.f), 0x7e);
  // Against a brute-force nearest search over the positive codes (ties: the even code).
  std::sort(finite.begin(), finite.end());
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> mag(-12, 9);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::exp2(mag(rng));
    if (x >= 448.f) continue;
    uint8_t best = 0;
    float best_d = INFINITY;
    for (int c = 0; c < 0x7f; ++c) {
      const float d = std::fabs(e4m3_to_float(static_cast<uint8_t>(c)) - x);
      if (d < best_d || (d == best_d && (c & 1) == 0)) best = static_cast<uint8_t>(c), best_d = d;
    }
    ASSERT_EQ(float_to_e4m3(x), best) << x;
    ASSERT_EQ(float_to_e4m3(-x), best | 0x80) << -x;
  }
  // Midpoints between neighbours go to the even one.
  EXPECT_EQ(float_to_e4m3(1.0625f), 0x38);  // between 1 (0x38) and 1.125 (0x39)
  EXPECT_EQ(float_to_e4m3(1.1875f), 0x3a);  // between 1.125 (0x39) and 1.25 (0x3a)
}
TEST(Tensor, AllocationViewsAndReshape) {
  Tensor t = Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.nbytes(), 24u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  Tensor r = t.reshaped({3, 2});
  EXPECT_EQ(r.data<float>(), t.data<float>());  // shares storage
  EXPECT_THROW(t.reshaped({4, 2}), Error);
  Tensor c = t.clone();
  c.mutable_data<float>()[0] = 42;
  EXPECT_EQ(t.data<float>()[0], 1.0f);
  EXPECT_THROW(t.data<int32_t>(), Error);
  EXPECT_EQ(Tensor::scalar<int64_t>(7).to_int64_vector(), std::vector<int64_t>{7});
  EXPECT_THROW(Tensor(DType::kF32, {-1, 2}), Error);
}

TEST(Graph, TopologicalSortOrdersAndDetectsCycles) {
  Graph g;
  g.inputs = {"x"};
  g.outputs = {"z"};
  g.nodes.push_back(Node{"b", "Relu", "", {"y"}, {"z"}, {}});
  g.nodes.push_back(Node{"a", "Relu", "", {"x"}, {"y"}, {}});
  topological_sort(g);
  ASSERT_EQ(g.nodes.size(), 2u);
  EXPECT_EQ(g.nodes[0].name, "a");
  EXPECT_EQ(g.nodes[1].name, "b");
  EXPECT_NO_THROW(verify_graph(g));

  Graph cyc = g;
  cyc.nodes[0].inputs = {"z"};
  try {
    topological_sort(cyc);
    FAIL() << "cycle not detected";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidModel);
    EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos);
  }

  Graph undefined = g;
  undefined.nodes[0].inputs = {"nope"};
  try {
    topological_sort(undefined);
    FAIL() << "undefined input not detected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
}

TEST(Graph, VerifierCatchesBrokenInvariants) {
  Graph g;
  g.inputs = {"x"};
  g.outputs = {"y"};
  g.nodes.push_back(Node{"a", "Relu", "", {"x"}, {"y"}, {}});
  g.nodes.push_back(Node{"b", "Relu", "", {"x"}, {"y"}, {}});
  EXPECT_THROW(verify_graph(g), Error);  // y defined twice
  g.nodes.pop_back();
  g.outputs = {"w"};
  EXPECT_THROW(verify_graph(g), Error);  // output never defined
}

TEST(Shapes, BroadcastKeepsSymbols) {
  Node n{"n", "Add", "", {"a", "b"}, {"c"}, {}};
  const OpSchema* s = OpRegistry::global().find("", "Add", 17);
  ASSERT_NE(s, nullptr);
  NodeView v(n, *s, 17);
  Shape a = {Dim::sym("batch"), Dim(1), Dim(4)};
  Shape b = {Dim(3), Dim(1)};
  Shape c = broadcast_shapes(v, {a, b});
  EXPECT_EQ(shape_to_string(c), "[batch,3,4]");
  EXPECT_THROW(broadcast_shapes(v, {Shape{Dim(2)}, Shape{Dim(3)}}), Error);
  EXPECT_EQ(broadcast_dims(v, {{2, 1, 3}, {4, 1}}), (std::vector<int64_t>{2, 4, 3}));
}
