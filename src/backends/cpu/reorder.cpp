// Layout conversion between plain (NCHW) and channels-last (NHWC): a batched 2-D transpose of
// [C, S] <-> [S, C] per image (S = product of spatial dims), done in cache-friendly tiles.
#include <algorithm>
#include <cstring>

#include "backends/cpu/cpu_kernel.h"

namespace kiln::cpu {

namespace {

// dst[s * C + c] = src[c * S + s] for each image when to_last, else the reverse.
template <typename T>
void transpose_images(const T* src, T* dst, int64_t n, int64_t c, int64_t s, bool to_last) {
  constexpr int64_t kTile = 32;
  const int64_t rows = to_last ? c : s, cols = to_last ? s : c;  // src is [rows, cols]
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  const int64_t tiles = n * row_tiles * col_tiles;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t img = t / (row_tiles * col_tiles);
    const int64_t rt = (t / col_tiles) % row_tiles, ct = t % col_tiles;
    const T* in = src + img * rows * cols;
    T* out = dst + img * rows * cols;
    const int64_t r1 = std::min(rows, (rt + 1) * kTile), c1 = std::min(cols, (ct + 1) * kTile);
    for (int64_t r = rt * kTile; r < r1; ++r)
      for (int64_t col = ct * kTile; col < c1; ++col) out[col * rows + r] = in[r * cols + col];
  }
}

}  // namespace

void reorder(const void* src, Layout from, void* dst, Layout to, DType dtype, const std::vector<int64_t>& shape) {
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  if (from == to || shape.size() < 3 || layouts_coincide(shape)) {
    if (src != dst) std::memcpy(dst, src, bytes);
    return;
  }
  if (from == Layout::kAny || to == Layout::kAny)
    throw Error(ErrorCode::kInternal, "reorder: 'any' is not a storage layout");
  const int64_t n = shape[0], c = shape[1];
  int64_t s = 1;
  for (size_t i = 2; i < shape.size(); ++i) s *= shape[i];
  const bool to_last = to == Layout::kChannelsLast;
  const bool done = with_element_type(dtype_size(dtype), [&](auto t) {
    using T = decltype(t);
    transpose_images(static_cast<const T*>(src), static_cast<T*>(dst), n, c, s, to_last);
  });
  if (!done) throw Error(ErrorCode::kInternal, "reorder: unsupported element size");
}

}  // namespace kiln::cpu
