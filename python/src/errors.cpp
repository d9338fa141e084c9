// kiln.Error and its subclasses (one per kiln::ErrorCode), the translation of kiln::Error into them,
// and ErrorCapture, which turns the C++ API's logged failures back into exceptions.
#include <cctype>
#include <filesystem>
#include <iterator>
#include <new>

#include "common.h"

namespace kiln::py_bindings {

namespace {

constexpr ErrorCode kCodes[] = {ErrorCode::kInvalidModel, ErrorCode::kUnsupported, ErrorCode::kInvalidArgument,
                                ErrorCode::kIo, ErrorCode::kInternal};

// Owned references for the life of the process: the classes must outlive every module object
// (exceptions may be raised while the interpreter tears modules down).
PyObject* g_error_base = nullptr;
PyObject* g_error_classes[std::size(kCodes)] = {};

size_t code_index(ErrorCode code) {
  for (size_t i = 0; i < std::size(kCodes); ++i)
    if (kCodes[i] == code) return i;
  return std::size(kCodes) - 1;  // an unknown code is a Kiln bug
}

thread_local ErrorCapture* g_capture_top = nullptr;

// "build failed: ", "loadEngine: ": a bare tag the API puts before the kiln::Error's text. Tags that
// carry arguments ("addInput('x'): ") say which call failed and are kept.
bool is_bare_tag(const std::string& prefix) {
  if (prefix.size() < 3 || prefix.compare(prefix.size() - 2, 2, ": ") != 0) return false;
  for (size_t i = 0; i + 2 < prefix.size(); ++i) {
    const char c = prefix[i];
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != ' ') return false;
  }
  return true;
}

}  // namespace

py::str to_str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

py::object exception_class(ErrorCode code) {
  return py::reinterpret_borrow<py::object>(g_error_classes[code_index(code)]);
}

py::object error_base() { return py::reinterpret_borrow<py::object>(g_error_base); }

void set_python_error(ErrorCode code, const std::string& message) {
  py::object cls = exception_class(code);
  py::object exc = cls(to_str(message));
  PyErr_SetObject(cls.ptr(), exc.ptr());
}

// ---- ErrorCapture

ErrorCapture::ErrorCapture() : outer_(g_capture_top) { g_capture_top = this; }
ErrorCapture::~ErrorCapture() { g_capture_top = outer_; }

void ErrorCapture::record(ILogger::Severity severity, const char* msg) {
  ErrorCapture* top = g_capture_top;
  if (!top) return;
  std::string text = msg ? msg : "";
  ErrorCode code = severity == ILogger::Severity::kINTERNAL_ERROR ? ErrorCode::kInternal : ErrorCode::kInvalidArgument;
  // The API logs most failures from a catch block: the exception in flight has the real code.
  if (std::exception_ptr in_flight = std::current_exception()) {
    try {
      std::rethrow_exception(in_flight);
    } catch (const Error& e) {
      code = e.code();
      const std::string what = e.what();
      const size_t pos = what.empty() ? std::string::npos : text.find(what);
      if (pos != std::string::npos && pos > 0 && is_bare_tag(text.substr(0, pos))) text = text.substr(pos);
    } catch (const std::filesystem::filesystem_error&) {
      code = ErrorCode::kIo;
    } catch (const std::bad_alloc&) {
      code = ErrorCode::kInternal;
    } catch (...) {
      code = ErrorCode::kInternal;
    }
  }
  top->entries_.push_back({code, std::move(text)});
}

void ErrorCapture::raise(const std::string& fallback) const {
  if (entries_.empty()) throw Error(ErrorCode::kInvalidArgument, fallback);
  std::string msg;
  for (const auto& e : entries_) msg += (msg.empty() ? "" : "\n") + e.message;
  throw Error(entries_.front().code, msg);
}

// ---- Registration

void register_errors(py::module_& m) {
  py::enum_<ErrorCode>(m, "ErrorCode", "The category of a kiln.Error (kiln::ErrorCode).")
      .value("INVALID_MODEL", ErrorCode::kInvalidModel)
      .value("UNSUPPORTED", ErrorCode::kUnsupported)
      .value("INVALID_ARGUMENT", ErrorCode::kInvalidArgument)
      .value("IO", ErrorCode::kIo)
      .value("INTERNAL", ErrorCode::kInternal);

  auto make = [&](const char* name, py::handle bases, const char* doc) {
    const std::string qualified = std::string("kiln.") + name;
    PyObject* cls = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases.ptr(), nullptr);
    if (!cls) throw py::error_already_set();
    m.add_object(name, py::handle(cls));  // borrows; the module keeps its own reference
    return cls;                           // the new reference stays ours
  };
  g_error_base = make("Error", PyExc_Exception,
                      "Base of every Kiln error. `code` is a kiln.ErrorCode, `kind` the word the command line prints "
                      "(\"invalid argument\"); str(e) is the message `kiln` prints after 'kiln: error (<kind>): '.");
  py::setattr(g_error_base, "code", py::none());
  py::setattr(g_error_base, "kind", py::str("error"));
  struct Spec {
    ErrorCode code;
    const char* name;
    PyObject* extra_base;
    const char* doc;
  };
  const Spec specs[] = {
      {ErrorCode::kInvalidModel, "InvalidModelError", nullptr,
       "The model file or graph is malformed: fix or re-export the model."},
      {ErrorCode::kUnsupported, "UnsupportedError", nullptr,
       "A valid construct Kiln does not implement (op, opset, dtype)."},
      {ErrorCode::kInvalidArgument, "InvalidArgumentError", PyExc_ValueError,
       "A bad argument, input shape, dtype, profile or data file. Also a ValueError."},
      {ErrorCode::kIo, "IoError", PyExc_OSError, "A file that cannot be opened, read or written. Also an OSError."},
      {ErrorCode::kInternal, "InternalError", nullptr, "A broken invariant inside Kiln: please report it."},
  };
  for (const Spec& s : specs) {
    py::tuple bases = s.extra_base ? py::make_tuple(py::handle(g_error_base), py::handle(s.extra_base))
                                   : py::make_tuple(py::handle(g_error_base));
    PyObject* cls = make(s.name, bases, s.doc);
    py::setattr(cls, "code", py::cast(s.code));
    py::setattr(cls, "kind", py::str(error_code_name(s.code)));
    g_error_classes[code_index(s.code)] = cls;
  }

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      // The text `kiln` prints: the message and its docs/troubleshooting.md section.
      set_python_error(e.code(), error_message_with_help(e));
    }
  });
  m.def(
      "_with_help", [](ErrorCode code, const std::string& msg) { return error_message_with_help(Error(code, msg)); },
      py::arg("code"), py::arg("message"),
      "The message as kiln prints it: with ' (see docs/troubleshooting.md#SECTION)' unless it names a section.");
}

}  // namespace kiln::py_bindings
