// Transports from Python: cs.Transport (the C++ base), and callables wrapped as one.
#include <pybind11/stl.h>

#include "bindings.h"
#include "cpcsync/transport.h"

namespace cpcsync::py_bindings {
namespace {

DeliveryResult FromException(const py::object& support, const py::object& exc) {
  py::tuple t = support.attr("classify")(exc);
  DeliveryResult r;
  r.kind = static_cast<DeliveryResult::Kind>(t[0].cast<int>());
  r.error = t[1].cast<std::string>();
  r.retry_after = t[2].cast<double>();
  if (r.kind == DeliveryResult::Kind::kConflict) {
    if (!t[3].is_none()) r.remote.value = PayloadBytes(t[3]);
    if (!t[4].is_none()) r.remote.hlc = t[4].cast<uint64_t>();
    if (!t[5].is_none()) r.remote.version = t[5].cast<int64_t>();
  }
  return r;
}

// Calls a Python transport: a callable `fn(op)`, async or not; `send_batch(ops)`
// when the object has one. The GIL is taken only for the call; the engine holds
// no lock while it runs.
class PyTransport final : public Transport {
 public:
  PyTransport(const py::object& transport, const py::object& loop)
      : support_(py::module_::import("cpcsync._engine")),
        transport_(transport),
        runner_(support_.get().attr("LoopRunner")(loop)),
        batch_(py::hasattr(transport, "send_batch")
                   ? std::make_unique<PyRef>(transport.attr("send_batch"))
                   : nullptr) {
    if (!PyCallable_Check(transport.ptr())) {
      throw py::type_error("transport must be callable (op) -> None, or have send_batch(ops)");
    }
  }
  ~PyTransport() override {
    PythonCall call;
    if (!call || PythonFinalizing()) return;  // leave the loop to the exiting interpreter
    try {
      py::gil_scoped_acquire gil;
      try {
        runner_.get().attr("close")();
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("cpcsync transport loop close");
      }
    } catch (...) {  // the GIL could not be taken: nothing to close with, and no throwing here
    }
  }

  DeliveryResult Send(const Operation& op) override {
    PythonCall call;
    if (!call) return Exiting();
    py::gil_scoped_acquire gil;
    try {
      py::object result = support_.get().attr("invoke")(transport_.get(), op, runner_.get());
      // None (or True) is delivered; anything else is a contract violation, which
      // must not be taken for a delivery (the op would be lost): see result_of.
      py::object exc = support_.get().attr("result_of")(result);
      return exc.is_none() ? DeliveryResult::Delivered() : FromException(support_.get(), exc);
    } catch (py::error_already_set& e) {
      return FromError(e, "op " + std::to_string(op.id));
    }
  }

  bool SupportsBatch() const override { return batch_ != nullptr; }

  std::vector<DeliveryResult> SendBatch(const std::vector<Operation>& ops) override {
    PythonCall call;
    if (!call) return std::vector<DeliveryResult>(ops.size(), Exiting());
    py::gil_scoped_acquire gil;
    std::vector<DeliveryResult> out;
    try {
      py::object results =
          support_.get().attr("invoke")(batch_->get(), py::cast(ops), runner_.get());
      if (results.is_none()) {
        out.assign(ops.size(), DeliveryResult::Delivered());
        return out;
      }
      py::list items(results);  // TypeError for a non-iterable: handled below
      if (items.size() != ops.size()) {
        // Which result belongs to which op is unknowable: none is taken for a
        // delivery (resending is safe, the idempotency key absorbs it).
        out.assign(ops.size(),
                   DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                          "send_batch returned " + std::to_string(items.size()) +
                                              " results for " + std::to_string(ops.size()) +
                                              " operations (expected one per operation)"));
        return out;
      }
      for (size_t i = 0; i < ops.size(); ++i) {
        py::object exc = support_.get().attr("outcome_of")(items[i]);
        out.push_back(exc.is_none() ? DeliveryResult::Delivered()
                                    : FromException(support_.get(), exc));
      }
    } catch (py::error_already_set& e) {
      const DeliveryResult r = FromError(e, std::to_string(ops.size()) + " ops (send_batch)");
      out.assign(ops.size(), r);
    }
    return out;
  }

