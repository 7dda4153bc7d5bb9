// The publication of stored images as RBD base images, and the clones made
// of them (Publications, blockstore/rbd_publish.h; docs/rbd.md,
// "Publication" and "Unpublication").
#include "blockstore/rbd_publish.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <thread>

namespace imgfs::rbd_internal {
namespace {

constexpr uint64_t kPublishRunBytes = 4u << 20;  // RBD's default object size
constexpr size_t kPublishDepth = 16;
constexpr int kPublishLockSeconds = 30;

// librbd calls progress callbacks unconditionally.
int NoProgress(uint64_t, uint64_t, void*) { return 0; }

// librbd calls the completion callback unconditionally.
void NoCallback(rbd_completion_t, void*) {}

std::string RandomHex() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

std::string TempName(const ImageId& id) {
  return std::string(kTmpPrefix) + id.Hex() + "." + RandomHex();
}

std::string PublishLockObject(const ImageId& id) { return "imgfs.publish." + id.Hex(); }

// The image id in a name imgfs.tmp.<id>.<random>.
Result<ImageId> TempImageId(std::string_view name) {
  return ImageId::FromHex(name.substr(std::strlen(kTmpPrefix), 32));
}

// The next run of `m` to write from chunk *i on, holes skipped: the bytes
// [start, end) of consecutive chunks that are not holes, up to
// kPublishRunBytes and not across a multiple of it; *i moves past them.
// nullopt when only holes are left.
std::optional<std::pair<uint64_t, uint64_t>> NextRun(const Manifest& m, size_t* i) {
  const uint64_t cs = m.chunk_size;
  const size_t n = m.chunks.size();
  while (*i < n && m.chunks[*i].IsHole()) ++*i;
  if (*i == n) return std::nullopt;
  uint64_t start = *i * cs;
  uint64_t end = start;
  while (*i < n && !m.chunks[*i].IsHole() && end - start < kPublishRunBytes &&
         (end == start || end % kPublishRunBytes != 0)) {
    end = std::min<uint64_t>((*i + 1) * cs, m.size);
    ++*i;
  }
  return std::make_pair(start, end);
}

}  // namespace

Status Publications::Clone(ImageSource& images, const ImageId& id, const DiskRef& ref,
                           const std::string& name) {
  const std::string base = RbdBaseName(id);
  // The base may be unpublished (by gc or `image rm` on any host) between
  // Publish and the clone: clone under the publication lock held shared,
  // and publish again when the base went away meanwhile.
  for (;;) {
    ASSIGN_OR_RETURN(bool published, IsPublished(base));
    if (!published) {
      ASSIGN_OR_RETURN(auto reader, images.OpenImage(id));
      RETURN_IF_ERROR(Publish(*reader));
    }
    ASSIGN_OR_RETURN(bool cloned, CloneLocked(id, ref, name));
    if (cloned) return Status::OK();
  }
}

Result<std::vector<PublishedImage>> Publications::List() {
  ASSIGN_OR_RETURN(auto names, ListImageNames(*conn_));
  std::vector<std::string> ours;
  for (auto& n : names) {
    if (n.starts_with(kBasePrefix) || n.starts_with(kTmpPrefix)) ours.push_back(std::move(n));
  }
  // One slot a name: nullopt when it is skipped (not an id, removed
  // meanwhile), else its publication or the error that stops the listing.
  std::vector<std::optional<Result<PublishedImage>>> got(ours.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < ours.size(); i = next++) got[i] = PublishedOf(ours[i]);
  };
  constexpr size_t kListPublishedThreads = 8;
  std::vector<std::thread> threads;
  for (size_t t = 1; t < std::min(kListPublishedThreads, ours.size()); ++t) {
    threads.emplace_back(work);
  }
  work();
  for (auto& t : threads) t.join();
  std::vector<PublishedImage> out;
  for (auto& g : got) {
    if (!g) continue;
    if (!g->ok()) return g->status();
    out.push_back(std::move(**g));
  }
  return out;
}

