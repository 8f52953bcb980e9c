/*
 * xcopy.c — plain-data copy between Lua states. See xcopy.h.
 */
#include "sandbox/xcopy.h"
#include "json.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct ctx {
  lua_State *from, *to;
  int max_depth;
  size_t max_bytes, bytes;
  int allow_nonfinite;
  const void *array_mt, *object_mt;  /* the markers, in `from` */
  int nkeys;                         /* keys on the path to the current value */
  /* Tables being copied, and the stack index (in `from`) of the key being
   * copied at each level: the JSON pointer of a failure is built from
   * these only when there is one. Written before read: not zeroed. */
  const void *stack[RD_JSON_MAX_DEPTH * 4 + 1];
  int keys[RD_JSON_MAX_DEPTH * 4 + 1];
  rd_error *err;
} ctx;

/* Append one reference token (the key at kidx in L) to a pointer, escaping
 * ~ and /; truncates silently past the buffer. */
static void path_token(char *path, size_t cap, size_t *plen, lua_State *L, int kidx) {
  char tmp[64];
  const char *k;
  size_t klen;
  if (lua_type(L, kidx) == LUA_TNUMBER) {
    double d = lua_tonumber(L, kidx);
    if (d >= 1 && d < 9007199254740992.0 && d == floor(d))
      snprintf(tmp, sizeof tmp, "%lld", (long long)d - 1); /* 0-based */
    else
      snprintf(tmp, sizeof tmp, "%.17g", d);
    k = tmp;
    klen = strlen(tmp);
  } else if (lua_type(L, kidx) == LUA_TSTRING) {
    k = lua_tolstring(L, kidx, &klen);
  } else {
    k = lua_typename(L, lua_type(L, kidx));
    klen = strlen(k);
  }
  if (*plen + 2 >= cap) return;
  path[(*plen)++] = '/';
  for (size_t i = 0; i < klen && *plen + 3 < cap; i++) {
    if (k[i] == '~') { path[(*plen)++] = '~'; path[(*plen)++] = '0'; }
    else if (k[i] == '/') { path[(*plen)++] = '~'; path[(*plen)++] = '1'; }
    else path[(*plen)++] = k[i];
  }
  path[*plen] = '\0';
}

/* "POINTER: WHAT", the root being "" (results.h lists the WHATs). */
static int fail(ctx *c, int code, const char *what) {
  char path[1024];
  size_t plen = 0;
  path[0] = '\0';
  for (int i = 0; i < c->nkeys; i++) path_token(path, sizeof path, &plen, c->from, c->keys[i]);
  rd_error_set(c->err, code, "%s: %s", path, what);
  rd__utf8_clean(c->err->message, strlen(c->err->message));
  return code;
}

static int copy(ctx *c, int idx, int depth);

static int account(ctx *c, size_t n) {
  c->bytes += n;
  if (c->max_bytes && c->bytes > c->max_bytes) {
    rd_error_set(c->err, RD_ELIMIT, "value larger than %zu bytes", c->max_bytes);
    return RD_ELIMIT;
  }
  return RD_OK;
}

/* Marker of the table at idx in `from`: 1 array, 2 object, 0 none. */
static int marker(ctx *c, int idx) {
  lua_State *L = c->from;
  if (!lua_getmetatable(L, idx)) return 0;
  const void *mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return mt == c->array_mt ? 1 : mt == c->object_mt ? 2 : 0;
}

static int copy_table(ctx *c, int idx, int depth) {
  lua_State *F = c->from, *T = c->to;
  if (depth >= c->max_depth) return fail(c, RD_ELIMIT, "nested deeper than the limit");
  const void *p = lua_topointer(F, idx);
  for (int i = 0; i < depth; i++)
    if (c->stack[i] == p) return fail(c, RD_EINVAL, "cycle");
  c->stack[depth] = p;
  if (!lua_checkstack(F, 4) || !lua_checkstack(T, 4))
    return fail(c, RD_ENOMEM, "Lua stack exhausted");
  int rc = account(c, 16);
  if (rc) return rc;
  lua_newtable(T);
  int m = marker(c, idx);
  if (m) {
    luaL_getmetatable(T, m == 1 ? RD_JSON_ARRAY_MT : RD_JSON_OBJECT_MT);
    if (lua_istable(T, -1)) lua_setmetatable(T, -2);
    else lua_pop(T, 1);
  }
  lua_pushnil(F);
  while (lua_next(F, idx) != 0) {
    int kt = lua_type(F, -2);
    c->keys[c->nkeys++] = lua_gettop(F) - 1;
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
      rc = fail(c, RD_EINVAL, "table key that is not a string or number");
      c->nkeys--;
      lua_pop(F, 2);
      lua_pop(T, 1);
      return rc;
    }
    /* key */
    if (kt == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(F, -2, &kl);
      rc = account(c, kl);
      if (!rc) lua_pushlstring(T, k, kl);
    } else {
      double d = lua_tonumber(F, -2);
      if (!isfinite(d)) rc = fail(c, RD_EINVAL, "non-finite table key");
      else lua_pushnumber(T, d);
    }
    if (!rc) {
      rc = copy(c, lua_gettop(F), depth + 1);
      if (rc) lua_pop(T, 1); /* the key */
    }
    c->nkeys--;
    lua_pop(F, 1); /* value; key stays for lua_next */
    if (rc) {
      lua_pop(F, 1);
      lua_pop(T, 1);
      return rc;
    }
    lua_rawset(T, -3);
  }
  return RD_OK;
}

