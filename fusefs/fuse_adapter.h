// The thin shell between libfuse's low-level API and FileSystem.
//
// Each FUSE request becomes one FileSystem call; each handler replies exactly
// once, and no exception crosses into libfuse (bad_alloc -> ENOMEM, anything
// else -> EIO, both logged). The session runs fuse_session_loop_mt.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blockstore/status.h"
#include "fusefs/fs.h"

namespace imgfs::fusefs {

// Knobs of the FUSE session. Defaults are what docs/performance.md measured.
struct FuseConfig {
  std::string mountpoint;  // an existing directory
  std::string fsname = "imgfs";
  bool debug = false;        // libfuse's request trace on stderr
  bool allow_other = false;  // let other users in (needs user_allow_other for non-root)
  bool clone_fd = false;     // one /dev/fuse descriptor per worker thread
  unsigned max_threads = 16;
  unsigned max_idle_threads = 8;
  uint32_t max_write = 1u << 20;  // libfuse 3.14 caps requests at 1 MiB (256 pages)
  uint32_t max_background = 64;   // async direct I/O in flight (libaio iodepth)
  bool splice_read = false;
  bool splice_write = false;
  bool splice_move = false;
  bool writeback_cache = false;
  std::vector<std::string> extra_options;  // passed to libfuse as -o (e.g. max_read=N)
};

// A mounted FUSE session over a FileSystem.
//
// Thread safety: Mount and Run are called from one thread; the handlers run
// on the loop's worker threads.
class FuseSession {
 public:
  // Mounts `fs` at cfg.mountpoint. InvalidArgument when libfuse refuses the
  // options; IOError when the mount fails. `fs` must outlive the session.
  static Result<std::unique_ptr<FuseSession>> Mount(FileSystem& fs, const FuseConfig& cfg);

  // Serves requests until the file system is unmounted (fusermount3 -u) or
  // the process gets SIGINT, SIGTERM or SIGHUP; then flushes and closes every
  // open disk (FileSystem::Shutdown) and unmounts. Returns the first flush
  // error, or IOError if the loop failed.
  Status Run();

  // Unmounts if Run has not.
  ~FuseSession();

 private:
  struct Impl;
  explicit FuseSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace imgfs::fusefs
