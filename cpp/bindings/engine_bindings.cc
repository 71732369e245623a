// cpcsync.SyncEngine, cpcsync.ProcessingSummary, and Python transports.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>

#include "bindings.h"
#include "cpcsync/errors.h"
#include "cpcsync/sync_engine.h"

namespace cpcsync::py_bindings {
namespace {

py::dict EventDict(const EngineEvent& e) {
  py::dict d;
  d["event"] = e.name;
  d["op"] = e.op ? py::cast(*e.op) : py::none();
  if (e.delay) d["delay"] = *e.delay;
  if (e.error) d["error"] = *e.error;
  if (e.remote) {
    d["remote"] = py::bytes(e.remote->value);
    d["remote_hlc"] = e.remote->hlc ? py::cast(*e.remote->hlc) : py::none();
    d["remote_version"] = e.remote->version ? py::cast(*e.remote->version) : py::none();
  }
  if (e.connected) d["connected"] = *e.connected;
  if (e.network) d["network"] = *e.network;
  return d;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t idx = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return v[idx];
}

using EnginePtr = std::shared_ptr<SyncEngine>;

}  // namespace

void InitEngine(py::module_& m) {
  py::class_<ProcessingSummary>(m, "ProcessingSummary", R"doc(
What one process_once()/drain() did: successful (count), retried (list of
(op_id, delay)), failed (list of (op_id, reason): dead-lettered), conflicts and
superseded (counts).)doc")
      .def_readonly("successful", &ProcessingSummary::successful, "Operations delivered.")
      .def_readonly("retried", &ProcessingSummary::retried,
                    "(op_id, delay seconds) for each operation scheduled for a retry.")
      .def_readonly("failed", &ProcessingSummary::failed,
                    "(op_id, reason) for each operation dead-lettered.")
      .def_readonly("conflicts", &ProcessingSummary::conflicts, "Conflicts resolved.")
      .def_readonly("superseded", &ProcessingSummary::superseded,
                    "Operations completed by taking the server's value (use_remote).")
      .def("__repr__", [](const ProcessingSummary& s) {
        return "ProcessingSummary(successful=" + std::to_string(s.successful) +
               ", retried=" + std::to_string(s.retried.size()) +
               ", failed=" + std::to_string(s.failed.size()) +
               ", conflicts=" + std::to_string(s.conflicts) + ")";
      });

  py::class_<SyncEngine, EnginePtr>(m, "SyncEngine", R"doc(
Delivers a SyncQueue's operations through a transport: most important first, in
order per key, retried with backoff while the monitor says connected, conflicts
resolved, failures dead-lettered. transport: a callable (op) -> None (sync or
async def) that signals failure by raising TransientError, PermanentError,
ConflictError, RetryAfter, or OSError/TimeoutError (network); an object with
send_batch(ops) gets up to batch_size ops per call and returns one entry per op
(None for delivered, or an exception instance).)doc")
      .def(py::init([](std::shared_ptr<SyncQueue> queue, py::object transport,
                       std::shared_ptr<NetworkMonitor> monitor, py::object backoff,
                       py::object resolver, int max_attempts, std::optional<double> max_elapsed,
                       int concurrency, int batch_size, std::shared_ptr<Clock> clock,
                       py::object loop, double max_retry_after) {
             EngineOptions o;
             o.max_retry_after = max_retry_after;
             o.max_attempts = max_attempts;
             o.max_elapsed = max_elapsed;
             o.concurrency = concurrency;
             o.batch_size = batch_size;
             std::shared_ptr<Transport> t = TransportFromPython(transport, loop);
             std::shared_ptr<BackoffStrategy> b =
                 backoff.is_none() ? nullptr : BackoffFromPython(backoff);
             std::shared_ptr<ConflictResolver> r =
                 resolver.is_none() ? nullptr : ResolverFromPython(resolver);
             py::gil_scoped_release release;
             return std::make_shared<SyncEngine>(std::move(queue), std::move(t), std::move(monitor),
                                                 std::move(b), std::move(r), o, std::move(clock));
           }),
           py::arg("queue"), py::arg("transport"), py::kw_only(), py::arg("monitor") = nullptr,
           py::arg("backoff") = py::none(), py::arg("resolver") = py::none(),
           py::arg("max_attempts") = 10, py::arg("max_elapsed") = py::none(),
           py::arg("concurrency") = 1, py::arg("batch_size") = 1, py::arg("clock") = nullptr,
           py::arg("loop") = py::none(),
           py::arg("max_retry_after") = EngineOptions{}.max_retry_after,
           "monitor=None: always connected. max_attempts counts answered failures only "
           "(a network failure, where no server answered, never uses one up). "
           "max_retry_after: a server's Retry-After above this many seconds is clamped to it. "
           "backoff: a BackoffStrategy or callable n -> "
           "seconds (default ExponentialBackoff()). resolver: a ConflictResolver or callable "
           "(local, remote) -> Resolution (default LastWriteWins()). "
           "clock: default the queue's. loop: the asyncio loop for async transports (default "
           "one the engine owns).")
      .def(
          "process_once",
          [](SyncEngine& e) {
            CallerScope scope;  // a KeyboardInterrupt in a callback comes back out here
            ProcessingSummary s;
            {
              py::gil_scoped_release release;
              s = e.ProcessOnce();
            }
            scope.Rethrow();
            return s;
          },
          "Deliver one round of ready operations on this thread (none while disconnected). "
          "A KeyboardInterrupt or SystemExit raised by the transport puts its op back "
          "and is raised again here.")
      .def(
          "drain",
          [](SyncEngine& e, std::optional<double> timeout) {
            CallerScope scope;
            ProcessingSummary s;
            {
              py::gil_scoped_release release;
              s = e.Drain(timeout);
            }
            scope.Rethrow();
            return s;
          },
          py::arg("timeout") = py::none(),
          "Deliver until the queue is empty or `timeout` seconds pass on the engine's clock, "
          "waiting for retries and reconnects without polling. A KeyboardInterrupt or "
          "SystemExit raised by the transport stops it: the op is put back and the "
          "exception raised again here.")
      .def("start", &SyncEngine::Start, py::call_guard<py::gil_scoped_release>(),
           "Start the background workers (concurrency of them). OperationStateError if this "
           "engine, or another engine on the same queue handle, is running.")
      .def("stop", &SyncEngine::Stop, py::arg("drain") = false, py::arg("timeout") = py::none(),
           py::call_guard<py::gil_scoped_release>(),
           "Stop the workers. drain=True first waits, connected or not, until the queue is "
           "empty (nothing pending or in flight) or `timeout` passes. Returns False if it "
           "did not drain, or if a worker was still busy (in a take or in the transport) "
           "when `timeout` ran out (it finishes on its own and sends nothing more).")
      .def("wait_idle", &SyncEngine::WaitIdle, py::arg("timeout") = py::none(),
           py::call_guard<py::gil_scoped_release>(),
           "Block until nothing is taken or leased by the engine and nothing is deliverable "
           "now (the network is down, or the outage gate holds deliveries back). False on "
           "timeout.")
      .def("next_attempt_at", &SyncEngine::NextAttemptAt, py::call_guard<py::gil_scoped_release>(),
           "Clock time when the engine will next take an operation by itself: the queue's "
           "next ready time, or later while the outage gate holds deliveries back; None when "
           "nothing is pending.")
      .def_property_readonly("running", &SyncEngine::running, "True between start() and stop().")
      .def_property_readonly(
          "busy_workers",
          [](SyncEngine& e) {
            py::gil_scoped_release release;
            return e.BusyWorkers();
          },
          "Workers (and process_once/drain calls) between a take and the end of its "
          "delivery right now. Reads only the engine's own state, so it answers at once "
          "even while a take waits for SQLite's lock (stats() reads the queue too).")
      .def(
          "on",
          [](SyncEngine& e, const std::string& event, py::function fn) {
            auto ref = std::make_shared<PyRef>(fn);
            e.On(event, [ref, event](const EngineEvent& ev) {
              PythonCall call;
              if (!call) return;  // the interpreter is exiting: nobody left to tell
              py::gil_scoped_acquire gil;
              try {
                ref->get()(EventDict(ev));
              } catch (py::error_already_set& err) {
                // On the thread of process_once/drain, Ctrl-C in a listener comes
                // back out of that call (once the round is done); elsewhere it is
                // logged and counted like any listener error.
                if (CallerScope::Stash(err)) return;
                throw std::runtime_error("'" + event + "' callback raised: " + err.what());
              }
            });
          },
          py::arg("event"), py::arg("fn"),
          "Call fn(info: dict) on 'delivered', 'retry', 'dead_letter', 'conflict', "
          "'superseded' or 'network'. info has 'event', 'op' and, as relevant, 'delay', "
          "'error', 'remote', 'remote_hlc', 'remote_version', 'connected'. Exceptions are "
          "logged and counted, never propagated.")
      .def(
          "stats",
          [](SyncEngine& e) {
            EngineStats s;
            QueueStats q;
            double now;
            {
              py::gil_scoped_release release;
              s = e.Stats();
              q = e.queue()->Stats();
              now = e.clock()->Monotonic();
            }
            py::dict d;
            d["delivered"] = s.delivered;
            d["retried"] = s.retried;
            d["dead_lettered"] = s.dead_lettered;
            d["conflicts"] = s.conflicts;
            d["superseded"] = s.superseded;
            d["in_flight"] = s.in_flight;
            d["transport_calls"] = s.transport_calls;
            d["callback_errors"] = s.listener_errors;
            d["running"] = s.running;
            d["network_failures"] = s.network_failures;
            py::dict outage;
            outage["consecutive_failures"] = s.outage_failures;
            outage["resume_in"] =
                s.outage_failures > 0 ? std::max(0.0, s.outage_resume_at - now) : 0.0;
            d["outage"] = outage;
            d["busy_workers"] = s.busy_workers;
            py::dict depth;
            for (auto& [p, n] : q.by_priority) depth[py::int_(p)] = n;
            d["depth_by_priority"] = depth;
            d["pending"] = q.pending;
            d["oldest_pending_age"] =
                q.oldest_pending_created_at
                    ? py::cast(std::max(0.0, now - *q.oldest_pending_created_at))
                    : py::none();
            py::dict lat;
            lat["p50"] = Percentile(s.latencies, 0.50);
            lat["p90"] = Percentile(s.latencies, 0.90);
            lat["p99"] = Percentile(s.latencies, 0.99);
            lat["samples"] = s.latencies.size();
            d["latency"] = lat;
            return d;
          },
          "Counters (delivered, retried, network_failures (retries where no server "
          "answered; they never count toward max_attempts), dead_lettered, conflicts, "
          "superseded, in_flight, busy_workers, callback_errors), the outage gate "
          "(outage: consecutive_failures, resume_in seconds), queue depth by priority, oldest "
          "pending age, and delivery "
          "latency percentiles (created -> acknowledged, seconds, recent deliveries).")
      .def_property_readonly("queue", &SyncEngine::queue, "The engine's queue.")
      .def_property_readonly("clock", &SyncEngine::clock, "The engine's clock.");
}

}  // namespace cpcsync::py_bindings
