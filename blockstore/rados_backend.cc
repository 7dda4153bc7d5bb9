#include "blockstore/rados_backend.h"

#include <rados/librados.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "blockstore/backend_util.h"
#include "blockstore/mutex.h"
#include "blockstore/backends.h"

namespace imgfs {
namespace {

constexpr const char* kRecordsObject = "imgfs.records";
constexpr char kValueTag = 'v';
constexpr size_t kFirstGetBytes = 128 * 1024;
constexpr uint64_t kListRecordsBatch = 1000;
constexpr int kCallbackThreads = 4;
// A full pool makes writes fail with ENOSPC (NoSpace) at once instead of
// blocking until the timeout; removals go through even then, so gc can free space.
constexpr int kWriteFlags = LIBRADOS_OPERATION_FULL_TRY;
constexpr int kRemoveFlags = LIBRADOS_OPERATION_FULL_FORCE;

std::string_view KindPrefix(ObjectKind kind) {
  return kind == ObjectKind::kChunk ? "chunk." : "manifest.";
}

std::string ObjectName(ObjectKind kind, std::string_view id) {
  std::string oid(KindPrefix(kind));
  oid += id;
  return oid;
}

// Runs callbacks of finished asynchronous operations off librados's threads.
class CallbackPool {
 public:
  explicit CallbackPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~CallbackPool() {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.NotifyAll();
    for (auto& t : threads_) t.join();
  }
  void Post(std::function<void()> fn) EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.NotifyOne();
  }

 private:
  void Run() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    for (;;) {
      while (!stop_ && queue_.empty()) cv_.Wait(mu_);
      if (queue_.empty()) return;
      auto fn = std::move(queue_.front());
      queue_.pop_front();
      lock.Unlock();
      fn();
      lock.Lock();
    }
  }

  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// A lease on a RADOS advisory lock (cls_lock), renewed by its own thread.
// The OSD drops the lock `lease` after the last renewal it applied; the
// holder counts from when it sent that renewal (earlier), so it never
// believes in a lease the OSD has already dropped. Check() fails once the
// lease could run out within `margin`.
class RadosLease : public BackendLock {
 public:
  RadosLease(rados_ioctx_t io, std::string oid, std::string cookie, LockMode mode,
             std::chrono::seconds lease, std::chrono::steady_clock::time_point sent)
      : io_(io),
        oid_(std::move(oid)),
        cookie_(std::move(cookie)),
        mode_(mode),
        lease_(lease),
        margin_(lease / 2),
        valid_until_(sent + lease) {
    thread_ = std::thread([this] { Renew(); });
  }
  ~RadosLease() override {
    {
      MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.NotifyAll();
    thread_.join();
    (void)rados_unlock(io_, oid_.c_str(), kLockName, cookie_.c_str());
  }

  Status Check() const override EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (lost_.ok() && std::chrono::steady_clock::now() + margin_ >= valid_until_) {
      lost_ =
          Status::Unavailable("the lease on RADOS lock " + oid_ + " could not be renewed in time" +
                              (last_error_.empty() ? "" : " (" + last_error_ + ")"));
    }
    return lost_;
  }

  // Takes the lock once: 0, or -EBUSY while others hold it, or an error.
  static int Take(rados_ioctx_t io, const std::string& oid, const std::string& cookie,
                  LockMode mode, std::chrono::seconds lease, uint8_t flags) {
    timeval dur{static_cast<time_t>(lease.count()), 0};
    static const std::string desc = Describe();
    if (mode == LockMode::kShared) {
      return rados_lock_shared(io, oid.c_str(), kLockName, cookie.c_str(), kLockTag, desc.c_str(),
                               &dur, flags);
    }
    return rados_lock_exclusive(io, oid.c_str(), kLockName, cookie.c_str(), desc.c_str(), &dur,
                                flags);
  }

  static constexpr const char* kLockName = "imgfs";
  static constexpr const char* kLockTag = "imgfs";

 private:
  static std::string Describe() {
    char host[256] = "?";
    (void)::gethostname(host, sizeof host - 1);
    return std::string("imgfs on ") + host + " pid " + std::to_string(::getpid());
  }

