/*
 * l_store.c — core.store: the raw binding of the storage layer
 * (core/store/store.h). lua/rubberduck/store.lua wraps it.
 *
 *   local env = core.store.open(dir, "data" | "cache" [, {map_size=, max_map_size=}])
 *   env:info() -> { path, map_size, max_map_size, used_bytes, stale_readers,
 *                   rebuilt, rebuild_reason }
 *   env:kv_put(ns, key, value) -> true
 *   env:kv_get(ns, key) -> value | nil (absent)
 *   env:kv_delete(ns, key) -> true | false (absent)
 *   env:kv_list(ns, prefix, cursor, limit) -> { {key=, value=}, ... }, next_cursor | nil
 *   env:audit_append(event, data_json, time) -> seq
 *   env:audit_append_batch({ {event, data_json, time}, ... }) -> first seq
 *   env:audit_list(from_seq, limit) -> { {seq=, time=, event=, data=, hash=, prev=}, ... }
 *   env:audit_verify() -> { ok=, entries=, bad_seq=, problem= }
 *   env:history_query{ tool=, status=, kind=, caller=, since=, until=, cursor=, limit= }
 *       -> rows, next_cursor | nil
 *   env:history_prune(max_age_s, max_count, now) -> removed
 *   env:history_count() -> n
 *   env:raw_put(db, k, v) / env:raw_get(db, k) / env:raw_delete(db, k)
 *   env:close()
 *   local c = core.store.cache(env, { max_bytes=, max_entries=, policy= })
 *   c:get(key) -> value | nil;  c:put(key, value, ttl_s) -> true
 *   c:delete(key) -> true | false;  c:clear(); c:sweep([max]) -> removed
 *   c:flush(); c:stats() -> {hits, misses, evictions, expirations, puts, entries, bytes}
 *   c:set_time(t); c:close()
 *   local h = core.store.history(env, { group_ms=, max_batch= })
 *   h:append(rec) -> true    (returns once the record is durable)
 *   h:append_async(rec, loop [, fn]) -> true   fn(ok, message) runs on the loop
 *                                           once the record is durable; without
 *                                           fn, nobody is told (fire and forget)
 *   h:close()
 *   core.store.hash(s1, s2, ...) -> 64 hex chars: BLAKE2b-256 of the parts,
 *                                   each preceded by its length
 *
 * Expected failures are values: nil, message, code name ("storage_full",
 * "corrupt", "limit", ...). Misuse (wrong types, a closed handle) raises.
 */
#include "rd.h"
#include "lua/bind.h"
#include "lua/loop.h"
#include "store/store.h"

#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define ENV_MT "rubberduck.store.env"
#define CACHE_MT "rubberduck.store.cache"
#define HIST_MT "rubberduck.store.history"

typedef struct env_ud { rd_store_env *env; } env_ud;
/* A cache handle. `c` first: the FFI read path (store_ffi.lua) reads it
 * (NULL once closed). `view` is the handle's one Lua view (store_ffi's
 * viewer): the value it points at stays mapped until the next viewer get,
 * a write through this handle, idle, close or collection, which all
 * release it (ud_view_drop) and bump `gen`; a viewer whose gen is not
 * the current one refuses to read. */
typedef struct cache_ud {
  rd_cache *c;
  rd_store_view view;
  double gen;             /* a double: Lua reads it unboxed, exact to 2^53 */
} cache_ud;

static void ud_view_drop(cache_ud *u) {
  if (u->view.txn_) {
    rd_store_view_release(&u->view);
    u->gen++;
  }
}


static rd_store_env *check_env(lua_State *L, int i) {
  env_ud *u = luaL_checkudata(L, i, ENV_MT);
  if (!u->env) luaL_argerror(L, i, "store is closed");
  return u->env;
}

/* The handle at i, its Lua view released: every method but get goes
 * through here, so a write never runs while the handle's view pins a
 * snapshot (nor waits on it to grow the map). */
static rd_cache *check_cache(lua_State *L, int i) {
  cache_ud *u = luaL_checkudata(L, i, CACHE_MT);
  if (!u->c) luaL_argerror(L, i, "cache is closed");
  ud_view_drop(u);
  return u->c;
}

static size_t opt_size(lua_State *L, int t, const char *k) {
  if (!lua_istable(L, t)) return 0;
  lua_getfield(L, t, k);
  double d = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
  lua_pop(L, 1);
  return d > 0 ? (size_t)d : 0;
}

