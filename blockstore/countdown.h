// Waiting for a known number of asynchronous completions.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

#include "blockstore/mutex.h"
#include "blockstore/status.h"

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

// The asynchronous counterpart: `n` parts each report their Status once
// (Part), from any thread; when the last one has, `done` is called once, on
// that thread, with the first error reported (OK when there was none). Keep
// it in a shared_ptr captured by every part's callback.
class StatusJoin {
 public:
  StatusJoin(size_t n, std::function<void(Status)> done) : left_(n), done_(std::move(done)) {}
  StatusJoin(const StatusJoin&) = delete;
  StatusJoin& operator=(const StatusJoin&) = delete;
  void Part(Status s) EXCLUDES(mu_) {
    if (!s.ok()) {
      MutexLock lock(mu_);
      if (first_error_.ok()) first_error_ = std::move(s);
    }
    if (left_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    Status result;
    {
      MutexLock lock(mu_);
      result = std::move(first_error_);
    }
    std::exchange(done_, nullptr)(std::move(result));
  }

 private:
  std::atomic<size_t> left_;
  std::function<void(Status)> done_;  // called by the last part only
  Mutex mu_;
  Status first_error_ GUARDED_BY(mu_);
};

}  // namespace imgfs
