/*
 * test_store.c — the storage layer (core/store/): environments, cache, kv,
 * history, audit; map growth and full storage, a full disk (RLIMIT_FSIZE in
 * a child), crash recovery (a child SIGKILLed inside a write transaction
 * while it holds a reader slot), an unusable cache file, a concurrent
 * reader process.
 */
#include "store/store.h"
#include "testlib.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/time.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char base[64];
static int dirn;

static const char *fresh_dir(char *buf, size_t n) {
  snprintf(buf, n, "%s/d%d", base, ++dirn);
  return buf;
}

static rd_store_env *open_env(const char *dir, rd_store_kind kind, size_t map, size_t max) {
  rd_store_env_config cfg = {map, max};
  rd_store_env *env = NULL;
  rd_error err;
  int rc = rd_store_env_open(&env, dir, kind, &cfg, &err);
  if (rc) fprintf(stderr, "open %s: %s\n", dir, err.message);
  CHECK(rc == RD_OK);
  return env;
}

static int kv_is(rd_store_env *env, const char *ns, const void *k, size_t kl, const char *want) {
  rd_store_view v;
  int rc = rd_kv_get(env, ns, k, kl, &v, NULL);
  if (rc) return 0;
  int same = v.len == strlen(want) && memcmp(v.data, want, v.len) == 0;
  rd_store_view_release(&v);
  return same;
}

TEST(env_open_creates_the_directory) {
  char d[128], sub[160];
  fresh_dir(d, sizeof d);
  snprintf(sub, sizeof sub, "%s/a/b", d);
  rd_store_env *env = open_env(sub, RD_STORE_DATA, 0, 0);
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(strstr(info.path, "/a/b/data.mdb") != NULL);
  CHECK(info.map_size == 16u << 20);
  struct stat st;
  CHECK(stat(sub, &st) == 0 && (st.st_mode & 0777) == 0700);
  rd_store_env_close(env);
  rd_error err;
  rd_store_env *e2 = NULL;
  CHECK(rd_store_env_open(&e2, "/proc/nope/x", RD_STORE_DATA, NULL, &err) == RD_EIO);
  CHECK(strstr(err.message, "/proc/nope") != NULL);
}

/* Sandboxed workers descend from an exec'd zygote: no descriptor of the
 * data directory may survive an exec. */
TEST(env_descriptors_are_close_on_exec) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 0, 0);
  rd_store_env *cenv = open_env(d, RD_STORE_CACHE, 0, 0);
  int seen = 0, leaky = 0;
  for (int fd = 0; fd < 1024; fd++) {
    char link[64], target[512];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (!strstr(target, ".mdb")) continue;
    seen++;
    if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC)) {
      leaky++;
      fprintf(stderr, "fd %d (%s) survives exec\n", fd, target);
    }
  }
  CHECK(seen >= 4);
  CHECK(leaky == 0);
  rd_store_env_close(cenv);
  rd_store_env_close(env);
}

/* LMDB forbids two envs of one file in a process: a second open shares. */
TEST(second_open_in_a_process_shares_the_env) {
  char d[128];
  rd_store_env *a = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 0, 0);
  char d2[200];
  snprintf(d2, sizeof d2, "%s/../d%d", d, dirn); /* the same directory, spelt otherwise */
  rd_store_env *b = open_env(d2, RD_STORE_DATA, 0, 0);
  CHECK(a == b);
  rd_store_env *c = open_env(d, RD_STORE_CACHE, 0, 0);
  CHECK(c != a);
  CHECK(rd_kv_put(a, "ns", "k", 1, "v", 1, NULL) == RD_OK);
  rd_store_env_close(a);
  CHECK(kv_is(b, "ns", "k", 1, "v")); /* still open through b */
  rd_store_env_close(b);
  rd_store_env_close(c);
  a = open_env(d, RD_STORE_DATA, 0, 0); /* and opens anew after the last close */
  CHECK(kv_is(a, "ns", "k", 1, "v"));
  rd_store_env_close(a);
}

TEST(kv_keys_of_any_bytes_and_length) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 0, 0);
  char bin[3] = {'\0', '\xff', 'x'};
  char *long1 = malloc(5000), *long2 = malloc(5000);
  memset(long1, 'L', 5000);
  memset(long2, 'L', 5000);
  long2[4999] = 'M'; /* same first 400 bytes, different key */
  CHECK(rd_kv_put(env, "t", bin, 3, "bin", 3, NULL) == RD_OK);
  CHECK(rd_kv_put(env, "t", long1, 5000, "one", 3, NULL) == RD_OK);
  CHECK(rd_kv_put(env, "t", long2, 5000, "two", 3, NULL) == RD_OK);
  CHECK(rd_kv_put(env, "u", bin, 3, "other ns", 8, NULL) == RD_OK);
  CHECK(kv_is(env, "t", bin, 3, "bin"));
  CHECK(kv_is(env, "t", long1, 5000, "one"));
  CHECK(kv_is(env, "t", long2, 5000, "two"));
  CHECK(kv_is(env, "u", bin, 3, "other ns"));
  rd_store_view v;
  CHECK(rd_kv_get(env, "t", "nope", 4, &v, NULL) == RD_ENOENT);
  CHECK(rd_kv_delete(env, "t", long1, 5000, NULL) == RD_OK);
  CHECK(rd_kv_delete(env, "t", long1, 5000, NULL) == RD_ENOENT);
  CHECK(kv_is(env, "t", long2, 5000, "two"));
  rd_error err;
  CHECK(rd_kv_put(env, "bad ns", "k", 1, "v", 1, &err) == RD_EINVAL);
  CHECK(strstr(err.message, "namespace") != NULL);
  CHECK(rd_kv_put(env, "t", "", 0, "v", 1, &err) == RD_EINVAL);
  char *big = calloc(1, RD_KV_MAX_VALUE + 1);
  CHECK(rd_kv_put(env, "t", "big", 3, big, RD_KV_MAX_VALUE + 1, &err) == RD_ELIMIT);
  CHECK(strstr(err.message, "exceeds the maximum") != NULL);
  CHECK(kv_is(env, "t", bin, 3, "bin")); /* nothing lost */
  free(big);
  free(long1);
  free(long2);
  rd_store_env_close(env);
}

typedef struct collect { int n; char keys[16][16]; } collect;

static int collect_cb(const void *k, size_t kl, const void *v, size_t vl, void *ud) {
  collect *c = ud;
  (void)v; (void)vl;
  if (c->n < 16) { snprintf(c->keys[c->n], 16, "%.*s", (int)kl, (const char *)k); }
  c->n++;
  return 0;
}

