// Shape and data-movement ops, indexing, Resize and quantization: opset 18+ versions, symbolic-shape
// inference, constant folding of shape chains, and error cases, with hand-checked values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "backends/reference/executor.h"
#include "ir/graph.h"
#include "ops/model_check.h"

using namespace kiln;

namespace {

// A node input: a graph input fed at run time, or (constant = true) an initializer.
struct In {
  std::string name;
  Tensor value;
  bool constant = false;
};
In c(std::string name, Tensor t) { return {std::move(name), std::move(t), true}; }

Model one_node(const std::string& op, const std::vector<In>& ins, std::map<std::string, Attribute> attrs, int64_t opset,
               size_t num_outputs = 1) {
  Model m;
  m.opsets[""] = opset;
  Node n{"node_under_test", op, "", {}, {}, std::move(attrs)};
  for (size_t i = 0; i < num_outputs; ++i) n.outputs.push_back("out" + std::to_string(i));
  for (const auto& in : ins) {
    n.inputs.push_back(in.name);
    if (in.name.empty()) continue;
    if (in.constant) {
      m.graph.initializers[in.name] = in.value;
    } else {
      m.graph.inputs.push_back(in.name);
      m.graph.types[in.name] = TensorType{in.value.dtype(), shape_from_dims(in.value.shape())};
    }
  }
  m.graph.nodes.push_back(n);
  m.graph.outputs = n.outputs;
  return m;
}

std::vector<Tensor> run_all(const std::string& op, const std::vector<In>& ins, std::map<std::string, Attribute> attrs,
                            int64_t opset, size_t num_outputs) {
  reference::Executor exec(one_node(op, ins, std::move(attrs), opset, num_outputs));
  reference::TensorMap feeds;
  for (const auto& in : ins)
    if (!in.name.empty() && !in.constant) feeds[in.name] = in.value;
  auto result = exec.run(feeds);
  std::vector<Tensor> out;
  for (size_t i = 0; i < num_outputs; ++i) out.push_back(result.at("out" + std::to_string(i)));
  return out;
}

Tensor run(const std::string& op, const std::vector<In>& ins, std::map<std::string, Attribute> attrs = {},
           int64_t opset = 17) {
  return run_all(op, ins, std::move(attrs), opset, 1)[0];
}

// Inferred type of output 0 when the graph inputs have the given types; `consts` are initializers.
TensorType infer(const std::string& op, const std::vector<std::pair<std::string, TensorType>>& ins,
                 const std::vector<In>& consts, std::map<std::string, Attribute> attrs = {}, int64_t opset = 17) {
  Model m;
  m.opsets[""] = opset;
  Node n{"node_under_test", op, "", {}, {"out0"}, std::move(attrs)};
  size_t ci = 0;
  for (const auto& [name, t] : ins) {
    if (name == "$") {  // placeholder for the next constant, keeping input order
      n.inputs.push_back(consts[ci].name);
      m.graph.initializers[consts[ci].name] = consts[ci].value;
      ++ci;
      continue;
    }
    n.inputs.push_back(name);
    if (name.empty()) continue;
    m.graph.inputs.push_back(name);
    m.graph.types[name] = t;
  }
  m.graph.nodes.push_back(n);
  m.graph.outputs = {"out0"};
  require_supported(m);
  InferOptions options;
  options.evaluator = reference::constant_evaluator();
  infer_types(m, options);
  return *m.graph.type_of("out0");
}

std::string infer_str(const std::string& op, const std::vector<std::pair<std::string, TensorType>>& ins,
                      const std::vector<In>& consts, std::map<std::string, Attribute> attrs = {}, int64_t opset = 17) {
  return infer(op, ins, consts, std::move(attrs), opset).to_string();
}

TensorType ty(DType dt, Shape s) { return TensorType{dt, std::move(s)}; }
Dim sym(const char* s) { return Dim::sym(s); }

template <typename T>
Tensor vec(std::vector<int64_t> shape, std::vector<T> v) {
  return Tensor::from_vector<T>(std::move(shape), v);
}
template <typename T>
Tensor vec(std::vector<T> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<T>({n}, v);
}
Tensor ints(std::vector<int64_t> v) { return vec<int64_t>(std::move(v)); }
Tensor iota(std::vector<int64_t> shape) {
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return vec<float>(std::move(shape), v);
}

template <typename T>
std::vector<T> values(const Tensor& t) {
  auto s = t.values<T>();
  return {s.begin(), s.end()};
}

Attribute ai(int64_t v) { return Attribute::of_int(v); }
Attribute ais(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }
Attribute as(std::string v) { return Attribute::of_string(std::move(v)); }

template <typename Fn>
void expect_error(Fn fn, std::vector<std::string> fragments) {
  try {
    fn();
    FAIL() << "expected an error mentioning " << fragments.front();
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

void expect_near(const std::vector<float>& got, const std::vector<float>& want, float tol = 1e-5f) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

}  // namespace

// ---- Reshape family

TEST(TensorReshape, ZeroCopiesUnlessAllowzero) {
  Tensor x = iota({2, 3, 4});
  Tensor y = run("Reshape", {{"x", x}, c("s", ints({0, -1}))});
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{2, 12}));
  // allowzero=1 (opset 14): 0 is a real zero-sized dim.
  Tensor e = run("Reshape", {{"x", vec<float>({0, 3}, {})}, c("s", ints({3, 0}))}, {{"allowzero", ai(1)}}, 14);
  EXPECT_EQ(e.shape(), (std::vector<int64_t>{3, 0}));
  // Before 14 the attribute does not exist: 0 copies the input dim 1.
  Tensor f = run("Reshape", {{"x", vec<float>({3, 0}, {})}, c("s", ints({3, 0}))}, {}, 13);
  EXPECT_EQ(f.shape(), (std::vector<int64_t>{3, 0}));
  expect_error([&] { run("Reshape", {{"x", x}, c("s", ints({-1, -1}))}); }, {"node_under_test", "more than one -1"});
  expect_error([&] { run("Reshape", {{"x", x}, c("s", ints({5, -1}))}); }, {"node_under_test", "cannot reshape"});
  expect_error([&] { run("Reshape", {{"x", x}, c("s", ints({0, -1}))}, {{"allowzero", ai(1)}}, 14); }, {"allowzero"});
}

