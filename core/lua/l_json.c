/*
 * l_json.c — core.json, the Lua binding of the JSON codec (json.c).
 *
 *   json.decode(text [, opts])  -> value | nil, message
 *   json.encode(value [, opts]) -> string | nil, message
 *       opts: { max_depth = 1..1000 (default 128), sort_keys = bool,
 *               pretty = bool, canonical = bool, binary = bool }
 *               (all but max_depth only matter to encode; canonical: sorted
 *               keys, no whitespace; binary: strings that are not valid
 *               UTF-8 written as base64 instead of failing; see json.h)
 *   json.null                   the light userdata that null decodes to
 *   json.array_mt, json.object_mt
 *                               the marker metatables (decoded arrays carry
 *                               array_mt; both have a field __jsontype)
 *   json.array([t]) -> t        marks t (or a new table) as an array
 *   json.object([t]) -> t       marks t (or a new table) as an object
 *   json.is_array(v) -> bool    true if encode would write v as an array
 *   json.utf8_valid(s) -> true | false, offset
 *                               offset: 0-based offset of the first byte of
 *                               the first ill-formed sequence, i.e. the length
 *                               of the valid prefix
 *
 * Invalid JSON and unencodable values are failures (nil, message); a wrong
 * argument type is misuse and raises. Running out of memory raises "not
 * enough memory", as Lua itself does.
 *
 * Numbers: integers up to 2^53 are exact both ways; -0 decodes to -0.0 and
 * encodes as 0. Duplicate keys: the last wins. See json.c for the rest.
 */
#include "json.h"
#include "lua/bind.h"

#include <math.h>
#include <string.h>

static void check_opts(lua_State *L, int i, rd_json_opts *o) {
  memset(o, 0, sizeof *o);
  if (lua_isnoneornil(L, i)) return;
  luaL_checktype(L, i, LUA_TTABLE);
  lua_getfield(L, i, "max_depth");
  if (!lua_isnil(L, -1)) {
    double d = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || d < 1 || d > 1000 || floor(d) != d)
      luaL_argerror(L, i, "max_depth must be an integer in 1..1000");
    o->max_depth = (int)d;
  }
  lua_pop(L, 1);
  static const char *const flags[] = {"sort_keys", "pretty", "canonical", "binary"};
  int *dst[] = {&o->sort_keys, &o->pretty, &o->canonical, &o->binary};
  for (int k = 0; k < 4; k++) {
    lua_getfield(L, i, flags[k]);
    int t = lua_type(L, -1);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
      lua_pushfstring(L, "%s must be a boolean", flags[k]);
      luaL_argerror(L, i, lua_tostring(L, -1));
    }
    *dst[k] = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
}

/* RD_EJSON is a failure value; running out of memory raises "not enough
 * memory" as Lua does; anything else (an error raised by a hook while the
 * codec ran, e.g. a sandbox breach) is raised again with its message. */
static int failure(lua_State *L, int rc, const rd_error *err) {
  if (rc == RD_EJSON) {
    lua_pushnil(L);
    lua_pushstring(L, err->message);
    return 2;
  }
  if (rc == RD_ENOMEM) lua_pushliteral(L, "not enough memory");
  else lua_pushstring(L, err->message);
  return lua_error(L);
}

static int l_decode(lua_State *L) {
  size_t len;
  rd_json_opts o;
  rd_error err;
  luaL_checktype(L, 1, LUA_TSTRING);
  const char *s = lua_tolstring(L, 1, &len);
  check_opts(L, 2, &o);
  int rc = rd__json_decode_here(L, s, len, &o, &err);
  if (rc == RD_OK) return 1;
  return failure(L, rc, &err);
}

/* encode runs the codec and pushes its output inside a protected call, so
 * that a memory error while pushing the string cannot leak the buffer. */
typedef struct encode_call {
  rd_json_opts opts;
  rd_buf buf;
  rd_error err;
  int rc;
} encode_call;

static int encode_push(lua_State *L) {
  encode_call *c = lua_touserdata(L, 1);
  c->rc = rd__json_encode(L, 2, &c->buf, &c->opts, &c->err);
  if (c->rc != RD_OK) return 0;
  lua_pushlstring(L, c->buf.data ? c->buf.data : "", c->buf.len);
  return 1;
}

/* encode(v [, opts]); as encode_canonical(v), upvalue 2 is true: the
 * canonical form without an options table to read. */
static int l_encode(lua_State *L) {
  encode_call c;
  luaL_checkany(L, 1);
  if (lua_toboolean(L, lua_upvalueindex(2))) {
    memset(&c.opts, 0, sizeof c.opts);
    c.opts.canonical = 1;
  } else {
    check_opts(L, 2, &c.opts);
  }
  lua_settop(L, 1);
  c.buf = (rd_buf)RD_BUF_INIT;
  c.rc = RD_OK;
  lua_pushvalue(L, lua_upvalueindex(1));   /* encode_push */
  lua_pushlightuserdata(L, &c);
  lua_pushvalue(L, 1);
  int st = lua_pcall(L, 2, 1, 0);
  rd__buf_free(&c.buf);
  if (st != 0) return lua_error(L);        /* only memory errors get here */
  if (c.rc == RD_OK) return 1;
  return failure(L, c.rc, &c.err);
}

static int mark(lua_State *L, const char *mt) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
  }
  luaL_getmetatable(L, mt);
  lua_setmetatable(L, 1);
  return 1;
}

static int l_array(lua_State *L) { return mark(L, RD_JSON_ARRAY_MT); }
static int l_object(lua_State *L) { return mark(L, RD_JSON_OBJECT_MT); }

static int l_is_array(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, rd__json_is_array(L, 1));
  return 1;
}

static int l_utf8_valid(lua_State *L) {
  size_t len, bad = 0;
  luaL_checktype(L, 1, LUA_TSTRING);
  const char *s = lua_tolstring(L, 1, &len);
  if (rd__utf8_valid(s, len, &bad)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushnumber(L, (lua_Number)bad);
  return 2;
}

int rd__luaopen_json(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"array", l_array},
    {"object", l_object},
    {"is_array", l_is_array},
    {"utf8_valid", l_utf8_valid},
    {NULL, NULL},
  };
  rd__json_init(L);
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  rd__json_push_decoder(L, l_decode);
  lua_setfield(L, -2, "decode");
  lua_pushcfunction(L, encode_push);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, l_encode, 2);
  lua_setfield(L, -2, "encode");
  lua_pushcfunction(L, encode_push);
  lua_pushboolean(L, 1);
  lua_pushcclosure(L, l_encode, 2);
  lua_setfield(L, -2, "encode_canonical");
  lua_pushlightuserdata(L, RD_JSON_NULL);
  lua_setfield(L, -2, "null");
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  lua_setfield(L, -2, "array_mt");
  luaL_getmetatable(L, RD_JSON_OBJECT_MT);
  lua_setfield(L, -2, "object_mt");
  return 1;
}
