/*
 * results.c — normalization, YAML, digests and compression of results.
 * See results.h.
 */
#include "results.h"
#include "json.h"

#include <lauxlib.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include <zstd.h>

#define TWO_53 9007199254740992.0

/* ---- normalization ------------------------------------------------------ */

typedef struct nctx {
  lua_State *L;
  int max_depth;
  const void *stack[RD_JSON_MAX_DEPTH * 4 + 1];
  rd_buf path;         /* JSON pointer of the current value (exact) */
  int bins;            /* stack index of the binary-paths array */
  int nbin;
  int array_mt;        /* stack index of RD_JSON_ARRAY_MT */
  int object_mt;       /* stack index of RD_JSON_OBJECT_MT */
  rd_error *err;
} nctx;

static int nfail(nctx *c, int code, const char *what) {
  if (c->path.oom) return rd_error_set(c->err, RD_ENOMEM, "out of memory");
  rd_error_set(c->err, code, "%.*s: %s", (int)(c->path.len > 400 ? 400 : c->path.len),
               c->path.data ? c->path.data : "", what);
  rd__utf8_clean(c->err->message, strlen(c->err->message));
  return code;
}

static void path_token(nctx *c, const char *k, size_t n) {
  rd__buf_putc(&c->path, '/');
  for (size_t i = 0; i < n; i++) {
    if (k[i] == '~') rd__buf_append(&c->path, "~0", 2);
    else if (k[i] == '/') rd__buf_append(&c->path, "~1", 2);
    else rd__buf_putc(&c->path, k[i]);
  }
}

static void path_index(nctx *c, size_t i) {
  char b[32];
  int n = snprintf(b, sizeof b, "/%zu", i);
  rd__buf_append(&c->path, b, (size_t)n);
}

static void path_cut(nctx *c, size_t len) {
  c->path.len = len;
  if (c->path.data) c->path.data[len] = '\0';
}

/* 'a' array, 'o' object, 0 none: the encoder's rule (json.c). */
static int nmarker(nctx *c, int idx) {
  return rd__json_marker(c->L, idx, lua_topointer(c->L, c->array_mt),
                         lua_topointer(c->L, c->object_mt));
}

static int norm(nctx *c, int idx, int depth);

/* Keys of the table at idx must be exactly 1..n. */
static int array_keys(nctx *c, int idx, size_t *n) {
  lua_State *L = c->L;
  size_t count = 0;
  double max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int kt = lua_type(L, -1);
    if (kt == LUA_TNUMBER) {
      double k = lua_tonumber(L, -1);
      if (!(k >= 1 && k <= TWO_53 && floor(k) == k)) {
        lua_pop(L, 1);
        return nfail(c, RD_EINVAL, "array index that is not a positive integer");
      }
      count++;
      if (k > max) max = k;
    } else {
      lua_pop(L, 1);
      return nfail(c, RD_EINVAL, kt == LUA_TSTRING ? "table mixes array and object keys"
                                                   : "table key that is not a string or number");
    }
  }
  if ((double)count != max) return nfail(c, RD_EINVAL, "sparse array");
  *n = count;
  return RD_OK;
}

static int norm_array(nctx *c, int idx, int depth, size_t n) {
  lua_State *L = c->L;
  lua_createtable(L, n > 0x7fffffff ? 0 : (int)n, 0);
  int dst = lua_gettop(L);
  size_t base = c->path.len;
  for (size_t i = 1; i <= n; i++) {
    path_index(c, i - 1);
    lua_rawgeti(L, idx, (int)i);
    int rc = norm(c, lua_gettop(L), depth + 1);
    if (rc) {
      lua_settop(L, dst - 1);
      return rc;
    }
    lua_remove(L, -2);           /* the source element */
    lua_rawseti(L, dst, (int)i);
    path_cut(c, base);
  }
  lua_pushvalue(L, c->array_mt);
  lua_setmetatable(L, dst);
  return RD_OK;
}

