#include <pybind11/gil_safe_call_once.h>

#include <climits>

#include "bindings.h"

namespace cpcsync::py_bindings {

std::string PayloadBytes(py::handle obj) {
  if (PyBytes_Check(obj.ptr())) {
    char* data;
    Py_ssize_t size;
    PyBytes_AsStringAndSize(obj.ptr(), &data, &size);
    return std::string(data, static_cast<size_t>(size));
  }
  if (PyUnicode_Check(obj.ptr())) {
    Py_ssize_t size;
    const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
    if (!data) throw py::error_already_set();  // e.g. lone surrogates: UnicodeEncodeError
    return std::string(data, static_cast<size_t>(size));
  }
  if (PyByteArray_Check(obj.ptr()) || PyMemoryView_Check(obj.ptr())) {
    return py::bytes(py::reinterpret_borrow<py::object>(obj)).cast<std::string>();
  }
  // One encoder, built once: json.dumps with non-default arguments would build a
  // new JSONEncoder on every call.
  PYBIND11_CONSTINIT static py::gil_safe_call_once_and_store<py::object> json_encode;
  py::object& encode =
      json_encode
          .call_once_and_store_result([]() -> py::object {
            py::dict kwargs;
            kwargs["separators"] = py::make_tuple(",", ":");
            kwargs["ensure_ascii"] = false;
            return py::module_::import("json").attr("JSONEncoder")(**kwargs).attr("encode");
          })
          .get_stored();
  py::object text = encode(obj);  // TypeError for what JSON cannot encode
  return PayloadBytes(text);
}

long long StrictInt(py::handle obj, const char* name) {
  if (PyBool_Check(obj.ptr()) || !PyLong_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be an int, not " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
  if (overflow) return overflow > 0 ? LLONG_MAX : LLONG_MIN;
  return v;
}

double StrictSeconds(py::handle obj, const char* name) {
  if (PyBool_Check(obj.ptr()) || !(PyLong_Check(obj.ptr()) || PyFloat_Check(obj.ptr()))) {
    throw py::type_error(std::string(name) + " must be a number of seconds (int or float), not " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  const double v = PyFloat_AsDouble(obj.ptr());  // an int too large for a double: OverflowError
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

}  // namespace cpcsync::py_bindings
