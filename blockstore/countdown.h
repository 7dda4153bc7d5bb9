// Waiting for a known number of asynchronous completions.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>

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
  void CountDown() {
    std::lock_guard lock(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return n_ == 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t n_;  // GUARDED_BY(mu_)
};

}  // namespace imgfs
