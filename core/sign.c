/*
 * sign.c — the engine's Ed25519 signing key in the data directory (see
 * sign.h for the file's rules).
 */
#include "sign.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int sodium_ready(rd_error *err) {
  if (sodium_init() < 0) return rd_error_set(err, RD_EINTERNAL, "libsodium failed to initialize");
  return RD_OK;
}

int rd__sign_seed_keypair(const unsigned char seed[RD_SIGN_SEEDBYTES],
                          unsigned char pk[RD_SIGN_PKBYTES],
                          unsigned char sk[RD_SIGN_SKBYTES]) {
  if (sodium_init() < 0) return RD_EINTERNAL;
  return crypto_sign_seed_keypair(pk, sk, seed) == 0 ? RD_OK : RD_EINTERNAL;
}

int rd__sign_detached(unsigned char sig[RD_SIGN_BYTES], const unsigned char *msg,
                      size_t len, const unsigned char sk[RD_SIGN_SKBYTES]) {
  if (sodium_init() < 0) return RD_EINTERNAL;
  return crypto_sign_detached(sig, NULL, msg, len, sk) == 0 ? RD_OK : RD_EINTERNAL;
}

int rd__sign_verify(const unsigned char sig[RD_SIGN_BYTES], const unsigned char *msg,
                    size_t len, const unsigned char pk[RD_SIGN_PKBYTES]) {
  if (sodium_init() < 0) return 0;
  return crypto_sign_verify_detached(sig, msg, len, pk) == 0;
}

/* Read the seed of an existing key file. RD_ENOENT if there is none. */
static int read_key(const char *path, unsigned char seed[RD_SIGN_SEEDBYTES], rd_error *err) {
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return rd_error_set(err, RD_ENOENT, "%s: no key", path);
    if (errno == ELOOP)
      return rd_error_set(err, RD_EIO, "%s: refused: the key file is a symbolic link", path);
    return rd_error_set(err, RD_EIO, "%s: %s", path, strerror(errno));
  }
  struct stat st;
  int rc = RD_OK;
  if (fstat(fd, &st) != 0) {
    rc = rd_error_set(err, RD_EIO, "%s: %s", path, strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    rc = rd_error_set(err, RD_EIO, "%s: refused: not a regular file", path);
  } else if (st.st_mode & 077) {
    rc = rd_error_set(err, RD_EIO,
                      "%s: refused: mode %04o lets group or others reach the key "
                      "(chmod 600 it, or remove it to make a new key)",
                      path, (unsigned)(st.st_mode & 07777));
  } else if (st.st_size != RD_SIGN_SEEDBYTES) {
    rc = rd_error_set(err, RD_EIO, "%s: refused: %lld bytes, a key file holds %d", path,
                      (long long)st.st_size, RD_SIGN_SEEDBYTES);
  } else {
    size_t got = 0;
    while (got < RD_SIGN_SEEDBYTES) {
      ssize_t n = read(fd, seed + got, RD_SIGN_SEEDBYTES - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        rc = rd_error_set(err, RD_EIO, "%s: short read", path);
        break;
      }
      got += (size_t)n;
    }
  }
  close(fd);
  return rc;
}

/* Write a fresh seed to a temporary file beside `path`, then link it into
 * place: a racing creator's key wins if it got there first. */
static int create_key(const char *dir, const char *name, const char *path, rd_error *err) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, name) >= (int)sizeof tmp)
    return rd_error_set(err, RD_EINVAL, "%s: path too long", dir);
  mode_t old = umask(077);
  int fd = mkstemp(tmp);
  umask(old);
  if (fd < 0) return rd_error_set(err, RD_EIO, "%s: cannot create the key: %s", dir, strerror(errno));
  unsigned char seed[RD_SIGN_SEEDBYTES];
  randombytes_buf(seed, sizeof seed);
  int rc = RD_OK;
  if (fchmod(fd, 0600) != 0) {
    rc = rd_error_set(err, RD_EIO, "%s: %s", tmp, strerror(errno));
  } else {
    size_t put = 0;
    while (put < sizeof seed) {
      ssize_t n = write(fd, seed + put, sizeof seed - put);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        rc = rd_error_set(err, RD_EIO, "%s: cannot write the key: %s", tmp, strerror(errno));
        break;
      }
      put += (size_t)n;
    }
    if (rc == RD_OK && fsync(fd) != 0)
      rc = rd_error_set(err, RD_EIO, "%s: %s", tmp, strerror(errno));
  }
  sodium_memzero(seed, sizeof seed);
  close(fd);
  if (rc == RD_OK && link(tmp, path) != 0 && errno != EEXIST)
    rc = rd_error_set(err, RD_EIO, "%s: cannot create the key: %s", path, strerror(errno));
  unlink(tmp);
  return rc;
}

int rd__secret_file(const char *dir, const char *name, int create,
                    unsigned char secret[RD_SECRET_BYTES], rd_error *err) {
  if (!dir || !name || !secret) return rd_error_set(err, RD_EINVAL, "secret file: NULL argument");
  int rc = sodium_ready(err);
  if (rc != RD_OK) return rc;
  char path[4096];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
    return rd_error_set(err, RD_EINVAL, "%s: path too long", dir);
  rc = read_key(path, secret, err);
  if (rc == RD_ENOENT && create) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
      return rd_error_set(err, RD_EIO, "%s: cannot create the data directory: %s", dir,
                          strerror(errno));
    rc = create_key(dir, name, path, err);
    if (rc == RD_OK) rc = read_key(path, secret, err);
  }
  if (rc != RD_OK) return rc;
  rd_error_clear(err);
  return RD_OK;
}

int rd__sign_key_load(const char *dir, int create, unsigned char pk[RD_SIGN_PKBYTES],
                      unsigned char sk[RD_SIGN_SKBYTES], rd_error *err) {
  if (!dir || !pk || !sk) return rd_error_set(err, RD_EINVAL, "sign: NULL argument");
  unsigned char seed[RD_SIGN_SEEDBYTES];
  int rc = rd__secret_file(dir, RD_SIGN_KEYFILE, create, seed, err);
  if (rc != RD_OK) return rc;
  rc = rd__sign_seed_keypair(seed, pk, sk);
  sodium_memzero(seed, sizeof seed);
  if (rc != RD_OK) return rd_error_set(err, rc, "%s/%s: cannot derive the key pair", dir, RD_SIGN_KEYFILE);
  return RD_OK;
}
