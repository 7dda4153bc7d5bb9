#include "cache/fsck.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "blockstore/manifest.h"
#include "blockstore/read_ahead.h"

namespace imgfs {
namespace {

// Records and manifests read, and chunks re-hashed, at once.
constexpr size_t kReadWindow = 16;

}  // namespace

Result<FsckReport> CheckStore(Store& store) {
  FsckReport r;
  ChunkBackend& backend = store.backend();  // records; objects go through the chunk store

  std::unordered_set<std::string> image_hex;
  RETURN_IF_ERROR(backend.ListRecords("images/", [&](std::string_view key) {
    image_hex.emplace(key.substr(7));
    return Status::OK();
  }));

  // Images in the order of their ids, so that the problems come in the
  // same order on every run.
  std::vector<std::string> image_list(image_hex.begin(), image_hex.end());
  std::sort(image_list.begin(), image_list.end());

  // Each image's record and manifest are read on a worker, kReadWindow
  // images at once (blockstore/read_ahead.h), and checked here in order.
  struct ImageRead {
    Result<ImageId> id;
    Result<ImageRecord> rec = Status::NotFound("not read");
    Result<Manifest> manifest = Status::NotFound("not read");
  };
  std::unordered_set<ChunkId> referenced;
  std::unordered_set<ImageId> images;
  // Every distinct chunk, with the first image that uses it (by its index
  // in image_list), to be re-hashed once below.
  std::vector<ChunkId> distinct;
  std::vector<size_t> first_user;
  RETURN_IF_ERROR(ReadAhead<ImageRead>(
      image_list.size(), kReadWindow,
      [&](size_t i) {
        ImageRead got{Id128::FromHex(image_list[i])};
        if (!got.id.ok()) return got;
        got.rec = store.ReadImageRecord(*got.id);
        // A retryable error aborts fsck: no need to read on.
        if (got.rec.ok() || !got.rec.status().IsRetryable()) {
          got.manifest = store.chunks().GetManifest(*got.id);
        }
        return got;
      },
      [&](size_t i, ImageRead got) -> Status {
        const std::string& hex = image_list[i];
        ++r.images;
        if (!got.id.ok()) {
          r.problems.push_back("image record '" + hex + "' is not named by an image id");
          return Status::OK();
        }
        images.insert(*got.id);
        auto& rec = got.rec;
        if (!rec.ok()) {
          if (rec.status().IsRetryable()) return rec.status();
          r.problems.push_back("image " + hex + ": record unreadable: " + rec.status().message());
        }
        auto& m = got.manifest;
        if (!m.ok()) {
          if (m.status().IsRetryable()) return m.status();
          r.problems.push_back("image " + hex + ": manifest: " + m.status().message());
          return Status::OK();
        }
        if (rec.ok() && rec->size != m->size) {
          r.problems.push_back("image " + hex + ": record says " + std::to_string(rec->size) +
                               " bytes, manifest " + std::to_string(m->size));
        }
        for (const auto& c : m->chunks) {
          if (c.IsHole() || !referenced.insert(c).second) continue;
          distinct.push_back(c);
          first_user.push_back(i);
        }
        return Status::OK();
      }));

  // Every distinct chunk is read and re-hashed once, kReadWindow at once (the
  // first image that uses it is named; `image verify` names every image a
  // chunk breaks).
  RETURN_IF_ERROR(store.chunks().RecheckEach(
      distinct, kReadWindow, [&](size_t j, Status s) -> Status {
        const std::string& hex = image_list[first_user[j]];
        const ChunkId& c = distinct[j];
        if (s.IsNotFound()) {
          r.problems.push_back("image " + hex + ": chunk " + c.Hex() + " is missing");
        } else if (s.IsCorruption()) {
          r.problems.push_back("image " + hex + ": chunk " + c.Hex() +
                               " is corrupt: " + s.message());
        } else if (!s.ok()) {
          return s;
        }
        return Status::OK();
      }));

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
