#include "blockstore/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace imgfs {

void InitLogging(int verbosity) {
  auto logger = spdlog::stderr_color_mt("imgfs");
  logger->set_pattern("%^%l%$: %v");
  spdlog::level::level_enum level = spdlog::level::warn;
  if (verbosity < 0) level = spdlog::level::err;
  if (verbosity == 1) level = spdlog::level::info;
  if (verbosity >= 2) level = spdlog::level::debug;
  logger->set_level(level);
  spdlog::set_default_logger(logger);
}

void UseDaemonLogFormat() { spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e [%P] %^%l%$: %v"); }

}  // namespace imgfs
