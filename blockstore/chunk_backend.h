// The chunk backend: where the chunk store keeps its objects.
//
// A backend stores three things:
//   - immutable objects (chunks and manifests), keyed by kind and id, written
//     once with PutIfAbsent and never modified in place;
//   - records: small mutable values (image records, names) keyed by paths such
//     as "images/<id>" or "names/ubuntu", updated with compare-and-swap;
// Implementations: "dir:PATH" (the embedded default), "mem:" (tests), and
// "rados:POOL[/NAMESPACE]" (shared by every host of a Ceph cluster).
//
// Thread safety: every method may be called from any number of threads at once.
// Each implementation documents how it synchronises.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "blockstore/status.h"

namespace imgfs {

enum class ObjectKind : uint8_t { kChunk, kManifest };

// How PutRecord and RemoveRecord decide whether to write.
struct RecordCondition {
  enum Mode : uint8_t {
    kAny,     // write unconditionally
    kAbsent,  // only if no record exists (else AlreadyExists)
    kEquals,  // only if the record currently equals `expected` (else Busy)
  };
  Mode mode = kAny;
  std::string expected;

  static RecordCondition Any() { return {}; }
  static RecordCondition Absent() { return {kAbsent, {}}; }
  static RecordCondition Equals(std::string v) { return {kEquals, std::move(v)}; }
};

struct SpaceInfo {
  uint64_t capacity_bytes = 0;  // total size of the medium holding the backend
  uint64_t available_bytes = 0;
  uint64_t used_bytes = 0;  // bytes used by this backend's objects, if known
};

enum class LockMode : uint8_t { kShared, kExclusive };

// A backend-wide advisory lock held by this process (ChunkBackend::Lock);
// released when destroyed. Thread safety: Check may be called from any thread.
class BackendLock {
 public:
  virtual ~BackendLock() = default;
  // OK while the lock is certainly held. A lock that is a lease (rados) stays
  // held only while it is renewed, which a backend thread does; when renewal
  // fails for long enough that the lease might run out within a safety margin,
  // or the lease is found gone, the lock is lost: Check returns Unavailable
  // from then on, and the holder must stop what the lock protects.
  virtual Status Check() const = 0;
};

class ChunkBackend {
 public:
  virtual ~ChunkBackend() = default;

  // "dir:/var/lib/imgfs/chunks", "mem:", "rados:pool/ns".
  virtual std::string Describe() const = 0;

  // Stores `data` as object (kind, id) if no such object exists. Atomic: a
  // reader sees the whole object or none of it. Returns AlreadyExists
  // (writing nothing) when the object exists. Durable once Sync() returns
  // (see Sync); a backend may make it durable sooner.
  virtual Status PutIfAbsent(ObjectKind kind, std::string_view id, ByteView data) = 0;

  // Makes durable every object this handle put, or found already present,
  // before the call: after Sync returns OK they survive a crash. Until then a
  // crash may lose them or leave them damaged (which reads detect by hash).
  // Whoever publishes something that refers to objects (a manifest refers to
  // chunks, a record to a manifest) calls Sync first; PutManifest does. The
  // default returns OK, for backends whose PutIfAbsent is durable on return.
  // Records are always durable when PutRecord/RemoveRecord return.
  virtual Status Sync();

  // Reads a whole object into `out` (resized to fit). NotFound if absent.
  virtual Status Get(ObjectKind kind, std::string_view id, Bytes* out) = 0;

  // Reads a whole object into `buf`, which must be at least the object's size;
  // returns the object's size. NotFound if absent; InvalidArgument if `buf` is
  // too small. Used on the read hot path to avoid allocation.
  virtual Result<size_t> Read(ObjectKind kind, std::string_view id, MutableByteView buf) = 0;

  // Asynchronous Read: `done` is called exactly once, on some thread, with the
  // result. The default runs Read inline. `buf` must stay valid until `done`.
  virtual void ReadAsync(ObjectKind kind, std::string_view id, MutableByteView buf,
                         std::function<void(Result<size_t>)> done);

