// cpcsync.NetworkMonitor, cpcsync.Probe and cpcsync.TcpProbe.
//
// GIL rules (DESIGN.md, Threading and the GIL):
//  - every call that can block (set_connected runs observers, wait_until, start,
//    stop, probe checks, dropping the monitor) releases the GIL;
//  - Python observers and probes run on C++ threads with the GIL taken for the call
//    only; the monitor calls them with none of its locks held, so taking the GIL
//    there cannot deadlock against a Python thread waiting for a monitor lock;
//  - a Python exception from an observer or probe is caught with the GIL held,
//    turned into a C++ exception carrying its text, and logged and counted by the
//    monitor; it never reaches a C++ thread's top or ends the probe thread;
//  - Python callables kept by C++ objects are released with the GIL held (or leaked
//    when the interpreter is finalizing), whatever thread drops the last reference.
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <stdexcept>

#include "bindings.h"
#include "cpcsync/errors.h"
#include "cpcsync/network_monitor.h"
#include "cpcsync/tcp_probe.h"

namespace cpcsync::py_bindings {
namespace {

using MonitorPtr = std::shared_ptr<NetworkMonitor>;

// A Python callable owned by C++ objects that may die on any thread, with or without
// the GIL. Call() takes the GIL for the call only.
class PyCallable {
 public:
  explicit PyCallable(py::object fn) : fn_(std::move(fn)) {}
  PyCallable(const PyCallable&) = delete;
  PyCallable& operator=(const PyCallable&) = delete;

  // Calls fn(args...) and returns the truth of its result (only evaluated when
  // `truth`). A Python exception is rethrown as std::runtime_error("<what> raised
  // <exception>") once the GIL is released.
  template <typename... Args>
  bool Call(const char* what, bool truth, Args&&... args) const {
    PythonCall call(what);
    std::string error;
    bool result = false;
    {
      py::gil_scoped_acquire gil;
      try {
        py::object r = fn_.get()(std::forward<Args>(args)...);
        if (truth) {
          const int t = PyObject_IsTrue(r.ptr());
          if (t < 0) throw py::error_already_set();
          result = t == 1;
        }
      } catch (py::error_already_set& e) {
        error = e.what();  // e is destroyed here, with the GIL held
      }
    }
    if (!error.empty()) throw std::runtime_error(std::string(what) + " raised " + error);
    return result;
  }

 private:
  PyRef fn_;
};

// A Python callable `fn() -> bool` as a Probe.
class PyCallableProbe final : public Probe {
 public:
  explicit PyCallableProbe(py::object fn) : fn_(std::make_shared<PyCallable>(std::move(fn))) {}
  bool Check(double) override { return fn_->Call("the Python probe", true); }

 private:
  std::shared_ptr<PyCallable> fn_;
};

NetworkMonitor::Observer PyObserver(py::object fn) {
  auto callable = std::make_shared<PyCallable>(std::move(fn));
  return [callable](bool connected) { callable->Call("a Python observer", false, connected); };
}

// Python holds monitors through this: when the last reference goes, stopping the
// monitor's thread (which may be waiting for the GIL in an observer) happens with
// the GIL released.
MonitorPtr ReleasingGilOnDestroy(MonitorPtr monitor) {
  NetworkMonitor* raw = monitor.get();
  return MonitorPtr(raw, [owned = std::move(monitor)](NetworkMonitor*) mutable {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      owned.reset();
    } else {
      owned.reset();
    }
  });
}

bool StrictBool(py::handle obj, const char* name) {
  if (!PyBool_Check(obj.ptr())) throw py::type_error(std::string(name) + " must be a bool");
  return obj.ptr() == Py_True;
}

std::optional<double> OptSeconds(py::handle obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  return StrictSeconds(obj, name);
}

int PositiveCount(py::handle obj, const char* name) {
  const long long n = StrictInt(obj, name);
  if (n < 1 || n > 1'000'000) ThrowInvalid(std::string(name) + " must be an int in 1..1000000");
  return static_cast<int>(n);
}

std::shared_ptr<Probe> ProbeFrom(py::handle probe) {
  if (probe.is_none()) return nullptr;
  if (py::isinstance<Probe>(probe)) return probe.cast<std::shared_ptr<Probe>>();
  if (!PyCallable_Check(probe.ptr())) {
    throw py::type_error("probe must be a cpcsync.Probe (e.g. TcpProbe), a callable or None");
  }
  return std::make_shared<PyCallableProbe>(py::reinterpret_borrow<py::object>(probe));
}

py::object OptionalToPy(const std::optional<double>& v) {
  return v ? py::object(py::float_(*v)) : py::object(py::none());
}

py::dict StatsDict(const NetworkMonitor& m) {
  const NetworkMonitorStats s = m.Stats();
  py::dict d;
  d["connected"] = s.connected;
  d["probing"] = s.probing;
  d["pending"] = s.pending ? py::object(py::bool_(*s.pending)) : py::object(py::none());
  d["transitions"] = s.transitions;
  d["damped"] = s.damped;
  d["observer_calls"] = s.observer_calls;
  d["observer_errors"] = s.observer_errors;
  d["probes"] = s.probes;
  d["probe_failures"] = s.probe_failures;
  d["probe_timeouts"] = s.probe_timeouts;
  d["passive_failures"] = s.passive_failures;
  d["passive_successes"] = s.passive_successes;
  d["consecutive_successes"] = s.consecutive_successes;
  d["consecutive_failures"] = s.consecutive_failures;
  d["last_transition_at"] = OptionalToPy(s.last_transition_at);
  return d;
}

std::string Repr(const NetworkMonitor& m) {
  const NetworkMonitorStats s = m.Stats();
  std::string r = std::string("NetworkMonitor(connected=") + (s.connected ? "True" : "False");
  if (m.probe()) r += s.probing ? ", probing" : ", not probing";
  if (s.pending) r += std::string(", pending=") + (*s.pending ? "True" : "False");
  return r + ", transitions=" + std::to_string(s.transitions) + ")";
}

}  // namespace