static const char *opt_str(lua_State *L, int t, const char *k, size_t *len) {
  lua_getfield(L, t, k);
  const char *s = NULL;
  if (lua_type(L, -1) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  else if (!lua_isnil(L, -1)) luaL_error(L, "field %s: expected a string", k);
  lua_pop(L, 1); /* the string stays alive in the table */
  return s;
}

static double opt_num(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  double d = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
  lua_pop(L, 1);
  return d;
}

/* ---- env --------------------------------------------------------------------- */

static int l_open(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  static const char *const kinds[] = {"data", "cache", NULL};
  int kind = luaL_checkoption(L, 2, "data", kinds);
  rd_store_env_config cfg = {opt_size(L, 3, "map_size"), opt_size(L, 3, "max_map_size")};
  env_ud *u = lua_newuserdata(L, sizeof *u);
  u->env = NULL;
  luaL_getmetatable(L, ENV_MT);
  lua_setmetatable(L, -2);
  rd_error err;
  if (rd_store_env_open(&u->env, dir, (rd_store_kind)kind, &cfg, &err) != RD_OK)
    return rd__lua_fail(L, &err);
  return 1;
}

static int l_env_close(lua_State *L) {
  env_ud *u = luaL_checkudata(L, 1, ENV_MT);
  if (u->env) { rd_store_env_close(u->env); u->env = NULL; }
  return 0;
}

static int l_env_info(lua_State *L) {
  rd_store_env_info i;
  rd_store_env_info_get(check_env(L, 1), &i);
  lua_createtable(L, 0, 7);
  lua_pushstring(L, i.path); lua_setfield(L, -2, "path");
  lua_pushnumber(L, (double)i.map_size); lua_setfield(L, -2, "map_size");
  lua_pushnumber(L, (double)i.max_map_size); lua_setfield(L, -2, "max_map_size");
  lua_pushnumber(L, (double)i.used_bytes); lua_setfield(L, -2, "used_bytes");
  lua_pushinteger(L, i.stale_readers); lua_setfield(L, -2, "stale_readers");
  lua_pushboolean(L, i.rebuilt); lua_setfield(L, -2, "rebuilt");
  lua_pushstring(L, i.rebuild_reason); lua_setfield(L, -2, "rebuild_reason");
  return 1;
}

static int l_kv_put(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *ns = luaL_checkstring(L, 2);
  size_t kl, vl;
  const char *k = luaL_checklstring(L, 3, &kl);
  const char *v = luaL_checklstring(L, 4, &vl);
  rd_error err;
  if (rd_kv_put(env, ns, k, kl, v, vl, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_kv_get(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *ns = luaL_checkstring(L, 2);
  size_t kl;
  const char *k = luaL_checklstring(L, 3, &kl);
  rd_store_view v;
  rd_error err;
  int rc = rd_kv_get(env, ns, k, kl, &v, &err);
  if (rc == RD_ENOENT) { lua_pushnil(L); return 1; }
  if (rc) return rd__lua_fail(L, &err);
  lua_pushlstring(L, v.data, v.len);
  rd_store_view_release(&v);
  return 1;
}

static int l_kv_delete(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *ns = luaL_checkstring(L, 2);
  size_t kl;
  const char *k = luaL_checklstring(L, 3, &kl);
  rd_error err;
  int rc = rd_kv_delete(env, ns, k, kl, &err);
  if (rc == RD_ENOENT) { lua_pushboolean(L, 0); return 1; }
  if (rc) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

typedef struct list_ctx { lua_State *L; int n; } list_ctx;

static int kv_item(const void *key, size_t klen, const void *val, size_t vlen, void *ud) {
  list_ctx *c = ud;
  lua_State *L = c->L;
  lua_createtable(L, 0, 2);
  lua_pushlstring(L, key, klen);
  lua_setfield(L, -2, "key");
  lua_pushlstring(L, val, vlen);
  lua_setfield(L, -2, "value");
  lua_rawseti(L, -2, ++c->n);
  return 0;
}

static int l_kv_list(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *ns = luaL_checkstring(L, 2);
  size_t pl = 0;
  const char *prefix = luaL_optlstring(L, 3, "", &pl);
  const char *cursor = luaL_optstring(L, 4, NULL);
  size_t limit = (size_t)luaL_optnumber(L, 5, 100);
  char next[RD_KV_CURSOR_MAX];
  rd_error err;
  lua_newtable(L);
  list_ctx c = {L, 0};
  if (rd_kv_list(env, ns, prefix, pl, cursor, limit, kv_item, &c, next, &err) != RD_OK)
    return rd__lua_fail(L, &err);
  if (next[0]) lua_pushstring(L, next); else lua_pushnil(L);
  return 2;
}

static void tohex(char *out, const unsigned char *p, size_t n) {
  static const char H[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) { out[2 * i] = H[p[i] >> 4]; out[2 * i + 1] = H[p[i] & 15]; }
  out[2 * n] = '\0';
}

static int l_audit_append(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *ev = luaL_checkstring(L, 2);
  size_t dl = 0;
  const char *data = luaL_optlstring(L, 3, "", &dl);
  double t = luaL_optnumber(L, 4, rd__now());
  uint64_t seq;
  rd_error err;
  if (rd_audit_append(env, ev, data, dl, t, &seq, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushnumber(L, (double)seq);
  return 1;
}

/* env:audit_append_batch({ {event, data, time}, ... }) -> first seq */
static int l_audit_append_batch(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  size_t n = lua_objlen(L, 2);
  if (n == 0) { lua_pushnumber(L, 0); return 1; }
  if (n > 4096) return luaL_error(L, "audit: at most 4096 entries a batch");
  const char **ev = rd__malloc(n * sizeof *ev), **data = rd__malloc(n * sizeof *data);
  size_t *dl = rd__malloc(n * sizeof *dl);
  double *t = rd__malloc(n * sizeof *t);
  int ok = ev && data && dl && t;
  for (size_t i = 0; ok && i < n; i++) {
    lua_rawgeti(L, 2, (int)i + 1);
    if (!lua_istable(L, -1)) { ok = -1; lua_pop(L, 1); break; }
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_rawgeti(L, -3, 3);
    ev[i] = lua_tostring(L, -3);
    data[i] = lua_tolstring(L, -2, &dl[i]);
    t[i] = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : rd__now();
    if (!ev[i]) ok = -1;
    lua_pop(L, 4); /* strings stay alive in the entry tables */
  }
  uint64_t first = 0;
  rd_error err;
  int rc = ok == 1 ? rd_audit_append_batch(env, n, ev, data, dl, t, &first, &err) : RD_OK;
  rd__freemem(ev); rd__freemem(data); rd__freemem(dl); rd__freemem(t);
  if (ok == 0) return luaL_error(L, "out of memory");
  if (ok < 0) return luaL_error(L, "audit: each entry must be { event, data, time }");
  if (rc) return rd__lua_fail(L, &err);
  lua_pushnumber(L, (double)first);
  return 1;
}

static int audit_item(const rd_audit_entry *e, void *ud) {
  list_ctx *c = ud;
  lua_State *L = c->L;
  char hex[65];
  lua_createtable(L, 0, 6);
  lua_pushnumber(L, (double)e->seq); lua_setfield(L, -2, "seq");
  lua_pushnumber(L, e->time); lua_setfield(L, -2, "time");
  lua_pushlstring(L, e->event, e->event_len); lua_setfield(L, -2, "event");
  lua_pushlstring(L, e->data, e->data_len); lua_setfield(L, -2, "data");
  tohex(hex, e->hash, 32); lua_pushstring(L, hex); lua_setfield(L, -2, "hash");
  tohex(hex, e->prev, 32); lua_pushstring(L, hex); lua_setfield(L, -2, "prev");
  lua_rawseti(L, -2, ++c->n);
  return 0;
}

static int l_audit_list(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  uint64_t from = (uint64_t)luaL_optnumber(L, 2, 1);
  size_t limit = (size_t)luaL_optnumber(L, 3, 0);
  rd_error err;
  lua_newtable(L);
  list_ctx c = {L, 0};
  if (rd_audit_list(env, from, limit, audit_item, &c, &err) != RD_OK) return rd__lua_fail(L, &err);
  return 1;
}

static int l_audit_verify(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  rd_audit_report r;
  rd_error err;
  if (rd_audit_verify(env, &r, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_createtable(L, 0, 4);
  lua_pushboolean(L, r.ok); lua_setfield(L, -2, "ok");
  lua_pushnumber(L, (double)r.entries); lua_setfield(L, -2, "entries");
  if (!r.ok) {
    lua_pushnumber(L, (double)r.bad_seq); lua_setfield(L, -2, "bad_seq");
    lua_pushstring(L, r.problem); lua_setfield(L, -2, "problem");
  }
  return 1;
}

static void push_record(lua_State *L, const rd_history_record *r) {
  lua_createtable(L, 0, 14);
#define S(f) lua_pushstring(L, r->f); lua_setfield(L, -2, #f)
#define N(f) lua_pushnumber(L, (double)r->f); lua_setfield(L, -2, #f)
  S(id); S(tool); S(version); S(status); S(kind); S(caller); S(params_hash);
  N(started_at); N(duration_ms); N(cpu_ms); N(peak_memory_bytes); N(attempts);
#undef S
#undef N
  if (r->params && *r->params) { lua_pushstring(L, r->params); lua_setfield(L, -2, "params"); }
  if (r->context && *r->context) { lua_pushstring(L, r->context); lua_setfield(L, -2, "context"); }
  lua_pushboolean(L, r->cached);
  lua_setfield(L, -2, "cached");
}

static int hist_row(const rd_history_record *r, void *ud) {
  list_ctx *c = ud;
  push_record(c->L, r);
  lua_rawseti(c->L, -2, ++c->n);
  return 0;
}

static int l_history_query(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  rd_history_filter q;
  memset(&q, 0, sizeof q);
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    q.tool = opt_str(L, 2, "tool", NULL);
    q.status = opt_str(L, 2, "status", NULL);
    q.kind = opt_str(L, 2, "kind", NULL);
    q.caller = opt_str(L, 2, "caller", NULL);
    q.cursor = opt_str(L, 2, "cursor", NULL);
    q.since = opt_num(L, 2, "since");
    q.until = opt_num(L, 2, "until");
    q.limit = (size_t)opt_num(L, 2, "limit");
  }
  char next[RD_ULID_LEN + 1];
  rd_error err;
  lua_newtable(L);
  list_ctx c = {L, 0};
  if (rd_history_query(env, &q, hist_row, &c, next, &err) != RD_OK) return rd__lua_fail(L, &err);
  if (next[0]) lua_pushstring(L, next); else lua_pushnil(L);
  return 2;
}

static int l_history_prune(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  double age = luaL_optnumber(L, 2, 0);
  double count = luaL_optnumber(L, 3, 0);
  double now = luaL_optnumber(L, 4, rd__now());
  size_t removed;
  rd_error err;
  if (rd_history_prune(env, age, count > 0 ? (uint64_t)count : 0, now, &removed, &err) != RD_OK)
    return rd__lua_fail(L, &err);
  lua_pushnumber(L, (double)removed);
  return 1;
}

static int l_history_count(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  uint64_t n;
  rd_error err;
  if (rd_history_count(env, &n, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushnumber(L, (double)n);
  return 1;
}

static int l_raw_put(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *db = luaL_checkstring(L, 2);
  size_t kl, vl;
  const char *k = luaL_checklstring(L, 3, &kl), *v = luaL_checklstring(L, 4, &vl);
  rd_error err;
  if (rd_store_raw_put(env, db, k, kl, v, vl, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_raw_get(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *db = luaL_checkstring(L, 2);
  size_t kl;
  const char *k = luaL_checklstring(L, 3, &kl);
  rd_store_view v;
  rd_error err;
  int rc = rd_store_raw_get(env, db, k, kl, &v, &err);
  if (rc == RD_ENOENT) { lua_pushnil(L); return 1; }
  if (rc) return rd__lua_fail(L, &err);
  lua_pushlstring(L, v.data, v.len);
  rd_store_view_release(&v);
  return 1;
}

static int l_raw_delete(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  const char *db = luaL_checkstring(L, 2);
  size_t kl;
  const char *k = luaL_checklstring(L, 3, &kl);
  rd_error err;
  int rc = rd_store_raw_delete(env, db, k, kl, &err);
  if (rc == RD_ENOENT) { lua_pushboolean(L, 0); return 1; }
  if (rc) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- cache ------------------------------------------------------------------- */

static int l_cache(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  rd_cache_config cfg = {opt_size(L, 2, "max_bytes"), opt_size(L, 2, "max_entries"), RD_CACHE_LRU};
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "policy");
    const char *p = lua_tostring(L, -1);
    if (p) {
      if (strcmp(p, "lru") == 0) cfg.policy = RD_CACHE_LRU;
      else if (strcmp(p, "lfu") == 0) cfg.policy = RD_CACHE_LFU;
      else if (strcmp(p, "fifo") == 0) cfg.policy = RD_CACHE_FIFO;
      else return luaL_error(L, "cache policy: expected one of lru, lfu, fifo, got %s", p);
    }
    lua_pop(L, 1);
  }
  cache_ud *u = lua_newuserdata(L, sizeof *u);
  memset(u, 0, sizeof *u);
  luaL_getmetatable(L, CACHE_MT);
  lua_setmetatable(L, -2);
  rd_error err;
  if (rd_cache_open(&u->c, env, &cfg, &err) != RD_OK) return rd__lua_fail(L, &err);
  return 1;
}

/* The hot path: the cache metatable is upvalue 1, so checking the handle
 * is one pointer compare instead of luaL_checkudata's registry lookup. */
static int l_cache_get(lua_State *L) {
  cache_ud *u = lua_touserdata(L, 1);
  if (!u || !lua_getmetatable(L, 1) || !lua_rawequal(L, -1, lua_upvalueindex(1)))
    return luaL_typerror(L, 1, CACHE_MT);
  lua_pop(L, 1);
  if (!u->c) return luaL_argerror(L, 1, "cache is closed");
  size_t kl;
  const char *k = luaL_checklstring(L, 2, &kl);
  rd_store_view v;
  rd_error err;
  int rc = rd_cache_get(u->c, k, kl, &v, &err);
  if (rc == RD_ENOENT) { lua_pushnil(L); return 1; }
  if (rc) return rd__lua_fail(L, &err);
  lua_pushlstring(L, v.data, v.len); /* straight from the map into the Lua string */
  rd_store_view_release(&v);
  return 1;
}

static int l_cache_put(lua_State *L) {
  rd_cache *c = check_cache(L, 1);
  size_t kl, vl;
  const char *k = luaL_checklstring(L, 2, &kl), *v = luaL_checklstring(L, 3, &vl);
  double ttl = luaL_optnumber(L, 4, 0);
  rd_error err;
  if (rd_cache_put(c, k, kl, v, vl, ttl, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_cache_delete(lua_State *L) {
  rd_cache *c = check_cache(L, 1);
  size_t kl;
  const char *k = luaL_checklstring(L, 2, &kl);
  rd_error err;
  int rc = rd_cache_delete(c, k, kl, &err);
  if (rc == RD_ENOENT) { lua_pushboolean(L, 0); return 1; }
  if (rc) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_cache_clear(lua_State *L) {
  rd_error err;
  if (rd_cache_clear(check_cache(L, 1), &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_cache_sweep(lua_State *L) {
  rd_cache *c = check_cache(L, 1);
  size_t max = (size_t)luaL_optnumber(L, 2, 0), removed;
  rd_error err;
  if (rd_cache_sweep(c, max, &removed, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushnumber(L, (double)removed);
  return 1;
}

static int l_cache_flush(lua_State *L) {
  rd_error err;
  if (rd_cache_flush(check_cache(L, 1), &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* c:idle(): drop the snapshot the handle keeps between gets. */
static int l_cache_idle(lua_State *L) {
  rd_cache_idle(check_cache(L, 1));
  return 0;
}

static int l_cache_stats(lua_State *L) {
  rd_cache_stats s;
  rd_error err;
  if (rd_cache_stats_get(check_cache(L, 1), &s, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_createtable(L, 0, 7);
#define N(f) lua_pushnumber(L, (double)s.f); lua_setfield(L, -2, #f)
  N(hits); N(misses); N(evictions); N(expirations); N(puts); N(entries); N(bytes);
#undef N
  return 1;
}

static int l_cache_set_time(lua_State *L) {
  rd_cache_set_time(check_cache(L, 1), luaL_optnumber(L, 2, 0));
  return 0;
}

static int l_cache_close(lua_State *L) {
  cache_ud *u = luaL_checkudata(L, 1, CACHE_MT);
  ud_view_drop(u);
  if (u->c) { rd_cache_close(u->c); u->c = NULL; }
  return 0;
}

/* ---- history -------------------------------------------------------------------
 * append_async hands its callback to the loop through a bridge: a small
 * object with an (unref'd) uv handle on the loop, so closing the loop tells
 * the bridge, and a commit that ends after that drops its callback instead
 * of posting to a freed loop. */

typedef struct bridge {
  rd_uvowner owner;       /* first: see loop.h */
  uv_async_t h;
  pthread_mutex_t mu;
  rd_loop *loop;          /* NULL once the loop closed */
  int refs;               /* the uv handle + the history ud */
  int waiting;            /* appends not yet reported (loop thread only);
                             while > 0 the handle keeps the loop alive */
} bridge;

typedef struct hist_ud {
  rd_history *h;
  bridge *b;
} hist_ud;

typedef struct pending {
  rd_done done;           /* first */
  bridge *b;
  rd_loop *loop;
  int fnref;
  int rc;
  char msg[RD_ERROR_MSG_MAX];
} pending;

static void bridge_unref(bridge *b) {
  pthread_mutex_lock(&b->mu);
  int left = --b->refs;
  pthread_mutex_unlock(&b->mu);
  if (left == 0) {
    pthread_mutex_destroy(&b->mu);
    rd__freemem(b);
  }
}

static void bridge_closed(uv_handle_t *h) { bridge_unref(h->data); }

static void bridge_close_all(rd_uvowner *o) {
  bridge *b = (bridge *)o;
  pthread_mutex_lock(&b->mu);
  b->loop = NULL;
  pthread_mutex_unlock(&b->mu);
  uv_close((uv_handle_t *)&b->h, bridge_closed);
}

static void noop_async(uv_async_t *h) { (void)h; }

static void pending_run(rd_done *d) { /* on the loop thread */
  pending *p = (pending *)d;
  bridge *b = p->b;
  if (--b->waiting == 0 && !uv_is_closing((uv_handle_t *)&b->h)) uv_unref((uv_handle_t *)&b->h);
  lua_State *L = p->loop->cbL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->fnref);
  luaL_unref(L, LUA_REGISTRYINDEX, p->fnref);
  lua_pushboolean(L, p->rc == RD_OK);
  if (p->rc == RD_OK) lua_pushnil(L); else lua_pushstring(L, p->msg);
  lua_pushstring(L, rd_err_name(p->rc));
  rd__loop_pcall(p->loop, 3);
  rd__freemem(p);
}

static void committed(void *ud, int rc, const char *msg) { /* writer thread */
  pending *p = ud;
  p->rc = rc;
  snprintf(p->msg, sizeof p->msg, "%s", msg);
  bridge *b = p->b;
  pthread_mutex_lock(&b->mu);
  if (b->loop) {
    p->loop = b->loop;
    rd__loop_post(b->loop, &p->done);
    p = NULL;
  }
  pthread_mutex_unlock(&b->mu);
  rd__freemem(p); /* the loop is gone: nobody to tell */
}

static int l_history(lua_State *L) {
  rd_store_env *env = check_env(L, 1);
  rd_history_config cfg = {(unsigned)opt_size(L, 2, "group_ms"), (unsigned)opt_size(L, 2, "max_batch")};
  hist_ud *u = lua_newuserdata(L, sizeof *u);
  u->h = NULL;
  u->b = NULL;
  luaL_getmetatable(L, HIST_MT);
  lua_setmetatable(L, -2);
  rd_error err;
  if (rd_history_open(&u->h, env, &cfg, &err) != RD_OK) return rd__lua_fail(L, &err);
  return 1;
}

static hist_ud *check_hist(lua_State *L, int i) {
  hist_ud *u = luaL_checkudata(L, i, HIST_MT);
  if (!u->h) luaL_argerror(L, i, "history is closed");
  return u;
}

static void to_record(lua_State *L, int t, rd_history_record *r) {
  luaL_checktype(L, t, LUA_TTABLE);
  memset(r, 0, sizeof *r);
  r->id = opt_str(L, t, "id", NULL);
  r->tool = opt_str(L, t, "tool", NULL);
  r->version = opt_str(L, t, "version", NULL);
  r->status = opt_str(L, t, "status", NULL);
  r->kind = opt_str(L, t, "kind", NULL);
  r->caller = opt_str(L, t, "caller", NULL);
  r->params_hash = opt_str(L, t, "params_hash", NULL);
  r->params = opt_str(L, t, "params", NULL);
  r->context = opt_str(L, t, "context", NULL);
  r->started_at = opt_num(L, t, "started_at");
  r->duration_ms = opt_num(L, t, "duration_ms");
  r->cpu_ms = opt_num(L, t, "cpu_ms");
  r->peak_memory_bytes = opt_num(L, t, "peak_memory_bytes");
  r->attempts = (int)opt_num(L, t, "attempts");
  lua_getfield(L, t, "cached");
  r->cached = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

static int l_hist_append(lua_State *L) {
  hist_ud *u = check_hist(L, 1);
  rd_history_record r;
  to_record(L, 2, &r);
  rd_error err;
  if (rd_history_append(u->h, &r, &err) != RD_OK) return rd__lua_fail(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_hist_append_async(lua_State *L) {
  hist_ud *u = check_hist(L, 1);
  rd_history_record r;
  to_record(L, 2, &r);
  rd_loop *loop = rd__loop_check(L, 3);
  if (lua_isnoneornil(L, 4)) {
    /* Fire and forget: committed with the next group, nobody told. */
    rd_error err;
    if (rd_history_append_async(u->h, &r, NULL, NULL, &err) != RD_OK) return rd__lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
  }
  rd__lua_checkcallable(L, 4);
  if (!u->b) {
    bridge *b = rd__calloc(1, sizeof *b);
    if (!b) return luaL_error(L, "out of memory");
    b->owner.close_all = bridge_close_all;
    pthread_mutex_init(&b->mu, NULL);
    b->loop = loop;
    b->refs = 2;
    uv_async_init(&loop->uv, &b->h, noop_async);
    b->h.data = b;
    uv_unref((uv_handle_t *)&b->h);
    u->b = b;
  } else {
    pthread_mutex_lock(&u->b->mu);
    int same = u->b->loop == loop;
    pthread_mutex_unlock(&u->b->mu);
    if (!same) return luaL_error(L, "history: append_async on another (or a closed) loop");
  }
  pending *p = rd__calloc(1, sizeof *p);
  if (!p) return luaL_error(L, "out of memory");
  p->done.fn = pending_run;
  p->b = u->b;
  /* The bridge (a pending's target) lives while a post can still reach
   * it: it is freed only after the loop closed its handle, and a loop
   * delivers its posts before closing handles. */
  lua_pushvalue(L, 4);
  p->fnref = luaL_ref(L, LUA_REGISTRYINDEX);
  rd_error err;
  if (rd_history_append_async(u->h, &r, committed, p, &err) != RD_OK) {
    luaL_unref(L, LUA_REGISTRYINDEX, p->fnref);
    rd__freemem(p);
    return rd__lua_fail(L, &err);
  }
  if (u->b->waiting++ == 0) uv_ref((uv_handle_t *)&u->b->h);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_hist_close(lua_State *L) {
  hist_ud *u = luaL_checkudata(L, 1, HIST_MT);
  if (u->h) { rd_history_close(u->h); u->h = NULL; }
  if (u->b) { bridge_unref(u->b); u->b = NULL; }
  return 0;
}

/* ---- module -------------------------------------------------------------------- */

static int l_hash(lua_State *L) {
  int n = lua_gettop(L);
  const void *parts[64];
  size_t lens[64];
  unsigned char lenbuf[32][8];
  if (n > 32) return luaL_error(L, "hash: at most 32 parts");
  for (int i = 1; i <= n; i++) {
    size_t l;
    const char *s = luaL_checklstring(L, i, &l);
    rd__store_be64(lenbuf[i - 1], (uint64_t)l);
    parts[2 * (i - 1)] = lenbuf[i - 1];
    lens[2 * (i - 1)] = 8;
    parts[2 * (i - 1) + 1] = s;
    lens[2 * (i - 1) + 1] = l;
  }
  unsigned char out[32];
  char hex[65];
  rd_store_hash(out, (size_t)n * 2, parts, lens);
  tohex(hex, out, 32);
  lua_pushstring(L, hex);
  return 1;
}

int rd__luaopen_store(lua_State *L) {
  static const luaL_Reg env_m[] = {
    {"info", l_env_info}, {"close", l_env_close}, {"__gc", l_env_close},
    {"kv_put", l_kv_put}, {"kv_get", l_kv_get}, {"kv_delete", l_kv_delete},
    {"kv_list", l_kv_list}, {"audit_append", l_audit_append},
    {"audit_append_batch", l_audit_append_batch}, {"audit_list", l_audit_list},
    {"audit_verify", l_audit_verify}, {"history_query", l_history_query},
    {"history_prune", l_history_prune}, {"history_count", l_history_count},
    {"raw_put", l_raw_put}, {"raw_get", l_raw_get}, {"raw_delete", l_raw_delete},
    {NULL, NULL},
  };
  static const luaL_Reg cache_m[] = {
    {"get", l_cache_get}, {"put", l_cache_put}, {"delete", l_cache_delete},
    {"clear", l_cache_clear}, {"sweep", l_cache_sweep}, {"flush", l_cache_flush},
    {"idle", l_cache_idle}, {"stats", l_cache_stats}, {"set_time", l_cache_set_time},
    {"close", l_cache_close}, {"__gc", l_cache_close}, {NULL, NULL},
  };
  static const luaL_Reg hist_m[] = {
    {"append", l_hist_append}, {"append_async", l_hist_append_async},
    {"close", l_hist_close}, {"__gc", l_hist_close}, {NULL, NULL},
  };
  rd__lua_class(L, CACHE_MT, cache_m, l_cache);
  lua_pop(L, 1);
  luaL_getmetatable(L, CACHE_MT);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_cache_get, 1);
  lua_setfield(L, -2, "get");
  lua_pop(L, 1);
  rd__lua_class(L, HIST_MT, hist_m, l_history);
  lua_pop(L, 1);
  rd__lua_class(L, ENV_MT, env_m, l_open);
  lua_pushcfunction(L, l_open);
  lua_setfield(L, -2, "open");
  lua_pushcfunction(L, l_cache);
  lua_setfield(L, -2, "cache");
  lua_pushcfunction(L, l_history);
  lua_setfield(L, -2, "history");
  lua_pushcfunction(L, l_hash);
  lua_setfield(L, -2, "hash");
  /* For the FFI read path (lua/rubberduck/store_ffi.lua): this copy's
   * rd_cache_get and rd_store_view_release as addresses (no symbol lookup,
   * so never another copy's), the view's layout and the codes to expect. */
  int (*get)(rd_cache *, const void *, size_t, rd_store_view *, rd_error *) = rd_cache_get;
  void (*rel)(rd_store_view *) = rd_store_view_release;
  void *p;
  lua_newtable(L);
  memcpy(&p, &get, sizeof p);
  lua_pushlightuserdata(L, p);
  lua_setfield(L, -2, "cache_get");
  memcpy(&p, &rel, sizeof p);
  lua_pushlightuserdata(L, p);
  lua_setfield(L, -2, "view_release");
  lua_pushinteger(L, (lua_Integer)sizeof(rd_store_view));
  lua_setfield(L, -2, "view_size");
  lua_pushinteger(L, (lua_Integer)offsetof(rd_store_view, len));
  lua_setfield(L, -2, "view_len_offset");
  lua_pushinteger(L, (lua_Integer)sizeof(cache_ud));
  lua_setfield(L, -2, "cache_ud_size");
  lua_pushinteger(L, (lua_Integer)offsetof(cache_ud, view));
  lua_setfield(L, -2, "cache_ud_view_offset");
  lua_pushinteger(L, (lua_Integer)offsetof(cache_ud, gen));
  lua_setfield(L, -2, "cache_ud_gen_offset");
  lua_pushinteger(L, (lua_Integer)sizeof(rd_error));
  lua_setfield(L, -2, "error_size");
  lua_newtable(L); /* code -> kind name, for errors met on the FFI path */
#define RD__ERR_NAME(code, name, msg) \
  lua_pushstring(L, name);            \
  lua_rawseti(L, -2, RD_##code);
  RD_ERRNO_MAP(RD__ERR_NAME)
#undef RD__ERR_NAME
  lua_setfield(L, -2, "error_names");
  lua_pushinteger(L, RD_OK);
  lua_setfield(L, -2, "OK");
  lua_pushinteger(L, RD_ENOENT);
  lua_setfield(L, -2, "ENOENT");
  lua_setfield(L, -2, "ffi");
  return 1;
}