Result<std::string> Publications::Check(const ImageId& id) {
  const std::string base = RbdBaseName(id);
  const std::string location = "rbd:" + Where(base) + "@" + kSnap;
  auto published = IsPublished(base);
  if (published.status().IsCorruption()) {
    // Says why; clones use it, so "remove it" is no advice here.
    std::string why = published.status().message();
    if (why.ends_with("; remove it")) why.resize(why.size() - std::strlen("; remove it"));
    return Status::Corruption(why);
  }
  RETURN_IF_ERROR(published.status());
  if (!*published) return Status::NotFound("published base " + location + " is missing");
  return location;
}

Status Publications::Unpublish(const ImageId& id) {
  const std::string cookie = RandomHex();
  ASSIGN_OR_RETURN(bool locked, LockPublication(id, cookie, /*shared=*/false, /*wait=*/true));
  (void)locked;
  Status s = UnpublishLocked(id);
  UnlockPublication(id, cookie);
  return s;
}

Result<std::vector<std::string>> Publications::RemoveAbandoned(bool dry_run) {
  ASSIGN_OR_RETURN(auto names, ListImageNames(*conn_));
  std::vector<std::string> removed;
  for (const auto& n : names) {
    if (!n.starts_with(kTmpPrefix)) continue;
    auto id = TempImageId(n);
    if (!id.ok()) continue;
    // A live publisher holds the lock while it writes its temporary image.
    const std::string cookie = RandomHex();
    ASSIGN_OR_RETURN(bool locked, LockPublication(*id, cookie, false, /*wait=*/false));
    if (!locked) continue;
    Status s = dry_run ? Status::OK() : RemoveFully(n);
    UnlockPublication(*id, cookie);
    RETURN_IF_ERROR(s);
    removed.push_back("rbd:" + Where(n));
  }
  return removed;
}

Result<bool> Publications::IsPublished(const std::string& name) {
  rbd_image_t raw = nullptr;
  int r = rbd_open_read_only(conn_->io, name.c_str(), &raw, kSnap);
  if (r == -ENOENT) return false;
  if (r < 0) return Err(r, "rbd: opening " + Where(name) + "@" + kSnap);
  Image img(raw);
  auto mark = GetMetadata(img.get(), kPublishedKey);
  if (!mark.ok() && !mark.status().IsNotFound()) return mark.status();
  int prot = 0;
  if (int r2 = rbd_snap_is_protected(img.get(), kSnap, &prot); r2 < 0) {
    return Err(r2, "rbd: checking " + Where(name) + "@" + kSnap);
  }
  if (!mark.ok() || *mark != "1" || !prot) {
    return Status::Corruption("rbd: " + Where(name) +
                              " exists but is not a complete imgfs publication (" +
                              (!mark.ok() ? mark.status().ToString() : "mark '" + *mark + "'") +
                              (prot ? "" : ", snapshot not protected") + "); remove it");
  }
  return true;
}