TEST(kv_prefix_listing_with_a_cursor) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 0, 0);
  const char *keys[] = {"a1", "a2", "a3", "b1", "a4", "a5"};
  for (int i = 0; i < 6; i++) CHECK(rd_kv_put(env, "ns", keys[i], 2, "v", 1, NULL) == RD_OK);
  char cur[RD_KV_CURSOR_MAX];
  collect c = {0};
  CHECK(rd_kv_list(env, "ns", "a", 1, NULL, 2, collect_cb, &c, cur, NULL) == RD_OK);
  CHECK(c.n == 2 && strcmp(c.keys[0], "a1") == 0 && strcmp(c.keys[1], "a2") == 0);
  CHECK(cur[0] != '\0');
  char cur2[RD_KV_CURSOR_MAX];
  memset(&c, 0, sizeof c);
  CHECK(rd_kv_list(env, "ns", "a", 1, cur, 2, collect_cb, &c, cur2, NULL) == RD_OK);
  CHECK(c.n == 2 && strcmp(c.keys[0], "a3") == 0 && strcmp(c.keys[1], "a4") == 0);
  memset(&c, 0, sizeof c);
  CHECK(rd_kv_list(env, "ns", "a", 1, cur2, 2, collect_cb, &c, cur, NULL) == RD_OK);
  CHECK(c.n == 1 && strcmp(c.keys[0], "a5") == 0);
  CHECK(cur[0] == '\0');
  rd_error err;
  CHECK(rd_kv_list(env, "ns", "", 0, "zz-not-hex", 2, collect_cb, &c, cur, &err) == RD_EINVAL);
  rd_store_env_close(env);
}

TEST(cache_ttl_and_sweep) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_CACHE, 0, 0);
  rd_cache *c;
  rd_cache_config cfg = {0, 0, RD_CACHE_LRU};
  CHECK(rd_cache_open(&c, env, &cfg, NULL) == RD_OK);
  rd_store_env_close(env); /* the cache keeps it open */
  rd_cache_set_time(c, 1000.0);
  CHECK(rd_cache_put(c, "a", 1, "va", 2, 10, NULL) == RD_OK);
  CHECK(rd_cache_put(c, "b", 1, "vb", 2, 0, NULL) == RD_OK);
  rd_store_view v;
  CHECK(rd_cache_get(c, "a", 1, &v, NULL) == RD_OK);
  CHECK(v.len == 2 && memcmp(v.data, "va", 2) == 0 && v.expires_at == 1010.0);
  rd_store_view_release(&v);
  rd_cache_set_time(c, 1011.0);
  CHECK(rd_cache_get(c, "a", 1, &v, NULL) == RD_ENOENT);
  CHECK(rd_cache_get(c, "b", 1, &v, NULL) == RD_OK);
  rd_store_view_release(&v);
  size_t removed = 0;
  CHECK(rd_cache_sweep(c, 0, &removed, NULL) == RD_OK && removed == 1);
  rd_cache_stats s;
  CHECK(rd_cache_stats_get(c, &s, NULL) == RD_OK);
  CHECK(s.hits == 2 && s.misses == 1 && s.expirations == 1 && s.entries == 1);
  CHECK(s.bytes == 2 + 2); /* "kb" + "vb" */
  CHECK(rd_cache_delete(c, "b", 1, NULL) == RD_OK);
  CHECK(rd_cache_delete(c, "b", 1, NULL) == RD_ENOENT);
  rd_cache_close(c);
}

static int cache_has(rd_cache *c, const char *k) {
  rd_store_view v;
  int rc = rd_cache_get(c, k, strlen(k), &v, NULL);
  rd_store_view_release(&v);
  return rc == RD_OK;
}

static rd_cache *policy_cache(rd_cache_policy p, uint64_t max_entries, uint64_t max_bytes) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_CACHE, 0, 0);
  rd_cache *c = NULL;
  rd_cache_config cfg = {max_bytes, max_entries, p};
  CHECK(rd_cache_open(&c, env, &cfg, NULL) == RD_OK);
  rd_store_env_close(env);
  return c;
}

TEST(cache_eviction_policies) {
  /* fifo: the oldest insertion goes, reads do not matter */
  rd_cache *c = policy_cache(RD_CACHE_FIFO, 3, 0);
  double t = 2000;
  const char *k[] = {"k1", "k2", "k3", "k4"};
  for (int i = 0; i < 3; i++) { rd_cache_set_time(c, t++); rd_cache_put(c, k[i], 2, "v", 1, 0, NULL); }
  rd_cache_set_time(c, t++);
  CHECK(cache_has(c, "k1"));
  rd_cache_set_time(c, t++);
  CHECK(rd_cache_put(c, "k4", 2, "v", 1, 0, NULL) == RD_OK);
  CHECK(!cache_has(c, "k1") && cache_has(c, "k2") && cache_has(c, "k4"));
  rd_cache_stats s;
  rd_cache_stats_get(c, &s, NULL);
  CHECK(s.evictions == 1 && s.entries == 3);
  rd_cache_close(c);

  /* lru: the least recently read goes */
  c = policy_cache(RD_CACHE_LRU, 3, 0);
  for (int i = 0; i < 3; i++) { rd_cache_set_time(c, t++); rd_cache_put(c, k[i], 2, "v", 1, 0, NULL); }
  rd_cache_set_time(c, t++);
  CHECK(cache_has(c, "k1"));
  rd_cache_set_time(c, t++);
  CHECK(rd_cache_put(c, "k4", 2, "v", 1, 0, NULL) == RD_OK);
  CHECK(cache_has(c, "k1") && !cache_has(c, "k2") && cache_has(c, "k3"));

  /* clear with access notes pending */
  CHECK(rd_cache_clear(c, NULL) == RD_OK);
  CHECK(!cache_has(c, "k1"));
  rd_cache_close(c);

  /* lfu: the least often read goes */
  c = policy_cache(RD_CACHE_LFU, 3, 0);
  for (int i = 0; i < 3; i++) { rd_cache_set_time(c, t++); rd_cache_put(c, k[i], 2, "v", 1, 0, NULL); }
  rd_cache_set_time(c, t++);
  CHECK(cache_has(c, "k1") && cache_has(c, "k1") && cache_has(c, "k3"));
  rd_cache_set_time(c, t++);
  CHECK(rd_cache_put(c, "k4", 2, "v", 1, 0, NULL) == RD_OK);
  CHECK(cache_has(c, "k1") && !cache_has(c, "k2") && cache_has(c, "k3"));
  rd_cache_close(c);

  /* a byte cap: entries of 3 + 10 bytes, 40 allowed: three fit */
  c = policy_cache(RD_CACHE_FIFO, 0, 40);
  const char *bk[] = {"b1", "b2", "b3", "b4"};
  for (int i = 0; i < 4; i++) { rd_cache_set_time(c, t++); CHECK(rd_cache_put(c, bk[i], 2, "0123456789", 10, 0, NULL) == RD_OK); }
  rd_cache_stats_get(c, &s, NULL);
  CHECK(s.entries == 3 && s.bytes == 39 && !cache_has(c, "b1"));
  rd_error err;
  char big[64] = {0};
  CHECK(rd_cache_put(c, "huge", 4, big, sizeof big, 0, &err) == RD_ELIMIT);
  CHECK(strstr(err.message, "max_bytes") != NULL);
  CHECK(cache_has(c, "b4"));
  CHECK(rd_cache_clear(c, NULL) == RD_OK);
  rd_cache_stats_get(c, &s, NULL);
  CHECK(s.entries == 0 && s.bytes == 0);
  rd_cache_close(c);
}

