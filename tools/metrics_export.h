// Where a mount's server publishes its counters (fusefs/metrics.h;
// docs/operations.md, "Metrics"):
//   - always, an abstract unix socket named after the server's pid, which
//     `imgfs stats --mount` asks (root or the mounting user only);
//   - with -o metrics=HOST:PORT, Prometheus text on http://HOST:PORT/metrics
//     (civetweb);
//   - with -o metrics_file=PATH, the same text written to PATH every
//     metrics_interval seconds, atomically (a temporary file renamed over it),
//     for node_exporter's textfile collector.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>

#include "blockstore/mutex.h"
#include "blockstore/status.h"
#include "fusefs/metrics.h"
#include "tools/mount_options.h"

struct mg_context;

namespace imgfs::cli {

class MetricsExport {
 public:
  // `metrics` must outlive this object.
  MetricsExport(fusefs::MountMetrics& metrics, MetricsOptions options);
  ~MetricsExport();  // stops every thread; the file is written a last time
  MetricsExport(const MetricsExport&) = delete;
  MetricsExport& operator=(const MetricsExport&) = delete;

  // Starts what the options ask for. A metrics port that cannot be bound is
  // logged and tried again every few seconds (an upgrade's old server may
  // still hold it for a moment); it does not stop the mount.
  void Start();

 private:
  void StatsLoop();
  void FileLoop();
  void HttpLoop();
  Status WriteFile();

  fusefs::MountMetrics& metrics_;
  const MetricsOptions options_;
  int listen_fd_ = -1;
  Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  mg_context* http_ GUARDED_BY(mu_) = nullptr;
  std::thread stats_thread_, file_thread_, http_thread_;
};

// Sends `request` ("json" or "prometheus") to the server `pid` of a mount
// and returns its answer. Unavailable when no server listens there.
Result<std::string> AskServer(pid_t pid, const std::string& request);

}  // namespace imgfs::cli
