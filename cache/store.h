// The store: one directory holding imgfs's configuration and local state, the
// chunk store (the deduplicated _base cache) and the disk backend.
//
// Layout of a store directory (docs/formats.md):
//   imgfs.json   configuration: format version, chunk size, chunk backend,
//                disk backend, Ceph options
//   chunks/      the "dir" chunk backend (when chunks = dir)
//   disks/       the "local" disk backend (when disks = local)
//   tmp/         temporary files (conversions, imports in progress)
//
// Images and names are records in the chunk backend, so a store whose chunks
// live in RADOS shares them with every host using the same pool:
//   images/<image id>  JSON image record (size, created, last_used, ...)
//   names/<name>       the image id the name points at
// An image is visible once its record exists; the record is written last,
// after its chunks and manifest, so an interrupted import is never visible.
//
// Thread safety: a Store may be used from many threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "blockstore/backends.h"
#include "blockstore/chunk_backend.h"
#include "blockstore/chunk_store.h"
#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"
#include "blockstore/mutex.h"
#include "blockstore/status.h"

namespace imgfs {

struct StoreConfig {
  uint32_t chunk_size = kDefaultChunkSize;
  std::string chunks = "dir";   // "dir", "mem", "rados:POOL[/NS]"
  std::string disks = "local";  // "local", "mem", "rbd:POOL"
  CephOptions ceph;
};

struct ImageRecord {
  ImageId id;
  uint64_t size = 0;
  uint32_t chunk_size = 0;         // the manifest's; 0 in records written before it was kept
  uint64_t data_bytes = 0;         // bytes of non-hole chunks
  int64_t created = 0;             // unix seconds
  int64_t last_used = 0;           // unix seconds; disk creation and mounting count as use
  std::vector<std::string> names;  // filled by ListImages/GetImage
};

// How this process uses a store (not stored in it).
struct StoreOptions {
  // Bytes of verified chunks kept in memory (ChunkStore); nullopt: the
  // default, DefaultChunkCacheBytes(). 0 disables the cache.
  std::optional<size_t> chunk_cache_bytes;
};

// The store's notion of "now"; tests inject a frozen clock.
using Clock = std::function<int64_t()>;  // unix seconds
int64_t SystemClockNow();

class Store : public ImageSource {
 public:
  // Creates a store at `path`, or does nothing if one with the same
  // configuration is already there. Refuses a non-empty directory that is not
  // a store, and an existing store with a different configuration.
  static Status Init(const std::string& path, const StoreConfig& config);

  // Opens an existing store; NotFound with "run 'imgfs init'" when missing,
  // InvalidArgument when `path` holds something that is not a store.
  // `options` are this process's tuning (StoreOptions), not the store's.
  static Result<std::unique_ptr<Store>> Open(const std::string& path, Clock clock = {},
                                             const StoreOptions& options = {});

  ~Store() override;

  const std::string& path() const { return path_; }
  const StoreConfig& config() const { return config_; }
  std::string tmp_dir() const { return path_ + "/tmp"; }
  ChunkStore& chunks() { return *chunks_; }
  const std::shared_ptr<ChunkStore>& shared_chunks() { return chunks_; }
  ChunkBackend& backend() { return chunks_->backend(); }
  DiskBackend& disks() { return *disks_; }
  int64_t Now() const { return clock_(); }

  // IMAGE is a full id, a unique id prefix of 8+ hex digits, or a name. An
  // ambiguous prefix is InvalidArgument listing the candidates.
  Result<ImageId> ResolveImage(std::string_view ref);
  Result<ImageRecord> GetImage(const ImageId& id);  // with its names
  // The image record alone (no names), e.g. for checks over many images.
  Result<ImageRecord> ReadImageRecord(const ImageId& id);
  Result<std::vector<ImageRecord>> ListImages();

  // Publishes an image whose chunks and manifest are already stored: writes
  // its record (if absent) and adds `names`. Idempotent.
  Status PublishImage(const Manifest& manifest, const ImageId& id,
                      const std::vector<std::string>& names, bool force_names);
  // Points `name` at `id`. AlreadyExists if it points elsewhere, unless force.
  Status SetName(const std::string& name, const ImageId& id, bool force);
  Status RemoveName(const std::string& name);
  // Removes an image, its names and its publication in the disk backend (the
  // rbd base). Busy, naming them, when disks or clones of its published base
  // use it; nothing is removed then. Its chunks are left for `imgfs gc`.
  Status RemoveImage(const ImageId& id);
  // RemoveImage without its checks of the disks and use records, for a
  // caller that found them for every image at once, under the exclusive GC
  // lock (gc): removes the publication (still Busy, removing nothing, if a
  // clone uses it), then `r.names` and the record. O(1) in the number of
  // images, disks and names in the store.
  Status RemoveUnusedImage(const ImageRecord& r);
  // Records a use of an image (disk creation, mounting) for gc's aging.
  Status TouchImage(const ImageId& id);

