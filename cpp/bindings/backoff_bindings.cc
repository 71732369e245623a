// Backoff strategies: the built-ins, composition, Python subclasses (through a
// trampoline) and plain callables, all usable from C++ as a BackoffStrategy.
//
// Calls into Python take the GIL for the call only, and no C++ lock is held then:
// the built-ins never call Python, and the composites call their parts lock-free.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cmath>
#include <exception>
#include <thread>
#include <vector>

#include "bindings.h"
#include "cpcsync/backoff.h"
#include "cpcsync/errors.h"

namespace cpcsync::py_bindings {
namespace {

using StrategyPtr = std::shared_ptr<BackoffStrategy>;

// n from Python: an int (not bool); values past INT_MAX act as INT_MAX (every
// strategy is capped long before), values below 1 are rejected by the strategy.
int AttemptArg(py::handle n) {
  const long long v = StrictInt(n, "n");
  if (v > INT_MAX) return INT_MAX;
  if (v < 1) CheckAttempt(v < INT_MIN ? INT_MIN : static_cast<int>(v));
  return static_cast<int>(v);
}

// A delay returned by Python code: a real number, finite and >= 0. Needs the GIL.
double DelayFromPython(py::handle result, py::handle source) {
  if (PyFloat_CheckExact(result.ptr())) {  // the common case, without building messages
    const double d = PyFloat_AS_DOUBLE(result.ptr());
    if (std::isfinite(d) && d >= 0) return d;
  }
  const std::string who = std::string(py::repr(source));
  const double d = StrictSeconds(result, ("the delay returned by " + who).c_str());
  return CheckDelay(d, who);
}

// The C++ side of a Python subclass of cs.BackoffStrategy. trampoline_self_life_support
// (with py::smart_holder) keeps the Python object alive while C++ holds a shared_ptr.
class PyBackoffStrategy : public BackoffStrategy, public py::trampoline_self_life_support {
 public:
  double NextDelay(int attempt) override {
    CheckAttempt(attempt);
    PythonCall call("the Python backoff strategy");
    py::gil_scoped_acquire gil;
    py::function override =
        py::get_override(static_cast<const BackoffStrategy*>(this), "next_delay");
    if (!override) {
      PyErr_Format(PyExc_NotImplementedError, "%s must override next_delay(n)",
                   Py_TYPE(Self().ptr())->tp_name);
      throw py::error_already_set();
    }
    // An exception raised by the override propagates as error_already_set, which
    // carries the original Python exception back to Python callers.
    py::object result = override(attempt);
    return DelayFromPython(result, Self());
  }

  StrategyPtr Clone() const override {
    PythonCall call("the Python backoff strategy");
    py::gil_scoped_acquire gil;
    py::function override = py::get_override(static_cast<const BackoffStrategy*>(this), "clone");
    if (override) return override().cast<StrategyPtr>();
    // No clone(): the subclass declares no per-sequence state, so sharing is exact.
    return Self().cast<StrategyPtr>();
  }

  bool Stateful() const override {
    PythonCall call("the Python backoff strategy");
    py::gil_scoped_acquire gil;
    return static_cast<bool>(py::get_override(static_cast<const BackoffStrategy*>(this), "clone"));
  }

  std::string Describe() const override {
    PythonCall call;
    if (!call) return "BackoffStrategy (Python; the interpreter is exiting)";
    py::gil_scoped_acquire gil;
    return py::repr(Self());
  }

 private:
  // The Python object this is the C++ part of. Needs the GIL.
  py::object Self() const { return py::cast(static_cast<const BackoffStrategy*>(this)); }
};

}  // namespace

// A plain Python callable fn(n) -> float as a strategy.
class CallableBackoff final : public BackoffStrategy {
 public:
  explicit CallableBackoff(py::object fn) : fn_(std::move(fn)) {}  // called with the GIL

  double NextDelay(int attempt) override {
    CheckAttempt(attempt);
    PythonCall call("the Python backoff strategy");
    py::gil_scoped_acquire gil;
    py::object result = fn_.get()(attempt);
    return DelayFromPython(result, fn_.get());
  }

  StrategyPtr Clone() const override {
    PythonCall call("the Python backoff strategy");
    py::gil_scoped_acquire gil;
    return std::make_shared<CallableBackoff>(fn_.get());
  }

  std::string Describe() const override {
    PythonCall call;
    if (!call) return "CallableBackoff (the interpreter is exiting)";
    py::gil_scoped_acquire gil;
    return "CallableBackoff(" + std::string(py::repr(fn_.get())) + ")";
  }

  py::object fn() const { return fn_.get(); }  // needs the GIL

