#include "fusefs/fs.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <utility>

#include "blockstore/names.h"

namespace imgfs::fusefs {

namespace {

constexpr uint32_t kBlockSize = 4096;
constexpr uint64_t kSeekWindow = 1ull << 30;

std::string InstanceKey(std::string_view instance) { return "i/" + std::string(instance); }
std::string DiskKey(std::string_view instance, std::string_view disk) {
  return "d/" + std::string(instance) + "/" + std::string(disk);
}
std::string ImageKey(const ImageId& id) { return "b/" + id.Hex(); }

int64_t MonoNs() {  // for latencies
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void SetTime(struct stat* st, int64_t ns) {
  struct timespec ts {};
  ts.tv_sec = ns / 1'000'000'000;
  ts.tv_nsec = ns % 1'000'000'000;
  st->st_atim = ts;
  st->st_mtim = ts;
  st->st_ctim = ts;
}

bool WantsWrite(int flags) { return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC); }

Status NotDir(std::string_view what) {
  return Status::NotFound(std::string(what) + " is not a directory");
}

}  // namespace

struct FileSystem::OpenFile {
  Mutex mu;
  std::shared_ptr<Disk> disk GUARDED_BY(mu);  // null for images and after close
  std::shared_ptr<ImageReader> image;         // constant after construction
  bool writable GUARDED_BY(mu) = false;
  uint32_t handles = 0;                // GUARDED_BY(FileSystem::mu_)
  Status broken;         // constant after construction: why a restored handle could not be opened
  uint32_t writers = 0;  // GUARDED_BY(FileSystem::mu_); handles open for writing
  Mutex grow_mu;         // serialises growth of the disk
  std::atomic<bool> dirty{false};          // written since the last successful flush
  std::shared_ptr<DiskCounters> counters;  // constant after construction; null for images
  uint64_t ino = 0;                        // constant after construction; 0 for restored broken ones

  Result<std::shared_ptr<Disk>> CurrentDisk() {
    MutexLock lock(mu);
    if (!disk) {
      if (!broken.ok()) return broken;
      return Status::IOError("the disk is closed (unmounting)");
    }
    return disk;
  }
};

struct FileSystem::Node {
  uint64_t ino = 0;
  NodeKind kind = NodeKind::kRoot;
  std::string key;                          // GUARDED_BY(mu_); changes on rename
  std::string instance;                     // GUARDED_BY(mu_)
  std::string disk;                         // GUARDED_BY(mu_)
  ImageId image;                            // constant
  uint64_t nlookup = 0;                     // GUARDED_BY(mu_)
  bool removed = false;                     // GUARDED_BY(mu_)
  std::shared_ptr<OpenFile> open;           // GUARDED_BY(mu_); set while open files use it
  std::optional<ImageRecord> image_record;  // GUARDED_BY(mu_); cached, images are immutable
};

struct FileSystem::Handle {
  std::shared_ptr<Node> node;
  std::shared_ptr<OpenFile> of;
  bool write = false;
  int flags = 0;  // open(2)'s, as FsState::Open keeps them
  // A FLUSH (close(2) of a descriptor) came and no request used the handle
  // since: its RELEASE is on its way, unless a dup'd descriptor or a mapping
  // still holds the file.
  std::atomic<bool> closing{false};

  void Used() {
    if (closing.load(std::memory_order_relaxed)) closing.store(false, std::memory_order_relaxed);
  }
};

struct FileSystem::DirHandle {
  uint64_t ino = 0;
  std::vector<DirEntry> entries;
};

FileSystem::FileSystem(Store& store, FsOptions options)
    : store_(store), disks_(store.disks()), opts_(options), mount_time_ns_(NowNs()) {
  auto root = std::make_shared<Node>();
  root->ino = kRootIno;
  root->kind = NodeKind::kRoot;
  root->key = "/";
  auto base = std::make_shared<Node>();
  base->ino = kBaseDirIno;
  base->kind = NodeKind::kBaseDir;
  base->key = kBaseDirName;
  nodes_[kRootIno] = root;
  nodes_[kBaseDirIno] = base;
  ino_of_["/"] = kRootIno;
  ino_of_[kBaseDirName] = kBaseDirIno;
  key_of_[kRootIno] = "/";
  key_of_[kBaseDirIno] = kBaseDirName;
}

FileSystem::~FileSystem() {
  Status st = Shutdown();
  if (!st.ok()) spdlog::error("closing the mount's disks: {}", st.ToString());
}

uint64_t FileSystem::InoFor(const std::string& key) {
  auto it = ino_of_.find(key);
  if (it != ino_of_.end()) return it->second;
  uint64_t ino = next_ino_++;
  BindLocked(key, ino);
  return ino;
}

void FileSystem::BindLocked(const std::string& key, uint64_t ino) {
  ino_of_[key] = ino;
  key_of_[ino] = key;
  if (sink_) sink_->Bind(key, ino);
}

void FileSystem::MoveKeyLocked(const std::string& from, const std::string& to) {
  auto it = ino_of_.find(from);
  if (it == ino_of_.end()) return;
  uint64_t ino = it->second;
  ino_of_.erase(it);
  if (sink_) sink_->Unbind(from);
  BindLocked(to, ino);
  // The cached node follows its name (an instance or a disk).
  auto n = nodes_.find(ino);
  if (n == nodes_.end()) return;
  Node& node = *n->second;
  node.key = to;
  std::string_view rest = std::string_view(to).substr(2);
  if (node.kind == NodeKind::kInstance) {
    node.instance = std::string(rest);
    node.removed = false;
  } else if (node.kind == NodeKind::kDisk) {
    node.instance = std::string(rest.substr(0, rest.find('/')));
    node.disk = std::string(rest.substr(rest.find('/') + 1));
  }
}

std::shared_ptr<FileSystem::Node> FileSystem::NodeFromKeyLocked(uint64_t ino,
                                                                const std::string& key) {
  auto node = std::make_shared<Node>();
  node->ino = ino;
  node->key = key;
  std::string_view rest = std::string_view(key).substr(std::min<size_t>(2, key.size()));
  if (key.starts_with("i/")) {
    node->kind = NodeKind::kInstance;
    node->instance = std::string(rest);
  } else if (key.starts_with("d/") && rest.find('/') != std::string_view::npos) {
    node->kind = NodeKind::kDisk;
    node->instance = std::string(rest.substr(0, rest.find('/')));
    node->disk = std::string(rest.substr(rest.find('/') + 1));
  } else if (key.starts_with("b/") && Id128::FromHex(rest).ok()) {
    node->kind = NodeKind::kImage;
    node->image = *Id128::FromHex(rest);
  } else {
    return nullptr;
  }
  nodes_[ino] = node;
  return node;
}

std::shared_ptr<FileSystem::Node> FileSystem::NodeFor(const std::string& key, NodeKind kind,
                                                      const std::string& instance,
                                                      const std::string& disk, const ImageId& image,
                                                      bool take_ref) {
  MutexLock lock(mu_);
  uint64_t ino = InoFor(key);
  auto& slot = nodes_[ino];
  if (!slot) {
    slot = std::make_shared<Node>();
    slot->ino = ino;
    slot->kind = kind;
    slot->key = key;
    slot->instance = instance;
    slot->disk = disk;
    slot->image = image;
  }
  if (take_ref) ++slot->nlookup;
  return slot;
}

void FileSystem::ForgetNameLocked(const std::string& key) {
  auto it = ino_of_.find(key);
  if (it == ino_of_.end()) return;
  if (auto n = nodes_.find(it->second); n != nodes_.end()) n->second->removed = true;
  key_of_.erase(it->second);
  ino_of_.erase(it);
  if (sink_) sink_->Unbind(key);
}

// Keeps an instance directory after its last disk left through the mount
// (unlink, rename): directories vanish only with rmdir. The backend drops an
// instance that only existed because of its disks.
void FileSystem::KeepInstance(const std::string& instance) {
  auto instances = disks_.ListInstances();
  if (!instances.ok() ||
      std::find(instances->begin(), instances->end(), instance) != instances->end()) {
    return;
  }
  Status st = disks_.CreateInstance(instance);
  if (!st.ok() && !st.IsAlreadyExists()) {
    spdlog::warn("keeping instance directory {}: {}", instance, st.ToString());
  }
}

Result<std::shared_ptr<FileSystem::Node>> FileSystem::GetNode(uint64_t ino) {
  MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it != nodes_.end()) return it->second;
  if (auto k = key_of_.find(ino); k != key_of_.end()) {
    if (auto node = NodeFromKeyLocked(ino, k->second)) return node;
  }
  return Status::NotFound("no inode " + std::to_string(ino));
}

