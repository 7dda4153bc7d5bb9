// Fills a store with many small images for tools/bench-images.sh, in one
// process rather than one `imgfs image import` each (whose start and store
// open cost more than the import of an 8 KiB image):
//
//   images_fill STORE LIST THREADS
//
// LIST has one image a line: a path, then optionally a name. THREADS
// workers import the lines, each with its own Store::Open of STORE.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cache/import.h"
#include "cache/store.h"

using namespace imgfs;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: images_fill STORE LIST THREADS\n");
    return 2;
  }
  std::vector<std::pair<std::string, std::string>> lines;
  std::ifstream list(argv[2]);
  for (std::string line; std::getline(list, line);) {
    std::istringstream words(line);
    std::string path, name;
    words >> path >> name;
    if (!path.empty()) lines.emplace_back(path, name);
  }
  const int threads = std::atoi(argv[3]);
  if (threads < 1) {
    std::fprintf(stderr, "images_fill: THREADS must be at least 1\n");
    return 2;
  }
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      auto store = Store::Open(argv[1]);
      if (!store.ok()) {
        std::fprintf(stderr, "images_fill: %s\n", store.status().ToString().c_str());
        failed = true;
        return;
      }
      for (size_t i = next++; i < lines.size() && !failed; i = next++) {
        ImportOptions o;
        o.format = "raw";
        if (!lines[i].second.empty()) o.names = {lines[i].second};
        auto r = ImportImage(**store, lines[i].first, o);
        if (!r.ok()) {
          std::fprintf(stderr, "images_fill: %s: %s\n", lines[i].first.c_str(),
                       r.status().ToString().c_str());
          failed = true;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  return failed ? 1 : 0;
}
