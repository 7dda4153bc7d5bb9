#include "blockstore/status.h"

#include <catch2/catch.hpp>
#include <cerrno>

using namespace imgfs;

TEST_CASE("Status: OK and named constructors", "[status]") {
  Status ok;
  CHECK(ok.ok());
  CHECK(ok.ToErrno() == 0);
  CHECK(ok.ToString() == "OK");

  Status nf = Status::NotFound("image 'x' not found");
  CHECK_FALSE(nf.ok());
  CHECK(nf.IsNotFound());
  CHECK(nf.message() == "image 'x' not found");
  CHECK(nf.ToString() == "NotFound: image 'x' not found");
}

TEST_CASE("Status: errno mapping used by the FUSE layer", "[status]") {
  CHECK(Status::NotFound("").ToErrno() == ENOENT);
  CHECK(Status::AlreadyExists("").ToErrno() == EEXIST);
  CHECK(Status::InvalidArgument("").ToErrno() == EINVAL);
  CHECK(Status::Corruption("").ToErrno() == EIO);
  CHECK(Status::IOError("").ToErrno() == EIO);
  CHECK(Status::Busy("").ToErrno() == EBUSY);
  CHECK(Status::NoSpace("").ToErrno() == ENOSPC);
  CHECK(Status::PermissionDenied("").ToErrno() == EPERM);
  CHECK(Status::ReadOnly("").ToErrno() == EROFS);
  CHECK(Status::NotEmpty("").ToErrno() == ENOTEMPTY);
  CHECK(Status::NotSupported("").ToErrno() == EOPNOTSUPP);
  CHECK(Status::TooLarge("").ToErrno() == EFBIG);
}

TEST_CASE("Status: FromErrno round trips the common errnos", "[status]") {
  for (int e : {ENOENT, EEXIST, EINVAL, EBUSY, ENOSPC, EPERM, EROFS, ENOTEMPTY, EIO, EFBIG}) {
    Status s = Status::FromErrno(e, "open /x");
    CHECK(s.ToErrno() == e);
    CHECK(s.message().rfind("open /x: ", 0) == 0);
  }
  // librados returns negative errnos.
  CHECK(Status::FromErrno(-ENOENT, "rados_read").IsNotFound());
  CHECK(Status::FromErrno(0, "x").ok());
  CHECK(Status::FromErrno(ETIMEDOUT, "connect").IsRetryable());
  CHECK_FALSE(Status::FromErrno(ENOENT, "x").IsRetryable());
}

TEST_CASE("Status: WithContext prefixes the message and keeps the code", "[status]") {
  Status s = Status::Corruption("hash mismatch").WithContext("chunk 00ff");
  CHECK(s.IsCorruption());
  CHECK(s.message() == "chunk 00ff: hash mismatch");
  CHECK(Status::OK().WithContext("x").ok());
}

namespace {
Result<int> Half(int x) {
  if (x % 2) return Status::InvalidArgument("odd");
  return x / 2;
}
Result<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}
Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x).status());
  return Status::OK();
}
}  // namespace

TEST_CASE("Result: value or status, and the propagation macros", "[status]") {
  auto r = Quarter(8);
  REQUIRE(r.ok());
  CHECK(*r == 2);
  auto bad = Quarter(6);
  CHECK_FALSE(bad.ok());
  CHECK(bad.status().IsInvalidArgument());
  CHECK(CheckEven(4).ok());
  CHECK(CheckEven(3).IsInvalidArgument());
}