Result<std::shared_ptr<FileSystem::Handle>> FileSystem::GetHandle(uint64_t fh) {
  MutexLock lock(mu_);
  auto it = handles_.find(fh);
  if (it == handles_.end()) return Status::InvalidArgument("no open file " + std::to_string(fh));
  return it->second;
}

void FileSystem::Forget(uint64_t ino, uint64_t nlookup) {
  MutexLock lock(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end() || ino == kRootIno || ino == kBaseDirIno) return;
  Node& n = *it->second;
  n.nlookup = nlookup >= n.nlookup ? 0 : n.nlookup - nlookup;
  if (n.nlookup == 0 && !n.open) nodes_.erase(it);
}

// ---- lookup and attributes ----

Result<Entry> FileSystem::LookupDisk(const std::string& instance, std::string_view name) {
  if (!ValidateDiskName(name).ok()) return Status::NotFound("no disk " + std::string(name));
  DiskRef ref{instance, std::string(name)};
  // StatOf asks the backend, once (a disk that is not there fails it).
  auto node = NodeFor(DiskKey(instance, name), NodeKind::kDisk, instance, ref.disk, {}, true);
  auto st = StatOf(*node);
  if (!st.ok()) {
    Forget(node->ino, 1);
    return st.status();
  }
  return Entry{node->ino, *st};
}

namespace {

// Whether `instance` exists: its listing is NotFound when it does not.
Result<bool> InstanceExists(DiskBackend& disks, const std::string& instance) {
  auto refs = disks.List(instance);
  if (refs.ok()) return true;
  if (refs.status().IsNotFound()) return false;
  return refs.status();
}

}  // namespace

void FileSystem::AttachDisk(Disk& disk, const OpenFile& of) {
  // A disk's reads from the local store count in its DiskCounters.
  if (of.counters) {
    disk.SetLocalReadCounter(
        std::shared_ptr<std::atomic<uint64_t>>(of.counters, &of.counters->local_parent_read_bytes));
  }
  // The disk is closed (and its listener gone) before this FileSystem is.
  disk.SetHeaderListener([this, ino = of.ino] { InvalidateAttr(ino); });
}

void FileSystem::SetAttrInvalidator(std::function<void(uint64_t ino)> invalidate) {
  MutexLock lock(inval_mu_);
  invalidate_ = std::move(invalidate);
}

void FileSystem::InvalidateAttr(uint64_t ino) {
  MutexLock lock(inval_mu_);
  if (invalidate_ && ino != 0) invalidate_(ino);
}

bool FileSystem::HasOpenDisk(std::string_view instance) {
  MutexLock lock(mu_);
  for (const auto& [fh, h] : handles_) {
    if (h->node->kind == NodeKind::kDisk && !h->node->removed && h->node->instance == instance) {
      return true;
    }
  }
  return false;
}

Result<Entry> FileSystem::Lookup(uint64_t parent, std::string_view name) {
  ASSIGN_OR_RETURN(auto p, GetNode(parent));
  std::shared_ptr<Node> node;
  switch (p->kind) {
    case NodeKind::kRoot: {
      if (name == kBaseDirName) {
        node = NodeFor(kBaseDirName, NodeKind::kBaseDir, "", "", {}, true);
        break;
      }
      if (!ValidateInstanceName(name).ok()) return Status::NotFound("no " + std::string(name));
      // StatOf checks that it exists.
      node = NodeFor(InstanceKey(name), NodeKind::kInstance, std::string(name), "", {}, true);
      break;
    }
    case NodeKind::kBaseDir: {
      auto id = Id128::FromHex(name);
      if (!id.ok() || name.size() != 32) return Status::NotFound("no image " + std::string(name));
      ASSIGN_OR_RETURN(ImageRecord rec, store_.GetImage(*id));
      node = NodeFor(ImageKey(*id), NodeKind::kImage, "", "", *id, true);
      MutexLock lock(mu_);
      if (!node->image_record) node->image_record = rec;
      break;
    }
    case NodeKind::kInstance: {
      std::string instance;
      {
        MutexLock lock(mu_);
        instance = p->instance;
      }
      return LookupDisk(instance, name);
    }
    default:
      return NotDir("a disk or image");
  }
  auto st = StatOf(*node);
  if (!st.ok()) {
    Forget(node->ino, 1);
    return st.status();
  }
  return Entry{node->ino, *st};
}

Result<uint64_t> FileSystem::ParentDataBytes(const ImageId& image) {
  {
    MutexLock lock(mu_);
    if (auto it = parent_data_bytes_.find(image); it != parent_data_bytes_.end()) {
      return it->second;
    }
  }
  ASSIGN_OR_RETURN(ImageRecord rec, store_.ReadImageRecord(image));
  MutexLock lock(mu_);
  parent_data_bytes_[image] = rec.data_bytes;
  return rec.data_bytes;
}

Result<struct stat> FileSystem::StatDisk(const Node& node) {
  DiskRef ref;
  std::shared_ptr<OpenFile> of;
  {
    MutexLock lock(mu_);
    if (node.removed) return Status::NotFound("the disk was removed");
    ref = DiskRef{node.instance, node.disk};
    of = node.open;
  }
  ASSIGN_OR_RETURN(DiskInfo info, disks_.Info(ref));
  uint64_t size = info.size;
  if (of) {
    // A disk open for writing knows its size best (it follows resizes made
    // elsewhere through the backend's header watch). For a read-only handle
    // the store's answer stands: rbd answers it from the open, watched
    // handle anyway, except when the cluster gave only a read-only librbd
    // handle, which hears of no resize (docs/rbd.md, "Disks").
    MutexLock lock(of->mu);
    if (of->disk && of->writable) size = of->disk->size();
  }
  uint64_t used = info.owned_bytes;
  if (info.parent) {
    auto parent_bytes = ParentDataBytes(*info.parent);
    used += parent_bytes.ok() ? *parent_bytes : size;
  }
  uint64_t rounded = (size + 511) / 512 * 512;
  used = std::min(used, rounded);
  struct stat st {};
  st.st_ino = node.ino;
  st.st_mode = S_IFREG | (info.attrs.mode & 07777);
  st.st_nlink = 1;
  st.st_uid = info.attrs.uid;
  st.st_gid = info.attrs.gid;
  st.st_size = static_cast<off_t>(size);
  st.st_blocks = static_cast<blkcnt_t>(used / 512);
  st.st_blksize = kBlockSize;
  SetTime(&st, info.mtime_ns);
  return st;
}

