#include "cpcsync/log.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>
#include <thread>
#include <vector>

namespace cpcsync {
namespace {

TEST(Log, SinkCanBeReplacedWhileOtherThreadsLog) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  SetLogLevel(spdlog::level::info);
  std::vector<std::thread> loggers;
  for (int t = 0; t < 4; ++t) {
    loggers.emplace_back([t] {
      for (int i = 0; i < 100; ++i) Log().info("thread {} line {}", t, i);
    });
  }
  SetLogSink(sink);
  for (auto& t : loggers) t.join();
  Log().warn("after the swap");
  SetLogSink(nullptr);
  SetLogLevel(spdlog::level::warn);
  EXPECT_NE(out.str().find("after the swap"), std::string::npos);
}

TEST(Log, LevelFilters) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_pattern("%v");
  SetLogSink(sink);
  SetLogLevel(spdlog::level::err);
  Log().warn("hidden");
  Log().error("shown");
  SetLogSink(nullptr);
  SetLogLevel(spdlog::level::warn);
  EXPECT_EQ(out.str().find("hidden"), std::string::npos);
  EXPECT_NE(out.str().find("shown"), std::string::npos);
}

}  // namespace
}  // namespace cpcsync
