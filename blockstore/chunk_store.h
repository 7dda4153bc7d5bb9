// The content-addressed, deduplicated chunk store.
//
// Put hashes a chunk and stores it once; an all-zero chunk is a hole and is
// never stored. On a dedup hit the stored bytes are compared with the new ones
// before they are shared: when the stored bytes are a valid chunk with the same
// id but other content (a hash collision), that is a Corruption error, logged
// loudly, and nothing is overwritten. When the stored bytes are damaged (they
// do not hash to their id, e.g. after a crash before Sync), nothing of value
// is there: the damaged object is replaced by the new, verified bytes, and a
// warning is logged.
// Get verifies the hash of what it read and returns Corruption rather than
// wrong bytes. Chunks put are durable once Sync() returns (ChunkBackend::Sync).
//
// Reads keep verified chunks in an LRU cache (cache_bytes of chunk data), so
// a chunk read again is served from memory without reading or hashing it
// again; Remove and a damaged chunk's replacement drop it from the cache.
//
// Thread safety: all methods may be called concurrently from any number of
// threads. The store holds no mutable state of its own except the read cache,
// which has its own mutex; atomicity of publication is the backend's.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "blockstore/chunk_backend.h"
#include "blockstore/hash.h"
#include "blockstore/mutex.h"
#include "blockstore/status.h"

namespace imgfs {

inline constexpr uint32_t kMinChunkSize = 4 * 1024;
inline constexpr uint32_t kMaxChunkSize = 4 * 1024 * 1024;
inline constexpr uint32_t kDefaultChunkSize = 64 * 1024;  // see docs/formats.md

struct Manifest;  // manifest.h, which includes this file

// OK for a power of two in [4 KiB, 4 MiB]; else InvalidArgument.
Status ValidateChunkSize(uint64_t chunk_size);

// The default size of the cache of verified chunks: 1/32 of the machine's
// RAM, at least 64 MiB and at most 1 GiB (docs/performance.md, "The chunk
// cache"). A hypervisor host's RAM belongs to its guests, hence the cap.
size_t DefaultChunkCacheBytes();

// A verified chunk's bytes, shared with the cache (its stored length; empty
// for a hole). Immutable.
using SharedChunk = std::shared_ptr<const Bytes>;

class ChunkStore {
 public:
  // cache_bytes: size of the cache of verified chunks used by the reads
  // (0 disables it).
  ChunkStore(std::shared_ptr<ChunkBackend> backend, uint32_t chunk_size,
             size_t cache_bytes = DefaultChunkCacheBytes());

  uint32_t chunk_size() const { return chunk_size_; }
  size_t cache_bytes() const { return cache_capacity_; }
  ChunkBackend& backend() { return *backend_; }
  const std::shared_ptr<ChunkBackend>& shared_backend() const { return backend_; }

  struct PutResult {
    ChunkId id;
    bool stored = false;  // true when new bytes were written (not a hole, not a dedup hit)
  };
  // Stores up to chunk_size() bytes. (The last chunk of an image may be short.)
  Result<PutResult> Put(ByteView data);

  // Reads chunk `id` into `out`, verifying its hash. Corruption on mismatch,
  // NotFound when missing. The hole id yields an empty `out`.
  Status Get(const ChunkId& id, Bytes* out);

  // Reads chunk `id` into `buf` (at least chunk_size() bytes), zero-filling
  // past the chunk's stored length; returns that length. Verified, cached.
  Result<size_t> Read(const ChunkId& id, MutableByteView buf);

  // The verified bytes of chunk `id`, shared with the cache rather than
  // copied: for reading part of a chunk. Same errors as Read; the hole id
  // yields an empty chunk.
  Result<SharedChunk> ReadShared(const ChunkId& id);
  // Asynchronous ReadShared, with ReadAsync's contract.
  void ReadSharedAsync(const ChunkId& id, std::function<void(Result<SharedChunk>)> done);

  // Makes every chunk put (or deduplicated) so far durable; see
  // ChunkBackend::Sync. Call it before publishing anything that refers to
  // them (PutManifest does).
  Status Sync() { return backend_->Sync(); }

  // Asynchronous Read with the same contract: `done` gets the result exactly
  // once, on some thread (inline for holes, cache hits and backends without
  // native asynchronous I/O). `buf` must stay valid until then. Many may be in
  // flight at once: this is how reads spanning several chunks fetch them in
  // parallel from a remote backend.
  void ReadAsync(const ChunkId& id, MutableByteView buf, std::function<void(Result<size_t>)> done);

