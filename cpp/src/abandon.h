// Abandon(): the one way cpcsync leaks on purpose.
//
// A process forked from one running cpcsync inherits copies of objects that belong
// to the parent's threads: joinable std::threads, the waiters those threads sleep
// on, storage in use by them. In the child they must be neither used nor destroyed:
// destroying a joinable std::thread calls std::terminate, joining one waits forever,
// and a mutex inside may be held by a thread that does not exist in the child.
// Abandon() moves such a value to the heap and never frees it. Not for any other use.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace cpcsync {

template <class T>
void Abandon(T&& value) {
  auto owner = std::make_unique<std::decay_t<T>>(std::forward<T>(value));
  static_cast<void>(owner.release());  // NOLINT(bugprone-unused-return-value): on purpose
}

}  // namespace cpcsync