/* The cache entries' comparator orders keys exactly as LMDB's default
 * does (bytes unsigned, then the shorter first): a file the cache writes is
 * the same B-tree for any LMDB reader with the default comparator. */
static int memn_sign(const MDB_val *a, const MDB_val *b) {
  size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
  int d = n ? memcmp(a->mv_data, b->mv_data, n) : 0;
  if (d) return d < 0 ? -1 : 1;
  return a->mv_size < b->mv_size ? -1 : a->mv_size > b->mv_size;
}

TEST(cache_key_order_is_lmdbs_default) {
  /* random pairs over a small alphabet (long equal prefixes, 0x00, 0xff),
   * every length from 0 to 40, and each key against itself */
  static const unsigned char alpha[] = {0x00, 0x01, 'a', 'b', 0x7f, 0x80, 0xfe, 0xff};
  unsigned char ka[48], kb[48];
  unsigned seed = 12345;
  for (int t = 0; t < 200000; t++) {
    size_t la = (seed = seed * 1103515245u + 12345u) >> 16 & 63, lb;
    la %= 41;
    lb = (t & 3) == 0 ? la : ((seed = seed * 1103515245u + 12345u) >> 16) % 41;
    for (size_t i = 0; i < la; i++) ka[i] = alpha[((seed = seed * 1103515245u + 12345u) >> 16) & 7];
    for (size_t i = 0; i < lb; i++)
      kb[i] = (t & 1) && i < la ? ka[i] : alpha[((seed = seed * 1103515245u + 12345u) >> 16) & 7];
    if ((t & 7) == 0 && lb > 0) kb[lb - 1] ^= 1; /* differ only in the last byte */
    MDB_val a = {la, ka}, b = {lb, kb};
    int want = memn_sign(&a, &b), got = rd__store_cmp_bytes(&a, &b);
    got = got < 0 ? -1 : got > 0;
    if (got != want) {
      fprintf(stderr, "order differs at pair %d (lengths %zu, %zu): %d, want %d\n", t, la, lb, got, want);
      CHECK(0);
      return;
    }
    CHECK(rd__store_cmp_bytes(&a, &a) == 0);
  }

  /* a cache file read by plain LMDB: keys in the default's order, each found */
  char d[128], path[200];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 0, 0);
  rd_cache *c;
  CHECK(rd_cache_open(&c, env, NULL, NULL) == RD_OK);
  char key[64];
  for (int i = 0; i < 600; i++) {
    size_t kl = (size_t)snprintf(key, sizeof key, "%s%d", i % 3 ? "key:" : "\xff\x01", i * 7919 % 600);
    if (i % 5 == 0) kl = (size_t)(i % 9) + 1; /* short prefixes of each other */
    CHECK(rd_cache_put(c, key, kl, "v", 1, 0, NULL) == RD_OK);
  }
  CHECK(rd_cache_put(c, "key:1", 5, "v", 1, 0, NULL) == RD_OK);
  CHECK(rd_cache_put(c, "\xff\x01" "0", 3, "v", 1, 0, NULL) == RD_OK);
  rd_cache_close(c);
  rd_store_env_close(env);
  snprintf(path, sizeof path, "%s/cache.mdb", d);
  MDB_env *raw;
  MDB_txn *txn;
  MDB_dbi dbi;
  MDB_cursor *cur;
  CHECK(mdb_env_create(&raw) == 0);
  mdb_env_set_maxdbs(raw, 8);
  CHECK(mdb_env_open(raw, path, MDB_NOSUBDIR | MDB_RDONLY, 0600) == 0);
  CHECK(mdb_txn_begin(raw, NULL, MDB_RDONLY, &txn) == 0);
  CHECK(mdb_dbi_open(txn, NULL, 0, &dbi) == 0);
  CHECK(mdb_cursor_open(txn, dbi, &cur) == 0);
  MDB_val k, v, prev = {0, NULL};
  int n = 0, ordered = 1, found = 1;
  unsigned char pk[512];
  while (mdb_cursor_get(cur, &k, &v, n ? MDB_NEXT : MDB_FIRST) == 0) {
    if (n && memn_sign(&prev, &k) >= 0) ordered = 0;
    memcpy(pk, k.mv_data, k.mv_size);
    prev.mv_size = k.mv_size;
    prev.mv_data = pk;
    MDB_val g;
    if (mdb_get(txn, dbi, &k, &g) != 0) found = 0;
    n++;
  }
  CHECK(ordered && found);
  CHECK(n > 600 / 2); /* the entries (some keys repeat) and the named databases */
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  mdb_env_close(raw);
  env = open_env(d, RD_STORE_CACHE, 0, 0);
  CHECK(rd_cache_open(&c, env, NULL, NULL) == RD_OK);
  CHECK(cache_has(c, "key:1") && cache_has(c, "\xff\x01" "0"));
  rd_cache_close(c);
  rd_store_env_close(env);
}

/* Each cache handle keeps one read txn, reset between gets and renewed per
 * get: every get sees the latest commit, two views may be held at once (the
 * second takes a pooled txn), and map growth by this process or another
 * one (MDB_MAP_RESIZED on renew) is adopted. */
static int cache_is(rd_cache *c, const char *k, const char *want) {
  rd_store_view v;
  int rc = rd_cache_get(c, k, strlen(k), &v, NULL);
  int same = rc == RD_OK && v.len == strlen(want) && memcmp(v.data, want, v.len) == 0;
  rd_store_view_release(&v);
  return same;
}

TEST(cache_reader_txn_is_reused_and_stays_fresh) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 64 << 10, 64 << 20);
  rd_cache *c;
  rd_cache_config cfg = {0, 0, RD_CACHE_LRU};
  CHECK(rd_cache_open(&c, env, &cfg, NULL) == RD_OK);
  CHECK(rd_cache_put(c, "a", 1, "v1", 2, 0, NULL) == RD_OK);
  CHECK(rd_cache_put(c, "b", 1, "w1", 2, 0, NULL) == RD_OK);
  CHECK(cache_is(c, "a", "v1"));
  CHECK(rd_cache_put(c, "a", 1, "v2", 2, 0, NULL) == RD_OK);
  CHECK(cache_is(c, "a", "v2")); /* a renewed txn: the new snapshot */

  /* two views at once; released in either order; then the own txn again */
  rd_store_view va, vb, vc;
  CHECK(rd_cache_get(c, "a", 1, &va, NULL) == RD_OK);
  CHECK(rd_cache_get(c, "b", 1, &vb, NULL) == RD_OK);
  CHECK(rd_cache_get(c, "zz", 2, &vc, NULL) == RD_ENOENT && vc.txn_ == NULL);
  CHECK(va.len == 2 && memcmp(va.data, "v2", 2) == 0);
  CHECK(vb.len == 2 && memcmp(vb.data, "w1", 2) == 0);
  rd_store_view_release(&va);
  rd_store_view_release(&va); /* idempotent */
  CHECK(cache_is(c, "a", "v2"));
  rd_store_view_release(&vb);
  CHECK(cache_is(c, "b", "w1"));

  /* map growth in this process while the handle's txn is parked */
  char val[4000];
  memset(val, 'x', sizeof val);
  char key[32];
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "g%d", i);
    CHECK(rd_cache_put(c, key, strlen(key), val, sizeof val, 0, NULL) == RD_OK);
  }
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(info.map_size > (64 << 10));
  CHECK(cache_has(c, "g0") && cache_has(c, "g199") && cache_is(c, "a", "v2"));

  /* another process writes and grows the map further: this handle's next
   * gets see its commits (renew reports MDB_MAP_RESIZED, adopted) */
  size_t before = info.map_size;
  pid_t pid = fork();
  if (pid == 0) {
    rd_store_env *ce = NULL;
    rd_cache *cc = NULL;
    rd_store_env_config ecfg = {64 << 10, 64 << 20};
    if (rd_store_env_open(&ce, d, RD_STORE_CACHE, &ecfg, NULL)) _exit(10);
    if (rd_cache_open(&cc, ce, NULL, NULL)) _exit(11);
    for (int i = 0; i < 600; i++) {
      char k[32];
      snprintf(k, sizeof k, "p%d", i);
      if (rd_cache_put(cc, k, strlen(k), val, sizeof val, 0, NULL)) _exit(12);
    }
    if (rd_cache_put(cc, "a", 1, "v3", 2, 0, NULL)) _exit(13);
    rd_cache_close(cc);
    rd_store_env_close(ce);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(cache_is(c, "a", "v3"));
  CHECK(cache_has(c, "p599") && cache_has(c, "g199"));
  rd_store_env_info_get(env, &info);
  CHECK(info.map_size > before);
  rd_cache_stats s;
  CHECK(rd_cache_stats_get(c, &s, NULL) == RD_OK && s.entries == 2 + 200 + 600);
  rd_cache_close(c);
  rd_store_env_close(env);
}