/* marked: object-marked (number keys allowed, written as text). */
static int norm_object(nctx *c, int idx, int depth, int marked) {
  lua_State *L = c->L;
  lua_newtable(L);
  int dst = lua_gettop(L);
  size_t base = c->path.len;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int kt = lua_type(L, -2);
    if (kt == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(L, -2, &kl);
      path_token(c, k, kl);
      if (!rd__utf8_valid(k, kl, NULL)) {
        lua_settop(L, dst - 1);
        return nfail(c, RD_EINVAL, "invalid UTF-8 in object key");
      }
      lua_pushvalue(L, -2);
    } else if (kt == LUA_TNUMBER) {
      double d = lua_tonumber(L, -2);
      char nb[40];
      size_t nl = isfinite(d) ? rd__json_fmt_number(nb, d) : 0;
      if (nl) path_token(c, nb, nl);
      else path_token(c, "?", 1);
      if (!marked) {
        lua_settop(L, dst - 1);
        return nfail(c, RD_EINVAL, "table mixes array and object keys");
      }
      if (!isfinite(d)) {
        lua_settop(L, dst - 1);
        return nfail(c, RD_EINVAL, "non-finite table key");
      }
      lua_pushlstring(L, nb, nl);
    } else {
      path_token(c, lua_typename(L, kt), strlen(lua_typename(L, kt)));
      lua_settop(L, dst - 1);
      return nfail(c, RD_EINVAL, "table key that is not a string or number");
    }
    /* stack: ... dst key value newkey */
    int rc = norm(c, lua_gettop(L) - 1, depth + 1);
    if (rc) {
      lua_settop(L, dst - 1);
      return rc;
    }
    /* ... dst key value newkey newvalue */
    lua_rawset(L, dst);
    lua_pop(L, 1);               /* value; key stays for lua_next */
    path_cut(c, base);
  }
  return RD_OK;
}

static int norm_table(nctx *c, int idx, int depth) {
  lua_State *L = c->L;
  if (depth >= c->max_depth) return nfail(c, RD_EINVAL, "nested deeper than the limit");
  const void *p = lua_topointer(L, idx);
  for (int i = 0; i < depth; i++)
    if (c->stack[i] == p) return nfail(c, RD_EINVAL, "cycle");
  if (!lua_checkstack(L, 10)) return nfail(c, RD_ENOMEM, "Lua stack exhausted");
  c->stack[depth] = p;
  int m = nmarker(c, idx);
  size_t n;
  int rc;
  if (m == 'a') {
    rc = array_keys(c, idx, &n);
    return rc ? rc : norm_array(c, idx, depth, n);
  }
  if (m == 'o') return norm_object(c, idx, depth, 1);
  lua_pushnil(L);
  if (!lua_next(L, idx)) {
    lua_newtable(L);
    return RD_OK;
  }
  int kt = lua_type(L, -2);
  lua_pop(L, 2);
  if (kt == LUA_TNUMBER) {
    rc = array_keys(c, idx, &n);
    return rc ? rc : norm_array(c, idx, depth, n);
  }
  return norm_object(c, idx, depth, 0);
}

static int norm(nctx *c, int idx, int depth) {
  lua_State *L = c->L;
  int t = lua_type(L, idx);
  switch (t) {
    case LUA_TNIL: lua_pushnil(L); return RD_OK;
    case LUA_TBOOLEAN: lua_pushboolean(L, lua_toboolean(L, idx)); return RD_OK;
    case LUA_TNUMBER: {
      double d = lua_tonumber(L, idx);
      if (isnan(d)) return nfail(c, RD_EINVAL, "NaN");
      if (isinf(d)) return nfail(c, RD_EINVAL, "infinite number");
      lua_pushnumber(L, d);
      return RD_OK;
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (!rd__utf8_valid(s, n, NULL)) {
        lua_pushlstring(L, c->path.data ? c->path.data : "", c->path.len);
        lua_rawseti(L, c->bins, ++c->nbin);
      }
      lua_pushvalue(L, idx);
      return RD_OK;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == RD_JSON_NULL) {
        lua_pushlightuserdata(L, RD_JSON_NULL);
        return RD_OK;
      }
      return nfail(c, RD_EINVAL, "userdata");
    case LUA_TTABLE: return norm_table(c, idx, depth);
    default: return nfail(c, RD_EINVAL, lua_typename(L, t));
  }
}

typedef struct njob {
  nctx *c;
  int rc;
} njob;

