#include "fusefs/takeover.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "blockstore/file_util.h"

namespace imgfs::fusefs {

namespace {

using nlohmann::json;

std::string ToHex(const std::string& bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

Result<std::string> FromHex(const std::string& hex) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (hex.size() % 2) return Status::Corruption("odd hex length");
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Status::Corruption("bad hex digit");
    out[i] = static_cast<char>(hi << 4 | lo);
  }
  return out;
}

// Applies one line of the log to `st`.
Status Apply(const json& j, TakeoverState* st) {
  FsState& fs = st->fs;
  if (j.contains("init")) {
    ASSIGN_OR_RETURN(std::string req, FromHex(j.at("init").get<std::string>()));
    ASSIGN_OR_RETURN(std::string reply, FromHex(j.at("reply").get<std::string>()));
    st->init = InitRecord{std::move(req), std::move(reply)};
  } else if (j.contains("client")) {
    auto id = j.at("client").get<std::string>();
    if (std::find(st->clients.begin(), st->clients.end(), id) == st->clients.end()) {
      st->clients.push_back(id);
    }
  } else if (j.contains("bind")) {
    uint64_t ino = j.at("ino").get<uint64_t>();
    fs.inos[j.at("bind").get<std::string>()] = ino;
    fs.next_ino = std::max(fs.next_ino, ino + 1);
  } else if (j.contains("unbind")) {
    fs.inos.erase(j.at("unbind").get<std::string>());
  } else if (j.contains("open")) {
    uint64_t fh = j.at("open").get<uint64_t>();
    fs.opens[fh] = FsState::Open{j.at("ino").get<uint64_t>(), j.at("flags").get<int>()};
    fs.next_fh = std::max(fs.next_fh, fh + 1);
  } else if (j.contains("release")) {
    fs.opens.erase(j.at("release").get<uint64_t>());
  } else if (j.contains("opendir")) {
    uint64_t dh = j.at("opendir").get<uint64_t>();
    fs.dirs[dh] = j.at("ino").get<uint64_t>();
    fs.next_fh = std::max(fs.next_fh, dh + 1);
  } else if (j.contains("releasedir")) {
    fs.dirs.erase(j.at("releasedir").get<uint64_t>());
  } else if (j.contains("next_ino")) {
    fs.next_ino = std::max(fs.next_ino, j.at("next_ino").get<uint64_t>());
    fs.next_fh = std::max(fs.next_fh, j.at("next_fh").get<uint64_t>());
  } else {
    return Status::Corruption("unknown record");
  }
  return Status::OK();
}

}  // namespace

Result<TakeoverState> LoadState(int fd) {
  std::string text;
  char buf[65536];
  for (off_t off = 0;;) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "reading the mount's state");
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    off += n;
  }
  TakeoverState st;
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    ++line_no;
    if (end == std::string::npos) {
      spdlog::warn("mount state: ignoring a last line cut short ({} bytes)", text.size() - pos);
      break;
    }
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.empty()) continue;
    try {
      Status s = Apply(json::parse(line), &st);
      if (!s.ok())
        return Status::Corruption("mount state line " + std::to_string(line_no) + ": " +
                                  s.message());
    } catch (const std::exception& e) {
      return Status::Corruption("mount state line " + std::to_string(line_no) + ": " + e.what());
    }
  }
  return st;
}

Status WriteState(int fd, const TakeoverState& st) {
  std::string out;
  auto add = [&out](const json& j) { out += j.dump() + "\n"; };
  if (st.init) add({{"init", ToHex(st.init->request)}, {"reply", ToHex(st.init->reply)}});
  for (const auto& c : st.clients) add({{"client", c}});
  for (const auto& [key, ino] : st.fs.inos) add({{"bind", key}, {"ino", ino}});
  for (const auto& [fh, o] : st.fs.opens) add({{"open", fh}, {"ino", o.ino}, {"flags", o.flags}});
  for (const auto& [dh, ino] : st.fs.dirs) add({{"opendir", dh}, {"ino", ino}});
  add({{"next_ino", st.fs.next_ino}, {"next_fh", st.fs.next_fh}});
  return WriteFull(fd, ByteView(reinterpret_cast<const uint8_t*>(out.data()), out.size()),
                   std::nullopt, "writing the mount's state");
}

Status StateLog::Append(const std::string& line) {
  MutexLock lock(mu_);
  std::string l = line + "\n";
  Status s = WriteFull(fd_, ByteView(reinterpret_cast<const uint8_t*>(l.data()), l.size()),
                       std::nullopt, "recording the mount's state");
  if (!s.ok() && status_.ok()) {
    spdlog::error("{}: a server started after this one may not take over", s.ToString());
    status_ = s;
  }
  return s;
}

Status StateLog::status() {
  MutexLock lock(mu_);
  return status_;
}

Status StateLog::AppendInit(const InitRecord& init) {
  return Append(json{{"init", ToHex(init.request)}, {"reply", ToHex(init.reply)}}.dump());
}

Status StateLog::AppendClient(const std::string& id) { return Append(json{{"client", id}}.dump()); }

void StateLog::Bind(const std::string& key, uint64_t ino) {
  (void)Append(json{{"bind", key}, {"ino", ino}}.dump());
}
void StateLog::Unbind(const std::string& key) { (void)Append(json{{"unbind", key}}.dump()); }
void StateLog::Opened(uint64_t fh, const FsState::Open& o) {
  (void)Append(json{{"open", fh}, {"ino", o.ino}, {"flags", o.flags}}.dump());
}
void StateLog::Released(uint64_t fh) { (void)Append(json{{"release", fh}}.dump()); }
void StateLog::DirOpened(uint64_t dh, uint64_t ino) {
  (void)Append(json{{"opendir", dh}, {"ino", ino}}.dump());
}
void StateLog::DirReleased(uint64_t dh) { (void)Append(json{{"releasedir", dh}}.dump()); }

}  // namespace imgfs::fusefs