  void Renew() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    auto next = std::chrono::steady_clock::now() + lease_ / 4;
    while (!stop_) {
      while (!stop_ && std::chrono::steady_clock::now() < next) cv_.WaitUntil(mu_, next);
      if (stop_ || !lost_.ok()) return;
      lock.Unlock();
      auto sent = std::chrono::steady_clock::now();
      int r = Take(io_, oid_, cookie_, mode_, lease_, LIBRADOS_LOCK_FLAG_MUST_RENEW);
      lock.Lock();
      if (r == 0) {
        valid_until_ = sent + lease_;
        last_error_.clear();
        next = std::chrono::steady_clock::now() + lease_ / 4;
      } else if (r == -ENOENT || r == -EBUSY) {
        // Gone: it ran out, or was broken; someone else may hold it now.
        lost_ = Status::Unavailable("lost RADOS lock " + oid_ + " (its lease ran out)");
        return;
      } else {
        last_error_ = Status::FromErrno(r, "renewing").message();
        next = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      }
    }
  }

  const rados_ioctx_t io_;
  const std::string oid_;
  const std::string cookie_;
  const LockMode mode_;
  const std::chrono::seconds lease_;
  const std::chrono::steady_clock::duration margin_;

  mutable Mutex mu_;
  CondVar cv_;
  std::chrono::steady_clock::time_point valid_until_ GUARDED_BY(mu_);
  mutable Status lost_ GUARDED_BY(mu_);
  std::string last_error_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

class RadosBackend final : public ChunkBackend {
 public:
  RadosBackend(rados_t cluster, rados_ioctx_t io, std::string pool, std::string ns,
               std::string client, uint64_t max_write_bytes, std::chrono::seconds lease)
      : lease_(lease),
        cluster_(cluster),
        io_(io),
        pool_(std::move(pool)),
        ns_(std::move(ns)),
        client_(std::move(client)),
        max_write_bytes_(max_write_bytes),
        callbacks_(kCallbackThreads) {}

  ~RadosBackend() override {
    {
      MutexLock lock(inflight_mu_);
      while (inflight_ != 0) inflight_cv_.Wait(inflight_mu_);
    }
    rados_ioctx_destroy(io_);
    rados_shutdown(cluster_);
  }

  std::string Describe() const override {
    return "rados:" + pool_ + (ns_.empty() ? "" : "/" + ns_);
  }

  Status PutIfAbsent(ObjectKind kind, std::string_view id, ByteView data) override {
    RETURN_IF_ERROR(ValidateObjectId(id));
    RETURN_IF_ERROR(CheckWriteSize(data.size()));
    std::string oid = ObjectName(kind, id);
    rados_write_op_t op = MakePutOp(data);
    int r = rados_write_op_operate(op, io_, oid.c_str(), nullptr, kWriteFlags);
    rados_release_write_op(op);
    return PutStatus(r, oid);
  }

  void PutIfAbsentAsync(ObjectKind kind, std::string_view id, ByteView data,
                        std::function<void(Status)> done) override {
    if (Status s = ValidateObjectId(id); !s.ok()) return done(std::move(s));
    if (Status s = CheckWriteSize(data.size()); !s.ok()) return done(std::move(s));
    auto* aio = new AioPut{this, ObjectName(kind, id), MakePutOp(data), nullptr, std::move(done)};
    BeginAio();
    rados_aio_create_completion2(aio, &RadosBackend::OnPutComplete, &aio->comp);
    int r =
        rados_aio_write_op_operate(aio->op, io_, aio->comp, aio->oid.c_str(), nullptr, kWriteFlags);
    if (r < 0) FinishPut(aio, r);
  }

  Status Get(ObjectKind kind, std::string_view id, Bytes* out) override {
    RETURN_IF_ERROR(ValidateObjectId(id));
    std::string oid = ObjectName(kind, id);
    out->resize(std::max(out->capacity(), kFirstGetBytes));
    uint64_t size = 0;
    size_t got = 0;
    int stat_rval = 0, read_rval = 0;
    rados_read_op_t op = rados_create_read_op();
    rados_read_op_stat(op, &size, nullptr, &stat_rval);
    rados_read_op_read(op, 0, out->size(), reinterpret_cast<char*>(out->data()), &got, &read_rval);
    int r = rados_read_op_operate(op, io_, oid.c_str(), 0);
    rados_release_read_op(op);
    if (r >= 0) r = stat_rval < 0 ? stat_rval : read_rval;
    if (r < 0) return Error(r, "read " + oid);
    out->resize(size);
    while (got < size) {
      int n =
          rados_read(io_, oid.c_str(), reinterpret_cast<char*>(out->data() + got), size - got, got);
      if (n < 0) return Error(n, "read " + oid);
      if (n == 0) return Status::Corruption(Where("object " + oid + " shrank while being read"));
      got += static_cast<size_t>(n);
    }
    return Status::OK();
  }

