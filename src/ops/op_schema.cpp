// The op registry, attribute access with defaults, and shared shape helpers.
#include "ops/op_schema.h"

#include <algorithm>

namespace kiln {


void OpRegistry::add(OpSchema schema) {
  schema.domain = canonical_domain(schema.domain);
  auto& list = entries_[{schema.domain, schema.name}];
  for (const auto& s : list)
    if (!(schema.until_version < s.since_version || schema.since_version > s.until_version))
      throw Error(ErrorCode::kInternal, "overlapping schema versions for " + schema.name);
  list.push_back(std::move(schema));
}

const OpSchema* OpRegistry::find(const std::string& domain, const std::string& op, int64_t opset) const {
  auto it = entries_.find({canonical_domain(domain), op});
  if (it == entries_.end()) return nullptr;
  for (const auto& s : it->second)
    if (opset >= s.since_version && opset <= s.until_version) return &s;
  return nullptr;
}

std::vector<const OpSchema*> OpRegistry::versions(const std::string& domain, const std::string& op) const {
  std::vector<const OpSchema*> out;
  auto it = entries_.find({canonical_domain(domain), op});
  if (it != entries_.end())
    for (const auto& s : it->second) out.push_back(&s);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->since_version < b->since_version; });
  return out;
}

std::vector<std::string> OpRegistry::op_names() const {
  std::vector<std::string> out;
  for (const auto& [key, list] : entries_) out.push_back(key.first.empty() ? key.second : key.first + "::" + key.second);
  return out;
}

const OpRegistry& OpRegistry::global() { return mutable_global(); }

OpRegistry& OpRegistry::mutable_global() {
  static OpRegistry registry = [] {
    OpRegistry r;
    register_elementwise_schemas(r);
    register_math_schemas(r);
    register_tensor_schemas(r);
    register_reduce_schemas(r);
    register_rnn_schemas(r);
    register_extra_schemas(r);
    register_fused_conv_schemas(r);
    register_fused_matmul_schemas(r);
    register_fused_attention_schemas(r);
    register_quantized_schemas(r);
    return r;
  }();
  return registry;
}

// ---- NodeView

void NodeView::fail(const std::string& message) const {
  throw Error(ErrorCode::kInvalidModel, node_.describe() + " (opset " + std::to_string(opset_) + "): " + message);
}
void NodeView::unsupported(const std::string& message) const {
  throw Error(ErrorCode::kUnsupported, node_.describe() + " (opset " + std::to_string(opset_) + "): " + message);
}

const Attribute& NodeView::lookup(const std::string& n, AttrKind kind) const {
  const Attribute* a = node_.attr(n);
  if (!a) {
    const AttrSpec* spec = schema_.find_attr(n);
    if (!spec) throw Error(ErrorCode::kInternal, "schema of " + schema_.name + " has no attribute '" + n + "'");
    if (!spec->default_value) fail("missing attribute '" + n + "'");
    a = &*spec->default_value;
  }
  if (a->kind != kind)
    fail("attribute '" + n + "' should be of type " + attr_kind_name(kind) + ", got " + attr_kind_name(a->kind));
  return *a;
}

int64_t NodeView::attr_int(const std::string& n) const { return lookup(n, AttrKind::kInt).i; }
float NodeView::attr_float(const std::string& n) const { return lookup(n, AttrKind::kFloat).f; }
const std::string& NodeView::attr_string(const std::string& n) const { return lookup(n, AttrKind::kString).s; }
const Tensor& NodeView::attr_tensor(const std::string& n) const { return lookup(n, AttrKind::kTensor).t; }

const std::vector<int64_t>& NodeView::attr_ints(const std::string& n) const {
  static const std::vector<int64_t> kEmpty;
  const AttrSpec* spec = schema_.find_attr(n);
  if (!node_.attr(n) && spec && !spec->default_value) return kEmpty;
  return lookup(n, AttrKind::kInts).ints;
}
const std::vector<float>& NodeView::attr_floats(const std::string& n) const {
  static const std::vector<float> kEmpty;
  const AttrSpec* spec = schema_.find_attr(n);
  if (!node_.attr(n) && spec && !spec->default_value) return kEmpty;
  return lookup(n, AttrKind::kFloats).floats;
}
const std::vector<std::string>& NodeView::attr_strings(const std::string& n) const {
  static const std::vector<std::string> kEmpty;
  const AttrSpec* spec = schema_.find_attr(n);
  if (!node_.attr(n) && spec && !spec->default_value) return kEmpty;
  return lookup(n, AttrKind::kStrings).strings;
}
std::optional<int64_t> NodeView::attr_int_opt(const std::string& n) const {
  const Attribute* a = node_.attr(n);
  if (!a) {
    const AttrSpec* spec = schema_.find_attr(n);
    if (spec && spec->default_value) return spec->default_value->i;
    return std::nullopt;
  }
  return lookup(n, AttrKind::kInt).i;
}

// ---- InferContext

const TensorType& InferContext::input_type(size_t i) const {
  if (!has_input(i)) fail("input " + std::to_string(i) + " is required");
  return *in_types_[i];
}

void InferContext::set_output(size_t i, TensorType t) {
  if (i >= out_types_.size()) return;  // an optional output the node does not declare
  out_types_[i] = std::move(t);
}

// ---- Shape helpers

Shape broadcast_shapes(const NodeView& ctx, const std::vector<Shape>& shapes) {
  size_t rank = 0;
  for (const auto& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, Dim(1));
  for (size_t k = 0; k < rank; ++k) {
    Dim result(1);
    bool have_unknown = false;
    Dim unknown;
    for (const auto& s : shapes) {
      if (s.size() + k < rank) continue;
      const Dim& d = s[s.size() - rank + k];
      if (d.known()) {
        if (d.value == 1) continue;
        if (result.value != 1 && result.value != d.value)
          ctx.fail("cannot broadcast shapes: dimension " + std::to_string(d.value) + " against " +
                   std::to_string(result.value));
        result = d;
      } else {
        if (!have_unknown || (unknown.symbol != d.symbol)) {
          if (have_unknown) unknown = Dim();  // two different symbols: result unknown
          else unknown = d;
        }
        have_unknown = true;
      }
    }
    if (result.value != 1 || !have_unknown) out[k] = result;
    else out[k] = unknown;  // all known dims were 1: the symbolic one decides
  }
  return out;
}

std::vector<int64_t> broadcast_dims(const NodeView& ctx, const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<Shape> s;
  for (const auto& d : shapes) s.push_back(shape_from_dims(d));
  return static_dims(broadcast_shapes(ctx, s));
}

int64_t normalize_axis(const NodeView& ctx, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank)
    ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

Dim dim_mul(const Dim& a, const Dim& b) {
  if (a.known() && b.known()) return Dim(a.value * b.value);
  if (a.known() && a.value == 1) return b;
  if (b.known() && b.value == 1) return a;
  if ((a.known() && a.value == 0) || (b.known() && b.value == 0)) return Dim(0);
  return Dim();
}

}  // namespace kiln
