// PythonCall: the one door from C++ threads into Python (see bindings.h).
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "bindings.h"

namespace cpcsync::py_bindings {
namespace {

// How long interpreter exit waits for calls already inside Python to come out.
constexpr auto kExitWait = std::chrono::seconds(5);

// Entry and close are a Dekker pair on seq_cst atomics: an entering thread either sees
// the gate closed, or the closer sees it counted and waits for it. No mutex, so a fork
// at any moment leaves nothing locked in the child.
std::atomic<int> g_inside{0};
std::atomic<bool> g_closed{false};
std::atomic<std::thread::id> g_closer{};
thread_local int t_depth = 0;  // this thread's calls inside the gate (nested callbacks)

void AfterForkChild() {
  // Only the forking thread lives on in the child: its own calls are all that is inside.
  g_inside.store(t_depth);
}

// The atexit hook. Runs with the GIL held, before finalisation begins.
void CloseGate() {
  g_closer.store(std::this_thread::get_id());
  g_closed.store(true);
  auto drained = [] { return g_inside.load() <= t_depth; };
  {
    py::gil_scoped_release release;  // let the calls inside finish
    const auto deadline = std::chrono::steady_clock::now() + kExitWait;
    while (!drained() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (!drained()) {
    py::module_::import("logging").attr("getLogger")("cpcsync").attr("warning")(
        "cpcsync: %d call(s) from C++ threads were still running Python code %d s after "
        "interpreter exit began (a transport or callback that does not return); stop "
        "engines and monitors before exit",
        g_inside.load() - t_depth, static_cast<int>(kExitWait.count()));
  }
}

}  // namespace

PythonCall::PythonCall() {
  g_inside.fetch_add(1);
  if (g_closed.load() && g_closer.load() != std::this_thread::get_id()) {
    g_inside.fetch_sub(1);
    return;
  }
  ++t_depth;
  entered_ = true;
}

PythonCall::PythonCall(const char* who) : PythonCall() {
  if (!entered_) throw std::runtime_error(std::string(who) + ": the Python interpreter is exiting");
}

PythonCall::~PythonCall() {
  if (!entered_) return;
  --t_depth;
  g_inside.fetch_sub(1);
}

void InitPythonGate(py::module_& m) {
  static const int registered = pthread_atfork(nullptr, nullptr, AfterForkChild);
  (void)registered;
  // Registered before anything else of this module, so it runs after the rest of
  // cpcsync's exit hooks (atexit runs them last registered first).
  py::module_::import("atexit").attr("register")(py::cpp_function(&CloseGate));
  (void)m;
}

}  // namespace cpcsync::py_bindings
