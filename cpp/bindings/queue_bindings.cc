// cpcsync.SyncQueue and cpcsync.Operation.
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "bindings.h"
#include "cpcsync/errors.h"
#include "cpcsync/sync_queue.h"

namespace cpcsync::py_bindings {
namespace {

using QueuePtr = std::shared_ptr<SyncQueue>;

// Releases the GIL around storage calls that may block (SQLite I/O, locks).
// In-memory queues never block on I/O and keep the GIL: the release would cost
// more than the call.
class MaybeRelease {
 public:
  explicit MaybeRelease(const SyncQueue& q) {
    if (!q.path().empty()) release_.emplace();
  }

 private:
  std::optional<py::gil_scoped_release> release_;
};

Durability ParseDurability(const std::string& s) {
  if (s == "full") return Durability::kFull;
  if (s == "normal") return Durability::kNormal;
  if (s == "off") return Durability::kOff;
  ThrowInvalid("durability must be 'full', 'normal' or 'off', not '" + s + "'");
}

Limits ParseLimits(const py::object& max_ops, const py::object& max_bytes,
                   const std::string& overflow) {
  Limits l;
  if (!max_ops.is_none()) l.max_ops = StrictInt(max_ops, "max_ops");
  if (!max_bytes.is_none()) l.max_bytes = StrictInt(max_bytes, "max_bytes");
  if (overflow == "reject") {
    l.overflow = Overflow::kReject;
  } else if (overflow == "drop_lowest") {
    l.overflow = Overflow::kDropLowest;
  } else {
    ThrowInvalid("overflow must be 'reject' or 'drop_lowest', not '" + overflow + "'");
  }
  return l;
}

// A str as UTF-8; a lone surrogate (which UTF-8 cannot encode) is an
// InvalidArgumentError naming the argument, not pybind11's bare cast error.
std::string Utf8(py::handle obj, const char* name) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
  if (data == nullptr) {
    PyErr_Clear();
    ThrowInvalid(std::string(name) +
                 " is not valid text: it holds a lone surrogate, which UTF-8 cannot encode");
  }
  return std::string(data, static_cast<size_t>(size));
}

std::optional<std::string> OptStr(py::handle obj, const char* name) {
  if (obj.is_none()) return std::nullopt;
  if (!PyUnicode_Check(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be a str or None");
  }
  return Utf8(obj, name);
}

NewOp MakeOp(py::handle kind, py::handle payload, py::handle key, py::handle priority,
             py::handle idempotency_key, py::handle coalesce, py::handle ttl, py::handle delay) {
  NewOp op;
  if (!PyUnicode_Check(kind.ptr())) throw py::type_error("kind must be a str");
  op.kind = Utf8(kind, "kind");
  op.payload = PayloadBytes(payload);
  op.key = OptStr(key, "key");
  const long long p = StrictInt(priority, "priority");
  if (p < priority::kMin || p > priority::kMax) {
    ThrowInvalid("priority must be an int in 0..255, got " + std::to_string(p));
  }
  op.priority = static_cast<int>(p);
  op.idempotency_key = OptStr(idempotency_key, "idempotency_key");
  if (!PyBool_Check(coalesce.ptr())) throw py::type_error("coalesce must be a bool");
  op.coalesce = coalesce.ptr() == Py_True;
  if (!ttl.is_none()) op.ttl = StrictSeconds(ttl, "ttl");
  op.delay = StrictSeconds(delay, "delay");
  return op;
}

NewOp OpFromMapping(py::handle item) {
  if (!PyDict_Check(item.ptr())) throw py::type_error("enqueue_many items must be dicts");
  py::dict d = py::reinterpret_borrow<py::dict>(item);
  static const char* kKnown[] = {"kind",     "payload", "key",  "priority", "idempotency_key",
                                 "coalesce", "ttl",     "delay"};
  for (auto [k, v] : d) {
    bool known = false;
    for (const char* name : kKnown) known = known || py::str(k).cast<std::string>() == name;
    if (!known)
      ThrowInvalid("enqueue_many: unknown field '" + py::str(k).cast<std::string>() + "'");
  }
  for (const char* required : {"kind", "payload"}) {
    if (!d.contains(required)) {
      ThrowInvalid(std::string("enqueue_many: every item needs a '") + required + "'");
    }
  }
  auto get = [&](const char* name, py::object fallback) -> py::object {
    return d.contains(name) ? py::object(d[name]) : std::move(fallback);
  };
  return MakeOp(d["kind"], d["payload"], get("key", py::none()),
                get("priority", py::int_(priority::kMedium)), get("idempotency_key", py::none()),
                get("coalesce", py::bool_(false)), get("ttl", py::none()),
                get("delay", py::float_(0.0)));
}

py::dict StatsDict(SyncQueue& q) {
  QueueStats s;
  double now;
  {
    MaybeRelease release(q);
    s = q.Stats();
    now = q.clock()->Monotonic();
  }
  py::dict d;
  d["pending"] = s.pending;
  d["in_flight"] = s.in_flight;
  d["dead"] = s.dead;
  d["total"] = s.pending + s.in_flight;
  d["bytes"] = s.bytes;
  py::dict by_priority;
  for (auto& [p, n] : s.by_priority) by_priority[py::int_(p)] = n;
  d["by_priority"] = by_priority;
  // Never negative, even when the wall clock went back since the op was stored.
  d["oldest_pending_age"] =
      s.oldest_pending_created_at
          ? py::object(py::float_(std::max(0.0, now - *s.oldest_pending_created_at)))
          : py::object(py::none());
  d["next_due_in"] = s.next_due ? py::object(py::float_(std::max(0.0, *s.next_due - now)))
                                : py::object(py::none());
  d["network_failures"] = s.network_failures;
  return d;
}

// Python holds queues through this: when the last reference goes, closing the
// queue (SQLite I/O, joining its listener) happens with the GIL released.
QueuePtr ReleasingGilOnDestroy(QueuePtr queue) {
  SyncQueue* raw = queue.get();
  return QueuePtr(raw, [owned = std::move(queue)](SyncQueue*) mutable {
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      owned.reset();
    } else {
      owned.reset();
    }
  });
}

}  // namespace

