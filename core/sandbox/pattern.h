/*
 * pattern.h — Lua patterns with a step budget, for tool states.
 *
 * LuaJIT's string.find / match / gmatch / gsub run their matcher in C, where
 * no instruction hook fires: a backtracking pattern (("a*"):rep(40) .. "b"
 * against 40 a's) runs for hours and nothing in-process can stop it. These
 * are the same four functions, written from the Lua 5.1 manual (§5.4.1)
 * and checked against LuaJIT's results (spec/pattern_spec.lua), whose
 * matcher asks the tool state every POLL_STEPS steps whether it must stop
 * (rd__lstate_poll: stop request, deadline, CPU budget): a breach ends the
 * call exactly as in a Lua loop. The recursion is bounded (200 levels, as
 * LuaJIT: "pattern too complex"), so no pattern can overflow the C stack.
 *
 * Also here: string.rep and table.concat that turn a result longer than
 * LuaJIT's largest string (which LuaJIT refuses as a plain "not enough
 * memory" before the state's allocator sees a request) into a recorded
 * memory breach (memory_limit), like the accounting allocator's.
 *
 * Differences from LuaJIT, on purpose: string.rep with a count of 2^31 or
 * more asks for that many copies (LuaJIT wraps the count to a negative
 * number and returns ""): it ends in memory_limit unless the result is
 * empty.
 */
#ifndef RD_PATTERN_H
#define RD_PATTERN_H

#include <lua.h>

/* Push a new table { find, match, gmatch, gsub, rep, concat } of our
 * functions (for tests and benchmarks). On a plain lua_State (not a tool
 * state) the budget checks are no-ops. Raises only on memory errors. */
int rd__pattern_open(lua_State *L);

/* Replace string.find, match, gmatch, gsub and rep in the state's global
 * `string` table (which is also the string metatable's __index, so
 * ("x"):match(...) gets them too) and table.concat. Call it right after
 * the libraries are opened, before anything captures the originals. */
void rd__pattern_install(lua_State *L);

#endif
