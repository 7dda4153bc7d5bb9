#include "blockstore/mem_disk.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include "blockstore/disk_util.h"
#include "blockstore/mutex.h"
#include "blockstore/units.h"
#include "blockstore/backends.h"

namespace imgfs {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct MemDiskState {
  SharedMutex mu;
  uint64_t size GUARDED_BY(mu) = 0;
  uint32_t chunk_size GUARDED_BY(mu) = 0;
  std::optional<ImageId> parent_id GUARDED_BY(mu);
  std::shared_ptr<ImageReader> parent GUARDED_BY(mu);
  uint64_t overlap GUARDED_BY(mu) = 0;
  // Owned chunks, each chunk_size bytes, or empty for an owned all-zero chunk.
  std::map<uint64_t, Bytes> chunks GUARDED_BY(mu);
  DiskAttrs attrs GUARDED_BY(mu);
  int64_t mtime_ns GUARDED_BY(mu) = 0;
  bool open_rw = false;  // guarded by the backend's mutex (MemBackend::mu_)
};

class MemBackend;

DiskSizeLimit MemLimit() { return {kMaxDiskSize, "imgfs's largest disk"}; }

class MemDisk final : public Disk {
 public:
  MemDisk(MemBackend* backend, DiskRef ref, std::shared_ptr<MemDiskState> st, bool writable)
      : backend_(backend), ref_(std::move(ref)), st_(std::move(st)), writable_(writable) {}
  ~MemDisk() override;

  const DiskRef& ref() const override { return ref_; }
  uint64_t size() const override {
    ReaderLock lock(st_->mu);
    return st_->size;
  }
  bool writable() const override { return writable_; }

  Status Read(uint64_t offset, MutableByteView buf) override {
    ReaderLock lock(st_->mu);
    if (offset > st_->size || buf.size() > st_->size - offset) {
      return disk_util::RangeError("read", offset, buf.size(), ref_, st_->size);
    }
    uint64_t cs = st_->chunk_size;
    uint64_t pos = offset, end = offset + buf.size();
    while (pos < end) {
      uint64_t c = pos / cs;
      uint64_t run_end = std::min(end, (c + 1) * cs);
      MutableByteView part = buf.subspan(pos - offset, run_end - pos);
      auto it = st_->chunks.find(c);
      if (it == st_->chunks.end()) {
        RETURN_IF_ERROR(disk_util::ReadParent(st_->parent.get(), st_->overlap, pos, part, ref_));
      } else if (it->second.empty()) {
        std::memset(part.data(), 0, part.size());
      } else {
        std::memcpy(part.data(), it->second.data() + (pos - c * cs), part.size());
      }
      pos = run_end;
    }
    return Status::OK();
  }

  Status Write(uint64_t offset, ByteView buf) override {
    return Modify(offset, buf.size(), buf.data(), "write");
  }

  Status Discard(uint64_t offset, uint64_t length) override {
    if (!writable_) return ReadOnly();
    uint64_t size = this->size();
    if (offset >= size) return Status::OK();
    return Modify(offset, std::min(length, size - offset), nullptr, "discard");
  }

  Status Flush() override { return Status::OK(); }

  Status Resize(uint64_t new_size, bool allow_shrink) override {
    if (!writable_) return ReadOnly();
    if (new_size > kMaxDiskSize) {
      return disk_util::SizeError("disk " + ref_.ToString(), new_size, MemLimit());
    }
    WriterLock lock(st_->mu);
    if (new_size < st_->size && !allow_shrink) {
      return Status::PermissionDenied(
          "shrinking disk " + ref_.ToString() + " from " + std::to_string(st_->size) + " to " +
          std::to_string(new_size) + " bytes is refused (it would lose data)");
    }
    if (new_size < st_->size) {
      uint64_t cs = st_->chunk_size;
      st_->chunks.erase(st_->chunks.lower_bound((new_size + cs - 1) / cs), st_->chunks.end());
      auto it = st_->chunks.find(new_size / cs);
      if (it != st_->chunks.end() && !it->second.empty()) {
        std::fill(it->second.begin() + static_cast<ptrdiff_t>(new_size % cs), it->second.end(), 0);
      }
      st_->overlap = std::min(st_->overlap, new_size);
    }
    st_->size = new_size;
    st_->mtime_ns = NowNs();
    return Status::OK();
  }

