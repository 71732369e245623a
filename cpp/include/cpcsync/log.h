// Logging: every message cpcsync writes goes through the spdlog logger "cpcsync".
//
// By default it writes warnings and errors to stderr. The Python module replaces
// the sink with a bridge to Python's `logging` (logger "cpcsync"). Credentials and
// payloads are never logged above debug level.
// Thread-safety: safe from any thread; sinks must not call back into cpcsync.
#pragma once

#include <spdlog/logger.h>

#include <memory>

namespace cpcsync {

// The shared logger (created on first use).
spdlog::logger& Log();
// Replaces the logger's sinks with `sink` (nullptr: back to stderr).
void SetLogSink(std::shared_ptr<spdlog::sinks::sink> sink);
void SetLogLevel(spdlog::level::level_enum level);

}  // namespace cpcsync