Result<struct stat> FileSystem::StatImage(const Node& node) {
  std::optional<ImageRecord> rec;
  {
    MutexLock lock(mu_);
    rec = node.image_record;
  }
  if (!rec) {
    ASSIGN_OR_RETURN(ImageRecord r, store_.GetImage(node.image));
    MutexLock lock(mu_);
    const_cast<Node&>(node).image_record = r;
    rec = r;
  }
  struct stat st {};
  st.st_ino = node.ino;
  st.st_mode = S_IFREG | 0444;
  st.st_nlink = 1;
  st.st_uid = opts_.uid;
  st.st_gid = opts_.gid;
  st.st_size = static_cast<off_t>(rec->size);
  st.st_blocks = static_cast<blkcnt_t>((rec->data_bytes + 511) / 512);
  st.st_blksize = kBlockSize;
  SetTime(&st, rec->created * 1'000'000'000);
  return st;
}

Result<struct stat> FileSystem::StatOf(const Node& node) {
  struct stat st {};
  st.st_ino = node.ino;
  st.st_nlink = 2;
  st.st_uid = opts_.uid;
  st.st_gid = opts_.gid;
  st.st_blksize = kBlockSize;
  SetTime(&st, mount_time_ns_);
  switch (node.kind) {
    case NodeKind::kRoot:
      st.st_mode = S_IFDIR | 0755;
      return st;
    case NodeKind::kBaseDir:
      st.st_mode = S_IFDIR | 0555;
      return st;
    case NodeKind::kInstance: {
      std::string instance;
      {
        MutexLock lock(mu_);
        if (node.removed) return Status::NotFound("the instance was removed");
        instance = node.instance;
      }
      // An instance with a disk open here exists (a disk open anywhere
      // cannot be removed): the backend is not asked. qemu looks its disk's
      // path up again when a live migration stops or starts the VM, inside
      // its downtime. Otherwise a listing of that instance alone (for rbd a
      // range of the pool directory's keys, not the pool's listing).
      if (!HasOpenDisk(instance)) {
        ASSIGN_OR_RETURN(bool exists, InstanceExists(disks_, instance));
        if (!exists) return Status::NotFound("no instance " + instance);
      }
      st.st_mode = S_IFDIR | 0755;
      return st;
    }
    case NodeKind::kImage:
      return StatImage(node);
    case NodeKind::kDisk:
      return StatDisk(node);
  }
  return Status::IOError("unknown inode kind");
}

Result<struct stat> FileSystem::GetAttr(uint64_t ino) {
  ASSIGN_OR_RETURN(auto node, GetNode(ino));
  return StatOf(*node);
}

Result<struct stat> FileSystem::SetAttr(uint64_t ino, const AttrChange& change,
                                        std::optional<uint64_t> fh) {
  if (fh) {
    if (auto h = GetHandle(*fh); h.ok()) (*h)->Used();
  }
  ASSIGN_OR_RETURN(auto node, GetNode(ino));
  bool attrs = change.mode || change.uid || change.gid;
  switch (node->kind) {
    case NodeKind::kImage:
      return Status::ReadOnly("images under _base are read-only");
    case NodeKind::kDisk:
      break;
    default:
      if (change.size) return Status::InvalidArgument("a directory has no size");
      if (attrs) return Status::PermissionDenied("directories of the mount have fixed attributes");
      return StatOf(*node);
  }
  if (change.size) {
    MutexLock ns(ns_mu_);
    std::shared_ptr<OpenFile> of;
    DiskRef ref;
    {
      MutexLock lock(mu_);
      if (node->removed) return Status::NotFound("the disk was removed");
      of = node->open;
      ref = DiskRef{node->instance, node->disk};
    }
    if (of) {
      RETURN_IF_ERROR(UpgradeToWritable(*of, ref));
      MutexLock grow(of->grow_mu);
      ASSIGN_OR_RETURN(auto disk, of->CurrentDisk());
      RETURN_IF_ERROR(disk->Resize(*change.size, opts_.allow_shrink));
      of->dirty = true;
    } else {
      RETURN_IF_ERROR(store_.ResizeDisk(ref, *change.size, opts_.allow_shrink));
    }
  }
  if (attrs) {
    DiskRef ref;
    {
      MutexLock lock(mu_);
      ref = DiskRef{node->instance, node->disk};
    }
    ASSIGN_OR_RETURN(DiskInfo info, disks_.Info(ref));
    DiskAttrs a = info.attrs;
    if (change.mode) a.mode = *change.mode & 07777;
    if (change.uid) a.uid = *change.uid;
    if (change.gid) a.gid = *change.gid;
    RETURN_IF_ERROR(disks_.SetAttrs(ref, a));
  }
  return StatOf(*node);
}

// ---- directories ----

Result<uint64_t> FileSystem::OpenDir(uint64_t ino) {
  ASSIGN_OR_RETURN(auto node, GetNode(ino));
  ASSIGN_OR_RETURN(auto entries, ListDir(node));
  auto dh = std::make_shared<DirHandle>();
  dh->entries = std::move(entries);
  dh->ino = ino;
  MutexLock lock(mu_);
  uint64_t id = next_fh_++;
  dirs_[id] = std::move(dh);
  if (sink_) sink_->DirOpened(id, ino);
  return id;
}

Result<std::vector<DirEntry>> FileSystem::ListDir(const std::shared_ptr<Node>& node) {
  const uint64_t ino = node->ino;
  auto dh = std::make_shared<DirHandle>();
  dh->entries.push_back({".", ino, S_IFDIR});
  dh->entries.push_back({"..", node->kind == NodeKind::kRoot ? kRootIno : kRootIno, S_IFDIR});
  std::vector<std::pair<std::string, std::pair<std::string, mode_t>>> names;  // name, key, type
  switch (node->kind) {
    case NodeKind::kRoot: {
      names.push_back({kBaseDirName, {kBaseDirName, S_IFDIR}});
      ASSIGN_OR_RETURN(auto instances, disks_.ListInstances());
      std::sort(instances.begin(), instances.end());
      for (auto& i : instances) names.push_back({i, {InstanceKey(i), S_IFDIR}});
      break;
    }
    case NodeKind::kBaseDir: {
      ASSIGN_OR_RETURN(auto images, store_.ListImages());
      std::vector<std::string> ids;
      for (auto& r : images) ids.push_back(r.id.Hex());
      std::sort(ids.begin(), ids.end());
      for (auto& id : ids) names.push_back({id, {"b/" + id, S_IFREG}});
      break;
    }
    case NodeKind::kInstance: {
      std::string instance;
      {
        MutexLock lock(mu_);
        instance = node->instance;
      }
      ASSIGN_OR_RETURN(auto refs, disks_.List(instance));
      std::vector<std::string> disks;
      for (auto& r : refs) disks.push_back(r.disk);
      std::sort(disks.begin(), disks.end());
      for (auto& d : disks) names.push_back({d, {DiskKey(instance, d), S_IFREG}});
      break;
    }
    default:
      return NotDir("a disk or image");
  }
  MutexLock lock(mu_);
  for (auto& [name, kt] : names) dh->entries.push_back({name, InoFor(kt.first), kt.second});
  return std::move(dh->entries);
}

Result<std::vector<DirEntry>> FileSystem::ReadDir(uint64_t dh, uint64_t offset) {
  MutexLock lock(mu_);
  auto it = dirs_.find(dh);
  if (it == dirs_.end()) return Status::InvalidArgument("no open directory");
  const auto& all = it->second->entries;
  if (offset >= all.size()) return std::vector<DirEntry>{};
  return std::vector<DirEntry>(all.begin() + static_cast<ptrdiff_t>(offset), all.end());
}

void FileSystem::ReleaseDir(uint64_t dh) {
  MutexLock lock(mu_);
  if (dirs_.erase(dh) && sink_) sink_->DirReleased(dh);
}

// ---- namespace changes ----

Result<Entry> FileSystem::MkDir(uint64_t parent, std::string_view name, mode_t mode,
                                const Caller& who) {
  (void)mode;
  (void)who;
  ASSIGN_OR_RETURN(auto p, GetNode(parent));
  if (p->kind == NodeKind::kBaseDir) return Status::ReadOnly("_base is read-only");
  if (p->kind != NodeKind::kRoot) {
    return Status::PermissionDenied("directories exist only at the top level (instances)");
  }
  if (name == kBaseDirName) return Status::AlreadyExists("_base exists");
  RETURN_IF_ERROR(ValidateInstanceName(name));
  std::string instance(name);
  {
    MutexLock ns(ns_mu_);
    ASSIGN_OR_RETURN(auto instances, disks_.ListInstances());
    if (std::find(instances.begin(), instances.end(), instance) != instances.end()) {
      return Status::AlreadyExists("instance " + instance + " exists");
    }
    RETURN_IF_ERROR(disks_.CreateInstance(instance));
  }
  auto node = NodeFor(InstanceKey(instance), NodeKind::kInstance, instance, "", {}, true);
  struct stat st {};
  st.st_ino = node->ino;
  st.st_mode = S_IFDIR | 0755;
  st.st_nlink = 2;
  st.st_uid = opts_.uid;
  st.st_gid = opts_.gid;
  st.st_blksize = kBlockSize;
  SetTime(&st, mount_time_ns_);
  return Entry{node->ino, st};
}

Status FileSystem::WaitUntilClosed(const std::shared_ptr<Node>& node) {
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(opts_.release_grace_ms);
  {
    MutexLock lock(mu_);
    if (!node->open) return Status::OK();
    for (const auto& [fh, h] : handles_) {
      if (h->node == node && !h->closing) return Status::Busy("it is open");
    }
    // Let the closing handles' releases (which take ns_mu_) through while
    // waiting; the caller holds ns_mu_ again on return.
    ns_mu_.Unlock();
    while (node->open) {
      if (!closed_cv_.WaitUntil(mu_, deadline)) break;
    }
  }
  ns_mu_.Lock();
  MutexLock lock(mu_);
  if (node->open) return Status::Busy("it is open");
  return Status::OK();
}

Status FileSystem::RmDir(uint64_t parent, std::string_view name) {
  ASSIGN_OR_RETURN(auto p, GetNode(parent));
  if (p->kind == NodeKind::kBaseDir) return Status::ReadOnly("_base is read-only");
  if (p->kind != NodeKind::kRoot) return NotDir(name);
  if (name == kBaseDirName) return Status::PermissionDenied("_base cannot be removed");
  if (!ValidateInstanceName(name).ok()) return Status::NotFound("no instance " + std::string(name));
  std::string instance(name);
  MutexLock ns(ns_mu_);
  RETURN_IF_ERROR(disks_.RemoveInstance(instance));
  MutexLock lock(mu_);
  ForgetNameLocked(InstanceKey(instance));
  return Status::OK();
}

Result<Entry> FileSystem::MkNod(uint64_t parent, std::string_view name, mode_t mode,
                                const Caller& who) {
  if (!S_ISREG(mode)) return Status::PermissionDenied("only regular files (disks) can be made");
  ASSIGN_OR_RETURN(auto p, GetNode(parent));
  if (p->kind == NodeKind::kBaseDir) return Status::ReadOnly("_base is read-only");
  if (p->kind == NodeKind::kRoot) {
    return Status::PermissionDenied("disks live in instance directories, not at the top level");
  }
  if (p->kind != NodeKind::kInstance) return NotDir("a disk or image");
  RETURN_IF_ERROR(ValidateDiskName(name));
  std::string instance;
  {
    MutexLock lock(mu_);
    instance = p->instance;
  }
  DiskRef ref{instance, std::string(name)};
  DiskCreateOptions opts;
  opts.size = 0;
  opts.attrs.mode = mode & 07777;
  opts.attrs.uid = who.uid;
  opts.attrs.gid = who.gid;
  {
    MutexLock ns(ns_mu_);
    RETURN_IF_ERROR(store_.CreateDisk(ref, opts));
  }
  return LookupDisk(instance, name);
}

Result<std::pair<Entry, OpenReply>> FileSystem::Create(uint64_t parent, std::string_view name,
                                                       mode_t mode, int flags, const Caller& who) {
  ASSIGN_OR_RETURN(Entry e, MkNod(parent, name, S_IFREG | (mode & 07777), who));
  ASSIGN_OR_RETURN(auto node, GetNode(e.ino));
  MutexLock ns(ns_mu_);
  auto r = OpenNodeLocked(node, flags & ~O_TRUNC);
  if (!r.ok()) {
    ns.Unlock();
    Forget(e.ino, 1);
    return r.status();
  }
  return std::make_pair(e, *r);
}

Status FileSystem::Unlink(uint64_t parent, std::string_view name) {
  ASSIGN_OR_RETURN(auto p, GetNode(parent));
  if (p->kind == NodeKind::kBaseDir) return Status::ReadOnly("_base is read-only");
  if (p->kind == NodeKind::kRoot) {
    return Status::PermissionDenied("use rmdir for instance directories");
  }
  if (p->kind != NodeKind::kInstance) return NotDir("a disk or image");
  std::string instance;
  {
    MutexLock lock(mu_);
    instance = p->instance;
  }
  if (!ValidateDiskName(name).ok()) return Status::NotFound("no disk " + std::string(name));
  std::string key = DiskKey(instance, name);
  MutexLock ns(ns_mu_);
  std::shared_ptr<Node> node;
  {
    MutexLock lock(mu_);
    if (auto it = ino_of_.find(key); it != ino_of_.end()) {
      if (auto n = nodes_.find(it->second); n != nodes_.end()) node = n->second;
    }
  }
  if (node) {
    Status st = WaitUntilClosed(node);
    if (!st.ok()) return Status::Busy(instance + "/" + std::string(name) + " is open");
  }
  RETURN_IF_ERROR(store_.RemoveDisk(DiskRef{instance, std::string(name)}));
  KeepInstance(instance);
  MutexLock lock(mu_);
  ForgetNameLocked(key);
  return Status::OK();
}

Status FileSystem::Rename(uint64_t parent, std::string_view name, uint64_t new_parent,
                          std::string_view new_name, unsigned int flags) {
  constexpr unsigned kNoReplace = 1;  // RENAME_NOREPLACE
  if (flags & ~kNoReplace) return Status::NotSupported("only RENAME_NOREPLACE is supported");
  ASSIGN_OR_RETURN(auto p, GetNode(parent));
  ASSIGN_OR_RETURN(auto np, GetNode(new_parent));
  if (p->kind == NodeKind::kBaseDir || np->kind == NodeKind::kBaseDir) {
    return Status::ReadOnly("_base is read-only");
  }
  if (p->kind != np->kind || (p->kind != NodeKind::kRoot && p->kind != NodeKind::kInstance)) {
    return Status::PermissionDenied(
        "disks move between instance directories, instances stay at the top level");
  }
  MutexLock ns(ns_mu_);
  auto find_node = [&](const std::string& key) -> std::shared_ptr<Node> {
    MutexLock lock(mu_);
    if (auto it = ino_of_.find(key); it != ino_of_.end()) {
      if (auto n = nodes_.find(it->second); n != nodes_.end()) return n->second;
    }
    return nullptr;
  };

  if (p->kind == NodeKind::kInstance) {
    std::string from_inst, to_inst;
    {
      MutexLock lock(mu_);
      from_inst = p->instance;
      to_inst = np->instance;
    }
    if (!ValidateDiskName(name).ok()) return Status::NotFound("no disk " + std::string(name));
    RETURN_IF_ERROR(ValidateDiskName(new_name));
    DiskRef from{from_inst, std::string(name)};
    DiskRef to{to_inst, std::string(new_name)};
    if (from.ToString() == to.ToString()) return Status::OK();
    ASSIGN_OR_RETURN(DiskInfo src, disks_.Info(from));
    (void)src;
    std::string from_key = DiskKey(from_inst, name), to_key = DiskKey(to_inst, new_name);
    if (auto n = find_node(from_key)) {
      if (!WaitUntilClosed(n).ok()) return Status::Busy(from.ToString() + " is open");
    }
    auto existing = disks_.Info(to);
    if (existing.ok()) {
      if (flags & kNoReplace) return Status::AlreadyExists(to.ToString() + " exists");
      if (auto n = find_node(to_key)) {
        if (!WaitUntilClosed(n).ok()) return Status::Busy(to.ToString() + " is open");
      }
      RETURN_IF_ERROR(store_.RemoveDisk(to));
      MutexLock lock(mu_);
      ForgetNameLocked(to_key);
    } else if (!existing.status().IsNotFound()) {
      return existing.status();
    }
    RETURN_IF_ERROR(store_.RenameDisk(from, to));
    if (from_inst != to_inst) KeepInstance(from_inst);
    MutexLock lock(mu_);
    MoveKeyLocked(from_key, to_key);
    return Status::OK();
  }

  // Instances: move every disk to the new instance, then drop the old one.
  if (name == kBaseDirName || new_name == kBaseDirName) {
    return Status::PermissionDenied("_base cannot be renamed or replaced");
  }
  if (!ValidateInstanceName(name).ok()) return Status::NotFound("no instance " + std::string(name));
  RETURN_IF_ERROR(ValidateInstanceName(new_name));
  std::string from(name), to(new_name);
  if (from == to) return Status::OK();
  ASSIGN_OR_RETURN(auto instances, disks_.ListInstances());
  if (std::find(instances.begin(), instances.end(), from) == instances.end()) {
    return Status::NotFound("no instance " + from);
  }
  if (std::find(instances.begin(), instances.end(), to) != instances.end()) {
    if (flags & kNoReplace) return Status::AlreadyExists("instance " + to + " exists");
    ASSIGN_OR_RETURN(auto target_disks, disks_.List(to));
    if (!target_disks.empty()) return Status::NotEmpty("instance " + to + " is not empty");
    RETURN_IF_ERROR(disks_.RemoveInstance(to));
  }
  ASSIGN_OR_RETURN(auto refs, disks_.List(from));
  for (auto& r : refs) {
    if (auto n = find_node(DiskKey(from, r.disk))) {
      if (!WaitUntilClosed(n).ok()) return Status::Busy(r.ToString() + " is open");
    }
  }
  RETURN_IF_ERROR(disks_.CreateInstance(to));
  for (auto& r : refs) {
    RETURN_IF_ERROR(store_.RenameDisk(r, DiskRef{to, r.disk}));
    MutexLock lock(mu_);
    MoveKeyLocked(DiskKey(from, r.disk), DiskKey(to, r.disk));
  }
  RETURN_IF_ERROR(disks_.RemoveInstance(from));
  MutexLock lock(mu_);
  ForgetNameLocked(InstanceKey(to));
  MoveKeyLocked(InstanceKey(from), InstanceKey(to));
  return Status::OK();
}

// ---- files ----

Result<OpenReply> FileSystem::OpenNodeLocked(const std::shared_ptr<Node>& node, int flags,
                                             std::optional<uint64_t> use_fh) {
  bool write = WantsWrite(flags);
  std::shared_ptr<OpenFile> of;
  DiskRef ref;
  NodeKind kind = node->kind;
  {
    MutexLock lock(mu_);
    if (node->removed) return Status::NotFound("it was removed");
    of = node->open;
    ref = DiskRef{node->instance, node->disk};
  }
  if (kind == NodeKind::kImage) {
    if (write) return Status::ReadOnly("images under _base are read-only");
    if (!of) {
      ASSIGN_OR_RETURN(auto reader, store_.OpenImage(node->image));
      of = std::make_shared<OpenFile>();
      of->image = std::move(reader);
    }
  } else if (kind == NodeKind::kDisk) {
    if (!of) {
      ASSIGN_OR_RETURN(auto disk,
                       disks_.Open(ref, write ? OpenMode::kReadWriteStandby : OpenMode::kReadOnly));
      of = std::make_shared<OpenFile>();
      of->counters = metrics_.Disk(ref.instance, ref.disk);
      of->ino = node->ino;
      AttachDisk(*disk, *of);
      {
        MutexLock lock(of->mu);  // not shared yet; the lock is for the analysis
        of->disk = std::move(disk);
        of->writable = write;
      }
      if (write) of->counters->lock_acquisitions.fetch_add(1, std::memory_order_relaxed);
      auto info = disks_.Info(ref);
      if (info.ok() && info->parent) {
        Status st = store_.TouchImage(*info->parent);
        // NotFound: a disk of another store sharing the pool (docs/rbd.md).
        if (!st.ok() && !st.IsNotFound())
          spdlog::warn("recording use of image {}: {}", info->parent->Hex(), st.ToString());
      }
    } else if (write) {
      bool was_writable;
      {
        MutexLock lock(of->mu);
        was_writable = of->writable;
      }
      RETURN_IF_ERROR(UpgradeToWritable(*of, ref));
      if (!was_writable && of->counters) {
        of->counters->lock_acquisitions.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (flags & O_TRUNC) {
      MutexLock grow(of->grow_mu);
      ASSIGN_OR_RETURN(auto disk, of->CurrentDisk());
      if (disk->size() != 0) {
        // On failure a newly opened disk is dropped here, releasing its lock.
        RETURN_IF_ERROR(disk->Resize(0, opts_.allow_shrink));
        of->dirty = true;
      }
    }
  } else {
    return Status::InvalidArgument("directories are opened with opendir");
  }
  auto h = std::make_shared<Handle>();
  h->node = node;
  h->of = of;
  h->write = write;
  h->flags = flags & ~(O_CREAT | O_EXCL | O_TRUNC);
  MutexLock lock(mu_);
  node->open = of;
  ++of->handles;
  if (write) ++of->writers;
  uint64_t fh = use_fh ? *use_fh : next_fh_++;
  handles_[fh] = std::move(h);
  if (sink_) sink_->Opened(fh, FsState::Open{node->ino, handles_[fh]->flags});
  OpenReply reply;
  reply.fh = fh;
  reply.direct_io = (flags & O_DIRECT) || opts_.direct_io_always;
  return reply;
}

Result<OpenReply> FileSystem::Open(uint64_t ino, int flags) {
  ASSIGN_OR_RETURN(auto node, GetNode(ino));
  MutexLock ns(ns_mu_);
  return OpenNodeLocked(node, flags);
}

namespace {

// Runs an asynchronous call and waits for its one callback.
template <typename T, typename Start>
T Wait(Start&& start) {
  std::promise<T> p;
  auto f = p.get_future();
  start([&p](T v) { p.set_value(std::move(v)); });
  return f.get();
}

}  // namespace

Result<size_t> FileSystem::Read(uint64_t fh, uint64_t offset, MutableByteView buf) {
  ASSIGN_OR_RETURN(ReadBuffers data, Wait<Result<ReadBuffers>>([&](Disk::ReadBuffersCallback cb) {
                     ReadAsync(fh, offset, buf.size(), std::move(cb));
                   }));
  data.CopyTo(buf);
  return data.size();
}

Result<size_t> FileSystem::Write(uint64_t fh, uint64_t offset, ByteView data) {
  return Wait<Result<size_t>>(
      [&](SizeCallback cb) { WriteAsync(fh, offset, data, std::move(cb)); });
}

Status FileSystem::Fallocate(uint64_t fh, int mode, uint64_t offset, uint64_t length) {
  return Wait<Status>(
      [&](StatusCallback cb) { FallocateAsync(fh, mode, offset, length, std::move(cb)); });
}

Status FileSystem::Flush(uint64_t fh) {
  return Wait<Status>([&](StatusCallback cb) { FlushAsync(fh, std::move(cb)); });
}

Status FileSystem::Fsync(uint64_t fh) {
  return Wait<Status>([&](StatusCallback cb) { FsyncAsync(fh, std::move(cb)); });
}

void FileSystem::DropDisk(std::shared_ptr<Disk> disk) {
  disk.reset();
  { MutexLock lock(retire_mu_); }
  retire_cv_.NotifyAll();
}

void FileSystem::WaitIdle(const std::shared_ptr<Disk>& disk) {
  if (!disk) return;
  MutexLock lock(retire_mu_);
  // Synchronous users (lseek, setattr) drop their copies without a signal:
  // look again now and then.
  while (disk.use_count() > 1) retire_cv_.WaitFor(retire_mu_, std::chrono::milliseconds(10));
}

Status FileSystem::UpgradeToWritable(OpenFile& of, const DiskRef& ref) {
  std::shared_ptr<Disk> cur;
  {
    MutexLock lock(of.mu);
    if (of.writable) return Status::OK();
    cur = of.disk;
  }
  // In place when the backend can (rbd): a migration's destination opens
  // its disk for writing inside the VM's downtime.
  if (cur) {
    Status st = cur->StartWriting();
    cur.reset();
    if (st.ok()) {
      MutexLock lock(of.mu);
      of.writable = true;
      return Status::OK();
    }
    if (st.code() != Code::kNotSupported) return st;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Disk> disk, disks_.Open(ref, OpenMode::kReadWriteStandby));
  AttachDisk(*disk, of);
  std::shared_ptr<Disk> old;
  {
    MutexLock lock(of.mu);
    old = std::exchange(of.disk, std::move(disk));
    of.writable = true;
  }
  WaitIdle(old);
  return Status::OK();
}

void FileSystem::DowngradeToReadOnly(OpenFile& of, const DiskRef& ref) {
  std::shared_ptr<Disk> cur;
  {
    MutexLock lock(of.mu);
    if (!of.writable || !of.disk) return;
    cur = of.disk;
  }
  // In place when the backend can (rbd): the lock goes at once.
  Status st = cur->StopWriting();
  if (st.code() != Code::kNotSupported) {
    {
      MutexLock lock(of.mu);
      of.writable = false;
    }
    of.dirty = false;
    if (!st.ok()) {
      spdlog::error("flushing {} on its last writer's close: {}", ref.ToString(), st.ToString());
    }
    return;
  }
  cur.reset();
  auto disk = disks_.Open(ref, OpenMode::kReadOnly);
  if (!disk.ok()) {
    spdlog::warn("{}: keeping it open for writing (and locked) after its last writer closed: {}",
                 ref.ToString(), disk.status().ToString());
    return;
  }
  AttachDisk(**disk, of);
  std::shared_ptr<Disk> old;
  {
    MutexLock lock(of.mu);
    old = std::exchange(of.disk, std::shared_ptr<Disk>(std::move(*disk)));
    of.writable = false;
  }
  WaitIdle(old);
  if (old && of.dirty.exchange(false)) {
    Status st = old->Flush();
    if (!st.ok()) {
      spdlog::error("flushing {} on its last writer's close: {}", ref.ToString(), st.ToString());
    }
  }
  old.reset();  // releases the backend's lock
}

void FileSystem::ReadAsync(uint64_t fh, uint64_t offset, size_t size,
                           Disk::ReadBuffersCallback done) {
  auto h = GetHandle(fh);
  if (!h.ok()) return done(h.status());
  (*h)->Used();
  if (const std::shared_ptr<ImageReader>& img = (*h)->of->image) {
    if (offset >= img->size()) return done(ReadBuffers{});
    size_t n = static_cast<size_t>(std::min<uint64_t>(size, img->size() - offset));
    std::shared_ptr<uint8_t[]> buf(new uint8_t[n]);
    // Chunks that are not local are waited for by nobody (docs/architecture.md,
    // "The read path").
    return img->ReadAsync(offset, MutableByteView(buf.get(), n),
                          [buf, n, done = std::move(done)](Status st) {
                            if (!st.ok()) return done(st);
                            done(ReadBuffers{{ByteView(buf.get(), n)}, buf});
                          });
  }
  auto disk = (*h)->of->CurrentDisk();
  if (!disk.ok()) return done(disk.status());
  uint64_t disk_size = (*disk)->size();
  if (offset >= disk_size) return done(ReadBuffers{});
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, disk_size - offset));
  Disk* d = disk->get();
  d->ReadBuffersAsync(offset, n,
                      [this, disk = std::move(*disk), done = std::move(done),
                       c = (*h)->of->counters, n, t0 = MonoNs()](Result<ReadBuffers> data) mutable {
                        if (c) {
                          c->read_latency.Observe(MonoNs() - t0);
                          c->reads.fetch_add(1, std::memory_order_relaxed);
                          if (data.ok()) {
                            c->read_bytes.fetch_add(n, std::memory_order_relaxed);
                          } else {
                            c->read_errors.fetch_add(1, std::memory_order_relaxed);
                          }
                        }
                        done(std::move(data));
                        DropDisk(std::move(disk));
                      });
}

Status FileSystem::GrowTo(OpenFile& of, uint64_t end) {
  MutexLock grow(of.grow_mu);
  ASSIGN_OR_RETURN(auto disk, of.CurrentDisk());
  if (disk->size() >= end) return Status::OK();
  return disk->Resize(end, false);
}

Result<std::shared_ptr<FileSystem::OpenFile>> FileSystem::GetWritableFile(uint64_t fh) {
  ASSIGN_OR_RETURN(auto h, GetHandle(fh));
  h->Used();
  if (h->of->image) return Status::ReadOnly("images under _base are read-only");
  if (!h->write) return Status::PermissionDenied("the file is not open for writing");
  return h->of;
}

void FileSystem::WriteAsync(uint64_t fh, uint64_t offset, ByteView data, SizeCallback done) {
  auto file = GetWritableFile(fh);
  if (!file.ok()) return done(file.status());
  std::shared_ptr<OpenFile> of = std::move(*file);
  if (offset + data.size() < offset) return done(Status::TooLarge("write past 2^64"));
  auto disk = of->CurrentDisk();
  if (!disk.ok()) return done(disk.status());
  if (offset + data.size() > (*disk)->size()) {
    Status st = GrowTo(*of, offset + data.size());
    if (!st.ok()) return done(st);
  }
  Disk* d = disk->get();
  size_t n = data.size();
  d->WriteAsync(offset, data,
                [this, disk = std::move(*disk), of = std::move(of), n, t0 = MonoNs(),
                 done = std::move(done)](Status st) mutable {
                  if (DiskCounters* c = of->counters.get()) {
                    c->write_latency.Observe(MonoNs() - t0);
                    c->writes.fetch_add(1, std::memory_order_relaxed);
                    if (st.ok()) {
                      c->write_bytes.fetch_add(n, std::memory_order_relaxed);
                    } else {
                      c->write_errors.fetch_add(1, std::memory_order_relaxed);
                      if (st.IsBusy()) c->lock_losses.fetch_add(1, std::memory_order_relaxed);
                    }
                  }
                  if (st.ok()) {
                    of->dirty = true;
                    done(n);
                  } else {
                    done(st);
                  }
                  DropDisk(std::move(disk));
                });
}

void FileSystem::FallocateAsync(uint64_t fh, int mode, uint64_t offset, uint64_t length,
                                StatusCallback done) {
  auto file = GetWritableFile(fh);
  if (!file.ok()) return done(file.status());
  std::shared_ptr<OpenFile> of = std::move(*file);
  constexpr int kKnown = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
  if (mode & ~kKnown) return done(Status::NotSupported("fallocate mode not supported"));
  if ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE)) {
    return done(Status::NotSupported("PUNCH_HOLE needs KEEP_SIZE"));
  }
  if ((mode & FALLOC_FL_PUNCH_HOLE) && (mode & FALLOC_FL_ZERO_RANGE)) {
    return done(Status::InvalidArgument("PUNCH_HOLE and ZERO_RANGE together"));
  }
  uint64_t end = offset + length;
  if (end < offset) return done(Status::InvalidArgument("range past 2^64"));
  auto disk = of->CurrentDisk();
  if (!disk.ok()) return done(disk.status());
  // Growth first: the grown part reads as zeros already, so only the part
  // within the old size needs the discard.
  uint64_t old_size = (*disk)->size();
  if (!(mode & FALLOC_FL_KEEP_SIZE) && end > old_size) {
    Status st = GrowTo(*of, end);
    if (!st.ok()) return done(st);
    of->dirty = true;
  }
  uint64_t stop = std::min(end, old_size);
  if (!(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) || offset >= stop) {
    return done(Status::OK());
  }
  Disk* d = disk->get();
  d->DiscardAsync(offset, stop - offset,
                  [this, disk = std::move(*disk), of = std::move(of),
                   done = std::move(done)](Status st) mutable {
                    if (DiskCounters* c = of->counters.get()) {
                      c->discards.fetch_add(1, std::memory_order_relaxed);
                      if (!st.ok()) c->discard_errors.fetch_add(1, std::memory_order_relaxed);
                      if (st.IsBusy()) c->lock_losses.fetch_add(1, std::memory_order_relaxed);
                    }
                    if (st.ok()) of->dirty = true;
                    done(st);
                    DropDisk(std::move(disk));
                  });
}