  Result<std::vector<Extent>> Allocated(uint64_t offset, uint64_t length) override {
    ReaderLock lock(st_->mu);
    std::vector<Extent> out;
    if (offset >= st_->size) return out;
    uint64_t end = offset + std::min(length, st_->size - offset);
    uint64_t cs = st_->chunk_size;
    for (uint64_t c = offset / cs; c * cs < end; ++c) {
      uint64_t cstart = c * cs, cend = std::min(cstart + cs, st_->size);
      auto it = st_->chunks.find(c);
      if (it != st_->chunks.end()) {
        if (!it->second.empty() && !IsAllZero(ByteView(it->second))) {
          disk_util::AddExtent(&out, cstart, cend, offset, end);
        }
      } else if (disk_util::ParentHasData(st_->parent.get(), st_->overlap, cstart, cend)) {
        disk_util::AddExtent(&out, cstart, std::min(cend, st_->overlap), offset, end);
      }
    }
    return out;
  }

 private:
  Status ReadOnly() const {
    return Status::ReadOnly("disk " + ref_.ToString() + " is open read-only");
  }

  // Writes `data` (or zeros when null) at [offset, offset+len).
  Status Modify(uint64_t offset, uint64_t len, const uint8_t* data, const char* op) {
    if (!writable_) return ReadOnly();
    WriterLock lock(st_->mu);
    if (offset > st_->size || len > st_->size - offset) {
      return disk_util::RangeError(op, offset, len, ref_, st_->size);
    }
    uint64_t cs = st_->chunk_size;
    uint64_t pos = offset, end = offset + len;
    while (pos < end) {
      uint64_t c = pos / cs;
      uint64_t cstart = c * cs, cend = std::min(cstart + cs, st_->size);
      uint64_t run_end = std::min(end, cstart + cs);
      auto it = st_->chunks.find(c);
      bool whole = pos == cstart && run_end >= cend;
      if (!data && whole) {
        if (it != st_->chunks.end() ||
            disk_util::ParentHasData(st_->parent.get(), st_->overlap, cstart, cend)) {
          st_->chunks[c] = Bytes();
        }
      } else if (!data && it == st_->chunks.end() &&
                 !disk_util::ParentHasData(st_->parent.get(), st_->overlap, cstart, cend)) {
        // Already reads as zeros.
      } else {
        Bytes& chunk = st_->chunks[c];
        if (it == st_->chunks.end()) {
          chunk.resize(cs);
          RETURN_IF_ERROR(disk_util::ReadParent(st_->parent.get(), st_->overlap, cstart,
                                                MutableByteView(chunk), ref_));
        } else if (chunk.empty()) {
          chunk.assign(cs, 0);
        }
        uint8_t* dst = chunk.data() + (pos - cstart);
        if (data) {
          std::memcpy(dst, data + (pos - offset), run_end - pos);
        } else {
          std::memset(dst, 0, run_end - pos);
        }
      }
      pos = run_end;
    }
    st_->mtime_ns = NowNs();
    return Status::OK();
  }

  MemBackend* const backend_;
  const DiskRef ref_;
  const std::shared_ptr<MemDiskState> st_;
  const bool writable_;
};

class MemBackend final : public DiskBackend {
 public:
  explicit MemBackend(ImageSource* images) : images_(images) {}

  std::string Describe() const override { return "mem:"; }