/* Protected body: (job, value) -> normalized, binary-paths. */
static int normalize_protected(lua_State *L) {
  njob *j = lua_touserdata(L, 1);
  nctx *c = j->c;
  rd__json_init(L);
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);    /* 3 */
  luaL_getmetatable(L, RD_JSON_OBJECT_MT);   /* 4 */
  c->array_mt = 3;
  c->object_mt = 4;
  lua_newtable(L);                           /* 5: binary paths */
  lua_pushvalue(L, 3);
  lua_setmetatable(L, 5);
  c->bins = 5;
  j->rc = norm(c, 2, 0);
  if (j->rc) return 0;
  lua_pushvalue(L, 5);
  return 2;
}

int rd__result_normalize(lua_State *L, int idx, const rd_result_opts *o,
                         rd_error *err) {
  rd_error_clear(err);
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  /* Not zeroed: the cycle stack (4 KiB) is written before it is read. */
  nctx *c = rd__malloc(sizeof *c);
  if (!c) return rd_error_set(err, RD_ENOMEM, "out of memory");
  c->L = L;
  c->nbin = c->bins = c->array_mt = c->object_mt = 0;
  c->max_depth = o && o->max_depth > 0 ? o->max_depth : RD_JSON_MAX_DEPTH;
  if (c->max_depth > RD_JSON_MAX_DEPTH * 4) c->max_depth = RD_JSON_MAX_DEPTH * 4;
  c->err = err;
  c->path = (rd_buf)RD_BUF_INIT;
  njob j = {c, RD_OK};
  int top = lua_gettop(L), rc;
  if (!lua_checkstack(L, 8)) {
    rc = rd_error_set(err, RD_ENOMEM, "Lua stack exhausted");
  } else {
    lua_pushcfunction(L, normalize_protected);
    lua_pushlightuserdata(L, &j);
    lua_pushvalue(L, idx);
    int st = lua_pcall(L, 2, LUA_MULTRET, 0);
    if (st != 0) {
      lua_settop(L, top);
      rc = rd_error_set(err, st == LUA_ERRMEM ? RD_ENOMEM : RD_EINTERNAL,
                        "normalizing the result: %s",
                        st == LUA_ERRMEM ? "out of memory" : "error");
    } else if (j.rc != RD_OK) {
      lua_settop(L, top);
      rc = j.rc;
    } else if (c->path.oom) {
      lua_settop(L, top);
      rc = rd_error_set(err, RD_ENOMEM, "out of memory");
    } else {
      rc = RD_OK;   /* two values pushed */
    }
  }
  rd__buf_free(&c->path);
  rd__freemem(c);
  return rc;
}

/* ---- normalization in place --------------------------------------------- */

/* Is the table at idx an array whose keys are exactly 1..n? (no failure
 * message: the copying path gives those) */
static int plain_array(lua_State *L, int idx, size_t *n) {
  size_t count = 0;
  double max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER) { lua_pop(L, 1); return 0; }
    double k = lua_tonumber(L, -1);
    if (!(k >= 1 && k <= TWO_53 && floor(k) == k)) { lua_pop(L, 1); return 0; }
    count++;
    if (k > max) max = k;
  }
  *n = count;
  return (double)count == max;
}

typedef struct ictx {
  lua_State *L;
  int max_depth;
  const void *array_mt, *object_mt;  /* the markers (lua_topointer) */
  int array_idx;                     /* stack index of the array marker */
  const void *stack[RD_JSON_MAX_DEPTH * 4 + 1];
} ictx;

static int inplace(ictx *c, int idx, int depth);