Result<std::optional<uint64_t>> FileSystem::Lseek(uint64_t fh, uint64_t offset, int whence) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    return Status::InvalidArgument("only SEEK_DATA and SEEK_HOLE are handled here");
  }
  bool want_data = whence == SEEK_DATA;
  ASSIGN_OR_RETURN(auto h, GetHandle(fh));
  h->Used();
  if (h->of->image) {
    ImageReader& img = *h->of->image;
    uint64_t size = img.size();
    if (offset >= size) return std::optional<uint64_t>();
    uint64_t cs = img.manifest().chunk_size;
    for (uint64_t pos = offset; pos < size; pos = (pos / cs + 1) * cs) {
      if (img.IsHoleAt(pos) != want_data) return std::optional<uint64_t>(pos);
    }
    return want_data ? std::optional<uint64_t>() : std::optional<uint64_t>(size);
  }
  ASSIGN_OR_RETURN(auto disk, h->of->CurrentDisk());
  uint64_t size = disk->size();
  if (offset >= size) return std::optional<uint64_t>();
  for (uint64_t pos = offset; pos < size;) {
    uint64_t len = std::min(kSeekWindow, size - pos);
    ASSIGN_OR_RETURN(auto extents, disk->Allocated(pos, len));
    std::sort(extents.begin(), extents.end(),
              [](const Extent& a, const Extent& b) { return a.offset < b.offset; });
    uint64_t cursor = pos;
    for (const Extent& e : extents) {
      uint64_t s = std::max(e.offset, pos);
      uint64_t t = std::min(e.offset + e.length, pos + len);
      if (t <= s || t <= cursor) continue;
      if (want_data) return std::optional<uint64_t>(std::max(s, cursor));
      if (s > cursor) return std::optional<uint64_t>(cursor);
      cursor = t;
    }
    if (!want_data && cursor < pos + len) return std::optional<uint64_t>(cursor);
    pos += len;
  }
  return want_data ? std::optional<uint64_t>() : std::optional<uint64_t>(size);
}

