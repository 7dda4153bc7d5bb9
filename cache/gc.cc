#include "cache/gc.h"

#include <dirent.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <unordered_set>

namespace imgfs {
namespace {

void Progress(const GcOptions& o, const std::string& phase, uint64_t done, uint64_t total) {
  if (o.progress) o.progress(phase, done, total);
}

// Conversion files left in tmp/ by imports that died. Only called under the
// exclusive GC lock, when no import is running.
Status SweepTemp(Store& store, bool dry_run, GcReport* report) {
  std::string dir = store.tmp_dir();
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Status::OK();
  std::vector<std::string> victims;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    victims.push_back(dir + "/" + name);
  }
  ::closedir(d);
  for (const auto& v : victims) {
    struct stat st;
    if (::stat(v.c_str(), &st) == 0)
      report->bytes_freed += static_cast<uint64_t>(st.st_blocks) * 512;
    if (!dry_run && ::unlink(v.c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(errno, "remove " + v);
    }
    ++report->temp_files_removed;
  }
  return Status::OK();
}

}  // namespace

Result<GcReport> CollectGarbage(Store& store, const GcOptions& o) {
  GcReport report;
  ASSIGN_OR_RETURN(auto lock, store.LockExclusive());
  ChunkBackend& backend = store.backend();
  const int64_t now = store.Now();

  // 1. Images: unused for at least min_age, and not used by any disk.
  // Parents of every disk, read once; no disk can be created while we hold
  // the lock exclusively.
  std::unordered_set<ImageId> in_use;
  ASSIGN_OR_RETURN(auto disks, store.disks().List(""));
  for (const auto& ref : disks) {
    auto info = store.disks().Info(ref);
    if (!info.ok()) {
      if (info.status().IsNotFound()) continue;
      return info.status();
    }
    if (info->parent) in_use.insert(*info->parent);
  }
  ASSIGN_OR_RETURN(auto images, store.ListImages());
  std::vector<ImageId> live_images;
  for (const auto& r : images) {
    bool old_enough = now - r.last_used >= o.min_age_seconds;
    bool keep = in_use.count(r.id) || !old_enough || (o.keep_named && !r.names.empty());
    if (keep) {
      live_images.push_back(r.id);
      continue;
    }
    if (!o.dry_run) RETURN_IF_ERROR(store.RemoveImage(r.id));
    report.images_removed.push_back(r);
  }

  // 2. Mark: every chunk of every live image. Stop before sweeping anything
  // if a live manifest cannot be read.
  std::unordered_set<ImageId> live_manifests(live_images.begin(), live_images.end());
  std::unordered_set<ChunkId> live_chunks;
  uint64_t done = 0;
  for (const auto& id : live_images) {
    auto m = GetManifest(backend, id);
    if (!m.ok()) {
      return m.status().WithContext(
          "gc stopped before sweeping: cannot read the manifest of "
          "live image " +
          id.Hex());
    }
    for (const auto& c : m->chunks) {
      if (!c.IsHole()) live_chunks.insert(c);
    }
    Progress(o, "mark", ++done, live_images.size());
  }

  // 3. Sweep manifests and chunks nothing live references.
  std::vector<std::string> dead_manifests;
  RETURN_IF_ERROR(backend.List(ObjectKind::kManifest, [&](std::string_view id) {
    auto parsed = Id128::FromHex(id);
    if (!parsed.ok() || !live_manifests.count(*parsed)) dead_manifests.emplace_back(id);
    return Status::OK();
  }));
  std::vector<std::string> dead_chunks;
  RETURN_IF_ERROR(backend.List(ObjectKind::kChunk, [&](std::string_view id) {
    auto parsed = Id128::FromHex(id);
    if (!parsed.ok() || !live_chunks.count(*parsed)) dead_chunks.emplace_back(id);
    return Status::OK();
  }));
  Bytes buf;
  for (const auto& id : dead_manifests) {
    if (backend.Get(ObjectKind::kManifest, id, &buf).ok()) report.bytes_freed += buf.size();
    if (!o.dry_run) {
      Status s = backend.Remove(ObjectKind::kManifest, id);
      if (!s.ok() && !s.IsNotFound()) return s;
    }
    ++report.manifests_removed;
  }
  done = 0;
  for (const auto& id : dead_chunks) {
    if (backend.Get(ObjectKind::kChunk, id, &buf).ok()) report.bytes_freed += buf.size();
    if (!o.dry_run) {
      Status s = backend.Remove(ObjectKind::kChunk, id);
      if (!s.ok() && !s.IsNotFound()) return s;
      auto parsed = Id128::FromHex(id);
      if (parsed.ok()) store.chunks().DropFromCache(*parsed);
    }
    ++report.chunks_removed;
    Progress(o, "sweep", ++done, dead_chunks.size());
  }

  // 4. Leftovers of interrupted imports in the temp area.
  RETURN_IF_ERROR(SweepTemp(store, o.dry_run, &report));
  spdlog::info("gc: {} images, {} manifests, {} chunks, {} temp files{}",
               report.images_removed.size(), report.manifests_removed, report.chunks_removed,
               report.temp_files_removed, o.dry_run ? " (dry run)" : "");
  return report;
}

}  // namespace imgfs
