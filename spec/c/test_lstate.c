/*
 * test_lstate.c — tool states (core/sandbox/lstate.c): the memory cap, the
 * CPU budget, the deadline, cancellation from another thread, breaches
 * raised from C, interruptible sleep; and plain-data copies between states
 * (core/sandbox/xcopy.c).
 *
 * Limits are asserted by their outcome (which breach, which error), never
 * by how long anything took.
 */
#include "json.h"
#include "sandbox/lstate.h"
#include "sandbox/xcopy.h"
#include "testlib.h"
#include "lstate_test.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- breach kinds, ownership ------------------------------------------------- */

TEST(breach_kinds) {
  CHECK_STR(rd__breach_kind(RD_BREACH_NONE), "");
  CHECK_STR(rd__breach_kind(RD_BREACH_MEMORY), "memory_limit");
  CHECK_STR(rd__breach_kind(RD_BREACH_CPU), "cpu_limit");
  CHECK_STR(rd__breach_kind(RD_BREACH_TIMEOUT), "timeout");
  CHECK_STR(rd__breach_kind(RD_BREACH_CANCEL), "cancelled");
  CHECK_STR(rd__breach_kind(RD_BREACH_VIOLATION), "sandbox_violation");
  CHECK_STR(rd__breach_kind(RD_BREACH_OUTPUT), "output_limit");
  CHECK_STR(rd__breach_kind((rd_breach)99), "");
}

TEST(state_ownership) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  lua_State *L = rd__lstate_L(s);
  CHECK(L != NULL);
  CHECK(rd__lstate_from(L) == s);
  lua_State *co = lua_newthread(L);
  CHECK(rd__lstate_from(co) == s);
  lua_pop(L, 1);
  lua_State *P = luaL_newstate();
  CHECK(rd__lstate_from(P) == NULL);
  lua_close(P);
  CHECK(rd__lstate_heap(s) > 0);
  /* the standard libraries are there */
  rd__lstate_arm(s, 0, 0);
  CHECK(run_code(s, "assert(string.rep('a', 3) == 'aaa'); assert(type(table.concat) == 'function')",
                 NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
  rd__lstate_free(NULL);
}

/* ---- memory ------------------------------------------------------------------------ */

TEST(memory_cap_swallowed_by_pcall) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  size_t base = rd__lstate_heap(s);
  size_t cap = base + 2 * 1024 * 1024;
  rd__lstate_set_max_memory(s, cap);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  char msg[512];
  /* The tool swallows the allocation failure and returns normally. */
  int rc = run_code(s,
    "local ok = pcall(function()\n"
    "  local t = {}\n"
    "  for i = 1, 1e8 do t[i] = { i, tostring(i) } end\n"
    "end)\n"
    "RESULT = ok\n"
    "return 'fine'\n", msg, sizeof msg);
  double cpu = -1;
  size_t peak = 0;
  rd_breach b = rd__lstate_disarm(s, &cpu, &peak);
  CHECK(b == RD_BREACH_MEMORY);
  if (b != RD_BREACH_MEMORY) fprintf(stderr, "  breach %d rc %d msg %s\n", b, rc, msg);
  CHECK(peak > base);
  CHECK(peak <= cap);
  CHECK(cpu >= 0);
  /* the breach is cleared by disarm */
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);

  /* still usable: free the garbage, lift the cap, run again */
  lua_State *L = rd__lstate_L(s);
  lua_gc(L, LUA_GCCOLLECT, 0);
  CHECK(rd__lstate_heap(s) < cap);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local t = {} for i = 1, 1000 do t[i] = i end assert(#t == 1000)",
                 msg, sizeof msg) == 0);
  CHECK(rd__lstate_disarm(s, NULL, &peak) == RD_BREACH_NONE);
  CHECK(peak > 0);
  rd__lstate_free(s);
}

TEST(memory_cap_string_rep) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_set_max_memory(s, rd__lstate_heap(s) + 1024 * 1024);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  char msg[256];
  int rc = run_code(s, "local s = string.rep('x', 64 * 1024 * 1024) return #s", msg, sizeof msg);
  CHECK(rc != 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_MEMORY);
  rd__lstate_free(s);
}

TEST(memory_cap_lowered_below_heap) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  lua_State *L = rd__lstate_L(s);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "BIG = {} for i = 1, 20000 do BIG[i] = i end", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_set_max_memory(s, rd__lstate_heap(s) / 2);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local t = {} for i = 1, 1e6 do t[i] = {} end", NULL, 0) != 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_MEMORY);
  rd__lstate_set_max_memory(s, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "BIG = nil local t = {} for i = 1, 1000 do t[i] = {} end", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

/* ---- CPU ------------------------------------------------------------------------------ */

static void cpu_case(const char *name, const char *code) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  ends_in_cpu_limit(s, name, code);
  /* the state runs normal code afterwards, without a stale breach */
  char msg[512];
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local x = 0 for i = 1, 100000 do x = x + i end assert(x > 0)",
                 msg, sizeof msg) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

/* An endless loop in a state armed with a 50 ms budget ends in cpu_limit;
 * returns the CPU time the disarm reports. */
static double endless_loop_breaches_cpu(rd_lstate *s) {
  char msg[512];
  CHECK(run_code(s, "while true do end", msg, sizeof msg) != 0);
  CHECK(strstr(msg, "cpu_limit") != NULL);
  double cpu = 0;
  CHECK(rd__lstate_disarm(s, &cpu, NULL) == RD_BREACH_CPU);
  return cpu;
}

TEST(cpu_plain_loop) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_arm(s, 50, rd__mono_ns() + NET_NS);
  endless_loop_breaches_cpu(s);
  rd__lstate_free(s);
}

