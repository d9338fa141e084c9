// fuse-attention and fuse-elementwise-chains, and their fused ops kiln::Attention and
// kiln::ElementwiseChain: golden before/after graphs for each pattern variant, must-not-change
// cases for every guard, numeric equivalence with the reference executor, schema inference with
// symbolic dims, and the exported transformer models in the model cache (kiln_test::model_dir()).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <set>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "util/npy.h"
#include "test_support.h"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- Graph building

Node node(std::string op, std::vector<std::string> in, std::string out, std::map<std::string, Attribute> attrs = {}) {
  return Node{out, std::move(op), "", std::move(in), {out}, std::move(attrs)};
}

Attribute strings_attr(std::vector<std::string> v) {
  Attribute a;
  a.kind = AttrKind::kStrings;
  a.strings = std::move(v);
  return a;
}

// Builds a model value by value: node names equal their output names.
struct Builder {
  Model m;
  std::mt19937 rng{7};

  Builder() { m.opsets[""] = 17; }
  void input(const std::string& name, Shape shape, DType dt = DType::kF32) {
    m.graph.inputs.push_back(name);
    m.graph.types[name] = TensorType{dt, std::move(shape)};
  }
  std::string init(const std::string& name, Tensor t) {
    m.graph.initializers[name] = std::move(t);
    return name;
  }
  std::string weights(const std::string& name, std::vector<int64_t> shape, float range = 0.5f) {
    std::uniform_real_distribution<float> dist(-range, range);
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    for (auto& x : v) x = dist(rng);
    return init(name, Tensor::from_vector<float>(std::move(shape), v));
  }
  std::string ints(const std::string& name, std::vector<int64_t> v) {
    const int64_t n = static_cast<int64_t>(v.size());
    return init(name, Tensor::from_vector<int64_t>({n}, v));
  }
  std::string scalar(const std::string& name, float v) { return init(name, Tensor::scalar<float>(v)); }
  std::string add(std::string op, std::vector<std::string> in, const std::string& out,
                  std::map<std::string, Attribute> attrs = {}) {
    m.graph.nodes.push_back(node(std::move(op), std::move(in), out, std::move(attrs)));
    return out;
  }
  std::string transpose(const std::string& in, const std::string& out, std::vector<int64_t> perm) {
    return add("Transpose", {in}, out, {{"perm", Attribute::of_ints(std::move(perm))}});
  }
  Model done(std::vector<std::string> outputs) {
    m.graph.outputs = std::move(outputs);
    return m;
  }
};

// "MatMul(x,w)->y; kiln::Attention(q,k,v)->o; out: o" style one-line summary.
std::string summary(const Model& m) {
  std::string s;
  for (const Node& n : m.graph.nodes) {
    s += (n.domain.empty() ? "" : n.domain + "::") + n.op_type + "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) s += (i ? "," : "") + n.inputs[i];
    s += ")->";
    for (size_t i = 0; i < n.outputs.size(); ++i) s += (i ? "," : "") + n.outputs[i];
    s += "; ";
  }
  s += "out:";
  for (const auto& o : m.graph.outputs) s += " " + o;
  return s;
}

const Node* find_op(const Model& m, const std::string& op) {
  for (const Node& n : m.graph.nodes)
    if (n.op_type == op) return &n;
  return nullptr;
}

int count_op(const Model& m, const std::string& op) {
  int c = 0;
  for (const Node& n : m.graph.nodes) c += n.op_type == op;
  return c;
}

// Runs the given passes (verifying the IR after each) on a typed copy of the model.
int run_passes(Model& m, std::vector<std::unique_ptr<Pass>> passes) {
  infer_types(m);
  PassManager pm;
  for (auto& p : passes) pm.add(std::move(p));
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  return pm.run(m, ctx);
}
// fuse-attention's rewrite count; dead-node elimination then drops the unused shape constants.
int run_attention(Model& m) {
  std::vector<std::unique_ptr<Pass>> p;
  p.push_back(make_fuse_attention());
  const int n = run_passes(m, std::move(p));
  std::vector<std::unique_ptr<Pass>> dne;
  dne.push_back(make_dead_node_elimination());
  run_passes(m, std::move(dne));
  return n;
}
int run_chains(Model& m) {
  std::vector<std::unique_ptr<Pass>> p;
  p.push_back(make_fuse_elementwise_chains());
  return run_passes(m, std::move(p));
}

// ---- Numeric comparison

Tensor random_tensor(std::mt19937& rng, const std::vector<int64_t>& shape, float lo = -2, float hi = 2) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_vector<float>(shape, v);
}

// Fresh seeded random values for every f32 graph input not given in `fixed`.
reference::TensorMap random_inputs(const Model& m, unsigned seed, reference::TensorMap fixed = {}) {
  std::mt19937 rng(seed);
  for (const auto& in : m.graph.inputs)
    if (!fixed.count(in)) fixed[in] = random_tensor(rng, static_dims(*m.graph.type_of(in)->shape));
  return fixed;
}

// Max abs difference over the outputs, NaNs required at the same places. `rel_tol` < 0: exact.
void expect_close(const Model& before, const Model& after, const reference::TensorMap& inputs, double rel_tol) {
  auto a = reference::Executor(before).run(inputs);
  auto b = reference::Executor(after).run(inputs);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    ASSERT_EQ(t.shape(), b.at(name).shape()) << name;
    ASSERT_EQ(t.dtype(), b.at(name).dtype()) << name;
    const auto x = t.to_double_vector(), y = b.at(name).to_double_vector();
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(std::isnan(x[i]), std::isnan(y[i])) << name << "[" << i << "]: " << x[i] << " vs " << y[i];
      if (std::isnan(x[i])) continue;
      if (rel_tol < 0) {
        ASSERT_EQ(x[i], y[i]) << name << "[" << i << "]";
        continue;
      }
      max_diff = std::max(max_diff, std::fabs(x[i] - y[i]));
      max_ref = std::max(max_ref, std::fabs(x[i]));
    }
    if (rel_tol >= 0) {
      EXPECT_LE(max_diff, rel_tol * std::max(1.0, max_ref)) << name;
    }
  }
}
constexpr double kF32Tol = 1e-5;  // fp32: max abs diff <= 1e-5 * max(1, max|ref|)

// ---- Attention graphs

// HF BERT/GPT-style attention ([B,S,H,D] heads) over input x [B,S,E], with variants.
struct BshdSpec {
  int64_t b = 2, s = 5, heads = 2, d = 4;
  enum Scale { kDivScores, kMulScores, kMulQ, kSdpa } scale = kDivScores;
  enum Mask { kNone, kPadding, kCausalWhere, kCausalWhereReversed, kMaskInput } mask = kPadding;
  bool fused_qkv = false;     // GPT: one projection split three ways
  bool k_two_step = false;    // K: Transpose [0,2,1,3] then [0,1,3,2]
  bool zero_shapes = false;   // Reshape targets [0,0,H,D] and [0,0,E]
  bool out_proj = true;       // MatMul after the head merge (else the merge is the graph output)
  std::vector<int64_t> merge_shape;  // merge Reshape target; default [B,S,E]
};