  // Asynchronous PutIfAbsent, with the same contract as ReadAsync.
  virtual void PutIfAbsentAsync(ObjectKind kind, std::string_view id, ByteView data,
                                std::function<void(Status)> done);

  virtual Result<bool> Exists(ObjectKind kind, std::string_view id) = 0;

  // Removes an object. NotFound if absent.
  virtual Status Remove(ObjectKind kind, std::string_view id) = 0;

  // The stored size of an object in bytes, without reading it (dir: stat,
  // rados: one stat op). NotFound if absent. The default reads it whole.
  virtual Result<uint64_t> Size(ObjectKind kind, std::string_view id) {
    Bytes data;
    RETURN_IF_ERROR(Get(kind, id, &data));
    return data.size();
  }

  // Asynchronous Remove, with ReadAsync's contract; `done` gets the bytes
  // the object held (its Size just before removal). Many may be in flight
  // at once: gc's sweep overlaps a remote backend's round trips this way.
  // The default runs Size and Remove inline.
  virtual void RemoveAsync(ObjectKind kind, std::string_view id,
                           std::function<void(Result<uint64_t>)> done) {
    auto size = Size(kind, id);
    if (!size.ok()) return done(size.status());
    Status s = Remove(kind, id);
    if (!s.ok()) return done(s);
    done(*size);
  }

  // Calls fn(id) for every stored object of `kind`; stops early and returns
  // fn's status if it is not OK. Objects added or removed during the walk may
  // or may not be seen.
  virtual Status List(ObjectKind kind, const std::function<Status(std::string_view id)>& fn) = 0;

  // Records. Keys are '/'-separated paths of names valid per names.h.
  virtual Status GetRecord(std::string_view key, std::string* value) = 0;  // NotFound
  virtual Status PutRecord(std::string_view key, std::string_view value,
                           const RecordCondition& cond) = 0;
  virtual Status RemoveRecord(std::string_view key, const RecordCondition& cond) = 0;
  // Calls fn(key) for each record whose key starts with `prefix`.
  virtual Status ListRecords(std::string_view prefix,
                             const std::function<Status(std::string_view key)>& fn) = 0;
  // Calls fn(key, value) for each record whose key starts with `prefix`: a
  // listing with the values, for reading many records at once (rados: a
  // thousand records a round trip). The default reads each listed record;
  // one removed meanwhile is skipped.
  virtual Status ListRecordValues(
      std::string_view prefix,
      const std::function<Status(std::string_view key, std::string_view value)>& fn) {
    return ListRecords(prefix, [&](std::string_view key) {
      std::string value;
      Status s = GetRecord(key, &value);
      if (s.IsNotFound()) return Status::OK();
      RETURN_IF_ERROR(s);
      return fn(key, value);
    });
  }

  virtual Result<SpaceInfo> Space() = 0;

  // Takes the advisory lock `name` (lowercase letters) in `mode`: shared
  // holders exclude an exclusive one and the other way round, across every
  // process using the backend, and for a shared backend (rados) every host.
  // Blocks until granted; calls `waiting` (if set) once, before it first has
  // to wait. A holder that dies releases it: dir at once (flock), rados when
  // its lease runs out (docs/cache.md). The default is a lock within this
  // process, for backends no other process sees (mem).
  virtual Result<std::unique_ptr<BackendLock>> Lock(std::string_view name, LockMode mode,
                                                    const std::function<void()>& waiting = {});
};

struct CephOptions {
  std::string conf_file;     // empty: librados defaults and $CEPH_CONF
  std::string client_id;     // empty: "admin"
  std::string keyring;       // empty: from the conf
  int timeout_seconds = 20;  // client_mount_timeout / rados_osd_op_timeout
};

// Builds a backend from its string: "dir:PATH", "mem:", "mem:NAME",
// "rados:POOL[/NS]" (blockstore/backends.h has the registry, and the specs a
// store's configuration uses). Ceph options for rados come from `ceph` (may
// be null for other kinds).
Result<std::shared_ptr<ChunkBackend>> CreateChunkBackend(std::string_view spec,
                                                         const CephOptions* ceph = nullptr);

}  // namespace imgfs
