// Maps SyncError (and its nested causes) onto the Python classes of
// cpcsync.errors, chaining each cause as __cause__.
#include <cerrno>
#include <cstring>
#include <exception>

#include "bindings.h"
#include "cpcsync/errors.h"

namespace cpcsync::py_bindings {
namespace {

py::object ClassFor(ErrorCode code) {
  py::module_ errors = py::module_::import("cpcsync.errors");
  switch (code) {
    case ErrorCode::kStorage:
      return errors.attr("StorageError");
    case ErrorCode::kCorrupt:
      return errors.attr("CorruptDatabaseError");
    case ErrorCode::kNotAQueue:
      return errors.attr("NotAQueueError");
    case ErrorCode::kQueueFull:
      return errors.attr("QueueFullError");
    case ErrorCode::kQueueLocked:
      return errors.attr("QueueLockedError");
    case ErrorCode::kClosed:
      return errors.attr("QueueClosedError");
    case ErrorCode::kInvalidArgument:
      return errors.attr("InvalidArgumentError");
    case ErrorCode::kOperationState:
      return errors.attr("OperationStateError");
    case ErrorCode::kSqlite:
      return errors.attr("SQLiteError");
    case ErrorCode::kOs:
      return py::reinterpret_borrow<py::object>(PyExc_OSError);
  }
  return errors.attr("SyncError");
}

py::object ToPython(const SyncError& e) {
  py::object exc;
  if (e.code() == ErrorCode::kOs) {
    exc = ClassFor(e.code())(e.sys_errno(), ErrnoMessage(e.sys_errno()));
  } else {
    exc = ClassFor(e.code())(e.what());
    if (e.sqlite_code() != 0) exc.attr("sqlite_code") = e.sqlite_code();
  }
  try {
    std::rethrow_if_nested(e);
  } catch (const SyncError& inner) {
    PyException_SetCause(exc.ptr(), ToPython(inner).release().ptr());
  } catch (const std::exception& inner) {
    PyException_SetCause(exc.ptr(),
                         py::reinterpret_steal<py::object>(
                             PyObject_CallFunction(PyExc_RuntimeError, "s", inner.what()))
                             .release()
                             .ptr());
  }
  return exc;
}

}  // namespace

void InitErrors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const SyncError& e) {
      py::object exc = ToPython(e);
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
}

}  // namespace cpcsync::py_bindings
