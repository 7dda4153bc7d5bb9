// Private to blockstore/: the "rbd:POOL[/NAMESPACE]" disk backend (docs/design.md §5).
//
// Names in the pool (and namespace):
//   imgfs.base.<image id>            an image published once per content, with
//                                    the protected snapshot "base" and the
//                                    metadata imgfs.published = 1
//   imgfs.tmp.<image id>.<random>    a publication in progress, renamed to the
//                                    base name when complete (never a parent)
//   <instance>_<disk>                a disk: a clone of imgfs.base.<id>@base,
//                                    or a blank image
//   imgfs.instances (RADOS object)   omap keys: instances created with
//                                    CreateInstance or by a disk's creation
// Any RBD image named <instance>_<disk> with valid names is a disk, also one
// made by nova or the rbd tool. Disk attributes (mode, uid, gid) are image
// metadata keys imgfs.mode, imgfs.uid and imgfs.gid.
//
// A disk opened for writing holds the RBD exclusive lock, taken with
// rbd_lock_acquire, until it is closed: a second writer anywhere gets Busy.
//
// Client timeouts (client_mount_timeout, rados_osd_op_timeout,
// rados_mon_op_timeout) are set from CephOptions::timeout_seconds, so a cluster
// that is down gives Unavailable/TimedOut instead of a hang.
//
// Thread safety: the backend and its disks may be used from many threads.
#pragma once

#include <memory>
#include <string_view>

#include "blockstore/disk.h"

namespace imgfs {

// `target` is "POOL" or "POOL/NAMESPACE" (the text after "rbd:"). Connects to
// the cluster now: a cluster that cannot be reached, a wrong key, and a
// missing pool or namespace are errors here. `images` opens the images to
// publish (may be null: then only blank disks can be created).
Result<std::unique_ptr<DiskBackend>> CreateRbdDiskBackend(std::string_view target,
                                                          ImageSource* images,
                                                          const CephOptions* ceph);

// Checks, before a store is configured with it (imgfs init), that `target`
// can hold disks: the cluster answers within the client timeouts, the key is
// accepted, the pool (and namespace) exist, the pool is enabled for the rbd
// application, and this client may write to it. Leaves nothing behind.
// OK, or the first failure as one line (Unavailable/TimedOut, PermissionDenied,
// NotFound, InvalidArgument).
Status CheckRbdTarget(std::string_view target, const CephOptions* ceph);

// The RBD image name a disk lives in: "<instance>_<disk>".
std::string RbdDiskName(const DiskRef& ref);
// The RBD image an image is published as: "imgfs.base.<id>".
std::string RbdBaseName(const ImageId& id);

}  // namespace imgfs
