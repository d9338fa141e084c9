// Declarative operator entries: one OpSchema per (domain, op, opset range) with its attributes
// and defaults, its arity, and its type/shape inference. Kernels live in the backends.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace kiln {

struct AttrSpec {
  std::string name;
  AttrKind kind;
  std::optional<Attribute> default_value;  // nullopt and !required: optional without default
  bool required = false;
};

class InferContext;
using InferFn = std::function<void(InferContext&)>;

struct OpSchema {
  std::string domain;        // "" for ai.onnx
  std::string name;
  int since_version = 1;     // first opset this entry covers
  int until_version = 1000;  // last opset this entry covers (inclusive)
  int min_inputs = 1, max_inputs = 1;    // max_inputs = kVariadic for variadic
  int min_outputs = 1, max_outputs = 1;
  std::vector<AttrSpec> attrs;
  InferFn infer;             // may be empty: outputs then keep whatever type the model declared
  std::string doc;           // one line: what the op computes

  static constexpr int kVariadic = 1 << 20;
  const AttrSpec* find_attr(const std::string& n) const {
    for (const auto& a : attrs)
      if (a.name == n) return &a;
    return nullptr;
  }
};

// Fluent helpers that keep the schema tables short.
inline AttrSpec attr_int(std::string n, int64_t def) { return {std::move(n), AttrKind::kInt, Attribute::of_int(def)}; }
inline AttrSpec attr_float(std::string n, float def) { return {std::move(n), AttrKind::kFloat, Attribute::of_float(def)}; }
inline AttrSpec attr_string(std::string n, std::string def) { return {std::move(n), AttrKind::kString, Attribute::of_string(std::move(def))}; }
inline AttrSpec attr_ints(std::string n) { return {std::move(n), AttrKind::kInts, std::nullopt}; }
inline AttrSpec attr_ints(std::string n, std::vector<int64_t> def) { return {std::move(n), AttrKind::kInts, Attribute::of_ints(std::move(def))}; }
inline AttrSpec attr_floats(std::string n) { return {std::move(n), AttrKind::kFloats, std::nullopt}; }
inline AttrSpec attr_optional(std::string n, AttrKind k) { return {std::move(n), k, std::nullopt}; }
inline AttrSpec attr_required(std::string n, AttrKind k) { return {std::move(n), k, std::nullopt, true}; }

class OpRegistry {
 public:
  void add(OpSchema schema);
  // The entry covering `opset` for (domain, op), or nullptr.
  const OpSchema* find(const std::string& domain, const std::string& op, int64_t opset) const;
  // Any entry for (domain, op), whatever the opset: used to tell "unknown op" from "bad opset".
  std::vector<const OpSchema*> versions(const std::string& domain, const std::string& op) const;
  std::vector<std::string> op_names() const;  // "Add", "com.microsoft::Gelu", ...

  // All ops Kiln knows, registered once.
  static const OpRegistry& global();
  // The same registry, for plugins (src/plugins) to add ops at load time, before any use.
  static OpRegistry& mutable_global();

 private:
  std::map<std::pair<std::string, std::string>, std::vector<OpSchema>> entries_;
};


// Read-only view of a node with its schema: attribute access with schema defaults, and errors
// that name the node, op and opset.
class NodeView {
 public:
  NodeView(const Node& node, const OpSchema& schema, int64_t opset) : node_(node), schema_(schema), opset_(opset) {}
  const Node& node() const { return node_; }
  const OpSchema& schema() const { return schema_; }
  int64_t opset() const { return opset_; }

  bool has_attr(const std::string& n) const { return node_.attr(n) != nullptr; }
  int64_t attr_int(const std::string& n) const;
  float attr_float(const std::string& n) const;
  const std::string& attr_string(const std::string& n) const;
  const std::vector<int64_t>& attr_ints(const std::string& n) const;  // empty if absent, no default
  const std::vector<float>& attr_floats(const std::string& n) const;
  const std::vector<std::string>& attr_strings(const std::string& n) const;
  const Tensor& attr_tensor(const std::string& n) const;               // throws if absent
  // Integer attribute that may be absent without default.
  std::optional<int64_t> attr_int_opt(const std::string& n) const;

  // Throws kInvalidModel: "<op> node 'name' (opset N): <message>".
  [[noreturn]] void fail(const std::string& message) const;
  // Throws kUnsupported with the same context.
  [[noreturn]] void unsupported(const std::string& message) const;

 private:
  const Attribute& lookup(const std::string& n, AttrKind kind) const;
  const Node& node_;
  const OpSchema& schema_;
  int64_t opset_;
};

// Passed to OpSchema::infer. Inputs that are absent ("" or beyond the node's list) report
// has_input() == false. input_value() is the constant value when it is known (an initializer or
// a folded value), else nullptr.
class InferContext : public NodeView {
 public:
  InferContext(const Node& node, const OpSchema& schema, int64_t opset, std::vector<const TensorType*> in_types,
               std::vector<const Tensor*> in_values)
      : NodeView(node, schema, opset), in_types_(std::move(in_types)), in_values_(std::move(in_values)),
        out_types_(node.outputs.size()) {}

  size_t num_inputs() const { return in_types_.size(); }
  size_t num_outputs() const { return out_types_.size(); }
  bool has_input(size_t i) const { return i < in_types_.size() && in_types_[i] != nullptr; }
  bool has_output(size_t i) const { return i < node().outputs.size() && !node().outputs[i].empty(); }
  const TensorType& input_type(size_t i) const;  // throws if absent
  const Tensor* input_value(size_t i) const { return i < in_values_.size() ? in_values_[i] : nullptr; }

  void set_output(size_t i, TensorType t);
  void set_output(size_t i, DType dt, Shape shape) { set_output(i, TensorType{dt, std::move(shape)}); }
  void set_output_unknown_shape(size_t i, DType dt) { set_output(i, TensorType{dt, std::nullopt}); }
  const std::vector<std::optional<TensorType>>& outputs() const { return out_types_; }

 private:
  std::vector<const TensorType*> in_types_;
  std::vector<const Tensor*> in_values_;
  std::vector<std::optional<TensorType>> out_types_;
};

// ---- Shape helpers shared by inference functions (and usable by kernels with static dims).

// Numpy-style multidirectional broadcast. Throws via ctx.fail() on mismatch.
Shape broadcast_shapes(const NodeView& ctx, const std::vector<Shape>& shapes);
std::vector<int64_t> broadcast_dims(const NodeView& ctx, const std::vector<std::vector<int64_t>>& shapes);
// Normalises a possibly negative axis into [0, rank); fails with the node's context if out of range.
int64_t normalize_axis(const NodeView& ctx, int64_t axis, int64_t rank);
// Dim arithmetic that keeps symbols where the result is unknown.
Dim dim_mul(const Dim& a, const Dim& b);

// Registration list: each group registers its schemas here (src/ops/<group>.cpp).
void register_elementwise_schemas(OpRegistry& r);
void register_math_schemas(OpRegistry& r);      // matmul, conv, norms, pooling
void register_tensor_schemas(OpRegistry& r);    // shape and data movement, quantization, misc
void register_reduce_schemas(OpRegistry& r);
void register_rnn_schemas(OpRegistry& r);
void register_extra_schemas(OpRegistry& r);
// Fused ops of the "kiln" domain, introduced by the optimization passes.
void register_fused_conv_schemas(OpRegistry& r);
void register_fused_matmul_schemas(OpRegistry& r);
void register_fused_attention_schemas(OpRegistry& r);
void register_quantized_schemas(OpRegistry& r);         // kiln::QConv, kiln::QMatMul

}  // namespace kiln