  Result<size_t> Read(ObjectKind kind, std::string_view id, MutableByteView buf) override {
    RETURN_IF_ERROR(ValidateObjectId(id));
    std::string oid = ObjectName(kind, id);
    ReadState st;
    st.buf = buf.data();
    st.buf_size = buf.size();
    rados_read_op_t op = MakeReadOp(buf, &st);
    int r = rados_read_op_operate(op, io_, oid.c_str(), 0);
    rados_release_read_op(op);
    return ReadResult(r, st, oid);
  }

  void ReadAsync(ObjectKind kind, std::string_view id, MutableByteView buf,
                 std::function<void(Result<size_t>)> done) override {
    if (Status s = ValidateObjectId(id); !s.ok()) return done(std::move(s));
    auto* aio = new AioRead{this, ObjectName(kind, id), nullptr, nullptr, {}, std::move(done)};
    aio->st.buf = buf.data();
    aio->st.buf_size = buf.size();
    aio->op = MakeReadOp(buf, &aio->st);
    BeginAio();
    rados_aio_create_completion2(aio, &RadosBackend::OnReadComplete, &aio->comp);
    int r = rados_aio_read_op_operate(aio->op, io_, aio->comp, aio->oid.c_str(), 0);
    if (r < 0) FinishRead(aio, r);
  }

  Result<bool> Exists(ObjectKind kind, std::string_view id) override {
    RETURN_IF_ERROR(ValidateObjectId(id));
    std::string oid = ObjectName(kind, id);
    uint64_t size = 0;
    int r = rados_stat(io_, oid.c_str(), &size, nullptr);
    if (r == -ENOENT) return false;
    if (r < 0) return Error(r, "stat " + oid);
    return true;
  }

  Status Remove(ObjectKind kind, std::string_view id) override {
    RETURN_IF_ERROR(ValidateObjectId(id));
    std::string oid = ObjectName(kind, id);
    rados_write_op_t op = rados_create_write_op();
    rados_write_op_remove(op);
    int r = rados_write_op_operate(op, io_, oid.c_str(), nullptr, kRemoveFlags);
    rados_release_write_op(op);
    if (r < 0) return Error(r, "remove " + oid);
    return Status::OK();
  }

  Result<uint64_t> Size(ObjectKind kind, std::string_view id) override {
    RETURN_IF_ERROR(ValidateObjectId(id));
    std::string oid = ObjectName(kind, id);
    uint64_t size = 0;
    int r = rados_stat(io_, oid.c_str(), &size, nullptr);
    if (r < 0) return Error(r, "stat " + oid);
    return size;
  }

  // A stat, then the removal, both asynchronous: two round trips that
  // overlap those of the other removals in flight.
  void RemoveAsync(ObjectKind kind, std::string_view id,
                   std::function<void(Result<uint64_t>)> done) override {
    if (Status s = ValidateObjectId(id); !s.ok()) return done(std::move(s));
    auto* aio = new AioRemove{this, ObjectName(kind, id), 0, 0, nullptr, nullptr, std::move(done)};
    BeginAio();
    rados_aio_create_completion2(aio, &RadosBackend::OnRemoveStatComplete, &aio->comp);
    int r = rados_aio_stat(io_, aio->oid.c_str(), aio->comp, &aio->size, &aio->mtime);
    if (r < 0) FinishRemove(aio, r, /*stat=*/true);
  }

  Status List(ObjectKind kind, const std::function<Status(std::string_view id)>& fn) override {
    rados_list_ctx_t ctx;
    int r = rados_nobjects_list_open(io_, &ctx);
    if (r < 0) return Error(r, "list objects");
    std::string_view prefix = KindPrefix(kind);
    Status status;
    for (;;) {
      const char* entry = nullptr;
      size_t entry_size = 0;
      r = rados_nobjects_list_next2(ctx, &entry, nullptr, nullptr, &entry_size, nullptr, nullptr);
      if (r == -ENOENT) break;
      if (r < 0) {
        status = Error(r, "list objects");
        break;
      }
      std::string_view name(entry, entry_size);
      if (!name.starts_with(prefix)) continue;
      std::string_view id = name.substr(prefix.size());
      if (!ValidateObjectId(id).ok()) continue;  // not one of ours
      status = fn(id);
      if (!status.ok()) break;
    }
    rados_nobjects_list_close(ctx);
    return status;
  }

