// cpcsync._core._FaultProxy: the C++ FaultProxy behind cpcsync.testing.FaultProxy
// (python/cpcsync/testing/proxy.py adds the context managers and the docs users read).
//
// GIL rules (DESIGN.md, Threading and the GIL): every call that waits for the proxy's
// I/O thread (start, stop, enable, disable and the toxic calls) releases the GIL, and
// so does dropping the last reference (it stops the proxy). The I/O thread never
// takes the GIL: it calls no Python code and logs through the log bridge's queue.
#include <pybind11/stl.h>

#include <climits>

#include "bindings.h"
#include "cpcsync/errors.h"
#include "cpcsync/fault_proxy.h"

namespace cpcsync::py_bindings {
namespace {

using ProxyPtr = std::shared_ptr<FaultProxy>;

uint16_t Port(py::handle obj, const char* name, bool zero_ok) {
  const long long p = StrictInt(obj, name);
  if (p < (zero_ok ? 0 : 1) || p > 65535) {
    ThrowInvalid(std::string(name) + " must be an int in " + (zero_ok ? "0" : "1") + "..65535");
  }
  return static_cast<uint16_t>(p);
}

ToxicStream Stream(const std::string& stream) {
  if (stream == "upstream") return ToxicStream::kUpstream;
  if (stream == "downstream") return ToxicStream::kDownstream;
  ThrowInvalid("stream must be 'upstream' or 'downstream', not '" + stream + "'");
}

double Toxicity(py::handle obj) {
  if (PyBool_Check(obj.ptr()) || !(PyLong_Check(obj.ptr()) || PyFloat_Check(obj.ptr()))) {
    ThrowInvalid("toxicity must be a number in 0..1");
  }
  return obj.cast<double>();
}

std::map<std::string, int64_t> Attributes(const py::dict& attributes) {
  std::map<std::string, int64_t> out;
  for (const auto& [key, value] : attributes) {
    const std::string name = py::str(key);
    if (PyBool_Check(value.ptr()) || !PyLong_Check(value.ptr())) {
      ThrowInvalid("toxic attribute '" + name + "' must be an int, not " +
                   std::string(py::str(py::type::of(value).attr("__name__"))));
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
    if (overflow != 0) ThrowInvalid("toxic attribute '" + name + "' is out of range");
    out[name] = v;
  }
  return out;
}

py::dict ToxicDict(const ToxicSpec& t) {
  py::dict attributes;
  for (const auto& [key, value] : t.attributes) attributes[py::str(key)] = value;
  py::dict d;
  d["name"] = t.name;
  d["type"] = t.type;
  d["stream"] = ToxicStreamName(t.stream);
  d["toxicity"] = t.toxicity;
  d["attributes"] = attributes;
  return d;
}

py::dict StatsDict(const FaultProxy& p) {
  const FaultProxyStats s = p.Stats();
  py::dict d;
  d["connections"] = s.connections;
  d["active"] = s.active;
  d["bytes_upstream"] = s.bytes_upstream;
  d["bytes_downstream"] = s.bytes_downstream;
  d["upstream_failures"] = s.upstream_failures;
  d["held_bytes"] = s.held_bytes;
  d["held_memory"] = s.held_memory;
  return d;
}

// The proxy as Python holds it: the last reference stops it with the GIL released.
ProxyPtr Held(std::unique_ptr<FaultProxy> proxy) {
  return ProxyPtr(proxy.release(), [](FaultProxy* raw) {
    std::unique_ptr<FaultProxy> owned(raw);
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      owned.reset();
    }
  });
}

}  // namespace

void InitProxy(py::module_& m) {
  using Release = py::call_guard<py::gil_scoped_release>;
  py::class_<FaultProxy, ProxyPtr>(m, "_FaultProxy", R"doc(
The C++ TCP proxy behind cpcsync.testing.FaultProxy (use that class instead).)doc")
      .def(py::init([](const std::string& upstream_host, py::handle upstream_port,
                       const std::string& listen_host, py::handle listen_port, py::handle seed) {
             FaultProxyOptions o;
             o.upstream_host = upstream_host;
             o.upstream_port = Port(upstream_port, "upstream port", false);
             o.listen_host = listen_host;
             o.listen_port = Port(listen_port, "listen port", true);
             if (!seed.is_none()) {
               const long long s = StrictInt(seed, "seed");
               if (s < 0) ThrowInvalid("seed must be an int >= 0");
               o.seed = static_cast<uint64_t>(s);
             }
             return Held(std::make_unique<FaultProxy>(std::move(o)));
           }),
           py::arg("upstream_host"), py::arg("upstream_port"), py::arg("listen_host"),
           py::arg("listen_port"), py::arg("seed"))
      .def("start", &FaultProxy::Start, Release(),
           "Bind the listener and start the I/O thread (GIL released).")
      .def("stop", &FaultProxy::Stop, Release(),
           "Close everything and join the I/O thread (GIL released). Idempotent.")
      .def("disable", &FaultProxy::Disable, Release(),
           "Stop listening and reset every open connection (GIL released).")
      .def("enable", &FaultProxy::Enable, Release(),
           "Listen again on the same port (GIL released).")
      .def(
          "add_toxic",
          [](FaultProxy& p, const std::string& type, const std::string& stream, py::handle toxicity,
             py::handle name, const py::dict& attributes) {
            ToxicSpec spec;
            spec.type = type;
            spec.stream = Stream(stream);
            spec.toxicity = Toxicity(toxicity);
            if (!name.is_none()) {
              if (!py::isinstance<py::str>(name)) ThrowInvalid("name must be a str or None");
              spec.name = name.cast<std::string>();
              if (spec.name.empty()) ThrowInvalid("name must not be empty");
            }
            spec.attributes = Attributes(attributes);
            py::gil_scoped_release release;
            return p.AddToxic(std::move(spec));
          },
          py::arg("type"), py::arg("stream"), py::arg("toxicity"), py::arg("name"),
          py::arg("attributes"), "Add a toxic (GIL released while it takes effect); its name.")
      .def(
          "update_toxic",
          [](FaultProxy& p, const std::string& name, const py::dict& attributes,
             py::handle toxicity) {
            const auto attrs = Attributes(attributes);
            std::optional<double> t;
            if (!toxicity.is_none()) t = Toxicity(toxicity);
            py::gil_scoped_release release;
            p.UpdateToxic(name, attrs, t);
          },
          py::arg("name"), py::arg("attributes"), py::arg("toxicity"),
          "Change a toxic's attributes and/or toxicity (GIL released).")
      .def("remove_toxic", &FaultProxy::RemoveToxic, py::arg("name"), Release(),
           "Remove a toxic (GIL released while that takes effect).")
      .def(
          "toxics",
          [](const FaultProxy& p) {
            py::list out;
            for (const ToxicSpec& t : p.Toxics()) out.append(ToxicDict(t));
            return out;
          },
          "The toxics in the order added, as dicts.")
      .def("stats", &StatsDict,
           "Counters: connections, active, bytes_upstream, bytes_downstream, upstream_failures, "
           "held_bytes, held_memory.")
      .def_property_readonly("running", &FaultProxy::running, "True between start() and stop().")
      .def_property_readonly("enabled", &FaultProxy::enabled, "False after disable().")
      .def_property_readonly("listen_host", &FaultProxy::listen_host, "The listening host.")
      .def_property_readonly("port", &FaultProxy::port, "The listening port (0 before start()).")
      .def_property_readonly("upstream_host", &FaultProxy::upstream_host, "The upstream host.")
      .def_property_readonly("upstream_port", &FaultProxy::upstream_port, "The upstream port.")
      .def_property_readonly("seed", &FaultProxy::seed, "The seed of the proxy's random draws.");
}

}  // namespace cpcsync::py_bindings
