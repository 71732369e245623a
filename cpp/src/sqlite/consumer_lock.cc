#include "sqlite/consumer_lock.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <set>

#include "cpcsync/errors.h"
#include "cpcsync/log.h"
#include "no_destructor.h"

namespace cpcsync::sqlite {
namespace {

socklen_t Address(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  // Abstract namespace: sun_path starts with a NUL byte.
  std::memcpy(addr->sun_path + 1, name.data(), name.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

}  // namespace

// Every live ConsumerLock of this process, so a forked child can drop their fds.
struct LockRegistry {
  std::mutex mu;
  std::set<ConsumerLock*> locks;

  static LockRegistry& Get() {
    static NoDestructor<LockRegistry> registry;  // used by threads during exit() too
    static std::once_flag once;
    std::call_once(once, [] {
      pthread_atfork([] { Get().mu.lock(); }, [] { Get().mu.unlock(); },
                     [] {
                       for (ConsumerLock* lock : Get().locks) lock->DropAfterFork();
                       Get().mu.unlock();
                     });
    });
    return *registry;
  }
};

std::string NotifyName(const std::string& db_path) {
  struct stat st {};
  if (::stat(db_path.c_str(), &st) != 0) ThrowErrno("stat '" + db_path + "'");
  return "cpcsync-" + std::to_string(static_cast<unsigned long long>(st.st_dev)) + "-" +
         std::to_string(static_cast<unsigned long long>(st.st_ino));
}

ConsumerLock::ConsumerLock(const std::string& name, std::function<void()> on_wake)
    : on_wake_(std::move(on_wake)) {
  sock_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (sock_ < 0) ThrowErrno("consumer socket");
  sockaddr_un addr;
  const socklen_t len = Address(name, &addr);
  if (::bind(sock_, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    const int err = errno;
    ::close(sock_);
    sock_ = -1;
    if (err == EADDRINUSE) {
      throw SyncError(ErrorCode::kQueueLocked,
                      "queue is locked: another handle (in this or another process) is its "
                      "consumer");
    }
    errno = err;
    ThrowErrno("bind consumer socket");
  }
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) {
    ::close(sock_);
    ThrowErrno("eventfd");
  }
  try {
    listener_ = std::thread([this] { Listen(); });
  } catch (...) {
    ::close(stop_fd_);
    ::close(sock_);
    throw;
  }
  LockRegistry& registry = LockRegistry::Get();
  std::lock_guard lock(registry.mu);
  registry.locks.insert(this);
}

void ConsumerLock::DropAfterFork() {
  // The listener thread does not exist in the child; its std::thread object must
  // not be joined. Closing the socket copy leaves the parent's binding alone.
  forked_ = true;
  ::close(sock_);
  ::close(stop_fd_);
  sock_ = stop_fd_ = -1;
}

ConsumerLock::~ConsumerLock() {
  {
    LockRegistry& registry = LockRegistry::Get();
    std::lock_guard lock(registry.mu);
    registry.locks.erase(this);
  }
  if (forked_) {
    // The listener is the parent's thread: pthread_detach() of it fails here (ESRCH,
    // which std::thread turns into an exception, and a destructor into abort()).
    // Forget the handle without touching the thread.
    new (&listener_) std::thread();
    return;
  }
  const uint64_t one = 1;
  if (::write(stop_fd_, &one, sizeof(one)) < 0) {
    Log().error("consumer lock: cannot signal listener: {}", ErrnoMessage(errno));
  }
  if (listener_.joinable()) listener_.join();
  ::close(stop_fd_);
  ::close(sock_);
}

void ConsumerLock::Listen() {
  pollfd fds[2] = {{sock_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  char buf[256];
  for (;;) {
    const int rc = ::poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      Log().error("consumer lock: poll failed: {}", ErrnoMessage(errno));
      return;
    }
    if (fds[1].revents) return;
    if (fds[0].revents & POLLIN) {
      while (::recv(sock_, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
      }
      on_wake_();
    }
  }
}

Notifier::Notifier(std::string name) : name_(std::move(name)) {
  sock_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
}

Notifier::~Notifier() {
  if (sock_ >= 0) ::close(sock_);
}

void Notifier::Notify() {
  if (sock_ < 0) return;
  sockaddr_un addr;
  const socklen_t len = Address(name_, &addr);
  const char byte = 1;
  ::sendto(sock_, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
}

}  // namespace cpcsync::sqlite