Model build_bshd(const BshdSpec& sp) {
  Builder bd;
  const int64_t b = sp.b, s = sp.s, h = sp.heads, d = sp.d, e = h * d;
  bd.input("x", Shape{Dim(b), Dim(s), Dim(e)});
  std::string q = "q", k = "k", v = "v";
  if (sp.fused_qkv) {
    bd.add("MatMul", {"x", bd.weights("wqkv", {e, 3 * e})}, "qkvm");
    bd.add("Add", {bd.weights("bqkv", {3 * e}), "qkvm"}, "qkv");
    bd.m.graph.nodes.push_back(Node{"split", "Split", "", {"qkv", bd.ints("split", {e, e, e})}, {"q", "k", "v"},
                                    {{"axis", Attribute::of_int(2)}}});
  } else {
    for (const char* p : {"q", "k", "v"}) {
      const std::string n(p);
      bd.add("MatMul", {"x", bd.weights("w" + n, {e, e})}, n + "m");
      bd.add("Add", {n + "m", bd.weights("b" + n, {e})}, n);
    }
  }
  std::string mask;
  if (sp.mask == BshdSpec::kPadding) {
    // BERT's extended mask: (1 - m[:, None, None, :]) * -10000.
    bd.input("m", Shape{Dim(b), Dim(s)});
    bd.add("Reshape", {"m", bd.ints("mshape", {b, 1, 1, s})}, "m4");
    bd.add("Sub", {bd.scalar("one", 1), "m4"}, "inv");
    mask = bd.add("Mul", {"inv", bd.scalar("big_neg", -10000)}, "ext");
  } else if (sp.mask == BshdSpec::kCausalWhere || sp.mask == BshdSpec::kCausalWhereReversed) {
    // GPT's causal mask: Trilu of ones; future positions get -inf.
    bd.init("ones", Tensor::from_vector<bool>({s, s}, std::vector<bool>(static_cast<size_t>(s * s), true)));
    bd.add("Trilu", {"ones"}, "tril", {{"upper", Attribute::of_int(0)}});
    if (sp.mask == BshdSpec::kCausalWhere) bd.add("Not", {"tril"}, "future");
    bd.scalar("neg_inf", -kInf);
  } else if (sp.mask == BshdSpec::kMaskInput) {
    bd.input("mask", Shape{Dim(b), Dim(1), Dim(s), Dim(s)});
    mask = "mask";
  }
  bd.ints("shape4", sp.zero_shapes ? std::vector<int64_t>{0, 0, h, d} : std::vector<int64_t>{b, s, h, d});
  bd.add("Reshape", {q, "shape4"}, "qr");
  bd.transpose("qr", "qt", {0, 2, 1, 3});
  bd.add("Reshape", {k, "shape4"}, "kr");
  if (sp.k_two_step) {
    bd.transpose("kr", "kt0", {0, 2, 1, 3});
    bd.transpose("kt0", "kt", {0, 1, 3, 2});
  } else {
    bd.transpose("kr", "kt", {0, 2, 3, 1});
  }
  bd.add("Reshape", {v, "shape4"}, "vr");
  bd.transpose("vr", "vt", {0, 2, 1, 3});
  const float sqrt_d = std::sqrt(static_cast<float>(d));
  std::string scores;
  switch (sp.scale) {
    case BshdSpec::kDivScores:
      bd.add("MatMul", {"qt", "kt"}, "qk");
      scores = bd.add("Div", {"qk", bd.scalar("sqrt_d", sqrt_d)}, "scaled");
      break;
    case BshdSpec::kMulScores:
      bd.add("MatMul", {"qt", "kt"}, "qk");
      scores = bd.add("Mul", {"qk", bd.scalar("inv_sqrt_d", 1 / sqrt_d)}, "scaled");
      break;
    case BshdSpec::kMulQ:
      bd.add("Mul", {bd.scalar("inv_sqrt_d", 1 / sqrt_d), "qt"}, "qs");
      scores = bd.add("MatMul", {"qs", "kt"}, "qk");
      break;
    case BshdSpec::kSdpa:  // torch SDPA: q and k^T each scaled by d^-0.25
      bd.scalar("quarter", 1 / std::sqrt(sqrt_d));
      bd.add("Mul", {"qt", "quarter"}, "qs");
      bd.add("Mul", {"kt", "quarter"}, "ks");
      scores = bd.add("MatMul", {"qs", "ks"}, "qk");
      break;
  }
  if (sp.mask == BshdSpec::kCausalWhere) scores = bd.add("Where", {"future", "neg_inf", scores}, "masked");
  else if (sp.mask == BshdSpec::kCausalWhereReversed) scores = bd.add("Where", {"tril", scores, "neg_inf"}, "masked");
  else if (!mask.empty()) scores = bd.add("Add", {scores, mask}, "masked");
  bd.add("Softmax", {scores}, "probs", {{"axis", Attribute::of_int(-1)}});
  bd.add("MatMul", {"probs", "vt"}, "ctx4");
  bd.transpose("ctx4", "ctxt", {0, 2, 1, 3});
  std::vector<int64_t> merge = sp.merge_shape;
  if (merge.empty()) merge = sp.zero_shapes ? std::vector<int64_t>{0, 0, e} : std::vector<int64_t>{b, s, e};
  bd.add("Reshape", {"ctxt", bd.ints("shape3", merge)}, "ctx");
  if (!sp.out_proj) return bd.done({"ctx"});
  bd.add("MatMul", {"ctx", bd.weights("wo", {e, e})}, "y");
  return bd.done({"y"});
}

// Padding mask inputs: batch 0 sees everything, batch b > 0 has its last b positions padded.
reference::TensorMap bshd_inputs(const Model& m, const BshdSpec& sp, unsigned seed) {
  reference::TensorMap fixed;
  if (sp.mask == BshdSpec::kPadding) {
    std::vector<float> mv(static_cast<size_t>(sp.b * sp.s), 1.0f);
    for (int64_t b = 0; b < sp.b; ++b)
      for (int64_t j = sp.s - std::min(b, sp.s - 1); j < sp.s; ++j) mv[static_cast<size_t>(b * sp.s + j)] = 0;
    fixed["m"] = Tensor::from_vector<float>({sp.b, sp.s}, mv);
  }
  return random_inputs(m, seed, fixed);
}

// Fuses a BSHD variant: one kiln::Attention with the expected attributes and summary, and the
// same outputs as the unfused graph on two seeds.
void check_bshd_fuses(const BshdSpec& sp, const std::string& golden) {
  Model m = build_bshd(sp);
  infer_types(m);
  const Model before = m;
  ASSERT_EQ(run_attention(m), 1);
  EXPECT_EQ(summary(m), golden);
  const Node* att = find_op(m, "Attention");
  ASSERT_NE(att, nullptr);
  EXPECT_EQ(att->domain, "kiln");
  EXPECT_EQ(att->attr("num_heads")->i, sp.heads);
  EXPECT_NEAR(att->attr("scale")->f, 1 / std::sqrt(static_cast<float>(sp.d)), 1e-6);
  ASSERT_NE(att->attr("fused_ops"), nullptr);
  EXPECT_GE(att->attr("fused_ops")->strings.size(), 10u);
  EXPECT_EQ(m.opsets.at("kiln"), 1);
  for (unsigned seed : {1u, 2u}) expect_close(before, m, bshd_inputs(before, sp, seed), kF32Tol);
}

// Runs fuse-attention on a graph that must not change.
void expect_attention_unchanged(Model m) {
  infer_types(m);
  const std::string golden = summary(m);
  std::vector<std::unique_ptr<Pass>> p;
  p.push_back(make_fuse_attention());
  EXPECT_EQ(run_passes(m, std::move(p)), 0);
  EXPECT_EQ(summary(m), golden);
}

Node* node_named(Model& m, const std::string& name) {
  for (Node& n : m.graph.nodes)
    if (n.name == name) return &n;
  return nullptr;
}

const char* kProjections =
    "MatMul(x,wq)->qm; Add(qm,bq)->q; MatMul(x,wk)->km; Add(km,bk)->k; MatMul(x,wv)->vm; Add(vm,bv)->v; ";

// torch nn.MultiheadAttention (ViT): sequence-first x [S,B,E], heads folded into the batch.
Model build_seq_first(int64_t s, int64_t b, int64_t h, int64_t d, bool with_mask) {
  Builder bd;
  const int64_t e = h * d;
  bd.input("x", Shape{Dim(s), Dim(b), Dim(e)});
  for (const char* p : {"q", "k", "v"}) {
    const std::string n(p);
    bd.add("MatMul", {"x", bd.weights("w" + n, {e, e})}, n + "m");
    bd.add("Add", {n + "m", bd.weights("b" + n, {e})}, n);
  }
  bd.ints("shape3", {s, b * h, d});
  bd.add("Reshape", {"q", "shape3"}, "qr");
  bd.transpose("qr", "qt", {1, 0, 2});
  bd.add("Div", {"qt", bd.scalar("sqrt_d", std::sqrt(static_cast<float>(d)))}, "qs");
  bd.add("Reshape", {"k", "shape3"}, "kr");
  bd.transpose("kr", "kt", {1, 2, 0});
  bd.add("Reshape", {"v", "shape3"}, "vr");
  bd.transpose("vr", "vt", {1, 0, 2});
  std::string scores = bd.add("MatMul", {"qs", "kt"}, "qk");
  if (with_mask) {
    bd.input("amask", Shape{Dim(s), Dim(s)});
    scores = bd.add("Add", {scores, "amask"}, "masked");
  }
  bd.add("Softmax", {scores}, "probs", {{"axis", Attribute::of_int(-1)}});
  bd.add("MatMul", {"probs", "vt"}, "o");
  bd.transpose("o", "ot", {1, 0, 2});
  bd.add("Reshape", {"ot", bd.ints("oshape", {s * b, e})}, "o2");
  bd.add("MatMul", {"o2", bd.weights("wo", {e, e})}, "y");
  return bd.done({"y"});
}

