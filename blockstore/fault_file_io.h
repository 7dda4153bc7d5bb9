// A FileIO for power-cut tests (docs/architecture.md, "Power-cut tests"), in
// the manner of RocksDB's FaultInjectionTestFS: it keeps, for every file and
// directory under a root, what is durable (as of its last fsync, fdatasync or
// syncfs) and what changed since, and on a simulated power cut drops or tears
// the part that was not synced.
//
// The model. Files: the durable content is the whole file as read at its
// last sync; everything written since (through pwrite on any descriptor,
// ftruncate, fallocate: the seam need not see writes) is the difference
// between that and the file's content at the cut. Directories: entry changes
// (create, link, rename, unlink, mkdir, rmdir) are made through this FileIO,
// each recorded as one atomic change of each directory it touches; they are
// durable once that directory is synced (fsync of it, or syncfs). A rename
// between two directories is a change in each, so a cut may keep either,
// both or neither: harsher than a journaling file system, never kinder. A new
// file's entry is not made durable by an fsync of the file. An inode whose
// last name goes is dead; a later file with the same inode number is a new
// node, so stale content never leaks into it.
//
// At a cut every directory keeps its durable entries plus a prefix (chosen by
// the Tear) of its unsynced changes, and every file keeps its durable content
// with some of the unsynced part: none, all, a random subset or a random
// prefix of the changed 512-byte sectors, and the old or the new size. Files
// opened under `volatile_dir` (tmpfs) are lost. From the cut on, every call
// fails with EIO (the machine is off); pread/pwrite on open descriptors still
// reach the real files, which no longer matter.
//
// Thread safety: all calls may come from many threads; the model and the
// real call change together under one lock.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "blockstore/file_io.h"
#include "blockstore/mutex.h"
#include "blockstore/status.h"

namespace imgfs {

class FaultInjectionFileIO final : public FileIO {
 public:
  // What a cut keeps of what was not synced.
  enum class Tear {
    kDropAll,  // nothing: the durable state alone
    kKeepAll,  // everything, as if it had all been synced
    kRandom,   // per directory a random prefix of its changes, per file a random mix
  };

  // Models the tree under `root`, an existing directory; what is there now
  // counts as durable.
  explicit FaultInjectionFileIO(std::string root, std::string volatile_dir = "/dev/shm");
  ~FaultInjectionFileIO() override;

  // The power goes off just before call number `n` (counted from 1 since
  // construction or the last Restore) would run; 0 disarms.
  void CutBeforeCall(uint64_t n, Tear tear, uint64_t seed) EXCLUDES(mu_);
  // The power goes off now (when not already off).
  void CutNow(Tear tear, uint64_t seed) EXCLUDES(mu_);
  bool power_off() const EXCLUDES(mu_);
  // Calls made since construction or the last Restore.
  uint64_t calls() const EXCLUDES(mu_);
  // Their numbers, for those that were syncs (fsync, fdatasync, syncfs).
  std::vector<uint64_t> sync_calls() const EXCLUDES(mu_);
  // After a cut, once nothing uses the tree: replaces the tree under root
  // with what the cut left, removes the volatile files seen, and starts
  // again (power on, everything durable, calls counted from 0).
  Status Restore() EXCLUDES(mu_);

  int Open(const std::string& path, int flags, mode_t mode) override EXCLUDES(mu_);
  int LinkFd(int fd, const std::string& dest) override EXCLUDES(mu_);
  int Link(const std::string& from, const std::string& to) override EXCLUDES(mu_);
  int Rename(const std::string& from, const std::string& to, unsigned flags) override EXCLUDES(mu_);
  int Unlink(const std::string& path) override EXCLUDES(mu_);
  int Mkdir(const std::string& path, mode_t mode) override EXCLUDES(mu_);
  int Rmdir(const std::string& path) override EXCLUDES(mu_);
  int Fsync(int fd) override EXCLUDES(mu_);
  int Fdatasync(int fd) override EXCLUDES(mu_);
  int Syncfs(int fd) override EXCLUDES(mu_);

 private:
  // One entry change of a directory: `node` 0 removes `name`.
  using Change = std::vector<std::pair<std::string, uint64_t>>;
  struct Node {
    bool dir = false;
    bool alive = true;
    std::string durable;                              // files
    std::map<std::string, uint64_t> durable_entries;  // directories
    std::vector<Change> pending;                      // directories: since the last sync
    std::map<std::string, uint64_t> live;             // directories: entries now
  };

  // Counts a call; false (the caller returns EIO) when the power is off, or
  // goes off at this call.
  bool Enter() REQUIRES(mu_);
  void CutLocked(Tear tear, uint64_t seed) REQUIRES(mu_);
  // The parent directory's node and the last component of `path`, when
  // `path` lies under root and its parent is known.
  bool Parent(const std::string& path, uint64_t* parent, std::string* name) REQUIRES(mu_);
  uint64_t NewNode(ino_t ino, bool dir) REQUIRES(mu_);
  uint64_t NodeFor(ino_t ino, bool dir) REQUIRES(mu_);
  void Kill(ino_t ino) REQUIRES(mu_);
  void Apply(uint64_t dir, Change change) REQUIRES(mu_);
  void Commit(uint64_t dir) REQUIRES(mu_);
  // fsync and fdatasync (the model does not tell them apart).
  int SyncFd(int fd) EXCLUDES(mu_);
  // Reads the tree under root into the model, all of it durable.
  void Scan() REQUIRES(mu_);
  void ScanDir(const std::string& path, uint64_t id) REQUIRES(mu_);
  // Node id -> path now, for the live nodes reachable from root.
  void LivePaths(uint64_t id, const std::string& path,
                 std::unordered_map<uint64_t, std::string>* out) REQUIRES(mu_);
  void Build(uint64_t id, const std::string& out, Tear tear, std::mt19937_64& rng,
             const std::unordered_map<uint64_t, std::string>& paths, int depth) REQUIRES(mu_);
  std::string Torn(uint64_t id, Tear tear, std::mt19937_64& rng,
                   const std::unordered_map<uint64_t, std::string>& paths) REQUIRES(mu_);

  const std::string root_;
  const std::string volatile_dir_;
  const std::string cut_dir_;  // where a cut builds what it leaves
  dev_t dev_ = 0;              // root's device; constant

  mutable Mutex mu_;
  std::unordered_map<uint64_t, Node> nodes_ GUARDED_BY(mu_);
  std::unordered_map<ino_t, uint64_t> by_ino_ GUARDED_BY(mu_);  // live inodes
  uint64_t next_id_ GUARDED_BY(mu_) = 1;
  uint64_t root_id_ GUARDED_BY(mu_) = 0;
  uint64_t calls_ GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> sync_calls_ GUARDED_BY(mu_);
  uint64_t cut_at_ GUARDED_BY(mu_) = 0;
  Tear cut_tear_ GUARDED_BY(mu_) = Tear::kRandom;
  uint64_t cut_seed_ GUARDED_BY(mu_) = 0;
  bool power_off_ GUARDED_BY(mu_) = false;
  std::set<std::string> volatile_files_ GUARDED_BY(mu_);
};

}  // namespace imgfs
