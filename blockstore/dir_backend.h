// "dir:PATH" chunk backend: objects and records as files under PATH.
//
// Layout (docs/formats.md, "Chunk store: dir backend"):
//   PATH/FORMAT                         "imgfs-dir-backend 1\n"
//   PATH/objects/<kind>/<xx>/<id>       kind = chunk | manifest; xx = first two
//                                       hex digits of the id (256 shards)
//   PATH/records/<key>                  one file per record ("names/ubuntu")
//   PATH/records.lock                   flock'ed around record updates
//   PATH/<name>.lock                    flock'ed by Lock(name) (gc.lock: the
//                                       store's GC lock)
//   PATH/tmp/                           temporary files being written
//
// Publishing an object: where the file system supports O_TMPFILE, an unnamed
// file is opened in the object's own shard directory, written, and given its
// name with linkat(2) ("/proc/self/fd/N", AT_SYMLINK_FOLLOW), which never
// replaces an existing name (EEXIST: already stored). No name in tmp/ is
// shared by all writers and nothing is renamed across directories, and a
// writer killed before linkat leaves nothing behind (docs/performance.md has
// the measurement). Elsewhere (O_TMPFILE or /proc missing, found by a probe
// in Open): write tmp/<unique>.tmp and renameat2 it into place with
// RENAME_NOREPLACE (link(2) + unlink where the file system lacks it).
// Records always use the temp + rename path. A reader therefore sees a whole
// object or none. Durability is batched: Sync() is one
// syncfs(2) of the file system holding PATH (one device flush instead of one
// fsync per chunk: docs/formats.md has the measurement); a crash before it may
// leave objects damaged, which reads detect and a later put repairs. Removal
// is made durable by Sync too. Records are written with fsync of the file and
// of its directory before PutRecord returns. A crash may leave a temp file in
// tmp/, where nothing looks; Open removes those older than kStaleTempAge.
//
// Thread and process safety: objects need no locks (the name is the content
// and publication is an atomic no-replace rename, so concurrent puts of one id
// from threads or processes store it exactly once). Record updates are
// serialised by a mutex within the process and an exclusive flock on
// records.lock across processes; record reads take no lock (rename is atomic).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "blockstore/chunk_backend.h"
#include "blockstore/file_io.h"
#include "blockstore/mutex.h"

namespace imgfs {

class DirChunkBackend : public ChunkBackend {
 public:
  static constexpr std::chrono::seconds kStaleTempAge{3600};

  // How objects are published (see above). kAuto uses O_TMPFILE + linkat when
  // a probe in Open shows it works, else kRename; the environment variable
  // IMGFS_DIR_PUBLISH=rename forces kRename (for measurements).
  enum class PublishMode { kAuto, kRename };

  // Opens the backend at `root`, creating the directory (not its parents) and
  // the layout when missing or empty. InvalidArgument if `root` is a non-empty
  // directory that is not a dir backend, or has another format version.
  // Removes stale temp files.
  static Result<std::shared_ptr<DirChunkBackend>> Open(const std::string& root,
                                                       PublishMode mode = PublishMode::kAuto);
  ~DirChunkBackend() override;
  DirChunkBackend(const DirChunkBackend&) = delete;
  DirChunkBackend& operator=(const DirChunkBackend&) = delete;

  std::string Describe() const override { return "dir:" + root_; }
  Status PutIfAbsent(ObjectKind kind, std::string_view id, ByteView data) override;
  Status Get(ObjectKind kind, std::string_view id, Bytes* out) override;
  Result<size_t> Read(ObjectKind kind, std::string_view id, MutableByteView buf) override;
  Result<bool> Exists(ObjectKind kind, std::string_view id) override;
  Status Remove(ObjectKind kind, std::string_view id) override;
  Result<uint64_t> Size(ObjectKind kind, std::string_view id) override;  // stat(2)
  Status List(ObjectKind kind, const std::function<Status(std::string_view id)>& fn) override;
  Status GetRecord(std::string_view key, std::string* value) override;
  Status PutRecord(std::string_view key, std::string_view value,
                   const RecordCondition& cond) override;
  Status RemoveRecord(std::string_view key, const RecordCondition& cond) override;
  Status ListRecords(std::string_view prefix,
                     const std::function<Status(std::string_view key)>& fn) override;
  // flock(2) on PATH/<name>.lock: released by the kernel when the holder dies.
  Result<std::unique_ptr<BackendLock>> Lock(std::string_view name, LockMode mode,
                                            const std::function<void()>& waiting) override;
  // syncfs(2) when anything was put, found or removed since the last Sync.
  Status Sync() override;
  // capacity/available from statvfs(PATH); used_bytes is left 0 (unknown:
  // computing it would walk every object).
  Result<SpaceInfo> Space() override;

  const std::string& root() const { return root_; }
  // Where object (kind, id) lives; the id must be valid. For tests and fsck.
  std::string ObjectPath(ObjectKind kind, std::string_view id) const;
  std::string TempDir() const { return root_ + "/tmp"; }
  // True when objects are published with O_TMPFILE + linkat.
  bool uses_tmpfile() const { return tmpfile_; }
  // Removes files in tmp/ last modified more than `min_age` ago; returns how
  // many it removed.
  Result<int> CleanTemp(std::chrono::seconds min_age);

 private:
  DirChunkBackend(std::string root, int lock_fd, FileIO& io);

  // Writes `data` to a new temp file, fsynced when `sync`; sets *path.
  Status WriteTemp(ByteView data, bool sync, std::string* path);
  // Moves temp file `tmp` to `dest` (no replace when !replace), creating the
  // parent directory if missing, and fsyncs the parent when `sync`.
  // AlreadyExists when !replace and `dest` exists; the temp file is removed
  // in every case.
  Status Publish(const std::string& tmp, const std::string& dest, bool replace, bool sync);
  // Writes `data` to an O_TMPFILE file in dest's directory (created if
  // missing) and links it at `dest`; AlreadyExists when `dest` exists.
  Status PublishLinked(const std::string& dest, ByteView data);
  // Whether O_TMPFILE + linkat through /proc works in tmp/.
  bool ProbeTmpfile();
  std::string RecordPath(std::string_view key) const {
    return root_ + "/records/" + std::string(key);
  }
  Status ReadRecordFile(const std::string& path, std::string* value, bool* found);

  const std::string root_;  // constant after construction
  const int lock_fd_;       // records.lock, open for the backend's lifetime
  FileIO& io_;              // FileIO::Current() at Open; constant
  Mutex records_mu_;        // serialises record updates within the process
  std::atomic<uint64_t> temp_seq_{0};
  std::atomic<bool> unsynced_{false};  // objects changed since the last Sync
  bool tmpfile_ = false;               // set in Open, constant afterwards
};

}  // namespace imgfs
