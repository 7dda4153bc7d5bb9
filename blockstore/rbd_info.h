// Private to the rbd disk backend: DiskInfo of disks without opening their
// images (rbd_info.cc; docs/rbd.md, "Listing and lookup").
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "blockstore/disk.h"
#include "blockstore/mutex.h"
#include "blockstore/rbd_disk_io.h"
#include "blockstore/rbd_internal.h"

namespace imgfs::rbd_internal {

// DiskBackend::Info and InfoMany. A disk open here answers from its open
// handle (OpenDisks); any other from its header and object map, read
// directly. An image the direct reads do not understand is opened instead.
class InfoReader {
 public:
  InfoReader(std::shared_ptr<Connection> conn, std::shared_ptr<OpenDisks> open_disks)
      : conn_(std::move(conn)), open_disks_(std::move(open_disks)) {}

  // The image id (rbd_id.<name>), then header and object map together,
  // then, the first time in kParentCacheTime, the parent's name and
  // snapshot.
  Result<DiskInfo> Info(const DiskRef& ref);

  // One listing of the pool (rbd_list2 gives names and ids), then the
  // headers and object maps of all disks in batches of asynchronous reads.
  std::vector<Result<DiskInfo>> InfoMany(const std::vector<DiskRef>& refs);

 private:
  // A disk to answer Info for from its header: reference, RBD name, image id.
  struct Wanted {
    DiskRef ref;
    std::string name;
    std::string id;
  };
  // A parent as a clone's header names it: image id and snapshot id.
  using ParentKey = std::pair<std::string, uint64_t>;

  std::string Where(const std::string& name) const { return conn_->Where(name); }

  // Info of a disk this backend has open (a writable librbd handle), or
  // nullopt.
  std::optional<Result<DiskInfo>> OpenDiskInfo(const DiskRef& ref, const std::string& name);

  // Info of each disk of `want` from its header and object map, read in
  // batches; `name_of` maps image ids of the pool to names (a listing's),
  // for parents, which are otherwise looked up. A disk whose header is gone
  // is NotFound; one whose header the direct reads do not understand, or
  // whose parent is not simply there (removed, in the trash, a snapshot
  // gone), is opened with librbd (OpenedInfo), which says what is wrong.
  std::vector<Result<DiskInfo>> HeaderInfos(
      const std::vector<Wanted>& want,
      const std::unordered_map<std::string, std::string>& name_of);

  // Fills in the ImageId of each parent (image id, snapshot id) of
  // `parents` whose name is imgfs.base.<image id>; returns those that are
  // not simply there (no name in the pool's directory, no such snapshot)
  // or could not be read. Answers are kept for kParentCacheTime.
  std::set<ParentKey> ResolveParents(std::map<ParentKey, std::optional<ImageId>>* parents,
                                     const std::unordered_map<std::string, std::string>& name_of);

  // Info by opening the image with librbd (images the direct reads do not
  // understand; and what is wrong with one that cannot be opened).
  Result<DiskInfo> OpenedInfo(const DiskRef& ref, const std::string& name);

  std::shared_ptr<Connection> conn_;  // constant after construction
  const std::shared_ptr<OpenDisks> open_disks_;
  // Parents of disks read from their headers: (image id, snapshot id) to
  // the stored image of imgfs.base.<image id> (nullopt: another parent).
  struct ParentAnswer {
    std::optional<ImageId> id;
    std::chrono::steady_clock::time_point at;
  };
  Mutex parents_mu_;
  std::map<ParentKey, ParentAnswer> parent_cache_ GUARDED_BY(parents_mu_);
};

// Why the RBD image `name`, which exists, cannot be opened: its parent,
// from the "parent" key of its header. NotFound when `name` is not an image
// or has no parent.
Result<std::string> MissingParent(Connection& c, const std::string& name);

// NotFoundAsDisk, except for a disk that exists but cannot be opened
// because its parent is gone (MissingParent): NotFound saying so.
Status NotOpened(Connection& c, const Status& s, const DiskRef& ref, const std::string& name);

}  // namespace imgfs::rbd_internal