/* Armed without a reading of the CPU clock (cpu_start_ms < 0): the
 * budget still holds, the first check supplies the start, and the CPU
 * time reported covers the run. */
TEST(cpu_armed_without_a_reading) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_arm_at(s, 50, rd__mono_ns() + NET_NS, -1);
  CHECK(rd__lstate_cpu_start(s) < 0);
  double cpu = endless_loop_breaches_cpu(s);
  CHECK(rd__lstate_cpu_start(s) >= 0);
  CHECK(cpu >= 50);
  char msg[512];
  /* a short run without a budget: its wall time, no clock read needed */
  rd__lstate_arm_at(s, 0, 0, -1);
  CHECK(run_code(s, "local x = 0 for i = 1, 1e5 do x = x + i end", msg, sizeof msg) == 0);
  CHECK(rd__lstate_disarm(s, &cpu, NULL) == RD_BREACH_NONE);
  CHECK(cpu > 0 && cpu < 10000);
  rd__lstate_free(s);
}

/* A long run under its budget reads the CPU clock a few times, not at
 * every hook: it ends well, and its CPU time is the thread's. */
TEST(cpu_under_budget_runs_to_the_end) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_arm(s, 60000, rd__mono_ns() + NET_NS);
  char msg[512];
  CHECK(run_code(s, "local x = 0 for i = 1, 3e6 do x = x + i % 7 end", msg, sizeof msg) == 0);
  double cpu = 0;
  CHECK(rd__lstate_disarm(s, &cpu, NULL) == RD_BREACH_NONE);
  CHECK(cpu > 0);
  rd__lstate_free(s);
}

TEST(cpu_pcall_in_a_loop) {
  cpu_case("pcall", "for i = 1, 1e9 do pcall(function() while true do end end) end");
}

TEST(cpu_xpcall_in_a_loop) {
  cpu_case("xpcall",
           "for i = 1, 1e9 do xpcall(function() while true do end end, function(e) return e end) end");
}

TEST(cpu_xpcall_handler_loops) {
  cpu_case("xpcall-handler",
           "for i = 1, 1e9 do xpcall(function() error('x') end, function(e) while true do end end) end");
}

TEST(cpu_coroutine_wrap_in_a_loop) {
  cpu_case("coroutine.wrap",
           "for i = 1, 1e9 do pcall(coroutine.wrap(function() while true do end end)) end");
}

TEST(cpu_coroutine_resume_in_a_loop) {
  cpu_case("coroutine.resume",
           "for i = 1, 1e9 do coroutine.resume(coroutine.create(function() while true do end end)) end");
}

TEST(cpu_error_object_with_looping_tostring) {
  cpu_case("__tostring",
           "local o = setmetatable({}, { __tostring = function() while true do end end })\n"
           "for i = 1, 1e9 do\n"
           "  local ok, e = pcall(error, o)\n"
           "  pcall(tostring, e)\n"
           "end\n");
}