  // Asynchronous Put with the same contract; `data` must stay valid until
  // `done`. On a dedup hit the comparison runs from the callback.
  void PutAsync(ByteView data, std::function<void(Result<PutResult>)> done);

  // What the reads did since the store was opened (the mount's metrics).
  struct Counters {
    uint64_t cache_used_bytes = 0;
    uint64_t cache_hits = 0;    // reads answered from the cache
    uint64_t cache_misses = 0;  // reads that went to the backend
    uint64_t cache_evictions = 0;
    uint64_t verify_failures = 0;  // chunks read whose bytes did not match their id
  };
  Counters counters() const;

  Result<bool> Exists(const ChunkId& id);
  // Removes chunk `id` from the backend and the cache. NotFound if absent.
  Status Remove(const ChunkId& id);
  // Calls fn(id) for every stored chunk; objects whose names are not ids
  // are skipped (with a warning).
  Status ListIds(const std::function<Status(const ChunkId&)>& fn);

  // Reads chunk `id` from the backend and verifies it, neither answering
  // from the cache nor filling it (fsck and verify re-read what is stored).
  // NotFound when missing, Corruption when its bytes do not match its id.
  Status Recheck(const ChunkId& id);
  // Recheck of every chunk of `ids`, up to `max_in_flight` at once; calls
  // fn(i, Recheck(ids[i])) in the order of `ids`, as ForEachManifest does.
  Status RecheckEach(const std::vector<ChunkId>& ids, size_t max_in_flight,
                     const std::function<Status(size_t, Status)>& fn);
  // Drops chunk `id` from the cache, so that the next read goes to the
  // backend (tests that damage what is stored).
  void DropFromCache(const ChunkId& id);

  // Manifests: this store's other kind of object (gc and fsck).
  Result<Manifest> GetManifest(const ImageId& id);
  // Reads the manifests of `ids` with up to `max_in_flight` reads at once and
  // calls fn(i, manifest of ids[i]) in the order of `ids`, on the calling
  // thread (blockstore/read_ahead.h): one image's manifest that cannot be read
  // is that call's error result. When fn returns an error, stops reading and
  // returns it. At most `max_in_flight` manifests are held at once.
  Status ForEachManifest(const std::vector<ImageId>& ids, size_t max_in_flight,
                         const std::function<Status(size_t, Result<Manifest>)>& fn);
  Status ListManifests(const std::function<Status(const ImageId&)>& fn);

  // Objects of either kind, by id, for gc: the bytes an object holds, from
  // the backend's stat (never read whole), and removal. Many RemoveAsync may
  // be in flight (ChunkBackend::RemoveAsync); `done` gets the bytes freed.
  // A chunk leaves the cache before it leaves the backend.
  Result<uint64_t> StoredSize(ObjectKind kind, const Id128& id);
  void RemoveAsync(ObjectKind kind, const Id128& id, std::function<void(Result<uint64_t>)> done);

 private:
  std::shared_ptr<ChunkBackend> backend_;  // constant after construction
  const uint32_t chunk_size_;

  // LRU cache of verified chunks.
  mutable Mutex cache_mu_;
  const size_t cache_capacity_;
  size_t cache_used_ GUARDED_BY(cache_mu_) = 0;
  std::list<std::pair<ChunkId, std::shared_ptr<const Bytes>>> lru_ GUARDED_BY(cache_mu_);
  std::unordered_map<ChunkId, decltype(lru_)::iterator> cache_index_ GUARDED_BY(cache_mu_);
  std::atomic<uint64_t> hits_{0}, misses_{0}, evictions_{0}, verify_failures_{0};
  std::shared_ptr<const Bytes> CacheLookup(const ChunkId& id);
  void CacheInsert(const ChunkId& id, std::shared_ptr<const Bytes> data);
  // Checks `data` (as read from the backend) against `id`; Corruption if not.
  Status Verify(const ChunkId& id, const Result<size_t>& read, ByteView data);

  // Calls fn(id) for every object of `kind` whose name is an id.
  Status ListKind(ObjectKind kind, const std::function<Status(const Id128&)>& fn);
};

}  // namespace imgfs
