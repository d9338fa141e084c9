// The data-movement tactics against the reference kernels: kiln.alias (Reshape family), kiln.transpose,
// kiln.concat, kiln.slice (Slice, Split, Gather, Expand, Tile) and kiln.resize (nearest). They only
// move bytes, so results must be bit-identical (tolerance 0).
#include <algorithm>
#include <numeric>

#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

uint32_t fresh_seed() {
  static uint32_t next = 5000;
  return next++;
}

Tensor rnd(std::vector<int64_t> shape, DType dt = DType::kF32) {
  return random_tensor(dt, std::move(shape), fresh_seed(), -100.0, 100.0);
}

Tensor ints(std::vector<int64_t> values) {
  const int64_t n = static_cast<int64_t>(values.size());
  return Tensor::from_vector<int64_t>({n}, values);
}

Node make_node(const std::string& op, std::vector<std::string> inputs, std::map<std::string, Attribute> attrs = {},
               size_t outputs = 1) {
  Node n;
  n.name = op + "_test";
  n.op_type = op;
  n.inputs = std::move(inputs);
  for (size_t i = 0; i < outputs; ++i) n.outputs.push_back("y" + std::to_string(i));
  n.attrs = std::move(attrs);
  return n;
}

// A node whose inputs x0.. are `inputs` (an undefined Tensor is an omitted input).
NodeRun make_run(const std::string& op, std::vector<Tensor> inputs, std::map<std::string, Attribute> attrs = {},
                 int64_t opset = 17, std::vector<bool> constant = {}, size_t outputs = 1) {
  std::vector<std::string> names;
  for (size_t i = 0; i < inputs.size(); ++i) names.push_back(inputs[i].defined() ? "x" + std::to_string(i) : "");
  NodeRun r;
  r.node = make_node(op, std::move(names), std::move(attrs), outputs);
  r.opset = opset;
  r.inputs = std::move(inputs);
  r.constant = std::move(constant);
  return r;
}

const std::vector<Layout> kBothLayouts = {Layout::kPlain, Layout::kChannelsLast};

// Runs `r` with every input produced in `l`, expecting bit-identical results.
void expect_exact(const std::string& tactic, NodeRun r, Layout l = Layout::kPlain) {
  r.producer_layouts.assign(r.inputs.size(), l);
  SCOPED_TRACE(std::string("layout ") + cpu::layout_name(l));
  expect_matches_reference(tactic, r, 0.0, 0.0);
}

const cpu::Tactic& tactic(const std::string& name, const std::string& op) {
  const cpu::Tactic* t = cpu::TacticRegistry::global().find_named("", op, name);
  if (!t) throw Error(ErrorCode::kInternal, name + " not registered for " + op);
  return *t;
}

// Whether `tactic` supports `r` when inputs `runtime` are not constants. (The shapes must still be
// inferable from the node alone, so the run is built with them constant first.)
bool supports_with_runtime_inputs(const std::string& name, const NodeRun& r, std::vector<size_t> runtime) {
  cpu::KernelConfig cfg = make_config(r);
  for (size_t i : runtime) cfg.inputs[i].constant = nullptr;
  return tactic(name, r.node.op_type).supports(cfg);
}

// ---- kiln.alias