static int inplace_table(ictx *c, int idx, int depth) {
  lua_State *L = c->L;
  if (depth >= c->max_depth || !lua_checkstack(L, 6)) return RD_RESULT_NEEDS_COPY;
  const void *p = lua_topointer(L, idx);
  for (int i = 0; i < depth; i++)
    if (c->stack[i] == p) return RD_RESULT_NEEDS_COPY;
  c->stack[depth] = p;
  int m = 0;
  if (lua_getmetatable(L, idx)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == c->array_mt) m = 'a';
    else if (mt == c->object_mt) m = 'o';
    else return RD_RESULT_NEEDS_COPY; /* a metatable of its own: the copy decides */
  }
  int array;
  if (m) {
    array = m == 'a';
  } else {
    lua_pushnil(L);
    if (!lua_next(L, idx)) return RD_OK; /* {}: as the copy makes it */
    array = lua_type(L, -2) == LUA_TNUMBER;
    lua_pop(L, 2);
  }
  if (array) {
    size_t n;
    if (!plain_array(L, idx, &n)) return RD_RESULT_NEEDS_COPY;
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, (int)i);
      int rc = inplace(c, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
      if (rc) return rc;
    }
    if (m != 'a') {
      lua_pushvalue(L, c->array_idx);
      lua_setmetatable(L, idx);
    }
    return RD_OK;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t kl;
    const char *k;
    if (lua_type(L, -2) != LUA_TSTRING || (k = lua_tolstring(L, -2, &kl), !rd__utf8_valid(k, kl, NULL))) {
      lua_pop(L, 2);
      return RD_RESULT_NEEDS_COPY;
    }
    int rc = inplace(c, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
    if (rc) { lua_pop(L, 1); return rc; }
  }
  if (m == 'o') { /* the copy's objects carry no marker */
    lua_pushnil(L);
    lua_setmetatable(L, idx);
  }
  return RD_OK;
}

static int inplace(ictx *c, int idx, int depth) {
  lua_State *L = c->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
    case LUA_TBOOLEAN: return RD_OK;
    case LUA_TNUMBER: return isfinite(lua_tonumber(L, idx)) ? RD_OK : RD_RESULT_NEEDS_COPY;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      return rd__utf8_valid(s, n, NULL) ? RD_OK : RD_RESULT_NEEDS_COPY;
    }
    case LUA_TLIGHTUSERDATA: return lua_touserdata(L, idx) == RD_JSON_NULL ? RD_OK : RD_RESULT_NEEDS_COPY;
    case LUA_TTABLE: return inplace_table(c, idx, depth);
    default: return RD_RESULT_NEEDS_COPY;
  }
}

int rd__result_normalize_in_place(lua_State *L, int idx, int array_idx,
                                   int object_idx, int max_depth) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  if (!lua_checkstack(L, 4)) return RD_RESULT_NEEDS_COPY;
  ictx c; /* the cycle stack is written before it is read */
  c.L = L;
  c.max_depth = max_depth > 0 ? max_depth : RD_JSON_MAX_DEPTH;
  if (c.max_depth > RD_JSON_MAX_DEPTH * 4) c.max_depth = RD_JSON_MAX_DEPTH * 4;
  c.array_idx = array_idx;
  c.array_mt = lua_topointer(L, array_idx);
  c.object_mt = lua_topointer(L, object_idx);
  return inplace(&c, idx, 0);
}

/* ---- YAML --------------------------------------------------------------- */

static int yaml_write(void *data, unsigned char *buffer, size_t size) {
  rd_buf *b = data;
  rd__buf_append(b, buffer, size);
  return !b->oom;
}

typedef struct yctx {
  lua_State *L;
  yaml_emitter_t em;
  int array_mt;
  rd_error *err;
  int rc;
} yctx;

static int yfail(yctx *y, const char *what) {
  if (y->rc == RD_OK) {
    if (y->em.error == YAML_MEMORY_ERROR)
      y->rc = rd_error_set(y->err, RD_ENOMEM, "out of memory while writing YAML");
    else
      y->rc = rd_error_set(y->err, RD_EINVAL, "YAML: %s",
                           y->em.problem ? y->em.problem : what);
  }
  return 0;
}

static int yemit(yctx *y, yaml_event_t *ev, int ok) {
  if (!ok) return yfail(y, "cannot make an event");
  if (!yaml_emitter_emit(&y->em, ev)) return yfail(y, "emitter error");
  return 1;
}

static int ci_eq(const char *s, size_t n, const char *w) {
  size_t m = strlen(w);
  if (m != n) return 0;
  for (size_t i = 0; i < n; i++) {
    char a = s[i];
    if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
    if (a != w[i]) return 0;
  }
  return 1;
}

