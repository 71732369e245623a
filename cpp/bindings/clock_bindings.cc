#include <pybind11/pybind11.h>

#include "bindings.h"
#include "cpcsync/clock.h"

namespace cpcsync::py_bindings {

void InitClock(py::module_& m) {
  py::class_<Clock, std::shared_ptr<Clock>>(m, "Clock", R"doc(
Base class of cpcsync's clocks: the only source of time for queues, monitors and
engines. Use SystemClock (the default) or VirtualClock in tests.)doc")
      .def("now", &Clock::Now, "Seconds since the clock's epoch (Unix epoch for SystemClock).")
      .def_property_readonly("is_virtual", &Clock::IsVirtual,
                             "True when time moves only by advance().");

  py::class_<SystemClock, Clock, std::shared_ptr<SystemClock>>(m, "SystemClock",
                                                                "The real wall clock.")
      .def(py::init<>());

  py::class_<VirtualClock, Clock, std::shared_ptr<VirtualClock>>(m, "VirtualClock", R"doc(
A clock that moves only when advance() is called. Anything waiting on it (queue
waits, retries, probes) wakes as soon as virtual time passes its deadline, so a test
runs hours of retries in milliseconds, deterministically.)doc")
      .def(py::init<double>(), py::arg("start") = 0.0)
      .def("advance", &VirtualClock::Advance, py::arg("seconds"),
           py::call_guard<py::gil_scoped_release>(),
           "Move time forward by `seconds` (finite, >= 0) and wake whatever waits on it.")
      .def("advance_to", &VirtualClock::AdvanceTo, py::arg("t"),
           py::call_guard<py::gil_scoped_release>(), "Move time to `t` if it is later than now.")
      .def("__repr__", [](const VirtualClock& c) {
        return "VirtualClock(now=" + std::to_string(c.Now()) + ")";
      });
}

}  // namespace cpcsync::py_bindings
