/*
 * test_sign.c — the engine's signing key in the data directory (core/sign.c):
 * made on first use with mode 0600 in a 0700 directory, read back the same,
 * refused when others can reach it, is a link or has the wrong size; the
 * same key for racing creators; signatures that verify and tampering that
 * does not.
 */
#include "rd.h"
#include "sign.h"
#include "testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void tmp_dir(char *out, size_t n) {
  snprintf(out, n, "/tmp/rd_test_sign_XXXXXX");
  CHECK(mkdtemp(out) != NULL);
}

static void rm_rf(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
}

TEST(creates_key_0600_in_0700_dir_and_reads_it_back) {
  char base[64], dir[128], path[192];
  tmp_dir(base, sizeof base);
  snprintf(dir, sizeof dir, "%s/data", base);
  snprintf(path, sizeof path, "%s/token.key", dir);
  unsigned char pk[RD_SIGN_PKBYTES], sk[RD_SIGN_SKBYTES], pk2[RD_SIGN_PKBYTES], sk2[RD_SIGN_SKBYTES];
  rd_error err;
  CHECK(rd__sign_key_load(dir, 0, pk, sk, &err) == RD_ENOENT);
  CHECK(rd__sign_key_load(dir, 1, pk, sk, &err) == RD_OK);
  struct stat st;
  CHECK(stat(path, &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(st.st_size == RD_SIGN_SEEDBYTES);
  CHECK(stat(dir, &st) == 0);
  CHECK((st.st_mode & 07777) == 0700);
  CHECK(rd__sign_key_load(dir, 0, pk2, sk2, &err) == RD_OK);
  CHECK(memcmp(pk, pk2, sizeof pk) == 0);
  CHECK(memcmp(sk, sk2, sizeof sk) == 0);
  /* no temporary file left behind */
  char cmd[300];
  snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir);
  CHECK(system(cmd) == 0);
  rm_rf(base);
}

TEST(refuses_key_files_others_can_reach_links_and_wrong_sizes) {
  char dir[64], path[128], link_dir[128], link_path[192];
  tmp_dir(dir, sizeof dir);
  snprintf(path, sizeof path, "%s/token.key", dir);
  unsigned char pk[RD_SIGN_PKBYTES], sk[RD_SIGN_SKBYTES];
  rd_error err;
  CHECK(rd__sign_key_load(dir, 1, pk, sk, &err) == RD_OK);
  CHECK(chmod(path, 0644) == 0);
  CHECK(rd__sign_key_load(dir, 1, pk, sk, &err) == RD_EIO);
  CHECK(strstr(err.message, "mode 0644") != NULL);
  CHECK(strstr(err.message, path) != NULL);
  CHECK(chmod(path, 0600) == 0);
  CHECK(rd__sign_key_load(dir, 0, pk, sk, &err) == RD_OK);

  snprintf(link_dir, sizeof link_dir, "%s/linked", dir);
  CHECK(mkdir(link_dir, 0700) == 0);
  snprintf(link_path, sizeof link_path, "%s/token.key", link_dir);
  CHECK(symlink(path, link_path) == 0);
  CHECK(rd__sign_key_load(link_dir, 1, pk, sk, &err) == RD_EIO);
  CHECK(strstr(err.message, "symbolic link") != NULL);

  tl_put_file(path, "short");
  CHECK(chmod(path, 0600) == 0);
  CHECK(rd__sign_key_load(dir, 1, pk, sk, &err) == RD_EIO);
  CHECK(strstr(err.message, "5 bytes") != NULL);

  CHECK(rd__sign_key_load(NULL, 1, pk, sk, &err) == RD_EINVAL);
  CHECK(rd__sign_key_load(dir, 1, NULL, sk, &err) == RD_EINVAL);
  rm_rf(dir);
}

typedef struct { const char *dir; unsigned char pk[RD_SIGN_PKBYTES]; int rc; } racer;

static void *race(void *p) {
  racer *r = p;
  unsigned char sk[RD_SIGN_SKBYTES];
  rd_error err;
  r->rc = rd__sign_key_load(r->dir, 1, r->pk, sk, &err);
  return NULL;
}

TEST(racing_creators_get_one_key) {
  char dir[64];
  tmp_dir(dir, sizeof dir);
  racer rs[8];
  pthread_t th[8];
  for (int i = 0; i < 8; i++) {
    rs[i].dir = dir;
    CHECK(pthread_create(&th[i], NULL, race, &rs[i]) == 0);
  }
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 8; i++) {
    CHECK(rs[i].rc == RD_OK);
    CHECK(memcmp(rs[i].pk, rs[0].pk, RD_SIGN_PKBYTES) == 0);
  }
  rm_rf(dir);
}

TEST(signatures_verify_and_tampering_does_not) {
  unsigned char seed[RD_SIGN_SEEDBYTES], pk[RD_SIGN_PKBYTES], sk[RD_SIGN_SKBYTES];
  unsigned char pk2[RD_SIGN_PKBYTES], sk2[RD_SIGN_SKBYTES], sig[RD_SIGN_BYTES];
  memset(seed, 7, sizeof seed);
  CHECK(rd__sign_seed_keypair(seed, pk, sk) == RD_OK);
  seed[0] = 8;
  CHECK(rd__sign_seed_keypair(seed, pk2, sk2) == RD_OK);
  const unsigned char msg[] = "rduck-token-v1 block";
  CHECK(rd__sign_detached(sig, msg, sizeof msg, sk) == RD_OK);
  CHECK(rd__sign_verify(sig, msg, sizeof msg, pk) == 1);
  CHECK(rd__sign_verify(sig, msg, sizeof msg, pk2) == 0);
  unsigned char bad[sizeof msg];
  memcpy(bad, msg, sizeof msg);
  bad[0] ^= 1;
  CHECK(rd__sign_verify(sig, bad, sizeof bad, pk) == 0);
  sig[10] ^= 0x40;
  CHECK(rd__sign_verify(sig, msg, sizeof msg, pk) == 0);
}

int main(void) { RUN_TESTS(); }
