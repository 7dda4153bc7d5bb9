#include "tools/mount_options.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string_view>

#include "blockstore/units.h"

namespace imgfs::cli {

namespace {

Result<uint32_t> ParseU32(const std::string& key, const std::string& value) {
  auto n = ParseSize(value);
  if (!n.ok() || *n == 0 || *n > UINT32_MAX) {
    return Status::InvalidArgument("bad value for -o " + key + ": '" + value + "'");
  }
  return static_cast<uint32_t>(*n);
}

}  // namespace

Status ParseMountOptions(const std::vector<std::string>& lists, fusefs::FsOptions* fs,
                         fusefs::FuseConfig* fuse, StoreOptions* store,
                         std::pair<int, int>* crash_loop, MetricsOptions* metrics) {
  MetricsOptions unused;
  if (!metrics) metrics = &unused;
  for (const auto& list : lists) {
    std::stringstream ss(list);
    std::string opt;
    while (std::getline(ss, opt, ',')) {
      if (opt.empty()) continue;
      std::string key = opt, value;
      if (auto eq = opt.find('='); eq != std::string::npos) {
        key = opt.substr(0, eq);
        value = opt.substr(eq + 1);
      }
      if (key == "cache_size") {
        auto n = ParseSize(value);
        if (value.empty() || !n.ok() || *n > SIZE_MAX) {
          return Status::InvalidArgument("bad value for -o cache_size: '" + value +
                                         "' (a size such as 512M or 2G; 0 disables the cache)");
        }
        store->chunk_cache_bytes = static_cast<size_t>(*n);
      } else if (key == "crash_loop") {
        int deaths = 0, seconds = 0;
        char extra = 0;
        if (std::sscanf(value.c_str(), "%d/%d%c", &deaths, &seconds, &extra) != 2 || deaths < 1 ||
            seconds < 1) {
          return Status::InvalidArgument("bad value for -o crash_loop: '" + value +
                                         "' (DEATHS/SECONDS, such as 5/30)");
        }
        if (crash_loop) *crash_loop = {deaths, seconds};
      } else if (key == "metrics") {
        std::string host = "127.0.0.1", port = value;
        if (auto colon = value.rfind(':'); colon != std::string::npos) {
          host = value.substr(0, colon);
          port = value.substr(colon + 1);
        }
        char* end = nullptr;
        long p = std::strtol(port.c_str(), &end, 10);
        if (host.empty() || port.empty() || *end || p < 1 || p > 65535) {
          return Status::InvalidArgument("bad value for -o metrics: '" + value +
                                         "' ([HOST:]PORT, such as 127.0.0.1:9477)");
        }
        metrics->listen = host + ":" + port;
      } else if (key == "metrics_file") {
        if (value.empty() || value[0] != '/') {
          return Status::InvalidArgument("bad value for -o metrics_file: '" + value +
                                         "' (an absolute path)");
        }
        metrics->file = value;
      } else if (key == "metrics_interval") {
        char* end = nullptr;
        long n = std::strtol(value.c_str(), &end, 10);
        if (value.empty() || *end || n < 1 || n > 86400) {
          return Status::InvalidArgument("bad value for -o metrics_interval: '" + value +
                                         "' (seconds, 1 to 86400)");
        }
        metrics->interval_s = static_cast<int>(n);
      } else if (key == "allow_shrink") {
        fs->allow_shrink = true;
      } else if (key == "direct_io") {
        fs->direct_io_always = true;
      } else if (key == "allow_other") {
        fuse->allow_other = true;
      } else if (key == "clone_fd") {
        return Status::InvalidArgument(
            "-o clone_fd is not offered: a clone descriptor's requests die with the server that "
            "holds it, so a server could not be replaced (docs/operations.md)");
      } else if (key == "splice_read") {
        fuse->splice_read = true;
      } else if (key == "splice_write") {
        fuse->splice_write = true;
      } else if (key == "splice_move") {
        fuse->splice_move = true;
      } else if (key == "writeback_cache") {
        fuse->writeback_cache = true;
      } else if (key == "io_uring") {
        fuse->io_uring = true;
      } else if (key == "max_threads") {
        ASSIGN_OR_RETURN(fuse->max_threads, ParseU32(key, value));
      } else if (key == "max_idle_threads") {
        ASSIGN_OR_RETURN(fuse->max_idle_threads, ParseU32(key, value));
      } else if (key == "max_write") {
        ASSIGN_OR_RETURN(fuse->max_write, ParseU32(key, value));
      } else if (key == "max_background") {
        ASSIGN_OR_RETURN(fuse->max_background, ParseU32(key, value));
      } else if (key == "entry_timeout" || key == "attr_timeout") {
        char* end = nullptr;
        double v = std::strtod(value.c_str(), &end);
        if (value.empty() || *end || v < 0) {
          return Status::InvalidArgument("bad value for -o " + key + ": '" + value + "'");
        }
        (key == "entry_timeout" ? fs->entry_timeout : fs->attr_timeout) = v;
      } else if (key == "default_permissions" || key == "rw") {
        // Always on / the default.
      } else if (key == "defaults" || key == "auto" || key == "noauto" || key == "nofail" ||
                 key == "_netdev" || key == "user" || key == "users" || key == "nouser" ||
                 key == "comment" || key.starts_with("x-") || key == "pid_file" ||
                 key == "log_file") {
        // For mount(8) and systemd (/etc/fstab); pid_file and log_file: RunMount.
      } else {
        fuse->extra_options.push_back(opt);  // libfuse refuses what it does not know
      }
    }
  }
  return Status::OK();
}

void RedirectStdio(const std::string& log_file) {
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
  }
  int err = log_file.empty() ? null : open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
  if (err >= 0) dup2(err, STDERR_FILENO);
  if (err >= 0 && err != null) close(err);
  if (null > STDERR_FILENO) close(null);
}