TEST(cpu_error_object_thrown_out) {
  /* The error object reaches C: lua_tostring on it runs no metamethod. */
  rd_lstate *s = new_state(0);
  if (!s) return;
  lua_State *L = rd__lstate_L(s);
  rd__lstate_arm(s, 50, rd__mono_ns() + NET_NS);
  CHECK(luaL_loadstring(L,
    "error(setmetatable({}, { __tostring = function() while true do end end }))") == 0);
  CHECK(lua_pcall(L, 0, 0, 0) != 0);
  CHECK(lua_type(L, -1) == LUA_TTABLE);
  CHECK(lua_tostring(L, -1) == NULL);
  lua_pop(L, 1);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

TEST(cpu_jit_state) {
  /* jit = 1: the budget still ends a plain loop (the engine uses jit = 0;
   * this only checks that a JIT state is made and freed cleanly). */
  rd_lstate *s = NULL;
  rd_lstate_opts o = {0, 1, 0};
  CHECK(rd__lstate_new(&s, &o, NULL) == RD_OK && s);
  if (!s) return;
  rd__lstate_arm(s, 0, 0);
  CHECK(run_code(s, "local x = 0 for i = 1, 1000 do x = x + i end assert(x == 500500)", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

/* ---- arena snapshots ---------------------------------------------------------------- */

static rd_lstate *arena_state(size_t max_memory, size_t arena) {
  rd_lstate *s = NULL;
  rd_lstate_opts o = {max_memory, 0, arena};
  CHECK(rd__lstate_new(&s, &o, NULL) == RD_OK && s);
  return s;
}

TEST(snapshot_restore_undoes_everything) {
  rd_lstate *s = arena_state(0, 64u << 20);
  if (!s) return;
  rd_error err;
  CHECK(run_code(s, "kept = { 1, 2, 3 }", NULL, 0) == 0);
  size_t heap = rd__lstate_heap(s);
  CHECK(rd__lstate_snapshot(s, &err) == RD_OK);
  for (int round = 0; round < 3; round++) {
    /* poison everything a tool could: globals, library tables, the string
     * metatable, and a heap much larger than the snapshot's */
    rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
    CHECK(run_code(s,
      "kept[1] = 'x'; leaked = 1; string.upper = nil; getmetatable('').__index = {}\n"
      "local t = {} for i = 1, 20000 do t[i] = tostring(i) .. 'abc' end big = t", NULL, 0) == 0);
    CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
    CHECK(rd__lstate_heap(s) > heap);
    CHECK(rd__lstate_restore(s, &err) == RD_OK);
    CHECK(rd__lstate_heap(s) == heap);
    CHECK(run_code(s,
      "assert(kept[1] == 1 and #kept == 3 and leaked == nil and big == nil)\n"
      "assert(string.upper('a') == 'A' and ('a'):upper() == 'A')", NULL, 0) == 0);
  }
  rd__lstate_free(s);
}

TEST(snapshot_refused_without_arena_or_with_outside_memory) {
  rd_error err;
  rd_lstate *s = new_state(0);
  if (!s) return;
  CHECK(rd__lstate_snapshot(s, &err) == RD_EINVAL);
  CHECK(rd__lstate_restore(s, &err) == RD_EINVAL);
  rd__lstate_free(s);

  /* an arena too small for the state: the rest comes from malloc, and a
   * state holding outside memory is neither snapshotted nor restored */
  s = arena_state(0, 4096);
  if (!s) return;
  CHECK(run_code(s, "x = string.rep('a', 100000)", NULL, 0) == 0);
  CHECK(rd__lstate_snapshot(s, &err) == RD_EINVAL);
  CHECK(rd__lstate_restore(s, &err) == RD_EINVAL);
  rd__lstate_free(s);

  /* memory taken from outside the arena after the snapshot: no restore */
  s = arena_state(0, 1u << 20);
  if (!s) return;
  CHECK(rd__lstate_snapshot(s, &err) == RD_OK);
  CHECK(run_code(s, "x = string.rep('a', 2000000)", NULL, 0) == 0);
  CHECK(rd__lstate_restore(s, &err) == RD_EINVAL);
  CHECK(run_code(s, "x = nil collectgarbage() collectgarbage()", NULL, 0) == 0);
  CHECK(rd__lstate_restore(s, &err) == RD_OK);
  CHECK(run_code(s, "assert(x == nil)", NULL, 0) == 0);
  rd__lstate_free(s);
}

TEST(arena_keeps_the_memory_cap) {
  rd_lstate *s = arena_state(0, 64u << 20);
  if (!s) return;
  rd__lstate_set_max_memory(s, rd__lstate_heap(s) + (1u << 20));
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local t = {} for i = 1, 1e6 do t[i] = i end", NULL, 0) != 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_MEMORY);
  rd__lstate_free(s);
}

/* rd__lstate_forked (a strict worker forked from its template): the state
 * still works and keeps its cap; blocks made before are freed for the
 * accounting but never handed out again; blocks made after are reused, so
 * garbage churn stays inside the cap and inside the arena's new part. */
TEST(forked_state_never_reuses_inherited_blocks) {
  rd_lstate *s = arena_state(0, 64u << 20);
  if (!s) return;
  CHECK(run_code(s, "old = {} for i = 1, 2000 do old[i] = { i } end", NULL, 0) == 0);
  rd__lstate_forked(s, 64 * 1024);
  size_t at_fork = rd__lstate_heap(s);
  /* the inherited objects die: the heap shrinks, the tool sees nothing */
  CHECK(run_code(s, "old = nil collectgarbage() collectgarbage()", NULL, 0) == 0);
  size_t after = rd__lstate_heap(s);
  CHECK(after < at_fork);
  /* churn: garbage made after the fork is reused, within a cap of 1 MiB */
  rd__lstate_set_max_memory(s, after + (1u << 20));
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s,
    "for r = 1, 200 do local t = {} for i = 1, 1000 do t[i] = { i } end end\n"
    "assert(string.upper('a') == 'A')", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  /* and the cap still holds */
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local t = {} for i = 1, 1e6 do t[i] = { i } end", NULL, 0) != 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_MEMORY);
  rd__lstate_free(s);
  /* without an arena: nothing changes */
  s = new_state(0);
  if (!s) return;
  rd__lstate_forked(s, 4096);
  rd__lstate_forked(NULL, 0);
  CHECK(run_code(s, "local t = {} for i = 1, 1000 do t[i] = { i } end", NULL, 0) == 0);
  rd__lstate_free(s);
}

/* ---- deadline and cancellation ---------------------------------------------------------- */

TEST(deadline) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_arm(s, 0, rd__mono_ns() + 50ull * 1000000ull);
  char msg[512];
  CHECK(run_code(s, "for i = 1, 1e9 do pcall(function() while true do end end) end",
                 msg, sizeof msg) != 0);
  CHECK(strstr(msg, "timeout") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_TIMEOUT);
  rd__lstate_free(s);
}

TEST(request_stop_from_another_thread) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  stopper st = {s, 0, 30, RD_BREACH_CANCEL};
  register_started(s, &st);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, stop_thread, &st) == 0);
  char msg[512];
  CHECK(run_code(s, "started() for i = 1, 1e12 do pcall(function() while true do end end) end",
                 msg, sizeof msg) != 0);
  pthread_join(th, NULL);
  CHECK(strstr(msg, "cancelled") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_CANCEL);
  /* a stop asked for before the run is prepared is cleared by clear_stop */
  rd__lstate_request_stop(s, RD_BREACH_TIMEOUT);
  rd__lstate_clear_stop(s);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local x = 0 for i = 1, 100000 do x = x + 1 end", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  /* ... but one asked for between clear_stop and arm (a cancel racing the
   * thread pool) stops the run */
  rd__lstate_clear_stop(s);
  rd__lstate_request_stop(s, RD_BREACH_CANCEL);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "local x = 0 for i = 1, 1e9 do x = x + 1 end", NULL, 0) != 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_CANCEL);
  rd__lstate_free(s);
}

TEST(request_stop_timeout_kind) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  stopper st = {s, 0, 10, RD_BREACH_TIMEOUT};
  register_started(s, &st);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, stop_thread, &st) == 0);
  CHECK(run_code(s, "started() while true do end", NULL, 0) != 0);
  pthread_join(th, NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_TIMEOUT);
  rd__lstate_free(s);
}

