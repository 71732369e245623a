// Shared declarations of the pybind11 module cpcsync._core, one area per file.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <string>

namespace cpcsync {
class BackoffStrategy;
class ConflictResolver;
class Transport;
struct DeliveryResult;
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
void InitTransport(py::module_& m);
void InitFaulty(py::module_& m);
void InitProxy(py::module_& m);

// Payloads: bytes-like as is, str as UTF-8, anything else as compact JSON.
std::string PayloadBytes(py::handle obj);
// An int argument that is not a bool; TypeError otherwise.
long long StrictInt(py::handle obj, const char* name);
// A real number (int or float, not bool) as double; TypeError otherwise.
double StrictSeconds(py::handle obj, const char* name);
// An HLC timestamp: an int (not bool; TypeError otherwise) in [0, 2**64) whose
// physical part is within HybridLogicalClock's range; InvalidArgumentError otherwise.
uint64_t HlcStampArg(py::handle obj, const char* name);

// A cs.BackoffStrategy (built-in or Python subclass) as is, or a plain callable
// fn(n) -> float wrapped as a CallableBackoff; TypeError otherwise. Needs the GIL.
std::shared_ptr<BackoffStrategy> BackoffFromPython(py::handle obj);

// A cs.ConflictResolver (built-in or Python subclass) as is, or a plain callable
// fn(local: Operation, remote: Remote) -> Resolution wrapped as a CallableResolver;
// TypeError otherwise. Needs the GIL.
std::shared_ptr<ConflictResolver> ResolverFromPython(py::handle obj);

// True once Python must not be touched from C++: not initialised, or finalising.
bool PythonFinalizing();

// The one door from C++ into Python: every place that takes the GIL on a thread
// Python may not hold it (engine workers, monitor and log threads, destructors that
// run anywhere) first enters a PythonCall, and takes the GIL only if it got in.
//
// Why: Python 3.11 ends (pthread_exit) a thread that takes the GIL after
// finalisation began, and that forced unwind through C++ frames with catch (...) or
// noexcept aborts the process ("FATAL: exception not rethrown"). So at interpreter
// exit an atexit hook (registered first by the module, so it runs after cpcsync's
// other exit hooks) closes the gate, waits with the GIL released (at most 5 s) for
// the calls already inside to leave, and from then on refuses every thread but the
// one exiting. Lock-free; a forked child counts only the forking thread's calls.
//
//   PythonCall call;  if (!call) return <what the caller does without Python>;
//   py::gil_scoped_acquire gil;  // declared after: released before the call leaves
class PythonCall {
 public:
  PythonCall();                          // check with operator bool
  explicit PythonCall(const char* who);  // std::runtime_error naming `who` if refused
  ~PythonCall();
  PythonCall(const PythonCall&) = delete;
  PythonCall& operator=(const PythonCall&) = delete;
  explicit operator bool() const { return entered_; }

 private:
  bool entered_ = false;
};

// Registers the gate's atexit hook. Called first by the module's init.
void InitPythonGate(py::module_& m);

// A Python object owned from C++ by something that may die on any thread, with or
// without the GIL: released with the GIL taken, or leaked if the interpreter is
// finalising or the GIL cannot be taken (never touched without the GIL; never throws).
class PyRef {
 public:
  explicit PyRef(py::object obj);
  ~PyRef();
  PyRef(const PyRef&) = delete;
  PyRef& operator=(const PyRef&) = delete;
  const py::object& get() const { return *obj_; }

 private:
  std::unique_ptr<py::object> obj_;
};

// A cs.Transport (C++, e.g. FaultyTransport) as is, or a Python transport (a
// callable (op) -> None, sync or async, optionally with send_batch) wrapped so the
// engine can call it; async ones run on `loop` (None: a loop the wrapper owns).
// TypeError for anything else. Needs the GIL.
std::shared_ptr<Transport> TransportFromPython(py::handle transport, const py::object& loop);

// Python's "stop now" exceptions (BaseException but not Exception: KeyboardInterrupt,
// SystemExit, ...) raised by a callback the engine ran on the thread that called
// process_once()/drain(). While a CallerScope is alive on a thread, Stash() keeps the
// first such exception, and Rethrow() raises it again once the engine call returned,
// so Ctrl-C stops a drain. On engine worker threads no scope is active: those
// exceptions are logged and the worker goes on.
class CallerScope {
 public:
  CallerScope();
  ~CallerScope();  // a stash not rethrown is released as PyRef does
  CallerScope(const CallerScope&) = delete;
  CallerScope& operator=(const CallerScope&) = delete;
  // True when `e` is a BaseException that is not an Exception. Needs the GIL.
  static bool IsInterrupt(const py::error_already_set& e);
  // Keeps `e` for Rethrow() when a scope is active on this thread and `e` is an
  // interrupt; true if kept. Needs the GIL.
  static bool Stash(const py::error_already_set& e);
  // Raises the stashed exception, if any. Needs the GIL.
  void Rethrow();

 private:
  CallerScope* previous_;
  std::optional<PyRef> stashed_;
};

// A DeliveryResult as the arguments of cpcsync._engine.raise_result:
// (kind, error, retry_after, remote value, remote hlc, remote version). Needs the GIL.
py::object RaiseArgs(const DeliveryResult& r);

}  // namespace cpcsync::py_bindings
