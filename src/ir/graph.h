// The graph IR: values are named (as in ONNX), nodes refer to them by name, and the graph keeps
// node order topological. Types carry symbolic dimensions such as "batch" and "seq".
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "ir/dtype.h"
#include "ir/tensor.h"

namespace kiln {

// One dimension: a known size, a named symbol ("batch"), or unknown (no value, no name).
struct Dim {
  int64_t value = -1;
  std::string symbol;

  Dim() = default;
  Dim(int64_t v) : value(v) {}  // NOLINT(google-explicit-constructor)
  static Dim sym(std::string name) { Dim d; d.symbol = std::move(name); return d; }
  bool known() const { return value >= 0; }
  bool operator==(const Dim& o) const { return value == o.value && symbol == o.symbol; }
  std::string to_string() const;
};
using Shape = std::vector<Dim>;

std::string shape_to_string(const Shape& shape);  // "[batch,3,224,224]"
Shape shape_from_dims(const std::vector<int64_t>& dims);
bool shape_is_static(const Shape& shape);
std::vector<int64_t> static_dims(const Shape& shape);  // throws if not static

// dtype plus shape; shape == nullopt means even the rank is unknown.
struct TensorType {
  DType dtype = DType::kUndefined;
  std::optional<Shape> shape;

  bool has_rank() const { return shape.has_value(); }
  std::string to_string() const;
};

struct Graph;

enum class AttrKind : uint8_t { kFloat, kInt, kString, kTensor, kGraph, kFloats, kInts, kStrings, kTensors, kGraphs };
const char* attr_kind_name(AttrKind k);

struct Attribute {
  AttrKind kind = AttrKind::kInt;
  float f = 0;
  int64_t i = 0;
  std::string s;
  Tensor t;
  std::shared_ptr<Graph> g;
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  std::vector<Tensor> tensors;
  std::vector<std::shared_ptr<Graph>> graphs;

  static Attribute of_int(int64_t v) { Attribute a; a.kind = AttrKind::kInt; a.i = v; return a; }
  static Attribute of_float(float v) { Attribute a; a.kind = AttrKind::kFloat; a.f = v; return a; }
  static Attribute of_string(std::string v) { Attribute a; a.kind = AttrKind::kString; a.s = std::move(v); return a; }
  static Attribute of_ints(std::vector<int64_t> v) { Attribute a; a.kind = AttrKind::kInts; a.ints = std::move(v); return a; }
  static Attribute of_floats(std::vector<float> v) { Attribute a; a.kind = AttrKind::kFloats; a.floats = std::move(v); return a; }
  static Attribute of_tensor(Tensor v) { Attribute a; a.kind = AttrKind::kTensor; a.t = std::move(v); return a; }
  std::string to_string() const;
};

struct Node {
  std::string name;
  std::string op_type;
  std::string domain;                 // "" is the default ONNX domain
  std::vector<std::string> inputs;    // "" marks an omitted optional input
  std::vector<std::string> outputs;   // "" marks an omitted optional output
  std::map<std::string, Attribute> attrs;

  const Attribute* attr(const std::string& key) const {
    auto it = attrs.find(key);
    return it == attrs.end() ? nullptr : &it->second;
  }
  // "Conv 'conv1'" or "Conv #12" when unnamed: used in error messages.
  std::string describe() const;
};

struct Graph {
  std::string name;
  std::vector<std::string> inputs;    // graph inputs that are not initializers, in order
  std::vector<std::string> outputs;
  std::vector<Node> nodes;            // topologically ordered
  std::unordered_map<std::string, Tensor> initializers;
  std::unordered_map<std::string, TensorType> types;  // every value with a known type
  std::unordered_map<std::string, std::string> doc;   // optional docstrings by value name

  const TensorType* type_of(const std::string& value) const {
    auto it = types.find(value);
    return it == types.end() ? nullptr : &it->second;
  }
  bool is_initializer(const std::string& value) const { return initializers.count(value) != 0; }
  // Index of the node producing `value`, or -1 for graph inputs, initializers and unknowns.
  int producer_index(const std::string& value) const;
};

// A model is a graph plus the opsets it was written against.
struct Model {
  Graph graph;
  std::map<std::string, int64_t> opsets;  // domain -> version; "" is ai.onnx
  int64_t ir_version = 0;
  std::string producer;
  std::string source_path;                 // the file it was loaded from, for error messages

  int64_t default_opset() const {
    auto it = opsets.find("");
    if (it != opsets.end()) return it->second;
    it = opsets.find("ai.onnx");
    return it == opsets.end() ? 0 : it->second;
  }
};

// Normalises "ai.onnx" to "", the default domain.
inline std::string canonical_domain(const std::string& domain) { return domain == "ai.onnx" ? std::string() : domain; }

// Orders nodes so every value is produced before use. Throws kInvalidModel on a cycle or an
// input that nothing produces, naming the node.
void topological_sort(Graph& graph);

}  // namespace kiln