  Status GetRecord(std::string_view key, std::string* value) override {
    RETURN_IF_ERROR(CheckKey(key));
    const char* keys[] = {key.data()};
    size_t key_lens[] = {key.size()};
    rados_omap_iter_t iter = nullptr;
    int rval = 0;
    rados_read_op_t op = rados_create_read_op();
    rados_read_op_omap_get_vals_by_keys2(op, keys, 1, key_lens, &iter, &rval);
    int r = rados_read_op_operate(op, io_, kRecordsObject, 0);
    rados_release_read_op(op);
    if (r >= 0) r = rval;
    if (r == -ENOENT) return RecordNotFound(key);
    if (r < 0) return Error(r, "read record " + std::string(key));
    char *k = nullptr, *v = nullptr;
    size_t klen = 0, vlen = 0;
    r = rados_omap_get_next2(iter, &k, &v, &klen, &vlen);
    Status status;
    if (r < 0) {
      status = Error(r, "read record " + std::string(key));
    } else if (k == nullptr) {
      status = RecordNotFound(key);
    } else if (vlen == 0 || v[0] != kValueTag) {
      status = Status::Corruption(Where("record " + std::string(key) + " has a malformed value"));
    } else {
      value->assign(v + 1, vlen - 1);
    }
    rados_omap_get_end(iter);
    return status;
  }

  Status PutRecord(std::string_view key, std::string_view value,
                   const RecordCondition& cond) override {
    RETURN_IF_ERROR(CheckKey(key));
    std::string stored(1, kValueTag);
    stored += value;
    std::string expected = Tagged(cond);
    auto build = [&](rados_write_op_t op) {
      AddCondition(op, key, cond, expected);
      const char* keys[] = {key.data()};
      const char* vals[] = {stored.data()};
      size_t key_lens[] = {key.size()};
      size_t val_lens[] = {stored.size()};
      rados_write_op_omap_set2(op, keys, vals, key_lens, val_lens, 1);
    };
    int r = OperateOnRecords(build, cond.mode != RecordCondition::kAny);
    if (r == -ECANCELED) return ConditionFailed(key, cond);
    if (r < 0) return Error(r, "write record " + std::string(key));
    return Status::OK();
  }

  Status RemoveRecord(std::string_view key, const RecordCondition& cond) override {
    RETURN_IF_ERROR(CheckKey(key));
    if (cond.mode == RecordCondition::kAbsent) {
      return Status::InvalidArgument(
          Where("removing record " + std::string(key) + " on condition that it is absent"));
    }
    std::string expected = Tagged(cond);
    auto build = [&](rados_write_op_t op) {
      if (cond.mode == RecordCondition::kAny) {
        // Present: its value compares greater than the empty value.
        rados_write_op_omap_cmp2(op, key.data(), LIBRADOS_CMPXATTR_OP_GT, "", key.size(), 0,
                                 nullptr);
      } else {
        AddCondition(op, key, cond, expected);
      }
      const char* keys[] = {key.data()};
      size_t key_lens[] = {key.size()};
      rados_write_op_omap_rm_keys2(op, keys, key_lens, 1);
    };
    int r = OperateOnRecords(build, /*create_if_missing=*/false, kRemoveFlags);
    if (r == -ENOENT || (r == -ECANCELED && cond.mode == RecordCondition::kAny)) {
      return RecordNotFound(key);
    }
    if (r == -ECANCELED) {
      // The op changed nothing; tell "gone" from "changed" for the caller.
      std::string current;
      if (GetRecord(key, &current).IsNotFound()) return RecordNotFound(key);
      return ConditionFailed(key, cond);
    }
    if (r < 0) return Error(r, "remove record " + std::string(key));
    return Status::OK();
  }

  Status ListRecords(std::string_view prefix,
                     const std::function<Status(std::string_view key)>& fn) override {
    return WalkRecords(prefix, [&](std::string_view key, std::string_view) { return fn(key); });
  }

  // The values come with the listing: a thousand records a round trip.
  Status ListRecordValues(
      std::string_view prefix,
      const std::function<Status(std::string_view key, std::string_view value)>& fn) override {
    return WalkRecords(prefix, [&](std::string_view key, std::string_view value) {
      if (value.empty() || value[0] != kValueTag) {
        return Status::Corruption(Where("record " + std::string(key) + " has a malformed value"));
      }
      return fn(key, value.substr(1));
    });
  }

  // A lease on the cls_lock "imgfs" of object imgfs.lock.<name>, with a
  // cookie per holder; waits by polling (cls_lock has no queue).
  Result<std::unique_ptr<BackendLock>> Lock(std::string_view name, LockMode mode,
                                            const std::function<void()>& waiting) override {
    if (name.empty() || name.find_first_not_of("abcdefghijklmnopqrstuvwxyz") != name.npos) {
      return Status::InvalidArgument("invalid lock name '" + std::string(name) + "'");
    }
    const std::string oid = "imgfs.lock." + std::string(name);
    const std::string cookie = RandomCookie();
    bool waited = false;
    auto pause = std::chrono::milliseconds(100);
    for (;;) {
      auto sent = std::chrono::steady_clock::now();
      int r = RadosLease::Take(io_, oid, cookie, mode, lease_, 0);
      if (r == 0) {
        return std::unique_ptr<BackendLock>(
            std::make_unique<RadosLease>(io_, oid, cookie, mode, lease_, sent));
      }
      if (r != -EBUSY) return Error(r, "lock " + oid);
      if (!waited && waiting) waiting();
      waited = true;
      std::this_thread::sleep_for(pause);
      pause = std::min<std::chrono::milliseconds>(pause * 2, std::chrono::seconds(1));
    }
  }

