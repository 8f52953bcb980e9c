/*
 * xcopy.c — plain-data copy between Lua states. See xcopy.h.
 */
#include "sandbox/xcopy.h"
#include "json.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Pairs of a table gathered on the target's stack before the table is
 * made: a table of up to GATHER pairs is created at its exact size (no
 * rehash as it grows, which costs more than the copy of a small table).
 * Past GATHER pairs it is created with a size hint and filled directly.
 * Gathering stops where the target's stack is already deep (nested
 * tables each hold their pending pairs), so the stack stays far below
 * LuaJIT's limit at any nesting depth. */
#define GATHER 32
#define GATHER_TOP_MAX 2048

typedef struct ctx {
  lua_State *from, *to;
  int max_depth;
  size_t max_bytes, bytes;
  int allow_nonfinite;
  int markers_known;                 /* from's markers looked up */
  rd_xcopy_memo *memo;
  int memo_level;                    /* 0: looking for k1, 1: for k2, 2: done */
  const void *array_mt, *object_mt;  /* the markers, in `from` */
  int nkeys;                         /* keys on the path to the current value */
  /* Tables being copied, and the stack index (in `from`) of the key being
   * copied at each level: the JSON pointer of a failure is built from
   * these only when there is one. Written before read: not zeroed. */
  const void *stack[RD_JSON_MAX_DEPTH * 4 + 1];
  int keys[RD_JSON_MAX_DEPTH * 4 + 1];
  rd_error *err;
  rd_buf *out;                       /* rd__xpack: where the value goes */
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

/* Marker of the table at idx in `from`: 1 array, 2 object, 0 none. The
 * markers of `from` are looked up (by name, in its registry) only once a
 * table with a metatable is met. */
static int marker(ctx *c, int idx) {
  lua_State *L = c->from;
  if (!lua_getmetatable(L, idx)) return 0;
  const void *mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  if (!c->markers_known) {
    c->markers_known = 1;
    rd__json_markers(L, &c->array_mt, &c->object_mt);
  }
  if (!mt) return 0;
  return mt == c->array_mt ? 1 : mt == c->object_mt ? 2 : 0;
}

/* Push the target's marker m (1 array, 2 object) and return 1, or push
 * nothing and return 0 when the target has none. The copy function keeps
 * the target's markers as upvalues 1 and 2 (looked up again while the
 * target has none). */
static int push_target_marker(lua_State *T, int m) {
  lua_pushvalue(T, lua_upvalueindex(m));
  if (lua_istable(T, -1)) return 1;
  lua_pop(T, 1);
  luaL_getmetatable(T, m == 1 ? RD_JSON_ARRAY_MT : RD_JSON_OBJECT_MT);
  if (!lua_istable(T, -1)) {
    lua_pop(T, 1);
    return 0;
  }
  lua_pushvalue(T, -1);
  lua_replace(T, lua_upvalueindex(m));
  return 1;
}

/* Give the table at the top of `to` the target's marker m. */
static void set_marker(lua_State *T, int m) {
  if (push_target_marker(T, m)) lua_setmetatable(T, -2);
}

/* Make the table for the n pairs gathered above `base - 1` on T, at their
 * exact size, put it at `base` and move the pairs in. */
static void build_gathered(lua_State *T, int base, int n) {
  int narr = 0;
  for (int i = 0; i < n; i++) {
    int k = base + 2 * i;
    if (lua_type(T, k) == LUA_TNUMBER) {
      double d = lua_tonumber(T, k);
      if (d >= 1 && d <= n && d == (double)(int)d) narr++;
    }
  }
  lua_createtable(T, narr, n - narr);
  lua_insert(T, base);
  while (lua_gettop(T) > base) lua_rawset(T, base);
}

/* ---- the kept copy (rd_xcopy_memo) ---------------------------------------------- */

/* Is the key at -2 of `from` the memo's key at this depth? */
static int memo_key(ctx *c, int depth) {
  const char *want = depth == 0 ? c->memo->k1 : c->memo->k2;
  size_t kl, wl = strlen(want);
  const char *k = lua_tolstring(c->from, -2, &kl);
  return kl == wl && memcmp(k, want, kl) == 0;
}

static int same_table(ctx *c, int fidx, int tidx, int depth);

/* Does the value at ti of `to` hold what a copy of the value at fi of
 * `from` would? Counts the bytes a copy would count. Raw reads only. */
static int same_value(ctx *c, int fi, int ti, int depth) {
  lua_State *F = c->from, *T = c->to;
  int t = lua_type(F, fi);
  if (lua_type(T, ti) != t) return 0;
  switch (t) {
    case LUA_TBOOLEAN:
      return lua_toboolean(F, fi) == lua_toboolean(T, ti) && account(c, 1) == RD_OK;
    case LUA_TNUMBER: {
      double d = lua_tonumber(F, fi);
      /* NaN never equals itself: a copy then gives the usual answer */
      return d == lua_tonumber(T, ti) && isfinite(d) && account(c, 8) == RD_OK;
    }
    case LUA_TSTRING: {
      size_t a, b;
      const char *x = lua_tolstring(F, fi, &a), *y = lua_tolstring(T, ti, &b);
      return a == b && memcmp(x, y, a) == 0 && account(c, a) == RD_OK;
    }
    case LUA_TLIGHTUSERDATA:
      return lua_touserdata(F, fi) == RD_JSON_NULL && lua_touserdata(T, ti) == RD_JSON_NULL &&
             account(c, 1) == RD_OK;
    case LUA_TTABLE: return same_table(c, fi, ti, depth);
    default: return 0; /* not data: a copy says what is wrong */
  }
}

/* Is the string or finite number key at -2 of F the same as the key at -2
 * of T? Counts the bytes a copy would count. Raw reads only. */
static int same_key(ctx *c, int *not_data) {
  lua_State *F = c->from, *T = c->to;
  int kt = lua_type(F, -2);
  if (kt == LUA_TSTRING) {
    if (lua_type(T, -2) != LUA_TSTRING) return 0;
    size_t a, b;
    const char *x = lua_tolstring(F, -2, &a), *y = lua_tolstring(T, -2, &b);
    return a == b && memcmp(x, y, a) == 0 && account(c, a) == RD_OK;
  }
  if (kt == LUA_TNUMBER && isfinite(lua_tonumber(F, -2)))
    return lua_type(T, -2) == LUA_TNUMBER && lua_tonumber(F, -2) == lua_tonumber(T, -2);
  *not_data = 1;
  return 0;
}

/* Compare by walking both tables in step, with no key pushed into `to`
 * (interning a key there costs a hash and a lookup): for arrays, whose
 * kept copy lists the same keys in the same order. Returns 1 same, 0 different, -1 when the two orders part (the
 * caller then compares by lookups; the bytes counted here are undone). */
static int same_in_step(ctx *c, int fidx, int tidx, int depth) {
  lua_State *F = c->from, *T = c->to;
  size_t bytes0 = c->bytes;
  lua_pushnil(F);
  lua_pushnil(T);
  for (;;) {
    int fa = lua_next(F, fidx);
    int ta = lua_next(T, tidx);
    if (!fa || !ta) {
      if (fa) lua_pop(F, 2);
      if (ta) lua_pop(T, 2);
      return fa == ta; /* one ended first: not the same number of keys */
    }
    int not_data = 0;
    if (!same_key(c, &not_data)) {
      lua_pop(F, 2);
      lua_pop(T, 2);
      if (not_data) return 0; /* a copy says what is wrong */
      c->bytes = bytes0;
      return -1;
    }
    int ok = same_value(c, lua_gettop(F), lua_gettop(T), depth + 1);
    lua_pop(F, 1);
    lua_pop(T, 1);
    if (!ok) {
      lua_pop(F, 1);
      lua_pop(T, 1);
      return 0;
    }
  }
}

static int same_table(ctx *c, int fidx, int tidx, int depth) {
  lua_State *F = c->from, *T = c->to;
  if (depth >= c->max_depth) return 0;
  const void *p = lua_topointer(F, fidx);
  for (int i = 0; i < depth; i++)
    if (c->stack[i] == p) return 0;
  c->stack[depth] = p;
  if (!lua_checkstack(F, 3) || !lua_checkstack(T, 4)) return 0;
  if (account(c, 16) != RD_OK) return 0;
  /* the metatable a copy would have: the target's marker, or none */
  int m = marker(c, fidx);
  int want = m ? push_target_marker(T, m) : 0;
  int has = lua_getmetatable(T, tidx);
  int same_mt = want == has && (!has || lua_rawequal(T, -1, -2));
  lua_pop(T, want + has);
  if (!same_mt) return 0;
  /* arrays list their keys in one order in both states; objects made in
   * different ways seldom do (the caller object never did) */
  if (m == 1) {
    int step = same_in_step(c, fidx, tidx, depth);
    if (step >= 0) return step;
  }
  int n = 0;
  lua_pushnil(F);
  while (lua_next(F, fidx) != 0) {
    n++;
    int kt = lua_type(F, -2), ok = 1;
    if (kt == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(F, -2, &kl);
      ok = account(c, kl) == RD_OK;
      if (ok) lua_pushlstring(T, k, kl);
    } else if (kt == LUA_TNUMBER && isfinite(lua_tonumber(F, -2))) {
      lua_pushnumber(T, lua_tonumber(F, -2));
    } else {
      ok = 0;
    }
    if (ok) {
      lua_rawget(T, tidx);
      ok = same_value(c, lua_gettop(F), lua_gettop(T), depth + 1);
      lua_pop(T, 1);
    }
    lua_pop(F, 1);
    if (!ok) {
      lua_pop(F, 1);
      return 0;
    }
  }
  /* every key of `from` is in the kept copy: the same count means no more */
  lua_pushnil(T);
  while (lua_next(T, tidx) != 0) {
    lua_pop(T, 1);
    if (--n < 0) {
      lua_pop(T, 1);
      return 0;
    }
  }
  return n == 0;
}

/* Copy the value at fidx of `from`, found under the memo's key at this
 * depth: value[k1] is copied as usual (k2 is looked for in it); the table
 * at value[k1][k2] is the kept copy if that holds the same data, else a
 * new copy, kept for next time. */
static int copy_memo(ctx *c, int fidx, int depth) {
  lua_State *F = c->from, *T = c->to;
  rd_xcopy_memo *memo = c->memo;
  if (depth == 1) { /* value[k1]: look for k2 in it */
    c->memo_level = 1;
    return copy(c, fidx, depth);
  }
  if (lua_type(F, fidx) != LUA_TTABLE) return copy(c, fidx, depth);
  if (memo->ref != LUA_NOREF) {
    size_t bytes = c->bytes;
    lua_rawgeti(T, LUA_REGISTRYINDEX, memo->ref);
    if (lua_istable(T, -1) && same_table(c, fidx, lua_gettop(T), depth)) {
      memo->reused = 1;
      return RD_OK;
    }
    lua_pop(T, 1);
    c->bytes = bytes;
  }
  int rc = copy(c, fidx, depth);
  if (rc != RD_OK) return rc;
  lua_pushvalue(T, -1);
  int ref = luaL_ref(T, LUA_REGISTRYINDEX); /* raises only on no memory */
  if (memo->ref != LUA_NOREF) luaL_unref(T, LUA_REGISTRYINDEX, memo->ref);
  memo->ref = ref;
  return RD_OK;
}

/* ---- the copy ---------------------------------------------------------------------
 * Into the target state (copy_table), or packed (rd__xpack: pack_table,
 * below): the value as bytes, a tag, then what it needs; numbers and
 * lengths in the machine's own byte order (both ends are this process). */
enum { P_NIL = 'n', P_FALSE = 'f', P_TRUE = 't', P_NULL = 'z', P_NUM = 'd',
       P_STR = 's', P_TABLE = 'T' };

static void put_num(rd_buf *b, double d) {
  char t[9] = {P_NUM};
  memcpy(t + 1, &d, 8);
  rd__buf_append(b, t, 9);
}

static void put_str(rd_buf *b, const char *p, size_t n) {
  char t[5] = {P_STR};
  uint32_t n32 = (uint32_t)n; /* LuaJIT strings are shorter than 2 GiB */
  memcpy(t + 1, &n32, 4);
  rd__buf_append(b, t, 5);
  rd__buf_append(b, p, n);
}

static int pack_table(ctx *c, int idx, int depth);

/* The key at -2 of `from` (of type kt), pushed onto `to` or packed. */
static int copy_key(ctx *c, int kt) {
  lua_State *F = c->from;
  if (kt == LUA_TSTRING) {
    size_t kl;
    const char *k = lua_tolstring(F, -2, &kl);
    int rc = account(c, kl);
    if (rc) return rc;
    if (c->out) put_str(c->out, k, kl);
    else lua_pushlstring(c->to, k, kl);
    return RD_OK;
  }
  if (kt == LUA_TNUMBER) {
    double d = lua_tonumber(F, -2);
    if (!isfinite(d)) return fail(c, RD_EINVAL, "non-finite table key");
    if (c->out) put_num(c->out, d);
    else lua_pushnumber(c->to, d);
    return RD_OK;
  }
  return fail(c, RD_EINVAL, "table key that is not a string or number");
}

/* Entering the table at idx of `from` at this depth: the depth limit and
 * cycles checked, the table noted on the path. */
static int enter_table(ctx *c, int idx, int depth) {
  if (depth >= c->max_depth) return fail(c, RD_ELIMIT, "nested deeper than the limit");
  const void *p = lua_topointer(c->from, idx);
  for (int i = 0; i < depth; i++)
    if (c->stack[i] == p) return fail(c, RD_EINVAL, "cycle");
  c->stack[depth] = p;
  return RD_OK;
}

static int copy_table(ctx *c, int idx, int depth) {
  lua_State *F = c->from, *T = c->to;
  int rc = enter_table(c, idx, depth);
  if (rc) return rc;
  int base = lua_gettop(T) + 1;
  int gather = base < GATHER_TOP_MAX;
  if (!lua_checkstack(F, 4) || !lua_checkstack(T, gather ? 2 * GATHER + 8 : 4))
    return fail(c, RD_ENOMEM, "Lua stack exhausted");
  rc = account(c, 16);
  if (rc) return rc;
  int m = marker(c, idx);
  int n = 0; /* pairs gathered, while gather */
  if (!gather) lua_newtable(T);
  lua_pushnil(F);
  while (lua_next(F, idx) != 0) {
    int kt = lua_type(F, -2);
    c->keys[c->nkeys++] = lua_gettop(F) - 1;
    rc = copy_key(c, kt);
    if (!rc) {
      if (c->memo_level == depth && kt == LUA_TSTRING && depth < 2 && memo_key(c, depth)) {
        rc = copy_memo(c, lua_gettop(F), depth + 1);
        c->memo_level = 2; /* the path was passed: no other table is the memo's */
      } else {
        rc = copy(c, lua_gettop(F), depth + 1);
      }
    }
    c->nkeys--;
    lua_pop(F, 1); /* value; key stays for lua_next */
    if (rc) {
      lua_pop(F, 1);
      lua_settop(T, base - 1); /* the table or the pairs gathered */
      return rc;
    }
    if (!gather) {
      lua_rawset(T, -3);
    } else if (++n == GATHER) {
      /* A big table: make it with room for what came so far and more
       * of the array part, then fill it directly. */
      int alen = (int)lua_objlen(F, idx);
      lua_createtable(T, alen, n);
      lua_insert(T, base);
      while (lua_gettop(T) > base) lua_rawset(T, base);
      gather = 0;
    }
  }
  if (gather) build_gathered(T, base, n);
  if (m) set_marker(T, m);
  return RD_OK;
}

/* The value at idx of `from`: pushed onto `to`, or (rd__xpack, c->out)
 * packed. */
static int copy(ctx *c, int idx, int depth) {
  lua_State *F = c->from, *T = c->to;
  rd_buf *b = c->out;
  switch (lua_type(F, idx)) {
    case LUA_TNIL:
      if (b) rd__buf_putc(b, P_NIL);
      else lua_pushnil(T);
      return account(c, 1);
    case LUA_TBOOLEAN: {
      int v = lua_toboolean(F, idx);
      if (b) rd__buf_putc(b, v ? P_TRUE : P_FALSE);
      else lua_pushboolean(T, v);
      return account(c, 1);
    }
    case LUA_TNUMBER: {
      double d = lua_tonumber(F, idx);
      if (!isfinite(d) && !c->allow_nonfinite)
        return fail(c, RD_EINVAL, isnan(d) ? "NaN" : "infinite number");
      if (b) put_num(b, d);
      else lua_pushnumber(T, d);
      return account(c, 8);
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(F, idx, &n);
      int rc = account(c, n);
      if (rc) return rc;
      if (b) put_str(b, s, n);
      else lua_pushlstring(T, s, n);
      return RD_OK;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(F, idx) == RD_JSON_NULL) {
        if (b) rd__buf_putc(b, P_NULL);
        else lua_pushlightuserdata(T, RD_JSON_NULL);
        return account(c, 1);
      }
      return fail(c, RD_EINVAL, "userdata");
    case LUA_TTABLE: return b ? pack_table(c, idx, depth) : copy_table(c, idx, depth);
    default: return fail(c, RD_EINVAL, lua_typename(F, lua_type(F, idx)));
  }
}

typedef struct job {
  ctx *c;
  int idx, rc;
  const char *packed; /* rd__xunpack: the values to make (c is NULL) */
  int n;              /* rd__xunpack: how many */
  int reset;          /* rd__xunpack: the markers first */
} job;

static const char *unpack(lua_State *T, const char *p);

/* The copy, run on `to` under lua_pcall: an allocation failure in `to`
 * becomes a status, not an unprotected error. Upvalues: the target's
 * array and object markers (or nil). Returns the copy, or nothing. */
static void reset_marker(lua_State *T, int m);

static int protected_copy(lua_State *T) {
  job *j = lua_touserdata(T, 1);
  lua_settop(T, 0);
  if (j->packed) { /* rd__xunpack */
    if (j->reset) {
      reset_marker(T, 1);
      reset_marker(T, 2);
    }
    const char *p = j->packed;
    for (int i = 0; i < j->n; i++) p = unpack(T, p);
    return j->n;
  }
  if (!j->c || (j->c->memo && j->c->memo->reset_markers)) {
    reset_marker(T, 1);
    reset_marker(T, 2);
    if (!j->c) return 0; /* rd__xcopy_reset_markers */
  }
  j->rc = copy(j->c, j->idx, 0);
  return j->rc == RD_OK ? 1 : 0;
}

/* Put the target's marker m back to { __jsontype = "array" | "object" }
 * without a metatable, if code in the state changed it. */
static void reset_marker(lua_State *T, int m) {
  if (!push_target_marker(T, m)) return;
  const char *want = m == 1 ? "array" : "object";
  int t = lua_gettop(T), ok = 1, n = 0;
  if (lua_getmetatable(T, t)) {
    lua_pop(T, 1);
    ok = 0;
  }
  lua_pushnil(T);
  while (ok && lua_next(T, t) != 0) {
    size_t kl = 0;
    const char *k = lua_type(T, -2) == LUA_TSTRING ? lua_tolstring(T, -2, &kl) : NULL;
    const char *v = lua_type(T, -1) == LUA_TSTRING ? lua_tostring(T, -1) : NULL;
    ok = ++n == 1 && k && kl == 10 && memcmp(k, "__jsontype", 10) == 0 && v && strcmp(v, want) == 0;
    lua_pop(T, ok ? 1 : 2);
  }
  if (!ok) {
    lua_pushnil(T);
    lua_setmetatable(T, t);
    lua_pushnil(T);
    while (lua_next(T, t) != 0) { /* clearing fields while traversing is allowed */
      lua_pop(T, 1);
      lua_pushvalue(T, -1);
      lua_pushnil(T);
      lua_rawset(T, t);
    }
    lua_pushstring(T, want);
    lua_setfield(T, t, "__jsontype");
  }
  lua_settop(T, t - 1);
}

/* The registry key of a state's copy function. */
static const char copy_fn_key = 0;

/* Under lua_cpcall on `to`: make the copy function and keep it in the
 * registry, so that a copy allocates no closure (lua_cpcall makes one per
 * call) and needs no registry reference for its result. */
static int make_copy_fn(lua_State *T) {
  luaL_getmetatable(T, RD_JSON_ARRAY_MT);
  luaL_getmetatable(T, RD_JSON_OBJECT_MT);
  lua_pushcclosure(T, protected_copy, 2);
  lua_pushlightuserdata(T, (void *)&copy_fn_key);
  lua_pushvalue(T, -2);
  lua_rawset(T, LUA_REGISTRYINDEX);
  return 0;
}

/* Push the copy function of `to` (made the first time); 0 if it cannot be
 * made (nothing pushed). */
static int push_copy_fn(lua_State *to) {
  int top = lua_gettop(to);
  if (!lua_checkstack(to, 3)) return 0;
  lua_pushlightuserdata(to, (void *)&copy_fn_key);
  lua_rawget(to, LUA_REGISTRYINDEX);
  if (lua_isfunction(to, -1)) return 1;
  lua_pop(to, 1);
  if (lua_cpcall(to, make_copy_fn, NULL) != 0) {
    lua_settop(to, top);
    return 0;
  }
  lua_pushlightuserdata(to, (void *)&copy_fn_key);
  lua_rawget(to, LUA_REGISTRYINDEX);
  return 1;
}

int rd__xcopy_reset_markers(lua_State *L, rd_error *err) {
  int top = lua_gettop(L);
  job j = {NULL, 0, RD_OK, NULL, 0, 0};
  if (!push_copy_fn(L)) return rd_error_set(err, RD_ENOMEM, "out of memory in the state");
  lua_pushlightuserdata(L, &j);
  int rc = lua_pcall(L, 1, 0, 0);
  lua_settop(L, top);
  return rc == 0 ? RD_OK : rd_error_set(err, RD_ENOMEM, "out of memory in the state");
}

int rd__xcopy(lua_State *from, int idx, lua_State *to,
              const rd_xcopy_opts *opts, size_t *bytes, rd_error *err) {
  return rd__xcopy_memo(from, idx, to, opts, NULL, bytes, err);
}

/* A copy's context, its stacks left unwritten (written before read). */
static void ctx_init(ctx *c, lua_State *from, lua_State *to, const rd_xcopy_opts *opts,
                     rd_xcopy_memo *memo, rd_error *err) {
  static const rd_xcopy_opts dflt = {0, 0, 0};
  if (!opts) opts = &dflt;
  c->from = from;
  c->to = to;
  c->bytes = 0;
  c->nkeys = 0;
  c->markers_known = 0;
  c->array_mt = c->object_mt = NULL;
  c->max_depth = opts->max_depth > 0 ? opts->max_depth : RD_JSON_MAX_DEPTH;
  if (c->max_depth > RD_JSON_MAX_DEPTH * 4) c->max_depth = RD_JSON_MAX_DEPTH * 4;
  c->max_bytes = opts->max_bytes;
  c->allow_nonfinite = opts->allow_nonfinite;
  c->err = err;
  c->out = NULL;
  c->memo = memo;
  c->memo_level = memo && memo->k1 ? 0 : 2;
  if (memo) memo->reused = 0;
}

int rd__xcopy_memo(lua_State *from, int idx, lua_State *to,
                   const rd_xcopy_opts *opts, rd_xcopy_memo *memo,
                   size_t *bytes, rd_error *err) {
  ctx c; /* the stacks are written before read */
  ctx_init(&c, from, to, opts, memo, err);
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(from) + idx + 1;
  int top_to = lua_gettop(to), top_from = lua_gettop(from);
  job j = {&c, idx, RD_OK, NULL, 0, 0};
  int rc = RD_OK;
  if (!push_copy_fn(to)) return rd_error_set(err, RD_ENOMEM, "out of memory in the target state");
  lua_pushlightuserdata(to, &j);
  if (lua_pcall(to, 1, 1, 0) != 0) {
    lua_settop(to, top_to);
    lua_settop(from, top_from);
    rc = rd_error_set(err, RD_ENOMEM, "out of memory in the target state");
  } else if (j.rc != RD_OK) {
    lua_settop(to, top_to);
    rc = j.rc;
  }
  if (bytes) *bytes = c.bytes;
  return rc;
}

/* ---- packed copies (rd__xpack, rd__xunpack) --------------------------------------- */

/* A table: P_TABLE, its marker, the number of its integer keys from 1 (a
 * size hint for the array part) and of its pairs, then the pairs. The
 * same checks, in the same order, as copy_table. */
static int pack_table(ctx *c, int idx, int depth) {
  lua_State *F = c->from;
  int rc = enter_table(c, idx, depth);
  if (rc) return rc;
  if (!lua_checkstack(F, 4)) return fail(c, RD_ENOMEM, "Lua stack exhausted");
  rc = account(c, 16);
  if (rc) return rc;
  char hdr[10] = {P_TABLE, (char)marker(c, idx)};
  size_t at = c->out->len;
  rd__buf_append(c->out, hdr, sizeof hdr);
  uint32_t narr = 0, n = 0;
  lua_pushnil(F);
  while (lua_next(F, idx) != 0) {
    int kt = lua_type(F, -2);
    c->keys[c->nkeys++] = lua_gettop(F) - 1;
    rc = copy_key(c, kt);
    if (!rc && kt == LUA_TNUMBER) {
      double d = lua_tonumber(F, -2);
      if (d >= 1 && d <= 4294967295.0 && d == floor(d)) narr++;
    }
    if (!rc) rc = copy(c, lua_gettop(F), depth + 1);
    c->nkeys--;
    lua_pop(F, 1); /* value; key stays for lua_next */
    if (rc) {
      lua_pop(F, 1);
      return rc;
    }
    n++;
  }
  if (!c->out->oom) {
    memcpy(c->out->data + at + 2, &narr, 4);
    memcpy(c->out->data + at + 6, &n, 4);
  }
  return RD_OK;
}

int rd__xpack(lua_State *L, int idx, rd_buf *out, const rd_xcopy_opts *opts,
              size_t *bytes, rd_error *err) {
  ctx c; /* the stacks are written before read */
  ctx_init(&c, L, NULL, opts, NULL, err);
  c.out = out;
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  size_t len = out->len;
  int top = lua_gettop(L);
  int rc = copy(&c, idx, 0);
  if (rc == RD_OK && out->oom) rc = rd_error_set(err, RD_ENOMEM, "out of memory");
  if (rc != RD_OK) {
    lua_settop(L, top);
    out->len = out->oom ? out->len : len;
  }
  if (bytes) *bytes = c.bytes;
  return rc;
}

/* Push the value packed at p; returns what follows it. Raises (in the
 * protected call) only when memory runs out. The nesting is the packed
 * value's, which rd__xpack bounded. */
static const char *unpack(lua_State *T, const char *p) {
  switch (*p++) {
    case P_NIL: lua_pushnil(T); return p;
    case P_FALSE: lua_pushboolean(T, 0); return p;
    case P_TRUE: lua_pushboolean(T, 1); return p;
    case P_NULL: lua_pushlightuserdata(T, RD_JSON_NULL); return p;
    case P_NUM: {
      double d;
      memcpy(&d, p, 8);
      lua_pushnumber(T, d);
      return p + 8;
    }
    case P_STR: {
      uint32_t n;
      memcpy(&n, p, 4);
      lua_pushlstring(T, p + 4, n);
      return p + 4 + n;
    }
    default: { /* P_TABLE */
      int m = (unsigned char)*p;
      uint32_t narr, n;
      memcpy(&narr, p + 1, 4);
      memcpy(&n, p + 5, 4);
      p += 9;
      luaL_checkstack(T, 3, "nested too deep");
      lua_createtable(T, (int)narr, (int)(n - narr));
      for (uint32_t i = 0; i < n; i++) {
        p = unpack(T, p);
        p = unpack(T, p);
        lua_rawset(T, -3);
      }
      if (m) set_marker(T, m);
      return p;
    }
  }
}

int rd__xunpack(lua_State *L, const char *p, int n, int reset_markers, rd_error *err) {
  int top = lua_gettop(L);
  job j = {NULL, 0, RD_OK, p, n, reset_markers};
  if (!lua_checkstack(L, n + 2) || !push_copy_fn(L))
    return rd_error_set(err, RD_ENOMEM, "out of memory in the target state");
  lua_pushlightuserdata(L, &j);
  if (lua_pcall(L, 1, n, 0) != 0) {
    lua_settop(L, top);
    return rd_error_set(err, RD_ENOMEM, "out of memory in the target state");
  }
  return RD_OK;
}