// torch 2.x's nn.MultiheadAttention (need_weights=False): the seq-first heads are viewed as
// [B,H,S,D] and go through scaled_dot_product_attention's export (both operands scaled by
// d^-1/4, K^T as Transpose [0,1,3,2]); the output is permuted [2,0,1,3] back to [S,B,H,D].
Model build_seq_first_sdpa(int64_t s, int64_t b, int64_t h, int64_t d) {
  Builder bd;
  const int64_t e = h * d;
  bd.input("x", Shape{Dim(s), Dim(b), Dim(e)});
  for (const char* p : {"q", "k", "v"}) {
    const std::string n(p);
    bd.add("MatMul", {"x", bd.weights("w" + n, {e, e})}, n + "m");
    bd.add("Add", {n + "m", bd.weights("b" + n, {e})}, n);
  }
  bd.ints("shape3", {s, b * h, d});
  bd.ints("shape4", {b, h, s, d});
  const float root = std::pow(static_cast<float>(d), -0.25f);
  for (const char* p : {"q", "k", "v"}) {
    const std::string n(p);
    bd.add("Reshape", {n, "shape3"}, n + "r");
    bd.transpose(n + "r", n + "t", {1, 0, 2});
    bd.add("Reshape", {n + "t", "shape4"}, n + "4");
  }
  bd.add("Mul", {"q4", bd.scalar("root_q", root)}, "qs");
  bd.transpose("k4", "kT", {0, 1, 3, 2});
  bd.add("Mul", {"kT", bd.scalar("root_k", root)}, "ks");
  bd.add("MatMul", {"qs", "ks"}, "qk");
  bd.add("Softmax", {"qk"}, "probs", {{"axis", Attribute::of_int(-1)}});
  bd.add("MatMul", {"probs", "v4"}, "o");
  bd.transpose("o", "ot", {2, 0, 1, 3});
  bd.add("Reshape", {"ot", bd.ints("oshape", {s * b, e})}, "o2");
  bd.add("MatMul", {"o2", bd.weights("wo", {e, e})}, "y");
  return bd.done({"y"});
}

// torch 2.x's split of nn.MultiheadAttention's packed in-projection X [S,B,3E]: Reshape [S,B,3,E]
// -> Unsqueeze 0 -> Transpose `perm` -> Squeeze 3 -> Gather 0, 1, 2 (Q, K, V), combined as
// (Q + K) * V so that every Gather is read.
Model build_packed_split(int64_t s, int64_t b, int64_t e, std::vector<int64_t> perm = {3, 1, 2, 0, 4}) {
  Builder bd;
  bd.input("x", Shape{Dim(s), Dim(b), Dim(e)});
  bd.add("MatMul", {"x", bd.weights("w", {e, 3 * e})}, "proj");
  bd.add("Reshape", {"proj", bd.ints("shape", {s, b, 3, e})}, "r");
  bd.add("Unsqueeze", {"r", bd.ints("zero", {0})}, "u");
  bd.transpose("u", "t", std::move(perm));
  bd.add("Squeeze", {"t", bd.ints("three", {3})}, "sq");
  for (int64_t k = 0; k < 3; ++k) {
    const std::string i = "i" + std::to_string(k);
    bd.init(i, Tensor::scalar<int64_t>(k));
    bd.add("Gather", {"sq", i}, "g" + std::to_string(k), {{"axis", Attribute::of_int(0)}});
  }
  bd.add("Add", {"g0", "g1"}, "g01");
  bd.add("Mul", {"g01", "g2"}, "y");
  return bd.done({"y"});
}

// A sequence-first attention block after split-packed-projections and fuse-attention: x [B,S,E]
// -> Transpose -> packed QKV FusedMatMul -> Slices -> Transposes -> kiln::Attention -> Transpose
// -> Reshape [S*B,E] -> FusedMatMul -> Reshape `back` -> Transpose -> + x.
Model build_seq_first_block(int64_t b, int64_t s, int64_t h, int64_t d, std::vector<int64_t> back = {}) {
  Builder bd;
  const int64_t e = h * d;
  if (back.empty()) back = {s, b, e};
  bd.input("x", Shape{Dim(b), Dim(s), Dim(e)});
  bd.transpose("x", "xt", {1, 0, 2});
  bd.m.graph.nodes.push_back(Node{"qkv", "FusedMatMul", "kiln", {"xt", bd.weights("wqkv", {e, 3 * e}), bd.weights("bqkv", {3 * e})}, {"proj"}, {}});
  const char* names[3] = {"q", "k", "v"};
  for (int64_t j = 0; j < 3; ++j) {
    const std::string n = names[j];
    bd.add("Slice", {"proj", bd.ints(n + "_lo", {j * e}), bd.ints(n + "_hi", {(j + 1) * e}), bd.ints(n + "_ax", {-1})}, n);
    bd.transpose(n, n + "_bsd", {1, 0, 2});
  }
  Node att{"att", "Attention", "kiln", {"q_bsd", "k_bsd", "v_bsd"}, {"a"}, {}};
  att.attrs["num_heads"] = Attribute::of_int(h);
  bd.m.graph.nodes.push_back(att);
  bd.transpose("a", "a_sbd", {1, 0, 2});
  bd.add("Reshape", {"a_sbd", bd.ints("flat", {s * b, e})}, "a2");
  bd.m.graph.nodes.push_back(Node{"out", "FusedMatMul", "kiln", {"a2", bd.weights("wo", {e, e}), bd.weights("bo", {e})}, {"o2"}, {}});
  bd.add("Reshape", {"o2", bd.ints("back", back)}, "o3");
  bd.transpose("o3", "o4", {1, 0, 2});
  bd.add("Add", {"o4", "x"}, "y");
  bd.m.opsets["kiln"] = 1;
  return bd.done({"y"});
}

// Cross attention written out unfused: q [B,Sq,H*Dk], k [B,Sk,H*Dk], v [B,Sk,H*Dv], optional
// additive mask input of `mask_shape`, scores scaled by `scale`.
Model build_unfused(int64_t b, int64_t sq, int64_t sk, int64_t h, int64_t dk, int64_t dv,
                    const std::vector<int64_t>& mask_shape, float scale) {
  Builder bd;
  bd.input("q", Shape{Dim(b), Dim(sq), Dim(h * dk)});
  bd.input("k", Shape{Dim(b), Dim(sk), Dim(h * dk)});
  bd.input("v", Shape{Dim(b), Dim(sk), Dim(h * dv)});
  bd.add("Reshape", {"q", bd.ints("qshape", {b, sq, h, dk})}, "qr");
  bd.transpose("qr", "qt", {0, 2, 1, 3});
  bd.add("Reshape", {"k", bd.ints("kshape", {b, sk, h, dk})}, "kr");
  bd.transpose("kr", "kt", {0, 2, 3, 1});
  bd.add("Reshape", {"v", bd.ints("vshape", {b, sk, h, dv})}, "vr");
  bd.transpose("vr", "vt", {0, 2, 1, 3});
  bd.add("MatMul", {"qt", "kt"}, "qk");
  std::string scores = bd.add("Mul", {"qk", bd.scalar("scale", scale)}, "scaled");
  if (!mask_shape.empty()) {
    bd.input("mask", shape_from_dims(mask_shape));
    scores = bd.add("Add", {scores, "mask"}, "masked");
  }
  bd.add("Softmax", {scores}, "probs", {{"axis", Attribute::of_int(-1)}});
  bd.add("MatMul", {"probs", "vt"}, "o");
  bd.transpose("o", "ot", {0, 2, 1, 3});
  bd.add("Reshape", {"ot", bd.ints("oshape", {b, sq, h * dv})}, "y");
  return bd.done({"y"});
}

// The same as one kiln::Attention node (scale 0: the default 1/sqrt(Dk)).
Model build_fused(const Model& unfused, int64_t h, float scale) {
  Model m;
  m.opsets[""] = 17;
  m.opsets["kiln"] = 1;
  m.graph.inputs = unfused.graph.inputs;
  for (const auto& in : m.graph.inputs) m.graph.types[in] = unfused.graph.types.at(in);
  Node att{"att", "Attention", "kiln", {"q", "k", "v"}, {"y"}, {}};
  if (unfused.graph.types.count("mask")) att.inputs.push_back("mask");
  att.attrs["num_heads"] = Attribute::of_int(h);
  att.attrs["scale"] = Attribute::of_float(scale);
  m.graph.nodes.push_back(att);
  m.graph.outputs = {"y"};
  return m;
}

}  // namespace

// ---- fuse-attention: golden before/after for each pattern variant, with numeric equivalence.

TEST(FuseAttention, BertPaddingMask) {
  check_bshd_fuses({}, std::string(kProjections) +
                           "Reshape(m,mshape)->m4; Sub(one,m4)->inv; Mul(inv,big_neg)->ext; "
                           "kiln::Attention(q,k,v,ext)->ctx; MatMul(ctx,wo)->y; out: y");
}