/* A string that reads back as the same string when written plain, under
 * YAML 1.2's core schema and YAML 1.1's types alike: a letter or '_'
 * first, then letters, digits, '_', '-', '.', '/', inner single spaces;
 * none of the words 1.1 or 1.2 read as booleans or null. */
static int plain_safe(const char *s, size_t n) {
  static const char *const words[] = {"y", "n", "yes", "no", "on", "off", "true",
                                      "false", "null", "nan", "inf"};
  if (n == 0 || n > 200) return 0;
  char f = s[0];
  if (!((f >= 'a' && f <= 'z') || (f >= 'A' && f <= 'Z') || f == '_')) return 0;
  if (s[n - 1] == ' ') return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
             (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.' ||
             ch == '/' || (ch == ' ' && s[i + 1] != ' ');
    if (!ok) return 0;
  }
  for (size_t i = 0; i < RD_COUNTOF(words); i++)
    if (ci_eq(s, n, words[i])) return 0;
  return 1;
}

static int ystring(yctx *y, const char *s, size_t n) {
  yaml_event_t ev;
  if (!rd__utf8_valid(s, n, NULL)) {
    size_t bl = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    char *b = rd__malloc(bl);
    if (!b) {
      y->rc = rd_error_set(y->err, RD_ENOMEM, "out of memory while writing YAML");
      return 0;
    }
    sodium_bin2base64(b, bl, (const unsigned char *)s, n, sodium_base64_VARIANT_ORIGINAL);
    int ok = yemit(y, &ev, yaml_scalar_event_initialize(&ev, NULL,
        (yaml_char_t *)"tag:yaml.org,2002:binary", (yaml_char_t *)b, (int)(bl - 1), 0, 0,
        YAML_PLAIN_SCALAR_STYLE));
    rd__freemem(b);
    return ok;
  }
  if (n > 0x7fffffff) return yfail(y, "string too long");
  int plain = plain_safe(s, n);
  return yemit(y, &ev, yaml_scalar_event_initialize(&ev, NULL,
      (yaml_char_t *)YAML_STR_TAG, (yaml_char_t *)s, (int)n, plain, !plain,
      plain ? YAML_PLAIN_SCALAR_STYLE : YAML_DOUBLE_QUOTED_SCALAR_STYLE));
}

static int yplain(yctx *y, const char *tag, const char *s) {
  yaml_event_t ev;
  return yemit(y, &ev, yaml_scalar_event_initialize(&ev, NULL, (yaml_char_t *)tag,
      (yaml_char_t *)s, (int)strlen(s), 1, 0, YAML_PLAIN_SCALAR_STYLE));
}

static int ynode(yctx *y, int idx, int depth);

typedef struct ykey {
  const char *s;
  size_t len;
} ykey;

static int ykey_cmp(const void *a, const void *b) {
  const ykey *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->s, y->s, n);
  if (c) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

static int ytable(yctx *y, int idx, int depth) {
  lua_State *L = y->L;
  yaml_event_t ev;
  if (depth > RD_JSON_MAX_DEPTH * 4 || !lua_checkstack(L, 6)) return yfail(y, "nested too deep");
  int is_array = 0;
  if (lua_getmetatable(L, idx)) {
    is_array = lua_rawequal(L, -1, y->array_mt);
    lua_pop(L, 1);
  }
  if (is_array) {
    if (!yemit(y, &ev, yaml_sequence_start_event_initialize(&ev, NULL,
        (yaml_char_t *)YAML_SEQ_TAG, 1, YAML_BLOCK_SEQUENCE_STYLE))) return 0;
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, (int)i);
      int ok = ynode(y, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
      if (!ok) return 0;
    }
    return yemit(y, &ev, yaml_sequence_end_event_initialize(&ev));
  }
  if (!yemit(y, &ev, yaml_mapping_start_event_initialize(&ev, NULL,
      (yaml_char_t *)YAML_MAP_TAG, 1, YAML_BLOCK_MAPPING_STYLE))) return 0;
  /* keys in byte order, so the text is stable */
  size_t nk = 0, cap = 0;
  ykey *keys = NULL;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      rd__freemem(keys);
      y->rc = rd_error_set(y->err, RD_EINVAL, "YAML: a key that is not a string (normalize first)");
      return 0;
    }
    if (nk == cap) {
      size_t nc = cap ? cap * 2 : 16;
      ykey *k2 = rd__realloc(keys, nc * sizeof *keys);
      if (!k2) {
        lua_pop(L, 1);
        rd__freemem(keys);
        y->rc = rd_error_set(y->err, RD_ENOMEM, "out of memory while writing YAML");
        return 0;
      }
      keys = k2;
      cap = nc;
    }
    keys[nk].s = lua_tolstring(L, -1, &keys[nk].len);   /* kept alive by the table */
    nk++;
  }
  if (nk > 1) qsort(keys, nk, sizeof *keys, ykey_cmp);
  for (size_t i = 0; i < nk; i++) {
    lua_pushlstring(L, keys[i].s, keys[i].len);
    lua_rawget(L, idx);
    int ok = ystring(y, keys[i].s, keys[i].len) && ynode(y, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
    if (!ok) {
      rd__freemem(keys);
      return 0;
    }
  }
  rd__freemem(keys);
  return yemit(y, &ev, yaml_mapping_end_event_initialize(&ev));
}

