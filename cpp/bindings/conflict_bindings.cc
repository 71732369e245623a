// Conflict resolution: cs.Remote, cs.Resolution, the built-in resolvers, Python
// subclasses of cs.ConflictResolver (through a trampoline) and plain callables, all
// usable from C++ as a ConflictResolver.
//
// Calls into Python take the GIL for the call only, and no C++ lock is held then:
// the built-ins are stateless and never call Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <exception>
#include <thread>

#include "bindings.h"
#include "cpcsync/conflict.h"
#include "cpcsync/errors.h"
#include "cpcsync/operation.h"

namespace cpcsync::py_bindings {
namespace {

using ResolverPtr = std::shared_ptr<ConflictResolver>;

std::string TypeName(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__qualname__"));
}

// The value a Python resolver returned, which must be a cs.Resolution. Needs the GIL.
Resolution ResolutionFromPython(py::handle result, py::handle source) {
  if (!py::isinstance<Resolution>(result)) {
    throw py::type_error("the conflict resolver " + std::string(py::repr(source)) +
                         " must return a cpcsync.Resolution (Resolution.use_local(), "
                         "use_remote() or merge(payload)), not " +
                         TypeName(result));
  }
  return result.cast<Resolution>();
}

// Calls fn(local, remote) with copies of both. Needs the GIL. An exception raised by
// fn propagates as error_already_set, which carries the original Python exception.
Resolution CallPython(const py::object& fn, py::handle source, const Operation& local,
                      const Remote& remote) {
  try {
    py::object result = fn(py::cast(local, py::return_value_policy::copy),
                           py::cast(remote, py::return_value_policy::copy));
    return ResolutionFromPython(result, source);
  } catch (py::error_already_set& e) {
    CallerScope::Stash(e);  // Ctrl-C during process_once/drain: raised again there
    throw;
  }
}

// The C++ side of a Python subclass of cs.ConflictResolver. trampoline_self_life_support
// (with py::smart_holder) keeps the Python object alive while C++ holds a shared_ptr.
class PyConflictResolver : public ConflictResolver, public py::trampoline_self_life_support {
 public:
  Resolution Resolve(const Operation& local, const Remote& remote) override {
    PythonCall call("the Python conflict resolver");
    py::gil_scoped_acquire gil;
    py::function override = py::get_override(static_cast<const ConflictResolver*>(this), "resolve");
    if (!override) {
      PyErr_Format(PyExc_NotImplementedError, "%s must override resolve(local, remote)",
                   Py_TYPE(Self().ptr())->tp_name);
      throw py::error_already_set();
    }
    return CallPython(override, Self(), local, remote);
  }

 private:
  // The Python object this is the C++ part of. Needs the GIL.
  py::object Self() const { return py::cast(static_cast<const ConflictResolver*>(this)); }
};

// hlc from Python: an int in [0, 2**64), or None.
std::optional<uint64_t> HlcArg(py::handle hlc) {
  if (hlc.is_none()) return std::nullopt;
  StrictInt(hlc, "hlc");  // TypeError for non-ints and bools
  const unsigned long long v = PyLong_AsUnsignedLongLong(hlc.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    ThrowInvalid("hlc must be an int in [0, 2**64) or None");
  }
  return static_cast<uint64_t>(v);
}

// version from Python: an int in [-2**63, 2**63), or None.
std::optional<int64_t> VersionArg(py::handle version) {
  if (version.is_none()) return std::nullopt;
  const long long v = StrictInt(version, "version");
  if (v == LLONG_MAX || v == LLONG_MIN) {  // StrictInt saturates: check the exact value
    int overflow = 0;
    PyLong_AsLongLongAndOverflow(version.ptr(), &overflow);
    if (overflow) ThrowInvalid("version must be an int in [-2**63, 2**63) or None");
  }
  return static_cast<int64_t>(v);
}

py::object JsonLoads(const std::string& bytes) {
  return py::module_::import("json").attr("loads")(py::bytes(bytes));
}

std::string RemoteRepr(const Remote& r) {
  auto opt = [](const auto& v) { return v ? std::to_string(*v) : std::string("None"); };
  return "Remote(value=" + std::string(py::repr(py::bytes(r.value))) + ", hlc=" + opt(r.hlc) +
         ", version=" + opt(r.version) + ")";
}

std::string ResolutionRepr(const Resolution& r) {
  switch (r.kind) {
    case Resolution::kUseLocal:
      return "Resolution.use_local()";
    case Resolution::kUseRemote:
      return "Resolution.use_remote()";
    case Resolution::kMerge:
      return "Resolution.merge(" + std::string(py::repr(py::bytes(r.payload))) + ")";
  }
  return "Resolution(?)";
}

}  // namespace

// A plain Python callable fn(local, remote) -> Resolution as a resolver.
class CallableResolver final : public ConflictResolver {
 public:
  explicit CallableResolver(py::object fn) : fn_(std::move(fn)) {}  // called with the GIL