TEST(request_stop_after_last_check_still_counts) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_arm(s, 0, 0);
  CHECK(run_code(s, "local x = 1", NULL, 0) == 0);
  rd__lstate_request_stop(s, RD_BREACH_CANCEL);
  rd__lstate_request_stop(s, RD_BREACH_TIMEOUT); /* the first one wins */
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_CANCEL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

/* ---- breaches raised from C -------------------------------------------------------------- */

static int l_violate(lua_State *L) {
  return rd__lstate_breach(L, RD_BREACH_VIOLATION, "fs.read: access denied (%d)", 7);
}

TEST(breach_from_c_survives_pcall) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  lua_State *L = rd__lstate_L(s);
  lua_register(L, "violate", l_violate);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  char msg[512];
  int rc = run_code(s,
    "local ok, e = pcall(violate)\n"
    "SEEN = e\n"
    "for i = 1, 10 do pcall(violate) end\n"
    "return 'pretend all is well'\n", msg, sizeof msg);
  /* the hook raises at the very next instruction after the swallowing pcall */
  CHECK(rc != 0);
  CHECK(strstr(msg, "sandbox_violation") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_VIOLATION);
  const char *bm = rd__lstate_breach_message(s);
  CHECK(bm != NULL);
  CHECK_STR(bm, "fs.read: access denied (7)");
  lua_getglobal(L, "SEEN");
  CHECK(lua_isnil(L, -1));
  lua_pop(L, 1);
  /* the next run starts clean */
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(rd__lstate_breach_message(s) == NULL);
  CHECK(run_code(s, "local x = 1", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

TEST(breach_from_c_on_plain_state_only_raises) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_register(L, "violate", l_violate);
  CHECK(luaL_loadstring(L, "local ok, e = pcall(violate) assert(not ok) return e") == 0);
  CHECK(lua_pcall(L, 0, 1, 0) == 0);
  CHECK(lua_isstring(L, -1));
  if (lua_isstring(L, -1))
    CHECK(strstr(lua_tostring(L, -1), "sandbox_violation: fs.read: access denied (7)") != NULL);
  lua_close(L);
}

/* ---- sleep -------------------------------------------------------------------------------- */

static int l_sleep(lua_State *L) {
  rd__lstate_sleep(L, luaL_checknumber(L, 1));
  return 0;
}

TEST(sleep_returns) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  lua_register(rd__lstate_L(s), "sleep", l_sleep);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "sleep(12) sleep(0) sleep(-5) RESULT = 1", NULL, 0) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  /* not armed: it just sleeps */
  CHECK(run_code(s, "sleep(3)", NULL, 0) == 0);
  rd__lstate_free(s);
  /* a plain state: it just sleeps */
  lua_State *P = luaL_newstate();
  CHECK(rd__lstate_sleep(P, 2) == 0);
  lua_close(P);
}

TEST(sleep_deadline_passes) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  lua_register(rd__lstate_L(s), "sleep", l_sleep);
  rd__lstate_arm(s, 0, rd__mono_ns() + 40ull * 1000000ull);
  char msg[512];
  /* the tool swallows the first raise; the breach stands */
  CHECK(run_code(s, "pcall(sleep, 8000) sleep(8000)", msg, sizeof msg) != 0);
  CHECK(strstr(msg, "timeout") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_TIMEOUT);
  rd__lstate_free(s);
}

TEST(sleep_cancelled) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  stopper st = {s, 0, 20, RD_BREACH_CANCEL};
  register_started(s, &st);
  lua_register(rd__lstate_L(s), "sleep", l_sleep);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, stop_thread, &st) == 0);
  char msg[512];
  CHECK(run_code(s, "started() local ok, e = pcall(sleep, 8000) return e", msg, sizeof msg) != 0);
  pthread_join(th, NULL);
  CHECK(strstr(msg, "cancelled") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_CANCEL);
  rd__lstate_free(s);
}

/* ---- xcopy -------------------------------------------------------------------------------- */

/* Every copy below is made one of two ways: rd__xcopy, or (xc_packed)
 * rd__xpack then rd__xunpack, which must give the same values, the same
 * errors and the same balanced stacks (xpack_same_as_xcopy runs the
 * tests again that way). */
static int xc_packed;
static int xc(lua_State *F, int idx, lua_State *T, const rd_xcopy_opts *o, size_t *bytes,
              rd_error *err) {
  if (!xc_packed) return rd__xcopy(F, idx, T, o, bytes, err);
  rd_buf b = RD_BUF_INIT;
  rd__buf_putc(&b, 'x'); /* a packed value need not start the buffer */
  int rc = rd__xpack(F, idx, &b, o, bytes, err);
  if (rc == RD_OK) {
    CHECK(b.len > 1);
    rc = rd__xunpack(T, b.data + 1, 1, 0, err);
  } else {
    CHECK(b.len == 1); /* left as it was */
  }
  rd__buf_free(&b);
  return rc;
}

static lua_State *plain_state(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  rd__json_init(L);
  luaL_getmetatable(L, RD_JSON_ARRAY_MT);
  lua_setglobal(L, "ARRAY_MT");
  luaL_getmetatable(L, RD_JSON_OBJECT_MT);
  lua_setglobal(L, "OBJECT_MT");
  lua_pushlightuserdata(L, RD_JSON_NULL);
  lua_setglobal(L, "NULL");
  return L;
}

/* Run `code` in F, which returns one value; push it. */
static int push_value(lua_State *F, const char *code) {
  int rc = luaL_loadstring(F, code);
  if (rc == 0) rc = lua_pcall(F, 0, 1, 0);
  if (rc != 0) {
    fprintf(stderr, "  lua: %s\n", lua_tostring(F, -1));
    lua_pop(F, 1);
    lua_pushnil(F);
  }
  CHECK(rc == 0);
  return rc;
}