/* A get on a handle's live snapshot takes no lock: the reader is pinned,
 * and a map resize waits for it like for a lock holder: a view held on it
 * makes growth wait (then storage_full after the limit, its bytes intact),
 * and growth goes on once the view is released. */
typedef struct grow_arg { rd_cache *c; int rc; } grow_arg;

static void *grow_thread(void *p) {
  grow_arg *g = p;
  static char big[8000];
  memset(big, 'w', sizeof big);
  g->rc = RD_OK;
  for (int i = 0; i < 200 && g->rc == RD_OK; i++) {
    char k[32];
    snprintf(k, sizeof k, "w%d", i);
    g->rc = rd_cache_put(g->c, k, strlen(k), big, sizeof big, 0, NULL);
  }
  return NULL;
}

TEST(cache_map_growth_waits_for_a_pinned_view) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 64 << 10, 64 << 20);
  rd_cache *a, *b;
  rd_cache_config fifo = {0, 0, RD_CACHE_FIFO};
  CHECK(rd_cache_open(&a, env, &fifo, NULL) == RD_OK);
  CHECK(rd_cache_open(&b, env, &fifo, NULL) == RD_OK);
  CHECK(rd_cache_put(a, "k", 1, "v", 1, 0, NULL) == RD_OK);
  CHECK(cache_is(a, "k", "v") && cache_is(a, "k", "v")); /* the snapshot is live */
  rd_store_view v;
  CHECK(rd_cache_get(a, "k", 1, &v, NULL) == RD_OK); /* pinned, no lock */
  rd_error err;
  int rc = RD_OK;
  char big[8000];
  memset(big, 'g', sizeof big);
  for (int i = 0; i < 200 && rc == RD_OK; i++) {
    char k[32];
    snprintf(k, sizeof k, "g%d", i);
    rc = rd_cache_put(b, k, strlen(k), big, sizeof big, 0, &err);
  }
  CHECK(rc == RD_EFULL && strstr(err.message, "could not grow") != NULL);
  CHECK(v.len == 1 && memcmp(v.data, "v", 1) == 0);
  CHECK(cache_has(b, "g0")); /* what was acknowledged stays */
  /* another thread grows while the view is held; released 0.3 s later */
  grow_arg g = {b, RD_OK};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, grow_thread, &g) == 0);
  usleep(300000);
  CHECK(v.len == 1 && memcmp(v.data, "v", 1) == 0);
  rd_store_view_release(&v);
  pthread_join(t, NULL);
  CHECK(g.rc == RD_OK);
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(info.map_size > (64 << 10));
  CHECK(cache_is(a, "k", "v") && cache_has(a, "w199") && cache_has(a, "g0"));
  rd_cache_close(a);
  rd_cache_close(b);
  rd_store_env_close(env);
}

/* A handle keeps its read snapshot between gets while nothing was
 * committed: every write that commits, by another handle of this process
 * or by another process, must be seen by the next get; expiry is checked
 * on every get, with no commit in between. */
