// Running helper programs (qemu-img) and collecting their output.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "blockstore/status.h"

namespace imgfs {

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal
  std::string out;
  std::string err;
};

// Runs argv[0] (searched in PATH) with stdin from /dev/null and waits for it.
// If `cancel` becomes true meanwhile, the child is killed and Status
// IOError("interrupted") is returned. Fails only when the program cannot be
// started or waited for; a non-zero exit is reported in the result.
Result<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                 const std::atomic<bool>* cancel = nullptr);

// The first non-empty line of `text`, trimmed, for one-line error messages.
std::string FirstLine(const std::string& text);

}  // namespace imgfs
