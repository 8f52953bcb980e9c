/*
 * l_core.c — the `rubberduck.core` module: the raw bindings of the C core,
 * one sub-table per C module. The modules under lua/rubberduck/ wrap them into the API
 * people use.
 */
#include "rd.h"
#include "lua/bind.h"
#include "sandbox/pattern.h"
#include "engine.h"
#include "store/store.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

static int l_ulid(lua_State *L) {
  char id[RD_ULID_LEN + 1];
  rd_ulid_new(id);
  lua_pushlstring(L, id, RD_ULID_LEN);
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, rd__now());
  return 1;
}

static int l_mono_ms(lua_State *L) {
  lua_pushnumber(L, (double)rd__mono_ns() / 1e6);
  return 1;
}

/* listdir(path) -> { name, ... } (unsorted, without . and ..) | nil, message */
static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  return 1;
}

static int l_worker_path(lua_State *L) {
  const char *p = rd__worker_path();
  if (p) lua_pushstring(L, p); else lua_pushnil(L);
  return 1;
}

void *rd__lua_newobj(lua_State *L, size_t size, const char *mt_name) {
  void *p = lua_newuserdata(L, size);
  memset(p, 0, size);
  luaL_getmetatable(L, mt_name);
  lua_setmetatable(L, -2);
  return p;
}

void rd__lua_checkcallable(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  if (t == LUA_TFUNCTION) return;
  if ((t == LUA_TTABLE || t == LUA_TUSERDATA) && luaL_getmetafield(L, idx, "__call")) {
    lua_pop(L, 1);
    return;
  }
  luaL_typerror(L, idx, "callable");
}

int rd__lua_fail(lua_State *L, const rd_error *err) {
  lua_pushnil(L);
  lua_pushstring(L, err->message[0] ? err->message : rd_strerror(err->code));
  lua_pushstring(L, rd_err_name(err->code));
  return 3;
}

int rd__lua_class(lua_State *L, const char *mt_name, const luaL_Reg *m,
                  lua_CFunction ctor) {
  if (luaL_newmetatable(L, mt_name)) {
    luaL_register(L, NULL, m);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, ctor);
  lua_setfield(L, -2, "new");
  return 1;
}

/* Keep this module mapped for the life of the process: its call threads
 * (l_lstate.c) run its code and wait on its static condition variable, and
 * lua_close() would otherwise dlclose() it under them at exit. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)pin_module, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int luaopen_rubberduck_core(lua_State *L) {
  pin_module();
  static const luaL_Reg fns[] = {
    {"ulid", l_ulid},
    {"now", l_now},
    {"mono_ms", l_mono_ms},
    {"listdir", l_listdir},
    {"worker_path", l_worker_path},
    {NULL, NULL},
  };
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  lua_pushliteral(L, RD_VERSION_STRING);
  lua_setfield(L, -2, "version");
  rd__luaopen_json(L);
  lua_setfield(L, -2, "json");
  rd__luaopen_format(L);
  lua_setfield(L, -2, "format");
  rd__luaopen_loop(L);
  lua_setfield(L, -2, "loop");
  rd__luaopen_lstate(L);
  lua_setfield(L, -2, "lstate");
  rd__luaopen_telemetry(L);
  lua_setfield(L, -2, "telemetry");
  rd__luaopen_worker(L);
  lua_setfield(L, -2, "zygote");
  rd__luaopen_sign(L);
  lua_setfield(L, -2, "sign");
  rd__luaopen_store(L);
  lua_setfield(L, -2, "store");
  rd__luaopen_results(L);
  lua_setfield(L, -2, "results");
  rd__pattern_open(L); /* the tool states' string.find ... (tests, benchmarks) */
  lua_setfield(L, -2, "pattern");
  return 1;
}
