// Private to the rbd disk backend: reads of a clone's parent served from the
// local image store (rbd_local_parent.cc; docs/rbd.md, "Reads of the parent
// from the local store").
#pragma once

#include <rbd/librbd.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "blockstore/image.h"
#include "blockstore/rbd_internal.h"

namespace imgfs::rbd_internal {

// The parent's bytes of a clone, read from the local image store instead of
// from the cluster: the base `imgfs.base.<id>@base` holds exactly the bytes
// of stored image <id> (content-addressed, and a snapshot never changes).
// Used only while the disk holds its exclusive lock, taken with librbd's
// automatic transitions off, so nothing but this handle writes the clone,
// and `child` (which of its objects the clone has) stays exact: it is
// filled from the object map when the lock is taken (librbd loads the map
// afresh then), set before any write or discard reaches an object, and never
// cleared. A disk opened in standby (another client held the lock) has none
// until its first write takes the lock. A read goes to the local image only
// when it lies below the parent overlap and within objects the clone does
// not have; there the clone reads the parent, so the bytes are the same.
// Header changes made through other clients (`rbd resize` or `rbd flatten`
// are forwarded to the lock owner, us) reach the disk's header watch
// (HeaderWatch): the next read then asks librbd for the overlap again.
struct LocalParent {
  std::shared_ptr<ImageReader> image;
  uint64_t object_size = 0;
  std::atomic<uint64_t> overlap{0};  // only shrinks (with the disk)
  size_t objects = 0;                // of the overlap when the lock was taken
  std::unique_ptr<std::atomic<bool>[]> child;
  // A client cut off from the cluster (blocklisted when another host breaks
  // its lock) must not go on answering from here: at most once a second a
  // read also stats the image header in the cluster, and a failure stops
  // the local reads.
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

// The local reads of a disk's parent (see LocalParent), or null when they
// cannot be used: images are not local, the parent is not a base of this
// pool, striping or a missing/invalid object map would make `child`
// inexact or slow to build, or the image is not in the store. Never fails
// the open: the cluster serves every read then.
std::unique_ptr<LocalParent> OpenLocalParent(Connection& conn, ImageSource* images,
                                             librbd::Image& img, const std::string& name);

}  // namespace imgfs::rbd_internal
