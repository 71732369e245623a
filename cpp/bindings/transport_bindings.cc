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
    if (!Py_IsInitialized()) return;
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
    py::gil_scoped_acquire gil;
    try {
      support_.get().attr("invoke")(transport_.get(), op, runner_.get());
      return DeliveryResult::Delivered();
    } catch (py::error_already_set& e) {
      return FromException(support_.get(), e.value());
    }
  }

  bool SupportsBatch() const override { return batch_ != nullptr; }

  std::vector<DeliveryResult> SendBatch(const std::vector<Operation>& ops) override {
    py::gil_scoped_acquire gil;
    std::vector<DeliveryResult> out;
    try {
      py::object results =
          support_.get().attr("invoke")(batch_->get(), py::cast(ops), runner_.get());
      py::list items = results.is_none() ? py::list() : py::list(results);
      for (size_t i = 0; i < ops.size(); ++i) {
        if (results.is_none()) {
          out.push_back(DeliveryResult::Delivered());
          continue;
        }
        if (i >= items.size()) {
          out.push_back(DeliveryResult::Failed(DeliveryResult::Kind::kTransient,
                                               "send_batch returned fewer results than ops"));
          continue;
        }
        py::object exc = support_.get().attr("outcome_of")(items[i]);
        out.push_back(exc.is_none() ? DeliveryResult::Delivered()
                                    : FromException(support_.get(), exc));
      }
    } catch (py::error_already_set& e) {
      const DeliveryResult r = FromException(support_.get(), e.value());
      out.assign(ops.size(), r);
    }
    return out;
  }

 private:
  PyRef support_;
  PyRef transport_;
  PyRef runner_;
  std::unique_ptr<PyRef> batch_;
};

}  // namespace

PyRef::PyRef(py::object obj) : obj_(std::make_unique<py::object>(std::move(obj))) {}

PyRef::~PyRef() {
  if (!obj_) return;
  if (!Py_IsInitialized()) {
    (void)obj_.release();  // NOLINT: the interpreter is gone; nothing may touch it
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