  Result<SpaceInfo> Space() override {
    if (auto from_df = SpaceFromDf(); from_df.ok()) return from_df;
    rados_cluster_stat_t cs{};
    int r = rados_cluster_stat(cluster_, &cs);
    if (r < 0) return Error(r, "cluster stat");
    rados_pool_stat_t ps{};
    r = rados_ioctx_pool_stat(io_, &ps);
    if (r < 0) return Error(r, "pool stat");
    SpaceInfo info;
    info.capacity_bytes = cs.kb * 1024;
    info.available_bytes = cs.kb_avail * 1024;
    info.used_bytes = ps.num_bytes;
    return info;
  }

 private:
  struct ReadState {
    uint8_t* buf = nullptr;
    size_t buf_size = 0;
    uint64_t size = 0;
    size_t got = 0;
    int stat_rval = 0;
    int read_rval = 0;
  };
  struct AioRead {
    RadosBackend* self;
    std::string oid;
    rados_read_op_t op;
    rados_completion_t comp;
    ReadState st;
    std::function<void(Result<size_t>)> done;
  };
  struct AioPut {
    RadosBackend* self;
    std::string oid;
    rados_write_op_t op;
    rados_completion_t comp;
    std::function<void(Status)> done;
  };
  struct AioRemove {
    RadosBackend* self;
    std::string oid;
    uint64_t size;
    time_t mtime;
    rados_completion_t comp;
    rados_write_op_t op;  // the removal, once the stat is done
    std::function<void(Result<uint64_t>)> done;
  };

  // Calls fn(key, raw omap value) for each record under `prefix`, a batch of
  // kListRecordsBatch a round trip.
  Status WalkRecords(
      std::string_view prefix,
      const std::function<Status(std::string_view key, std::string_view value)>& fn) {
    std::string filter(prefix);
    std::string after;
    for (;;) {
      std::vector<std::pair<std::string, std::string>> batch;
      unsigned char more = 0;
      int rval = 0;
      rados_omap_iter_t iter = nullptr;
      rados_read_op_t op = rados_create_read_op();
      rados_read_op_omap_get_vals2(op, after.c_str(), filter.c_str(), kListRecordsBatch, &iter,
                                   &more, &rval);
      int r = rados_read_op_operate(op, io_, kRecordsObject, 0);
      rados_release_read_op(op);
      if (r >= 0) r = rval;
      if (r == -ENOENT) return Status::OK();
      if (r < 0) return Error(r, "list records");
      for (;;) {
        char *k = nullptr, *v = nullptr;
        size_t klen = 0, vlen = 0;
        r = rados_omap_get_next2(iter, &k, &v, &klen, &vlen);
        if (r < 0 || k == nullptr) break;
        batch.emplace_back(std::string(k, klen), std::string(v ? v : "", v ? vlen : 0));
      }
      rados_omap_get_end(iter);
      if (r < 0) return Error(r, "list records");
      for (const auto& [k, v] : batch) RETURN_IF_ERROR(fn(k, v));
      if (!more || batch.empty()) return Status::OK();
      after = batch.back().first;
    }
  }

  std::string Where(std::string_view what) const {
    return Describe() + " (client." + client_ + "): " + std::string(what);
  }
  Status Error(int r, std::string_view what) const { return Status::FromErrno(r, Where(what)); }
  Status RecordNotFound(std::string_view key) const {
    return Status::NotFound(Where("no record " + std::string(key)));
  }
  Status ConditionFailed(std::string_view key, const RecordCondition& cond) const {
    if (cond.mode == RecordCondition::kAbsent) {
      return Status::AlreadyExists(Where("record " + std::string(key) + " exists"));
    }
    return Status::Busy(Where("record " + std::string(key) + " changed concurrently"));
  }
  // One object is written by one op, which the OSDs refuse above this size.
  Status CheckWriteSize(size_t size) const {
    if (size <= max_write_bytes_) return Status::OK();
    return Status::NotSupported(Where("an object of " + std::to_string(size) +
                                      " bytes is larger than the cluster's osd_max_write_size (" +
                                      std::to_string(max_write_bytes_ >> 20) + " MiB)"));
  }
  static Status CheckKey(std::string_view key) { return ValidateRecordKey(key); }

