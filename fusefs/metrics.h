// The mount's live counters (docs/operations.md, "Metrics"): per disk, the
// requests the mount served and how long they took; for the server, its
// chunk cache. They live in the server process and start at zero with each
// server (Prometheus counters reset on restart); the supervisor's restarts
// and upgrades come with them. `imgfs stats --mount` reads them as JSON, the
// metrics endpoint and file as Prometheus text.
//
// Thread safety: every method may be called from many threads at once; the
// counters are atomics, the table of disks is guarded by a mutex.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "blockstore/chunk_store.h"
#include "blockstore/mutex.h"

namespace imgfs::fusefs {

// Upper bounds (seconds) of the latency histograms' buckets; +Inf follows.
inline constexpr std::array<double, 14> kLatencyBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};

class LatencyHistogram {
 public:
  void Observe(int64_t ns);
  // Cumulative counts per bucket (the last is +Inf, the total), sum in seconds.
  std::array<uint64_t, kLatencyBuckets.size() + 1> Cumulative() const;
  double SumSeconds() const;

 private:
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size() + 1> counts_{};
  std::atomic<uint64_t> sum_ns_{0};
};

// One disk's counters, from the first time a server opened it.
struct DiskCounters {
  std::atomic<uint64_t> reads{0}, read_bytes{0}, read_errors{0};
  std::atomic<uint64_t> writes{0}, write_bytes{0}, write_errors{0};
  std::atomic<uint64_t> flushes{0}, flush_errors{0};
  std::atomic<uint64_t> discards{0}, discard_errors{0};
  // Opens for writing that took the disk's lock; requests refused because
  // another client holds it (Busy: the lock went to a live migration's
  // destination, or was never had).
  std::atomic<uint64_t> lock_acquisitions{0}, lock_losses{0};
  // Bytes of reads served from the local store instead of the disk's
  // backend (rbd: a clone's parent).
  std::atomic<uint64_t> local_parent_read_bytes{0};
  LatencyHistogram read_latency, write_latency, flush_latency;
};

// What the supervisor knows of the mount (passed to each server it starts).
struct MountInfo {
  std::string mountpoint;
  uint64_t restarts = 0;  // servers started after one died
  uint64_t upgrades = 0;  // successful `imgfs mount --upgrade`s
};

class MountMetrics {
 public:
  // The counters of INSTANCE/DISK, made on first use; valid for the life of
  // this object (a renamed disk keeps counting under its old name until it is
  // opened again).
  std::shared_ptr<DiskCounters> Disk(const std::string& instance, const std::string& disk);

  void SetInfo(MountInfo info);
  // The chunk store whose cache is reported (may be null); must outlive this.
  void SetChunkStore(const ChunkStore* chunks) { chunks_ = chunks; }

  // {"mountpoint", "server_pid", "restarts", "upgrades", "cache": {...},
  //  "disks": [{"instance", "disk", "reads", ...}]}
  nlohmann::json ToJson() const;
  // The Prometheus text exposition format (version 0.0.4).
  std::string ToPrometheus() const;

 private:
  mutable Mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<DiskCounters>> disks_
      GUARDED_BY(mu_);
  MountInfo info_ GUARDED_BY(mu_);
  const ChunkStore* chunks_ = nullptr;  // set before serving
};

}  // namespace imgfs::fusefs