TEST(DataMovement, AliasOpsShareTheInputBytes) {
  const Tensor x = rnd({2, 3, 4, 5});
  const std::vector<NodeRun> runs = {
      make_run("Reshape", {x, ints({6, -1})}, {}, 17, {false, true}),
      make_run("Reshape", {x, ints({0, 0, 20})}, {}, 17, {false, true}),
      make_run("Flatten", {x}, {{"axis", Attribute::of_int(2)}}),
      make_run("Squeeze", {rnd({1, 3, 1, 5}), ints({0, 2})}, {}, 13, {false, true}),
      make_run("Squeeze", {rnd({1, 3, 1, 5})}, {{"axes", Attribute::of_ints({2})}}, 11),
      make_run("Unsqueeze", {x, ints({0, 5})}, {}, 13, {false, true}),
      make_run("Identity", {x}),
      make_run("Dropout", {x, Tensor::scalar(0.3f)}, {}, 13, {false, true}),
      make_run("Dropout", {x, Tensor::scalar(0.3f), Tensor::scalar(false)}, {}, 13, {false, true, true}),
      make_run("Dropout", {x}, {{"ratio", Attribute::of_float(0.2f)}}, 10),
  };
  for (const NodeRun& r : runs) {
    SCOPED_TRACE(r.node.op_type);
    for (Layout l : kBothLayouts) {
      NodeRun rl = r;
      rl.producer_layouts.assign(rl.inputs.size(), l);
      const cpu::Tactic& t = tactic("kiln.alias", r.node.op_type);
      const auto cfg = make_config(rl);
      ASSERT_TRUE(t.supports(cfg));
      EXPECT_TRUE(t.aliases_input(cfg));
      // Channels-last data is reordered to plain first: reshaping it in place would scramble it.
      EXPECT_EQ(t.input_layouts(cfg)[0], Layout::kPlain);
      expect_exact("kiln.alias", rl, l);
      // The output is input 0's bytes, in plain order.
      const auto got = run_tactic("kiln.alias", rl);
      ASSERT_EQ(got[0].nbytes(), r.inputs[0].nbytes());
      EXPECT_EQ(std::memcmp(got[0].raw(), r.inputs[0].raw(), got[0].nbytes()), 0);
    }
    // When the program cannot alias (a graph output), create() gives a copy kernel.
    const auto cfg = make_config(r);
    auto k = tactic("kiln.alias", r.node.op_type).create(cfg);
    Tensor out(cfg.outputs[0].dtype, cfg.outputs[0].shape);
    std::vector<const void*> in;
    for (const auto& t : r.inputs) in.push_back(t.defined() ? t.raw() : nullptr);
    void* o = out.mutable_raw();
    k->run(cpu::KernelArgs{in.data(), &o, nullptr});
    EXPECT_EQ(std::memcmp(out.raw(), r.inputs[0].raw(), out.nbytes()), 0);
  }
}

TEST(DataMovement, AliasLeavesTrainingDropoutAndMasksToOthers) {
  const Tensor x = rnd({4, 5});
  EXPECT_FALSE(tactic_supports(
      "kiln.alias", make_run("Dropout", {x, Tensor::scalar(0.5f), Tensor::scalar(true)}, {}, 13, {false, true, true})));
  EXPECT_FALSE(tactic_supports("kiln.alias", make_run("Dropout", {x, Tensor::scalar(0.5f), Tensor::scalar(false)}, {},
                                                      13, {false, true, false})));       // training_mode not constant
  EXPECT_FALSE(tactic_supports("kiln.alias", make_run("Dropout", {x}, {}, 13, {}, 2)));  // mask requested
}

// ---- kiln.transpose

TEST(DataMovement, TransposeEveryPermOfRank4) {
  std::vector<int64_t> perm = {0, 1, 2, 3};
  const Tensor x = rnd({2, 3, 4, 5});
  do {
    SCOPED_TRACE(shape_to_string(perm));
    for (Layout l : kBothLayouts)
      expect_exact("kiln.transpose", make_run("Transpose", {x}, {{"perm", Attribute::of_ints(perm)}}), l);
  } while (std::next_permutation(perm.begin(), perm.end()));
}

