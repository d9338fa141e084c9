// Where the exported real models are (models/export.py), for tests in any binary.
#pragma once
#include <cstdlib>
#include <filesystem>

namespace kiln_test {

// Where the exported real models are: $KILN_MODEL_DIR when set (an empty value means none), else
// the cache that scripts/export-models.sh fills (~/.cache/kiln/models). Tests that need a model
// skip when it is not there.
inline std::filesystem::path model_dir() {
  if (const char* env = std::getenv("KILN_MODEL_DIR")) return env[0] ? std::filesystem::path(env) : std::filesystem::path();
  const char* home = std::getenv("HOME");
  return home ? std::filesystem::path(home) / ".cache/kiln/models" : std::filesystem::path();
}

}  // namespace kiln_test
