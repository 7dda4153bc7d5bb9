#include "cache/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "blockstore/backends.h"
#include "blockstore/file_util.h"
#include "blockstore/names.h"

namespace imgfs {
namespace {

constexpr const char* kConfigFile = "imgfs.json";
constexpr const char* kFormatName = "imgfs-store";
constexpr int kFormatVersion = 1;

nlohmann::json ConfigToJson(const StoreConfig& c) {
  nlohmann::json j = {{"format", kFormatName},
                      {"version", kFormatVersion},
                      {"chunk_size", c.chunk_size},
                      {"chunks", c.chunks},
                      {"disks", c.disks}};
  if (!c.ceph.conf_file.empty() || !c.ceph.client_id.empty() || !c.ceph.keyring.empty()) {
    j["ceph"] = {{"conf", c.ceph.conf_file},
                 {"id", c.ceph.client_id},
                 {"keyring", c.ceph.keyring},
                 {"timeout", c.ceph.timeout_seconds}};
  }
  return j;
}

Result<StoreConfig> ConfigFromJson(const std::string& path, const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument(path + " is not a valid imgfs store configuration: " + why);
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("not JSON");
  if (j.value("format", "") != kFormatName) return bad("not an imgfs store");
  if (!j.contains("version") || !j["version"].is_number_integer()) return bad("no version");
  if (j["version"].get<int>() != kFormatVersion) {
    return bad("format version " + std::to_string(j["version"].get<int>()) +
               " is not supported (this imgfs reads version 1)");
  }
  StoreConfig c;
  try {
    c.chunk_size = j.at("chunk_size").get<uint32_t>();
    c.chunks = j.at("chunks").get<std::string>();
    c.disks = j.at("disks").get<std::string>();
    if (j.contains("ceph")) {
      const auto& ceph = j["ceph"];
      c.ceph.conf_file = ceph.value("conf", "");
      c.ceph.client_id = ceph.value("id", "");
      c.ceph.keyring = ceph.value("keyring", "");
      c.ceph.timeout_seconds = ceph.value("timeout", 20);
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  RETURN_IF_ERROR(ValidateChunkSize(c.chunk_size).WithContext(path));
  return c;
}

bool SameConfig(const StoreConfig& a, const StoreConfig& b) {
  return a.chunk_size == b.chunk_size && a.chunks == b.chunks && a.disks == b.disks &&
         a.ceph.conf_file == b.ceph.conf_file && a.ceph.client_id == b.ceph.client_id &&
         a.ceph.keyring == b.ceph.keyring;
}

std::string ImageKey(const ImageId& id) { return "images/" + id.Hex(); }
std::string NameKey(std::string_view name) { return "names/" + std::string(name); }

std::string RecordToJson(const ImageRecord& r) {
  nlohmann::json j = {{"size", r.size},
                      {"chunk_size", r.chunk_size},
                      {"data_bytes", r.data_bytes},
                      {"created", r.created},
                      {"last_used", r.last_used}};
  return j.dump();
}

Result<ImageRecord> RecordFromJson(const ImageId& id, const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Corruption("image record " + id.Hex() + " is not valid JSON");
  }
  ImageRecord r;
  r.id = id;
  try {
    r.size = j.at("size").get<uint64_t>();
    r.chunk_size = j.value("chunk_size", uint32_t{0});
    r.data_bytes = j.value("data_bytes", uint64_t{0});
    r.created = j.value("created", int64_t{0});
    r.last_used = j.value("last_used", r.created);
  } catch (const nlohmann::json::exception& e) {
    return Status::Corruption("image record " + id.Hex() + ": " + e.what());
  }
  return r;
}

bool DirIsEmpty(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (!d) return true;
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace

int64_t SystemClockNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status Store::Init(const std::string& path, const StoreConfig& config) {
  RETURN_IF_ERROR(ValidateChunkSize(config.chunk_size));
  ASSIGN_OR_RETURN(ChunkBackendSpec chunk_spec, ParseChunkBackendSpec(config.chunks));
  ASSIGN_OR_RETURN(DiskBackendSpec disk_spec, ParseDiskBackendSpec(config.disks));
  std::string conf_path = path + "/" + kConfigFile;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument("cannot create a store at " + path + ": not a directory");
    }
    auto existing = ReadFile(conf_path);
    if (existing.ok()) {
      ASSIGN_OR_RETURN(StoreConfig old, ConfigFromJson(conf_path, *existing));
      if (!SameConfig(old, config)) {
        return Status::AlreadyExists("a store already exists at " + path + " (chunk size " +
                                     std::to_string(old.chunk_size) + ", chunks " + old.chunks +
                                     ", disks " + old.disks + ") with a different configuration");
      }
    } else if (!DirIsEmpty(path)) {
      return Status::InvalidArgument("cannot create a store at " + path +
                                     ": the directory is not empty and is not an imgfs store");
    }
  }
  // The disk backend first: rbd checks its pool before anything is made.
  const BackendContext ctx{path, &config.ceph, nullptr};
  if (disk_spec.type->prepare) RETURN_IF_ERROR(disk_spec.type->prepare(ctx, disk_spec.arg));
  if (chunk_spec.type->prepare) RETURN_IF_ERROR(chunk_spec.type->prepare(ctx, chunk_spec.arg));
  RETURN_IF_ERROR(MakeDirs(path + "/tmp"));
  if (::access(conf_path.c_str(), F_OK) != 0) {
    RETURN_IF_ERROR(WriteFileAtomic(conf_path, ConfigToJson(config).dump(2) + "\n"));
  }
  // Opening checks that the backends can be reached with this configuration.
  auto store = Open(path);
  return store.status();
}

Store::Store(std::string path, StoreConfig config, Clock clock)
    : path_(std::move(path)), config_(std::move(config)), clock_(std::move(clock)) {
  if (!clock_) clock_ = SystemClockNow;
}

Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::Open(const std::string& path, Clock clock,
                                           const StoreOptions& options) {
  std::string conf_path = path + "/" + kConfigFile;
  auto text = ReadFile(conf_path);
  if (!text.ok()) {
    if (text.status().IsNotFound()) {
      return Status::NotFound("no imgfs store at " + path +
                              ": run 'imgfs init' first (or pass --store / set IMGFS_STORE)");
    }
    return text.status();
  }
  ASSIGN_OR_RETURN(StoreConfig config, ConfigFromJson(conf_path, *text));
  std::unique_ptr<Store> store(new Store(path, config, std::move(clock)));

  auto chunk_spec = ParseChunkBackendSpec(config.chunks);
  if (!chunk_spec.ok()) return chunk_spec.status().WithContext(conf_path);
  auto disk_spec = ParseDiskBackendSpec(config.disks);
  if (!disk_spec.ok()) return disk_spec.status().WithContext(conf_path);
  store->chunk_spec_ = *chunk_spec;
  store->disk_spec_ = *disk_spec;
  const BackendContext ctx{path, &store->config_.ceph, store.get()};
  ASSIGN_OR_RETURN(auto backend, CreateChunkBackend(store->chunk_spec_, ctx));
  store->chunks_ =
      std::make_shared<ChunkStore>(std::move(backend), config.chunk_size,
                                   options.chunk_cache_bytes.value_or(DefaultChunkCacheBytes()));
  ASSIGN_OR_RETURN(store->disks_, CreateDiskBackend(store->disk_spec_, ctx));
  return store;
}

Result<ImageId> Store::ResolveImage(std::string_view ref) {
  if (ref.empty()) return Status::InvalidArgument("image name is empty");
  std::string value;
  if (ref.size() == 32 && IsHexString(ref)) {
    ASSIGN_OR_RETURN(ImageId id, Id128::FromHex(Lower(ref)));
    Status s = backend().GetRecord(ImageKey(id), &value);
    if (s.ok()) return id;
    if (!s.IsNotFound()) return s;
  }
  if (ValidateImageName(ref).ok()) {
    Status s = backend().GetRecord(NameKey(ref), &value);
    if (s.ok()) {
      auto id = Id128::FromHex(value);
      if (!id.ok()) return Status::Corruption("name '" + std::string(ref) + "' holds a bad id");
      return *id;
    }
    if (!s.IsNotFound()) return s;
  }
  if (ref.size() >= 8 && ref.size() < 32 && IsHexString(ref)) {
    std::vector<std::string> matches;
    std::string prefix = "images/" + Lower(ref);
    RETURN_IF_ERROR(backend().ListRecords(prefix, [&](std::string_view key) {
      matches.emplace_back(key.substr(7));
      return Status::OK();
    }));
    if (matches.size() == 1) return Id128::FromHex(matches[0]);
    if (matches.size() > 1) {
      std::sort(matches.begin(), matches.end());
      std::string list;
      for (const auto& m : matches) list += (list.empty() ? "" : ", ") + m;
      return Status::InvalidArgument("image prefix '" + std::string(ref) +
                                     "' is ambiguous; it matches " + list);
    }
  }
  return Status::NotFound("no image '" + std::string(ref) +
                          "' (give a name, an image id, or 8+ hex digits of one)");
}

Result<ImageRecord> Store::ReadImageRecord(const ImageId& id) {
  std::string value;
  Status s = backend().GetRecord(ImageKey(id), &value);
  if (s.IsNotFound()) return Status::NotFound("no image " + id.Hex());
  RETURN_IF_ERROR(s);
  return RecordFromJson(id, value);
}

Result<std::map<std::string, std::vector<std::string>>> Store::NamesByImage() {
  std::map<std::string, std::vector<std::string>> names;
  RETURN_IF_ERROR(
      backend().ListRecordValues("names/", [&](std::string_view key, std::string_view target) {
        names[std::string(target)].emplace_back(key.substr(6));
        return Status::OK();
      }));
  for (auto& [id, list] : names) std::sort(list.begin(), list.end());
  return names;
}

Result<ImageRecord> Store::GetImage(const ImageId& id) {
  ASSIGN_OR_RETURN(ImageRecord r, ReadImageRecord(id));
  ASSIGN_OR_RETURN(auto names, NamesByImage());
  r.names = std::move(names[r.id.Hex()]);
  return r;
}

Result<std::vector<ImageRecord>> Store::ListImages() {
  ASSIGN_OR_RETURN(auto names, NamesByImage());
  std::vector<ImageRecord> out;
  // One listing with the values (a thousand records a round trip on rados),
  // not a read per image.
  RETURN_IF_ERROR(
      backend().ListRecordValues("images/", [&](std::string_view key, std::string_view value) {
        auto id = Id128::FromHex(key.substr(7));
        if (!id.ok()) return Status::OK();  // not an image record
        ASSIGN_OR_RETURN(ImageRecord r, RecordFromJson(*id, std::string(value)));
        if (auto it = names.find(r.id.Hex()); it != names.end()) r.names = it->second;
        out.push_back(std::move(r));
        return Status::OK();
      }));
  std::sort(out.begin(), out.end(),
            [](const ImageRecord& a, const ImageRecord& b) { return a.created < b.created; });
  return out;
}

Status Store::PublishImage(const Manifest& manifest, const ImageId& id,
                           const std::vector<std::string>& names, bool force_names) {
  for (const auto& n : names) {
    RETURN_IF_ERROR(ValidateImageName(n));
    if (force_names) continue;
    std::string current;
    Status s = backend().GetRecord(NameKey(n), &current);
    if (s.ok() && current != id.Hex()) {
      return Status::AlreadyExists("name '" + n + "' already points at image " + current +
                                   " (use --force to move it)");
    }
    if (!s.ok() && !s.IsNotFound()) return s;
  }
  ImageRecord r;
  r.id = id;
  r.size = manifest.size;
  r.chunk_size = manifest.chunk_size;
  r.data_bytes = manifest.DataBytes();
  r.created = Now();
  r.last_used = r.created;
  Status s = backend().PutRecord(ImageKey(id), RecordToJson(r), RecordCondition::Absent());
  if (!s.ok() && !s.IsAlreadyExists()) return s;
  for (const auto& n : names) RETURN_IF_ERROR(SetName(n, id, force_names));
  return Status::OK();
}

Status Store::SetName(const std::string& name, const ImageId& id, bool force) {
  RETURN_IF_ERROR(ValidateImageName(name));
  if (name.size() == 32 && IsHexString(name)) {
    return Status::InvalidArgument("invalid image name '" + name +
                                   "': 32 hex digits would read as an image id");
  }
  std::string value;
  Status s = backend().GetRecord(ImageKey(id), &value);
  if (s.IsNotFound()) return Status::NotFound("no image " + id.Hex());
  RETURN_IF_ERROR(s);
  if (force) return backend().PutRecord(NameKey(name), id.Hex(), RecordCondition::Any());
  s = backend().PutRecord(NameKey(name), id.Hex(), RecordCondition::Absent());
  if (!s.IsAlreadyExists()) return s;
  std::string current;
  RETURN_IF_ERROR(backend().GetRecord(NameKey(name), &current));
  if (current == id.Hex()) return Status::OK();
  return Status::AlreadyExists("name '" + name + "' already points at image " + current +
                               " (use --force to move it)");
}

Status Store::RemoveName(const std::string& name) {
  RETURN_IF_ERROR(ValidateImageName(name));
  Status s = backend().RemoveRecord(NameKey(name), RecordCondition::Any());
  if (s.IsNotFound()) return Status::NotFound("no image name '" + name + "'");
  return s;
}

Result<std::vector<DiskRef>> Store::DisksUsing(const ImageId& id) {
  std::vector<DiskRef> users;
  ASSIGN_OR_RETURN(auto disks, disks_->List(""));
  auto infos = disks_->InfoMany(disks);
  for (size_t i = 0; i < disks.size(); ++i) {
    const auto& info = infos[i];
    if (!info.ok()) {
      if (info.status().IsNotFound()) continue;  // removed meanwhile
      return info.status();
    }
    if (info->parent && *info->parent == id) users.push_back(disks[i]);
  }
  return users;
}

Status Store::RemoveImage(const ImageId& id) {
  ASSIGN_OR_RETURN(ImageRecord r, GetImage(id));
  ASSIGN_OR_RETURN(auto users, DisksUsing(id));
  if (!users.empty()) {
    std::string list;
    for (size_t i = 0; i < users.size() && i < 10; ++i) {
      list += (i ? ", " : "") + users[i].ToString();
    }
    if (users.size() > 10) list += ", ... (" + std::to_string(users.size()) + " disks)";
    return Status::Busy("image " + id.Hex() + " is in use by disks: " + list);
  }
  ASSIGN_OR_RETURN(auto others, UsesByOtherStores());
  if (auto it = others.find(id); it != others.end()) {
    std::string list;
    for (size_t i = 0; i < it->second.size() && i < 10; ++i) {
      list += (i ? ", " : "") + it->second[i];
    }
    return Status::Busy("image " + id.Hex() +
                        " is in use by disks of other hosts (store:disk): " + list);
  }
  return RemoveUnusedImage(r);
}

Status Store::RemoveUnusedImage(const ImageRecord& r) {
  const ImageId& id = r.id;
  // Its publication in the disk backend (rbd) goes first: refused, changing
  // nothing, while clones anywhere use it.
  Status up = disks_->Unpublish(id);
  if (!up.ok() && !up.IsNotFound()) {
    return up.WithContext("image " + id.Hex() + " cannot be removed");
  }
  for (const auto& n : r.names) {
    Status s = backend().RemoveRecord(NameKey(n), RecordCondition::Equals(id.Hex()));
    if (!s.ok() && !s.IsNotFound() && !s.IsBusy()) return s;
  }
  Status s = backend().RemoveRecord(ImageKey(id), RecordCondition::Any());
  if (s.IsNotFound()) return Status::OK();
  {
    MutexLock lock(readers_mu_);
    readers_.erase(id);
  }
  return s;
}

Status Store::TouchImage(const ImageId& id) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::string old;
    Status s = backend().GetRecord(ImageKey(id), &old);
    if (s.IsNotFound()) return Status::NotFound("no image " + id.Hex());
    RETURN_IF_ERROR(s);
    ASSIGN_OR_RETURN(ImageRecord r, RecordFromJson(id, old));
    int64_t now = Now();
    if (r.last_used >= now) return Status::OK();
    r.last_used = now;
    s = backend().PutRecord(ImageKey(id), RecordToJson(r), RecordCondition::Equals(old));
    if (!s.IsBusy()) return s;
  }
  return Status::Busy("image record " + id.Hex() + " keeps changing; try again");
}

