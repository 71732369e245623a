// The bridge from spdlog to Python's logging (logger "cpcsync").
//
// C++ threads log into a bounded in-memory queue and never touch the GIL; one
// dispatcher thread takes records off that queue and, holding no C++ lock,
// takes the GIL to hand them to logging. So logging from any thread, with any
// cpcsync lock held, cannot deadlock against Python.
//
// fork(): the child has no dispatcher thread, and the bridge's condition variables
// still count the parent's waiting thread (glibc's pthread_cond_destroy would wait
// for it forever at exit). A pthread_atfork handler gives the child a fresh bridge
// (the parent's pending records stay the parent's), and os.register_at_fork starts
// the child's own dispatcher once Python runs again.
#include <pthread.h>
#include <spdlog/sinks/base_sink.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <new>
#include <thread>

#include "bindings.h"
#include "cpcsync/log.h"
#include "no_destructor.h"

namespace cpcsync::py_bindings {
namespace {

constexpr size_t kMaxPending = 10000;

struct Record {
  int py_level;
  std::string text;
};

int PyLevel(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return 10;
    case spdlog::level::info:
      return 20;
    case spdlog::level::warn:
      return 30;
    case spdlog::level::err:
      return 40;
    default:
      return 50;
  }
}

class Bridge {
 public:
  ~Bridge() {
    // Normally stopped by atexit; if the interpreter skipped that, never block exit.
    if (thread_.joinable()) thread_.detach();
  }

  void Push(Record r) {
    {
      std::lock_guard lock(mu_);
      if (pending_.size() >= kMaxPending) {
        pending_.pop_front();
        ++dropped_;
      }
      pending_.push_back(std::move(r));
      ++pushed_;
    }
    cv_.notify_all();
  }

  void Start() {
    std::lock_guard lock(mu_);
    if (running_) return;
    running_ = true;
    stop_ = false;
    thread_ = std::thread([this] { Run(); });
  }

  // Called with the GIL held (atexit); releases it while the thread finishes.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      if (!running_) return;
      stop_ = true;
    }
    cv_.notify_all();
    py::gil_scoped_release release;
    thread_.join();
    std::lock_guard lock(mu_);
    running_ = false;
  }

  // fork(): hold the lock across it, so the child copies a consistent queue.
  void BeforeFork() { mu_.lock(); }
  void AfterForkParent() { mu_.unlock(); }
  // In the child: every synchronisation object is replaced without being destroyed
  // (destroying them could wait for the parent's threads), the thread handle is
  // forgotten (that thread does not exist here) and the parent's records dropped.
  void AfterForkChild() {
    new (&mu_) std::mutex();
    new (&cv_) std::condition_variable();
    new (&done_cv_) std::condition_variable();
    new (&thread_) std::thread();
    pending_.clear();
    pushed_ = delivered_ = dropped_ = 0;
    running_ = false;
    stop_ = false;
  }

  // Blocks (GIL released) until every record logged so far reached Python.
  void Flush() {
    py::gil_scoped_release release;
    std::unique_lock lock(mu_);
    const uint64_t target = pushed_;
    done_cv_.wait(lock, [&] { return delivered_ >= target || !running_; });
  }

 private:
  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !pending_.empty(); });
      std::deque<Record> batch;
      batch.swap(pending_);
      const uint64_t dropped = dropped_;
      dropped_ = 0;
      const bool stopping = stop_;
      lock.unlock();  // no C++ lock is held while the GIL is taken
      if (!batch.empty() || dropped) Deliver(batch, dropped);
      lock.lock();
      delivered_ += batch.size() + dropped;
      done_cv_.notify_all();
      if (stopping && pending_.empty()) return;
    }
  }

  static void Deliver(const std::deque<Record>& batch, uint64_t dropped) {
    PythonCall call;
    if (!call || PythonFinalizing()) return;
    py::gil_scoped_acquire gil;
    try {
      py::object logger = py::module_::import("logging").attr("getLogger")("cpcsync");
      if (dropped) {
        logger.attr("warning")("cpcsync: %d log records were dropped (logging too slow)", dropped);
      }
      for (const Record& r : batch) logger.attr("log")(r.py_level, "%s", r.text);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("cpcsync log bridge");
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Record> pending_;
  std::thread thread_;
  uint64_t pushed_ = 0, delivered_ = 0, dropped_ = 0;
  bool running_ = false, stop_ = false;
};

Bridge& TheBridge() {
  static NoDestructor<Bridge> bridge;  // C++ threads may log during exit()
  static const int registered =
      pthread_atfork([] { TheBridge().BeforeFork(); }, [] { TheBridge().AfterForkParent(); },
                     [] { TheBridge().AfterForkChild(); });
  (void)registered;
  return *bridge;
}

class PythonSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    TheBridge().Push({PyLevel(msg.level), std::string(msg.payload.data(), msg.payload.size())});
  }
  void flush_() override {}
};

spdlog::level::level_enum ParseLevel(const std::string& name) {
  const auto level = spdlog::level::from_str(name);
  if (level == spdlog::level::off && name != "off") {
    throw py::value_error("unknown log level '" + name +
                          "' (use trace, debug, info, warning, error, critical or off)");
  }
  return level;
}

}  // namespace

void InitLog(py::module_& m) {
  SetLogSink(std::make_shared<PythonSink>());
  TheBridge().Start();
  // Stop the dispatcher at exit even if importing the rest of cpcsync fails.
  py::module_::import("atexit").attr("register")(py::cpp_function([] { TheBridge().Stop(); }));
  // A forked child gets its own dispatcher (the atfork handler reset the bridge).
  py::module_::import("os").attr("register_at_fork")(
      py::arg("after_in_child") = py::cpp_function([] { TheBridge().Start(); }));
  m.def(
      "set_log_level", [](const std::string& level) { SetLogLevel(ParseLevel(level)); },
      py::arg("level"),
      "Set the level of cpcsync's C++ logging: trace, debug, info, warning, error, "
      "critical or off (default warning). Records go to the Python logger 'cpcsync'.");
  m.def(
      "flush_logs", [] { TheBridge().Flush(); },
      "Block until every record logged so far has reached Python's logging.");
  m.def(
      "_stop_log_bridge", [] { TheBridge().Stop(); },
      "Stop the log dispatcher thread (registered with atexit).");
  m.def(
      "_log",
      [](const std::string& level, const std::string& text) {
        Log().log(ParseLevel(level), "{}", text);
      },
      py::arg("level"), py::arg("text"), py::call_guard<py::gil_scoped_release>(),
      "Log a message through the C++ logger (tests).");
}

}  // namespace cpcsync::py_bindings
