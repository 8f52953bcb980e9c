/*
 * stopper.h — for the C tests of tool states (test_lstate.c,
 * test_pattern.c): a thread that asks a state to stop (a cancel or a
 * timeout from the engine) once the Lua code running in it has called
 * `started()`, plus ms_sleep. Static functions: include in one test file
 * each.
 */
#ifndef RD_SPEC_STOPPER_H
#define RD_SPEC_STOPPER_H

#include "sandbox/lstate.h"

#include <lua.h>
#include <stdatomic.h>
#include <time.h>

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