Result<std::unique_ptr<Store::GcLock>> Store::LockShared(const std::function<void()>& waiting) {
  ASSIGN_OR_RETURN(auto lock, backend().Lock("gc", LockMode::kShared, waiting));
  return std::make_unique<GcLock>(std::move(lock));
}

Result<std::unique_ptr<Store::GcLock>> Store::LockExclusive(const std::function<void()>& waiting) {
  ASSIGN_OR_RETURN(auto lock, backend().Lock("gc", LockMode::kExclusive, waiting));
  return std::make_unique<GcLock>(std::move(lock));
}

Status Store::CreateDisk(const DiskRef& ref, const DiskCreateOptions& opts) {
  if (!opts.image) return disks_->Create(ref, opts);  // a blank disk uses no image
  ASSIGN_OR_RETURN(auto lock, LockShared());
  RETURN_IF_ERROR(ReadImageRecord(*opts.image).status());
  RETURN_IF_ERROR(lock->Check());
  RETURN_IF_ERROR(disks_->Create(ref, opts));
  if (Status held = lock->Check(); !held.ok() && opts.image) {
    // A gc elsewhere may have removed the image meanwhile: undo.
    (void)disks_->Remove(ref);
    return held.WithContext("disk " + ref.ToString() + " not created");
  }
  Status rec = RecordDiskBackend();
  if (rec.ok()) {
    rec = backend().PutRecord(UseKey(*opts.image, *StoreId(), ref), ref.ToString(),
                              RecordCondition::Any());
  }
  if (!rec.ok()) {
    (void)disks_->Remove(ref);
    return rec.WithContext("disk " + ref.ToString() + " not created: recording its image's use");
  }
  Status s = TouchImage(*opts.image);
  if (!s.ok())
    spdlog::warn("could not record the use of image {}: {}", opts.image->Hex(), s.message());
  return Status::OK();
}