TEST(FuseAttention, ScaleVariantsAndKTransposedTwice) {
  const std::string tail =
      "Reshape(m,mshape)->m4; Sub(one,m4)->inv; Mul(inv,big_neg)->ext; kiln::Attention(q,k,v,ext)->ctx; "
      "MatMul(ctx,wo)->y; out: y";
  BshdSpec mul_scores;  // Mul(1/sqrt(d)) on the scores, [0,0,H,D] targets, K transposed twice
  mul_scores.scale = BshdSpec::kMulScores;
  mul_scores.zero_shapes = true;
  mul_scores.k_two_step = true;
  check_bshd_fuses(mul_scores, kProjections + tail);
  BshdSpec mul_q;  // scale folded into Q before the MatMul, 4 heads of 3
  mul_q.scale = BshdSpec::kMulQ;
  mul_q.heads = 4;
  mul_q.d = 3;
  check_bshd_fuses(mul_q, kProjections + tail);
  BshdSpec sdpa;  // torch SDPA: q and k^T each scaled by d^-0.25
  sdpa.scale = BshdSpec::kSdpa;
  sdpa.k_two_step = true;
  sdpa.d = 8;
  check_bshd_fuses(sdpa, kProjections + tail);
}

TEST(FuseAttention, GptCausalWhereMask) {
  BshdSpec gpt;
  gpt.fused_qkv = true;
  gpt.mask = BshdSpec::kCausalWhere;
  gpt.scale = BshdSpec::kMulScores;
  gpt.b = 1;
  gpt.s = 6;
  check_bshd_fuses(gpt,
                   "MatMul(x,wqkv)->qkvm; Add(bqkv,qkvm)->qkv; Split(qkv,split)->q,k,v; Trilu(ones)->tril; "
                   "Not(tril)->future; Where(future,neg_inf,qr/mask_zero)->qr/additive_mask; "
                   "kiln::Attention(q,k,v,qr/additive_mask)->ctx; MatMul(ctx,wo)->y; out: y");
  // Where(keep, scores, -inf): the fill on the false side.
  gpt.mask = BshdSpec::kCausalWhereReversed;
  gpt.scale = BshdSpec::kSdpa;
  gpt.k_two_step = true;
  check_bshd_fuses(gpt,
                   "MatMul(x,wqkv)->qkvm; Add(bqkv,qkvm)->qkv; Split(qkv,split)->q,k,v; Trilu(ones)->tril; "
                   "Where(tril,qr/mask_zero,neg_inf)->qr/additive_mask; "
                   "kiln::Attention(q,k,v,qr/additive_mask)->ctx; MatMul(ctx,wo)->y; out: y");
}

TEST(FuseAttention, WhereAndAdditiveMasksCombine) {
  // HF GPT-2: Where(causal, scores, fill) then + the padding mask; the fill is a Constant node.
  BshdSpec sp;
  sp.mask = BshdSpec::kCausalWhere;
  Model m = build_bshd(sp);
  Graph& g = m.graph;
  g.initializers.erase("neg_inf");
  g.nodes.insert(g.nodes.begin(), Node{"neg_inf", "Constant", "", {}, {"neg_inf"},
                                       {{"value", Attribute::of_tensor(Tensor::scalar<float>(-kInf))}}});
  g.inputs.push_back("pad");
  g.types["pad"] = TensorType{DType::kF32, Shape{Dim(sp.b), Dim(1), Dim(1), Dim(sp.s)}};
  auto probs = std::find_if(g.nodes.begin(), g.nodes.end(), [](const Node& n) { return n.name == "probs"; });
  probs->inputs[0] = "padded";
  g.nodes.insert(probs, node("Add", {"masked", "pad"}, "padded"));
  infer_types(m);
  const Model before = m;
  ASSERT_EQ(run_attention(m), 1);
  EXPECT_EQ(summary(m), "Constant()->neg_inf; " + std::string(kProjections) +
                            "Trilu(ones)->tril; Not(tril)->future; "
                            "Where(future,neg_inf,qr/mask_zero)->qr/additive_mask; "
                            "Add(pad,qr/additive_mask)->qr/mask_sum; kiln::Attention(q,k,v,qr/mask_sum)->ctx; "
                            "MatMul(ctx,wo)->y; out: y");
  expect_close(before, m, random_inputs(before, 6), kF32Tol);
}

TEST(FuseAttention, MaskInputAndKeptMergeReshape) {
  // The merge Reshape targets [B*S, E], not kiln::Attention's [B, S, E]: it stays on the output.
  BshdSpec sp;
  sp.mask = BshdSpec::kMaskInput;
  sp.out_proj = false;
  sp.merge_shape = {sp.b * sp.s, sp.heads * sp.d};
  check_bshd_fuses(sp, std::string(kProjections) +
                           "kiln::Attention(q,k,v,mask)->qr/attention; Reshape(qr/attention,shape3)->ctx; out: ctx");
  // No mask, the merged heads are the graph output.
  BshdSpec plain;
  plain.mask = BshdSpec::kNone;
  plain.out_proj = false;
  check_bshd_fuses(plain, std::string(kProjections) + "kiln::Attention(q,k,v)->ctx; out: ctx");
}

TEST(FuseAttention, SequenceFirstMultiheadAttention) {
  for (bool with_mask : {false, true}) {
    Model m = build_seq_first(5, 2, 3, 4, with_mask);
    infer_types(m);
    const Model before = m;
    ASSERT_EQ(run_attention(m), 1);
    EXPECT_EQ(summary(m), std::string(kProjections) +
                              "Transpose(q)->q_bsd; Transpose(k)->k_bsd; Transpose(v)->v_bsd; "
                              "kiln::Attention(q_bsd,k_bsd,v_bsd" +
                              (with_mask ? ",amask" : "") +
                              ")->qr/attention; Transpose(qr/attention)->qr/attention_sbd; "
                              "Reshape(qr/attention_sbd,oshape)->o2; MatMul(o2,wo)->y; out: y");
    const Node* att = find_op(m, "Attention");
    EXPECT_EQ(att->attr("num_heads")->i, 3);
    EXPECT_NEAR(att->attr("scale")->f, 0.5f, 1e-7);
    for (unsigned seed : {3u, 4u}) expect_close(before, m, random_inputs(before, seed), kF32Tol);
  }
}

TEST(FuseAttention, SequenceFirstMultiheadAttentionTorch2) {
  Model m = build_seq_first_sdpa(5, 2, 3, 4);
  infer_types(m);
  const Model before = m;
  ASSERT_EQ(run_attention(m), 1);
  EXPECT_EQ(summary(m), std::string(kProjections) +
                            "Transpose(q)->q_bsd; Transpose(k)->k_bsd; Transpose(v)->v_bsd; "
                            "kiln::Attention(q_bsd,k_bsd,v_bsd)->qr/attention; "
                            "Transpose(qr/attention)->qr/attention_sbd; "
                            "Reshape(qr/attention_sbd,oshape)->o2; MatMul(o2,wo)->y; out: y");
  const Node* att = find_op(m, "Attention");
  EXPECT_EQ(att->attr("num_heads")->i, 3);
  EXPECT_NEAR(att->attr("scale")->f, 0.5f, 1e-6);
  for (unsigned seed : {5u, 6u}) expect_close(before, m, random_inputs(before, seed), kF32Tol);
  // Guard: the heads must be merged back by exactly [2,0,1,3].
  Model bad = build_seq_first_sdpa(5, 2, 3, 4);
  for (Node& n : bad.graph.nodes)
    if (n.op_type == "Transpose" && n.outputs[0] == "ot") n.attrs["perm"] = Attribute::of_ints({2, 1, 0, 3});
  infer_types(bad);
  EXPECT_EQ(run_attention(bad), 0) << "an output permutation other than [2,0,1,3] must not fuse";
}

// ---- split-packed-projections and cancel-transposes (torch's nn.MultiheadAttention layout)

TEST(SplitPackedProjections, GathersOfTheTorch2SplitBecomeSlicesOfTheProjection) {
  Model m = build_packed_split(5, 2, 8);
  infer_types(m);
  const Model before = m;
  std::vector<std::unique_ptr<Pass>> p;
  p.push_back(make_split_packed_projections());
  p.push_back(make_dead_node_elimination());
  run_passes(m, std::move(p));
  EXPECT_EQ(summary(m),
            "MatMul(x,w)->proj; Slice(proj,g0/starts,g0/ends,g0/axes)->g0; "
            "Slice(proj,g1/starts,g1/ends,g1/axes)->g1; Slice(proj,g2/starts,g2/ends,g2/axes)->g2; "
            "Add(g0,g1)->g01; Mul(g01,g2)->y; out: y");
  EXPECT_EQ(m.graph.initializers.at("g1/starts").to_int64_vector(), std::vector<int64_t>{8});
  EXPECT_EQ(m.graph.initializers.at("g1/ends").to_int64_vector(), std::vector<int64_t>{16});
  EXPECT_EQ(m.graph.initializers.at("g1/axes").to_int64_vector(), std::vector<int64_t>{2});
  for (unsigned seed : {1u, 2u}) expect_close(before, m, random_inputs(before, seed), -1);  // exact: a copy either way
}

