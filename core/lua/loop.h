/*
 * loop.h — the engine's libuv loop as seen by the bindings (l_loop.c).
 * Callbacks from libuv into Lua run on one anchored Lua thread of the host
 * state (cbL), through rd__loop_pcall, which reports (never propagates)
 * errors.
 */
#ifndef RD_LOOP_H
#define RD_LOOP_H

#include <lua.h>
#include <stdatomic.h>
#include <uv.h>

/* Work finished on another thread, handed to the loop thread. */
typedef struct rd_done {
  struct rd_done *next;
  void (*fn)(struct rd_done *self);   /* runs on the loop thread */
} rd_done;

typedef struct rd_loop {
  uv_loop_t uv;
  lua_State *cbL;   /* host thread callbacks run on; anchored by cbref */
  int cbref;
  int closed;
  uv_async_t done_async;              /* wakes the loop for `done` items */
  _Atomic(rd_done *) done_head;       /* lock-free stack of posted items */
  atomic_int posting;                 /* posters still inside rd__loop_post */
  unsigned long ncalls;               /* callbacks run (rd__loop_pcall) */
  unsigned skip_pause;                /* spins left that skip pausing */
} rd_loop;

/* From any thread: queue `d` so that d->fn(d) runs on the loop thread
 * soon. Lock-free: once `d` is pushed the loop may run d->fn and free what
 * d belongs to; the loop itself is not freed while a poster is still
 * inside this function (closing waits for `posting` to reach 0). */
void rd__loop_post(rd_loop *l, rd_done *d);

/* Every handle a binding starts on the loop has `data` pointing to a struct
 * whose first member is an rd_uvowner, so closing the loop can ask the
 * owner to close all its handles its own way (and free itself). */
typedef struct rd_uvowner {
  void (*close_all)(struct rd_uvowner *self);
} rd_uvowner;

/* The loop userdata at idx (raises if it is not one or is closed). */
rd_loop *rd__loop_check(lua_State *L, int idx);

/* Call the function below `nargs` arguments on cbL's stack, in protected
 * mode; an error is written to stderr with its traceback. */
void rd__loop_pcall(rd_loop *l, int nargs);

#endif
