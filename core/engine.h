/*
 * engine.h — host state set-up shared by the embedding API (engine.c) and
 * the rduck command (core/cli/).
 */
#ifndef RD_ENGINE_H
#define RD_ENGINE_H

#include "rd.h"
#include <lua.h>

/* The directory holding lua/rubberduck/: $RUBBERDUCK_LUA_DIR if set; the
 * source tree's lua/ for a binary inside the build tree; else the installed
 * ${datadir}/rubberduck/lua. Static storage. */
const char *rd__lua_dir(void);

/* Path of the rduck-worker executable (the zygote of sandboxed workers):
 * $RUBBERDUCK_WORKER; next to the running binary; the build tree; the
 * install prefix. NULL when none exists. Static storage. */
const char *rd__worker_path(void);

/* A new host state: standard libraries, package.path led by `lua_dir`
 * (NULL: rd__lua_dir()), and `rubberduck.core` in package.preload, so the
 * C module is the one linked in, never a second copy from disk.
 * *out is owned by the caller (lua_close). Errors: RD_ENOMEM. */
int rd__host_open(lua_State **out, const char *lua_dir, rd_error *err);

#endif