TEST(SplitPackedProjections, GuardOtherPermutationsAndIndices) {
  // Another permutation picks other elements: [3,b,s,1,E] is not a column split of [s,b,3E].
  Model m = build_packed_split(4, 2, 8, {3, 2, 1, 0, 4});
  infer_types(m);
  std::vector<std::unique_ptr<Pass>> p;
  p.push_back(make_split_packed_projections());
  EXPECT_EQ(run_passes(m, std::move(p)), 0);
  // An index that is not a constant scalar.
  Model n = build_packed_split(4, 2, 8);
  n.graph.initializers["i1"] = Tensor::from_vector<int64_t>({1}, {1});
  infer_types(n);
  std::vector<std::unique_ptr<Pass>> q;
  q.push_back(make_split_packed_projections());
  EXPECT_EQ(run_passes(n, std::move(q)), 2) << "only the scalar-index Gathers";
}

TEST(CancelTransposes, SequenceFirstAttentionBlockRunsInTheBatchFirstLayout) {
  Model m = build_seq_first_block(2, 5, 2, 4);
  infer_types(m);
  const Model before = m;
  std::vector<std::unique_ptr<Pass>> p;
  p.push_back(make_cancel_transposes());
  EXPECT_EQ(run_passes(m, std::move(p)), 2) << "the QKV region and the output projection's region";
  std::vector<std::unique_ptr<Pass>> dne;
  dne.push_back(make_dead_node_elimination());
  run_passes(m, std::move(dne));
  EXPECT_EQ(summary(m),
            "kiln::FusedMatMul(x,wqkv,bqkv)->proj; Slice(proj,q_lo,q_hi,q_ax)->q; Slice(proj,k_lo,k_hi,k_ax)->k; "
            "Slice(proj,v_lo,v_hi,v_ax)->v; kiln::Attention(q,k,v)->a; Reshape(a,flat)->a2; "
            "kiln::FusedMatMul(a2,wo,bo)->o2; Reshape(o2,o3/shape)->o3; Add(o3,x)->y; out: y");
  EXPECT_EQ(m.graph.initializers.at("o3/shape").to_int64_vector(), (std::vector<int64_t>{2, 5, 8}));
  EXPECT_EQ(shape_to_string(*m.graph.type_of("proj")->shape), "[2,5,24]");
  EXPECT_EQ(shape_to_string(*m.graph.type_of("q")->shape), "[2,5,8]");
  for (unsigned seed : {3u, 4u}) expect_close(before, m, random_inputs(before, seed), kF32Tol);
}

TEST(CancelTransposes, Guards) {
  auto rewrites = [](Model m) {
    infer_types(m);
    std::vector<std::unique_ptr<Pass>> p;
    p.push_back(make_cancel_transposes());
    return run_passes(m, std::move(p));
  };
  // A value of the region is a graph output: that region stays (the other one goes).
  Model out = build_seq_first_block(2, 5, 2, 4);
  out.graph.outputs.push_back("proj");
  EXPECT_EQ(rewrites(out), 1);
  // A reader that is not row-wise (a softmax over the sequence axis).
  Model soft = build_seq_first_block(2, 5, 2, 4);
  soft.graph.nodes.push_back(Node{"sm", "Softmax", "", {"proj"}, {"sm"}, {{"axis", Attribute::of_int(0)}}});
  soft.graph.outputs.push_back("sm");
  EXPECT_EQ(rewrites(soft), 1);
  // A target that does not name the permuted leading dims exactly (-1 for one of them).
  EXPECT_EQ(rewrites(build_seq_first_block(2, 4, 2, 4, {4, -1, 8})), 1);
}

// torch 2.11's export of a tiny torchvision ViT (tests/data/vit_torch2): the standard pipeline
// leaves one Transpose (the patch embedding's) and matches PyTorch.
TEST(CancelTransposes, Torch2VisionTransformerKeepsOnlyThePatchTranspose) {
  const fs::path dir = fs::path(KILN_SOURCE_DIR) / "tests/data/vit_torch2";
  Model m = load_onnx(dir / "vit_tiny.onnx");
  std::map<std::string, Tensor> io;
  for (auto& [key, t] : read_npz(dir / "vit_tiny.io.npz")) io[key] = t;
  const Tensor x = io.at("input");
  m.graph.types["input"] = TensorType{DType::kF32, shape_from_dims(x.shape())};
  InferOptions opt;
  opt.evaluator = reference::constant_evaluator();
  infer_types(m, opt);
  const Model before = m;
  PassContext ctx;
  ctx.evaluator = reference::constant_evaluator();
  ctx.input_shapes["input"] = x.shape();
  PassManager::standard().run(m, ctx);
  for (const auto& line : ctx.log) std::cout << "vit_tiny: " << line << "\n";
  EXPECT_EQ(count_op(m, "Transpose"), 1);
  EXPECT_EQ(count_op(m, "Attention"), 2);
  EXPECT_EQ(count_op(m, "Squeeze") + count_op(m, "Unsqueeze"), 0);
  auto error = [](const Tensor& a, const Tensor& b) {  // max |a - b| / max |b|
    const auto x = a.to_double_vector(), y = b.to_double_vector();
    double d = 0, r = 0;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) d = std::max(d, std::fabs(x[i] - y[i])), r = std::max(r, std::fabs(y[i]));
    return x.size() == y.size() ? d / std::max(r, 1e-30) : 1e9;
  };
  const auto got = reference::Executor(m).run({{"input", x}});
  const auto want = reference::Executor(before).run({{"input", x}});
  EXPECT_LE(error(got.at("output"), want.at("output")), 1e-5);
  EXPECT_LE(error(got.at("output"), io.at("output")), 1e-4) << "against PyTorch";
}

TEST(FuseAttention, TwoLayersFuseTwice) {
  // Two stacked attention blocks sharing the mask: both fuse, names stay unique.
  Model m = build_bshd({});
  Graph& g = m.graph;
  const size_t n = g.nodes.size();
  const std::set<std::string> shared = {"m4", "inv", "ext"};
  std::set<std::string> produced;
  for (const Node& c : g.nodes) produced.insert(c.outputs.begin(), c.outputs.end());
  for (size_t i = 0; i < n; ++i) {
    Node c = g.nodes[i];
    if (shared.count(c.name)) continue;
    for (auto& in : c.inputs)
      if (in == "x") in = "y";
      else if (produced.count(in) && !shared.count(in)) in += "2";
    for (auto& o : c.outputs) o += "2";
    c.name = c.outputs[0];
    g.nodes.push_back(c);
  }
  g.outputs = {"y2"};
  infer_types(m);
  const Model before = m;
  EXPECT_EQ(run_attention(m), 2);
  EXPECT_EQ(count_op(m, "Attention"), 2);
  expect_close(before, m, bshd_inputs(before, {}, 5), kF32Tol);
}

// ---- fuse-attention: must-not-change cases, one per guard.

TEST(FuseAttention, GuardIntermediateWithSecondConsumer) {
  Model scores_out = build_bshd({});  // the scaled scores are also a graph output
  scores_out.graph.outputs.push_back("scaled");
  expect_attention_unchanged(scores_out);
  Model q_used = build_bshd({});  // Q's transposed heads feed another node
  q_used.graph.nodes.push_back(node("Relu", {"qt"}, "qt_relu"));
  q_used.graph.outputs.push_back("qt_relu");
  expect_attention_unchanged(q_used);
  Model probs_out = build_bshd({});  // the probabilities are a graph output
  probs_out.graph.outputs.push_back("probs");
  expect_attention_unchanged(probs_out);
}

TEST(FuseAttention, GuardReshapeShapes) {
  // A head-split shape only known at run time (and not provable from types).
  Model dynamic = build_bshd({});
  dynamic.graph.inputs.push_back("qshape");
  dynamic.graph.types["qshape"] = TensorType{DType::kI64, Shape{Dim(4)}};
  node_named(dynamic, "qr")->inputs[1] = "qshape";
  expect_attention_unchanged(dynamic);
  // Heads that mix batches: [1, B*S, H, D] is a valid reshape but not a head split.
  BshdSpec sp;
  sp.mask = BshdSpec::kNone;
  Model across = build_bshd(sp);
  across.graph.initializers["shape4"] = Tensor::from_vector<int64_t>({4}, {1, sp.b * sp.s, sp.heads, sp.d});
  expect_attention_unchanged(across);
  // V with one head (broadcast over Q's heads): head counts disagree.
  Model one_head = build_bshd(sp);
  const int64_t e = sp.heads * sp.d;
  one_head.graph.initializers["vshape"] = Tensor::from_vector<int64_t>({4}, {sp.b, sp.s, 1, e});
  node_named(one_head, "vr")->inputs[1] = "vshape";
  one_head.graph.initializers["shape3"] = Tensor::from_vector<int64_t>({3}, {sp.b, sp.s, sp.heads * e});
  one_head.graph.nodes.pop_back();  // no output projection: [B,S,H*E] is the output
  one_head.graph.outputs = {"ctx"};
  expect_attention_unchanged(one_head);
}