Status Store::ResizeDisk(const DiskRef& ref, uint64_t new_size, bool allow_shrink) {
  return disks_->Resize(ref, new_size, allow_shrink);
}

// A disk's use record is not touched by a rename or a removal: it stays
// until this store's next gc brings the records in line with its disks
// (ReconcileUses). Until then other hosts' gc keep the image, which errs on
// the side of keeping.
Status Store::RenameDisk(const DiskRef& from, const DiskRef& to) {
  return disks_->Rename(from, to);
}

Status Store::RemoveDisk(const DiskRef& ref) { return disks_->Remove(ref); }

std::string Store::UseKey(const ImageId& id, const std::string& store_id, const DiskRef& ref) {
  return "uses/" + id.Hex() + "/" + store_id + "/" + ref.instance + "/" + ref.disk;
}

Result<std::string> Store::StoreId() {
  MutexLock lock(store_id_mu_);
  if (!store_id_.empty()) return store_id_;
  const std::string path = path_ + "/store-id";
  auto text = ReadFile(path);
  if (!text.ok() && text.status().IsNotFound()) {
    std::random_device rd;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
    RETURN_IF_ERROR(WriteFileAtomic(path, std::string(buf) + "\n"));
    text = ReadFile(path);
  }
  RETURN_IF_ERROR(text.status());
  std::string id = text->substr(0, text->find('\n'));
  if (id.size() != 16 || !IsHexString(id)) {
    return Status::Corruption(path + " does not hold a store id (16 hex digits)");
  }
  store_id_ = id;
  return id;
}

