// The mount's supervisor (docs/operations.md, "Crashes and upgrades").
//
// `imgfs mount` becomes the supervisor: it mounts, keeps the FUSE
// connection's descriptor for the life of the mount, and runs the mount's
// servers as child processes (`imgfs __serve`), one at a time, each given the
// connection and the state file. When a server exits for any reason but an
// unmount or a stop, the supervisor starts another on the same connection.
// It holds no disk state, opens no disk and no store, and reads no request
// (except, after a crash loop, the fixed header of each to fail it with EIO).
// Its control socket (abstract unix socket, ControlSocketName) takes
// `imgfs mount --upgrade` and `--status` from root or the mounting user.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "blockstore/status.h"
#include "fusefs/fuse_adapter.h"

namespace imgfs::cli {

// A server that dies `deaths` times within `seconds` is not started again:
// the mount fails every request with EIO until an upgrade or the unmount.
struct CrashLoopRule {
  int deaths = 5;
  int seconds = 30;
};

struct SupervisorConfig {
  fusefs::FuseConfig fuse;               // what to mount, and how
  std::string exe;                       // the imgfs binary servers run
  std::vector<std::string> server_args;  // its arguments, from --store to __serve's options
  std::string pid_file;                  // the supervisor's pid, removed at exit (may be empty)
  std::string log_file;  // where stderr goes once the mount is ready (reopened on SIGUSR1)
  CrashLoopRule crash_loop;
};

// Mounts, starts the first server, calls `ready` once with OK when it serves
// (or with the error that stopped it: nothing is left mounted then), and
// supervises until the mount ends (unmount, or SIGTERM/SIGINT/SIGHUP: the
// server flushes and exits, then the supervisor unmounts). SIGUSR1 reopens
// the log file (logrotate) and is passed on to the serving server. Returns the exit
// status: 0, or 1 when the first server failed or the last one's flush did.
int RunSupervisor(const SupervisorConfig& cfg, const std::function<void(const Status&)>& ready);

// Goes on supervising after an upgrade re-executed the supervisor; `state` is
// what the previous supervisor passed (its descriptors and children).
int ResumeSupervisor(const std::string& state);

// Messages between the supervisor, its servers and `imgfs mount --upgrade`:
// one SOCK_SEQPACKET message each, optionally carrying one descriptor.
bool SendMessage(int sock, const std::string& msg, int fd = -1);
// One message (and its descriptor in *fd, when fd is given); nullopt at the
// end of the stream, on an error, or with MSG_DONTWAIT when none waits.
std::optional<std::string> RecvMessage(int sock, int* fd, int flags = 0);

// The abstract unix socket the supervisor of `mountpoint` (absolute) listens on.
std::string ControlSocketName(const std::string& mountpoint);

// Sends one request ("upgrade PATH" or "status") to the supervisor of
// `mountpoint` and returns its answer ("ok ..." or "error ..."). Unavailable
// when no supervisor answers there.
Result<std::string> AskSupervisor(const std::string& mountpoint, const std::string& request);

}  // namespace imgfs::cli