uint64_t HlcStampArg(py::handle obj, const char* name) {
  StrictInt(obj, name);  // TypeError for non-ints and bools
  const unsigned long long v = PyLong_AsUnsignedLongLong(obj.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    ThrowInvalid(std::string(name) + " must be an int in [0, 2**64)");
  }
  HybridLogicalClock::Validate(v, name);
  return static_cast<uint64_t>(v);
}

void InitQueue(py::module_& m) {
  py::class_<Operation>(m, "Operation", R"doc(
One queued operation, as a snapshot (it does not change when the queue does).
Attributes: id, kind, key, payload (bytes), priority, idempotency_key, hlc,
created_at, attempts, network_failures, next_attempt_at, last_error, state
("pending", "in_flight" or "dead"), expires_at, first_attempt_at, base_version,
taken_at.)doc")
      .def_readonly("id", &Operation::id, "Queue-assigned id, increasing in enqueue order.")
      .def_readonly("kind", &Operation::kind, "What the operation does, e.g. 'set_currency'.")
      .def_readonly("key", &Operation::key, "The entity it applies to (ordering lane), or None.")
      .def_property_readonly(
          "payload", [](const Operation& op) { return py::bytes(op.payload); },
          "The payload bytes.")
      .def_readonly("priority", &Operation::priority, "0..255; higher is delivered first.")
      .def_readonly("idempotency_key", &Operation::idempotency_key,
                    "Key a server uses to apply the operation once.")
      .def_readonly("hlc", &Operation::hlc,
                    "Hybrid logical timestamp: ms in the high 48 bits, counter in the low 16.")
      .def_readonly("created_at", &Operation::created_at, "Enqueue time on the queue's clock.")
      .def_readonly("attempts", &Operation::attempts,
                    "Delivery attempts that count toward max_attempts: times it was taken, "
                    "less the network failures.")
      .def_readonly("network_failures", &Operation::network_failures,
                    "Deliveries where no server answered (retry(..., network=True)); they do "
                    "not count as attempts.")
      .def_readonly("next_attempt_at", &Operation::next_attempt_at,
                    "Not deliverable before this time (queue clock).")
      .def_readonly("last_error", &Operation::last_error,
                    "The last failure or dead-letter reason, or None.")
      .def_property_readonly(
          "state", [](const Operation& op) { return std::string(OpStateName(op.state)); },
          "'pending', 'in_flight' or 'dead'.")
      .def_readonly("expires_at", &Operation::expires_at, "TTL deadline, or None.")
      .def_readonly("first_attempt_at", &Operation::first_attempt_at,
                    "When it was first taken, or None.")
      .def_readonly("taken_at", &Operation::taken_at,
                    "When the take that returned this op leased it (queue clock); None on "
                    "ops read by peek() or dead_letters().")
      .def_readonly("base_version", &Operation::base_version,
                    "The remote version a conflict resolution resends it against, or None.")
      .def(
          "json",
          [](const Operation& op) {
            return py::module_::import("json").attr("loads")(py::bytes(op.payload));
          },
          "Decode the payload as JSON.")
      .def(
          "to_dict",
          [](const Operation& op) {
            py::dict d;
            d["id"] = op.id;
            d["kind"] = op.kind;
            d["key"] = op.key;
            d["payload"] = py::bytes(op.payload);
            d["priority"] = op.priority;
            d["idempotency_key"] = op.idempotency_key;
            d["hlc"] = op.hlc;
            d["created_at"] = op.created_at;
            d["attempts"] = op.attempts;
            d["network_failures"] = op.network_failures;
            d["next_attempt_at"] = op.next_attempt_at;
            d["last_error"] = op.last_error;
            d["state"] = std::string(OpStateName(op.state));
            d["expires_at"] = op.expires_at;
            d["base_version"] = op.base_version;
            return d;
          },
          "All attributes as a dict (payload as bytes).")
      .def("__repr__", [](const Operation& op) {
        return "Operation(id=" + std::to_string(op.id) + ", kind='" + op.kind +
               "', key=" + (op.key ? "'" + *op.key + "'" : std::string("None")) +
               ", priority=" + std::to_string(op.priority) + ", state='" + OpStateName(op.state) +
               "', attempts=" + std::to_string(op.attempts) +
               ", network_failures=" + std::to_string(op.network_failures) + ")";
      });

  py::class_<SyncQueue, QueuePtr>(m, "SyncQueue", R"doc(
A durable, prioritised outbox. Open one with SyncQueue.open(path) (an SQLite file
many processes may share) or SyncQueue.in_memory(). Semantics: per-key order,
priority (with inheritance) then FIFO across keys, delays, TTLs, capacity limits,
dead letters. A context manager: leaving the block closes it.)doc")
      .def_static(
          "open",
          [](const py::object& path, const std::string& durability, const py::object& max_ops,
             const py::object& max_bytes, const std::string& overflow, std::shared_ptr<Clock> clock,
             bool read_only) {
            const std::string p =
                py::module_::import("os").attr("fspath")(path).cast<std::string>();
            SqliteOptions options;
            options.durability = ParseDurability(durability);
            options.read_only = read_only;
            Limits limits = ParseLimits(max_ops, max_bytes, overflow);
            py::gil_scoped_release release;
            return ReleasingGilOnDestroy(SyncQueue::Open(p, options, limits, std::move(clock)));
          },
          py::arg("path"), py::kw_only(), py::arg("durability") = "full",
          py::arg("max_ops") = py::none(), py::arg("max_bytes") = py::none(),
          py::arg("overflow") = "reject", py::arg("clock") = nullptr, py::arg("read_only") = false,
          R"doc(Open (or create, mode 0600) the queue file at `path`.

durability: "full" (survives power loss), "normal" (survives a process crash) or
"off". max_ops / max_bytes bound pending + in-flight ops; overflow "reject" raises
QueueFullError, "drop_lowest" dead-letters the lowest-priority newest op.
read_only=True opens for inspection only. Raises NotAQueueError for a foreign
file and CorruptDatabaseError for a damaged one, without modifying either.)doc")
      .def_static(
          "in_memory",
          [](const py::object& max_ops, const py::object& max_bytes, const std::string& overflow,
             std::shared_ptr<Clock> clock) {
            return ReleasingGilOnDestroy(
                SyncQueue::InMemory(ParseLimits(max_ops, max_bytes, overflow), std::move(clock)));
          },
          py::kw_only(), py::arg("max_ops") = py::none(), py::arg("max_bytes") = py::none(),
          py::arg("overflow") = "reject", py::arg("clock") = nullptr,
          "A queue in process memory with the same semantics; nothing survives the process.")
      .def(
          "enqueue",
          [](SyncQueue& q, py::handle kind, py::handle payload, py::handle key, py::handle priority,
             py::handle idempotency_key, py::handle coalesce, py::handle ttl, py::handle delay) {
            NewOp op = MakeOp(kind, payload, key, priority, idempotency_key, coalesce, ttl, delay);
            MaybeRelease release(q);
            return q.Enqueue(std::move(op));
          },
          py::arg("kind"), py::arg("payload"), py::kw_only(), py::arg("key") = py::none(),
          py::arg("priority") = priority::kMedium, py::arg("idempotency_key") = py::none(),
          py::arg("coalesce") = false, py::arg("ttl") = py::none(), py::arg("delay") = 0.0,
          R"doc(Store one operation and return its id once it is durable.

payload: bytes, str (UTF-8) or anything json.dumps accepts. key: the entity
(operations of one key are delivered in order). priority: 0..255 (Priority.*).
idempotency_key: generated (UUID4) when None. coalesce=True replaces the key's
last pending op of the same kind instead of appending. ttl: seconds until it
expires into the dead letters. delay: seconds before it may be delivered.)doc")
      .def(
          "enqueue_many",
          [](SyncQueue& q, const py::iterable& items) {
            std::vector<NewOp> ops;
            for (py::handle item : items) ops.push_back(OpFromMapping(item));
            MaybeRelease release(q);
            return q.EnqueueMany(std::move(ops));
          },
          py::arg("items"),
          "Store many operations (dicts with enqueue's argument names) in one transaction: all "
          "or none. Returns their ids.")
      .def(
          "take",
          [](SyncQueue& q, py::handle n) {
            const long long count = StrictInt(n, "n");
            if (count < 0) ThrowInvalid("n must be >= 0");
            MaybeRelease release(q);
            return q.Take(static_cast<size_t>(count));
          },
          py::arg("n") = 1,
          "Lease up to n deliverable operations (marks them in flight). The first consumer call "
          "makes this handle the queue's consumer (QueueLockedError if another is).")
      .def(
          "ack",
          [](SyncQueue& q, int64_t id) {
            MaybeRelease release(q);
            q.Ack(id);
          },
          py::arg("op_id"), "Delivered: remove the in-flight operation.")
      .def(
          "retry",
          [](SyncQueue& q, int64_t id, py::handle delay, std::optional<std::string> error,
             bool network) {
            const double d = StrictSeconds(delay, "delay");
            MaybeRelease release(q);
            q.Retry(id, d, error, network);
          },
          py::arg("op_id"), py::arg("delay") = 0.0, py::arg("error") = py::none(), py::kw_only(),
          py::arg("network") = false,
          "Failed for now: the in-flight op is pending again, due after `delay` seconds. "
          "network=True: no server answered (refused, reset, DNS, timeout before a response); "
          "the failure counts in op.network_failures instead of op.attempts.")
      .def(
          "dead_letter",
          [](SyncQueue& q, int64_t id, const std::string& reason) {
            MaybeRelease release(q);
            q.DeadLetter(id, reason);
          },
          py::arg("op_id"), py::arg("reason"),
          "Give up on a pending or in-flight op: it moves to the dead letters with `reason`.")
      .def(
          "dead_letters",
          [](SyncQueue& q, std::optional<int64_t> limit) {
            if (limit && *limit < 0) ThrowInvalid("limit must be >= 0");
            MaybeRelease release(q);
            return q.DeadLetters(limit ? static_cast<size_t>(*limit) : SIZE_MAX);
          },
          py::arg("limit") = py::none(), "Dead-lettered operations, oldest first.")
      .def(
          "requeue_dead",
          [](SyncQueue& q, const std::optional<std::vector<int64_t>>& ids) {
            MaybeRelease release(q);
            return q.RequeueDead(ids);
          },
          py::arg("ids") = py::none(),
          "Put dead ops (the given ids, or all) back at the tail of their keys under new ids; "
          "returns the new ids.")
      .def(
          "purge_dead",
          [](SyncQueue& q) {
            MaybeRelease release(q);
            return q.PurgeDead();
          },
          "Delete every dead letter; returns how many.")
      .def(
          "peek",
          [](SyncQueue& q, py::handle n) {
            const long long count = StrictInt(n, "n");
            if (count < 0) ThrowInvalid("n must be >= 0");
            MaybeRelease release(q);
            return q.Peek(static_cast<size_t>(count));
          },
          py::arg("n") = 10,
          "Up to n pending ops in the order take() would deliver them if all were due. Takes "
          "nothing.")
      .def(
          "get",
          [](SyncQueue& q, int64_t id) {
            MaybeRelease release(q);
            return q.Get(id);
          },
          py::arg("op_id"), "The operation with this id (any state), or None.")
      .def("stats", &StatsDict,
           "Counts: pending, in_flight, dead, total, bytes, by_priority (pending per priority), "
           "oldest_pending_age (seconds) and next_due_in (seconds until a delayed op is due).")
      .def("__len__",
           [](SyncQueue& q) {
             MaybeRelease release(q);
             return q.Count();
           })
      .def(
          "wait",
          [](SyncQueue& q, std::optional<double> timeout) {
            py::gil_scoped_release release;
            return q.Wait(timeout);
          },
          py::arg("timeout") = py::none(),
          "Block (GIL released) until an op is deliverable or `timeout` seconds pass on the "
          "queue's clock. Wakes on enqueues, also from other processes. True if one is ready.")
      .def(
          "next_ready_at",
          [](SyncQueue& q) {
            MaybeRelease release(q);
            return q.NextReadyAt();
          },
          "Clock time at which the earliest pending operation becomes deliverable (now or "
          "earlier if one is ready), or None when nothing is pending.")
      .def(
          "acquire_consumer",
          [](SyncQueue& q) {
            MaybeRelease release(q);
            q.AcquireConsumer();
          },
          "Become the queue's consumer now (QueueLockedError if another handle is).")
      .def(
          "close",
          [](SyncQueue& q) {
            py::gil_scoped_release release;
            q.Close();
          },
          "Close the queue; in-flight ops become pending again. Idempotent.")
      .def(
          "observe_hlc",
          [](SyncQueue& q, py::handle remote) {
            const uint64_t stamp = HlcStampArg(remote, "remote");
            MaybeRelease release(q);
            q.ObserveHlc(stamp);
          },
          py::arg("remote"),
          "Merge a remote HLC timestamp (say, a server's version stamp): operations enqueued "
          "later, by any handle on the same file and after a reopen, get larger stamps (the "
          "high-water mark is stored in the file). InvalidArgumentError for a stamp outside "
          "[0, 2**64) or after year 9999.")
      .def_property_readonly(
          "low_water",
          [](SyncQueue& q) {
            MaybeRelease release(q);
            return q.LowWater();
          },
          "The lowest op id the queue may still send: the lowest id it holds pending, in "
          "flight or dead (a dead letter can be requeued), or the id the next enqueue gets "
          "when it holds none. Every id below it was acknowledged or purged, so a server "
          "may prune this queue's idempotency records below it (docs/queue-semantics.md, "
          "\"Low water\", says when that is safe).")
      .def_property_readonly(
          "last_hlc", [](SyncQueue& q) { return q.hlc().Last(); },
          "The latest HLC stamp this handle issued or observed.")
      .def_property_readonly("closed", &SyncQueue::closed, "True once close() was called.")
      .def_property_readonly(
          "path",
          [](const SyncQueue& q) -> py::object {
            return q.path().empty() ? py::object(py::none()) : py::object(py::str(q.path()));
          },
          "The queue file, or None for an in-memory queue.")
      .def_property_readonly("clock", &SyncQueue::clock, "The queue's clock.")
      .def("__enter__", [](QueuePtr q) { return q; })
      .def(
          "__exit__",
          [](SyncQueue& q, py::handle, py::handle, py::handle) {
            py::gil_scoped_release release;
            q.Close();
            return false;
          },
          py::arg("exc_type"), py::arg("exc"), py::arg("tb"))
      .def("__repr__", [](SyncQueue& q) {
        return std::string("SyncQueue(") +
               (q.path().empty() ? std::string("in_memory") : "'" + q.path() + "'") +
               (q.closed() ? ", closed" : "") + ")";
      });
}

}  // namespace cpcsync::py_bindings