TEST(FuseAttention, GuardSoftmaxMaskAndScale) {
  Model axis2 = build_bshd({});  // softmax over the query axis
  node_named(axis2, "probs")->attrs["axis"] = Attribute::of_int(2);
  expect_attention_unchanged(axis2);

  BshdSpec causal;
  causal.mask = BshdSpec::kCausalWhere;
  Model finite = build_bshd(causal);  // Where fill -10000 is not equivalent to adding it
  finite.graph.initializers["neg_inf"] = Tensor::scalar<float>(-10000);
  expect_attention_unchanged(finite);

  Model late_scale = build_bshd({});  // scale applied after the mask scales the mask too
  Node* scaled = node_named(late_scale, "scaled");
  Node* masked = node_named(late_scale, "masked");
  *scaled = node("Add", {"qk", "ext"}, "scaled");
  *masked = node("Div", {"scaled", "sqrt_d"}, "masked");
  expect_attention_unchanged(late_scale);

  Model vector_scale = build_bshd({});  // a per-key scale is not a scalar
  vector_scale.graph.initializers["sqrt_d"] = Tensor::from_vector<float>({5}, {2, 2, 2, 2, 3});
  expect_attention_unchanged(vector_scale);

  // A mask that broadcasts the scores up (batch 1 -> 2) changes the output's batch.
  BshdSpec one;
  one.b = 1;
  one.mask = BshdSpec::kMaskInput;
  one.out_proj = false;
  one.merge_shape = {2, one.s, one.heads * one.d};
  Model wide = build_bshd(one);
  wide.graph.types["mask"] = TensorType{DType::kF32, Shape{Dim(2), Dim(1), Dim(one.s), Dim(one.s)}};
  expect_attention_unchanged(wide);
}

// ---- kiln::Attention: schema and kernel against the unfused graph.

TEST(FuseAttentionOp, SchemaKeepsSymbolicDims) {
  Model m;
  m.opsets[""] = 17;
  m.opsets["kiln"] = 1;
  m.graph.inputs = {"q", "k", "v", "mask"};
  m.graph.types["q"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim::sym("seq"), Dim(64)}};
  m.graph.types["k"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim::sym("kv"), Dim(64)}};
  m.graph.types["v"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim::sym("kv"), Dim(32)}};
  m.graph.types["mask"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(1), Dim(1), Dim::sym("kv")}};
  m.graph.nodes.push_back(Node{"att", "Attention", "kiln", {"q", "k", "v", "mask"}, {"y"},
                               {{"num_heads", Attribute::of_int(4)}}});
  m.graph.outputs = {"y"};
  require_supported(m);
  infer_types(m);
  EXPECT_EQ(m.graph.type_of("y")->dtype, DType::kF32);
  EXPECT_EQ(shape_to_string(*m.graph.type_of("y")->shape), "[batch,seq,32]");

  Model bad_heads = m;  // 30 is not a multiple of 4 heads
  bad_heads.graph.types["q"].shape->back() = Dim(30);
  bad_heads.graph.types["k"].shape->back() = Dim(30);
  EXPECT_THROW(infer_types(bad_heads), Error);
  Model bad_mask = m;  // mask with 3 heads against 4
  bad_mask.graph.types["mask"] = TensorType{DType::kF32, Shape{Dim(1), Dim(3), Dim(1), Dim(1)}};
  EXPECT_THROW(infer_types(bad_mask), Error);
  Model bad_rank = m;
  bad_rank.graph.types["v"] = TensorType{DType::kF32, Shape{Dim(2), Dim(32)}};
  EXPECT_THROW(infer_types(bad_rank), Error);
  Model no_heads = m;
  no_heads.graph.nodes[0].attrs.clear();
  EXPECT_FALSE(check_model(no_heads).empty());
}

TEST(FuseAttentionOp, KernelMatchesUnfusedGraphOnSeveralShapes) {
  struct Case {
    int64_t b, sq, sk, h, dk, dv;
    std::vector<int64_t> mask;
  };
  const std::vector<Case> cases = {
      {1, 1, 1, 1, 1, 1, {}},           {2, 3, 5, 2, 4, 3, {2, 1, 1, 5}}, {1, 7, 4, 3, 2, 5, {7, 4}},
      {2, 4, 4, 2, 8, 8, {2, 2, 4, 4}}, {3, 2, 6, 1, 5, 2, {1}},          {2, 5, 3, 4, 3, 3, {2, 4, 1, 3}},
  };
  unsigned seed = 10;
  for (const Case& c : cases) {
    for (bool default_scale : {true, false}) {
      SCOPED_TRACE("case b=" + std::to_string(c.b) + " sq=" + std::to_string(c.sq) + " sk=" + std::to_string(c.sk) +
                   " h=" + std::to_string(c.h));
      const float scale = default_scale ? 1 / std::sqrt(static_cast<float>(c.dk)) : 0.37f;
      Model unfused = build_unfused(c.b, c.sq, c.sk, c.h, c.dk, c.dv, c.mask, scale);
      infer_types(unfused);
      const Model fused = build_fused(unfused, c.h, default_scale ? 0.0f : scale);
      expect_close(unfused, fused, random_inputs(unfused, seed++), kF32Tol);
      // The pass finds the same fusion (cross attention, Dv != Dk).
      Model m = unfused;
      ASSERT_EQ(run_attention(m), 1);
      EXPECT_EQ(summary(m), std::string("kiln::Attention(q,k,v") + (c.mask.empty() ? "" : ",mask") + ")->y; out: y");
      expect_close(unfused, m, random_inputs(unfused, seed++), kF32Tol);
    }
  }
}

TEST(FuseAttentionOp, MinusInfinityMasksMatchUnfused) {
  // Row (0, 1) masked everywhere is NaN in both graphs; partly masked rows ignore the -inf keys.
  const int64_t b = 2, sq = 3, sk = 4, h = 2, d = 2;
  Model unfused = build_unfused(b, sq, sk, h, d, d, {b, 1, sq, sk}, 0.5f);
  infer_types(unfused);
  std::vector<float> mask(static_cast<size_t>(b * sq * sk), 0.0f);
  for (int64_t j = 0; j < sk; ++j) mask[static_cast<size_t>(1 * sk + j)] = -kInf;     // b=0, i=1: all keys
  mask[static_cast<size_t>(sq * sk + 2 * sk + 3)] = -kInf;                           // b=1, i=2: one key
  mask[static_cast<size_t>(0)] = -3.4028235e38f;                                     // finfo.min
  const auto inputs = random_inputs(unfused, 21, {{"mask", Tensor::from_vector<float>({b, 1, sq, sk}, mask)}});
  const Model fused = build_fused(unfused, h, 0.5f);
  expect_close(unfused, fused, inputs, kF32Tol);
  auto y = reference::Executor(fused).run(inputs).at("y").to_double_vector();
  EXPECT_TRUE(std::isnan(y[static_cast<size_t>(1 * h * d)]));  // b=0, i=1
  EXPECT_FALSE(std::isnan(y[0]));
}

// ---- fuse-elementwise-chains

namespace {

Model chain_model(std::vector<Node> nodes, std::vector<std::string> outputs, Shape x_shape = {Dim(2), Dim(3)}) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, std::move(x_shape)};
  m.graph.nodes = std::move(nodes);
  m.graph.outputs = std::move(outputs);
  return m;
}

std::vector<std::string> chain_ops(const Model& m) {
  const Node* n = find_op(m, "ElementwiseChain");
  return n ? n->attr("ops")->strings : std::vector<std::string>{};
}

// Fuses, checks the golden summary and exact equality with the unfused graph.
void check_chain(Model m, const std::string& golden, const std::vector<std::string>& ops, int rewrites = 1,
                 reference::TensorMap inputs = {}) {
  infer_types(m);
  const Model before = m;
  EXPECT_EQ(run_chains(m), rewrites);
  EXPECT_EQ(summary(m), golden);
  if (!ops.empty()) {
    EXPECT_EQ(chain_ops(m), ops);
  }
  expect_close(before, m, random_inputs(before, 31, std::move(inputs)), -1);  // the math is unchanged
}