  Status Create(const DiskRef& ref, const DiskCreateOptions& opts) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    auto st = std::make_shared<MemDiskState>();
    WriterLock init(st->mu);  // not shared yet; held so the analysis sees every field written under it
    st->attrs = opts.attrs;
    st->attrs.mode &= 07777;
    if (opts.image) {
      if (!images_) return Status::NotFound("image " + opts.image->Hex() + " not found");
      ASSIGN_OR_RETURN(st->parent, images_->OpenImage(*opts.image));
      uint64_t image_size = st->parent->size();
      st->size = opts.size.value_or(image_size);
      if (st->size < image_size) {
        return Status::InvalidArgument("size " + std::to_string(st->size) +
                                       " is smaller than the image (" + std::to_string(image_size) +
                                       " bytes)");
      }
      st->parent_id = *opts.image;
      st->overlap = image_size;
      uint32_t chunk = st->parent->manifest().chunk_size;
      st->chunk_size = ValidateChunkSize(chunk).ok() ? chunk : kBlankDiskChunkSize;
    } else {
      if (!opts.size) return Status::InvalidArgument("a blank disk needs a size");
      st->size = *opts.size;
      st->chunk_size = kBlankDiskChunkSize;
    }
    if (st->size > kMaxDiskSize) {
      return disk_util::SizeError("disk " + ref.ToString(), st->size, MemLimit());
    }
    st->mtime_ns = NowNs();
    MutexLock lock(mu_);
    auto& inst = instances_[ref.instance];
    if (!inst.disks.emplace(ref.disk, st).second) {
      return Status::AlreadyExists("disk " + ref.ToString() + " already exists");
    }
    return Status::OK();
  }

