// cpcsync._core: the C++ core exposed to Python. The public names are re-exported
// by the cpcsync package; import that, not this module.
#include "bindings.h"

PYBIND11_MODULE(_core, m) {
  namespace b = cpcsync::py_bindings;
  m.doc() = "cpcsync's C++ core (private: import cpcsync instead).";
  b::InitPythonGate(m);  // first: its exit hook must run after every other one
  b::InitErrors(m);
  b::InitClock(m);
  b::InitLog(m);
  b::InitQueue(m);
  b::InitBackoff(m);
  b::InitConflict(m);
  b::InitMonitor(m);
  b::InitTransport(m);
  b::InitEngine(m);
  b::InitFaulty(m);
  b::InitProxy(m);
}
