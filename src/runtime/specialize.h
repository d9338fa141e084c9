// Specializing an optimized graph to concrete input shapes, the first step of compiling it for any
// backend (CPU programs, GPU programs): the inputs get the given shapes, every intermediate type is
// re-inferred at them, and every node whose inputs became constant (Shape chains of dynamic models,
// masks built from static sizes) is evaluated by the reference executor into an initializer.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ir/graph.h"

namespace kiln {

struct SpecializedModel {
  Model model;              // concrete types; folded outputs are initializers
  std::set<size_t> folded;  // indices of the nodes folded away (their outputs are constants now)
};

// A type's dims with -1 for every unknown one ({-1} when it has no shape), and whether a dims list
// has no unknown entry.
std::vector<int64_t> concrete_dims(const TensorType* t);
bool is_concrete(const std::vector<int64_t>& dims);

// Throws kInvalidArgument when a shape does not fit its input (rank, a fixed dim, a negative dim),
// names a value that is not an input, or a dynamic input has no shape.
SpecializedModel specialize_model(const Model& model, const std::map<std::string, std::vector<int64_t>>& shapes);

}  // namespace kiln