static int ynode(yctx *y, int idx, int depth) {
  lua_State *L = y->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return yplain(y, YAML_NULL_TAG, "null");
    case LUA_TBOOLEAN:
      return yplain(y, YAML_BOOL_TAG, lua_toboolean(L, idx) ? "true" : "false");
    case LUA_TNUMBER: {
      double d = lua_tonumber(L, idx);
      if (!isfinite(d)) {
        y->rc = rd_error_set(y->err, RD_EINVAL, "YAML: a number that is not finite");
        return 0;
      }
      char nb[48];
      size_t n = rd__json_fmt_number(nb, d);
      int integral = strchr(nb, '.') == NULL && strchr(nb, 'e') == NULL;
      char *e = strchr(nb, 'e');
      if (e && !strchr(nb, '.')) {   /* 1e+22 -> 1.0e+22: a float in 1.1 too */
        memmove(e + 2, e, (size_t)(nb + n - e) + 1);
        e[0] = '.';
        e[1] = '0';
      }
      return yplain(y, integral ? YAML_INT_TAG : YAML_FLOAT_TAG, nb);
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      return ystring(y, s, n);
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == RD_JSON_NULL) return yplain(y, YAML_NULL_TAG, "null");
      break;
    case LUA_TTABLE: return ytable(y, idx, depth);
    default: break;
  }
  y->rc = rd_error_set(y->err, RD_EINVAL, "YAML: a value of type %s (normalize first)",
                       lua_typename(L, lua_type(L, idx)));
  return 0;
}

int rd__result_yaml(lua_State *L, int idx, rd_buf *out, rd_error *err) {
  rd_error_clear(err);
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  size_t orig = out->len;
  yctx y;
  memset(&y, 0, sizeof y);
  y.L = L;
  y.err = err;
  y.rc = RD_OK;
  if (!lua_checkstack(L, 4)) return rd_error_set(err, RD_ENOMEM, "Lua stack exhausted");
  rd__json_init(L);
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  y.array_mt = lua_gettop(L);
  if (!yaml_emitter_initialize(&y.em)) {
    lua_pop(L, 1);
    return rd_error_set(err, RD_ENOMEM, "out of memory while writing YAML");
  }
  yaml_emitter_set_output(&y.em, yaml_write, out);
  yaml_emitter_set_unicode(&y.em, 1);
  yaml_emitter_set_width(&y.em, -1);
  yaml_emitter_set_indent(&y.em, 2);
  yaml_event_t ev;
  int ok = yemit(&y, &ev, yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING)) &&
           yemit(&y, &ev, yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1)) &&
           ynode(&y, idx, 0) &&
           yemit(&y, &ev, yaml_document_end_event_initialize(&ev, 1)) &&
           yemit(&y, &ev, yaml_stream_end_event_initialize(&ev)) &&
           (yaml_emitter_flush(&y.em) || yfail(&y, "flush"));
  yaml_emitter_delete(&y.em);
  lua_pop(L, 1);
  if (!ok || out->oom) {
    if (y.rc == RD_OK || out->oom)
      y.rc = rd_error_set(err, RD_ENOMEM, "out of memory while writing YAML");
    out->len = orig;
    if (out->data) out->data[orig] = '\0';
    return y.rc;
  }
  return RD_OK;
}