TEST(cache_kept_snapshot_never_serves_stale_entries) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 64 << 10, 64 << 20);
  rd_cache *a, *b, *capped;
  rd_cache_config fifo = {0, 0, RD_CACHE_FIFO}, lru = {0, 0, RD_CACHE_LRU};
  rd_cache_config cap = {0, 3, RD_CACHE_FIFO};
  CHECK(rd_cache_open(&a, env, &fifo, NULL) == RD_OK);
  CHECK(rd_cache_open(&b, env, &lru, NULL) == RD_OK);
  CHECK(rd_cache_open(&capped, env, &cap, NULL) == RD_OK);
  rd_cache_set_time(a, 1000);
  rd_cache_set_time(b, 1000);
  CHECK(rd_cache_put(b, "k1", 2, "v1", 2, 0, NULL) == RD_OK);
  CHECK(rd_cache_put(b, "k2", 2, "v2", 2, 0, NULL) == RD_OK);
  CHECK(rd_cache_put(b, "k3", 2, "v3", 2, 10, NULL) == RD_OK);

  /* delete by another handle */
  CHECK(cache_is(a, "k1", "v1") && cache_is(a, "k2", "v2")); /* a's snapshot is kept */
  CHECK(rd_cache_delete(b, "k1", 2, NULL) == RD_OK);
  CHECK(!cache_has(a, "k1"));
  /* overwrite by another handle; a view taken before it keeps its bytes */
  rd_store_view old;
  CHECK(rd_cache_get(a, "k2", 2, &old, NULL) == RD_OK);
  CHECK(rd_cache_put(b, "k2", 2, "v2b", 3, 0, NULL) == RD_OK);
  CHECK(old.len == 2 && memcmp(old.data, "v2", 2) == 0);
  CHECK(cache_is(a, "k2", "v2b")); /* (a pooled txn while the view is held) */
  rd_store_view_release(&old);
  CHECK(cache_is(a, "k2", "v2b"));
  /* a new key */
  CHECK(!cache_has(a, "k4"));
  CHECK(rd_cache_put(b, "k4", 2, "v4", 2, 0, NULL) == RD_OK);
  CHECK(cache_is(a, "k4", "v4"));
  /* expiry with no commit in between: the clock decides on every get */
  CHECK(cache_is(a, "k3", "v3"));
  rd_cache_set_time(a, 1011);
  CHECK(!cache_has(a, "k3"));
  CHECK(cache_is(a, "k2", "v2b"));
  /* eviction by another handle's put */
  CHECK(rd_cache_put(capped, "k5", 2, "v5", 2, 0, NULL) == RD_OK); /* evicts the oldest */
  CHECK(!cache_has(a, "k2") && cache_is(a, "k5", "v5"));
  /* the idle drop, then gets as before */
  rd_cache_idle(a);
  rd_cache_idle(a);
  CHECK(cache_is(a, "k4", "v4"));

  /* another process deletes, overwrites, adds and grows the map while this
   * handle's snapshot is live */
  CHECK(cache_is(a, "k4", "v4") && cache_is(a, "k5", "v5"));
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  size_t before = info.map_size;
  pid_t pid = fork();
  if (pid == 0) {
    rd_store_env *ce = NULL;
    rd_cache *cc = NULL;
    rd_store_env_config ecfg = {64 << 10, 64 << 20};
    if (rd_store_env_open(&ce, d, RD_STORE_CACHE, &ecfg, NULL)) _exit(10);
    if (rd_cache_open(&cc, ce, NULL, NULL)) _exit(11);
    if (rd_cache_delete(cc, "k4", 2, NULL)) _exit(12);
    if (rd_cache_put(cc, "k5", 2, "v5c", 3, 0, NULL)) _exit(13);
    char val[4000];
    memset(val, 'c', sizeof val);
    for (int i = 0; i < 300; i++) {
      char k[32];
      snprintf(k, sizeof k, "c%d", i);
      if (rd_cache_put(cc, k, strlen(k), val, sizeof val, 0, NULL)) _exit(14);
    }
    rd_cache_close(cc);
    rd_store_env_close(ce);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(!cache_has(a, "k4"));
  CHECK(cache_is(a, "k5", "v5c"));
  CHECK(cache_has(a, "c0") && cache_has(a, "c299"));
  rd_store_env_info_get(env, &info);
  CHECK(info.map_size > before);

  /* this process grows the map through another handle while a's snapshot
   * is live: the snapshot is dropped before the remap, a's gets go on */
  CHECK(cache_is(a, "k5", "v5c"));
  before = info.map_size;
  char big[8000];
  memset(big, 'g', sizeof big);
  for (int i = 0; i < 400; i++) {
    char k[32];
    snprintf(k, sizeof k, "g%d", i);
    CHECK(rd_cache_put(b, k, strlen(k), big, sizeof big, 0, NULL) == RD_OK);
  }
  rd_store_env_info_get(env, &info);
  CHECK(info.map_size > before);
  CHECK(cache_is(a, "k5", "v5c") && cache_has(a, "g399") && cache_has(a, "c299"));
  rd_store_view v;
  CHECK(rd_cache_get(a, "g0", 2, &v, NULL) == RD_OK && v.len == sizeof big &&
        memcmp(v.data, big, sizeof big) == 0);
  rd_store_view_release(&v);

  /* clear by another handle */
  CHECK(rd_cache_clear(b, NULL) == RD_OK);
  CHECK(!cache_has(a, "k5") && !cache_has(a, "g0"));
  rd_cache_close(capped);
  rd_cache_close(b);
  rd_cache_close(a);
  rd_store_env_close(env);
}

/* With the real clock, a fifo get checks expiry against the coarse clock
 * away from the expiry and the precise one near it: never a hit once the
 * entry's expiry has passed, and hits until then. */
TEST(cache_expiry_is_exact_with_the_real_clock) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 1 << 20, 64 << 20);
  rd_cache_policy pols[] = {RD_CACHE_FIFO, RD_CACHE_LRU};
  for (int p = 0; p < 2; p++) {
    rd_cache *c;
    rd_cache_config cfg = {0, 0, pols[p]};
    CHECK(rd_cache_open(&c, env, &cfg, NULL) == RD_OK);
    double put_at = rd__now();
    CHECK(rd_cache_put(c, "t", 1, "v", 1, 0.2, NULL) == RD_OK);
    double expires = put_at + 0.2;
    int hits = 0, late_hits = 0, rc;
    do {
      rd_store_view v;
      double before = rd__now();
      rc = rd_cache_get(c, "t", 1, &v, NULL);
      if (rc == RD_OK) {
        hits++;
        CHECK(v.expires_at >= expires && v.expires_at <= put_at + 0.2 + 0.5);
        if (before >= v.expires_at) late_hits++; /* checked past its expiry, yet a hit */
        expires = v.expires_at;
      }
      rd_store_view_release(&v);
      usleep(500);
    } while (rc == RD_OK && rd__now() < put_at + 5);
    CHECK(rc == RD_ENOENT);
    CHECK(hits > 1 && late_hits == 0);
    CHECK(rd__now() >= expires); /* the first miss came at or after expiry */
    CHECK(!cache_has(c, "t"));
    rd_cache_close(c);
  }
  rd_store_env_close(env);
}

/* The entries live in LMDB's main database beside the named databases'
 * records: counts, clear and eviction must see entries only, and a v1
 * file (entries in a named database) is rebuilt. */
TEST(cache_entries_in_the_main_database) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 0, 0);
  rd_cache *c;
  rd_cache_config cfg = {0, 5, RD_CACHE_FIFO};
  CHECK(rd_cache_open(&c, env, &cfg, NULL) == RD_OK);
  rd_cache_stats s;
  CHECK(rd_cache_stats_get(c, &s, NULL) == RD_OK && s.entries == 0);
  char longkey[601];
  memset(longkey, 'L', 600); /* stored under 'h' + its hash */
  longkey[600] = '\0';
  rd_cache_set_time(c, 2999);
  CHECK(rd_cache_put(c, longkey, 600, "long", 4, 0, NULL) == RD_OK);
  /* keys that sort near the databases' names */
  const char *k[] = {"eta", "expiry", "meta", "order", "zzz", "a"};
  for (int i = 0; i < 6; i++) {
    rd_cache_set_time(c, 3000 + i);
    CHECK(rd_cache_put(c, k[i], strlen(k[i]), "v", 1, 0, NULL) == RD_OK);
  }
  /* cap 5: the long key and "eta" were evicted, the named dbs untouched */
  CHECK(rd_cache_stats_get(c, &s, NULL) == RD_OK && s.entries == 5 && s.evictions == 2);
  rd_store_view v;
  CHECK(rd_cache_get(c, longkey, 600, &v, NULL) == RD_ENOENT);
  CHECK(cache_has(c, "meta") && cache_has(c, "order") && cache_has(c, "expiry"));
  CHECK(rd_cache_clear(c, NULL) == RD_OK);
  CHECK(rd_cache_stats_get(c, &s, NULL) == RD_OK && s.entries == 0 && s.bytes == 0);
  CHECK(!cache_has(c, "zzz") && !cache_has(c, "meta"));
  /* everything still works after the clear: put, ttl, sweep */
  rd_cache_set_time(c, 4000);
  CHECK(rd_cache_put(c, longkey, 600, "long", 4, 1, NULL) == RD_OK);
  CHECK(rd_cache_put(c, "b", 1, "v", 1, 0, NULL) == RD_OK);
  CHECK(cache_is(c, longkey, "long"));
  rd_cache_set_time(c, 4002);
  size_t removed = 0;
  CHECK(rd_cache_sweep(c, 0, &removed, NULL) == RD_OK && removed == 1);
  CHECK(rd_cache_stats_get(c, &s, NULL) == RD_OK && s.entries == 1);
  rd_cache_close(c);
  /* a file of the former format (v1) is rebuilt empty, and says why */
  CHECK(rd_store_raw_put(env, "meta", "format", 6, "rubberduck.cache.v1", 19, NULL) == RD_OK);
  rd_store_env_close(env);
  env = open_env(d, RD_STORE_CACHE, 0, 0);
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(info.rebuilt == 1 && strstr(info.rebuild_reason, "rubberduck.cache.v1") != NULL);
  CHECK(rd_cache_open(&c, env, NULL, NULL) == RD_OK);
  CHECK(!cache_has(c, "b"));
  CHECK(rd_cache_put(c, "b", 1, "v2", 2, 0, NULL) == RD_OK && cache_is(c, "b", "v2"));
  rd_cache_close(c);
  rd_store_env_close(env);
}

