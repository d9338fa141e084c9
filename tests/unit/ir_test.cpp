// IR basics: dtypes, 16-bit float conversion, tensors, topological order, broadcasting.
#include <gtest/gtest.h>

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
