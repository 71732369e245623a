// cpcsync.testing.FaultyTransport's C++ half: _core.FaultyTransport, _core.Attempt.
// Friendly fault specs (None, True/False, "kind", exception instances) are turned
// into Faults by cpcsync._engine.fault_spec, so the rules live in one place.
#include <pybind11/stl.h>

#include "bindings.h"
#include "cpcsync/errors.h"
#include "cpcsync/faulty_transport.h"

namespace cpcsync::py_bindings {
namespace {

// A fault spec, or nullopt for "succeed". Needs the GIL.
std::optional<Fault> ToFault(py::handle spec) {
  py::object t = py::module_::import("cpcsync._engine").attr("fault_spec")(spec);
  if (t.is_none()) return std::nullopt;
  auto tup = t.cast<py::tuple>();
  Fault f;
  f.kind = Fault::ParseKind(tup[0].cast<std::string>());
  f.message = tup[1].cast<std::string>();
  f.retry_after = tup[2].cast<double>();
  f.delay = tup[3].cast<double>();
  if (!tup[4].is_none()) f.remote.value = PayloadBytes(tup[4]);
  if (!tup[5].is_none()) f.remote.hlc = tup[5].cast<uint64_t>();
  if (!tup[6].is_none()) f.remote.version = tup[6].cast<int64_t>();
  return f;
}

// A spec that must be a failure: None means the default (transient).
Fault ToFailure(py::handle spec) {
  if (spec.is_none()) return Fault{};
  auto f = ToFault(spec);
  if (!f) ThrowInvalid("a failure was expected, got a success spec");
  return *f;
}

using FaultyPtr = std::shared_ptr<FaultyTransport>;

}  // namespace

void InitFaulty(py::module_& m) {
  py::class_<Attempt>(m, "Attempt", R"doc(
One call of a FaultyTransport: time (clock seconds when it started), op_id, key,
priority, outcome ('delivered', 'transient', 'network', 'retry_after', 'permanent',
'conflict'), error (empty when delivered) and latency (seconds waited on the clock).)doc")
      .def_readonly("time", &Attempt::time, "Clock time when the call started.")
      .def_readonly("op_id", &Attempt::op_id, "The operation's id.")
      .def_readonly("key", &Attempt::key, "The operation's key (None without one).")
      .def_readonly("priority", &Attempt::priority, "The operation's priority.")
      .def_readonly("outcome", &Attempt::outcome, "What the call returned, by kind.")
      .def_readonly("error", &Attempt::error, "The failure's text; empty when delivered.")
      .def_readonly("latency", &Attempt::latency, "Seconds the call waited on the clock.")
      .def("__repr__", [](const Attempt& a) {
        return "Attempt(time=" + std::to_string(a.time) + ", op_id=" + std::to_string(a.op_id) +
               ", outcome='" + a.outcome + "')";
      });

  py::class_<FaultyTransport, Transport, FaultyPtr>(m, "FaultyTransport", R"doc(
A transport that injects scripted failures (the C++ core of
cpcsync.testing.FaultyTransport; use that class).)doc")
      .def(py::init([](py::object inner, py::object pattern, double failure_rate,
                       std::optional<uint64_t> seed, double latency, double jitter,
                       std::shared_ptr<Clock> clock, py::object failure, py::object loop,
                       double timeout) {
             FaultyTransportOptions o;
             if (!pattern.is_none()) {
               for (py::handle item : pattern) o.pattern.push_back(ToFault(item));
             }
             o.failure_rate = failure_rate;
             o.rate_fault = ToFailure(failure);
             o.seed = seed;
             o.latency = latency;
             o.jitter = jitter;
             o.timeout = timeout;
             std::shared_ptr<Transport> in =
                 inner.is_none() ? nullptr : TransportFromPython(inner, loop);
             return std::make_shared<FaultyTransport>(std::move(in), std::move(o),
                                                      std::move(clock));
           }),
           py::arg("inner") = py::none(), py::kw_only(), py::arg("pattern") = py::none(),
           py::arg("failure_rate") = 0.0, py::arg("seed") = py::none(), py::arg("latency") = 0.0,
           py::arg("jitter") = 0.0, py::arg("clock") = nullptr, py::arg("failure") = py::none(),
           py::arg("loop") = py::none(), py::arg("timeout") = 10.0)
      .def(
          "__call__",
          [](FaultyTransport& t, const Operation& op) {
            DeliveryResult r;
            {
              py::gil_scoped_release release;
              r = t.Send(op);
            }
            if (r.kind == DeliveryResult::Kind::kDelivered) return;
            py::module_::import("cpcsync._engine").attr("raise_result")(*RaiseArgs(r));
          },
          py::arg("op"),
          "Send one operation as an engine would; a failure is raised as the exception a "
          "Python transport would raise (TransientError, NetworkError, PermanentError, "
          "ConflictError, RetryAfter).")
      .def(
          "fail_next",
          [](FaultyTransport& t, int n, py::object error) { t.FailNext(n, ToFailure(error)); },
          py::arg("n"), py::arg("error") = py::none(),
          "The next n calls fail with `error` (default: a transient failure).")
      .def(
          "fail_for",
          [](FaultyTransport& t, double seconds, py::object error) {
            t.FailFor(seconds, ToFailure(error));
          },
          py::arg("seconds"), py::arg("error") = py::none(),
          "Calls starting within the next `seconds` on the clock fail with `error`.")
      .def("set_partitioned", &FaultyTransport::SetPartitioned, py::arg("on"),
           "Cut (True) or restore (False) the link by hand: partitioned calls fail at once "
           "with a network error.")
      .def("add_partition", &FaultyTransport::AddPartition, py::arg("start"), py::arg("end"),
           "Schedule a partition over [start, end) on the clock.")
      .def("flap", &FaultyTransport::Flap, py::arg("period"), py::arg("count"),
           py::arg("start") = py::none(),
           "Flapping: down for `period` seconds, then up for `period`, `count` times, from "
           "`start` (default now) on the clock.")
      .def("set_latency", &FaultyTransport::SetLatency, py::arg("latency"), py::arg("jitter") = 0.0,
           "Every call waits latency + uniform[0, jitter] seconds on the clock.")
      .def(
          "set_failure_rate",
          [](FaultyTransport& t, double rate, py::object error) {
            t.SetFailureRate(rate, ToFailure(error));
          },
          py::arg("rate"), py::arg("error") = py::none(),
          "Each call fails with `error` with probability `rate` (seeded generator).")
      .def("heal", &FaultyTransport::Heal,
           "Drop every scripted fault, partition and latency: calls succeed again.")
      .def_property_readonly("partitioned", &FaultyTransport::Partitioned,
                             "True when a call now would be partitioned.")
      .def_property_readonly("history", &FaultyTransport::History,
                             "Every call so far, in order: a list of Attempt.")
      .def_property_readonly("calls", &FaultyTransport::Calls,
                             "Calls started so far (history records them when they end).")
      .def("wait_for_calls", &FaultyTransport::WaitForCalls, py::arg("n"),
           py::arg("timeout") = py::none(), py::call_guard<py::gil_scoped_release>(),
           "Block (real time, GIL released) until `n` calls have started; False on timeout. "
           "For tests of threaded engines: know a call is under way before moving the clock.")
      .def("clear_history", &FaultyTransport::ClearHistory, "Forget the recorded calls.")
      .def("close", &FaultyTransport::Close, py::call_guard<py::gil_scoped_release>(),
           "End every wait on the clock now and later (for shutdown).")
      .def_property_readonly("clock", &FaultyTransport::clock, "The transport's clock.");
}

}  // namespace cpcsync::py_bindings