namespace {
void CountFlush(DiskCounters* c, const Status& st, int64_t t0) {
  if (!c) return;
  c->flush_latency.Observe(MonoNs() - t0);
  c->flushes.fetch_add(1, std::memory_order_relaxed);
  if (!st.ok()) c->flush_errors.fetch_add(1, std::memory_order_relaxed);
  if (st.IsBusy()) c->lock_losses.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

void FileSystem::FlushAsync(uint64_t fh, StatusCallback done) {
  auto h = GetHandle(fh);
  if (!h.ok()) return done(h.status());
  (*h)->closing = true;
  std::shared_ptr<OpenFile> of = (*h)->of;
  if (of->image || !of->dirty.exchange(false)) return done(Status::OK());
  auto disk = of->CurrentDisk();
  if (!disk.ok()) return done(disk.status());
  Disk* d = disk->get();
  d->FlushAsync([this, disk = std::move(*disk), of = std::move(of), t0 = MonoNs(),
                 done = std::move(done)](Status st) mutable {
    CountFlush(of->counters.get(), st, t0);
    if (!st.ok()) of->dirty = true;
    done(st);
    DropDisk(std::move(disk));
  });
}

void FileSystem::FsyncAsync(uint64_t fh, StatusCallback done) {
  auto h = GetHandle(fh);
  if (!h.ok()) return done(h.status());
  (*h)->Used();
  std::shared_ptr<OpenFile> of = (*h)->of;
  if (of->image) return done(Status::OK());
  std::shared_ptr<Disk> disk;
  {
    MutexLock lock(of->mu);
    if (!of->writable) return done(Status::OK());
    disk = of->disk;
  }
  if (!disk) return done(Status::IOError("the disk is closed (unmounting)"));
  of->dirty = false;
  Disk* d = disk.get();
  d->FlushAsync([this, disk = std::move(disk), of = std::move(of), t0 = MonoNs(),
                 done = std::move(done)](Status st) mutable {
    CountFlush(of->counters.get(), st, t0);
    if (!st.ok()) of->dirty = true;
    done(st);
    DropDisk(std::move(disk));
  });
}

void FileSystem::Release(uint64_t fh) {
  MutexLock ns(ns_mu_);
  std::shared_ptr<Handle> h;
  bool last = false;
  bool last_writer = false;
  DiskRef ref;
  {
    MutexLock lock(mu_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) return;
    if (sink_) sink_->Released(fh);
    h = std::move(it->second);
    handles_.erase(it);
    if (h->write) last_writer = --h->of->writers == 0;
    if (--h->of->handles == 0) {
      last = true;
      if (h->node->open == h->of) h->node->open.reset();
    }
    ref = DiskRef{h->node->instance, h->node->disk};
  }
  if (!last && last_writer && !h->of->image) DowngradeToReadOnly(*h->of, ref);
  if (last) {
    std::shared_ptr<Disk> disk;
    {
      MutexLock lock(h->of->mu);
      disk = std::move(h->of->disk);
    }
    WaitIdle(disk);
    if (disk && h->of->dirty.exchange(false)) {
      Status st = disk->Flush();
      if (!st.ok()) {
        spdlog::error("flushing {} on its last close: {}", disk->ref().ToString(), st.ToString());
      }
    }
    disk.reset();
    MutexLock lock(mu_);
    auto it = nodes_.find(h->node->ino);
    if (it != nodes_.end() && it->second == h->node && h->node->nlookup == 0 && !h->node->open &&
        h->node->ino != kRootIno && h->node->ino != kBaseDirIno) {
      nodes_.erase(it);
    }
  }
  ns.Unlock();
  closed_cv_.NotifyAll();
}

Result<struct statvfs> FileSystem::StatFs() {
  ASSIGN_OR_RETURN(SpaceInfo space, disks_.Space());
  struct statvfs st {};
  st.f_bsize = kBlockSize;
  st.f_frsize = kBlockSize;
  st.f_blocks = space.capacity_bytes / kBlockSize;
  st.f_bfree = space.available_bytes / kBlockSize;
  st.f_bavail = space.available_bytes / kBlockSize;
  st.f_files = 1u << 20;
  st.f_ffree = 1u << 20;
  st.f_favail = 1u << 20;
  st.f_namemax = kMaxNameLength;
  return st;
}

Status FileSystem::Shutdown() {
  MutexLock ns(ns_mu_);
  std::vector<std::shared_ptr<OpenFile>> open;
  {
    MutexLock lock(mu_);
    for (auto& [ino, node] : nodes_) {
      if (node->open) open.push_back(node->open);
    }
  }
  Status first;
  for (auto& of : open) {
    std::shared_ptr<Disk> disk;
    bool writable;
    {
      MutexLock lock(of->mu);
      disk = std::move(of->disk);
      writable = of->writable;
    }
    if (!disk) continue;
    WaitIdle(disk);
    if (writable) {
      Status st = disk->Flush();
      if (!st.ok()) {
        spdlog::error("flushing {} at unmount: {}", disk->ref().ToString(), st.ToString());
        if (first.ok()) first = st;
      }
    }
  }
  return first;
}

void FileSystem::SetStateSink(StateSink* sink) {
  MutexLock lock(mu_);
  sink_ = sink;
}

FsState FileSystem::Snapshot() {
  MutexLock lock(mu_);
  FsState st;
  for (const auto& [key, ino] : ino_of_) {
    if (ino != kRootIno && ino != kBaseDirIno) st.inos[key] = ino;
  }
  for (const auto& [fh, h] : handles_) st.opens[fh] = FsState::Open{h->node->ino, h->flags};
  for (const auto& [dh, d] : dirs_) st.dirs[dh] = d->ino;
  st.next_ino = next_ino_;
  st.next_fh = next_fh_;
  return st;
}

size_t FileSystem::Restore(const FsState& state) {
  MutexLock ns(ns_mu_);
  {
    MutexLock lock(mu_);
    next_ino_ = std::max(next_ino_, state.next_ino);
    next_fh_ = std::max(next_fh_, state.next_fh);
    for (const auto& [key, ino] : state.inos) {
      if (ino == kRootIno || ino == kBaseDirIno) continue;
      ino_of_[key] = ino;
      key_of_[ino] = key;
      next_ino_ = std::max(next_ino_, ino + 1);
    }
    for (const auto& [fh, open] : state.opens) next_fh_ = std::max(next_fh_, fh + 1);
    for (const auto& [dh, ino] : state.dirs) next_fh_ = std::max(next_fh_, dh + 1);
  }
  size_t broken = 0;
  for (const auto& [fh, open] : state.opens) {
    auto node = GetNode(open.ino);
    Status why = node.status();
    if (node.ok()) {
      auto r = OpenNodeLocked(*node, open.flags, fh);
      if (r.ok()) continue;
      why = r.status();
    }
    ++broken;
    spdlog::error("file handle {} (inode {}) could not be opened again: {}; its requests fail", fh,
                  open.ino, why.ToString());
    auto h = std::make_shared<Handle>();
    if (node.ok()) {
      h->node = *node;
    } else {
      h->node = std::make_shared<Node>();
      h->node->ino = open.ino;
      h->node->kind = NodeKind::kDisk;
      h->node->removed = true;
    }
    h->of = std::make_shared<OpenFile>();
    h->of->broken = Status::IOError(
        "the file could not be opened again after the mount's "
        "server was replaced: " +
        why.ToString());
    h->of->handles = 1;
    h->write = WantsWrite(open.flags);
    h->of->writers = h->write ? 1 : 0;
    h->flags = open.flags;
    MutexLock lock(mu_);
    handles_[fh] = std::move(h);
  }
  for (const auto& [dh, ino] : state.dirs) {
    auto d = std::make_shared<DirHandle>();
    d->ino = ino;
    if (auto node = GetNode(ino); node.ok()) {
      if (auto entries = ListDir(*node); entries.ok()) d->entries = std::move(*entries);
    }
    MutexLock lock(mu_);
    dirs_[dh] = std::move(d);
  }
  return broken;
}

size_t FileSystem::InodeCountForTest() {
  MutexLock lock(mu_);
  return nodes_.size();
}

size_t FileSystem::OpenFileCountForTest() {
  MutexLock lock(mu_);
  return handles_.size();
}

}  // namespace imgfs::fusefs
