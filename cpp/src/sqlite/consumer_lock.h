// ConsumerLock: who consumes a queue file, and how producers wake it.
//
// The consumer binds a Unix datagram socket in Linux's abstract namespace, named
// after the file's device and inode. Binding is exclusive (a second would-be
// consumer, in any process, gets QueueLockedError) and the kernel releases it when
// the consumer closes or dies, so no stale lock survives a crash. A child made by
// fork() without exec drops its copy of the socket at once: only the process that
// took the lock holds it. Producers send
// one byte to that name after each commit; a listener thread in the consumer
// turns it into a wake-up. No polling, no files left behind.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

namespace cpcsync::sqlite {

// The abstract socket name for a queue file (from its device and inode).
std::string NotifyName(const std::string& db_path);

class ConsumerLock {
 public:
  // Binds the name or throws SyncError(kQueueLocked). `on_wake` runs on the
  // listener thread for every batch of producer notifications.
  ConsumerLock(const std::string& name, std::function<void()> on_wake);
  ~ConsumerLock();
  ConsumerLock(const ConsumerLock&) = delete;
  ConsumerLock& operator=(const ConsumerLock&) = delete;

 private:
  friend struct LockRegistry;
  void Listen();
  void DropAfterFork();  // in a forked child: release the copied fds, never join
  bool forked_ = false;
  int sock_ = -1;
  int stop_fd_ = -1;
  std::function<void()> on_wake_;
  std::thread listener_;
};

// A producer's side: a non-blocking unbound datagram socket.
class Notifier {
 public:
  explicit Notifier(std::string name);
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;
  // Best effort: no consumer, or a full buffer (it is awake anyway), is fine.
  void Notify();

 private:
  std::string name_;
  int sock_ = -1;
};

}  // namespace cpcsync::sqlite
