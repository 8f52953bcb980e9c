/*
 * toolcore.c — the C table of a tool state's bootstrap. See toolcore.h.
 */
#include "rd.h"
#include "json.h"
#include "sandbox/fs.h"
#include "sandbox/lstate.h"
#include "sandbox/toolcore.h"

#include <lauxlib.h>

#define MAX_NOTE 4096
#define MAX_ROOTS 64

static int t_notify(lua_State *L) {
  rd_notify_fn fn = (rd_notify_fn)(uintptr_t)lua_touserdata(L, lua_upvalueindex(1));
  void *ud = lua_touserdata(L, lua_upvalueindex(2));
  size_t len;
  const char *kind = luaL_checkstring(L, 1);
  double a = luaL_optnumber(L, 2, 0), b = luaL_optnumber(L, 3, 0);
  const char *text = luaL_optlstring(L, 4, "", &len);
  if (len > MAX_NOTE) len = MAX_NOTE; /* a log line is not a data channel */
  fn(ud, kind, a, b, text, len);
  return 0;
}

static int t_fs(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  double max = luaL_optnumber(L, 2, 0);
  int n = (int)lua_objlen(L, 1);
  if (n > MAX_ROOTS) return luaL_error(L, "too many allowed paths (at most %d)", MAX_ROOTS);
  const char *roots[MAX_ROOTS];
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    roots[i] = luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the string stays alive in the table at index 1 */
  }
  rd_error err;
  if (rd__fs_push(L, roots, (size_t)n, (int64_t)max, &err) != RD_OK)
    return luaL_error(L, "%s", err.message);
  return 1;
}

static int t_ulid(lua_State *L) {
  char id[RD_ULID_LEN + 1];
  rd_ulid_new(id);
  lua_pushstring(L, id);
  return 1;
}

static int t_now(lua_State *L) {
  lua_pushnumber(L, rd__now());
  return 1;
}

static int t_mono_ms(lua_State *L) {
  lua_pushnumber(L, (double)rd__mono_ns() / 1e6);
  return 1;
}

static int t_sleep(lua_State *L) {
  double ms = luaL_checknumber(L, 1);
  if (ms > 3600e3) return luaL_argerror(L, 1, "at most one hour");
  rd__lstate_sleep(L, ms);
  return 0;
}

static int t_violation(lua_State *L) {
  return rd__lstate_breach(L, RD_BREACH_VIOLATION, "%s", luaL_checkstring(L, 1));
}

/* A copy of the value at idx, pushed: tables copied deep (each with its
 * metatable), keys and other values as they are. For plain data the
 * engine made (no cycles), such as the caller the bootstrap keeps. */
#define FRESH_DEPTH 64
static void fresh(lua_State *L, int idx, int depth) {
  if (lua_type(L, idx) != LUA_TTABLE) {
    lua_pushvalue(L, idx);
    return;
  }
  if (depth > FRESH_DEPTH) luaL_error(L, "fresh: nested deeper than %d", FRESH_DEPTH);
  luaL_checkstack(L, 6, "fresh");
  int narr = (int)lua_objlen(L, idx), nrec = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    nrec++;
    lua_pop(L, 1);
  }
  lua_createtable(L, narr, nrec > narr ? nrec - narr : 0);
  lua_pushnil(L);
  while (lua_next(L, idx)) {              /* copy, key, value */
    fresh(L, lua_gettop(L), depth + 1);   /* copy, key, value, value' */
    lua_pushvalue(L, -3);
    lua_insert(L, -2);                    /* copy, key, value, key, value' */
    lua_rawset(L, -5);
    lua_pop(L, 1);
  }
  if (lua_getmetatable(L, idx)) lua_setmetatable(L, -2);
}

static int t_fresh(lua_State *L) {
  luaL_checkany(L, 1);
  fresh(L, 1, 0);
  return 1;
}

static int open_toolcore(lua_State *L) {
  static const luaL_Reg fns[] = {
    {"fs", t_fs}, {"ulid", t_ulid}, {"now", t_now}, {"mono_ms", t_mono_ms},
    {"sleep", t_sleep}, {"violation", t_violation}, {"fresh", t_fresh}, {NULL, NULL},
  };
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  rd__luaopen_json(L);
  lua_setfield(L, -2, "json");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushcclosure(L, t_notify, 2);
  lua_setfield(L, -2, "notify");
  return 1;
}

void rd__toolcore_preload(lua_State *L, rd_notify_fn fn, void *ud) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushlightuserdata(L, (void *)(uintptr_t)fn);
  lua_pushlightuserdata(L, ud);
  lua_pushcclosure(L, open_toolcore, 2);
  lua_setfield(L, -2, "rubberduck.toolcore");
  lua_pop(L, 2);
}
