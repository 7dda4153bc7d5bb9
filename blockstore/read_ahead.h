// Independent reads with a bounded number in flight, consumed in order.
//
// ReadAhead(n, window, read, use) calls read(i) for every i in [0, n) on up
// to `window` worker threads, and use(i, result) on the calling thread in the
// order 0, 1, ..., n-1. At most `window` reads are in flight, and at most
// `window` results wait between a read and its use (read(i) starts only once
// use(i - window) has returned), so memory stays bounded however large n is.
// When use() returns an error, no further read starts; the reads in flight
// finish (their results are dropped) and that error is returned.
//
// Why threads rather than the backends' asynchronous reads (ReadAsync): the
// reads it serves are whole objects of unknown size (manifests), records
// (which have no asynchronous call) and re-hashed chunks; the blocking calls
// do all three on every backend, and on a local directory the threads also
// spread the hashing over the cores. A window is a few dozen threads for the
// length of one gc or fsck (docs/performance.md, "Many images").
//
// read() runs concurrently with itself and with use(); use() runs on the
// calling thread only, one call at a time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "blockstore/mutex.h"
#include "blockstore/status.h"

namespace imgfs {

template <class T>
Status ReadAhead(size_t n, size_t window, const std::function<T(size_t)>& read,
                 const std::function<Status(size_t, T)>& use) {
  if (n == 0) return Status::OK();
  window = std::clamp<size_t>(window, 1, n);
  struct Shared {
    Mutex mu;
    CondVar cv;
    size_t next GUARDED_BY(mu) = 0;      // the next index to read
    size_t consumed GUARDED_BY(mu) = 0;  // indexes below this were used
    bool stop GUARDED_BY(mu) = false;
    std::vector<std::optional<T>> slots GUARDED_BY(mu);  // result of i at i % window
  } s;
  {
    MutexLock lock(s.mu);
    s.slots.resize(window);
  }
  auto worker = [&] {
    for (;;) {
      size_t i;
      {
        MutexLock lock(s.mu);
        while (!s.stop && s.next < n && s.next >= s.consumed + window) s.cv.Wait(s.mu);
        if (s.stop || s.next >= n) return;
        i = s.next++;
      }
      T result = read(i);
      MutexLock lock(s.mu);
      s.slots[i % window].emplace(std::move(result));
      s.cv.NotifyAll();
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(window);
  for (size_t w = 0; w < window; ++w) workers.emplace_back(worker);

  Status status;
  for (size_t i = 0; i < n && status.ok(); ++i) {
    std::optional<T> result;
    {
      MutexLock lock(s.mu);
      while (!s.slots[i % window]) s.cv.Wait(s.mu);
      result.swap(s.slots[i % window]);
      s.consumed = i + 1;
      s.cv.NotifyAll();
    }
    status = use(i, std::move(*result));
  }
  {
    MutexLock lock(s.mu);
    s.stop = true;
    s.cv.NotifyAll();
  }
  for (auto& t : workers) t.join();
  return status;
}

}  // namespace imgfs
