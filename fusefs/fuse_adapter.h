// The thin shell between libfuse's low-level API and FileSystem.
//
// Each FUSE request becomes one FileSystem call; each handler replies exactly
// once, and no exception crosses into libfuse (bad_alloc -> ENOMEM, anything
// else -> EIO, both logged).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blockstore/status.h"
#include "fusefs/fs.h"
#include "fusefs/takeover.h"

namespace imgfs::fusefs {

// Knobs of the FUSE session. Defaults are what docs/performance.md measured.
struct FuseConfig {
  std::string mountpoint;  // an existing directory
  std::string fsname = "imgfs";
  bool debug = false;        // libfuse's request trace on stderr
  bool allow_other = false;  // let other users in (needs user_allow_other for non-root)
  unsigned max_threads = 16;
  unsigned max_idle_threads = 8;
  uint32_t max_write = 1u << 20;  // libfuse 3.14 caps requests at 1 MiB (256 pages)
  uint32_t max_background = 64;   // async direct I/O in flight (libaio iodepth)
  bool splice_read = false;
  bool splice_write = false;
  bool splice_move = false;
  bool writeback_cache = false;
  // FUSE over io_uring (-o io_uring): requests come on io_uring queues, one
  // per CPU, served by libfuse's ring threads, instead of reads of
  // /dev/fuse. Needs libfuse >= 3.18 (FuseHasIoUring) and a kernel that
  // grants it (/sys/module/fuse/parameters/enable_uring); otherwise logged,
  // and the mount serves through /dev/fuse (docs/performance.md).
  bool io_uring = false;
  std::vector<std::string> extra_options;  // passed to libfuse as -o (e.g. max_read=N)
};

// Whether this build's libfuse can serve FUSE over io_uring (>= 3.18).
bool FuseHasIoUring();

// Mounts a FUSE file system at cfg.mountpoint with cfg's mount options
// (fsname, allow_other, extra_options; default_permissions always) and
// returns the connection's /dev/fuse descriptor, close-on-exec. The mount
// serves nothing until a FuseServer runs on that descriptor or a copy of it;
// the connection lives while any process holds one. InvalidArgument when
// libfuse refuses the options, IOError when the mount fails.
Result<int> MountFuse(const FuseConfig& cfg);

// Detaches the mount at `mountpoint` (umount2 with MNT_DETACH as root, else
// fusermount3 -u -z); the kernel then ends the connection.
Status UnmountFuse(const std::string& mountpoint);

// One server of a mounted connection (docs/operations.md, "Crashes and
// upgrades"). Several servers may follow one another on one connection:
// each gets the descriptor, brings its libfuse session to the state the
// connection negotiated (Negotiate), takes over what the kernel holds
// (FileSystem::Restore, done by the caller), asks the kernel to send again
// what its predecessor left unanswered (Resend), and serves (Run).
//
// The loop is imgfs's own, not fuse_session_loop_mt: workers that each read
// and handle one request at a time, grown and shrunk as libfuse's are (up to
// cfg.max_threads, at most cfg.max_idle_threads waiting), which Stop() ends without losing a request (one read but not handled stays
// with the kernel, which a successor's Resend queues again). Clone fds are
// not used: a clone's requests die with the process that holds it.
//
// Thread safety: Negotiate, Resend and Run from one thread, in that order;
// Stop from any thread.
class FuseServer {
 public:
  // A libfuse session over `fuse_fd`, which it owns from now on. `fs` must
  // outlive the server.
  static Result<std::unique_ptr<FuseServer>> Create(FileSystem& fs, const FuseConfig& cfg,
                                                    int fuse_fd);
  ~FuseServer();

  // Without `recorded` this is the connection's first server: it reads the
  // kernel's FUSE_INIT, answers it through libfuse, and hands the exchange
  // to `persist` before the answer goes to the kernel. With `recorded`, the
  // exchange is replayed into this session and nothing reaches the kernel;
  // FailedPrecondition when this server answers differently (another build
  // or other options), so it must not serve this connection.
  Result<InitRecord> Negotiate(const std::optional<InitRecord>& recorded,
                               const std::function<Status(const InitRecord&)>& persist);
  // The kernel's FUSE protocol version (7.minor), known after Negotiate.
  uint32_t kernel_minor() const;
  // FUSE_NOTIFY_RESEND: the kernel queues again every request that was read
  // from this connection and not answered (by a server that died or stopped).
  // False, logged, when the kernel is older than protocol 7.40.
  bool Resend();
  // Serves until Stop() or the unmount, then flushes and closes every open
  // disk (FileSystem::Shutdown). Returns the first flush error or the
  // loop's error; `*unmounted` says whether the connection ended.
  Status Run(bool* unmounted);
  // Makes Run stop reading requests and return once those it read are
  // answered. Any thread.
  void Stop();

 private:
  struct Impl;
  explicit FuseServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace imgfs::fusefs
