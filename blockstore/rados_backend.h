// The "rados" chunk backend (private to blockstore/): chunks, manifests and
// records in one RADOS pool, optionally in one namespace of it, so that every
// host of a Ceph cluster shares one deduplicated _base cache.
//
// Layout in the pool (docs/formats.md, "RADOS chunk backend"):
//   chunk.<id>      one object per chunk, its bytes
//   manifest.<id>   one object per manifest, its encoding
//   imgfs.records   one object whose omap holds every record: omap key = the
//                   record key ("images/<id>", "names/<name>"), omap value =
//                   'v' followed by the record's value
//
// Publication uses RADOS's own atomic primitives, never read-then-write:
//   - PutIfAbsent is one write op {create(EXCLUSIVE), write_full}: the object
//     appears whole or not at all, and of two racing writers exactly one wins
//     (the other gets AlreadyExists).
//   - PutRecord/RemoveRecord are one write op {omap_cmp, omap_set/omap_rm} on
//     imgfs.records, executed atomically by the object's primary OSD. A missing
//     omap key compares equal to the empty value; stored values are never empty
//     (the 'v' prefix), so "absent" is exactly "equals the empty value".
//
// Failures: a cluster that cannot be reached fails Create (or an operation)
// within CephOptions::timeout_seconds with TimedOut; a pool the client's key
// may not use is PermissionDenied naming the client and the pool; a missing
// pool is NotFound.
//
// Asynchronous calls (ReadAsync, PutIfAbsentAsync) are issued with rados_aio_*
// and run their `done` callbacks on a small pool of backend-owned threads, never
// on librados's own threads, so `done` may call the backend synchronously; it
// must not wait for the `done` of another asynchronous call. The number of
// operations in flight is bounded by librados's objecter throttle (submission
// blocks when it is full). The destructor waits for every callback to finish.
//
// Thread safety: every method may be called from any thread at once. The
// cluster handle and io context are constant after construction (librados
// makes them thread-safe); the callback pool has its own mutex.
#pragma once

#include <memory>
#include <string_view>

#include "blockstore/chunk_backend.h"

namespace imgfs {

// Connects to the cluster and opens `pool_spec` ("POOL" or "POOL/NAMESPACE").
// InvalidArgument for a malformed spec; NotFound for a missing pool;
// PermissionDenied when the key may not read the pool; TimedOut/Unavailable
// when the cluster cannot be reached within ceph.timeout_seconds.
Result<std::shared_ptr<ChunkBackend>> CreateRadosBackend(std::string_view pool_spec,
                                                         const CephOptions& ceph);

}  // namespace imgfs
