#include "cache/fsck.h"

#include <unordered_map>
#include <unordered_set>

namespace imgfs {

Result<FsckReport> CheckStore(Store& store) {
  FsckReport r;
  ChunkBackend& backend = store.backend();  // records; objects go through the chunk store

  std::unordered_set<std::string> image_hex;
  RETURN_IF_ERROR(backend.ListRecords("images/", [&](std::string_view key) {
    image_hex.emplace(key.substr(7));
    return Status::OK();
  }));

  std::unordered_set<ChunkId> referenced;
  std::unordered_set<ImageId> images;
  for (const auto& hex : image_hex) {
    ++r.images;
    auto id = Id128::FromHex(hex);
    if (!id.ok()) {
      r.problems.push_back("image record '" + hex + "' is not named by an image id");
      continue;
    }
    images.insert(*id);
    auto rec = store.ReadImageRecord(*id);
    if (!rec.ok()) {
      if (rec.status().IsRetryable()) return rec.status();
      r.problems.push_back("image " + hex + ": record unreadable: " + rec.status().message());
    }
    auto m = store.chunks().GetManifest(*id);
    if (!m.ok()) {
      if (m.status().IsRetryable()) return m.status();
      r.problems.push_back("image " + hex + ": manifest: " + m.status().message());
      continue;
    }
    if (rec.ok() && rec->size != m->size) {
      r.problems.push_back("image " + hex + ": record says " + std::to_string(rec->size) +
                           " bytes, manifest " + std::to_string(m->size));
    }
    // Every distinct chunk is read and re-hashed once (the first image that
    // uses it is named; `image verify` names every image a chunk breaks).
    for (const auto& c : m->chunks) {
      if (c.IsHole() || !referenced.insert(c).second) continue;
      Status s = store.chunks().Recheck(c);
      if (s.IsNotFound()) {
        r.problems.push_back("image " + hex + ": chunk " + c.Hex() + " is missing");
      } else if (s.IsCorruption()) {
        r.problems.push_back("image " + hex + ": chunk " + c.Hex() + " is corrupt: " + s.message());
      } else if (!s.ok()) {
        return s;
      }
    }
  }

  RETURN_IF_ERROR(
      backend.ListRecordValues("names/", [&](std::string_view key, std::string_view target) {
        ++r.names;
        if (!image_hex.count(std::string(target))) {
          r.problems.push_back("name '" + std::string(key.substr(6)) +
                               "' points at missing image " + std::string(target));
        }
        return Status::OK();
      }));

  RETURN_IF_ERROR(store.chunks().ListManifests([&](const ImageId& id) {
    ++r.manifests;
    if (!images.count(id)) r.orphans.push_back("manifest " + id.Hex() + " belongs to no image");
    return Status::OK();
  }));
  uint64_t orphan_chunks = 0;
  RETURN_IF_ERROR(store.chunks().ListIds([&](const ChunkId& id) {
    ++r.chunks;
    if (!referenced.count(id)) ++orphan_chunks;
    return Status::OK();
  }));
  if (orphan_chunks) {
    r.orphans.push_back(std::to_string(orphan_chunks) + " chunks are referenced by no image");
  }

  // A disk's parent (docs/rbd.md, "Stores sharing a pool"): on a backend
  // that publishes images (rbd), what the disk needs is the published base
  // in the pool, which any store sharing the pool may have made; whether
  // this store holds the image too does not matter. On the others (local),
  // the disk reads its parent from this store.
  std::unordered_map<ImageId, Result<std::string>> published;
  auto check_published = [&](const ImageId& id) -> const Result<std::string>& {
    auto it = published.find(id);
    if (it == published.end()) it = published.emplace(id, store.disks().CheckPublished(id)).first;
    return it->second;
  };
  ASSIGN_OR_RETURN(auto disks, store.disks().List(""));
  auto infos = store.disks().InfoMany(disks);
  for (size_t n = 0; n < disks.size(); ++n) {
    const DiskRef& d = disks[n];
    ++r.disks;
    auto& info = infos[n];
    if (!info.ok()) {
      if (info.status().IsRetryable()) return info.status();
      // The backend may know why (rbd: a disk whose parent was removed).
      size_t known = r.problems.size();
      RETURN_IF_ERROR(store.disks().Check(d, &r.problems));
      if (r.problems.size() == known) {
        r.problems.push_back("disk " + d.ToString() + ": " + info.status().message());
      }
      continue;
    }
    if (info->parent) {
      const ImageId& parent = *info->parent;
      const auto& base = check_published(parent);
      if (base.status().code() == Code::kNotSupported) {
        if (!images.count(parent)) {
          r.problems.push_back("disk " + d.ToString() + ": parent image " + parent.Hex() +
                               " is missing");
        }
      } else if (!base.ok()) {
        if (base.status().IsRetryable()) return base.status();
        r.problems.push_back("disk " + d.ToString() + ": parent image " + parent.Hex() + ": " +
                             base.status().message());
      } else if (!images.count(parent)) {
        ++r.disks_parent_elsewhere;
      }
    }
    Status s = store.disks().Check(d, &r.problems);
    if (!s.ok()) return s;
  }
  return r;
}

}  // namespace imgfs
