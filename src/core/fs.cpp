#include "hetmoe/core/fs.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {
int remove_entry(const char* path, const struct stat*, int type, struct FTW*) {
  return (type == FTW_DP ? ::rmdir(path) : ::unlink(path)) == 0 ? 0 : errno;
}
}  // namespace

bool remove_tree(const std::string& path, std::string* error) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return true;
    if (error) *error = std::strerror(errno);
    return false;
  }
  const int rc = ::nftw(path.c_str(), remove_entry, 32, FTW_DEPTH | FTW_PHYS);
  if (rc != 0 && error) *error = std::strerror(rc > 0 ? rc : errno);
  return rc == 0;
}

int create_unique_file(const std::string& prefix, std::string* name) {
  std::string path = prefix + "XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) return -1;
  // The umask, read once (reading it means setting it, which other threads would notice).
  static const mode_t mask = [] {
    const mode_t m = ::umask(0);
    ::umask(m);
    return m;
  }();
  ::fchmod(fd, 0666 & ~mask);
  *name = path;
  return fd;
}

DirectoryLock::DirectoryLock(const std::string& dir, Wait wait)
    : fd_(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
  if (fd_ < 0) {
    failure_ = errno;
    return;
  }
  const int op = wait == Wait::Yes ? LOCK_EX : LOCK_EX | LOCK_NB;
  int rc;
  while ((rc = ::flock(fd_, op)) != 0 && errno == EINTR) {
  }
  if (rc != 0) failure_ = errno;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

void DirectoryLock::sync() const {
  if (fd_ >= 0) ::fsync(fd_);
}

TempDir::TempDir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  const std::string pattern = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  HETMOE_CHECK(::mkdtemp(buf.data()) != nullptr, "fs", "cannot create a temporary directory '",
               pattern, "': ", std::strerror(errno));
  path_ = buf.data();
}

TempDir::~TempDir() {
  remove_tree(path_);
}

}  // namespace hetmoe
