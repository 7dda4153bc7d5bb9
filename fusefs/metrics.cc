#include "fusefs/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <functional>
#include <vector>

namespace imgfs::fusefs {

void LatencyHistogram::Observe(int64_t ns) {
  if (ns < 0) ns = 0;
  double s = static_cast<double>(ns) / 1e9;
  size_t i = 0;
  while (i < kLatencyBuckets.size() && s > kLatencyBuckets[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
}

std::array<uint64_t, kLatencyBuckets.size() + 1> LatencyHistogram::Cumulative() const {
  std::array<uint64_t, kLatencyBuckets.size() + 1> out{};
  uint64_t total = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    total += counts_[i].load(std::memory_order_relaxed);
    out[i] = total;
  }
  return out;
}

double LatencyHistogram::SumSeconds() const {
  return static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9;
}

std::shared_ptr<DiskCounters> MountMetrics::Disk(const std::string& instance,
                                                 const std::string& disk) {
  MutexLock lock(mu_);
  auto& c = disks_[{instance, disk}];
  if (!c) c = std::make_shared<DiskCounters>();
  return c;
}

void MountMetrics::SetInfo(MountInfo info) {
  MutexLock lock(mu_);
  info_ = std::move(info);
}

namespace {

uint64_t Load(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }

// One counter of DiskCounters: its metric name and help, and its JSON key.
struct DiskCounterDef {
  const char* json;
  const char* metric;
  const char* help;
  std::atomic<uint64_t> DiskCounters::*field;
};

const std::vector<DiskCounterDef>& DiskCounterDefs() {
  static const std::vector<DiskCounterDef> defs = {
      {"reads", "imgfs_disk_reads_total", "Read requests served.", &DiskCounters::reads},
      {"read_bytes", "imgfs_disk_read_bytes_total", "Bytes read.", &DiskCounters::read_bytes},
      {"read_errors", "imgfs_disk_read_errors_total", "Read requests that failed.",
       &DiskCounters::read_errors},
      {"writes", "imgfs_disk_writes_total", "Write requests served.", &DiskCounters::writes},
      {"write_bytes", "imgfs_disk_written_bytes_total", "Bytes written.",
       &DiskCounters::write_bytes},
      {"write_errors", "imgfs_disk_write_errors_total", "Write requests that failed.",
       &DiskCounters::write_errors},
      {"flushes", "imgfs_disk_flushes_total", "Flushes (fsync, and close after writes).",
       &DiskCounters::flushes},
      {"flush_errors", "imgfs_disk_flush_errors_total", "Flushes that failed.",
       &DiskCounters::flush_errors},
      {"discards", "imgfs_disk_discards_total", "Discards (punch hole, zero range).",
       &DiskCounters::discards},
      {"discard_errors", "imgfs_disk_discard_errors_total", "Discards that failed.",
       &DiskCounters::discard_errors},
      {"lock_acquisitions", "imgfs_disk_lock_acquisitions_total",
       "Opens for writing that took the disk's lock.", &DiskCounters::lock_acquisitions},
      {"lock_losses", "imgfs_disk_lock_losses_total",
       "Requests refused because another client holds the disk's lock.",
       &DiskCounters::lock_losses},
      {"local_parent_read_bytes", "imgfs_disk_local_parent_read_bytes_total",
       "Bytes of a clone's parent read from the local image store instead of the cluster (rbd).",
       &DiskCounters::local_parent_read_bytes},
  };
  return defs;
}

struct HistogramDef {
  const char* json;
  const char* metric;
  const char* help;
  LatencyHistogram DiskCounters::*field;
};

const std::vector<HistogramDef>& HistogramDefs() {
  static const std::vector<HistogramDef> defs = {
      {"read_latency", "imgfs_disk_read_duration_seconds", "Time to serve a read.",
       &DiskCounters::read_latency},
      {"write_latency", "imgfs_disk_write_duration_seconds", "Time to serve a write.",
       &DiskCounters::write_latency},
      {"flush_latency", "imgfs_disk_flush_duration_seconds", "Time to serve a flush.",
       &DiskCounters::flush_latency},
  };
  return defs;
}

// A label value, escaped as the text format wants.
std::string Label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

nlohmann::json MountMetrics::ToJson() const {
  MutexLock lock(mu_);
  nlohmann::json j = {{"mountpoint", info_.mountpoint},
                      {"server_pid", getpid()},
                      {"restarts", info_.restarts},
                      {"upgrades", info_.upgrades}};
  if (chunks_) {
    ChunkStore::Counters c = chunks_->counters();
    j["cache"] = {{"capacity_bytes", chunks_->cache_bytes()},
                  {"used_bytes", c.cache_used_bytes},
                  {"hits", c.cache_hits},
                  {"misses", c.cache_misses},
                  {"evictions", c.cache_evictions},
                  {"verify_failures", c.verify_failures}};
  }
  nlohmann::json disks = nlohmann::json::array();
  for (const auto& [key, c] : disks_) {
    nlohmann::json d = {{"instance", key.first}, {"disk", key.second}};
    for (const auto& def : DiskCounterDefs()) d[def.json] = Load((*c).*(def.field));
    for (const auto& def : HistogramDefs()) {
      const LatencyHistogram& h = (*c).*(def.field);
      d[def.json] = {{"count", h.Cumulative().back()}, {"sum_seconds", h.SumSeconds()}};
    }
    disks.push_back(std::move(d));
  }
  j["disks"] = std::move(disks);
  return j;
}

std::string MountMetrics::ToPrometheus() const {
  MutexLock lock(mu_);
  std::string out;
  std::string mount = "mountpoint=\"" + Label(info_.mountpoint) + "\"";
  auto head = [&](const char* name, const char* type, const char* help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto sample = [&](const std::string& name, const std::string& labels, double v) {
    out += name + "{" + labels + "} " + Number(v) + "\n";
  };
  head("imgfs_server_restarts_total", "counter",
       "Servers the supervisor started after one died (crashes, kills).");
  sample("imgfs_server_restarts_total", mount, static_cast<double>(info_.restarts));
  head("imgfs_server_upgrades_total", "counter", "Successful hand-overs to a new binary.");
  sample("imgfs_server_upgrades_total", mount, static_cast<double>(info_.upgrades));
  if (chunks_) {
    ChunkStore::Counters c = chunks_->counters();
    head("imgfs_chunk_cache_size_bytes", "gauge", "Bytes of verified chunks in the cache.");
    sample("imgfs_chunk_cache_size_bytes", mount, static_cast<double>(c.cache_used_bytes));
    head("imgfs_chunk_cache_capacity_bytes", "gauge", "The cache's size limit (cache_size).");
    sample("imgfs_chunk_cache_capacity_bytes", mount, static_cast<double>(chunks_->cache_bytes()));
    head("imgfs_chunk_cache_hits_total", "counter", "Chunk reads answered from the cache.");
    sample("imgfs_chunk_cache_hits_total", mount, static_cast<double>(c.cache_hits));
    head("imgfs_chunk_cache_misses_total", "counter", "Chunk reads that went to the backend.");
    sample("imgfs_chunk_cache_misses_total", mount, static_cast<double>(c.cache_misses));
    head("imgfs_chunk_cache_evictions_total", "counter", "Chunks evicted from the cache.");
    sample("imgfs_chunk_cache_evictions_total", mount, static_cast<double>(c.cache_evictions));
    head("imgfs_chunk_verify_failures_total", "counter",
         "Chunks read whose bytes did not match their id (damage).");
    sample("imgfs_chunk_verify_failures_total", mount, static_cast<double>(c.verify_failures));
  }
  auto disk_labels = [&](const std::pair<std::string, std::string>& key) {
    return mount + ",instance_name=\"" + Label(key.first) + "\",disk=\"" + Label(key.second) + "\"";
  };
  for (const auto& def : DiskCounterDefs()) {
    head(def.metric, "counter", def.help);
    for (const auto& [key, c] : disks_) {
      sample(def.metric, disk_labels(key), static_cast<double>(Load((*c).*(def.field))));
    }
  }
  for (const auto& def : HistogramDefs()) {
    head(def.metric, "histogram", def.help);
    for (const auto& [key, c] : disks_) {
      const LatencyHistogram& h = (*c).*(def.field);
      auto counts = h.Cumulative();
      std::string labels = disk_labels(key);
      for (size_t i = 0; i < counts.size(); ++i) {
        char le[32] = "+Inf";
        if (i < kLatencyBuckets.size()) std::snprintf(le, sizeof le, "%g", kLatencyBuckets[i]);
        sample(std::string(def.metric) + "_bucket", labels + ",le=\"" + std::string(le) + "\"",
               static_cast<double>(counts[i]));
      }
      sample(std::string(def.metric) + "_sum", labels, h.SumSeconds());
      sample(std::string(def.metric) + "_count", labels, static_cast<double>(counts.back()));
    }
  }
  return out;
}

}  // namespace imgfs::fusefs
