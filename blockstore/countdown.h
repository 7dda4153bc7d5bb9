// Waiting for a known number of asynchronous completions.
#pragma once

#include <cstddef>

#include "blockstore/mutex.h"

namespace imgfs {

// Wait() returns once CountDown() was called `n` times. Thread-safe. It
// notifies under its lock, so the waiter may destroy the Countdown as soon as
// Wait returns (std::latch gives no such promise to a count_down still in
// progress on another thread).
class Countdown {
 public:
  explicit Countdown(size_t n) : n_(n) {}
  Countdown(const Countdown&) = delete;
  Countdown& operator=(const Countdown&) = delete;
  void CountDown() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (--n_ == 0) cv_.NotifyAll();
  }
  void Wait() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (n_ != 0) cv_.Wait(mu_);
  }

 private:
  Mutex mu_;
  CondVar cv_;
  size_t n_ GUARDED_BY(mu_);
};

}  // namespace imgfs