TEST(unusable_cache_file_is_rebuilt_and_data_file_refused) {
  char d[128], path[200];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_CACHE, 0, 0);
  rd_cache *c;
  CHECK(rd_cache_open(&c, env, NULL, NULL) == RD_OK);
  CHECK(rd_cache_put(c, "k", 1, "v", 1, 0, NULL) == RD_OK);
  CHECK(cache_has(c, "k")); /* the handle's read txn exists when it closes */
  rd_cache_close(c);
  rd_store_env_close(env);
  snprintf(path, sizeof path, "%s/cache.mdb", d);
  FILE *f = fopen(path, "r+b");
  CHECK(f != NULL);
  char junk[8192];
  memset(junk, 0x5a, sizeof junk);
  fwrite(junk, 1, sizeof junk, f);
  fclose(f);
  env = open_env(d, RD_STORE_CACHE, 0, 0);
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(info.rebuilt == 1 && info.rebuild_reason[0] != '\0');
  CHECK(rd_cache_open(&c, env, NULL, NULL) == RD_OK);
  CHECK(!cache_has(c, "k"));
  CHECK(rd_cache_put(c, "k2", 2, "v", 1, 0, NULL) == RD_OK && cache_has(c, "k2"));
  CHECK(cache_has(c, "k2") && !cache_has(c, "k"));
  rd_cache_close(c);
  rd_store_env_close(env);

  /* The data file is never thrown away: a clear error instead. */
  snprintf(path, sizeof path, "%s/data.mdb", d);
  tl_put_file(path, "this is not an LMDB file, but someone's data..........................");
  rd_store_env *de = NULL;
  rd_error err;
  int rc = rd_store_env_open(&de, d, RD_STORE_DATA, NULL, &err);
  CHECK(rc == RD_ECORRUPT);
  CHECK(strstr(err.message, "data.mdb") != NULL);
  struct stat st;
  CHECK(stat(path, &st) == 0 && st.st_size > 0);
}

TEST(map_grows_then_storage_full_loses_nothing) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 64 << 10, 256 << 10);
  char val[2000];
  memset(val, 'v', sizeof val);
  int i, rc = RD_OK;
  rd_error err;
  char key[32];
  for (i = 0; i < 1000 && rc == RD_OK; i++) {
    snprintf(key, sizeof key, "key%04d", i);
    rc = rd_kv_put(env, "fill", key, strlen(key), val, sizeof val, &err);
  }
  CHECK(rc == RD_EFULL);
  CHECK(strstr(err.message, "storage_full") != NULL);
  CHECK(strstr(err.message, "maximum map size") != NULL);
  int stored = i - 1;
  CHECK(stored > 40); /* more than 64 KiB's worth: the map grew */
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(info.map_size == 256 << 10);
  /* reads go on; every committed value is there */
  for (int j = 0; j < stored; j++) {
    snprintf(key, sizeof key, "key%04d", j);
    rd_store_view v;
    CHECK(rd_kv_get(env, "fill", key, strlen(key), &v, NULL) == RD_OK && v.len == sizeof val);
    rd_store_view_release(&v);
  }
  /* and deleting makes room again */
  for (int j = 0; j < 10; j++) {
    snprintf(key, sizeof key, "key%04d", j);
    CHECK(rd_kv_delete(env, "fill", key, strlen(key), NULL) == RD_OK);
  }
  CHECK(rd_kv_put(env, "fill", "again", 5, "small", 5, NULL) == RD_OK);
  rd_store_env_close(env);
  /* reopened: still all there */
  env = open_env(d, RD_STORE_DATA, 64 << 10, 256 << 10);
  snprintf(key, sizeof key, "key%04d", stored - 1);
  CHECK(kv_is(env, "fill", "again", 5, "small"));
  rd_store_view v;
  CHECK(rd_kv_get(env, "fill", key, strlen(key), &v, NULL) == RD_OK);
  rd_store_view_release(&v);
  rd_store_env_close(env);
}

TEST(full_disk_is_a_clear_error) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_DATA, 0, 0);
  CHECK(rd_kv_put(env, "ns", "before", 6, "kept", 4, NULL) == RD_OK);
  rd_store_env_close(env);
  pid_t pid = fork();
  if (pid == 0) {
    /* A file size limit stands in for a full disk: writes past it fail
     * with EFBIG, as they would with ENOSPC. */
    signal(SIGXFSZ, SIG_IGN);
    rd_store_env *ce = NULL;
    rd_store_env_config cfg = {0, 0};
    if (rd_store_env_open(&ce, d, RD_STORE_DATA, &cfg, NULL)) _exit(10);
    struct stat st;
    char path[200];
    snprintf(path, sizeof path, "%s/data.mdb", d);
    stat(path, &st);
    struct rlimit rl = {(rlim_t)st.st_size + 8192, (rlim_t)st.st_size + 8192};
    setrlimit(RLIMIT_FSIZE, &rl);
    char val[4096];
    memset(val, 'x', sizeof val);
    rd_error err;
    int rc = RD_OK;
    for (int i = 0; i < 200 && rc == RD_OK; i++) {
      char key[16];
      snprintf(key, sizeof key, "k%d", i);
      rc = rd_kv_put(ce, "ns", key, strlen(key), val, sizeof val, &err);
    }
    if (rc != RD_EFULL) { fprintf(stderr, "full disk: rc %d: %s\n", rc, err.message); _exit(11); }
    if (!strstr(err.message, "disk is full")) _exit(12);
    /* reads go on */
    rd_store_view v;
    if (rd_kv_get(ce, "ns", "before", 6, &v, NULL) != RD_OK) _exit(13);
    rd_store_view_release(&v);
    rd_store_env_close(ce);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status)) fprintf(stderr, "child status %d\n", status);
  env = open_env(d, RD_STORE_DATA, 0, 0);
  CHECK(kv_is(env, "ns", "before", 6, "kept"));
  CHECK(rd_kv_put(env, "ns", "after", 5, "ok", 2, NULL) == RD_OK);
  rd_store_env_close(env);
}