namespace {
struct UseRecord {
  ImageId image;
  std::string store;
  DiskRef ref;
};
// "uses/<image>/<store>/<instance>/<disk>"; nullopt for anything else.
std::optional<UseRecord> ParseUseKey(std::string_view key) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    size_t slash = key.find('/', start);
    parts.emplace_back(key.substr(start, slash == key.npos ? key.npos : slash - start));
    if (slash == key.npos) break;
    start = slash + 1;
  }
  if (parts.size() != 5 || parts[0] != "uses") return std::nullopt;
  auto id = Id128::FromHex(parts[1]);
  if (!id.ok()) return std::nullopt;
  return UseRecord{*id, parts[2], DiskRef{parts[3], parts[4]}};
}
}  // namespace

Status Store::RecordDiskBackend() {
  ASSIGN_OR_RETURN(std::string me, StoreId());
  return backend().PutRecord("stores/" + me, disks_->Describe(), RecordCondition::Any());
}

Result<std::unordered_map<ImageId, std::vector<std::string>>> Store::UsesByOtherStores() {
  ASSIGN_OR_RETURN(std::string me, StoreId());
  // A store whose disks are in this store's RBD pool (and namespace) made
  // disks that this store lists itself, as they are now: its records of
  // them add nothing but stale entries (docs/rbd.md, "Stores sharing a
  // pool"). Stores that never said where their disks are count as before.
  const std::string pool = disks_->Describe();
  std::map<std::string, bool> same_pool;  // store id -> its disks are in `pool`
  auto in_my_pool = [&](const std::string& store) -> Result<bool> {
    if (!disk_spec_.type->shared_between_stores) return false;
    auto it = same_pool.find(store);
    if (it != same_pool.end()) return it->second;
    std::string where;
    Status s = backend().GetRecord("stores/" + store, &where);
    if (!s.ok() && !s.IsNotFound()) return s;
    return same_pool[store] = s.ok() && where == pool;
  };
  std::unordered_map<ImageId, std::vector<std::string>> out;
  RETURN_IF_ERROR(backend().ListRecords("uses/", [&](std::string_view key) -> Status {
    auto u = ParseUseKey(key);
    if (!u || u->store == me) return Status::OK();
    ASSIGN_OR_RETURN(bool skip, in_my_pool(u->store));
    if (!skip) out[u->image].push_back(u->store + ":" + u->ref.ToString());
    return Status::OK();
  }));
  return out;
}