/* Call `check` (a chunk taking the copied value as ...) in T on the value on
 * top of T; pops it. */
static void check_in(lua_State *T, const char *check) {
  int rc = luaL_loadstring(T, check);
  if (rc == 0) {
    lua_insert(T, -2);
    rc = lua_pcall(T, 1, 0, 0);
  } else {
    lua_remove(T, -2);
  }
  if (rc != 0) fprintf(stderr, "  check failed: %s\n", lua_tostring(T, -1));
  CHECK(rc == 0);
  if (rc != 0) lua_pop(T, 1);
}

/* Copy `code`'s value from F to T expecting failure `want_rc`; returns the
 * message in msg. Checks both stacks are balanced. */
static void copy_fails(lua_State *F, lua_State *T, const char *code,
                       const rd_xcopy_opts *o, int want_rc, char *msg, size_t msglen) {
  int ft = lua_gettop(F), tt = lua_gettop(T);
  push_value(F, code);
  rd_error err;
  rd_error_clear(&err);
  int rc = xc(F, -1, T, o, NULL, &err);
  CHECK(rc == want_rc);
  CHECK(err.code == want_rc);
  if (rc != want_rc) fprintf(stderr, "  rc %d (%s), want %d: %s\n", rc, rd_err_name(rc), want_rc, err.message);
  CHECK(lua_gettop(F) == ft + 1);
  CHECK(lua_gettop(T) == tt);
  lua_settop(F, ft);
  snprintf(msg, msglen, "%s", err.message);
}

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Copy the value on top of F to T with default options: 1 if that went
 * well (checked, the error printed otherwise). */
static int copied_to(lua_State *F, lua_State *T) {
  rd_error err;
  int rc = xc(F, -1, T, NULL, NULL, &err);
  CHECK(rc == RD_OK);
  if (rc) fprintf(stderr, "  %s\n", err.message);
  return rc == RD_OK;
}

TEST(xcopy_plain_data_survives) {
  lua_State *F = plain_state(), *T = plain_state();
  push_value(F,
    "return {\n"
    "  s = 'hello', z = 'a\\0b\\0', e = '', n = 42, f = -1.5, big = 2^53, tiny = 1e-300,\n"
    "  t = true, no = false, null = NULL,\n"
    "  arr = setmetatable({ 1, 'two', { three = 3 } }, ARRAY_MT),\n"
    "  empty_arr = setmetatable({}, ARRAY_MT),\n"
    "  obj = setmetatable({ [1] = 'x' }, OBJECT_MT),\n"
    "  other_mt = setmetatable({ k = 1 }, { __index = function() return 'meta' end }),\n"
    "  nested = { a = { b = { c = { d = 'deep' } } } },\n"
    "  [1] = 'one', [2.5] = 'two and a half', [-3] = 'minus three',\n"
    "  list = { 10, 20, 30, NULL, 50 },\n"
    "}\n");
  int ft = lua_gettop(F), tt = lua_gettop(T);
  rd_error err;
  size_t bytes = 0;
  int rc = xc(F, -1, T, NULL, &bytes, &err);
  CHECK(rc == RD_OK);
  if (rc) fprintf(stderr, "  %s\n", err.message);
  CHECK(lua_gettop(F) == ft);
  CHECK(lua_gettop(T) == tt + 1);
  CHECK(bytes > 0);
  check_in(T,
    "local v = ...\n"
    "assert(type(v) == 'table')\n"
    "assert(v.s == 'hello')\n"
    "assert(v.z == 'a\\0b\\0' and #v.z == 4)\n"
    "assert(v.e == '')\n"
    "assert(v.n == 42 and v.f == -1.5 and v.big == 2^53 and v.tiny == 1e-300)\n"
    "assert(v.t == true and v.no == false)\n"
    "assert(v.null == NULL and type(v.null) == 'userdata')\n"
    "assert(getmetatable(v.arr) == ARRAY_MT, 'array marker mapped')\n"
    "assert(#v.arr == 3 and v.arr[1] == 1 and v.arr[2] == 'two' and v.arr[3].three == 3)\n"
    "assert(getmetatable(v.empty_arr) == ARRAY_MT and next(v.empty_arr) == nil)\n"
    "assert(getmetatable(v.obj) == OBJECT_MT and v.obj[1] == 'x')\n"
    "assert(getmetatable(v.other_mt) == nil, 'other metatables dropped')\n"
    "assert(v.other_mt.k == 1 and v.other_mt.missing == nil)\n"
    "assert(v.nested.a.b.c.d == 'deep')\n"
    "assert(v[1] == 'one' and v[2.5] == 'two and a half' and v[-3] == 'minus three')\n"
    "assert(v.list[1] == 10 and v.list[4] == NULL and v.list[5] == 50)\n"
    "assert(getmetatable(v) == nil)\n");
  CHECK(lua_gettop(T) == tt);

  /* scalars at the top level, and a positive index */
  lua_settop(F, 0);
  lua_pushstring(F, "top");
  lua_pushnumber(F, 7);
  CHECK(xc(F, 1, T, NULL, NULL, &err) == RD_OK);
  CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
  CHECK(lua_tonumber(T, -1) == 7);
  CHECK_STR(lua_tostring(T, -2), "top");
  lua_pushnil(F);
  CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
  CHECK(lua_isnil(T, -1));
  lua_settop(T, 0);
  lua_settop(F, 0);
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_shared_subtable_is_not_a_cycle) {
  lua_State *F = plain_state(), *T = plain_state();
  push_value(F, "local s = { 1, 2 } return { a = s, b = s, c = { s, s } }");
  rd_error err;
  CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
  check_in(T, "local v = ... assert(v.a[2] == 2 and v.b[1] == 1 and v.c[2][2] == 2)");
  lua_close(F);
  lua_close(T);
}

