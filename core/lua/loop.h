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
  atomic_int spinning;                /* >0: the loop thread watches done_head */
  int expected;                       /* answers awaited (rd__loop_expect) */
  int expected_io;                    /* of those, on a socket (loop:expect(true)) */
  double answer_us;                   /* moving average of their wait */
  int depth;                          /* loop:run calls in progress (callbacks run inside) */
  int afterref;                       /* loop:after_run's function, or LUA_NOREF */
  int deferred;                       /* loop:defer() since it last ran */
} rd_loop;

/* From any thread: queue `d` so that d->fn(d) runs on the loop thread
 * soon. Lock-free: once `d` is pushed the loop may run d->fn and free what
 * d belongs to; the loop itself is not freed while a poster is still
 * inside this function (closing waits for `posting` to reach 0). */
void rd__loop_post(rd_loop *l, rd_done *d);

/* On the loop thread: an answer from another thread or process is awaited
 * (a call on a call thread, a request to a worker). While answers are
 * awaited and they have been coming back quickly, a blocking "once" run
 * of the loop first spins briefly for them (see l_loop.c, auto_spin),
 * which saves the wake-up of a sleeping thread on both sides. Every
 * rd__loop_expect is matched by one rd__loop_answered, with the time the
 * answer took in microseconds (negative: the wait was given up, and it
 * does not count in the average). No errors. */
void rd__loop_expect(rd_loop *l);
void rd__loop_answered(rd_loop *l, double us);

/* Where the threads that hand calls to each other run, so that a thread
 * spinning for the other's answer pauses the CPU (no system call) only
 * while the one it waits for runs on another CPU, and yields at each look
 * when they share one (l_loop.c, l_lstate.c). Indexed by sched_getcpu()
 * modulo RD_CPU_SLOTS (a clash only makes a spin yield). */
#define RD_CPU_SLOTS 64
/* 1 if a call thread runs a call or spins for the next on `cpu` (an
 * rd__cpu_slot value), else 0 (l_lstate.c). Lock-free, any thread. */
int rd__call_thread_on(int cpu);
/* The CPU a loop thread last queued a call or spun from; -1: unknown. */
extern atomic_int rd__loop_cpu;
/* sched_getcpu() modulo RD_CPU_SLOTS, or -1 where it fails. Cheap (glibc
 * reads it from the thread's rseq area, or the vDSO). */
int rd__cpu_slot(void);

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
