// Einsum equations ("ij,jk->ik", "...ii->...i"): parsed once here for both the schema's shape
// inference and the reference kernel.
#pragma once
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ops/op_schema.h"

namespace kiln {

// A parsed term: letters as their char code, kEllipsis where "..." stands.
constexpr int kEllipsis = -1;
using EinsumTerm = std::vector<int>;

struct EinsumSpec {
  std::vector<EinsumTerm> inputs;
  EinsumTerm output;
};

inline EinsumTerm parse_einsum_term(const NodeView& ctx, std::string_view s) {
  EinsumTerm t;
  bool seen_ellipsis = false;
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      t.push_back(c);
      ++i;
    } else if (s.substr(i, 3) == "...") {
      if (seen_ellipsis) ctx.fail("equation term '" + std::string(s) + "' has more than one ellipsis");
      seen_ellipsis = true;
      t.push_back(kEllipsis);
      i += 3;
    } else {
      ctx.fail("invalid character '" + std::string(1, c) + "' in equation term '" + std::string(s) + "'");
    }
  }
  return t;
}

// Parses the equation and derives the implicit output (ellipsis, then labels used once, in ASCII order).
inline EinsumSpec parse_einsum(const NodeView& ctx, size_t num_inputs) {
  std::string eq;
  for (char c : ctx.attr_string("equation"))
    if (c != ' ' && c != '\t') eq += c;
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  EinsumSpec spec;
  size_t start = 0;
  while (true) {
    const size_t comma = lhs.find(',', start);
    spec.inputs.push_back(parse_einsum_term(
        ctx, std::string_view(lhs).substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (spec.inputs.size() != num_inputs)
    ctx.fail("equation '" + ctx.attr_string("equation") + "' has " + std::to_string(spec.inputs.size()) +
             " operand terms but the node has " + std::to_string(num_inputs) + " inputs");
  std::map<int, int> count;
  bool any_ellipsis = false;
  for (const auto& t : spec.inputs)
    for (int l : t) {
      if (l == kEllipsis) any_ellipsis = true;
      else ++count[l];
    }
  if (arrow != std::string::npos) {
    const std::string rhs = eq.substr(arrow + 2);
    if (rhs.find("->") != std::string::npos || rhs.find(',') != std::string::npos)
      ctx.fail("equation '" + ctx.attr_string("equation") + "' has a malformed output term");
    spec.output = parse_einsum_term(ctx, rhs);
    std::set<int> seen;
    for (int l : spec.output) {
      if (l == kEllipsis) continue;
      if (!count.count(l))
        ctx.fail("output label '" + std::string(1, static_cast<char>(l)) + "' does not appear in any input term");
      if (!seen.insert(l).second)
        ctx.fail("output label '" + std::string(1, static_cast<char>(l)) + "' appears more than once");
    }
  } else {
    if (any_ellipsis) spec.output.push_back(kEllipsis);
    for (const auto& [l, n] : count)
      if (n == 1) spec.output.push_back(l);
  }
  return spec;
}

}  // namespace kiln