  // The store-wide GC lock (cache/gc.h): imports and disk creation hold it
  // shared, gc exclusive. It is the chunk backend's lock "gc"
  // (ChunkBackend::Lock): a flock for a dir store, a RADOS lease shared by
  // every host of a rados store. Blocks until granted (calling `waiting` once
  // if it must wait); released when the returned handle is destroyed or the
  // process dies (a RADOS lease then runs out). The handle must not outlive
  // the Store.
  class GcLock {
   public:
    explicit GcLock(std::unique_ptr<BackendLock> lock) : lock_(std::move(lock)) {}
    GcLock(const GcLock&) = delete;
    GcLock& operator=(const GcLock&) = delete;
    // OK while the lock is certainly held; Unavailable once it is lost (a
    // RADOS lease that could not be renewed). Whoever holds it checks before
    // each step that relies on it, and stops with this error.
    Status Check() const { return lock_->Check(); }

   private:
    std::unique_ptr<BackendLock> lock_;
  };
  Result<std::unique_ptr<GcLock>> LockShared(const std::function<void()>& waiting = {});
  Result<std::unique_ptr<GcLock>> LockExclusive(const std::function<void()>& waiting = {});

  // Disks change through the store only, for the command line and the mount
  // alike (docs/architecture.md, "Backends"); reads (Info, List, Open) go
  // to disks() directly.
  //
  // Creates a disk; one made from an image is created under the shared GC
  // lock, so that gc either sees the new disk using its image or runs before
  // the image is looked up (then this fails with NotFound), and records a
  // use of the image.
  Status CreateDisk(const DiskRef& ref, const DiskCreateOptions& opts);
  // Resizes a disk that is not open here (DiskBackend::Resize).
  Status ResizeDisk(const DiskRef& ref, uint64_t new_size, bool allow_shrink);
  // Renames a disk (DiskBackend::Rename).
  Status RenameDisk(const DiskRef& from, const DiskRef& to);
  // Removes a disk (DiskBackend::Remove). Its use record stays until this
  // store's next gc (ReconcileUses), so other hosts keep the image until then.
  Status RemoveDisk(const DiskRef& ref);

  // Disks whose parent is `id`.
  Result<std::vector<DiskRef>> DisksUsing(const ImageId& id);

  // Use records: every disk made from an image by Store::CreateDisk leaves
  // the record "uses/<image id>/<store id>/<instance>/<disk>" in the chunk
  // backend, so that gc and `image rm` on every host sharing a rados chunk
  // store know what other hosts' local disks use. The store id (16 hex
  // digits) is kept in STORE/store-id, made on first use. A store's own
  // records are reconciled with its disks by its own gc (ReconcileUses), so
  // a record outlives its disk until then: the safe direction.
  Result<std::string> StoreId();
  // Image -> "<store id>:<instance>/<disk>" of the use records of stores
  // other than this one, except stores whose disks are in this store's RBD
  // pool (RecordDiskBackend).
  Result<std::unordered_map<ImageId, std::vector<std::string>>> UsesByOtherStores();
  // Writes the record "stores/<store id>": where this store's disks are (the
  // disk backend's Describe(), e.g. "rbd:POOL/NS"). A store with disks in
  // the same RBD pool lists those disks itself, and so skips this store's use
  // records (UsesByOtherStores): they would only add stale entries.
  Status RecordDiskBackend();
  // Drops this store's records of disks that are gone or have another
  // parent, and adds those missing for its disks. Changes nothing if dry_run.
  Status ReconcileUses(bool dry_run);

  // ImageSource. OpenImage loads the manifest once and keeps the reader;
  // GetGeometry answers from the image record (O(1)): its size and its
  // manifest's chunk size (records written before the chunk size was kept
  // load the manifest once). Reading an image whose chunk size is not this
  // store's is refused by ImageReader (InvalidArgument), never misread.
  Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) override;
  Result<ImageGeometry> GetGeometry(const ImageId& id) override;
  // True for the dir (and mem) chunk backends, false for rados.
  bool ReadsAreLocal() const override;

 private:
  Store(std::string path, StoreConfig config, Clock clock);
  // Image id (hex) -> its names, sorted; one scan of the names records.
  Result<std::map<std::string, std::vector<std::string>>> NamesByImage();
  static std::string UseKey(const ImageId& id, const std::string& store_id, const DiskRef& ref);

  Mutex store_id_mu_;
  std::string store_id_ GUARDED_BY(store_id_mu_);  // empty until read

  std::string path_;
  StoreConfig config_;
  ChunkBackendSpec chunk_spec_;  // config_.chunks, parsed
  DiskBackendSpec disk_spec_;    // config_.disks, parsed
  Clock clock_;
  std::shared_ptr<ChunkStore> chunks_;
  std::unique_ptr<DiskBackend> disks_;

  Mutex readers_mu_;
  // Open images. Manifests are immutable, so a reader stays valid for as long
  // as anyone holds it.
  std::unordered_map<ImageId, std::shared_ptr<ImageReader>> readers_ GUARDED_BY(readers_mu_);
};

}  // namespace imgfs