static int die_in_txn(MDB_txn *txn, void *ud, rd_error *err) {
  (void)err;
  rd_store_env *env = ud;
  MDB_val k = {3, "ns\x01"}, v = {9, "uncommitted"};
  mdb_put(txn, rd__store_dbi(env, RD__DB_META), &k, &v, 0);
  raise(SIGKILL);
  return 0;
}

TEST(crash_in_a_write_txn_recovers) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_DATA, 0, 0);
  CHECK(rd_kv_put(env, "ns", "acked", 5, "yes", 3, NULL) == RD_OK);
  rd_store_env_close(env);
  /* A holder process keeps the env open (as a second engine would), so
   * the lock table outlives the crash and the dead reader stays in it. */
  int ready[2], quit[2];
  CHECK(pipe(ready) == 0 && pipe(quit) == 0);
  pid_t holder = fork();
  if (holder == 0) {
    close(ready[0]);
    close(quit[1]);
    rd_store_env *he = NULL;
    if (rd_store_env_open(&he, d, RD_STORE_DATA, NULL, NULL)) _exit(10);
    char c = 'r';
    if (write(ready[1], &c, 1) != 1) _exit(11);
    if (read(quit[0], &c, 1) < 0) _exit(12);
    rd_store_env_close(he);
    _exit(0);
  }
  close(ready[1]);
  close(quit[0]);
  char c;
  CHECK(read(ready[0], &c, 1) == 1);
  pid_t pid = fork();
  if (pid == 0) {
    rd_store_env *ce = NULL;
    if (rd_store_env_open(&ce, d, RD_STORE_DATA, NULL, NULL)) _exit(10);
    rd_store_view v; /* a reader slot left behind */
    if (rd_kv_get(ce, "ns", "acked", 5, &v, NULL)) _exit(11);
    rd__store_write(ce, die_in_txn, ce, NULL); /* dies holding the writer lock */
    _exit(13);
  }
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  env = open_env(d, RD_STORE_DATA, 0, 0);
  rd_store_env_info info;
  rd_store_env_info_get(env, &info);
  CHECK(info.stale_readers >= 1);
  CHECK(kv_is(env, "ns", "acked", 5, "yes"));
  rd_store_view v;
  CHECK(rd_store_raw_get(env, "meta", "ns\x01", 3, &v, NULL) == RD_ENOENT);
  /* the dead writer's lock was recovered: writes work */
  CHECK(rd_kv_put(env, "ns", "after", 5, "ok", 2, NULL) == RD_OK);
  CHECK(kv_is(env, "ns", "after", 5, "ok"));
  rd_store_env_close(env);
  close(quit[1]);
  waitpid(holder, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(ready[0]);
}

static void rec_fill(rd_history_record *r, char *id, const char *tool, const char *status,
                     const char *kind, const char *caller) {
  rd_ulid_new(id);
  memset(r, 0, sizeof *r);
  r->id = id;
  r->tool = tool;
  r->version = "1.0.0";
  r->status = status;
  r->kind = kind;
  r->caller = caller;
  r->params_hash = "00";
  r->started_at = (double)rd_ulid_time_ms(id) / 1000.0;
  r->duration_ms = 1.5;
  r->attempts = 1;
}

typedef struct rows { int n; char ids[64][RD_ULID_LEN + 1]; char tools[64][16]; } rows;

static int row_cb(const rd_history_record *r, void *ud) {
  rows *rs = ud;
  if (rs->n < 64) {
    memcpy(rs->ids[rs->n], r->id, RD_ULID_LEN + 1);
    snprintf(rs->tools[rs->n], 16, "%s", r->tool);
  }
  rs->n++;
  return 0;
}

static int async_done;
static void on_committed(void *ud, int rc, const char *msg) {
  (void)ud; (void)msg;
  if (rc == RD_OK) __atomic_add_fetch(&async_done, 1, __ATOMIC_SEQ_CST);
}

TEST(history_append_query_prune) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 0, 0);
  rd_history *h;
  rd_history_config cfg = {1, 8};
  CHECK(rd_history_open(&h, env, &cfg, NULL) == RD_OK);
  char ids[30][RD_ULID_LEN + 1];
  rd_history_record r;
  for (int i = 0; i < 20; i++) {
    rec_fill(&r, ids[i], i % 2 ? "odd" : "even", i % 5 == 0 ? "error" : "ok",
             i % 5 == 0 ? "timeout" : "", i < 10 ? "alice" : "bob");
    CHECK(rd_history_append(h, &r, NULL) == RD_OK);
  }
  for (int i = 20; i < 30; i++) {
    rec_fill(&r, ids[i], "async", "ok", "", "carol");
    CHECK(rd_history_append_async(h, &r, on_committed, NULL, NULL) == RD_OK);
  }
  rd_history_close(h); /* commits what is queued */
  CHECK(async_done == 10);
  rd_error err;
  rec_fill(&r, ids[0], "x", "ok", "", "");
  r.id = "short";
  CHECK(rd_history_open(&h, env, NULL, NULL) == RD_OK);
  CHECK(rd_history_append(h, &r, &err) == RD_EINVAL);
  rd_history_close(h);

  uint64_t n;
  CHECK(rd_history_count(env, &n, NULL) == RD_OK && n == 30);
  rows rs = {0};
  char cur[RD_ULID_LEN + 1];
  rd_history_filter q = {0};
  q.limit = 4;
  CHECK(rd_history_query(env, &q, row_cb, &rs, cur, NULL) == RD_OK);
  CHECK(rs.n == 4 && strcmp(rs.ids[0], ids[29]) == 0 && strcmp(rs.ids[3], ids[26]) == 0);
  CHECK(strcmp(cur, ids[26]) == 0);
  memset(&rs, 0, sizeof rs);
  q.cursor = cur;
  CHECK(rd_history_query(env, &q, row_cb, &rs, cur, NULL) == RD_OK);
  CHECK(rs.n == 4 && strcmp(rs.ids[0], ids[25]) == 0);

  memset(&rs, 0, sizeof rs);
  rd_history_filter q2 = {0};
  q2.tool = "odd";
  q2.caller = "bob";
  CHECK(rd_history_query(env, &q2, row_cb, &rs, cur, NULL) == RD_OK);
  CHECK(rs.n == 5 && strcmp(rs.ids[0], ids[19]) == 0 && cur[0] == '\0');
  memset(&rs, 0, sizeof rs);
  rd_history_filter q3 = {0};
  q3.kind = "timeout";
  CHECK(rd_history_query(env, &q3, row_cb, &rs, cur, NULL) == RD_OK);
  CHECK(rs.n == 4); /* 0 5 10 15 */
  memset(&rs, 0, sizeof rs);
  rd_history_filter q4 = {0};
  q4.status = "error";
  q4.since = (double)rd_ulid_time_ms(ids[5]) / 1000.0;
  q4.until = (double)rd_ulid_time_ms(ids[10]) / 1000.0;
  CHECK(rd_history_query(env, &q4, row_cb, &rs, cur, NULL) == RD_OK);
  int has5 = 0, has10 = 0, has15 = 0;
  for (int i = 0; i < rs.n; i++) {
    if (!strcmp(rs.ids[i], ids[5])) has5 = 1;
    if (!strcmp(rs.ids[i], ids[10])) has10 = 1;
    if (!strcmp(rs.ids[i], ids[15])) has15 = 1;
  }
  CHECK(has5 && has10 && !has15);
  rd_history_filter bad = {0};
  bad.cursor = "not a cursor";
  CHECK(rd_history_query(env, &bad, row_cb, &rs, cur, &err) == RD_EINVAL);

  size_t removed;
  CHECK(rd_history_prune(env, 0, 25, 0, &removed, NULL) == RD_OK && removed == 5);
  CHECK(rd_history_count(env, &n, NULL) == RD_OK && n == 25);
  memset(&rs, 0, sizeof rs);
  CHECK(rd_history_query(env, &q3, row_cb, &rs, cur, NULL) == RD_OK);
  CHECK(rs.n == 3); /* record 0 went with its index keys */
  /* by age: everything is older than "now + 1 day - 1 s" minus 1 day... */
  CHECK(rd_history_prune(env, 1, 0, rd__now() + 3600, &removed, NULL) == RD_OK && removed == 25);
  CHECK(rd_history_count(env, &n, NULL) == RD_OK && n == 0);
  rd_store_env_close(env);
}

