// Private to the rbd disk backend: the publication of stored images as RBD
// images imgfs.base.<id>, once per pool, and the clones made of them
// (rbd_publish.cc; docs/rbd.md, "Publication" and "Unpublication").
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/rbd_internal.h"

namespace imgfs::rbd_internal {

// Publishers of one image take turns under the RADOS lock "publish" on the
// object imgfs.publish.<id>, held for kPublishLockSeconds and renewed while
// writing, so a publisher that dies frees it when it runs out. Under the
// lock: if the base is still missing, write a temporary image
// (imgfs.tmp.<id>.<random>), then rename it to the base name. The others
// wait for the lock and then find the base. Cloners hold the same lock
// shared, unpublishers exclusively.
class Publications {
 public:
  explicit Publications(std::shared_ptr<Connection> conn) : conn_(std::move(conn)) {}

  // Clones the base of image `id` to `name` (disk `ref`), publishing it
  // first (from `images`) when it is not published. The manifest is loaded
  // only when the image still has to be published.
  Status Clone(ImageSource& images, const ImageId& id, const DiskRef& ref, const std::string& name);

  // DiskBackend::ListPublished. Each publication costs a few image opens
  // (state, usage, clones), all round trips: they run on up to
  // kListPublishedThreads threads at once, so the listing takes a fraction
  // of the sum of its round trips.
  Result<std::vector<PublishedImage>> List();
  // DiskBackend::CheckPublished.
  Result<std::string> Check(const ImageId& id);
  // DiskBackend::Unpublish.
  Status Unpublish(const ImageId& id);
  // DiskBackend::RemoveAbandonedPublications.
  Result<std::vector<std::string>> RemoveAbandoned(bool dry_run);

 private:
  std::string Where(const std::string& name) const { return conn_->Where(name); }

  // OK(true) when `name` is a complete publication: snapshot "base" protected
  // and the published mark set. OK(false) when there is no such image.
  Result<bool> IsPublished(const std::string& name);

  // Takes the publication lock of `id` (exclusive for publishers and
  // unpublishers, shared for cloners), waiting while others hold it unless
  // !wait. OK(false) when !wait and it is held elsewhere.
  Result<bool> LockPublication(const ImageId& id, const std::string& cookie, bool shared,
                               bool wait);
  // Holds the exclusive publication lock of `id` for kPublishLockSeconds
  // more; Busy when it ran out and another publisher took it.
  Status RenewPublication(const ImageId& id, const std::string& cookie);
  void UnlockPublication(const ImageId& id, const std::string& cookie);

  // Clones imgfs.base.<id>@base to `name` under the publication lock held
  // shared, so that no unpublisher removes the base meanwhile. OK(false)
  // when the base is not (any more) published.
  Result<bool> CloneLocked(const ImageId& id, const DiskRef& ref, const std::string& name);

  // One publication of List; nullopt when `n` is to be skipped.
  std::optional<Result<PublishedImage>> PublishedOf(const std::string& n);

  // The clones of name@base, as "pool[/ns]/image" (trashed ones marked);
  // empty when the image has no snapshot "base". NotFound when no image.
  Result<std::vector<std::string>> Children(const std::string& name);

  // Allocated bytes of an image, in whole objects (fast with fast-diff).
  Result<uint64_t> UsedBytes(const std::string& name);

  Status UnpublishLocked(const ImageId& id);

  // Publishes `reader`'s image as imgfs.base.<id> unless it is published
  // (see the class comment).
  Status Publish(ImageReader& reader);
  Status PublishLocked(ImageReader& reader, const std::string& name, const std::string& cookie);

  // Creates `tmp` and writes the image into it (holes skipped), snapshots
  // and protects "base", and sets the published mark. Holds the exclusive
  // lock meanwhile so that cleaners leave it alone.
  Status WriteTemp(ImageReader& reader, const std::string& tmp,
                   const std::function<Status()>& renew);
  // Streams the non-hole chunks with up to kPublishDepth aio writes in flight.
  Status WriteData(ImageReader& reader, rbd_image_t img, const std::string& tmp,
                   const std::function<Status()>& renew);

  // Temporary publications of `id` left by publishers that died. Called
  // with the publication lock held, so no live publisher is writing one.
  Status CleanAbandoned(const ImageId& id);

  Status RemoveFully(const std::string& name);

  std::shared_ptr<Connection> conn_;  // constant after construction
};

}  // namespace imgfs::rbd_internal
