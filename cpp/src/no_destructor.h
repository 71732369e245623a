// NoDestructor<T>: a process-wide object that is never destroyed.
//
// cpcsync's background threads (engine workers, monitors, checkpointers, the proxy,
// the log bridge) may still run while exit() destroys function-local statics: a
// process may exit without stopping them (Python does not join C++ threads). A
// static they use (the logger, the log bridge's queue, the fork registries) must
// therefore outlive them: it is built in place on first use and its destructor never
// runs. The memory is the process's until it ends. For statics only.
#pragma once

#include <new>
#include <utility>

namespace cpcsync {

template <class T>
class NoDestructor {
 public:
  template <class... Args>
  explicit NoDestructor(Args&&... args) {
    ::new (static_cast<void*>(storage_)) T(std::forward<Args>(args)...);
  }
  ~NoDestructor() = default;  // T's destructor is never called, on purpose
  NoDestructor(const NoDestructor&) = delete;
  NoDestructor& operator=(const NoDestructor&) = delete;

  T& get() { return *std::launder(reinterpret_cast<T*>(storage_)); }
  T* operator->() { return &get(); }
  T& operator*() { return get(); }

 private:
  alignas(T) unsigned char storage_[sizeof(T)];
};

}  // namespace cpcsync