 private:
  PyRef fn_;  // the last owner may be a C++ thread without the GIL
};

StrategyPtr BackoffFromPython(py::handle obj) {
  if (py::isinstance<BackoffStrategy>(obj)) return obj.cast<StrategyPtr>();
  if (PyCallable_Check(obj.ptr())) {
    return std::make_shared<CallableBackoff>(py::reinterpret_borrow<py::object>(obj));
  }
  throw py::type_error(
      "backoff must be a cpcsync.BackoffStrategy or a callable fn(n) -> float, not " +
      std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

namespace {

std::optional<uint64_t> SeedArg(py::handle seed) {
  if (seed.is_none()) return std::nullopt;
  const long long v = StrictInt(seed, "seed");  // TypeError for non-ints
  if (v < 0 || v == LLONG_MAX) {
    // LLONG_MAX also stands for "larger": read the exact value as unsigned.
    const unsigned long long u = PyLong_AsUnsignedLongLong(seed.ptr());
    if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      ThrowInvalid("seed must be an int in [0, 2**64) or None");
    }
    return u;
  }
  return static_cast<uint64_t>(v);
}

StrategyPtr Add(StrategyPtr self, py::handle other, bool reflected) {
  StrategyPtr rhs;
  if (py::isinstance<BackoffStrategy>(other)) {
    rhs = other.cast<StrategyPtr>();
  } else {
    const double x = StrictSeconds(other, "a delay added to a strategy");
    if (x == 0) return self;  // sum() starts from 0
    rhs = std::make_shared<ConstantBackoff>(x);
  }
  return reflected ? std::make_shared<SumBackoff>(rhs, self)
                   : std::make_shared<SumBackoff>(self, rhs);
}

bool IsNumberOrStrategy(py::handle h) {
  return py::isinstance<BackoffStrategy>(h) ||
         (!PyBool_Check(h.ptr()) && (PyLong_Check(h.ptr()) || PyFloat_Check(h.ptr())));
}

}  // namespace

void InitBackoff(py::module_& m) {
  py::class_<BackoffStrategy, PyBackoffStrategy, py::smart_holder>(m, "BackoffStrategy", R"doc(
How long to wait before retrying an operation that failed: next_delay(n) is the delay in
seconds after the n-th failed attempt (n >= 1), finite and >= 0.

Built-ins: ConstantBackoff, LinearBackoff, ExponentialBackoff. Compose them with `a + b`
(the delays add up, as tenacity's wait_combine), `a + 0.5` (a fixed extra delay) and
`a.capped(max_delay)` (no delay above max_delay).

Custom strategies: subclass and override next_delay(n) (call super().__init__() if you
define __init__); C++ (the engine) then calls it like a built-in, taking the GIL for
the call, and exceptions it raises propagate. A strategy whose delays depend on earlier
calls of the same retry sequence should also override clone() to return a fresh
instance; an engine then keeps one clone per operation. A plain function fn(n) -> float
works too, wrapped as CallableBackoff(fn).)doc")
      .def(py::init<>())
      .def(
          "next_delay",
          [](BackoffStrategy& self, py::handle n) { return self.NextDelay(AttemptArg(n)); },
          py::arg("n"),
          "Seconds to wait after the n-th failed attempt (n >= 1; InvalidArgumentError "
          "otherwise).")
      .def("clone", &BackoffStrategy::Clone,
           "A strategy with the same parameters and no history of earlier calls (a new "
           "retry sequence). Seeded strategies give each clone its own reproducible seed.")
      .def_property_readonly("stateful", &BackoffStrategy::Stateful,
                             "True when delays depend on earlier calls of the same sequence "
                             "(decorrelated jitter, or a subclass that overrides clone()).")
      .def(
          "capped",
          [](StrategyPtr self, double max_delay) -> StrategyPtr {
            return std::make_shared<CappedBackoff>(std::move(self), max_delay);
          },
          py::arg("max_delay"), "This strategy with every delay limited to max_delay seconds.")
      .def(
          "__add__",
          [](StrategyPtr self, py::handle other) -> py::object {
            if (!IsNumberOrStrategy(other))
              return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            return py::cast(Add(std::move(self), other, false));
          },
          py::is_operator(),
          "A strategy whose delays are this one's plus other's (or plus a number).")
      .def(
          "__radd__",
          [](StrategyPtr self, py::handle other) -> py::object {
            if (!IsNumberOrStrategy(other))
              return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            return py::cast(Add(std::move(self), other, true));
          },
          py::is_operator(), "number + strategy.");

  py::class_<ConstantBackoff, BackoffStrategy, py::smart_holder>(
      m, "ConstantBackoff", py::is_final(), "The same delay after every failure.")
      .def(py::init<double>(), py::arg("delay"))
      .def_property_readonly("delay", &ConstantBackoff::delay, "The delay in seconds.")
      .def("__repr__", &ConstantBackoff::Describe);

  py::class_<LinearBackoff, BackoffStrategy, py::smart_holder>(m, "LinearBackoff", py::is_final(),
                                                               R"doc(
Delays growing by a fixed step: min(max_delay, base + step * (n - 1)).)doc")
      .def(py::init<double, double, double>(), py::arg("base"), py::arg("step"),
           py::arg("max_delay") = 60.0)
      .def_property_readonly("base", &LinearBackoff::base, "The first delay.")
      .def_property_readonly("step", &LinearBackoff::step, "Added after each further failure.")
      .def_property_readonly("max_delay", &LinearBackoff::max_delay, "No delay exceeds this.")
      .def("__repr__", &LinearBackoff::Describe);

  py::class_<ExponentialBackoff, BackoffStrategy, py::smart_holder>(m, "ExponentialBackoff",
                                                                    py::is_final(), R"doc(
Exponential backoff with jitter, as in the AWS note "Exponential Backoff And Jitter".
With expo(n) = min(max_delay, base * factor ** (n - 1)):

- jitter="none":         expo(n)
- jitter="full":         uniform(0, expo(n))                (the default)
- jitter="equal":        expo(n) / 2 + uniform(0, expo(n) / 2)
- jitter="decorrelated": min(max_delay, uniform(base, previous * 3)), previous = base at
  n == 1 (or when n does not grow): this one remembers its sequence; see clone().

Any n, however large, gives a finite delay <= max_delay. seed (an int in [0, 2**64))
makes the delays reproducible (std::mt19937_64); without it the generator is seeded
from the OS. InvalidArgumentError (a ValueError) for a negative or non-finite base,
factor < 1, max_delay < base, or an unknown jitter. Thread-safe.)doc")
      .def(py::init([](double base, double factor, double max_delay, const std::string& jitter,
                       py::handle seed) {
             return std::make_shared<ExponentialBackoff>(base, factor, max_delay,
                                                         ParseJitter(jitter), SeedArg(seed));
           }),
           py::arg("base") = 0.1, py::arg("factor") = 2.0, py::arg("max_delay") = 60.0,
           py::arg("jitter") = "full", py::arg("seed") = py::none())
      .def_property_readonly("base", &ExponentialBackoff::base, "The first delay before jitter.")
      .def_property_readonly("factor", &ExponentialBackoff::factor, "Growth per failure.")
      .def_property_readonly("max_delay", &ExponentialBackoff::max_delay, "No delay exceeds this.")
      .def_property_readonly(
          "jitter", [](const ExponentialBackoff& b) { return JitterName(b.jitter()); },
          "'none', 'full', 'equal' or 'decorrelated'.")
      .def_property_readonly("seed", &ExponentialBackoff::seed, "The seed, or None.")
      .def(
          "expo", [](const ExponentialBackoff& b, py::handle n) { return b.Expo(AttemptArg(n)); },
          py::arg("n"), "min(max_delay, base * factor ** (n - 1)): the delay before jitter.")
      .def("__repr__", &ExponentialBackoff::Describe);

  py::class_<SumBackoff, BackoffStrategy, py::smart_holder>(m, "SumBackoff", py::is_final(),
                                                            R"doc(
Two strategies' delays added up: what `a + b` returns.)doc")
      .def(py::init<StrategyPtr, StrategyPtr>(), py::arg("a"), py::arg("b"))
      .def("__repr__", &SumBackoff::Describe);

  py::class_<CappedBackoff, BackoffStrategy, py::smart_holder>(m, "CappedBackoff", py::is_final(),
                                                               R"doc(
A strategy with every delay limited to max_delay: what `s.capped(max_delay)` returns.)doc")
      .def(py::init<StrategyPtr, double>(), py::arg("strategy"), py::arg("max_delay"))
      .def_property_readonly("max_delay", &CappedBackoff::max_delay, "The cap.")
      .def("__repr__", &CappedBackoff::Describe);

  py::class_<CallableBackoff, BackoffStrategy, py::smart_holder>(m, "CallableBackoff",
                                                                 py::is_final(), R"doc(
A plain function fn(n) -> float as a strategy: next_delay(n) calls fn(n), which must
return a finite number >= 0 (InvalidArgumentError otherwise; TypeError for a
non-number). Exceptions fn raises propagate unchanged.)doc")
      .def(py::init([](py::object fn) {
             if (!PyCallable_Check(fn.ptr())) {
               throw py::type_error("CallableBackoff needs a callable fn(n) -> float");
             }
             return std::make_shared<CallableBackoff>(std::move(fn));
           }),
           py::arg("fn"))
      .def_property_readonly("fn", &CallableBackoff::fn, "The wrapped callable.")
      .def("__repr__", &CallableBackoff::Describe);

  m.def(
      "_backoff_delays",
      [](py::handle strategy, int attempts, int threads) {
        if (attempts < 0 || threads < 1) ThrowInvalid("attempts >= 0 and threads >= 1 required");
        StrategyPtr s = BackoffFromPython(strategy);
        std::vector<std::vector<double>> out(threads);
        std::vector<std::exception_ptr> errors(threads);
        {
          py::gil_scoped_release release;
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
              try {
                for (int n = 1; n <= attempts; ++n) out[t].push_back(s->NextDelay(n));
              } catch (...) {
                errors[t] = std::current_exception();
              }
            });
          }
          for (auto& th : pool) th.join();
        }
        for (auto& e : errors) {
          if (e) std::rethrow_exception(e);
        }
        return out;
      },
      py::arg("strategy"), py::arg("attempts"), py::arg("threads") = 1,
      "Tests: next_delay(1..attempts) from `threads` C++ threads (GIL released); their "
      "delays.");
}

}  // namespace cpcsync::py_bindings