  static std::string Tagged(const RecordCondition& cond) {
    if (cond.mode != RecordCondition::kEquals) return {};
    return std::string(1, kValueTag) + cond.expected;
  }
  static void AddCondition(rados_write_op_t op, std::string_view key, const RecordCondition& cond,
                           const std::string& tagged_expected) {
    if (cond.mode == RecordCondition::kAny) return;
    // kAbsent compares with the empty value, which a missing key equals.
    rados_write_op_omap_cmp2(op, key.data(), LIBRADOS_CMPXATTR_OP_EQ, tagged_expected.data(),
                             key.size(), tagged_expected.size(), nullptr);
  }

  // Runs the write op `build` makes on the records object. omap_cmp needs the
  // object to exist: when it does not (a fresh pool), creates it and retries.
  template <typename Build>
  int OperateOnRecords(const Build& build, bool create_if_missing, int flags = kWriteFlags) {
    for (int attempt = 0;; ++attempt) {
      rados_write_op_t op = rados_create_write_op();
      build(op);
      int r = rados_write_op_operate(op, io_, kRecordsObject, nullptr, flags);
      rados_release_write_op(op);
      if (r != -ENOENT || !create_if_missing || attempt > 0) return r;
      rados_write_op_t create = rados_create_write_op();
      rados_write_op_create(create, LIBRADOS_CREATE_IDEMPOTENT, nullptr);
      r = rados_write_op_operate(create, io_, kRecordsObject, nullptr, kWriteFlags);
      rados_release_write_op(create);
      if (r < 0) return r;
    }
  }

  static rados_write_op_t MakePutOp(ByteView data) {
    rados_write_op_t op = rados_create_write_op();
    rados_write_op_create(op, LIBRADOS_CREATE_EXCLUSIVE, nullptr);
    rados_write_op_write_full(op, reinterpret_cast<const char*>(data.data()), data.size());
    return op;
  }
  Status PutStatus(int r, const std::string& oid) const {
    if (r == -EEXIST) return Status::AlreadyExists(Where(oid + " exists"));
    if (r < 0) return Error(r, "write " + oid);
    return Status::OK();
  }

  static rados_read_op_t MakeReadOp(MutableByteView buf, ReadState* st) {
    rados_read_op_t op = rados_create_read_op();
    rados_read_op_stat(op, &st->size, nullptr, &st->stat_rval);
    rados_read_op_read(op, 0, buf.size(), reinterpret_cast<char*>(buf.data()), &st->got,
                       &st->read_rval);
    return op;
  }
  Result<size_t> ReadResult(int r, const ReadState& st, const std::string& oid) const {
    if (r >= 0) r = st.stat_rval < 0 ? st.stat_rval : st.read_rval;
    if (r < 0) return Error(r, "read " + oid);
    if (st.size > st.buf_size) {
      std::memset(st.buf, 0, st.buf_size);  // no part of an oversized object leaks out
      return Status::InvalidArgument(Where("read " + oid + ": object of " +
                                           std::to_string(st.size) + " bytes, buffer of " +
                                           std::to_string(st.buf_size)));
    }
    if (st.got != st.size) {
      return Status::IOError(Where("read " + oid + ": short read of " + std::to_string(st.got) +
                                   " of " + std::to_string(st.size) + " bytes"));
    }
    return st.got;
  }

  void BeginAio() EXCLUDES(inflight_mu_) {
    MutexLock lock(inflight_mu_);
    ++inflight_;
  }
  void EndAio() EXCLUDES(inflight_mu_) {
    MutexLock lock(inflight_mu_);
    if (--inflight_ == 0) inflight_cv_.NotifyAll();
  }

  static void OnReadComplete(rados_completion_t comp, void* arg) {
    auto* aio = static_cast<AioRead*>(arg);
    aio->self->FinishRead(aio, rados_aio_get_return_value(comp));
  }
  static void OnPutComplete(rados_completion_t comp, void* arg) {
    auto* aio = static_cast<AioPut*>(arg);
    aio->self->FinishPut(aio, rados_aio_get_return_value(comp));
  }

