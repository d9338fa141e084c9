// The kiln._kiln extension module: Kiln's TensorRT-shaped API for Python (the package kiln wraps it).
#include "common.h"

PYBIND11_MODULE(_kiln, m) {
  namespace kp = kiln::py_bindings;
  m.doc() = "Kiln's compiled API; use the `kiln` package.";
  m.attr("__version__") = kiln::getVersion();
  kp::register_errors(m);
  kp::register_logger(m);
  kp::register_network(m);
  kp::register_builder(m);
  kp::register_runtime(m);
  // Plugins (include/kiln/plugin.h): custom ops, or replacements of built-in ones, from a shared
  // library; load before parsing, building or deserializing what uses them.
  m.def(
      "load_plugin_library",
      [](const std::string& path) {
        pybind11::gil_scoped_release release;
        kiln::loadPluginLibrary(path);
      },
      pybind11::arg("path"),
      "Loads a Kiln plugin library (docs/plugins.md). Loading one twice does nothing; errors raise kiln.Error.");
}
