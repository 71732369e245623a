#include <pybind11/pybind11.h>

#include "bindings.h"
#include "cpcsync/clock.h"
#include "cpcsync/hlc.h"

namespace cpcsync::py_bindings {

void InitClock(py::module_& m) {
  py::class_<Clock, std::shared_ptr<Clock>>(m, "Clock", R"doc(
Base class of cpcsync's clocks: the only source of time for queues, monitors and
engines. Use SystemClock (the default) or VirtualClock in tests.)doc")
      .def("now", &Clock::Monotonic, R"doc(
Seconds on the clock's monotonic timeline: the time base of every wait, timeout,
interval, backoff delay and of the times a queue stores (op.created_at,
op.next_attempt_at, ...). It never jumps when the wall clock is stepped. For
SystemClock it is anchored to the wall clock once per boot, so it reads as roughly
Unix seconds (but is not the wall clock after a step); compare it with
time.monotonic() differences, not with time.time().)doc")
      .def("wall", &Clock::Now, R"doc(
The wall clock in seconds since the Unix epoch (or the VirtualClock's start, plus
its step_wall() steps). It can jump either way; only HLC stamps use it.)doc")
      .def_property_readonly("is_virtual", &Clock::IsVirtual,
                             "True when time moves only by advance().");

  py::class_<SystemClock, Clock, std::shared_ptr<SystemClock>>(m, "SystemClock",
                                                               R"doc(
The system's clocks: now() is the monotonic boot-time clock anchored to wall time,
wall() the real wall clock.)doc")
      .def(py::init<>());

  py::class_<VirtualClock, Clock, std::shared_ptr<VirtualClock>>(m, "VirtualClock", R"doc(
A clock that moves only when advance() is called (both now() and wall()), or
step_wall() (wall() alone). Anything waiting on it (queue
waits, retries, probes) wakes as soon as virtual time passes its deadline, so a test
runs hours of retries in milliseconds, deterministically.)doc")
      .def(py::init([](double start, bool auto_advance) {
             auto c = std::make_shared<VirtualClock>(start);
             c->SetAutoAdvance(auto_advance);
             return c;
           }),
           py::arg("start") = 0.0, py::arg("auto_advance") = false)
      .def_property("auto_advance", &VirtualClock::AutoAdvance, &VirtualClock::SetAutoAdvance,
                    "When True, a wait on this clock with a deadline moves time to the deadline at "
                    "once instead of blocking: for one thread that drives everything (Simulation). "
                    "With several threads waiting, which jumps first is up to the scheduler.")
      .def("advance", &VirtualClock::Advance, py::arg("seconds"),
           py::call_guard<py::gil_scoped_release>(),
           "Move time forward by `seconds` (finite, >= 0) and wake whatever waits on it.")
      .def("advance_to", &VirtualClock::AdvanceTo, py::arg("t"),
           py::call_guard<py::gil_scoped_release>(), "Move time to `t` if it is later than now.")
      .def("step_wall", &VirtualClock::StepWall, py::arg("seconds"),
           py::call_guard<py::gil_scoped_release>(),
           "Step only the wall clock (wall()) by `seconds`, either sign, as NTP does to a "
           "device without a real-time clock. now() does not move, so nothing that waits "
           "is hurried or delayed by it; HLC stamps see the new wall time.")
      .def("__repr__", [](const VirtualClock& c) {
        const double now = c.Monotonic(), wall = c.Now();
        if (wall == now) return "VirtualClock(now=" + std::to_string(now) + ")";
        return "VirtualClock(now=" + std::to_string(now) + ", wall=" + std::to_string(wall) + ")";
      });

  py::class_<HybridLogicalClock, std::shared_ptr<HybridLogicalClock>>(m, "HybridLogicalClock",
                                                                      R"doc(
A hybrid logical clock (Kulkarni et al., 2014): timestamps that order events
across machines whose wall clocks disagree. A timestamp is an int with physical
milliseconds in the high 48 bits and a logical counter in the low 16. now() is
strictly greater than every timestamp returned or observed before, even when the
wall clock jumps backwards. Queues stamp every operation with one (op.hlc).)doc")
      .def(py::init([](std::shared_ptr<Clock> clock, uint64_t last) {
             return std::make_shared<HybridLogicalClock>(
                 clock ? std::move(clock) : SystemClock::Default(), last);
           }),
           py::arg("clock") = nullptr, py::arg("last") = 0,
           "A clock reading `clock` (SystemClock by default) whose stamps start after `last`.")
      .def("now", &HybridLogicalClock::Now, "A new timestamp for a local event.")
      .def(
          "observe",
          [](HybridLogicalClock& c, py::handle remote) {
            c.Observe(HlcStampArg(remote, "remote"));
          },
          py::arg("remote"),
          "Merge a remote timestamp: later now() results are after it. InvalidArgumentError "
          "for a stamp outside [0, 2**64) or after year 9999 (it would leave no room above).")
      .def_property_readonly("last", &HybridLogicalClock::Last,
                             "The latest timestamp issued or observed.")
      .def_static("physical_ms", &HybridLogicalClock::PhysicalMs, py::arg("hlc"),
                  "The wall-clock milliseconds part of a timestamp.")
      .def_static("logical", &HybridLogicalClock::Logical, py::arg("hlc"),
                  "The logical counter part of a timestamp.")
      .def_static("pack", &HybridLogicalClock::Pack, py::arg("physical_ms"), py::arg("logical"),
                  "Build a timestamp from milliseconds and a counter (0..65535).");
}

}  // namespace cpcsync::py_bindings
