// The options of `imgfs mount -o ...` (docs/operations.md): one parser for
// the command and for each server the supervisor starts.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "blockstore/status.h"
#include "cache/store.h"
#include "fusefs/fs.h"
#include "fusefs/fuse_adapter.h"

namespace imgfs::cli {

// Where a server publishes its metrics (docs/operations.md, "Metrics").
struct MetricsOptions {
  std::string listen;   // -o metrics=[HOST:]PORT: HTTP /metrics ("" off; HOST 127.0.0.1)
  std::string file;     // -o metrics_file=PATH: node_exporter's textfile collector
  int interval_s = 15;  // -o metrics_interval=S: how often the file is written
};

// Splits -o lists into imgfs's own options and those passed to libfuse.
// InvalidArgument names a bad value.
// `crash_loop`, when given, receives -o crash_loop=DEATHS/SECONDS.
Status ParseMountOptions(const std::vector<std::string>& lists, fusefs::FsOptions* fs,
                         fusefs::FuseConfig* fuse, StoreOptions* store,
                         std::pair<int, int>* crash_loop = nullptr,
                         MetricsOptions* metrics = nullptr);

// The FUSE file system name for a store ("imgfs:" + path, ',' and '\\' escaped).
std::string FsNameFor(const std::string& store_path);

// The store of an imgfs mount at `mountpoint` (an absolute path without
// symlinks), from `mountinfo` (/proc/self/mountinfo's text): the source of
// the first fuse.imgfs mount there without its "imgfs:" prefix, or nullopt.
std::optional<std::string> ImgfsMountAt(const std::string& mountinfo,
                                        const std::string& mountpoint);

// Detaches a daemon's standard streams: stdin and stdout to /dev/null,
// stderr appended to `log_file` (to /dev/null when empty).
void RedirectStdio(const std::string& log_file);
// Opens `log_file` again (appending; created if logrotate moved it away) as
// stderr. Errors are ignored: the old stderr stays.
void ReopenLog(const std::string& log_file);

}  // namespace imgfs::cli
