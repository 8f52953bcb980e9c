/*
 * l_telemetry.c — core.telemetry: the event bus from Lua.
 *
 *   local bus = core.telemetry.new()
 *   bus:emit(name, { duration_ms = 1.2 }, { tool = "echo" }) -> delivered
 *   local id = bus:subscribe(prefix, function(ev) ... end)
 *       ev = { name =, time =, measurements = {...}, metadata = {...} }
 *   bus:unsubscribe(id); bus:count(); bus:errors(); bus:pointer(); bus:close()
 *   bus:wants(name) -> true if an event `name` would reach a subscriber
 *
 * A Lua subscriber that raises is reported on stderr (first time per
 * subscriber) and counted in bus:errors(); the event still reaches the rest.
 * Metadata values that are not strings are converted with tostring rules
 * for numbers and booleans; other types are skipped.
 */
#include "rd.h"
#include "lua/bind.h"
#include "telemetry.h"

#include <stdio.h>
#include <string.h>

#define BUS_MT "rubberduck.telemetry"
#define MAX_FIELDS 48

typedef struct bus {
  rd_telemetry *t;
  lua_State *cbL;   /* thread Lua subscribers run on */
  int cbref;
  double errors;
} bus;

typedef struct lsub {
  bus *b;
  int fnref;
  int id;
  int reported;
} lsub;

static bus *check_bus(lua_State *L, int idx) {
  bus *b = luaL_checkudata(L, idx, BUS_MT);
  if (!b->t) luaL_argerror(L, idx, "telemetry bus is closed");
  return b;
}

static int l_new(lua_State *L) {
  bus *b = lua_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  luaL_getmetatable(L, BUS_MT);
  lua_setmetatable(L, -2);
  rd_error err;
  if (rd__telemetry_new(&b->t, &err) != RD_OK) return luaL_error(L, "%s", err.message);
  lua_newtable(L); /* the Lua subscribers, by id */
  lua_setfenv(L, -2);
  b->cbL = lua_newthread(L);
  b->cbref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static void lua_subscriber(const rd_event *ev, void *ud) {
  lsub *s = ud;
  lua_State *L = s->b->cbL;
  if (!lua_checkstack(L, 8)) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fnref);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, ev->name);
  lua_setfield(L, -2, "name");
  lua_pushnumber(L, ev->time);
  lua_setfield(L, -2, "time");
  lua_createtable(L, 0, (int)ev->n_measurements);
  for (size_t i = 0; i < ev->n_measurements; i++) {
    lua_pushnumber(L, ev->measurements[i].value);
    lua_setfield(L, -2, ev->measurements[i].key);
  }
  lua_setfield(L, -2, "measurements");
  lua_createtable(L, 0, (int)ev->n_metadata);
  for (size_t i = 0; i < ev->n_metadata; i++) {
    lua_pushstring(L, ev->metadata[i].value);
    lua_setfield(L, -2, ev->metadata[i].key);
  }
  lua_setfield(L, -2, "metadata");
  if (lua_pcall(L, 1, 0, 0) != 0) {
    s->b->errors++;
    if (!s->reported) {
      s->reported = 1;
      fprintf(stderr, "rubberduck: telemetry subscriber %d raised on '%s': %s\n",
              s->id, ev->name, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
  }
}

static int l_subscribe(lua_State *L) {
  bus *b = check_bus(L, 1);
  const char *prefix = luaL_optstring(L, 2, "");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lsub *s = rd__calloc(1, sizeof *s);
  if (!s) return luaL_error(L, "out of memory");
  s->b = b;
  lua_pushvalue(L, 3);
  s->fnref = luaL_ref(L, LUA_REGISTRYINDEX);
  rd_error err;
  if (rd__telemetry_subscribe(b->t, prefix, lua_subscriber, s, &s->id, &err) != RD_OK) {
    luaL_unref(L, LUA_REGISTRYINDEX, s->fnref);
    rd__freemem(s);
    return luaL_error(L, "%s", err.message);
  }
  /* Remember Lua subscribers so close/unsubscribe can release them. */
  lua_getfenv(L, 1);
  lua_pushlightuserdata(L, s);
  lua_rawseti(L, -2, s->id);
  lua_pop(L, 1);
  lua_pushinteger(L, s->id);
  return 1;
}

static void release_lua_sub(lua_State *L, int id, lsub *s) {
  luaL_unref(L, LUA_REGISTRYINDEX, s->fnref);
  rd__freemem(s);
  RD_UNUSED(id);
}

static int l_unsubscribe(lua_State *L) {
  bus *b = check_bus(L, 1);
  int id = (int)luaL_checkinteger(L, 2);
  lua_getfenv(L, 1);
  lua_rawgeti(L, -1, id);
  lsub *s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (s) {
    rd__telemetry_unsubscribe(b->t, id);
    lua_pushnil(L);
    lua_rawseti(L, -2, id);
    release_lua_sub(L, id, s);
  } else {
    rd__telemetry_unsubscribe(b->t, id); /* a C subscriber: nothing to free */
  }
  return 0;
}

static int l_emit(lua_State *L) {
  bus *b = check_bus(L, 1);
  rd_event ev;
  rd_kv_num nums[MAX_FIELDS];
  rd_kv_str strs[MAX_FIELDS];
  memset(&ev, 0, sizeof ev);
  ev.name = luaL_checkstring(L, 2);
  size_t nn = 0, ns = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 3) && nn < MAX_FIELDS) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TNUMBER) {
        nums[nn].key = lua_tostring(L, -2);
        nums[nn++].value = lua_tonumber(L, -1);
      }
      lua_pop(L, 1);
    }
    if (nn == MAX_FIELDS) lua_settop(L, 4);
  }
  lua_settop(L, 4);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    /* Converted values are kept alive in a scratch table at index 5. */
    lua_newtable(L);
    int kept = 0;
    lua_pushnil(L);
    while (lua_next(L, 4) && ns < MAX_FIELDS) {
      int vt = lua_type(L, -1);
      if (lua_type(L, -2) == LUA_TSTRING &&
          (vt == LUA_TSTRING || vt == LUA_TNUMBER || vt == LUA_TBOOLEAN)) {
        if (vt == LUA_TBOOLEAN) {
          lua_pushstring(L, lua_toboolean(L, -1) ? "true" : "false");
        } else {
          lua_pushvalue(L, -1);
          lua_tostring(L, -1); /* converts the copy, not the table's value */
        }
        strs[ns].key = lua_tostring(L, -3);
        strs[ns++].value = lua_tostring(L, -1);
        lua_rawseti(L, 5, ++kept);
      }
      lua_pop(L, 1);
    }
  }
  ev.n_measurements = nn;
  ev.measurements = nums;
  ev.n_metadata = ns;
  ev.metadata = strs;
  lua_pushinteger(L, rd__telemetry_emit(b->t, &ev));
  return 1;
}