 private:
  // Not sent: the interpreter is exiting. Put back like an interrupted call (due at
  // once, not an attempt); the next run of the service delivers it.
  static DeliveryResult Exiting() {
    DeliveryResult r = DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                              "not sent: the Python interpreter is exiting");
    r.interrupted = true;
    return r;
  }

  // What the transport raised, as a result. Needs the GIL. An interrupt
  // (KeyboardInterrupt, SystemExit, ...) on the thread running process_once/drain is
  // kept for re-raising there, and the op is put back; on a worker thread it is
  // logged (warning) and retried like any unknown exception.
  DeliveryResult FromError(py::error_already_set& e, const std::string& what) {
    try {
      if (CallerScope::IsInterrupt(e)) {
        const std::string text = support_.get().attr("describe")(e.value()).cast<std::string>();
        if (CallerScope::Stash(e)) {
          DeliveryResult r =
              DeliveryResult::Failed(DeliveryResult::Kind::kTransient, "interrupted: " + text);
          r.interrupted = true;
          return r;
        }
        py::module_::import("logging").attr("getLogger")("cpcsync").attr("warning")(
            "the transport raised %s (%s) on an engine worker thread; retrying it like "
            "any other error (stop the engine with engine.stop())",
            text, what);
      }
      return FromException(support_.get(), e.value());
    } catch (py::error_already_set& again) {  // describing it raised (a broken __str__)
      return DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                    std::string("transport raised an exception that could not "
                                                "be described: ") +
                                        again.what());
    }
  }

 private:
  PyRef support_;
  PyRef transport_;
  PyRef runner_;
  std::unique_ptr<PyRef> batch_;
};

}  // namespace

namespace {
thread_local CallerScope* t_caller_scope = nullptr;
}  // namespace

CallerScope::CallerScope() : previous_(t_caller_scope) { t_caller_scope = this; }

CallerScope::~CallerScope() { t_caller_scope = previous_; }

bool CallerScope::IsInterrupt(const py::error_already_set& e) {
  return !e.matches(PyExc_Exception);
}

bool CallerScope::Stash(const py::error_already_set& e) {
  CallerScope* scope = t_caller_scope;
  if (scope == nullptr || !IsInterrupt(e)) return false;
  if (!scope->stashed_) scope->stashed_.emplace(e.value());
  return true;
}

void CallerScope::Rethrow() {
  if (!stashed_) return;
  py::object exc = stashed_->get();
  stashed_.reset();
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

PyRef::PyRef(py::object obj) : obj_(std::make_unique<py::object>(std::move(obj))) {}

bool PythonFinalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return !Py_IsInitialized() || Py_IsFinalizing();
#else
  return !Py_IsInitialized() || _Py_IsFinalizing();
#endif
}

PyRef::~PyRef() {
  if (!obj_) return;
  PythonCall call;
  if (!call || PythonFinalizing()) {
    (void)obj_.release();  // NOLINT: the interpreter is going; nothing may touch it
    return;
  }
  try {
    py::gil_scoped_acquire gil;
    obj_.reset();
  } catch (...) {          // the GIL could not be taken: leak the object, never throw here
    (void)obj_.release();  // NOLINT: without the GIL it must not be touched
  }
}

std::shared_ptr<Transport> TransportFromPython(py::handle transport, const py::object& loop) {
  if (py::isinstance<Transport>(transport)) return transport.cast<std::shared_ptr<Transport>>();
  return std::make_shared<PyTransport>(py::reinterpret_borrow<py::object>(transport), loop);
}

py::object RaiseArgs(const DeliveryResult& r) {
  py::object remote = py::none(), hlc = py::none(), version = py::none();
  if (r.kind == DeliveryResult::Kind::kConflict) {
    remote = py::bytes(r.remote.value);
    if (r.remote.hlc) hlc = py::cast(*r.remote.hlc);
    if (r.remote.version) version = py::cast(*r.remote.version);
  }
  return py::make_tuple(static_cast<int>(r.kind), r.error, r.retry_after, remote, hlc, version);
}

void InitTransport(py::module_& m) {
  py::class_<Transport, std::shared_ptr<Transport>>(m, "Transport", R"doc(
Base class of transports written in C++ (such as cpcsync.testing.FaultyTransport).
A SyncEngine calls them without the GIL. Python transports need not derive from
it: any callable (op) -> None will do.)doc");
}

}  // namespace cpcsync::py_bindings