static void swap_values(rd_store_env *env, uint64_t a, uint64_t b) {
  unsigned char ka[8], kb[8];
  rd__store_be64(ka, a);
  rd__store_be64(kb, b);
  rd_store_view va, vb;
  CHECK(rd_store_raw_get(env, "audit", ka, 8, &va, NULL) == RD_OK);
  char *ca = malloc(va.len);
  size_t la = va.len;
  memcpy(ca, va.data, la);
  rd_store_view_release(&va);
  CHECK(rd_store_raw_get(env, "audit", kb, 8, &vb, NULL) == RD_OK);
  char *cb = malloc(vb.len);
  size_t lb = vb.len;
  memcpy(cb, vb.data, lb);
  rd_store_view_release(&vb);
  CHECK(rd_store_raw_put(env, "audit", ka, 8, cb, lb, NULL) == RD_OK);
  CHECK(rd_store_raw_put(env, "audit", kb, 8, ca, la, NULL) == RD_OK);
  free(ca);
  free(cb);
}

static rd_store_env *audit_env(int n) {
  char d[128];
  rd_store_env *env = open_env(fresh_dir(d, sizeof d), RD_STORE_DATA, 0, 0);
  for (int i = 1; i <= n; i++) {
    char data[64];
    snprintf(data, sizeof data, "{\"i\":%d}", i);
    uint64_t seq;
    CHECK(rd_audit_append(env, "tool.loaded", data, strlen(data), 1000.0 + i, &seq, NULL) == RD_OK);
    CHECK(seq == (uint64_t)i);
  }
  return env;
}

TEST(audit_chain_detects_tampering) {
  rd_audit_report rep;
  rd_store_env *env = audit_env(6);
  CHECK(rd_audit_verify(env, &rep, NULL) == RD_OK && rep.ok && rep.entries == 6);

  /* edited: one byte of entry 3's data */
  unsigned char k[8];
  rd__store_be64(k, 3);
  rd_store_view v;
  CHECK(rd_store_raw_get(env, "audit", k, 8, &v, NULL) == RD_OK);
  char *copy = malloc(v.len);
  size_t len = v.len;
  memcpy(copy, v.data, len);
  rd_store_view_release(&v);
  copy[len - 2] = '9';
  CHECK(rd_store_raw_put(env, "audit", k, 8, copy, len, NULL) == RD_OK);
  free(copy);
  CHECK(rd_audit_verify(env, &rep, NULL) == RD_OK);
  CHECK(!rep.ok && rep.bad_seq == 3 && strstr(rep.problem, "edited") != NULL);
  rd_store_env_close(env);

  /* removed from the middle */
  env = audit_env(6);
  rd__store_be64(k, 4);
  CHECK(rd_store_raw_delete(env, "audit", k, 8, NULL) == RD_OK);
  CHECK(rd_audit_verify(env, &rep, NULL) == RD_OK);
  CHECK(!rep.ok && rep.bad_seq == 4 && strstr(rep.problem, "removed") != NULL);
  rd_store_env_close(env);

  /* removed at the end */
  env = audit_env(6);
  rd__store_be64(k, 6);
  CHECK(rd_store_raw_delete(env, "audit", k, 8, NULL) == RD_OK);
  CHECK(rd_audit_verify(env, &rep, NULL) == RD_OK);
  CHECK(!rep.ok && rep.bad_seq == 6 && strstr(rep.problem, "removed") != NULL);
  rd_store_env_close(env);

  /* reordered */
  env = audit_env(6);
  swap_values(env, 2, 5);
  CHECK(rd_audit_verify(env, &rep, NULL) == RD_OK);
  CHECK(!rep.ok && rep.bad_seq == 2 && strstr(rep.problem, "reordered") != NULL);
  /* the chain goes on after a verify failure: appends still work */
  CHECK(rd_audit_append(env, "x", "{}", 2, 1.0, NULL, NULL) == RD_OK);
  rd_store_env_close(env);
}

TEST(a_second_process_reads_while_this_one_writes) {
  char d[128];
  fresh_dir(d, sizeof d);
  rd_store_env *env = open_env(d, RD_STORE_DATA, 0, 0);
  rd_history *h;
  CHECK(rd_history_open(&h, env, NULL, NULL) == RD_OK);
  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[1]);
    rd_store_env *re = NULL;
    if (rd_store_env_open(&re, d, RD_STORE_DATA, NULL, NULL)) _exit(10);
    uint64_t last = 0, n = 0;
    char c;
    int reads = 0;
    /* read until the parent closes the pipe; counts never go back */
    for (;;) {
      if (rd_history_count(re, &n, NULL)) _exit(11);
      if (n < last) _exit(12);
      last = n;
      reads++;
      struct timeval tv = {0, 1000};
      fd_set fds;
      FD_ZERO(&fds);
      FD_SET(pipefd[0], &fds);
      if (select(pipefd[0] + 1, &fds, NULL, NULL, &tv) > 0 && read(pipefd[0], &c, 1) <= 0) break;
    }
    if (rd_history_count(re, &n, NULL) || n != 50) _exit(13);
    rd_store_env_close(re);
    _exit(0);
  }
  close(pipefd[0]);
  char id[RD_ULID_LEN + 1];
  rd_history_record r;
  for (int i = 0; i < 50; i++) {
    rec_fill(&r, id, "t", "ok", "", "p");
    CHECK(rd_history_append(h, &r, NULL) == RD_OK);
  }
  close(pipefd[1]);
  int status;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status)) fprintf(stderr, "reader status %d\n", status);
  rd_history_close(h);
  rd_store_env_close(env);
}

static void cleanup(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  if (system(cmd) != 0) fprintf(stderr, "cleanup failed: %s\n", cmd);
}

int main(void) {
  snprintf(base, sizeof base, "/tmp/rd_test_store.XXXXXX");
  if (!mkdtemp(base)) { perror("mkdtemp"); return 1; }
  atexit(cleanup);
  RUN_TESTS();
}
