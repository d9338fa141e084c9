// Graph helpers: printing of types and attributes, and topological ordering.
#include "ir/graph.h"

#include <functional>
#include <queue>
#include <sstream>
#include <unordered_set>

namespace kiln {

std::string Dim::to_string() const {
  if (known()) return std::to_string(value);
  return symbol.empty() ? "?" : symbol;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += shape[i].to_string();
  }
  return s + "]";
}

Shape shape_from_dims(const std::vector<int64_t>& dims) { return Shape(dims.begin(), dims.end()); }

bool shape_is_static(const Shape& shape) {
  for (const Dim& d : shape)
    if (!d.known()) return false;
  return true;
}

std::vector<int64_t> static_dims(const Shape& shape) {
  std::vector<int64_t> out;
  for (const Dim& d : shape) {
    if (!d.known()) throw Error(ErrorCode::kInvalidArgument, "shape " + shape_to_string(shape) + " is not static");
    out.push_back(d.value);
  }
  return out;
}

std::string TensorType::to_string() const {
  std::string s(dtype_name(dtype));
  return s + (shape ? shape_to_string(*shape) : std::string("[*]"));
}

const char* attr_kind_name(AttrKind k) {
  switch (k) {
    case AttrKind::kFloat: return "float";
    case AttrKind::kInt: return "int";
    case AttrKind::kString: return "string";
    case AttrKind::kTensor: return "tensor";
    case AttrKind::kGraph: return "graph";
    case AttrKind::kFloats: return "floats";
    case AttrKind::kInts: return "ints";
    case AttrKind::kStrings: return "strings";
    case AttrKind::kTensors: return "tensors";
    case AttrKind::kGraphs: return "graphs";
  }
  return "?";
}

std::string Attribute::to_string() const {
  std::ostringstream os;
  auto list = [&](const auto& v, auto fmt) {
    os << '[';
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) os << ',';
      if (i == 16) { os << "...(" << v.size() << ")"; break; }
      fmt(v[i]);
    }
    os << ']';
  };
  switch (kind) {
    case AttrKind::kFloat: os << f; break;
    case AttrKind::kInt: os << i; break;
    case AttrKind::kString: os << '"' << s << '"'; break;
    case AttrKind::kTensor: os << "tensor<" << dtype_name(t.dtype()) << ' ' << kiln::shape_to_string(t.shape()) << '>'; break;
    case AttrKind::kGraph: os << "graph<" << (g ? g->nodes.size() : 0) << " nodes>"; break;
    case AttrKind::kFloats: list(floats, [&](float x) { os << x; }); break;
    case AttrKind::kInts: list(ints, [&](int64_t x) { os << x; }); break;
    case AttrKind::kStrings: list(strings, [&](const std::string& x) { os << '"' << x << '"'; }); break;
    case AttrKind::kTensors: os << "tensors<" << tensors.size() << '>'; break;
    case AttrKind::kGraphs: os << "graphs<" << graphs.size() << '>'; break;
  }
  return os.str();
}

std::string Node::describe() const {
  std::string op = domain.empty() ? op_type : domain + "::" + op_type;
  if (!name.empty()) return op + " node '" + name + "'";
  std::string first = outputs.empty() ? std::string() : outputs.front();
  return op + " node producing '" + first + "'";
}

int Graph::producer_index(const std::string& value) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].outputs)
      if (o == value) return static_cast<int>(i);
  return -1;
}

void topological_sort(Graph& graph) {
  std::unordered_map<std::string, size_t> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    for (const auto& o : graph.nodes[i].outputs) {
      if (o.empty()) continue;
      if (!producer.emplace(o, i).second)
        throw Error(ErrorCode::kInvalidModel, "value '" + o + "' is produced by more than one node (" +
                                                  graph.nodes[producer[o]].describe() + " and " +
                                                  graph.nodes[i].describe() + ")");
    }
  std::unordered_set<std::string> available(graph.inputs.begin(), graph.inputs.end());
  for (const auto& [name, t] : graph.initializers) available.insert(name);

  const size_t n = graph.nodes.size();
  std::vector<size_t> pending(n, 0);
  std::vector<std::vector<size_t>> users(n);
  for (size_t i = 0; i < n; ++i) {
    std::unordered_set<size_t> deps;
    for (const auto& in : graph.nodes[i].inputs) {
      if (in.empty() || available.count(in)) continue;
      auto it = producer.find(in);
      if (it == producer.end())
        throw Error(ErrorCode::kInvalidModel, graph.nodes[i].describe() + " uses value '" + in +
                                                  "', which is not a graph input, an initializer or any node's output");
      deps.insert(it->second);
    }
    pending[i] = deps.size();
    for (size_t d : deps) users[d].push_back(i);
  }
  // A min-heap keeps the original order wherever the dependencies allow it.
  std::priority_queue<size_t, std::vector<size_t>, std::greater<>> ready;
  for (size_t i = 0; i < n; ++i)
    if (pending[i] == 0) ready.push(i);
  std::vector<size_t> order;
  order.reserve(n);
  while (!ready.empty()) {
    size_t i = ready.top();
    ready.pop();
    order.push_back(i);
    for (size_t u : users[i])
      if (--pending[u] == 0) ready.push(u);
  }
  if (order.size() != n) {
    for (size_t i = 0; i < n; ++i)
      if (pending[i] != 0)
        throw Error(ErrorCode::kInvalidModel, "the graph has a cycle through " + graph.nodes[i].describe());
  }
  std::vector<Node> sorted;
  sorted.reserve(n);
  for (size_t i : order) sorted.push_back(std::move(graph.nodes[i]));
  graph.nodes = std::move(sorted);
}

}  // namespace kiln