static int l_count(lua_State *L) {
  bus *b = check_bus(L, 1);
  lua_pushnumber(L, (double)rd__telemetry_count(b->t));
  return 1;
}

static int l_wants(lua_State *L) {
  bus *b = check_bus(L, 1);
  lua_pushboolean(L, rd__telemetry_wants(b->t, luaL_checkstring(L, 2)));
  return 1;
}

static int l_errors(lua_State *L) {
  bus *b = check_bus(L, 1);
  lua_pushnumber(L, b->errors);
  return 1;
}

static int l_pointer(lua_State *L) {
  bus *b = check_bus(L, 1);
  lua_pushlightuserdata(L, b->t);
  return 1;
}

static int l_close(lua_State *L) {
  bus *b = luaL_checkudata(L, 1, BUS_MT);
  if (!b->t) return 0;
  lua_getfenv(L, 1);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lsub *s = lua_touserdata(L, -1);
    if (s) release_lua_sub(L, (int)lua_tointeger(L, -2), s);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_setfenv(L, 1);
  rd__telemetry_free(b->t);
  b->t = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, b->cbref);
  return 0;
}

int rd__luaopen_telemetry(lua_State *L) {
  static const luaL_Reg m[] = {
    {"emit", l_emit}, {"subscribe", l_subscribe}, {"unsubscribe", l_unsubscribe},
    {"count", l_count}, {"wants", l_wants}, {"errors", l_errors}, {"pointer", l_pointer},
    {"close", l_close}, {"__gc", l_close}, {NULL, NULL},
  };
  return rd__lua_class(L, BUS_MT, m, l_new);
}