TEST(DataMovement, TransposeShapesAndDtypes) {
  struct Case {
    std::vector<int64_t> shape, perm;
  };
  const Case cases[] = {
      {{37, 45}, {1, 0}},                  // 2-D
      {{3, 37, 45}, {0, 2, 1}},            // last two dims
      {{2, 3, 37, 45}, {0, 2, 1, 3}},      // innermost kept: row copies
      {{1, 64, 33, 17}, {0, 2, 3, 1}},     // NCHW -> NHWC
      {{1, 33, 17, 64}, {0, 3, 1, 2}},     // NHWC -> NCHW
      {{2, 12, 50, 64}, {0, 2, 1, 3}},     // attention heads split
      {{8, 64, 96}, {0, 2, 1}},            // large: parallel tiles
      {{1, 3, 1, 7}, {3, 1, 2, 0}},        // unit dims
      {{2, 3, 4, 5, 6}, {4, 0, 3, 1, 2}},  // rank 5
      {{5}, {0}},
      {{0, 3}, {1, 0}},  // empty
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_to_string(c.shape) + " perm " + shape_to_string(c.perm));
    for (DType dt : {DType::kF32, DType::kI64, DType::kF16, DType::kU8}) {
      const Tensor x = rnd(c.shape, dt);
      for (Layout l : kBothLayouts)
        expect_exact("kiln.transpose", make_run("Transpose", {x}, {{"perm", Attribute::of_ints(c.perm)}}), l);
    }
  }
  // No perm: the dims reversed.
  expect_exact("kiln.transpose", make_run("Transpose", {rnd({3, 4, 5})}));
}

// ---- kiln.concat

TEST(DataMovement, ConcatAnyAxisBothLayouts) {
  for (int64_t axis : {0, 1, 2, 3, -1, -3}) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    const size_t a = static_cast<size_t>(axis < 0 ? axis + 4 : axis);
    std::vector<Tensor> ins;
    for (int64_t extra : {1, 3, 2}) {
      std::vector<int64_t> shape = {2, 5, 7, 9};
      shape[a] = extra + (a == 1 ? 4 : 0);
      ins.push_back(rnd(shape));
    }
    for (Layout l : kBothLayouts)
      expect_exact("kiln.concat", make_run("Concat", ins, {{"axis", Attribute::of_int(axis)}}), l);
  }
}

TEST(DataMovement, ConcatShapesDtypesAndLayouts) {
  expect_exact("kiln.concat", make_run("Concat", {rnd({2, 37}), rnd({2, 5})}, {{"axis", Attribute::of_int(1)}}));
  expect_exact("kiln.concat", make_run("Concat", {rnd({3}, DType::kI64), rnd({1}, DType::kI64), rnd({2}, DType::kI64)},
                                       {{"axis", Attribute::of_int(0)}}, 17, {false, true, false}));
  // Large inputs: few big chunks (split into pieces) and many small ones.
  expect_exact("kiln.concat",
               make_run("Concat", {rnd({1, 64, 40, 40}), rnd({1, 32, 40, 40})}, {{"axis", Attribute::of_int(1)}}));
  for (Layout l : kBothLayouts)
    expect_exact("kiln.concat",
                 make_run("Concat", {rnd({1, 64, 40, 40}), rnd({1, 32, 40, 40})}, {{"axis", Attribute::of_int(1)}}), l);
  expect_exact("kiln.concat", make_run("Concat", {rnd({4000, 3}, DType::kF16), rnd({4000, 5}, DType::kF16)},
                                       {{"axis", Attribute::of_int(1)}}));

  const cpu::Tactic& t = tactic("kiln.concat", "Concat");
  // All channels-last: taken as they are, output channels-last.
  {
    NodeRun r = make_run("Concat", {rnd({1, 3, 5, 5}), rnd({1, 4, 5, 5})}, {{"axis", Attribute::of_int(1)}});
    r.producer_layouts = {Layout::kChannelsLast, Layout::kChannelsLast};
    const auto cfg = make_config(r);
    EXPECT_EQ(t.input_layouts(cfg), (std::vector<Layout>{Layout::kAny, Layout::kAny}));
    EXPECT_EQ(t.output_layouts(cfg)[0], Layout::kChannelsLast);
  }
  // Mixed, or a constant of rank >= 3: plain.
  {
    NodeRun r = make_run("Concat", {rnd({1, 3, 5, 5}), rnd({1, 4, 5, 5})}, {{"axis", Attribute::of_int(1)}});
    r.producer_layouts = {Layout::kChannelsLast, Layout::kPlain};
    const auto cfg = make_config(r);
    EXPECT_EQ(t.input_layouts(cfg), (std::vector<Layout>{Layout::kPlain, Layout::kPlain}));
    EXPECT_EQ(t.output_layouts(cfg)[0], Layout::kPlain);
    expect_matches_reference("kiln.concat", r, 0, 0);
    NodeRun c =
        make_run("Concat", {rnd({1, 3, 5, 5}), rnd({1, 4, 5, 5})}, {{"axis", Attribute::of_int(1)}}, 17, {false, true});
    c.producer_layouts = {Layout::kChannelsLast, Layout::kPlain};
    EXPECT_EQ(t.output_layouts(make_config(c))[0], Layout::kPlain);
    expect_matches_reference("kiln.concat", c, 0, 0);
  }
}

