/*
 * test_pattern.c — the pattern functions of tool states (core/sandbox/
 * pattern.c) under the state's limits: a backtracking match ends by the
 * CPU budget, the deadline or a cancel like a Lua loop (rd__lstate_poll),
 * and a string longer than LuaJIT makes is a memory breach. Results of the
 * functions themselves are compared with LuaJIT's in spec/pattern_spec.lua.
 *
 * Limits are asserted by their outcome (which breach, which error), never
 * by how long anything took.
 */
#include "sandbox/lstate.h"
#include "testlib.h"
#include "lstate_test.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* `code` in a state with a 50 ms CPU budget ends in cpu_limit, and the
 * state then runs a match to its end. */
static void cpu_case(const char *name, const char *code) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  ends_in_cpu_limit(s, name, code);
  char msg[512];
  rd__lstate_arm(s, 50, rd__mono_ns() + NET_NS);
  CHECK(run_code(s, "assert(('a'):rep(40):find(('a*'):rep(10) .. '$') == 1)", msg, sizeof msg) == 0);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

/* A backtracking match runs in C, where the count hook never fires: the
 * matcher's polls end it like a Lua loop, swallowed by pcall or not. */
#define PATHOLOGICAL "local s, p = ('a'):rep(40), ('a*'):rep(40) .. 'b' "

TEST(pattern_cpu_budget) {
  cpu_case("find", PATHOLOGICAL "return s:find(p)");
  cpu_case("match", PATHOLOGICAL "return string.match(s, p)");
  cpu_case("gmatch", PATHOLOGICAL "for x in s:gmatch(p) do end");
  cpu_case("gsub", PATHOLOGICAL "return s:gsub(p, 'x')");
  cpu_case("find in pcall", PATHOLOGICAL "while true do pcall(string.find, s, p) end");
}

TEST(pattern_deadline_and_cancel) {
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_arm(s, 0, rd__mono_ns() + 50ull * 1000000ull);
  char msg[512];
  CHECK(run_code(s, PATHOLOGICAL "return s:find(p)", msg, sizeof msg) != 0);
  CHECK(strstr(msg, "timeout") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_TIMEOUT);

  stopper st = {s, 0, 20, RD_BREACH_CANCEL};
  register_started(s, &st);
  rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, stop_thread, &st) == 0);
  CHECK(run_code(s, PATHOLOGICAL "started() return s:find(p)", msg, sizeof msg) != 0);
  pthread_join(th, NULL);
  CHECK(strstr(msg, "cancelled") != NULL);
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_CANCEL);
  rd__lstate_free(s);
}

TEST(poll_outside_an_armed_run_does_nothing) {
  lua_State *L = luaL_newstate();
  CHECK(rd__lstate_poll(L) == 0); /* not a tool state */
  lua_close(L);
  rd_lstate *s = new_state(0);
  if (!s) return;
  rd__lstate_request_stop(s, RD_BREACH_CANCEL);
  CHECK(rd__lstate_poll(rd__lstate_L(s)) == 0); /* not armed */
  rd__lstate_clear_stop(s);
  rd__lstate_arm(s, 1000, rd__mono_ns() + NET_NS);
  CHECK(rd__lstate_poll(rd__lstate_L(s)) == 0); /* armed, within its limits */
  CHECK(rd__lstate_disarm(s, NULL, NULL) == RD_BREACH_NONE);
  rd__lstate_free(s);
}

TEST(string_too_long_for_luajit_is_a_memory_breach) {
  static const char *const cases[] = {
    "return ('x'):rep(2^31 - 1)",
    "return ('x'):rep(2^31)",
    "return string.rep('ab', 2^30, ',')",
    "local ok = pcall(string.rep, 'x', 2^31 - 1) return ok",
    "local t, s = {}, ('x'):rep(1024 * 1024) for i = 1, 3000 do t[i] = s end return table.concat(t)",
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    rd_lstate *s = new_state(0); /* no cap: only LuaJIT's own limit */
    if (!s) return;
    rd__lstate_arm(s, 0, rd__mono_ns() + NET_NS);
    char msg[512];
    CHECK(run_code(s, cases[i], msg, sizeof msg) != 0);
    rd_breach b = rd__lstate_disarm(s, NULL, NULL);
    CHECK(b == RD_BREACH_MEMORY);
    if (b != RD_BREACH_MEMORY) fprintf(stderr, "  case %s: breach %d msg %s\n", cases[i], b, msg);
    rd__lstate_free(s);
  }
}

int main(void) { RUN_TESTS(); }