void InitMonitor(py::module_& m) {
  py::class_<Probe, std::shared_ptr<Probe>>(m, "Probe", R"doc(
Base class of the built-in reachability probes (TcpProbe). A NetworkMonitor also
accepts any callable `fn() -> bool` as its probe; it need not derive from this.)doc")
      .def(
          "check",
          [](Probe& p, py::handle timeout) {
            const double t = StrictSeconds(timeout, "timeout");
            py::gil_scoped_release release;
            return p.Check(t);
          },
          py::arg("timeout"),
          "Run one check (GIL released) and return whether the target is reachable.");

  py::class_<TcpProbe, Probe, std::shared_ptr<TcpProbe>>(m, "TcpProbe", R"doc(
Succeeds when a TCP handshake with host:port completes within `timeout` seconds
(a real non-blocking connect; nothing is sent and the connection is closed at once).
Refused, unreachable, unresolvable and timed-out connections are failures. Calling
the probe runs one check and returns a bool.)doc")
      .def(py::init([](const std::string& host, py::handle port, py::handle timeout) {
             const long long p = StrictInt(port, "port");
             if (p < 1 || p > 65535) ThrowInvalid("port must be an int in 1..65535");
             return std::make_shared<TcpProbe>(host, static_cast<uint16_t>(p),
                                               StrictSeconds(timeout, "timeout"));
           }),
           py::arg("host"), py::arg("port"), py::arg("timeout") = 1.0)
      .def(
          "__call__",
          [](TcpProbe& p) {
            py::gil_scoped_release release;
            return p.Check();
          },
          "Run one check with the probe's timeout (GIL released); True if the handshake "
          "completed.")
      .def_property_readonly("host", &TcpProbe::host, "The host name or address to connect to.")
      .def_property_readonly("port", &TcpProbe::port, "The TCP port.")
      .def_property_readonly("timeout", &TcpProbe::timeout, "Seconds a check may take.")
      .def("__repr__", [](const TcpProbe& p) {
        return "TcpProbe('" + p.host() + "', " + std::to_string(p.port()) +
               ", timeout=" + std::to_string(p.timeout()) + ")";
      });

  py::class_<NetworkMonitor, MonitorPtr>(m, "NetworkMonitor", R"doc(
Whether the network is usable, and who to tell when that changes.

The state changes by set_connected(), or, once start() was called, by running
`probe` every `interval` seconds (at least 0.001) on `clock`'s monotonic
timeline: `up_after` consecutive successes bring it online, `down_after`
consecutive failures take it offline. A probe that returns false, raises, or runs
longer than `probe_timeout` (default: the probe's own timeout, else `interval`) is
a failure. report_failure()/report_success() make a probing monitor probe at once.
With min_transition_interval > 0, transitions are at least that far apart: a
change requested sooner is applied when the window ends if it is still wanted
(flap damping). Observers `fn(connected: bool)` are called once per transition, in
subscription order, on the thread that caused it; one that raises is logged and
counted (observer_errors). Observers may call set_connected() of this or another
monitor (it then returns without waiting for its delivery, which follows the
current round).)doc")
      .def(py::init([](py::handle connected, py::handle probe, py::handle interval,
                       py::handle up_after, py::handle down_after, std::shared_ptr<Clock> clock,
                       py::handle min_transition_interval, py::handle probe_timeout) {
             NetworkMonitorOptions o;
             o.connected = StrictBool(connected, "connected");
             o.interval = StrictSeconds(interval, "interval");
             o.up_after = PositiveCount(up_after, "up_after");
             o.down_after = PositiveCount(down_after, "down_after");
             o.min_transition_interval =
                 StrictSeconds(min_transition_interval, "min_transition_interval");
             o.probe_timeout = OptSeconds(probe_timeout, "probe_timeout");
             return ReleasingGilOnDestroy(
                 std::make_shared<NetworkMonitor>(o, ProbeFrom(probe), std::move(clock)));
           }),
           py::arg("connected") = false, py::arg("probe") = py::none(), py::arg("interval") = 5.0,
           py::arg("up_after") = 1, py::arg("down_after") = 1, py::arg("clock") = nullptr,
           py::arg("min_transition_interval") = 0.0, py::arg("probe_timeout") = py::none())
      .def_property_readonly("is_connected", &NetworkMonitor::IsConnected,
                             "True while the monitor considers the network usable.")
      .def(
          "set_connected",
          [](NetworkMonitor& mon, py::handle connected) {
            const bool state = StrictBool(connected, "connected");
            py::gil_scoped_release release;
            mon.SetConnected(state);
          },
          py::arg("connected"),
          "Set the state (GIL released). On a change, observers are called before it returns "
          "(unless flap damping defers the change, or it is called from an observer).")
      .def(
          "subscribe",
          [](NetworkMonitor& mon, py::handle fn) {
            if (!PyCallable_Check(fn.ptr())) throw py::type_error("observer must be callable");
            return mon.Subscribe(PyObserver(py::reinterpret_borrow<py::object>(fn)));
          },
          py::arg("fn"),
          "Call fn(connected: bool) on every transition from now on; returns a token for "
          "unsubscribe().")
      .def("unsubscribe", &NetworkMonitor::Unsubscribe, py::arg("token"),
           "Stop calling the observer subscribed with `token`; False if it was not subscribed.")
      .def(
          "_subscribe_noop", [](NetworkMonitor& mon) { return mon.Subscribe([](bool) {}); },
          "Subscribe a C++ observer that does nothing (benchmarks).")
      .def(
          "start",
          [](NetworkMonitor& mon) {
            py::gil_scoped_release release;
            mon.Start();
          },
          "Start probing: a check at once, then every `interval`. No-op without a probe or "
          "when already probing.")
      .def(
          "stop",
          [](NetworkMonitor& mon) {
            py::gil_scoped_release release;
            mon.Stop();
          },
          "Stop probing. Returns at once, even while a probe is blocked (that check is "
          "abandoned and its result ignored).")
      .def_property_readonly("probing", &NetworkMonitor::probing,
                             "True between start() and stop().")
      .def(
          "wait_until",
          [](NetworkMonitor& mon, py::handle state, py::handle timeout) {
            const bool s = StrictBool(state, "state");
            const std::optional<double> t = OptSeconds(timeout, "timeout");
            py::gil_scoped_release release;
            return mon.WaitUntil(s, t);
          },
          py::arg("state"), py::arg("timeout") = py::none(),
          "Block (GIL released) until is_connected == state or `timeout` seconds pass on the "
          "monitor's clock (None: no limit). Returns whether the state was reached.")
      .def(
          "wait_for_probes",
          [](NetworkMonitor& mon, py::handle count, py::handle timeout) {
            const long long n = StrictInt(count, "count");
            if (n < 0) ThrowInvalid("count must be >= 0");
            const std::optional<double> t = OptSeconds(timeout, "timeout");
            py::gil_scoped_release release;
            return mon.WaitForProbes(static_cast<uint64_t>(n), t);
          },
          py::arg("count"), py::arg("timeout") = py::none(),
          "Block (GIL released) until `count` probe checks in all have ended and been applied, "
          "or `timeout` seconds pass on the clock. Returns whether the count was reached.")
      .def("report_failure", &NetworkMonitor::ReportFailure,
           "Passive signal (a delivery failed): a probing monitor probes at once. Never changes "
           "the state by itself.")
      .def("report_success", &NetworkMonitor::ReportSuccess,
           "Passive signal (a delivery worked): a probing monitor probes at once. Never changes "
           "the state by itself.")
      .def_property_readonly("observer_errors", &NetworkMonitor::observer_errors,
                             "How many observer calls raised.")
      .def_property_readonly("clock", &NetworkMonitor::clock, "The monitor's clock.")
      .def("stats", &StatsDict,
           "Counters and state: connected, probing, pending (a transition deferred by damping, "
           "or None), transitions, damped, observer_calls, observer_errors, probes, "
           "probe_failures, probe_timeouts, passive_failures, passive_successes, "
           "consecutive_successes, consecutive_failures, last_transition_at (clock time or "
           "None).")
      .def("__repr__", &Repr);
}

}  // namespace cpcsync::py_bindings
