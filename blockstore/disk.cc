#include "blockstore/disk.h"

#include <cstring>

namespace imgfs {

size_t ReadBuffers::size() const {
  size_t n = 0;
  for (ByteView p : pieces) n += p.size();
  return n;
}

void ReadBuffers::CopyTo(MutableByteView out) const {
  for (ByteView p : pieces) {
    std::memcpy(out.data(), p.data(), p.size());
    out = out.subspan(p.size());
  }
}

void Disk::ReadBuffersAsync(uint64_t offset, size_t length, ReadBuffersCallback done) {
  std::shared_ptr<uint8_t[]> buf(new uint8_t[length]);
  ReadAsync(offset, MutableByteView(buf.get(), length),
            [buf, length, done = std::move(done)](Status st) {
              if (!st.ok()) return done(std::move(st));
              done(ReadBuffers{{ByteView(buf.get(), length)}, buf});
            });
}

void Disk::ReadAsync(uint64_t offset, MutableByteView buf, Callback done) {
  done(Read(offset, buf));
}

void Disk::WriteAsync(uint64_t offset, ByteView buf, Callback done) { done(Write(offset, buf)); }

void Disk::DiscardAsync(uint64_t offset, uint64_t length, Callback done) {
  done(Discard(offset, length));
}

void Disk::FlushAsync(Callback done) { done(Flush()); }

std::vector<Result<DiskInfo>> DiskBackend::InfoMany(const std::vector<DiskRef>& refs) {
  std::vector<Result<DiskInfo>> out;
  out.reserve(refs.size());
  for (const DiskRef& ref : refs) out.push_back(Info(ref));
  return out;
}

}  // namespace imgfs