  void FinishRead(AioRead* aio, int r) {
    callbacks_.Post([this, aio, r] {
      Result<size_t> result = ReadResult(r, aio->st, aio->oid);
      rados_release_read_op(aio->op);
      if (aio->comp) rados_aio_release(aio->comp);
      auto done = std::move(aio->done);
      delete aio;
      done(std::move(result));
      EndAio();
    });
  }
  static void OnRemoveStatComplete(rados_completion_t comp, void* arg) {
    auto* aio = static_cast<AioRemove*>(arg);
    aio->self->FinishRemove(aio, rados_aio_get_return_value(comp), /*stat=*/true);
  }
  static void OnRemoveComplete(rados_completion_t comp, void* arg) {
    auto* aio = static_cast<AioRemove*>(arg);
    aio->self->FinishRemove(aio, rados_aio_get_return_value(comp), /*stat=*/false);
  }
  // After the stat (stat = true) the removal is sent, from a callback
  // thread (never from librados's own); after the removal, `done` runs.
  void FinishRemove(AioRemove* aio, int r, bool stat) {
    callbacks_.Post([this, aio, r, stat] {
      if (aio->comp) rados_aio_release(aio->comp);
      aio->comp = nullptr;
      if (stat && r >= 0) {
        aio->op = rados_create_write_op();
        rados_write_op_remove(aio->op);
        rados_aio_create_completion2(aio, &RadosBackend::OnRemoveComplete, &aio->comp);
        int rr = rados_aio_write_op_operate(aio->op, io_, aio->comp, aio->oid.c_str(), nullptr,
                                            kRemoveFlags);
        if (rr >= 0) return;
        if (aio->comp) rados_aio_release(aio->comp);
        aio->comp = nullptr;
        return Complete(aio, Error(rr, "remove " + aio->oid));
      }
      if (r < 0) return Complete(aio, Error(r, (stat ? "stat " : "remove ") + aio->oid));
      Complete(aio, aio->size);
    });
  }
  void Complete(AioRemove* aio, Result<uint64_t> result) {
    if (aio->op) rados_release_write_op(aio->op);
    auto done = std::move(aio->done);
    delete aio;
    done(std::move(result));
    EndAio();
  }

  void FinishPut(AioPut* aio, int r) {
    callbacks_.Post([this, aio, r] {
      Status status = PutStatus(r, aio->oid);
      rados_release_write_op(aio->op);
      if (aio->comp) rados_aio_release(aio->comp);
      auto done = std::move(aio->done);
      delete aio;
      done(std::move(status));
      EndAio();
    });
  }

  // Pool usage and what is left for it, from the monitors' "df" (which accounts
  // for replication), in bytes.
  Result<SpaceInfo> SpaceFromDf() {
    const char* cmd[] = {R"({"prefix": "df", "format": "json"})"};
    char *out = nullptr, *outs = nullptr;
    size_t out_len = 0, outs_len = 0;
    int r = rados_mon_command(cluster_, cmd, 1, nullptr, 0, &out, &out_len, &outs, &outs_len);
    std::string text = out ? std::string(out, out_len) : std::string();
    if (out) rados_buffer_free(out);
    if (outs) rados_buffer_free(outs);
    if (r < 0) return Error(r, "df");
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("pools")) return Status::IOError(Where("df: bad reply"));
    for (const auto& p : j["pools"]) {
      if (!p.is_object() || p.value("name", "") != pool_ || !p.contains("stats")) continue;
      const auto& s = p["stats"];
      SpaceInfo info;
      info.used_bytes = s.value("stored", uint64_t{0});
      info.available_bytes = s.value("max_avail", uint64_t{0});
      info.capacity_bytes = info.used_bytes + info.available_bytes;
      return info;
    }
    return Status::NotFound(Where("df: pool not listed"));
  }

  static std::string RandomCookie() {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
    return buf;
  }

  const std::chrono::seconds lease_;  // lock lease: 3 x the op timeout
  rados_t cluster_;                   // constant after construction
  rados_ioctx_t io_;                  // constant after construction
  const std::string pool_;
  const std::string ns_;
  const std::string client_;
  const uint64_t max_write_bytes_;

  Mutex inflight_mu_;
  CondVar inflight_cv_;
  uint64_t inflight_ GUARDED_BY(inflight_mu_) = 0;  // async calls whose done has not returned

  CallbackPool callbacks_;  // last: its threads stop before the members above go
};

}  // namespace