/* Tables of every shape survive the copy whatever their size: small ones
 * are made at their exact size, big ones (past the pairs gathered on the
 * stack) filled as they come, and wide tables nested deep (where the
 * target stack stops gathering) too. */
TEST(xcopy_table_shapes_and_sizes) {
  lua_State *F = plain_state(), *T = plain_state();
  push_value(F,
    "local big, mixed, sparse, hash = {}, {}, { [1] = 'a', [3] = 'c', [100] = 'z' }, {}\n"
    "for i = 1, 1000 do big[i] = i * 2 end\n"
    "for i = 1, 40 do mixed[i] = i; mixed['k' .. i] = -i end\n"
    "for i = 1, 300 do hash['h' .. i] = { i } end\n"
    "local deep = {} local cur = deep\n"
    "for d = 1, 120 do for k = 1, 40 do cur['w' .. k] = d * 100 + k end cur.x = {} cur = cur.x end\n"
    "local narrow = {} cur = narrow\n"
    "for d = 1, 120 do for k = 1, 20 do cur['w' .. k] = d * 100 + k end cur.x = {} cur = cur.x end\n"
    "return { narrow = narrow, big = setmetatable(big, ARRAY_MT), mixed = mixed, sparse = sparse, hash = hash,\n"
    "         deep = deep, n = { [0] = 'zero', [1.5] = 'half', [-1] = 'minus', [2^40] = 'far' },\n"
    "         exact = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,\n"
    "                   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 } }\n");
  if (copied_to(F, T))
    check_in(T,
      "local v = ...\n"
      "assert(#v.big == 1000 and getmetatable(v.big) == ARRAY_MT)\n"
      "for i = 1, 1000 do assert(v.big[i] == i * 2) end\n"
      "local n = 0 for k, x in pairs(v.mixed) do n = n + 1 end assert(n == 80)\n"
      "for i = 1, 40 do assert(v.mixed[i] == i and v.mixed['k' .. i] == -i) end\n"
      "assert(v.sparse[1] == 'a' and v.sparse[3] == 'c' and v.sparse[100] == 'z' and v.sparse[2] == nil)\n"
      "n = 0 for k, x in pairs(v.hash) do n = n + 1 assert(x[1] == tonumber(k:sub(2))) end assert(n == 300)\n"
      "local cur = v.deep\n"
      "for d = 1, 120 do for k = 1, 40 do assert(cur['w' .. k] == d * 100 + k) end cur = cur.x end\n"
      "assert(next(cur) == nil)\n"
      "cur = v.narrow\n"
      "for d = 1, 120 do for k = 1, 20 do assert(cur['w' .. k] == d * 100 + k) end cur = cur.x end\n"
      "assert(next(cur) == nil)\n"
      "assert(v.n[0] == 'zero' and v.n[1.5] == 'half' and v.n[-1] == 'minus' and v.n[2^40] == 'far')\n"
      "assert(#v.exact == 32 and v.exact[32] == 32)\n");
  CHECK(lua_gettop(T) == 0);
  lua_close(F);
  lua_close(T);
}

/* Copies after one another into one state reuse nothing of each other:
 * each is a table of its own, and a failed copy leaves nothing behind. */
