// Private to the rbd disk backend: reads of a clone's parent served from the
// local image store (rbd_local_parent.cc; docs/rbd.md, "Reads of the parent
// from the local store").
#pragma once

#include <rbd/librbd.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "blockstore/image.h"
#include "blockstore/rbd_internal.h"

namespace imgfs::rbd_internal {

// The parent's bytes of a clone, read from the local image store instead of
// from the cluster: the base `imgfs.base.<id>@base` holds exactly the bytes
// of stored image <id> (content-addressed, and a snapshot never changes). A
// read goes to the local image only when it lies below the parent overlap
// and within objects the clone does not have; there the clone reads the
// parent, so the bytes are the same. Two ways to know that:
//
// - Exact (`verify` false): while the disk holds its exclusive lock, taken
//   with librbd's automatic transitions off, nothing but this handle writes
//   the clone, and `child` (which of its objects the clone has) stays exact:
//   it is filled from the object map when the lock is taken (librbd loads
//   the map afresh then), set before any write or discard reaches an object,
//   and never cleared. Header changes made through other clients (`rbd
//   resize` or `rbd flatten` are forwarded to the lock owner, us) reach the
//   disk's header watch (HeaderWatch): the next read then asks librbd for the
//   overlap again.
// - Verified (`verify` true): a disk without the lock (read-only, or in
//   standby) may have any object written, or the image resized, by another
//   client at any moment. `child` then holds the objects seen to exist and
//   `overlap` the lowest overlap seen (the overlap never grows); they only
//   spare a read the check when it would go to the cluster anyway (a marked
//   object's reads always do, which is never wrong).
//   Each admitted read stats the clone's data objects it touches and joins
//   a read of the parent overlap from the header (shared by the reads that
//   began before it was sent), all after the read began
//   (RbdDisk::ReadVerified): only when every object is absent and the range
//   lies below that overlap does the local image answer. Whatever another
//   client finished before the read began is seen; a read racing a write
//   may return the old bytes or the new, as from librbd.
struct LocalParent {
  bool verify = false;
  std::shared_ptr<ImageReader> image;
  uint64_t object_size = 0;
  std::atomic<uint64_t> overlap{0};  // only shrinks (with the disk)
  size_t objects = 0;                // of the overlap when opened
  std::unique_ptr<std::atomic<bool>[]> child;
  // "rbd_data.<image id>" (librbd's block name prefix): object N of the
  // clone is "<data_prefix>.<N as %016x>" (no striping, no data pool).
  std::string data_prefix;
  // "rbd_header.<image id>". Exact: a client cut off from the cluster
  // (blocklisted when another host breaks its lock) must not go on
  // answering from here, so at most once a second a read also stats the
  // header in the cluster, and a failure stops the local reads. Verified:
  // every read reads the overlap from it (a cut-off client's fails).
  std::string header_oid;
  std::atomic<int64_t> next_check_ns{0};

  void LowerOverlap(uint64_t to) {
    uint64_t cur = overlap.load();
    while (to < cur && !overlap.compare_exchange_weak(cur, to)) {
    }
  }

  void MarkChild(uint64_t offset, uint64_t length) {
    if (length == 0) return;
    uint64_t first = offset / object_size;
    uint64_t last = (offset + length - 1) / object_size;
    for (uint64_t o = first; o <= last && o < objects; ++o) {
      child[o].store(true, std::memory_order_release);
    }
  }

  bool Covers(uint64_t offset, uint64_t length) const {
    if (length == 0 || offset + length > overlap.load(std::memory_order_acquire)) return false;
    uint64_t first = offset / object_size;
    uint64_t last = (offset + length - 1) / object_size;
    for (uint64_t o = first; o <= last; ++o) {
      if (o >= objects || child[o].load(std::memory_order_acquire)) return false;
    }
    return true;
  }
};

// The local reads of a disk's parent (see LocalParent; `verify` for a disk
// without the lock), or null when they cannot be used: images are not
// local, the parent is not a base of this pool, striping (or, exact, a
// missing/invalid object map; verified, a separate data pool) would make
// `child` inexact or slow to build, or the image is not in the store. Never
// fails the open: the cluster serves every read then. Verified reads cost
// the open no round trip (librbd has the header already).
std::unique_ptr<LocalParent> OpenLocalParent(Connection& conn, ImageSource* images,
                                             librbd::Image& img, const std::string& name,
                                             bool verify);

// The parent overlap in the output of cls_rbd's `parent_overlap_get` (an
// encoded std::optional<uint64_t>: 0 when the clone has no parent), or
// nullopt when the output is malformed. Its input: CEPH_NOSNAP, encoded.
std::optional<uint64_t> DecodeParentOverlap(const char* out, size_t len);
inline constexpr uint64_t kNoSnap = ~uint64_t{1};  // CEPH_NOSNAP

}  // namespace imgfs::rbd_internal
