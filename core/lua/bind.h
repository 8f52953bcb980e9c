/*
 * bind.h — the Lua bindings of the C core. One file per C module
 * (l_<module>.c); luaopen_rubberduck_core (l_core.c) assembles them into the
 * `rubberduck.core` module. Each opener pushes one table.
 */
#ifndef RD_BIND_H
#define RD_BIND_H

#include <lua.h>
#include <lauxlib.h>

int rd__luaopen_json(lua_State *L);       /* l_json.c: core.json */
int rd__luaopen_format(lua_State *L);     /* l_format.c: core.format */
int rd__luaopen_telemetry(lua_State *L);  /* l_telemetry.c: core.telemetry */
int rd__luaopen_lstate(lua_State *L);     /* l_lstate.c: core.lstate */
int rd__luaopen_loop(lua_State *L);       /* l_loop.c: core.loop */
int rd__luaopen_worker(lua_State *L);     /* l_worker.c: core.zygote */
int rd__luaopen_sign(lua_State *L);       /* l_sign.c: core.sign */
int rd__luaopen_store(lua_State *L);      /* l_store.c: core.store */
int rd__luaopen_results(lua_State *L);    /* l_results.c: core.results */

/* Make the metatable `mt_name` (methods `m`, __index = itself) if it does
 * not exist yet, then push a new table { new = ctor }. Returns 1 (the
 * table), so an opener can end with `return rd__lua_class(...)`. */
int rd__lua_class(lua_State *L, const char *mt_name, const luaL_Reg *m,
                  lua_CFunction ctor);

/* A new zeroed userdata of `size` bytes with the metatable `mt_name`,
 * pushed; returns its memory. */
void *rd__lua_newobj(lua_State *L, size_t size, const char *mt_name);

/* The failure convention of the bindings: pushes nil, err's message (or
 * the code's text when it has none) and the code's name; returns 3. */
int rd__lua_fail(lua_State *L, const rd_error *err);

/* Raise a Lua argument error unless the value at idx can be called: a
 * function, or a table or userdata whose metatable has __call (a call's
 * handle wakes its coroutine that way, with no closure made per call). */
void rd__lua_checkcallable(lua_State *L, int idx);

/* Entry point of the module (also put into package.preload by rduck). */
int luaopen_rubberduck_core(lua_State *L);

#endif