TEST(xcopy_repeated_copies_are_independent) {
  lua_State *F = plain_state(), *T = plain_state();
  rd_error err;
  for (int i = 0; i < 3; i++) {
    push_value(F, "return { a = { 1, 2 }, s = 'x' }");
    CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
    lua_settop(F, 0);
  }
  CHECK(lua_gettop(T) == 3);
  CHECK(lua_topointer(T, 1) != lua_topointer(T, 2));
  lua_getfield(T, 1, "a");
  lua_getfield(T, 2, "a");
  CHECK(lua_topointer(T, -1) != lua_topointer(T, -2));
  lua_settop(T, 3);
  char msg[RD_ERROR_MSG_MAX];
  copy_fails(F, T, "local t = {} for i = 1, 40 do t[i] = i end t[41] = print return { ok = {}, t = t }",
             NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/t/40: function"));
  CHECK(lua_gettop(T) == 3);
  lua_close(F);
  lua_close(T);
}

/* The markers are put back as rd__json_init made them, whatever code in
 * the state did to them; a state without markers is left alone. */
TEST(xcopy_reset_markers) {
  lua_State *T = plain_state();
  lua_pushnil(T);
  check_in(T,
    "local a, o = ARRAY_MT, OBJECT_MT\n"
    "a.__index = function() return 'injected' end\n"
    "a.__jsontype = 'object'\n"
    "setmetatable(a, { __index = function() return 'meta' end })\n"
    "o.__jsontype = nil\n"
    "o[1] = true\n");
  rd_error err;
  CHECK(rd__xcopy_reset_markers(T, &err) == RD_OK);
  CHECK(lua_gettop(T) == 0);
  lua_pushnil(T);
  check_in(T,
    "local n = 0\n"
    "for k, v in pairs(ARRAY_MT) do n = n + 1 assert(k == '__jsontype' and v == 'array') end\n"
    "for k, v in pairs(OBJECT_MT) do n = n + 1 assert(k == '__jsontype' and v == 'object') end\n"
    "assert(n == 2 and getmetatable(ARRAY_MT) == nil and getmetatable(OBJECT_MT) == nil)\n"
    "assert(setmetatable({}, ARRAY_MT)[5] == nil)\n");
  /* untouched markers stay the very same tables */
  lua_getfield(T, LUA_REGISTRYINDEX, RD_JSON_ARRAY_MT);
  const void *before = lua_topointer(T, -1);
  lua_pop(T, 1);
  CHECK(rd__xcopy_reset_markers(T, &err) == RD_OK);
  lua_getfield(T, LUA_REGISTRYINDEX, RD_JSON_ARRAY_MT);
  CHECK(lua_topointer(T, -1) == before);
  lua_close(T);
  lua_State *P = luaL_newstate(); /* no rd__json_init */
  CHECK(rd__xcopy_reset_markers(P, &err) == RD_OK);
  CHECK(lua_gettop(P) == 0);
  lua_close(P);
}

TEST(xcopy_marker_dropped_when_target_has_none) {
  lua_State *F = plain_state();
  lua_State *T = luaL_newstate(); /* no rd__json_init */
  luaL_openlibs(T);
  push_value(F, "return setmetatable({ 1, 2 }, ARRAY_MT)");
  rd_error err;
  CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
  CHECK(lua_istable(T, -1));
  CHECK(lua_getmetatable(T, -1) == 0);
  CHECK(lua_objlen(T, -1) == 2);
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_refuses_with_pointer) {
  lua_State *F = plain_state(), *T = plain_state();
  lua_pushstring(T, "sentinel"); /* something already on the target stack */
  char msg[RD_ERROR_MSG_MAX];

  copy_fails(F, T, "return { a = { 'x', function() end } }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/a/1: function"));
  if (!starts_with(msg, "/a/1: function")) fprintf(stderr, "  got: %s\n", msg);

  copy_fails(F, T, "return { list = { 1, 2, { deep = { coroutine.create(function() end) } } } }", NULL,
             RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/list/2/deep/0: thread"));

  copy_fails(F, T, "return { u = io.stdout }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/u: userdata"));

  copy_fails(F, T, "return { ['a/b'] = { ['m~n'] = print } }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/a~1b/m~0n: function"));

  copy_fails(F, T, "return { [true] = 1 }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "not a string or number") != NULL);

  copy_fails(F, T, "return { [{}] = 1 }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "not a string or number") != NULL);

  copy_fails(F, T, "return { x = 0/0 }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/x: NaN"));

  copy_fails(F, T, "return { 1, 2, math.huge }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(starts_with(msg, "/2: "));
  CHECK(strstr(msg, "infinite") != NULL);

  copy_fails(F, T, "return { [math.huge] = 1 }", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "non-finite") != NULL);

  copy_fails(F, T, "return 0/0", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "NaN") != NULL);

  copy_fails(F, T, "return print", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "function") != NULL);

  /* a failure after many good members leaves nothing behind */
  copy_fails(F, T,
    "local t = {} for i = 1, 500 do t['k' .. i] = { i, tostring(i) } end\n"
    "t.zzz = { ok = 1, bad = function() end } return t", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "/zzz/bad: function") != NULL);

  CHECK(lua_gettop(T) == 1);
  CHECK_STR(lua_tostring(T, 1), "sentinel");
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_nonfinite_allowed_when_asked) {
  lua_State *F = plain_state(), *T = plain_state();
  rd_xcopy_opts o = {0, 0, 1};
  push_value(F, "return { n = 0/0, p = math.huge, m = -math.huge }");
  rd_error err;
  CHECK(xc(F, -1, T, &o, NULL, &err) == RD_OK);
  check_in(T, "local v = ... assert(v.n ~= v.n and v.p == math.huge and v.m == -math.huge)");
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_cycle) {
  lua_State *F = plain_state(), *T = plain_state();
  char msg[RD_ERROR_MSG_MAX];
  copy_fails(F, T, "local t = {} t.self = t return t", NULL, RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "cycle") != NULL);
  CHECK(starts_with(msg, "/self"));
  copy_fails(F, T, "local a, b = {}, {} a.b = b b.list = { a } return { root = a }", NULL,
             RD_EINVAL, msg, sizeof msg);
  CHECK(strstr(msg, "cycle") != NULL);
  CHECK(starts_with(msg, "/root/b/list/0"));
  CHECK(lua_gettop(T) == 0);
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_depth) {
  lua_State *F = plain_state(), *T = plain_state();
  char msg[RD_ERROR_MSG_MAX];
  /* default limit (RD_JSON_MAX_DEPTH) */
  copy_fails(F, T, "local t = {} local cur = t for i = 1, 300 do cur.x = {} cur = cur.x end return t",
             NULL, RD_ELIMIT, msg, sizeof msg);
  CHECK(strstr(msg, "deeper") != NULL);
  CHECK(starts_with(msg, "/x/x/x"));
  /* below the default: fine */
  push_value(F, "local t = {} local cur = t for i = 1, 100 do cur.x = {} cur = cur.x end cur.x = 'end' return t");
  rd_error err;
  CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
  check_in(T, "local v = ... for i = 1, 100 do v = v.x end assert(v.x == 'end')");
  lua_settop(F, 0);
  /* an explicit limit: 3 nested tables pass, 4 do not */
  rd_xcopy_opts o = {3, 0, 0};
  push_value(F, "return { { { 1 } } }");
  CHECK(xc(F, -1, T, &o, NULL, &err) == RD_OK);
  lua_settop(T, 0);
  lua_settop(F, 0);
  copy_fails(F, T, "return { { { { 1 } } } }", &o, RD_ELIMIT, msg, sizeof msg);
  /* a huge requested limit is clamped, never a C stack overflow */
  rd_xcopy_opts huge = {1000000, 0, 0};
  copy_fails(F, T, "local t = {} local cur = t for i = 1, 100000 do cur[1] = {} cur = cur[1] end return t",
             &huge, RD_ELIMIT, msg, sizeof msg);
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_max_bytes) {
  lua_State *F = plain_state(), *T = plain_state();
  char msg[RD_ERROR_MSG_MAX];
  rd_xcopy_opts o = {0, 100, 0};
  copy_fails(F, T, "return { s = string.rep('x', 1000) }", &o, RD_ELIMIT, msg, sizeof msg);
  CHECK(strstr(msg, "larger than") != NULL);
  copy_fails(F, T, "return string.rep('x', 101)", &o, RD_ELIMIT, msg, sizeof msg);
  CHECK(strstr(msg, "larger than") != NULL);
  /* many small values add up (16 per table) */
  copy_fails(F, T, "local t = {} for i = 1, 20 do t[i] = {} end return t", &o, RD_ELIMIT, msg, sizeof msg);
  CHECK(strstr(msg, "larger than") != NULL);
  /* long keys count too */
  copy_fails(F, T, "return { [string.rep('k', 200)] = 1 }", &o, RD_ELIMIT, msg, sizeof msg);
  CHECK(strstr(msg, "larger than") != NULL);
  /* within the limit: bytes reported */
  push_value(F, "return 'abc'");
  size_t bytes = 0;
  rd_error err;
  CHECK(xc(F, -1, T, &o, &bytes, &err) == RD_OK);
  CHECK(bytes == 3);
  CHECK(lua_gettop(T) == 1);
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_runs_no_metamethod) {
  lua_State *F = plain_state(), *T = plain_state();
  push_value(F,
    "local boom = function() error('a metamethod ran') end\n"
    "local mt = { __index = boom, __newindex = boom, __pairs = boom, __ipairs = boom,\n"
    "             __len = boom, __tostring = boom, __eq = boom, __call = boom,\n"
    "             __metatable = 'locked' }\n"
    "local inner = setmetatable({ 1, 2, k = 'v' }, mt)\n"
    "return setmetatable({ inner = inner, s = 'x' }, mt)\n");
  if (copied_to(F, T))
    check_in(T,
      "local v = ... assert(getmetatable(v) == nil and getmetatable(v.inner) == nil)\n"
      "assert(v.s == 'x' and v.inner[1] == 1 and v.inner[2] == 2 and v.inner.k == 'v')\n");
  lua_close(F);
  lua_close(T);
}

