// kiln.ILogger: the bridge from Kiln's C++ ILogger to Python (a `log(severity, msg)` override, or
// the console output of kiln.Logger, defined in kiln/__init__.py on top of it).
#include "common.h"

namespace kiln::py_bindings {

void PyLogger::log(Severity severity, const char* msg) noexcept {
  // Errors are recorded even when filtered out: they become the message of the exception raised.
  if (static_cast<int32_t>(severity) <= static_cast<int32_t>(Severity::kERROR)) ErrorCapture::record(severity, msg);
  if (static_cast<int32_t>(severity) > static_cast<int32_t>(min_severity())) return;
  if (!Py_IsInitialized() || _Py_IsFinalizing()) return;
  // Builds and runs release the GIL; a message from them needs it back.
  py::gil_scoped_acquire gil;
  try {
    const std::string text = msg ? msg : "";
    py::function override = py::get_override(static_cast<const PyLogger*>(this), "log");
    if (override) {
      override(severity, to_str(text));
    } else {
      default_log(severity, text);
    }
  } catch (py::error_already_set& e) {
    // A logger must not fail the call it reports on: Python's unraisable hook shows the error.
    e.discard_as_unraisable("kiln.ILogger.log");
  } catch (const std::exception&) {
  }
}

void PyLogger::default_log(Severity severity, const std::string& msg) const {
  if (!console()) return;
  py::object err = py::module_::import("sys").attr("stderr");
  if (err.is_none()) return;
  err.attr("write")(to_str(std::string("[kiln] ") + severityName(severity) + ": " + msg + "\n"));
}

void register_logger(py::module_& m) {
  py::class_<PyLogger> logger(m, "ILogger", R"(Receives Kiln's messages (TensorRT's ILogger).

Subclass it and override ``log(self, severity, msg)`` (call ``kiln.ILogger.__init__(self)``
first), or use ``kiln.Logger``, which prints to sys.stderr. Messages of a severity above
``min_severity`` are dropped before reaching Python. ``log`` may be called from the thread that
runs a build or an inference while it has released the GIL; Kiln re-acquires it first.)");
  py::enum_<ILogger::Severity>(logger, "Severity", py::arithmetic(), "Message severities, most severe first.")
      .value("INTERNAL_ERROR", ILogger::Severity::kINTERNAL_ERROR)
      .value("ERROR", ILogger::Severity::kERROR)
      .value("WARNING", ILogger::Severity::kWARNING)
      .value("INFO", ILogger::Severity::kINFO)
      .value("VERBOSE", ILogger::Severity::kVERBOSE)
      .export_values();
  logger.def(py::init<ILogger::Severity>(), py::arg("min_severity") = ILogger::Severity::kVERBOSE)
      .def_property("min_severity", &PyLogger::min_severity, &PyLogger::set_min_severity,
                    "The least severe messages passed on (Severity.VERBOSE: all).")
      .def(
          "log", [](const PyLogger& self, ILogger::Severity s, const std::string& msg) { self.default_log(s, msg); },
          py::arg("severity"), py::arg("msg"),
          "Handles one message. The default prints it for kiln.Logger and drops it for kiln.ILogger.")
      .def_property("_console", &PyLogger::console, &PyLogger::set_console);
}

}  // namespace kiln::py_bindings
