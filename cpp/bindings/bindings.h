// Shared declarations of the pybind11 module cpcsync._core, one area per file.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>

namespace cpcsync {
class BackoffStrategy;
class ConflictResolver;
}  // namespace cpcsync

namespace cpcsync::py_bindings {

namespace py = pybind11;

void InitErrors(py::module_& m);
void InitClock(py::module_& m);
void InitLog(py::module_& m);
void InitQueue(py::module_& m);
void InitBackoff(py::module_& m);
void InitConflict(py::module_& m);
void InitMonitor(py::module_& m);
void InitEngine(py::module_& m);
void InitProxy(py::module_& m);

// Payloads: bytes-like as is, str as UTF-8, anything else as compact JSON.
std::string PayloadBytes(py::handle obj);
// An int argument that is not a bool; TypeError otherwise.
long long StrictInt(py::handle obj, const char* name);
// A real number (int or float, not bool) as double; TypeError otherwise.
double StrictSeconds(py::handle obj, const char* name);

// A cs.BackoffStrategy (built-in or Python subclass) as is, or a plain callable
// fn(n) -> float wrapped as a CallableBackoff; TypeError otherwise. Needs the GIL.
std::shared_ptr<BackoffStrategy> BackoffFromPython(py::handle obj);

// A cs.ConflictResolver (built-in or Python subclass) as is, or a plain callable
// fn(local: Operation, remote: Remote) -> Resolution wrapped as a CallableResolver;
// TypeError otherwise. Needs the GIL.
std::shared_ptr<ConflictResolver> ResolverFromPython(py::handle obj);

}  // namespace cpcsync::py_bindings
