/*
 * lstate_test.h — for the C tests of tool states (test_lstate.c,
 * test_pattern.c): making a state, running code in it, and a thread that
 * asks a state to stop (a cancel or a timeout from the engine) once the
 * Lua code running in it has called `started()`. Static functions:
 * include after testlib.h, in one test file each.
 */
#ifndef RD_SPEC_LSTATE_TEST_H
#define RD_SPEC_LSTATE_TEST_H

#include "sandbox/lstate.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

/* A safety net so that a broken limit fails a test instead of hanging it:
 * runs that must end by another breach also get this deadline. */
#define NET_NS (20ull * 1000000000ull)

static rd_lstate *new_state(size_t max_memory) {
  rd_lstate *s = NULL;
  rd_error err;
  rd_lstate_opts o = {max_memory, 0, 0};
  int rc = rd__lstate_new(&s, &o, &err);
  CHECK(rc == RD_OK);
  if (rc != RD_OK) fprintf(stderr, "  rd__lstate_new: %s\n", err.message);
  return s;
}

/* Load and run `code` in the armed state; returns the lua_pcall status and
 * copies the error message (if any) into msg (may be NULL). */
static int run_code(rd_lstate *s, const char *code, char *msg, size_t msglen) {
  lua_State *L = rd__lstate_L(s);
  int top = lua_gettop(L);
  if (msg && msglen) msg[0] = '\0';
  int rc = luaL_loadstring(L, code);
  if (rc == 0) rc = lua_pcall(L, 0, 0, 0);
  if (rc != 0 && msg) {
    const char *m = lua_tostring(L, -1);
    snprintf(msg, msglen, "%s", m ? m : "(non-string error)");
  }
  lua_settop(L, top);
  return rc;
}

static void ms_sleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

typedef struct stopper {
  rd_lstate *s;
  atomic_int started;
  int delay_ms;
  rd_breach why;
} stopper;

static int l_started(lua_State *L) {
  stopper *st = lua_touserdata(L, lua_upvalueindex(1));
  atomic_store(&st->started, 1);
  return 0;
}

/* Run `code` in s under a 50 ms CPU budget: it must end in cpu_limit,
 * with CPU time counted (checked; what it did printed otherwise). */
static void ends_in_cpu_limit(rd_lstate *s, const char *name, const char *code) {
  rd__lstate_arm(s, 50, rd__mono_ns() + NET_NS);
  char msg[512];
  int rc = run_code(s, code, msg, sizeof msg);
  double cpu = 0;
  rd_breach b = rd__lstate_disarm(s, &cpu, NULL);
  CHECK(rc != 0);
  CHECK(b == RD_BREACH_CPU);
  CHECK(cpu > 0);
  if (rc == 0 || b != RD_BREACH_CPU)
    fprintf(stderr, "  case %s: rc %d breach %d (%s) msg %s\n", name, rc, b,
            rd__breach_kind(b), msg);
}

/* pthread start routine: waits for started(), then delay_ms, then stops. */
static void *stop_thread(void *arg) {
  stopper *st = arg;
  while (!atomic_load(&st->started)) ms_sleep(1);
  ms_sleep(st->delay_ms);
  rd__lstate_request_stop(st->s, st->why);
  return NULL;
}

/* The global started() in s's state, for the code the stopper waits on. */
static void register_started(rd_lstate *s, stopper *st) {
  lua_State *L = rd__lstate_L(s);
  lua_pushlightuserdata(L, st);
  lua_pushcclosure(L, l_started, 1);
  lua_setglobal(L, "started");
}

#endif