TEST(xcopy_into_a_capped_tool_state_small) {
  lua_State *F = plain_state();
  rd_lstate *s = new_state(0);
  if (!s) { lua_close(F); return; }
  lua_State *T = rd__lstate_L(s);
  rd__json_init(T);
  rd__lstate_set_max_memory(s, rd__lstate_heap(s) + 256 * 1024);
  int tt = lua_gettop(T);
  push_value(F, "return { a = 'small', b = setmetatable({ 1, 2, 3 }, ARRAY_MT) }");
  rd_error err;
  CHECK(xc(F, -1, T, NULL, NULL, &err) == RD_OK);
  CHECK(lua_gettop(T) == tt + 1);
  lua_settop(T, tt);
  rd__lstate_set_max_memory(s, 0);
  rd__lstate_free(s);
  lua_close(F);
}

/* EXPOSES BUG (core/sandbox/xcopy.c, rd__xcopy; or its header): xcopy.h
 * promises RD_ENOMEM with nothing pushed, but when `to` cannot allocate (a
 * tool state at its memory cap) lua_newtable / lua_pushlstring raise a Lua
 * memory error on `to` outside any protected call: LuaJIT exits the
 * process (and the heap-allocated copy context would leak if a caller
 * caught it). l_lstate.c now lifts the cap around its copies, so the
 * engine is safe; the function's own contract is not kept. Run in a child
 * process so the suite survives. */
TEST(xcopy_into_a_capped_tool_state_too_big) {
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    lua_State *F = plain_state();
    rd_lstate *s = NULL;
    rd_lstate_opts o = {0, 0, 0};
    if (rd__lstate_new(&s, &o, NULL) != RD_OK) _exit(5);
    lua_State *T = rd__lstate_L(s);
    rd__json_init(T);
    if (luaL_dostring(F, "return { big = string.rep('x', 1024 * 1024) }") != 0) _exit(6);
    rd__lstate_set_max_memory(s, rd__lstate_heap(s) + 64 * 1024);
    int tt = lua_gettop(T);
    rd_error err;
    int rc = xc(F, -1, T, NULL, NULL, &err);
    if (rc != RD_ENOMEM && rc != RD_ELIMIT) _exit(3);
    if (lua_gettop(T) != tt) _exit(4);
    _exit(0);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fprintf(stderr, "  child: %s %d (1 = LuaJIT exited on an unprotected memory error)\n",
            WIFEXITED(status) ? "exit" : "signal",
            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

TEST(xpack_same_as_xcopy) {
  xc_packed = 1;
  test_xcopy_plain_data_survives();
  test_xcopy_shared_subtable_is_not_a_cycle();
  test_xcopy_table_shapes_and_sizes();
  test_xcopy_repeated_copies_are_independent();
  test_xcopy_marker_dropped_when_target_has_none();
  test_xcopy_refuses_with_pointer();
  test_xcopy_nonfinite_allowed_when_asked();
  test_xcopy_cycle();
  test_xcopy_depth();
  test_xcopy_max_bytes();
  test_xcopy_runs_no_metamethod();
  test_xcopy_into_a_capped_tool_state_small();
  test_xcopy_into_a_capped_tool_state_too_big();
  xc_packed = 0;
}

int main(void) { RUN_TESTS(); }
