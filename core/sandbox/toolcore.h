/*
 * toolcore.h — `rubberduck.toolcore`, the small C table a tool state's
 * bootstrap (lua/rubberduck/toolstate.lua) may use: json, fs (made per tool
 * from its allowed_paths), notify (ctx.log / ctx.progress), sleep, ulid,
 * clocks, fresh (a deep copy of engine-made data, for ctx.caller). The same table serves in-process tool states (core/lua/l_lstate.c)
 * and worker processes (core/sandbox/worker.c); only `notify` differs.
 */
#ifndef RD_TOOLCORE_H
#define RD_TOOLCORE_H

#include <lua.h>

/* Called by notify(kind, a, b, text) from tool code, on the thread running
 * the tool state. `text` is borrowed for the call (at most 4096 bytes). */
typedef void (*rd_notify_fn)(void *ud, const char *kind, double a, double b,
                             const char *text, size_t len);

/* Put `rubberduck.toolcore` into L's package.preload, with `notify`
 * calling fn(ud, ...). `ud` must outlive L. */
void rd__toolcore_preload(lua_State *L, rd_notify_fn fn, void *ud);

#endif