TEST(TensorReshape, KeepsSymbolsWhereTheyCancel) {
  const TensorType x = ty(DType::kF32, {sym("batch"), 3, 4});
  EXPECT_EQ(infer_str("Reshape", {{"x", x}, {"$", {}}}, {c("s", ints({0, -1}))}), "f32[batch,12]");
  EXPECT_EQ(infer_str("Reshape", {{"x", x}, {"$", {}}}, {c("s", ints({0, 0, 2, 2}))}), "f32[batch,3,2,2]");
  EXPECT_EQ(infer_str("Reshape", {{"x", ty(DType::kF32, {sym("batch"), 12})}, {"$", {}}}, {c("s", ints({-1, 3, 4}))}),
            "f32[batch,3,4]");
  // A copied dim cancels even when it is unknown and unnamed.
  EXPECT_EQ(infer_str("Reshape", {{"x", ty(DType::kF32, {Dim(), 3, 4})}, {"$", {}}}, {c("s", ints({0, -1}))}),
            "f32[?,12]");
  // The -1 covers two unknown dims: unknown.
  EXPECT_EQ(infer_str("Reshape", {{"x", ty(DType::kF32, {sym("b"), sym("s"), 4})}, {"$", {}}}, {c("s", ints({-1, 4}))}),
            "f32[?,4]");
  // A shape that is not constant: the rank comes from its length.
  EXPECT_EQ(infer_str("Reshape", {{"x", x}, {"s", ty(DType::kI64, {3})}}, {}), "f32[?,?,?]");
  EXPECT_EQ(infer_str("Reshape", {{"x", x}, {"s", ty(DType::kI64, {sym("n")})}}, {}), "f32[*]");
}

TEST(TensorReshape, ShapeChainFoldsToStaticShape) {
  // Shape -> Gather -> Unsqueeze -> Concat -> Reshape, the pattern exporters emit for flatten.
  auto build = [](Shape in) {
    Model m;
    m.opsets[""] = 13;
    m.graph.inputs = {"x"};
    m.graph.types["x"] = ty(DType::kF32, std::move(in));
    m.graph.initializers["zero"] = Tensor::scalar<int64_t>(0);
    m.graph.initializers["axes"] = ints({0});
    m.graph.initializers["minus1"] = ints({-1});
    m.graph.nodes = {Node{"shape", "Shape", "", {"x"}, {"s"}, {}},
                     Node{"gather", "Gather", "", {"s", "zero"}, {"g"}, {}},
                     Node{"unsq", "Unsqueeze", "", {"g", "axes"}, {"u"}, {}},
                     Node{"concat", "Concat", "", {"u", "minus1"}, {"cat"}, {{"axis", ai(0)}}},
                     Node{"reshape", "Reshape", "", {"x", "cat"}, {"y"}, {}}};
    m.graph.outputs = {"y"};
    return m;
  };
  reference::Executor exec(build({2, 3, 4}));
  EXPECT_EQ(exec.model().graph.type_of("y")->to_string(), "f32[2,12]");
  Tensor y = exec.run({{"x", iota({2, 3, 4})}}).at("y");
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{2, 12}));
  EXPECT_EQ(values<float>(y)[13], 13.0f);
  // With a symbolic batch the values are unknown but the rank survives.
  reference::Executor sym_exec(build({sym("batch"), 3, 4}));
  EXPECT_EQ(sym_exec.model().graph.type_of("y")->to_string(), "f32[?,?]");
  EXPECT_EQ(sym_exec.run({{"x", iota({5, 3, 4})}}).at("y").shape(), (std::vector<int64_t>{5, 12}));
}

TEST(TensorReshape, FlattenSqueezeUnsqueezeKeepSymbols) {
  const TensorType x = ty(DType::kF32, {sym("batch"), 3, 4});
  EXPECT_EQ(infer_str("Flatten", {{"x", x}}, {}), "f32[batch,12]");
  EXPECT_EQ(infer_str("Flatten", {{"x", x}}, {}, {{"axis", ai(-1)}}), "f32[?,4]");
  EXPECT_EQ(infer_str("Flatten", {{"x", x}}, {}, {{"axis", ai(0)}}), "f32[1,?]");
  EXPECT_EQ(infer_str("Unsqueeze", {{"x", x}, {"$", {}}}, {c("a", ints({-1, 1}))}, {}, 13), "f32[batch,1,3,4,1]");
  EXPECT_EQ(infer_str("Unsqueeze", {{"x", x}}, {}, {{"axes", ais({0})}}, 11), "f32[1,batch,3,4]");
  EXPECT_EQ(infer_str("Squeeze", {{"x", ty(DType::kF32, {sym("batch"), 1, 4})}, {"$", {}}}, {c("a", ints({1}))}),
            "f32[batch,4]");
  // Without axes a symbolic dim might be 1: the rank is unknown.
  EXPECT_EQ(infer_str("Squeeze", {{"x", ty(DType::kF32, {sym("batch"), 1, 4})}}, {}), "f32[*]");
  Tensor s = run("Squeeze", {{"x", iota({1, 3, 1})}}, {}, 11);
  EXPECT_EQ(s.shape(), (std::vector<int64_t>{3}));
  expect_error([] { run("Squeeze", {{"x", iota({2, 3})}, c("a", ints({1}))}); }, {"node_under_test", "cannot squeeze"});
  expect_error([] { run("Unsqueeze", {{"x", iota({2})}, c("a", ints({0, 0}))}); }, {"repeated"});
}