Result<bool> Publications::LockPublication(const ImageId& id, const std::string& cookie,
                                           bool shared, bool wait) {
  const std::string oid = PublishLockObject(id);
  for (;;) {
    timeval dur{kPublishLockSeconds, 0};
    int r = shared ? rados_lock_shared(conn_->io, oid.c_str(), "publish", cookie.c_str(), "clone",
                                       "imgfs clone", &dur, 0)
                   : rados_lock_exclusive(conn_->io, oid.c_str(), "publish", cookie.c_str(),
                                          "imgfs publication", &dur, 0);
    if (r == 0) return true;
    if (r != -EBUSY && r != -EEXIST) return Err(r, "rados: locking " + oid);
    if (!wait) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

Status Publications::RenewPublication(const ImageId& id, const std::string& cookie) {
  const std::string oid = PublishLockObject(id);
  timeval dur{kPublishLockSeconds, 0};
  int r = rados_lock_exclusive(conn_->io, oid.c_str(), "publish", cookie.c_str(),
                               "imgfs publication", &dur, LIBRADOS_LOCK_FLAG_MUST_RENEW);
  if (r < 0) return Status::Busy("rados: lost the publication lock " + oid);
  return Status::OK();
}

void Publications::UnlockPublication(const ImageId& id, const std::string& cookie) {
  const std::string oid = PublishLockObject(id);
  (void)rados_unlock(conn_->io, oid.c_str(), "publish", cookie.c_str());
}

Result<bool> Publications::CloneLocked(const ImageId& id, const DiskRef& ref,
                                       const std::string& name) {
  const std::string base = RbdBaseName(id);
  const std::string cookie = RandomHex();
  ASSIGN_OR_RETURN(bool locked, LockPublication(id, cookie, /*shared=*/true, /*wait=*/true));
  (void)locked;
  Status s;
  bool cloned = false;
  auto published = IsPublished(base);
  if (!published.ok()) {
    s = published.status();
  } else if (*published) {
    RbdOptions o;
    int r = rbd_clone3(conn_->io, base.c_str(), kSnap, conn_->io, name.c_str(), o.opts);
    if (r == -EEXIST) {
      s = Status::AlreadyExists("disk " + ref.ToString() + " already exists");
    } else if (r < 0) {
      s = Err(r, "rbd: cloning " + Where(base) + "@" + kSnap + " to " + name);
    } else {
      cloned = true;
    }
  }
  UnlockPublication(id, cookie);
  RETURN_IF_ERROR(s);
  return cloned;
}

std::optional<Result<PublishedImage>> Publications::PublishedOf(const std::string& n) {
  PublishedImage p;
  if (n.starts_with(kBasePrefix)) {
    auto id = BaseImageId(n);
    if (!id) return std::nullopt;
    p.image = *id;
    auto done = IsPublished(n);
    if (!done.ok() && !done.status().IsCorruption() && !done.status().IsNotFound()) {
      return done.status();
    }
    p.complete = done.ok() && *done;
  } else {
    auto id = TempImageId(n);
    if (!id.ok()) return std::nullopt;
    p.image = *id;
    p.complete = false;
    p.in_progress = true;
  }
  p.location = "rbd:" + Where(n);
  auto used = UsedBytes(n);
  if (!used.ok()) {
    if (used.status().IsNotFound()) return std::nullopt;  // removed meanwhile
    return used.status();
  }
  p.used_bytes = *used;
  auto clones = Children(n);
  if (!clones.ok()) {
    if (clones.status().IsNotFound()) return std::nullopt;
    return clones.status();
  }
  p.clones = std::move(*clones);
  return p;
}

Result<std::vector<std::string>> Publications::Children(const std::string& name) {
  auto img = OpenImage(*conn_, name, true);
  if (!img.ok()) return img.status();
  bool exists = false;
  if (int r = rbd_snap_exists(img->get(), kSnap, &exists); r < 0) {
    return Err(r, "rbd: snapshots of " + Where(name));
  }
  std::vector<std::string> out;
  if (!exists) return out;
  if (int r = rbd_snap_set(img->get(), kSnap); r < 0) {
    return Err(r, "rbd: opening " + Where(name) + "@" + kSnap);
  }
  std::vector<rbd_linked_image_spec_t> specs(16);
  for (;;) {
    size_t n = specs.size();
    int r = rbd_list_children3(img->get(), specs.data(), &n);
    if (r == -ERANGE) {
      specs.resize(n + 16);
      continue;
    }
    if (r < 0) return Err(r, "rbd: listing clones of " + Where(name) + "@" + kSnap);
    for (size_t i = 0; i < n; i++) {
      std::string c = specs[i].pool_name ? specs[i].pool_name : "?";
      if (specs[i].pool_namespace && *specs[i].pool_namespace) {
        c += "/" + std::string(specs[i].pool_namespace);
      }
      c += "/" + std::string(specs[i].image_name ? specs[i].image_name : "?");
      if (specs[i].trash) c += " (in the trash)";
      out.push_back(std::move(c));
    }
    rbd_linked_image_spec_list_cleanup(specs.data(), n);
    return out;
  }
}

Result<uint64_t> Publications::UsedBytes(const std::string& name) {
  auto img = OpenImage(*conn_, name, true);
  if (!img.ok()) return img.status();
  uint64_t size = 0;
  if (int r = rbd_get_size(img->get(), &size); r < 0) return Err(r, "rbd: size of " + Where(name));
  return ObjectBytes(img->get(), size, Where(name));
}

Status Publications::UnpublishLocked(const ImageId& id) {
  (void)CleanAbandoned(id);
  const std::string name = RbdBaseName(id);
  ASSIGN_OR_RETURN(auto clones, Children(name));
  if (!clones.empty()) {
    std::string list;
    for (size_t i = 0; i < clones.size() && i < 10; ++i) list += (i ? ", " : "") + clones[i];
    if (clones.size() > 10) list += ", ... (" + std::to_string(clones.size()) + " clones)";
    return Status::Busy("published image " + Where(name) + " is in use by clones: " + list);
  }
  Status s = RemoveFully(name);
  if (s.IsBusy()) {
    // A clone made behind our back (librbd refuses to unprotect).
    return Status::Busy("published image " + Where(name) + " is in use: " + s.message());
  }
  if (s.ok()) spdlog::info("rbd: unpublished image {} ({})", id.Hex(), Where(name));
  return s;
}

Status Publications::Publish(ImageReader& reader) {
  const ImageId& id = reader.id();
  const std::string name = RbdBaseName(id);
  const std::string cookie = RandomHex();
  for (;;) {
    ASSIGN_OR_RETURN(bool done, IsPublished(name));
    if (done) return Status::OK();
    ASSIGN_OR_RETURN(bool locked, LockPublication(id, cookie, /*shared=*/false, /*wait=*/false));
    if (!locked) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    Status s = PublishLocked(reader, name, cookie);
    UnlockPublication(id, cookie);
    if (!s.IsBusy()) return s.ok() ? s : s.WithContext("publishing image " + id.Hex());
    // Busy: the lock ran out under us; start again.
  }
}

Status Publications::PublishLocked(ImageReader& reader, const std::string& name,
                                   const std::string& cookie) {
  ASSIGN_OR_RETURN(bool done, IsPublished(name));
  if (done) return Status::OK();
  (void)CleanAbandoned(reader.id());
  auto renew = [&]() -> Status { return RenewPublication(reader.id(), cookie); };
  std::string tmp = TempName(reader.id());
  Status s = WriteTemp(reader, tmp, renew);
  if (s.ok()) s = renew();
  if (s.ok()) {
    int r = rbd_rename(conn_->io, tmp.c_str(), name.c_str());
    if (r == 0) {
      spdlog::debug("rbd: published image {} as {}", reader.id().Hex(), Where(name));
      return Status::OK();
    }
    s = Err(r, "rbd: renaming " + Where(tmp) + " to " + name);
  }
  if (Status rm = RemoveFully(tmp); !rm.ok()) {
    spdlog::warn("rbd: could not remove {}: {}", Where(tmp), rm.ToString());
  }
  return s;
}

Status Publications::WriteTemp(ImageReader& reader, const std::string& tmp,
                               const std::function<Status()>& renew) {
  RbdOptions o;
  int r = rbd_create4(conn_->io, tmp.c_str(), reader.size(), o.opts);
  if (r < 0) return Err(r, "rbd: creating " + Where(tmp));
  ASSIGN_OR_RETURN(Image img, OpenImage(*conn_, tmp, false));
  if (r = rbd_lock_acquire(img.get(), RBD_LOCK_MODE_EXCLUSIVE); r < 0) {
    return Err(r, "rbd: locking " + Where(tmp));
  }
  RETURN_IF_ERROR(WriteData(reader, img.get(), tmp, renew));
  if (r = rbd_flush(img.get()); r < 0) return Err(r, "rbd: flushing " + Where(tmp));
  // Nobody else has the image open: no need to quiesce (which costs ~1 s).
  if (r = rbd_snap_create2(img.get(), kSnap, RBD_SNAP_CREATE_SKIP_QUIESCE, &NoProgress, nullptr);
      r < 0) {
    return Err(r, "rbd: snapshotting " + Where(tmp));
  }
  if (r = rbd_snap_protect(img.get(), kSnap); r < 0) {
    return Err(r, "rbd: protecting " + Where(tmp) + "@" + kSnap);
  }
  if (r = rbd_metadata_set(img.get(), "imgfs.image_id", reader.id().Hex().c_str()); r < 0) {
    return Err(r, "rbd: setting metadata of " + Where(tmp));
  }
  if (r = rbd_metadata_set(img.get(), kPublishedKey, "1"); r < 0) {
    return Err(r, "rbd: setting metadata of " + Where(tmp));
  }
  (void)rbd_lock_release(img.get());
  return Status::OK();
}

Status Publications::WriteData(ImageReader& reader, rbd_image_t img, const std::string& tmp,
                               const std::function<Status()>& renew) {
  auto renewed = std::chrono::steady_clock::now();
  const Manifest& m = reader.manifest();
  struct Pending {
    rbd_completion_t c;
    Bytes buf;
  };
  std::deque<Pending> inflight;
  Status status;
  auto reap = [&](bool all) {
    while (!inflight.empty() && (all || inflight.size() >= kPublishDepth)) {
      Pending& p = inflight.front();
      rbd_aio_wait_for_complete(p.c);
      ssize_t r = rbd_aio_get_return_value(p.c);
      rbd_aio_release(p.c);
      if (r < 0 && status.ok()) status = Err(static_cast<int>(r), "rbd: writing " + Where(tmp));
      inflight.pop_front();
    }
  };
  size_t i = 0;
  while (status.ok()) {
    auto run = NextRun(m, &i);
    if (!run) break;
    auto [start, end] = *run;
    reap(false);
    if (!status.ok()) break;
    if (std::chrono::steady_clock::now() - renewed >
        std::chrono::seconds(kPublishLockSeconds / 3)) {
      status = renew();
      if (!status.ok()) break;
      renewed = std::chrono::steady_clock::now();
    }
    Pending p;
    p.buf.resize(end - start);
    if (Status s = reader.Read(start, p.buf); !s.ok()) {
      status = s.WithContext("publishing image " + reader.id().Hex());
      break;
    }
    int r = rbd_aio_create_completion(nullptr, &NoCallback, &p.c);
    if (r < 0) {
      status = Err(r, "rbd: aio completion");
      break;
    }
    r = rbd_aio_write2(img, start, p.buf.size(), reinterpret_cast<const char*>(p.buf.data()), p.c,
                       0);
    if (r < 0) {
      rbd_aio_release(p.c);
      status = Err(r, "rbd: writing " + Where(tmp));
      break;
    }
    inflight.push_back(std::move(p));
  }
  reap(true);
  return status;
}

Status Publications::CleanAbandoned(const ImageId& id) {
  ASSIGN_OR_RETURN(auto names, ListImageNames(*conn_));
  const std::string prefix = std::string(kTmpPrefix) + id.Hex() + ".";
  for (const auto& n : names) {
    if (!n.starts_with(prefix)) continue;
    spdlog::info("rbd: removing abandoned publication {}", Where(n));
    if (Status rm = RemoveFully(n); !rm.ok()) {
      spdlog::warn("rbd: could not remove {}: {}", Where(n), rm.ToString());
    }
  }
  return Status::OK();
}

Status Publications::RemoveFully(const std::string& name) {
  {
    auto img = OpenImage(*conn_, name, false);
    if (!img.ok()) return img.status().IsNotFound() ? Status::OK() : img.status();
    bool exists = false;
    if (rbd_snap_exists(img->get(), kSnap, &exists) == 0 && exists) {
      int prot = 0;
      if (rbd_snap_is_protected(img->get(), kSnap, &prot) == 0 && prot) {
        if (int r = rbd_snap_unprotect(img->get(), kSnap); r < 0) {
          return Err(r, "rbd: unprotecting " + Where(name) + "@" + kSnap);
        }
      }
      if (int r = rbd_snap_remove(img->get(), kSnap); r < 0) {
        return Err(r, "rbd: removing " + Where(name) + "@" + kSnap);
      }
    }
  }
  // A watch may linger a moment after a close: retry a little while. (A
  // client that died keeps watching until its watch times out; then the
  // image is left for a later publication to remove.)
  int r = 0;
  for (int i = 0; i < 50; i++) {
    r = rbd_remove(conn_->io, name.c_str());
    if (r != -EBUSY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (r < 0 && r != -ENOENT) return Err(r, "rbd: removing " + Where(name));
  return Status::OK();
}

}  // namespace imgfs::rbd_internal