static int copy(ctx *c, int idx, int depth) {
  lua_State *F = c->from, *T = c->to;
  switch (lua_type(F, idx)) {
    case LUA_TNIL: lua_pushnil(T); return account(c, 1);
    case LUA_TBOOLEAN: lua_pushboolean(T, lua_toboolean(F, idx)); return account(c, 1);
    case LUA_TNUMBER: {
      double d = lua_tonumber(F, idx);
      if (!isfinite(d) && !c->allow_nonfinite)
        return fail(c, RD_EINVAL, isnan(d) ? "NaN" : "infinite number");
      lua_pushnumber(T, d);
      return account(c, 8);
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(F, idx, &n);
      int rc = account(c, n);
      if (rc) return rc;
      lua_pushlstring(T, s, n);
      return RD_OK;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(F, idx) == RD_JSON_NULL) {
        lua_pushlightuserdata(T, RD_JSON_NULL);
        return account(c, 1);
      }
      return fail(c, RD_EINVAL, "userdata");
    case LUA_TTABLE: return copy_table(c, idx, depth);
    default: return fail(c, RD_EINVAL, lua_typename(F, lua_type(F, idx)));
  }
}

typedef struct job {
  ctx *c;
  int idx, rc, ref;
} job;

/* Runs on `to` under lua_cpcall: an allocation failure in `to` becomes a
 * status, not an unprotected error. The copy is parked in the registry. */
static int protected_copy(lua_State *T) {
  job *j = lua_touserdata(T, 1);
  j->rc = copy(j->c, j->idx, 0);
  if (j->rc == RD_OK) j->ref = luaL_ref(T, LUA_REGISTRYINDEX);
  return 0;
}

int rd__xcopy(lua_State *from, int idx, lua_State *to,
              const rd_xcopy_opts *opts, size_t *bytes, rd_error *err) {
  static const rd_xcopy_opts dflt = {0, 0, 0};
  if (!opts) opts = &dflt;
  ctx *c = rd__malloc(sizeof *c); /* the stacks are written before read */
  if (!c) return rd_error_set(err, RD_ENOMEM, "out of memory");
  c->from = from;
  c->bytes = 0;
  c->nkeys = 0;
  luaL_getmetatable(from, RD_JSON_ARRAY_MT);
  c->array_mt = lua_istable(from, -1) ? lua_topointer(from, -1) : NULL;
  luaL_getmetatable(from, RD_JSON_OBJECT_MT);
  c->object_mt = lua_istable(from, -1) ? lua_topointer(from, -1) : NULL;
  lua_pop(from, 2);
  c->to = to;
  c->max_depth = opts->max_depth > 0 ? opts->max_depth : RD_JSON_MAX_DEPTH;
  if (c->max_depth > RD_JSON_MAX_DEPTH * 4) c->max_depth = RD_JSON_MAX_DEPTH * 4;
  c->max_bytes = opts->max_bytes;
  c->allow_nonfinite = opts->allow_nonfinite;
  c->err = err;
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(from) + idx + 1;
  int top_to = lua_gettop(to), top_from = lua_gettop(from);
  job j = {c, idx, RD_OK, LUA_NOREF};
  int rc;
  if (!lua_checkstack(to, 2)) {
    rc = rd_error_set(err, RD_ENOMEM, "cannot grow the target stack");
  } else if (lua_cpcall(to, protected_copy, &j) != 0) {
    lua_settop(to, top_to);
    lua_settop(from, top_from);
    rc = rd_error_set(err, RD_ENOMEM, "out of memory in the target state");
  } else if (j.rc != RD_OK) {
    lua_settop(to, top_to);
    rc = j.rc;
  } else {
    lua_rawgeti(to, LUA_REGISTRYINDEX, j.ref);
    luaL_unref(to, LUA_REGISTRYINDEX, j.ref);
    rc = RD_OK;
  }
  if (bytes) *bytes = c->bytes;
  rd__freemem(c);
  return rc;
}