void ReopenLog(const std::string& log_file) {
  int fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return;
  dup2(fd, STDERR_FILENO);
  close(fd);
}

namespace {

// mountinfo writes space, tab, newline and backslash as \ooo (octal).
std::string UnescapeMountField(std::string_view f) {
  std::string out;
  for (size_t i = 0; i < f.size(); ++i) {
    auto octal = [&](size_t k, char hi) { return f[k] >= '0' && f[k] <= hi; };
    if (f[i] == '\\' && i + 3 < f.size() && octal(i + 1, '3') && octal(i + 2, '7') &&
        octal(i + 3, '7')) {
      out += static_cast<char>((f[i + 1] - '0') * 64 + (f[i + 2] - '0') * 8 + (f[i + 3] - '0'));
      i += 3;
    } else {
      out += f[i];
    }
  }
  return out;
}

}  // namespace

std::optional<std::string> ImgfsMountAt(const std::string& mountinfo,
                                        const std::string& mountpoint) {
  std::istringstream lines(mountinfo);
  std::string line;
  while (std::getline(lines, line)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
    std::istringstream fields(line);
    std::string id, parent, dev, root, point, word;
    if (!(fields >> id >> parent >> dev >> root >> point)) continue;
    while (fields >> word && word != "-") {
    }
    std::string fstype, source;
    if (word != "-" || !(fields >> fstype >> source)) continue;
    if (fstype != "fuse.imgfs" || UnescapeMountField(point) != mountpoint) continue;
    std::string store = UnescapeMountField(source);
    if (store.starts_with("imgfs:")) store = store.substr(6);
    return store;
  }
  return std::nullopt;
}

std::string FsNameFor(const std::string& store_path) {
  std::string name = "imgfs:";
  for (char c : store_path) {
    if (c == ',' || c == '\\') name += '\\';
    name += c;
  }
  return name;
}

}  // namespace imgfs::cli