TEST(TensorReshape, TransposeAndConcatKeepSymbols) {
  const TensorType x = ty(DType::kF32, {sym("batch"), 3, 4});
  EXPECT_EQ(infer_str("Transpose", {{"x", x}}, {}, {{"perm", ais({2, 0, 1})}}), "f32[4,batch,3]");
  EXPECT_EQ(infer_str("Transpose", {{"x", x}}, {}), "f32[4,3,batch]");
  Tensor t = run("Transpose", {{"x", iota({2, 3})}}, {{"perm", ais({1, 0})}});
  EXPECT_EQ(values<float>(t), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  expect_error([] { run("Transpose", {{"x", iota({2, 3})}}, {{"perm", ais({0, 0})}}); }, {"permutation"});

  EXPECT_EQ(infer_str("Concat", {{"a", x}, {"b", ty(DType::kF32, {sym("batch"), 5, 4})}}, {}, {{"axis", ai(1)}}),
            "f32[batch,8,4]");
  EXPECT_EQ(infer_str("Concat", {{"a", x}, {"b", ty(DType::kF32, {Dim(), 3, 4})}}, {}, {{"axis", ai(-1)}}),
            "f32[batch,3,8]");
  Tensor cat = run("Concat", {{"a", iota({2, 1})}, {"b", vec<float>({2, 2}, {10, 11, 12, 13})}}, {{"axis", ai(1)}});
  EXPECT_EQ(values<float>(cat), (std::vector<float>{0, 10, 11, 1, 12, 13}));
  expect_error(
      [] {
        run("Concat", {{"a", iota({2, 1})}, {"b", iota({3, 1})}}, {{"axis", ai(1)}});
      },
      {"node_under_test", "cannot be concatenated"});
}

// ---- Split, Slice

TEST(TensorSplit, Opset18NumOutputsGivesSmallerLastChunk) {
  auto outs = run_all("Split", {{"x", iota({7})}}, {{"num_outputs", ai(3)}}, 18, 3);
  EXPECT_EQ(values<float>(outs[0]), (std::vector<float>{0, 1, 2}));
  EXPECT_EQ(values<float>(outs[1]), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(values<float>(outs[2]), (std::vector<float>{6}));
  auto two = run_all("Split", {{"x", iota({2, 3})}, c("split", ints({1, 2}))}, {{"axis", ai(1)}}, 13, 2);
  EXPECT_EQ(values<float>(two[1]), (std::vector<float>{1, 2, 4, 5}));
  auto attr = run_all("Split", {{"x", iota({5})}}, {{"split", ais({4, 1})}}, 11, 2);
  EXPECT_EQ(values<float>(attr[1]), (std::vector<float>{4}));
  expect_error([] { run_all("Split", {{"x", iota({7})}}, {}, 13, 3); }, {"node_under_test", "evenly"});
  expect_error([] { run_all("Split", {{"x", iota({7})}}, {{"num_outputs", ai(2)}}, 18, 3); }, {"num_outputs"});
}

TEST(TensorSlice, NegativeStepsAndClamping) {
  Tensor x = iota({10});
  Tensor r =
      run("Slice", {{"x", x}, c("s", ints({-1})), c("e", ints({kI64Min})), c("a", ints({0})), c("st", ints({-3}))});
  EXPECT_EQ(values<float>(r), (std::vector<float>{9, 6, 3, 0}));
  Tensor all = run("Slice", {{"x", x}, c("s", ints({-100})), c("e", ints({100}))});
  EXPECT_EQ(all.numel(), 10);
  Tensor none = run("Slice", {{"x", x}, c("s", ints({5})), c("e", ints({2}))});
  EXPECT_EQ(none.numel(), 0);
  Tensor two_d = run("Slice", {{"x", iota({3, 4})},
                               c("s", ints({1, 3})),
                               c("e", ints({kI64Max, 0})),
                               c("a", ints({0, -1})),
                               c("st", ints({1, -2}))});
  EXPECT_EQ(values<float>(two_d), (std::vector<float>{7, 5, 11, 9}));
  // Opset 1-9: attributes.
  Tensor old = run("Slice", {{"x", iota({2, 4})}}, {{"starts", ais({1})}, {"ends", ais({3})}, {"axes", ais({1})}}, 9);
  EXPECT_EQ(values<float>(old), (std::vector<float>{1, 2, 5, 6}));
  expect_error(
      [&] {
        run("Slice", {{"x", x}, c("s", ints({0})), c("e", ints({3})), c("a", ints({0})), c("st", ints({0}))});
      },
      {"step cannot be 0"});
  // Symbolic dims: a whole-axis slice keeps the symbol, others become unknown.
  const TensorType t = ty(DType::kF32, {sym("batch"), sym("seq"), 8});
  EXPECT_EQ(infer_str("Slice", {{"x", t}, {"$", {}}, {"$", {}}, {"$", {}}},
                      {c("s", ints({0, 0, 2})), c("e", ints({kI64Max, 1, 6})), c("a", ints({0, 1, 2}))}),
            "f32[batch,?,4]");
  // Only the axes known: other dims are kept.
  EXPECT_EQ(infer_str("Slice", {{"x", t}, {"s", ty(DType::kI64, {1})}, {"e", ty(DType::kI64, {1})}, {"$", {}}},
                      {c("a", ints({2}))}),
            "f32[batch,seq,?]");
}

// ---- Pad, Tile, Expand

TEST(TensorPad, ModesAxesAndWrap) {
  Tensor x = vec<float>({1, 3}, {1, 2, 3});
  Tensor cst = run("Pad", {{"x", x}, c("p", ints({0, 2, 0, 1})), c("v", Tensor::scalar<float>(9))}, {}, 13);
  EXPECT_EQ(values<float>(cst), (std::vector<float>{9, 9, 1, 2, 3, 9}));
  Tensor refl = run("Pad", {{"x", x}, c("p", ints({0, 2, 0, 2}))}, {{"mode", as("reflect")}}, 13);
  EXPECT_EQ(values<float>(refl), (std::vector<float>{3, 2, 1, 2, 3, 2, 1}));
  Tensor edge = run("Pad", {{"x", x}, c("p", ints({0, 1, 0, 2}))}, {{"mode", as("edge")}}, 13);
  EXPECT_EQ(values<float>(edge), (std::vector<float>{1, 1, 2, 3, 3, 3}));
  // Opset 18: axes input; pads only for the listed axes.
  Tensor axes =
      run("Pad", {{"x", x}, c("p", ints({1, 0})), c("v", Tensor::scalar<float>(7)), c("a", ints({-1}))}, {}, 18);
  EXPECT_EQ(values<float>(axes), (std::vector<float>{7, 1, 2, 3}));
  // Opset 19: wrap.
  Tensor wrap = run("Pad", {{"x", x}, c("p", ints({0, 2, 0, 1}))}, {{"mode", as("wrap")}}, 19);
  EXPECT_EQ(values<float>(wrap), (std::vector<float>{2, 3, 1, 2, 3, 1}));
  expect_error([&] { run("Pad", {{"x", x}, c("p", ints({0, 2, 0, 1}))}, {{"mode", as("wrap")}}, 18); }, {"wrap"});
  // Negative pads crop; opset 2-10 takes pads and value as attributes.
  Tensor crop = run("Pad", {{"x", x}}, {{"pads", ais({0, -1, 0, 1})}, {"value", Attribute::of_float(5)}}, 10);
  EXPECT_EQ(values<float>(crop), (std::vector<float>{2, 3, 5}));
  expect_error([&] { run("Pad", {{"x", x}, c("p", ints({0, 1}))}, {}, 13); }, {"node_under_test", "pads has 2 values"});
  EXPECT_EQ(
      infer_str("Pad", {{"x", ty(DType::kF32, {sym("batch"), 3})}, {"$", {}}}, {c("p", ints({0, 1, 0, 1}))}, {}, 13),
      "f32[batch,5]");
}

TEST(TensorPad, TileAndExpand) {
  Tensor t = run("Tile", {{"x", vec<int32_t>({2}, {1, 2})}, c("r", ints({3}))});
  EXPECT_EQ(values<int32_t>(t), (std::vector<int32_t>{1, 2, 1, 2, 1, 2}));
  Tensor e = run("Expand", {{"x", vec<float>({3, 1}, {1, 2, 3})}, c("s", ints({2, 1, 2}))});
  EXPECT_EQ(e.shape(), (std::vector<int64_t>{2, 3, 2}));
  EXPECT_EQ(values<float>(e), (std::vector<float>{1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(infer_str("Expand", {{"x", ty(DType::kF32, {sym("batch"), 1})}, {"$", {}}}, {c("s", ints({1, 4}))}),
            "f32[batch,4]");
  EXPECT_EQ(infer_str("Tile", {{"x", ty(DType::kF32, {sym("batch"), 2})}, {"$", {}}}, {c("r", ints({1, 3}))}),
            "f32[batch,6]");
  expect_error([] { run("Expand", {{"x", iota({3})}, c("s", ints({2}))}); }, {"node_under_test", "broadcast"});
}

// ---- Generators and small ops

TEST(TensorMisc, ShapeSizeConstantRange) {
  Tensor s = run("Shape", {{"x", iota({2, 3, 4, 5})}}, {{"start", ai(1)}, {"end", ai(-1)}}, 15);
  EXPECT_EQ(values<int64_t>(s), (std::vector<int64_t>{3, 4}));
  Tensor clip = run("Shape", {{"x", iota({2, 3})}}, {{"start", ai(-10)}}, 15);
  EXPECT_EQ(values<int64_t>(clip), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(infer_str("Shape", {{"x", ty(DType::kF32, {sym("b"), 3, 4})}}, {}, {{"start", ai(1)}}, 15), "i64[2]");
  EXPECT_EQ(values<int64_t>(run("Size", {{"x", iota({2, 3})}})), (std::vector<int64_t>{6}));

  EXPECT_EQ(values<int64_t>(run("Constant", {}, {{"value_ints", ais({4, 5})}}, 12)), (std::vector<int64_t>{4, 5}));
  Tensor f = run("Constant", {}, {{"value_float", Attribute::of_float(2.5f)}}, 13);
  EXPECT_TRUE(f.shape().empty());
  EXPECT_EQ(values<float>(f), (std::vector<float>{2.5f}));
  expect_error([] { run("Constant", {}, {{"value_float", Attribute::of_float(1)}}, 11); }, {"value"});

  Tensor cos = run("ConstantOfShape", {c("s", ints({2, 2}))}, {{"value", Attribute::of_tensor(vec<int32_t>({7}))}}, 9);
  EXPECT_EQ(values<int32_t>(cos), (std::vector<int32_t>{7, 7, 7, 7}));
  EXPECT_EQ(values<float>(run("ConstantOfShape", {c("s", ints({3}))}, {}, 9)), (std::vector<float>{0, 0, 0}));

  Tensor r = run(
      "Range",
      {c("a", Tensor::scalar<int32_t>(10)), c("b", Tensor::scalar<int32_t>(4)), c("d", Tensor::scalar<int32_t>(-3))},
      {}, 11);
  EXPECT_EQ(values<int32_t>(r), (std::vector<int32_t>{10, 7}));
  Tensor rf = run(
      "Range", {{"a", Tensor::scalar<float>(1)}, {"b", Tensor::scalar<float>(2)}, {"d", Tensor::scalar<float>(0.25f)}},
      {}, 11);
  EXPECT_EQ(values<float>(rf), (std::vector<float>{1, 1.25f, 1.5f, 1.75f}));
  expect_error(
      [] {
        run("Range",
            {{"a", Tensor::scalar<float>(1)}, {"b", Tensor::scalar<float>(2)}, {"d", Tensor::scalar<float>(0)}}, {},
            11);
      },
      {"delta"});
}

TEST(TensorMisc, TriluEyeLikeOneHot) {
  Tensor x = vec<float>({3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  EXPECT_EQ(values<float>(run("Trilu", {{"x", x}}, {}, 14)), (std::vector<float>{1, 2, 3, 0, 5, 6, 0, 0, 9}));
  EXPECT_EQ(values<float>(run("Trilu", {{"x", x}, c("k", Tensor::scalar<int64_t>(-1))}, {{"upper", ai(0)}}, 14)),
            (std::vector<float>{0, 0, 0, 4, 0, 0, 7, 8, 0}));
  Tensor eye = run("EyeLike", {{"x", iota({2, 3})}}, {{"k", ai(1)}, {"dtype", ai(7)}}, 9);
  EXPECT_EQ(eye.dtype(), DType::kI64);
  EXPECT_EQ(values<int64_t>(eye), (std::vector<int64_t>{0, 1, 0, 0, 0, 1}));
  // Negative indices count from the end; out-of-range ones give all-off rows.
  Tensor oh = run("OneHot",
                  {{"i", vec<int64_t>({-1, 0, 5})}, c("d", Tensor::scalar<int64_t>(3)), c("v", vec<float>({0.5f, 2}))},
                  {{"axis", ai(0)}}, 11);
  EXPECT_EQ(oh.shape(), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(values<float>(oh), (std::vector<float>{0.5f, 2, 0.5f, 0.5f, 0.5f, 0.5f, 2, 0.5f, 0.5f}));
  EXPECT_EQ(infer_str("OneHot", {{"i", ty(DType::kI64, {sym("n")})}, {"$", {}}, {"$", {}}},
                      {c("d", Tensor::scalar<int64_t>(4)), c("v", vec<float>({0, 1}))}, {}, 11),
            "f32[n,4]");
}

TEST(TensorMisc, NonZeroCompressReverseSequenceDepthToSpace) {
  Tensor nz = run("NonZero", {{"x", vec<int32_t>({2, 2}, {0, 3, 4, 0})}});
  EXPECT_EQ(nz.shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(values<int64_t>(nz), (std::vector<int64_t>{0, 1, 1, 0}));
  Tensor cmp = run("Compress", {{"x", iota({2, 3})}, c("c", vec<bool>({false, true}))}, {{"axis", ai(1)}}, 11);
  EXPECT_EQ(values<float>(cmp), (std::vector<float>{1, 4}));
  EXPECT_EQ(values<float>(run("Compress", {{"x", iota({2, 2})}, c("c", vec<bool>({true, false, true}))}, {}, 11)),
            (std::vector<float>{0, 2}));
  // time_axis 0, batch_axis 1: batch entry 0 reverses 2 steps, entry 1 reverses 3.
  Tensor rs = run("ReverseSequence", {{"x", iota({3, 2})}, c("l", ints({2, 3}))}, {}, 10);
  EXPECT_EQ(values<float>(rs), (std::vector<float>{2, 5, 0, 3, 4, 1}));
  // CRD: output channel c, block (i, j) reads input channel c*4 + i*2 + j.
  Tensor d2s = run("DepthToSpace", {{"x", iota({1, 4, 1, 1})}}, {{"blocksize", ai(2)}, {"mode", as("CRD")}}, 13);
  EXPECT_EQ(values<float>(d2s), (std::vector<float>{0, 1, 2, 3}));
  Tensor dcr = run("DepthToSpace", {{"x", iota({1, 8, 1, 1})}}, {{"blocksize", ai(2)}}, 13);
  EXPECT_EQ(values<float>(dcr), (std::vector<float>{0, 2, 4, 6, 1, 3, 5, 7}));
  Tensor s2d = run("SpaceToDepth", {{"x", dcr}}, {{"blocksize", ai(2)}}, 13);
  EXPECT_EQ(values<float>(s2d), (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(infer_str("DepthToSpace", {{"x", ty(DType::kF32, {sym("n"), 8, sym("h"), 3})}}, {}, {{"blocksize", ai(2)}}),
            "f32[n,2,?,6]");
  expect_error([] { run("SpaceToDepth", {{"x", iota({1, 1, 3, 2})}}, {{"blocksize", ai(2)}}); }, {"divisible"});
}

TEST(TensorMisc, DropoutInferenceAndTraining) {
  Tensor x = vec<float>({1, 2, 3});
  auto outs = run_all("Dropout", {{"x", x}}, {}, 13, 2);
  EXPECT_EQ(values<float>(outs[0]), values<float>(x));
  EXPECT_EQ(outs[1].dtype(), DType::kBool);
  EXPECT_EQ(values<bool>(outs[1]), (std::vector<bool>{true, true, true}));
  // training_mode with ratio 0 is deterministic: identity.
  auto t0 =
      run_all("Dropout", {{"x", x}, c("r", Tensor::scalar<float>(0)), c("t", Tensor::scalar<bool>(true))}, {}, 13, 2);
  EXPECT_EQ(values<float>(t0[0]), values<float>(x));
  // Opset 7-9: the mask has the input's dtype.
  auto old = run_all("Dropout", {{"x", x}}, {{"ratio", Attribute::of_float(0.3f)}}, 7, 2);
  EXPECT_EQ(old[1].dtype(), DType::kF32);
  // training_mode with ratio > 0: each element is dropped or scaled by 1/(1-ratio).
  auto tr = run_all("Dropout",
                    {{"x", vec<float>({1, 1, 1, 1, 1, 1, 1, 1})},
                     c("r", Tensor::scalar<float>(0.5f)),
                     c("t", Tensor::scalar<bool>(true))},
                    {{"seed", ai(3)}}, 13, 2);
  auto y = values<float>(tr[0]);
  auto m = values<bool>(tr[1]);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], m[i] ? 2.0f : 0.0f);
}

// ---- Indexing

TEST(TensorIndex, GatherFamily) {
  Tensor data = iota({3, 2});
  Tensor g = run("Gather", {{"d", data}, c("i", vec<int64_t>({2}, {-1, 0}))});
  EXPECT_EQ(values<float>(g), (std::vector<float>{4, 5, 0, 1}));
  expect_error(
      [&] {
        run("Gather", {{"d", data}, c("i", vec<int32_t>({3}))});
      },
      {"node_under_test", "Gather", "index 3 is out of range"});
  EXPECT_EQ(
      infer_str("Gather", {{"d", ty(DType::kF32, {sym("v"), 8})}, {"i", ty(DType::kI64, {sym("b"), sym("s")})}}, {}),
      "f32[b,s,8]");
  Tensor ge = run("GatherElements", {{"d", data}, c("i", vec<int64_t>({2, 2}, {1, 0, -1, 2}))});
  EXPECT_EQ(values<float>(ge), (std::vector<float>{2, 1, 4, 5}));
  // batch_dims=1: each batch entry gathers from its own data slice.
  Tensor nd =
      run("GatherND", {{"d", iota({2, 2, 2})}, c("i", vec<int64_t>({2, 1}, {1, 0}))}, {{"batch_dims", ai(1)}}, 12);
  EXPECT_EQ(nd.shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(values<float>(nd), (std::vector<float>{2, 3, 4, 5}));
  expect_error(
      [] {
        run("GatherND", {{"d", iota({2, 2})}, c("i", vec<int64_t>({1, 3}, {0, 0, 0}))});
      },
      {"does not fit"});
}

TEST(TensorIndex, ScatterReductions) {
  Tensor data = vec<float>({1, 5}, {1, 2, 3, 4, 5});
  Tensor idx = vec<int64_t>({1, 2}, {1, 1});
  Tensor upd = vec<float>({1, 2}, {10, 0.5f});
  Tensor mx =
      run("ScatterElements", {{"d", data}, c("i", idx), {"u", upd}}, {{"axis", ai(1)}, {"reduction", as("max")}}, 18);
  EXPECT_EQ(values<float>(mx), (std::vector<float>{1, 10, 3, 4, 5}));
  Tensor mul =
      run("ScatterElements", {{"d", data}, c("i", idx), {"u", upd}}, {{"axis", ai(1)}, {"reduction", as("mul")}}, 16);
  EXPECT_EQ(values<float>(mul), (std::vector<float>{1, 10, 3, 4, 5}));
  expect_error(
      [&] {
        run("ScatterElements", {{"d", data}, c("i", idx), {"u", upd}}, {{"axis", ai(1)}, {"reduction", as("max")}}, 16);
      },
      {"reduction 'max'"});
  Tensor nd = run("ScatterND", {{"d", iota({3})}, c("i", vec<int64_t>({2, 1}, {2, -3})), {"u", vec<float>({10, 20})}},
                  {{"reduction", as("add")}}, 16);
  EXPECT_EQ(values<float>(nd), (std::vector<float>{20, 1, 12}));
  expect_error(
      [] {
        run("ScatterND", {{"d", iota({3})}, c("i", vec<int64_t>({1, 1}, {3})), {"u", vec<float>({1})}});
      },
      {"out of range"});
}

// ---- Resize

TEST(TensorResize, Opset18AxesAndKeepAspectRatio) {
  // sizes [3,3] on axes [2,3] with not_larger: scale min(3/2, 3/4) = 0.75, out = [2, 3];
  // half_pixel + round_prefer_floor picks rows {0, 1} and columns {0, 1, 3}.
  Tensor x = vec<float>({1, 1, 2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  Tensor y = run("Resize", {{"x", x}, {"", {}}, {"", {}}, c("sizes", ints({3, 3}))},
                 {{"axes", ais({2, 3})}, {"keep_aspect_ratio_policy", as("not_larger")}}, 18);
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{1, 1, 2, 3}));
  EXPECT_EQ(values<float>(y), (std::vector<float>{1, 2, 4, 5, 6, 8}));
}

TEST(TensorResize, AntialiasLinearDownscale) {
  // scale 0.5: the triangle filter is stretched to 4 taps with weights 1/8, 3/8, 3/8, 1/8.
  Tensor y = run("Resize", {{"x", vec<float>({1, 2, 3, 4})}, {"", {}}, c("scales", vec<float>({0.5f}))},
                 {{"mode", as("linear")}, {"antialias", ai(1)}}, 18);
  expect_near(values<float>(y), {1.625f, 3.375f});
  // Without antialias: plain linear at half_pixel coordinates 0.5 and 2.5.
  Tensor plain = run("Resize", {{"x", vec<float>({1, 2, 3, 4})}, {"", {}}, c("scales", vec<float>({0.5f}))},
                     {{"mode", as("linear")}}, 18);
  expect_near(values<float>(plain), {1.5f, 3.5f});
}

TEST(TensorResize, Opset19HalfPixelSymmetric) {
  // scale 0.6 on 4 -> 2 (real length 2.4): the offset (2 * (1 - 2/2.4)) recentres the samples.
  std::map<std::string, Attribute> attrs = {{"mode", as("linear")},
                                            {"coordinate_transformation_mode", as("half_pixel_symmetric")}};
  Tensor y = run("Resize", {{"x", vec<float>({1, 2, 3, 4})}, {"", {}}, c("scales", vec<float>({0.6f}))}, attrs, 19);
  expect_near(values<float>(y), {1.0f + 2.0f / 3, 3.0f + 1.0f / 3}, 1e-4f);
  expect_error(
      [&] {
        run("Resize", {{"x", vec<float>({1, 2, 3, 4})}, {"", {}}, c("scales", vec<float>({0.6f}))}, attrs, 18);
      },
      {"half_pixel_symmetric"});
}

TEST(TensorResize, NearestModesCubicAndInference) {
  // asymmetric 2x upscale: source coordinates 0, 0.5, 1, 1.5.
  auto nearest = [](const char* mode) {
    return values<float>(run("Resize", {{"x", vec<float>({10, 20})}, {"", {}}, c("scales", vec<float>({2}))},
                             {{"coordinate_transformation_mode", as("asymmetric")}, {"nearest_mode", as(mode)}}, 13));
  };
  EXPECT_EQ(nearest("round_prefer_floor"), (std::vector<float>{10, 10, 20, 20}));
  EXPECT_EQ(nearest("round_prefer_ceil"), (std::vector<float>{10, 20, 20, 20}));
  EXPECT_EQ(nearest("floor"), (std::vector<float>{10, 10, 20, 20}));
  EXPECT_EQ(nearest("ceil"), (std::vector<float>{10, 20, 20, 20}));
  // Cubic at an integer coordinate reproduces the sample; at 0.5 between 0 and 1 of a ramp it is 0.5
  // (symmetric weights), with edge padding on the left.
  Tensor cub = run("Resize", {{"x", vec<float>({0, 1, 2, 3})}, {"", {}}, c("scales", vec<float>({2}))},
                   {{"mode", as("cubic")}, {"coordinate_transformation_mode", as("align_corners")}}, 13);
  EXPECT_EQ(cub.numel(), 8);
  EXPECT_NEAR(values<float>(cub)[0], 0.0f, 1e-6f);
  EXPECT_NEAR(values<float>(cub)[7], 3.0f, 1e-6f);
  EXPECT_EQ(infer_str("Resize", {{"x", ty(DType::kF32, {sym("n"), 3, 4, 4})}, {"", {}}, {"$", {}}},
                      {c("scales", vec<float>({1, 1, 2, 0.5f}))}, {}, 13),
            "f32[n,3,8,2]");
  EXPECT_EQ(infer_str("Resize", {{"x", ty(DType::kF32, {sym("n"), 3, 4, 4})}, {"", {}}, {"", {}}, {"$", {}}},
                      {c("sizes", ints({5, 5}))}, {{"axes", ais({2, 3})}}, 18),
            "f32[n,3,5,5]");
  expect_error(
      [] {
        run("Resize", {{"x", iota({2, 2})}, {"", {}}, c("scales", vec<float>({2}))}, {}, 13);
      },
      {"node_under_test", "scales has 1 values"});
}

// ---- Quantization

TEST(TensorQuantize, PerAxisRoundsHalfToEvenAndSaturates) {
  Tensor x = vec<float>({2, 2}, {-1.5f, 2.5f, 0.5f, 300});
  Tensor q =
      run("QuantizeLinear", {{"x", x}, c("s", vec<float>({1, 2})), c("z", vec<int8_t>({0, 1}))}, {{"axis", ai(1)}}, 13);
  EXPECT_EQ(q.dtype(), DType::kI8);
  // -1.5 -> -2 (even), 2.5/2 = 1.25 -> 1 (+1), 0.5 -> 0 (even), 300/2 + 1 = 151 -> 127.
  EXPECT_EQ(values<int8_t>(q), (std::vector<int8_t>{-2, 2, 0, 127}));
  Tensor u = run("QuantizeLinear", {{"x", vec<float>({-3, 2.5f, 3.5f})}, c("s", Tensor::scalar<float>(1))}, {}, 10);
  EXPECT_EQ(u.dtype(), DType::kU8);
  EXPECT_EQ(values<uint8_t>(u), (std::vector<uint8_t>{0, 2, 4}));
  Tensor dq = run("DequantizeLinear", {{"x", q}, c("s", vec<float>({1, 2})), c("z", vec<int8_t>({0, 1}))},
                  {{"axis", ai(1)}}, 13);
  EXPECT_EQ(values<float>(dq), (std::vector<float>{-2, 2, 0, 252}));
  expect_error([&] { run("QuantizeLinear", {{"x", x}, c("s", vec<float>({1, 2}))}, {}, 10); }, {"scalar"});
  expect_error(
      [&] {
        run("QuantizeLinear", {{"x", x}, c("s", vec<float>({1, 2, 3}))}, {{"axis", ai(1)}}, 13);
      },
      {"per-axis"});
}

TEST(TensorQuantize, Opset19And21) {
  // Opset 19: the output takes the scale's dtype.
  Tensor dq = run(
      "DequantizeLinear",
      {{"x", vec<uint8_t>({130, 126})}, c("s", Tensor::scalar<Half>(Half(0.5f))), c("z", Tensor::scalar<uint8_t>(128))},
      {}, 19);
  EXPECT_EQ(dq.dtype(), DType::kF16);
  EXPECT_EQ(static_cast<float>(dq.data<Half>()[0]), 1.0f);
  EXPECT_EQ(static_cast<float>(dq.data<Half>()[1]), -1.0f);
  // Opset 21 blocks of 2 along axis 1: scales 1 and 2.
  Tensor q = run("QuantizeLinear", {{"x", vec<float>({1, 4}, {1, 2, 3, 4})}, c("s", vec<float>({1, 2}, {1, 2}))},
                 {{"axis", ai(1)}, {"block_size", ai(2)}}, 21);
  EXPECT_EQ(values<uint8_t>(q), (std::vector<uint8_t>{1, 2, 2, 2}));
  Tensor q16 = run("QuantizeLinear", {{"x", vec<float>({-40000, 3})}, c("s", Tensor::scalar<float>(1))},
                   {{"output_dtype", ai(5)}}, 21);
  EXPECT_EQ(q16.dtype(), DType::kI16);
  EXPECT_EQ(values<int16_t>(q16), (std::vector<int16_t>{-32768, 3}));
  Tensor back = run("DequantizeLinear", {{"x", vec<int8_t>({1, 4}, {1, 2, 3, 4})}, c("s", vec<float>({1, 2}, {1, 2}))},
                    {{"axis", ai(1)}, {"block_size", ai(2)}}, 21);
  EXPECT_EQ(values<float>(back), (std::vector<float>{1, 2, 6, 8}));
}

TEST(TensorQuantize, DynamicQuantizeLinear) {
  auto outs = run_all("DynamicQuantizeLinear", {{"x", vec<float>({0, 2.55f, -1})}}, {}, 11, 3);
  // range [-1, 2.55]: scale 3.55/255, zero point round(1/scale) = 72.
  EXPECT_NEAR(values<float>(outs[1])[0], 3.55f / 255, 1e-7f);
  EXPECT_EQ(values<uint8_t>(outs[2])[0], 72);
  EXPECT_EQ(values<uint8_t>(outs[0]), (std::vector<uint8_t>{72, 255, 0}));
  auto zeros = run_all("DynamicQuantizeLinear", {{"x", vec<float>({0, 0})}}, {}, 11, 3);
  EXPECT_EQ(values<uint8_t>(zeros[0]), (std::vector<uint8_t>{0, 0}));
}

// ---- Bad inputs and attributes are clear errors, never crashes or out-of-bounds reads

TEST(TensorErrors, BadInputsAndAttributesNameTheNode) {
  const std::vector<std::string> node = {"node_under_test"};
  expect_error([] { run("Gather", {{"d", iota({2})}, c("i", ints({0}))}, {{"axis", ai(1)}}); }, node);
  expect_error([] { run("GatherElements", {{"d", iota({2, 2})}, c("i", vec<int64_t>({1, 1}, {2}))}); }, node);
  expect_error(
      [] {
        run("GatherElements", {{"d", iota({2, 2})}, c("i", vec<int64_t>({1, 3}, {0, 0, 0}))});
      },
      {"exceeds data shape"});
  expect_error([] { run("Gather", {{"d", iota({2})}, c("i", vec<float>({0}))}); }, {"indices must be"});
  expect_error([] { run("Tile", {{"x", iota({2})}, c("r", ints({-1}))}); }, {"negative"});
  expect_error([] { run("DepthToSpace", {{"x", iota({1, 3, 1, 1})}}, {{"blocksize", ai(2)}}); }, {"divisible"});
  expect_error([] { run("DepthToSpace", {{"x", iota({1, 4, 1, 1})}}, {{"blocksize", ai(0)}}); }, {"blocksize"});
  expect_error(
      [] {
        run("OneHot", {{"i", ints({0})}, c("d", Tensor::scalar<int64_t>(2)), c("v", vec<float>({1}))}, {}, 11);
      },
      {"two elements"});
  expect_error(
      [] {
        run("Compress", {{"x", iota({2})}, c("c", vec<bool>({false, false, true}))}, {{"axis", ai(0)}}, 11);
      },
      {"beyond"});
  expect_error([] { run("ReverseSequence", {{"x", iota({2, 2})}, c("l", ints({3, 1}))}, {}, 10); }, {"out of range"});
  expect_error([] { run("Trilu", {{"x", iota({3})}}, {}, 14); }, {"rank >= 2"});
  expect_error([] { run("EyeLike", {{"x", iota({2, 2, 2})}}, {}, 9); }, {"2-D"});
  expect_error([] { run("ConstantOfShape", {c("s", ints({-2}))}, {}, 9); }, {"negative"});
  expect_error([] { run("Concat", {{"a", iota({2})}, {"b", vec<int32_t>({1})}}, {{"axis", ai(0)}}); }, {"dtypes"});
  expect_error(
      [] {
        run("Resize", {{"x", iota({2})}, {"", {}}, c("s", vec<float>({2}))}, {{"mode", as("area")}}, 13);
      },
      {"mode 'area'"});
  expect_error([] { run("Resize", {{"x", iota({2})}, {"", {}}, c("s", vec<float>({-1}))}, {}, 13); }, {"positive"});
  expect_error(
      [] {
        run("QuantizeLinear", {{"x", iota({2})}, c("s", Tensor::scalar<float>(1)), c("z", vec<uint8_t>({0, 0}))});
      },
      {"zero point shape"});
  expect_error(
      [] {
        run("DequantizeLinear",
            {{"x", vec<int32_t>({1})}, c("s", Tensor::scalar<float>(1)), c("z", Tensor::scalar<int32_t>(3))});
      },
      {"zero point of 0"});
  expect_error([] { run("Pad", {{"x", iota({2})}, c("p", ints({-2, -1}))}, {}, 13); }, {"remove more"});
  expect_error(
      [] {
        run("Pad", {{"x", vec<float>({0}, {})}, c("p", ints({1, 1}))}, {{"mode", as("edge")}}, 13);
      },
      {"empty dimension"});
  expect_error(
      [] {
        run("ScatterElements", {{"d", iota({3})}, c("i", ints({5})), {"u", vec<float>({1})}});
      },
      {"out of range"});
  expect_error([] { run("Flatten", {{"x", iota({2, 3})}}, {{"axis", ai(3)}}); }, {"out of range"});
  expect_error([] { run_all("Split", {{"x", iota({2})}, c("s", ints({3, -1}))}, {}, 13, 2); }, {"negative"});
}