  Resolution Resolve(const Operation& local, const Remote& remote) override {
    PythonCall call("the Python conflict resolver");
    py::gil_scoped_acquire gil;
    return CallPython(fn_.get(), fn_.get(), local, remote);
  }

  py::object fn() const { return fn_.get(); }  // needs the GIL

 private:
  PyRef fn_;  // the last owner may be a C++ thread without the GIL
};

ResolverPtr ResolverFromPython(py::handle obj) {
  if (py::isinstance<ConflictResolver>(obj)) return obj.cast<ResolverPtr>();
  if (PyCallable_Check(obj.ptr())) {
    return std::make_shared<CallableResolver>(py::reinterpret_borrow<py::object>(obj));
  }
  throw py::type_error(
      "resolver must be a cpcsync.ConflictResolver or a callable fn(local, remote) -> "
      "cpcsync.Resolution, not " +
      TypeName(obj));
}

void InitConflict(py::module_& m) {
  py::class_<Remote>(m, "Remote", R"doc(
The server's side of a conflict: its current value, and the HLC timestamp and version
of the write that produced it when the server has them.

value may be bytes, str (stored as UTF-8) or anything JSON can encode (stored as
compact JSON); it is kept as bytes. hlc is an int in [0, 2**64) in the format of
op.hlc (HybridLogicalClock.pack); version an int. A remote without hlc cannot be
ordered against a local operation: LastWriteWins then keeps the local one.)doc")
      .def(py::init([](py::handle value, py::handle hlc, py::handle version) {
             return Remote{PayloadBytes(value), HlcArg(hlc), VersionArg(version)};
           }),
           py::arg("value"), py::arg("hlc") = py::none(), py::arg("version") = py::none())
      .def_property_readonly(
          "value", [](const Remote& r) { return py::bytes(r.value); }, "The remote value (bytes).")
      .def_readonly("hlc", &Remote::hlc, "The remote write's HLC timestamp, or None.")
      .def_readonly("version", &Remote::version, "The remote version, or None.")
      .def(
          "json", [](const Remote& r) { return JsonLoads(r.value); }, "Decode the value as JSON.")
      .def("__eq__",
           [](const Remote& a, py::handle b) -> py::object {
             if (!py::isinstance<Remote>(b)) {
               return py::reinterpret_borrow<py::object>(Py_NotImplemented);
             }
             const Remote& o = b.cast<const Remote&>();
             return py::bool_(a.value == o.value && a.hlc == o.hlc && a.version == o.version);
           })
      .def("__repr__", &RemoteRepr)
      .attr("__hash__") = py::none();

  py::class_<Resolution>(m, "Resolution", R"doc(
A conflict resolver's decision. Build one with a factory (there is no constructor):

- Resolution.use_local():      resend the local operation (against the remote version);
- Resolution.use_remote():     keep the remote value; the local operation is superseded;
- Resolution.merge(payload):   resend the operation with this payload instead (bytes,
  str as UTF-8, or anything JSON can encode, as compact JSON).

kind is "use_local", "use_remote" or "merge"; payload the merged bytes (None unless
kind is "merge").)doc")
      .def_static("use_local", &Resolution::UseLocal, "Resend the local operation as it is.")
      .def_static("use_remote", &Resolution::UseRemote,
                  "Keep the remote value: the local operation is superseded.")
      .def_static(
          "merge", [](py::handle payload) { return Resolution::Merge(PayloadBytes(payload)); },
          py::arg("payload"),
          "Resend the operation with `payload` (bytes, str, or JSON-able) instead of its own.")
      .def_property_readonly(
          "kind", [](const Resolution& r) { return ResolutionKindName(r.kind); },
          "'use_local', 'use_remote' or 'merge'.")
      .def_property_readonly(
          "payload",
          [](const Resolution& r) -> py::object {
            if (r.kind != Resolution::kMerge) return py::none();
            return py::bytes(r.payload);
          },
          "The payload to resend (bytes) for 'merge'; None otherwise.")
      .def(
          "json",
          [](const Resolution& r) -> py::object {
            if (r.kind != Resolution::kMerge) {
              ThrowInvalid(std::string("Resolution.") + ResolutionKindName(r.kind) +
                           "() has no payload to decode");
            }
            return JsonLoads(r.payload);
          },
          "Decode the merged payload as JSON (InvalidArgumentError unless kind is 'merge').")
      .def("__eq__",
           [](const Resolution& a, py::handle b) -> py::object {
             if (!py::isinstance<Resolution>(b)) {
               return py::reinterpret_borrow<py::object>(Py_NotImplemented);
             }
             return py::bool_(a == b.cast<const Resolution&>());
           })
      .def("__repr__", &ResolutionRepr)
      .attr("__hash__") = py::none();

  py::class_<ConflictResolver, PyConflictResolver, py::smart_holder>(m, "ConflictResolver", R"doc(
Decides a conflict between a local operation the server refused and the server's
current value: resolve(local: Operation, remote: Remote) -> Resolution.

Built-ins: LastWriteWins (the newer HLC wins, tie -> local), ServerWins, ClientWins and
FieldMerge (JSON objects merged field by field). Custom resolvers: subclass and override
resolve(local, remote) (call super().__init__() if you define __init__), or pass a plain
function fn(local, remote) -> Resolution (wrapped as CallableResolver(fn)). C++ (the
engine) calls them like a built-in, taking the GIL for the call only; exceptions they
raise propagate, and returning anything but a Resolution raises TypeError. Resolvers
are also callable: resolver(local, remote) is resolver.resolve(local, remote).)doc")
      .def(py::init<>())
      .def("resolve", &ConflictResolver::Resolve, py::arg("local"), py::arg("remote"),
           py::call_guard<py::gil_scoped_release>(),
           "Decide between the local operation and the remote value.")
      .def("__call__", &ConflictResolver::Resolve, py::arg("local"), py::arg("remote"),
           py::call_guard<py::gil_scoped_release>(), "The same as resolve(local, remote).");

  py::class_<LastWriteWins, ConflictResolver, py::smart_holder>(m, "LastWriteWins", py::is_final(),
                                                                R"doc(
The newer write wins, by HLC timestamp: use_local() when local.hlc >= remote.hlc (a tie
goes to the local operation: what the user did on this side), use_remote() when
remote.hlc is newer. A remote without an hlc counts as older: use_local().)doc")
      .def(py::init<>())
      .def("__repr__", [](const LastWriteWins&) { return "LastWriteWins()"; });

  py::class_<ServerWins, ConflictResolver, py::smart_holder>(m, "ServerWins", py::is_final(),
                                                             "Always use_remote(): the server's "
                                                             "value stands.")
      .def(py::init<>())
      .def("__repr__", [](const ServerWins&) { return "ServerWins()"; });

  py::class_<ClientWins, ConflictResolver, py::smart_holder>(m, "ClientWins", py::is_final(),
                                                             "Always use_local(): the local "
                                                             "operation is resent.")
      .def(py::init<>())
      .def("__repr__", [](const ClientWins&) { return "ClientWins()"; });

  py::class_<FieldMerge, ConflictResolver, py::smart_holder>(m, "FieldMerge", py::is_final(),
                                                             R"doc(
Merges two JSON objects field by field: merge(payload) with every field of both sides.
A field on one side only is kept. A field on both sides whose values are both objects
is merged recursively by the same rules; otherwise (scalars, arrays, null, or an object
against a non-object) the side LastWriteWins picks supplies it: the local operation
when local.hlc >= remote.hlc or the remote has no hlc, the remote otherwise (operations
carry one timestamp, not one per field). The local object's fields come first, in
their order, then the remote-only ones. When either payload is not a JSON object
(invalid JSON or UTF-8, an array, a scalar, or nested deeper than 256 levels),
FieldMerge falls back to LastWriteWins: use_local() or use_remote().)doc")
      .def(py::init<>())
      .def("__repr__", [](const FieldMerge&) { return "FieldMerge()"; });

  py::class_<CallableResolver, ConflictResolver, py::smart_holder>(m, "CallableResolver",
                                                                   py::is_final(), R"doc(
A plain function fn(local: Operation, remote: Remote) -> Resolution as a resolver:
resolve(local, remote) calls fn(local, remote). Returning anything but a Resolution
raises TypeError; exceptions fn raises propagate unchanged.)doc")
      .def(py::init([](py::object fn) {
             if (!PyCallable_Check(fn.ptr())) {
               throw py::type_error(
                   "CallableResolver needs a callable fn(local, remote) -> Resolution");
             }
             return std::make_shared<CallableResolver>(std::move(fn));
           }),
           py::arg("fn"))
      .def_property_readonly("fn", &CallableResolver::fn, "The wrapped callable.")
      .def("__repr__", [](const CallableResolver& r) {
        return "CallableResolver(" + std::string(py::repr(r.fn())) + ")";
      });

  m.def(
      "_resolve_in_thread",
      [](py::handle resolver, const Operation& local, const Remote& remote) {
        ResolverPtr r = ResolverFromPython(resolver);
        Resolution out;
        std::exception_ptr error;
        {
          py::gil_scoped_release release;
          std::thread([&] {
            try {
              out = r->Resolve(local, remote);
            } catch (...) {
              error = std::current_exception();
            }
          }).join();
        }
        if (error) std::rethrow_exception(error);
        return out;
      },
      py::arg("resolver"), py::arg("local"), py::arg("remote"),
      "Tests: resolve through ResolverFromPython on a C++ thread (GIL released), as the "
      "engine will.");
}

}  // namespace cpcsync::py_bindings