void expect_chains_unchanged(Model m) {
  infer_types(m);
  const std::string golden = summary(m);
  EXPECT_EQ(run_chains(m), 0);
  EXPECT_EQ(summary(m), golden);
}

}  // namespace

TEST(FuseElementwiseChains, BinaryOperandsAndReversedOrder) {
  Model m = chain_model({node("Add", {"x", "c1"}, "a"), node("Relu", {"a"}, "b"), node("Mul", {"y", "b"}, "c"),
                         node("Sigmoid", {"c"}, "d"), node("Sub", {"c2", "d"}, "e"), node("Div", {"c1", "e"}, "f")},
                        {"f"});
  m.graph.inputs.push_back("y");
  m.graph.types["y"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  m.graph.initializers["c1"] = Tensor::from_vector<float>({3}, {0.5f, -1, 2});
  m.graph.initializers["c2"] = Tensor::scalar<float>(3);
  check_chain(m, "kiln::ElementwiseChain(x,c1,y,c2)->f; out: f",
              {"Add:1", "Relu", "Mul:2", "Sigmoid", "Sub:3:r", "Div:1:r"});
  infer_types(m);
  run_chains(m);
  const Node* f = find_op(m, "ElementwiseChain");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->name, "a");  // the first original's name
  EXPECT_EQ(f->attr("fused_ops")->strings,
            (std::vector<std::string>{"Add:a", "Relu:b", "Mul:c", "Sigmoid:d", "Sub:e", "Div:f"}));
  EXPECT_EQ(f->attr("params"), nullptr);
  EXPECT_EQ(m.opsets.at("kiln"), 1);
}

TEST(FuseElementwiseChains, MainTensorReusedGeluAndSwish) {
  // Erf GELU: x * (erf(x / sqrt2) + 1) * 0.5; the main tensor x is also an operand ("Mul:0").
  Model gelu = chain_model({node("Div", {"x", "sqrt2"}, "a"), node("Erf", {"a"}, "b"), node("Add", {"b", "one"}, "c"),
                            node("Mul", {"x", "c"}, "d"), node("Mul", {"d", "half"}, "y")},
                           {"y"}, {Dim::sym("batch"), Dim(3)});
  gelu.graph.initializers["sqrt2"] = Tensor::scalar<float>(1.4142135f);
  gelu.graph.initializers["one"] = Tensor::scalar<float>(1);
  gelu.graph.initializers["half"] = Tensor::scalar<float>(0.5f);
  gelu.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(3)}};
  infer_types(gelu);
  Model g2 = gelu;
  EXPECT_EQ(run_chains(g2), 1);
  EXPECT_EQ(summary(g2), "kiln::ElementwiseChain(x,sqrt2,one,half)->y; out: y");
  EXPECT_EQ(chain_ops(g2), (std::vector<std::string>{"Div:1", "Erf", "Add:2", "Mul:0", "Mul:3"}));
  EXPECT_EQ(shape_to_string(*g2.graph.type_of("y")->shape), "[batch,3]");
  std::mt19937 rng(3);
  expect_close(gelu, g2, {{"x", random_tensor(rng, {4, 3})}}, -1);

  // Swish and x*x (both operands the main tensor).
  check_chain(chain_model({node("Sigmoid", {"x"}, "s"), node("Mul", {"x", "s"}, "y")}, {"y"}),
              "kiln::ElementwiseChain(x)->y; out: y", {"Sigmoid", "Mul:0"});
  check_chain(chain_model({node("Mul", {"x", "x"}, "sq"), node("Tanh", {"sq"}, "y")}, {"y"}),
              "kiln::ElementwiseChain(x)->y; out: y", {"Mul:0", "Tanh"});
}

TEST(FuseElementwiseChains, EveryOpWithParams) {
  Model m = chain_model({node("Abs", {"x"}, "a"), node("Add", {"a", "one"}, "b"), node("Sqrt", {"b"}, "c"),
                         node("Log", {"c"}, "d"), node("Exp", {"d"}, "e"), node("Tanh", {"e"}, "f"),
                         node("LeakyRelu", {"f"}, "g", {{"alpha", Attribute::of_float(0.2f)}}), node("Neg", {"g"}, "h"),
                         node("Clip", {"h", "lo", "hi"}, "i"), node("Reciprocal", {"i"}, "j"),
                         node("Pow", {"j", "two"}, "k"), node("Div", {"three", "k"}, "l"), node("Erf", {"l"}, "n"),
                         node("Clip", {"n", "", "hi2"}, "o"), node("Sub", {"one", "o"}, "p"), node("Relu", {"p"}, "q"),
                         node("Sigmoid", {"q"}, "y")},
                        {"y"});
  m.graph.initializers["one"] = Tensor::scalar<float>(1);
  m.graph.initializers["two"] = Tensor::scalar<float>(2);
  m.graph.initializers["three"] = Tensor::scalar<float>(3);
  m.graph.initializers["lo"] = Tensor::scalar<float>(-0.9f);
  m.graph.initializers["hi"] = Tensor::scalar<float>(-0.1f);
  m.graph.initializers["hi2"] = Tensor::scalar<float>(0.99f);
  check_chain(m, "kiln::ElementwiseChain(x,one,two,three)->y; out: y",
              {"Abs", "Add:1", "Sqrt", "Log", "Exp", "Tanh", "LeakyRelu", "Neg", "Clip", "Reciprocal", "Pow:2",
               "Div:3:r", "Erf", "Clip", "Sub:1:r", "Relu", "Sigmoid"});
  infer_types(m);
  run_chains(m);
  EXPECT_EQ(find_op(m, "ElementwiseChain")->attr("params")->floats,
            (std::vector<float>{0.2f, -0.9f, -0.1f, -kInf, 0.99f}));
}

TEST(FuseElementwiseChains, MaximalChainsSplitAtSharedValues) {
  // b feeds two nodes: Relu->Exp ends there; Neg->Add starts from b with d on the side.
  check_chain(chain_model({node("Relu", {"x"}, "a"), node("Exp", {"a"}, "b"), node("Neg", {"b"}, "c"),
                           node("Abs", {"b"}, "d"), node("Add", {"c", "d"}, "y")},
                          {"y"}),
              "kiln::ElementwiseChain(x)->b; Abs(b)->d; kiln::ElementwiseChain(b,d)->y; out: y", {}, 2);
  // A broadcast operand on the side, then the chain continues: the main tensor is y, not x.
  Model side = chain_model({node("Relu", {"x"}, "a"), node("Add", {"a", "big"}, "b"), node("Exp", {"b"}, "z")}, {"z"},
                           {Dim(3)});
  side.graph.inputs.push_back("big");
  side.graph.types["big"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  check_chain(side, "Relu(x)->a; kiln::ElementwiseChain(big,a)->z; out: z", {"Add:1", "Exp"});
}

TEST(FuseElementwiseChains, GuardsKeepGraphsUnchanged) {
  expect_chains_unchanged(chain_model({node("Relu", {"x"}, "y")}, {"y"}));  // a single op
  // An intermediate that is a graph output.
  expect_chains_unchanged(chain_model({node("Relu", {"x"}, "a"), node("Exp", {"a"}, "y")}, {"a", "y"}));
  // Integer tensors.
  Model ints = chain_model({node("Add", {"x", "ci"}, "a"), node("Mul", {"a", "ci"}, "y")}, {"y"});
  ints.graph.types["x"] = TensorType{DType::kI32, Shape{Dim(2), Dim(3)}};
  ints.graph.initializers["ci"] = Tensor::scalar<int32_t>(3);
  expect_chains_unchanged(ints);
  // Clip with a bound that is not a constant.
  Model clip = chain_model({node("Relu", {"x"}, "a"), node("Clip", {"a", "lo"}, "y")}, {"y"});
  clip.graph.inputs.push_back("lo");
  clip.graph.types["lo"] = TensorType{DType::kF32, Shape{}};
  expect_chains_unchanged(clip);
  // The other operand broadcasts the main tensor up ([3] + [2,3]) and nothing follows.
  Model grow = chain_model({node("Relu", {"x"}, "a"), node("Add", {"a", "big"}, "y")}, {"y"}, {Dim(3)});
  grow.graph.inputs.push_back("big");
  grow.graph.types["big"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  expect_chains_unchanged(grow);
  // Pow with an integer exponent, Where, and shapes that cannot be proven equal.
  Model pow = chain_model({node("Relu", {"x"}, "a"), node("Pow", {"a", "e"}, "y")}, {"y"});
  pow.graph.initializers["e"] = Tensor::scalar<int64_t>(2);
  expect_chains_unchanged(pow);
  Model where = chain_model({node("Relu", {"x"}, "a"), node("Where", {"c", "a", "x"}, "y")}, {"y"});
  where.graph.initializers["c"] = Tensor::scalar<bool>(true);
  expect_chains_unchanged(where);
  Model unknown = chain_model({node("Relu", {"x"}, "a"), node("Add", {"a", "w"}, "y")}, {"y"}, {Dim(), Dim(3)});
  unknown.graph.inputs.push_back("w");
  unknown.graph.types["w"] = TensorType{DType::kF32, Shape{Dim(), Dim(3)}};
  expect_chains_unchanged(unknown);
}

TEST(FuseElementwiseChainsOp, SchemaAndKernel) {
  auto one_node = [](std::vector<std::string> ops, std::vector<float> params, Shape e_shape) {
    Model m;
    m.opsets[""] = 17;
    m.opsets["kiln"] = 1;
    m.graph.inputs = {"x", "e"};
    m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(3)}};
    m.graph.types["e"] = TensorType{DType::kF32, std::move(e_shape)};
    Node n{"chain", "ElementwiseChain", "kiln", {"x", "e"}, {"y"}, {{"ops", strings_attr(std::move(ops))}}};
    if (!params.empty()) n.attrs["params"] = Attribute::of_floats(std::move(params));
    m.graph.nodes.push_back(n);
    m.graph.outputs = {"y"};
    return m;
  };
  Model ok = one_node({"Sub:1:r", "Mul:0", "LeakyRelu"}, {0.5f}, Shape{Dim(3)});
  infer_types(ok);
  EXPECT_EQ(shape_to_string(*ok.graph.type_of("y")->shape), "[batch,3]");
  // (e - x) * x, then LeakyRelu(0.5).
  ok.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(1), Dim(3)}};
  ok.graph.types.erase("y");
  auto y = reference::Executor(ok)
               .run({{"x", Tensor::from_vector<float>({1, 3}, {1, 2, 3})},
                     {"e", Tensor::from_vector<float>({3}, {10, 1, 2})}})
               .at("y")
               .to_double_vector();
  EXPECT_EQ(y, (std::vector<double>{9, -1, -1.5}));

  for (Model bad : {one_node({"Foo"}, {}, Shape{Dim(3)}), one_node({"Add"}, {}, Shape{Dim(3)}),
                    one_node({"Add:2"}, {}, Shape{Dim(3)}), one_node({"Add:1:x"}, {}, Shape{Dim(3)}),
                    one_node({"Relu:1"}, {}, Shape{Dim(3)}), one_node({"LeakyRelu"}, {}, Shape{Dim(3)}),
                    one_node({"Relu"}, {1.0f}, Shape{Dim(3)}), one_node({"Add:1"}, {}, Shape{Dim(2), Dim(2), Dim(3)}),
                    one_node({"Add:1"}, {}, Shape{Dim(4)})})
    EXPECT_THROW(infer_types(bad), Error) << summary(bad);
}

