#include "ids.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <regex>
#include <set>

namespace cpcsync {
namespace {

TEST(Ids, Uuid4FormatAndUniqueness) {
  const std::regex uuid4("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    std::string id = NewUuid4();
    ASSERT_TRUE(std::regex_match(id, uuid4)) << id;
    seen.insert(std::move(id));
  }
  EXPECT_EQ(seen.size(), 10000u);
}

TEST(Ids, ForkedChildDoesNotRepeatTheParent) {
  NewUuid4();  // seed the parent
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string child = NewUuid4();
    const ssize_t n = ::write(fds[1], child.data(), child.size());
    ::_exit(n == static_cast<ssize_t>(child.size()) ? 0 : 1);
  }
  const std::string parent = NewUuid4();
  char buf[36];
  ASSERT_EQ(::read(fds[0], buf, sizeof(buf)), 36);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_NE(std::string(buf, 36), parent);
}

}  // namespace
}  // namespace cpcsync