// ---- kiln.slice: Slice

TEST(DataMovement, SliceConstantParameters) {
  const Tensor x = rnd({4, 6, 7, 9});
  struct Case {
    std::vector<int64_t> starts, ends, axes, steps;
  };
  const int64_t big = std::numeric_limits<int64_t>::max();
  const Case cases[] = {
      {{1}, {3}, {0}, {}},
      {{0, 2}, {-1, 100}, {1, 3}, {}},
      {{-3}, {big}, {-1}, {}},
      {{8}, {-big}, {3}, {-1}},           // reversed innermost
      {{1, 5}, {4, 0}, {2, 3}, {2, -2}},  // steps on several axes
      {{0, 0, 0, 0}, {4, 6, 7, 9}, {0, 1, 2, 3}, {1, 1, 1, 3}},
      {{2}, {2}, {1}, {}},  // empty
      {{1}, {5}, {1}, {3}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("starts " + shape_to_string(c.starts) + " ends " + shape_to_string(c.ends));
    std::vector<Tensor> ins = {x, ints(c.starts), ints(c.ends), ints(c.axes)};
    if (!c.steps.empty()) ins.push_back(ints(c.steps));
    std::vector<bool> constant(ins.size(), true);
    constant[0] = false;
    for (Layout l : kBothLayouts) expect_exact("kiln.slice", make_run("Slice", ins, {}, 13, constant), l);
  }
  // Opset 9: attributes. Large input for the parallel path. i64 data.
  expect_exact("kiln.slice", make_run("Slice", {x},
                                      {{"starts", Attribute::of_ints({1, -4})},
                                       {"ends", Attribute::of_ints({3, 1000})},
                                       {"axes", Attribute::of_ints({1, 3})}},
                                      9));
  expect_exact("kiln.slice", make_run("Slice", {rnd({1, 128, 80, 80}), ints({0}), ints({64}), ints({1})}, {}, 13,
                                      {false, true, true, true}));
  expect_exact("kiln.slice",
               make_run("Slice", {rnd({5}, DType::kI64), ints({1}), ints({-1})}, {}, 13, {false, true, true}));
  // Runtime starts: left to the reference.
  EXPECT_FALSE(supports_with_runtime_inputs(
      "kiln.slice", make_run("Slice", {x, ints({1}), ints({3}), ints({0})}, {}, 13, {false, true, true, true}), {1}));
}

// ---- Split

TEST(DataMovement, SplitForms) {
  const Tensor x = rnd({4, 10, 7});
  std::vector<NodeRun> runs = {
      make_run("Split", {x, ints({3, 7})}, {{"axis", Attribute::of_int(1)}}, 13, {false, true}, 2),
      make_run("Split", {x}, {{"axis", Attribute::of_int(1)}}, 13, {}, 5),
      make_run("Split", {x}, {{"axis", Attribute::of_int(-1)}, {"num_outputs", Attribute::of_int(3)}}, 18, {}, 3),
      make_run("Split", {x}, {{"axis", Attribute::of_int(0)}, {"split", Attribute::of_ints({1, 1, 2})}}, 11, {}, 3),
      make_run("Split", {x}, {{"axis", Attribute::of_int(2)}}, 11, {}, 1),
      make_run("Split", {rnd({1, 96, 40, 40})}, {{"axis", Attribute::of_int(1)}}, 13, {}, 2),
  };
  for (const NodeRun& r : runs) {
    SCOPED_TRACE(std::to_string(r.node.outputs.size()) + " outputs, opset " + std::to_string(r.opset));
    for (Layout l : kBothLayouts) expect_exact("kiln.slice", r, l);
  }
}

// ---- Gather

TEST(DataMovement, Gather) {
  const Tensor table = rnd({100, 16});
  const Tensor idx64 = Tensor::from_vector<int64_t>({2, 5}, {0, 99, -1, 5, 17, 3, -100, 42, 42, 7});
  const Tensor idx32 = Tensor::from_vector<int32_t>({3}, {4, -2, 0});
  // Embedding lookup: constant table, runtime indices.
  expect_exact("kiln.slice", make_run("Gather", {table, idx64}, {{"axis", Attribute::of_int(0)}}, 13, {true, false}));
  expect_exact("kiln.slice", make_run("Gather", {table, idx32}, {{"axis", Attribute::of_int(0)}}, 13));
  // Other axes, scalar indices, constant indices, large.
  const Tensor x = rnd({3, 5, 7});
  for (int64_t axis : {1, 2, -1}) {
    SCOPED_TRACE("axis " + std::to_string(axis));
    expect_exact("kiln.slice", make_run("Gather", {x, idx32}, {{"axis", Attribute::of_int(axis)}}, 13));
    expect_exact("kiln.slice", make_run("Gather", {x, Tensor::scalar(int64_t{-1})}, {{"axis", Attribute::of_int(axis)}},
                                        13, {false, true}));
  }
  expect_exact("kiln.slice", make_run("Gather", {rnd({30522, 64}), random_tensor(DType::kI64, {4, 128}, 9, 0, 30521)},
                                      {{"axis", Attribute::of_int(0)}}, 13, {true, false}));
  // An index out of range fails in run(), as in the reference.
  const NodeRun bad =
      make_run("Gather", {table, Tensor::from_vector<int64_t>({2}, {3, 100})}, {{"axis", Attribute::of_int(0)}}, 13);
  EXPECT_THROW(run_tactic("kiln.slice", bad), Error);
  EXPECT_THROW(run_reference(bad), Error);
}

// ---- Expand, Tile

TEST(DataMovement, ExpandAndTile) {
  expect_exact("kiln.slice", make_run("Expand", {rnd({3, 1}), ints({2, 3, 4})}, {}, 13, {false, true}));
  expect_exact("kiln.slice", make_run("Expand", {rnd({1}), ints({5, 6})}, {}, 13, {false, true}));
  // The shape input need not be constant: the output shape is concrete when the kernel is made.
  EXPECT_TRUE(supports_with_runtime_inputs(
      "kiln.slice", make_run("Expand", {rnd({2, 1, 6}), ints({2, 5, 6})}, {}, 13, {false, true}), {1}));
  expect_exact("kiln.slice", make_run("Expand", {rnd({1, 64, 1, 1}), ints({2, 64, 40, 40})}, {}, 13, {false, true}));
  expect_exact("kiln.slice", make_run("Expand", {rnd({4}, DType::kI64), ints({3, 1})}, {}, 13, {false, true}));
  expect_exact("kiln.slice", make_run("Tile", {rnd({2, 3}), ints({2, 3})}, {}, 13, {false, true}));
  expect_exact("kiln.slice", make_run("Tile", {rnd({1, 3, 5, 1}), ints({2, 1, 1, 4})}, {}, 13, {false, true}));
  expect_exact("kiln.slice", make_run("Tile", {rnd({2, 3}, DType::kF16), ints({1, 1})}, {}, 13, {false, true}));
}

// ---- kiln.resize

NodeRun resize(const Tensor& x, const std::string& coord, const std::string& nearest,
               std::optional<std::vector<float>> scales, std::optional<std::vector<int64_t>> sizes = std::nullopt,
               int64_t opset = 13) {
  std::vector<Tensor> ins = {x, Tensor(), Tensor(), Tensor()};
  std::vector<bool> constant = {false, true, true, true};
  if (scales) ins[2] = Tensor::from_vector<float>({static_cast<int64_t>(scales->size())}, *scales);
  if (sizes) ins[3] = ints(*sizes);
  if (!sizes) ins.resize(3), constant.resize(3);
  return make_run("Resize", ins,
                  {{"mode", Attribute::of_string("nearest")},
                   {"coordinate_transformation_mode", Attribute::of_string(coord)},
                   {"nearest_mode", Attribute::of_string(nearest)}},
                  opset, constant);
}

TEST(DataMovement, ResizeNearestModes) {
  const Tensor x = rnd({1, 3, 7, 9});
  for (const char* coord : {"asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn"})
    for (const char* nearest : {"floor", "round_prefer_floor", "round_prefer_ceil", "ceil"}) {
      SCOPED_TRACE(std::string(coord) + " / " + nearest);
      for (Layout l : kBothLayouts) {
        expect_exact("kiln.resize", resize(x, coord, nearest, std::vector<float>{1, 1, 2, 2}), l);
        expect_exact("kiln.resize", resize(x, coord, nearest, std::vector<float>{1, 1, 1.5f, 0.5f}), l);
        expect_exact("kiln.resize", resize(x, coord, nearest, std::nullopt, std::vector<int64_t>{1, 3, 10, 4}), l);
      }
    }
}

TEST(DataMovement, ResizeYoloUpsampleAndLegacyForms) {
  // YOLOv8's x2 upsample, large enough for the parallel path, both layouts; the output keeps the layout.
  const Tensor x = rnd({1, 64, 20, 20});
  for (Layout l : kBothLayouts) {
    NodeRun r = resize(x, "asymmetric", "floor", std::vector<float>{1, 1, 2, 2});
    expect_exact("kiln.resize", r, l);
    r.producer_layouts = {l, Layout::kPlain, Layout::kPlain};
    const auto cfg = make_config(r);
    const cpu::Tactic& t = tactic("kiln.resize", "Resize");
    EXPECT_EQ(t.input_layouts(cfg)[0], Layout::kAny);
    EXPECT_EQ(t.output_layouts(cfg)[0], l);
  }
  // Resize-10 and Upsample-9 (scales input), Upsample-7 (scales attribute).
  const Tensor scales = Tensor::from_vector<float>({4}, {1, 1, 2, 3});
  expect_exact("kiln.resize",
               make_run("Resize", {x, scales}, {{"mode", Attribute::of_string("nearest")}}, 10, {false, true}));
  expect_exact("kiln.resize",
               make_run("Upsample", {x, scales}, {{"mode", Attribute::of_string("nearest")}}, 9, {false, true}));
  expect_exact(
      "kiln.resize",
      make_run("Upsample", {x},
               {{"mode", Attribute::of_string("nearest")}, {"scales", Attribute::of_floats({1, 1, 2, 2})}}, 7));
  // u8 and i64 data.
  expect_exact("kiln.resize",
               resize(rnd({1, 2, 5, 3}, DType::kU8), "asymmetric", "floor", std::vector<float>{1, 1, 2, 2}));
  expect_exact("kiln.resize",
               resize(rnd({2, 5, 3}, DType::kI64), "half_pixel", "round_prefer_floor", std::vector<float>{1, 2, 2}));
}

TEST(DataMovement, ResizeLeavesOtherModesToTheReference) {
  const Tensor x = rnd({1, 3, 7, 9});
  NodeRun linear = resize(x, "asymmetric", "floor", std::vector<float>{1, 1, 2, 2});
  linear.node.attrs["mode"] = Attribute::of_string("linear");
  EXPECT_FALSE(tactic_supports("kiln.resize", linear));
  EXPECT_FALSE(supports_with_runtime_inputs("kiln.resize",
                                            resize(x, "asymmetric", "floor", std::vector<float>{1, 1, 2, 2}), {2}));
  NodeRun crop = resize(x, "tf_crop_and_resize", "floor", std::vector<float>{1, 1, 2, 2});
  crop.inputs[1] = Tensor::from_vector<float>({8}, {0, 0, 0, 0, 1, 1, 1, 1});
  crop.node.inputs[1] = "x1";
  EXPECT_FALSE(tactic_supports("kiln.resize", crop));
}

}  // namespace
}  // namespace kiln_cpu_test