  Result<std::unique_ptr<Disk>> Open(const DiskRef& ref, OpenMode mode) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    MutexLock lock(mu_);
    ASSIGN_OR_RETURN(auto st, Find(ref));
    bool rw = mode != OpenMode::kReadOnly;
    if (rw) {
      if (st->open_rw) return InUse(ref);
      st->open_rw = true;
    }
    return std::unique_ptr<Disk>(std::make_unique<MemDisk>(this, ref, st, rw));
  }

  Status Remove(const DiskRef& ref) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    MutexLock lock(mu_);
    ASSIGN_OR_RETURN(auto st, Find(ref));
    if (st->open_rw) return InUse(ref);
    auto& inst = instances_[ref.instance];
    inst.disks.erase(ref.disk);
    if (inst.disks.empty() && !inst.explicit_) instances_.erase(ref.instance);
    return Status::OK();
  }

  Status Rename(const DiskRef& from, const DiskRef& to) override {
    RETURN_IF_ERROR(ValidateRef(from));
    RETURN_IF_ERROR(ValidateRef(to));
    MutexLock lock(mu_);
    ASSIGN_OR_RETURN(auto st, Find(from));
    if (st->open_rw) return InUse(from);
    auto& dst = instances_[to.instance];
    if (!dst.disks.emplace(to.disk, st).second) {
      return Status::AlreadyExists("disk " + to.ToString() + " already exists");
    }
    auto& src = instances_[from.instance];
    src.disks.erase(from.disk);
    if (src.disks.empty() && !src.explicit_) instances_.erase(from.instance);
    return Status::OK();
  }

  Result<DiskInfo> Info(const DiskRef& ref) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    std::shared_ptr<MemDiskState> st;
    {
      MutexLock lock(mu_);
      ASSIGN_OR_RETURN(st, Find(ref));
    }
    ReaderLock lock(st->mu);
    DiskInfo info;
    info.ref = ref;
    info.size = st->size;
    info.parent = st->parent_id;
    info.attrs = st->attrs;
    info.mtime_ns = st->mtime_ns;
    info.location = "mem:" + ref.ToString();
    for (const auto& [c, data] : st->chunks) info.owned_bytes += data.size();
    return info;
  }

  Status Resize(const DiskRef& ref, uint64_t new_size, bool allow_shrink) override {
    ASSIGN_OR_RETURN(auto disk, Open(ref, OpenMode::kReadWrite));
    return disk->Resize(new_size, allow_shrink);
  }

  Result<DiskSizeLimit> MaxDiskSize(uint32_t chunk_size) override {
    (void)chunk_size;
    return MemLimit();
  }

  Status SetAttrs(const DiskRef& ref, const DiskAttrs& attrs) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    std::shared_ptr<MemDiskState> st;
    {
      MutexLock lock(mu_);
      ASSIGN_OR_RETURN(st, Find(ref));
    }
    WriterLock lock(st->mu);
    st->attrs = attrs;
    st->attrs.mode &= 07777;
    return Status::OK();
  }

  Status CreateInstance(const std::string& instance) override {
    RETURN_IF_ERROR(ValidateInstanceName(instance));
    MutexLock lock(mu_);
    if (instances_.count(instance)) {
      return Status::AlreadyExists("instance " + instance + " already exists");
    }
    instances_[instance].explicit_ = true;
    return Status::OK();
  }

  Status RemoveInstance(const std::string& instance) override {
    RETURN_IF_ERROR(ValidateInstanceName(instance));
    MutexLock lock(mu_);
    auto it = instances_.find(instance);
    if (it == instances_.end()) return Status::NotFound("instance " + instance + " does not exist");
    if (!it->second.disks.empty())
      return Status::NotEmpty("instance " + instance + " still has disks");
    instances_.erase(it);
    return Status::OK();
  }

  Result<std::vector<std::string>> ListInstances() override {
    MutexLock lock(mu_);
    std::vector<std::string> out;
    for (const auto& [name, inst] : instances_) out.push_back(name);
    return out;
  }

  Result<std::vector<DiskRef>> List(const std::string& instance) override {
    MutexLock lock(mu_);
    std::vector<DiskRef> out;
    if (!instance.empty()) {
      RETURN_IF_ERROR(ValidateInstanceName(instance));
      if (!instances_.count(instance)) {
        return Status::NotFound("instance " + instance + " does not exist");
      }
    }
    for (const auto& [name, inst] : instances_) {
      if (!instance.empty() && name != instance) continue;
      for (const auto& [disk, st] : inst.disks) out.push_back(DiskRef{name, disk});
    }
    return out;
  }

  Result<SpaceInfo> Space() override {
    MutexLock lock(mu_);
    SpaceInfo info;
    for (const auto& [name, inst] : instances_) {
      for (const auto& [disk, st] : inst.disks) {
        ReaderLock l(st->mu);
        for (const auto& [c, data] : st->chunks) info.used_bytes += data.size();
      }
    }
    info.capacity_bytes = uint64_t{1} << 40;
    info.available_bytes = info.capacity_bytes - std::min(info.capacity_bytes, info.used_bytes);
    return info;
  }

  void Close(const std::shared_ptr<MemDiskState>& st) {
    MutexLock lock(mu_);
    st->open_rw = false;
  }

 private:
  struct Instance {
    bool explicit_ = false;
    std::map<std::string, std::shared_ptr<MemDiskState>> disks;
  };

  static Status ValidateRef(const DiskRef& ref) {
    RETURN_IF_ERROR(ValidateInstanceName(ref.instance));
    return ValidateDiskName(ref.disk);
  }
  static Status InUse(const DiskRef& ref) {
    return Status::Busy("disk " + ref.ToString() + " is in use (open for writing)");
  }
  Result<std::shared_ptr<MemDiskState>> Find(const DiskRef& ref) REQUIRES(mu_) {
    auto it = instances_.find(ref.instance);
    if (it != instances_.end()) {
      auto d = it->second.disks.find(ref.disk);
      if (d != it->second.disks.end()) return d->second;
    }
    return Status::NotFound("disk " + ref.ToString() + " does not exist");
  }

  ImageSource* const images_;
  Mutex mu_;
  std::map<std::string, Instance> instances_ GUARDED_BY(mu_);
};

MemDisk::~MemDisk() {
  if (writable_) backend_->Close(st_);
}

}  // namespace

std::unique_ptr<DiskBackend> CreateMemDiskBackend(ImageSource* images) {
  return std::make_unique<MemBackend>(images);
}

DiskBackendType MemDiskBackendType() {
  DiskBackendType t;
  t.name = "mem";  // no usage: for tests only
  t.create = [](const BackendContext& ctx,
                std::string_view) -> Result<std::unique_ptr<DiskBackend>> {
    return CreateMemDiskBackend(ctx.images);
  };
  return t;
}

}  // namespace imgfs