/* ---- digest, compression ------------------------------------------------- */

void rd__result_digest(const void *data, size_t len, char hex[65]) {
  /* A digest of data the envelope shows anyway: no secret, so a table
   * lookup per nibble, not sodium_bin2hex's constant-time arithmetic (a
   * tenth of the cost of a small result's whole stage 4). */
  static const char digits[] = "0123456789abcdef";
  unsigned char h[32];
  crypto_generichash(h, sizeof h, data, len, NULL, 0);
  for (size_t i = 0; i < sizeof h; i++) {
    hex[2 * i] = digits[h[i] >> 4];
    hex[2 * i + 1] = digits[h[i] & 15];
  }
  hex[64] = '\0';
}

int rd__result_compress(const void *data, size_t len, int level, rd_buf *out,
                        rd_error *err) {
  if (level == 0) level = 3;
  if (level < 1 || level > 19)
    return rd_error_set(err, RD_EINVAL, "compression level must be 1..19, got %d", level);
  size_t bound = ZSTD_compressBound(len);
  if (rd__buf_reserve(out, bound) != RD_OK)
    return rd_error_set(err, RD_ENOMEM, "out of memory while compressing");
  size_t n = ZSTD_compress(out->data + out->len, bound, data, len, level);
  if (ZSTD_isError(n))
    return rd_error_set(err, RD_EINTERNAL, "zstd: %s", ZSTD_getErrorName(n));
  out->len += n;
  out->data[out->len] = '\0';
  return RD_OK;
}

int rd__result_decompress(const void *data, size_t len, size_t max,
                          rd_buf *out, rd_error *err) {
  unsigned long long size = ZSTD_getFrameContentSize(data, len);
  if (size == ZSTD_CONTENTSIZE_ERROR)
    return rd_error_set(err, RD_EINVAL, "not a zstd frame");
  size_t orig = out->len;
  if (size != ZSTD_CONTENTSIZE_UNKNOWN) {
    if (size > max)
      return rd_error_set(err, RD_EINVAL, "zstd frame holds %llu bytes, more than %zu", size, max);
    if (rd__buf_reserve(out, (size_t)size) != RD_OK)
      return rd_error_set(err, RD_ENOMEM, "out of memory while decompressing");
    size_t n = ZSTD_decompress(out->data + out->len, (size_t)size, data, len);
    if (ZSTD_isError(n))
      return rd_error_set(err, RD_EINVAL, "corrupt zstd frame: %s", ZSTD_getErrorName(n));
    out->len += n;
    out->data[out->len] = '\0';
    return RD_OK;
  }
  /* Size not in the header: stream, stopping at max. */
  ZSTD_DStream *ds = ZSTD_createDStream();
  if (!ds) return rd_error_set(err, RD_ENOMEM, "out of memory while decompressing");
  ZSTD_inBuffer in = {data, len, 0};
  int rc = RD_OK;
  size_t r = 1;
  while (r != 0) {
    if (rd__buf_reserve(out, 65536) != RD_OK) {
      rc = rd_error_set(err, RD_ENOMEM, "out of memory while decompressing");
      break;
    }
    ZSTD_outBuffer ob = {out->data + out->len, out->cap - out->len - 1, 0};
    r = ZSTD_decompressStream(ds, &ob, &in);
    if (ZSTD_isError(r)) {
      rc = rd_error_set(err, RD_EINVAL, "corrupt zstd frame: %s", ZSTD_getErrorName(r));
      break;
    }
    out->len += ob.pos;
    if (out->len - orig > max) {
      rc = rd_error_set(err, RD_EINVAL, "zstd frame holds more than %zu bytes", max);
      break;
    }
    if (r != 0 && in.pos == in.size && ob.pos == 0) {
      rc = rd_error_set(err, RD_EINVAL, "corrupt zstd frame: truncated");
      break;
    }
  }
  ZSTD_freeDStream(ds);
  if (rc != RD_OK) out->len = orig;
  if (out->data) out->data[out->len] = '\0';
  return rc;
}