// ---- Exported models: only these passes (plus dead-node elimination), before/after outputs.

namespace {

fs::path model_dir() { return kiln_test::model_dir(); }

// Folds nodes whose inputs are all constant (and Shape of statically shaped values) into
// initializers: a stand-in for shape-subgraph folding, so Reshape targets become constants and
// the Shape nodes stop counting as extra consumers.
void fold_constants(Model& m) {
  InferOptions opt;
  opt.evaluator = reference::constant_evaluator();
  infer_types(m, opt);
  Graph& g = m.graph;
  std::vector<Node> kept;
  for (Node& n : g.nodes) {
    std::vector<Tensor> outs;
    const TensorType* in0 = n.inputs.empty() ? nullptr : g.type_of(n.inputs[0]);
    if (n.domain.empty() && n.op_type == "Shape" && in0 && in0->shape && shape_is_static(*in0->shape)) {
      std::vector<int64_t> dims = static_dims(*in0->shape);
      const int64_t r = static_cast<int64_t>(dims.size());
      int64_t start = n.attr("start") ? n.attr("start")->i : 0, end = n.attr("end") ? n.attr("end")->i : r;
      start = std::clamp<int64_t>(start < 0 ? start + r : start, 0, r);
      end = std::clamp<int64_t>(end < 0 ? end + r : end, start, r);
      std::vector<int64_t> v(dims.begin() + start, dims.begin() + end);
      outs.push_back(Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
    } else {
      bool all_constant = n.op_type != "RandomNormal" && n.op_type != "RandomUniform";
      std::vector<const Tensor*> ins;
      for (const auto& in : n.inputs) {
        if (in.empty()) {
          ins.push_back(nullptr);
          continue;
        }
        auto it = g.initializers.find(in);
        all_constant = all_constant && it != g.initializers.end();
        ins.push_back(it == g.initializers.end() ? nullptr : &it->second);
      }
      if (all_constant) {
        const int64_t opset = n.domain.empty() ? m.default_opset() : m.opsets.at(n.domain);
        if (const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type, opset))
          outs = reference::evaluate_node(n, *schema, opset, ins);
      }
    }
    bool small = !outs.empty() && outs.size() == n.outputs.size();
    for (const Tensor& t : outs) small = small && t.defined() && t.numel() <= (1 << 20);
    if (!small) {
      kept.push_back(std::move(n));
      continue;
    }
    for (size_t i = 0; i < outs.size(); ++i) g.initializers[n.outputs[i]] = outs[i];
  }
  g.nodes = std::move(kept);
  infer_types(m, opt);
}

double normalized_error(const Tensor& got, const Tensor& want) {
  const auto a = got.to_double_vector(), b = want.to_double_vector();
  double diff = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(a[i] - b[i]));
    ref = std::max(ref, std::fabs(b[i]));
  }
  return diff / std::max(ref, 1e-30);
}

}  // namespace

class FuseAttentionModels : public ::testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(FuseAttentionModels, FusesAndMatches) {
  const auto& [name, expected_attention] = GetParam();
  const fs::path model_path = model_dir() / (name + ".onnx"), io_path = model_dir() / (name + ".io.npz");
  if (!fs::exists(model_path) || !fs::exists(io_path)) GTEST_SKIP() << model_path << " not exported";
  const auto t0 = std::chrono::steady_clock::now();
  Model m = load_onnx(model_path);
  {
    // As exported (symbolic shapes, shape subgraphs unfolded), for the record: Shape nodes read
    // the attention intermediates, so the single-consumer guard holds fusion back.
    Model raw = m;
    InferOptions opt;
    opt.evaluator = reference::constant_evaluator();
    infer_types(raw, opt);
    PassManager pm;
    pm.add(make_fuse_attention());
    PassContext ctx;
    std::cout << name << ": as exported, fuse-attention makes " << pm.run(raw, ctx) << " rewrites\n";
  }
  reference::TensorMap inputs;
  std::map<std::string, Tensor> expected;
  for (auto& [key, t] : read_npz(io_path)) {
    if (std::find(m.graph.inputs.begin(), m.graph.inputs.end(), key) != m.graph.inputs.end()) {
      // Concrete input shapes make the Reshape targets constants (shape folding's job later).
      m.graph.types[key] = TensorType{t.dtype(), shape_from_dims(t.shape())};
      inputs[key] = t;
    } else {
      expected[key] = t;
    }
  }
  ASSERT_EQ(inputs.size(), m.graph.inputs.size());
  fold_constants(m);
  const Model before = m;

  PassManager pm;
  pm.add(make_fuse_attention());
  pm.add(make_fuse_elementwise_chains());
  pm.add(make_dead_node_elimination());
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  pm.run(m, ctx);
  for (const auto& line : ctx.log) std::cout << name << ": " << line << "\n";
  const int attention = count_op(m, "Attention"), chains = count_op(m, "ElementwiseChain");
  std::cout << name << ": " << before.graph.nodes.size() << " -> " << m.graph.nodes.size() << " nodes, " << attention
            << " kiln::Attention, " << chains << " kiln::ElementwiseChain\n";
  EXPECT_EQ(attention, expected_attention);

  const auto out_before = reference::Executor(before).run(inputs);
  const auto out_after = reference::Executor(m).run(inputs);
  for (const auto& out : m.graph.outputs) {
    const double err = normalized_error(out_after.at(out), out_before.at(out));
    std::cout << name << " output " << out << ": before/after normalized error " << err;
    if (expected.count(out))
      std::cout << ", after vs PyTorch " << normalized_error(out_after.at(out), expected.at(out));
    std::cout << "\n";
    EXPECT_LE(err, 1e-4) << out;
  }
  std::cout << name << ": " << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
}

INSTANTIATE_TEST_SUITE_P(FuseAttentionModels, FuseAttentionModels,
                         ::testing::Values(std::make_pair("bert", 12), std::make_pair("gpt", 4),
                                           std::make_pair("vit_b16_2layer", 2), std::make_pair("efficientnet_b0", 0),
                                           std::make_pair("yolov8_tiny", 0)),
                         [](const auto& info) { return info.param.first; });