Status Store::ReconcileUses(bool dry_run) {
  ASSIGN_OR_RETURN(std::string me, StoreId());
  std::map<std::string, ImageId> parent_of;  // "instance/disk" -> parent
  ASSIGN_OR_RETURN(auto disks, disks_->List(""));
  auto infos = disks_->InfoMany(disks);
  for (size_t i = 0; i < disks.size(); ++i) {
    const auto& info = infos[i];
    if (!info.ok()) {
      if (info.status().IsNotFound()) continue;
      return info.status();
    }
    if (info->parent) parent_of.emplace(disks[i].ToString(), *info->parent);
  }
  std::vector<std::string> stale;
  std::set<std::string> recorded;
  RETURN_IF_ERROR(backend().ListRecords("uses/", [&](std::string_view key) {
    auto u = ParseUseKey(key);
    if (!u || u->store != me) return Status::OK();
    auto it = parent_of.find(u->ref.ToString());
    if (it == parent_of.end() || it->second != u->image) {
      stale.emplace_back(key);
    } else {
      recorded.insert(std::string(key));
    }
    return Status::OK();
  }));
  if (dry_run) return Status::OK();
  RETURN_IF_ERROR(RecordDiskBackend());
  for (const auto& key : stale) {
    Status s = backend().RemoveRecord(key, RecordCondition::Any());
    if (!s.ok() && !s.IsNotFound()) return s;
  }
  for (const auto& [name, parent] : parent_of) {
    ASSIGN_OR_RETURN(DiskRef ref, ParseDiskRef(name));
    std::string key = UseKey(parent, me, ref);
    if (!recorded.count(key)) {
      RETURN_IF_ERROR(backend().PutRecord(key, name, RecordCondition::Any()));
    }
  }
  return Status::OK();
}

bool Store::ReadsAreLocal() const { return chunk_spec_.type->reads_are_local; }

Result<ImageGeometry> Store::GetGeometry(const ImageId& id) {
  ASSIGN_OR_RETURN(ImageRecord r, ReadImageRecord(id));
  if (r.chunk_size != 0) return ImageGeometry{r.size, r.chunk_size};
  // A record written before chunk sizes were kept: the manifest knows.
  ASSIGN_OR_RETURN(auto reader, OpenImage(id));
  return ImageGeometry{r.size, reader->manifest().chunk_size};
}

Result<std::shared_ptr<ImageReader>> Store::OpenImage(const ImageId& id) {
  {
    MutexLock lock(readers_mu_);
    auto it = readers_.find(id);
    if (it != readers_.end()) return it->second;
  }
  ASSIGN_OR_RETURN(Manifest m, GetManifest(backend(), id));
  auto reader = std::make_shared<ImageReader>(chunks_, id, std::move(m));
  MutexLock lock(readers_mu_);
  readers_.emplace(id, reader);
  return reader;
}

}  // namespace imgfs