Result<std::shared_ptr<ChunkBackend>> CreateRadosBackend(std::string_view pool_spec,
                                                         const CephOptions& ceph) {
  std::string pool(pool_spec), ns;
  if (auto slash = pool.find('/'); slash != std::string::npos) {
    ns = pool.substr(slash + 1);
    pool.resize(slash);
    if (ns.empty() || ns.find('/') != std::string::npos) {
      return Status::InvalidArgument(
          "rados chunk backend: want rados:POOL[/NAMESPACE], got rados:" + std::string(pool_spec));
    }
  }
  if (pool.empty()) {
    return Status::InvalidArgument("rados chunk backend: want rados:POOL[/NAMESPACE], got rados:" +
                                   std::string(pool_spec));
  }
  std::string client = ceph.client_id.empty() ? "admin" : ceph.client_id;
  if (client.starts_with("client.")) client.erase(0, 7);
  std::string where = "Ceph cluster (conf " +
                      (ceph.conf_file.empty() ? "default" : ceph.conf_file) + ", client." + client +
                      ")";

  rados_t cluster = nullptr;
  int r = rados_create(&cluster, client.c_str());
  if (r < 0) return Status::FromErrno(r, "create " + where + " handle");
  auto fail = [&](int err, const std::string& what) {
    rados_shutdown(cluster);
    return Status::FromErrno(err, what);
  };
  r = rados_conf_read_file(cluster, ceph.conf_file.empty() ? nullptr : ceph.conf_file.c_str());
  if (r < 0 && !ceph.conf_file.empty()) return fail(r, "read Ceph configuration " + ceph.conf_file);
  rados_conf_parse_env(cluster, nullptr);  // CEPH_ARGS, as the ceph tools do
  char mon_host[256] = "";
  if (r < 0 && rados_conf_get(cluster, "mon_host", mon_host, sizeof(mon_host)) == 0 &&
      mon_host[0] == '\0') {
    rados_shutdown(cluster);
    return Status::InvalidArgument(
        "no Ceph configuration found ($CEPH_CONF, /etc/ceph/ceph.conf): give --ceph-conf FILE");
  }
  std::string timeout = std::to_string(ceph.timeout_seconds > 0 ? ceph.timeout_seconds : 20);
  std::vector<std::pair<const char*, std::string>> settings = {
      {"client_mount_timeout", timeout}, {"rados_osd_op_timeout", timeout},
      {"rados_mon_op_timeout", timeout}, {"log_to_stderr", "false"},
      {"err_to_stderr", "false"},
  };
  if (!ceph.keyring.empty()) settings.emplace_back("keyring", ceph.keyring);
  for (const auto& [name, value] : settings) {
    r = rados_conf_set(cluster, name, value.c_str());
    if (r < 0) return fail(r, std::string("set Ceph option ") + name);
  }
  r = rados_connect(cluster);
  if (r == -ETIMEDOUT)
    return fail(r, "connect to " + where + ": no answer within " + timeout + "s");
  if (r < 0) return fail(r, "connect to " + where);

  rados_ioctx_t io = nullptr;
  r = rados_ioctx_create(cluster, pool.c_str(), &io);
  if (r == -ENOENT) {
    rados_shutdown(cluster);
    return Status::NotFound("RADOS pool '" + pool + "' does not exist in " + where);
  }
  if (r < 0) return fail(r, "open RADOS pool '" + pool + "' in " + where);
  rados_ioctx_set_namespace(io, ns.c_str());

  // Proves the key may use the pool now, rather than at the first import.
  uint64_t size = 0;
  r = rados_stat(io, kRecordsObject, &size, nullptr);
  if (r < 0 && r != -ENOENT) {
    rados_ioctx_destroy(io);
    std::string what = "access RADOS pool '" + pool + "' in " + where;
    if (r == -EPERM || r == -EACCES) {
      what = "client." + client + " may not access RADOS pool '" + pool +
             "' (check the key's osd caps)";
    } else if (r == -ETIMEDOUT) {
      what = "RADOS pool '" + pool + "' in " + where + " gave no answer within " + timeout +
             "s (are its OSDs up?)";
    }
    return fail(r, what);
  }
  char max_write_mb[32] = "90";
  rados_conf_get(cluster, "osd_max_write_size", max_write_mb, sizeof(max_write_mb));
  uint64_t max_write_bytes = std::strtoull(max_write_mb, nullptr, 10) << 20;
  // A lease outlives any single operation that relies on it by more than
  // the op timeout (BackendLock::Check's margin is half the lease).
  std::chrono::seconds lease(3 * (ceph.timeout_seconds > 0 ? ceph.timeout_seconds : 20));
  return std::shared_ptr<ChunkBackend>(std::make_shared<RadosBackend>(
      cluster, io, std::move(pool), std::move(ns), client, max_write_bytes, lease));
}

ChunkBackendType RadosChunkBackendType() {
  ChunkBackendType t;
  t.name = "rados";
  t.usage = "rados:POOL[/NAMESPACE]";
  t.argument = SpecArgument::kRequired;
  t.create = [](const BackendContext& ctx, std::string_view arg) {
    return CreateRadosBackend(arg, ctx.ceph ? *ctx.ceph : CephOptions{});
  };
  return t;
}

}  // namespace imgfs
