#include "cpcsync/log.h"

#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "no_destructor.h"

namespace cpcsync {
namespace {

// The logger writes into one dist_sink, whose own mutex makes replacing the real
// sink safe while other threads log.
struct Shared {
  std::shared_ptr<spdlog::sinks::dist_sink_mt> dist =
      std::make_shared<spdlog::sinks::dist_sink_mt>();
  std::shared_ptr<spdlog::logger> logger;
  Shared() {
    dist->add_sink(std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger = std::make_shared<spdlog::logger>("cpcsync", dist);
    logger->set_level(spdlog::level::warn);
  }
};

Shared& Get() {
  static NoDestructor<Shared> shared;  // threads may log during exit()
  return *shared;
}

}  // namespace

spdlog::logger& Log() { return *Get().logger; }

void SetLogSink(std::shared_ptr<spdlog::sinks::sink> sink) {
  if (!sink) sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  Get().dist->set_sinks({std::move(sink)});
}

void SetLogLevel(spdlog::level::level_enum level) { Log().set_level(level); }

}  // namespace cpcsync
