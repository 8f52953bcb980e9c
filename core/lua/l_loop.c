/*
 * l_loop.c — core.loop: the libuv loop that drives the pipeline.
 *
 *   local loop = core.loop.new()
 *   loop:run("once" | "nowait" | "default" [, spin_us]) -> alive (boolean)
 *       with spin_us, "once" first spins up to that long (CPU busy, no
 *       sleep) for a callback, and blocks only if none came: for a
 *       synchronous caller that expects an answer within microseconds;
 *       without spin_us, it spins on its own only while answers are
 *       awaited that have been quick (auto_spin below)
 *   local t = loop:timer(ms, fn)   one-shot; fn() runs on the loop
 *   local s = loop:signal(signo, fn) fn(signo) on the loop each time the
 *                                  process gets the signal (instead of its
 *                                  default action); does not keep the loop
 *                                  alive on its own
 *   t:stop(), s:stop()             idempotent
 *   t:unref()                      the timer no longer keeps the loop alive
 *   loop:now() -> ms               the loop's cached monotonic time
 *   loop:expect(), loop:answered(us)  an answer from elsewhere is awaited /
 *                                  came after us µs (nil: given up); see
 *                                  rd__loop_expect in loop.h; expect(true)
 *                                  and answered(us, true): an answer that
 *                                  comes on a socket (a worker process's),
 *                                  which a spin then asks epoll for at
 *                                  every other look
 *   loop:running() -> boolean      a loop:run is in progress: the caller is
 *                                  one of the loop's callbacks
 *   loop:after_run(fn), loop:defer()  fn() runs when the outermost
 *                                  loop:run returns (no run in progress,
 *                                  outside libuv), once per loop:defer()
 *                                  since its last run: work a callback
 *                                  must not do inside the loop (the
 *                                  engine's on_done/on_progress, which may
 *                                  run the loop again; uv_run is not
 *                                  reentrant)
 *   loop:close()                   closes every handle, frees the loop; an
 *                                  error while the loop runs (from one of its
 *                                  callbacks: the run would go on with a
 *                                  freed loop)
 */
#include "rd.h"
#include "lua/bind.h"
#include "lua/loop.h"

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#define LOOP_MT "rubberduck.loop"
#define TIMER_MT "rubberduck.timer"

rd_loop *rd__loop_check(lua_State *L, int idx) {
  rd_loop **pl = luaL_checkudata(L, idx, LOOP_MT);
  if (!*pl || (*pl)->closed) luaL_argerror(L, idx, "loop is closed");
  return *pl;
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}

void rd__loop_pcall(rd_loop *l, int nargs) {
  lua_State *L = l->cbL;
  l->ncalls++;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  if (lua_pcall(L, nargs, 0, base) != 0) {
    fprintf(stderr, "rubberduck: error in a loop callback: %s\n",
            lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_remove(L, base);
}

void rd__loop_post(rd_loop *l, rd_done *d) {
  atomic_fetch_add(&l->posting, 1);
  rd_done *head = atomic_load(&l->done_head);
  do {
    d->next = head;
  } while (!atomic_compare_exchange_weak(&l->done_head, &head, d));
  /* A spinning loop thread sees the item without a wake-up (a system call
   * on both sides). Both sides are sequentially consistent: the push above
   * comes before this read of `spinning`, and the spinner's last look at
   * done_head comes after it clears `spinning` (spin_once), so one of the
   * two sees the other. */
  if (atomic_load(&l->spinning) == 0) uv_async_send(&l->done_async);
  atomic_fetch_sub(&l->posting, 1);
}

/* Answers awaited for longer than this on average are awaited asleep (see
 * auto_spin). */
#define AUTO_SPIN_MAX_US 300.0

void rd__loop_expect(rd_loop *l) { l->expected++; }

void rd__loop_answered(rd_loop *l, double us) {
  if (l->expected > 0) l->expected--;
  if (us < 0) return;
  /* one slow answer moves the average by at most a quarter of the limit */
  if (us > 2 * AUTO_SPIN_MAX_US) us = 2 * AUTO_SPIN_MAX_US;
  l->answer_us = l->answer_us == 0 ? us : 0.875 * l->answer_us + 0.125 * us;
}

static void on_done(uv_async_t *h) {
  rd_loop *l = h->data;
  rd_done *d = atomic_exchange(&l->done_head, NULL);
  rd_done *fifo = NULL; /* the stack is newest first: reverse it */
  while (d) {
    rd_done *next = d->next;
    d->next = fifo;
    fifo = d;
    d = next;
  }
  while (fifo) {
    rd_done *next = fifo->next; /* fn may free the item */
    fifo->fn(fifo);
    fifo = next;
  }
}

/* Writing to a worker that died raises SIGPIPE, whose default action ends
 * the process: the engine would die with a tool's worker. libuv writes
 * with write(2), which takes no MSG_NOSIGNAL, so the engine ignores
 * SIGPIPE when nobody chose otherwise (the disposition is still the
 * default); the write then fails with EPIPE and the worker's death is
 * seen on its socket. An application that installed its own handler keeps
 * it. */
static void ignore_default_sigpipe(void) {
  struct sigaction old;
  if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
      !(old.sa_flags & SA_SIGINFO)) {
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, NULL);
  }
}

static int l_new(lua_State *L) {
  ignore_default_sigpipe();
  rd_loop **pl = lua_newuserdata(L, sizeof *pl);
  *pl = NULL;
  luaL_getmetatable(L, LOOP_MT);
  lua_setmetatable(L, -2);
  rd_loop *l = rd__calloc(1, sizeof *l);
  if (!l) return luaL_error(L, "out of memory");
  int rc = uv_loop_init(&l->uv);
  if (rc) {
    rd__freemem(l);
    return luaL_error(L, "uv_loop_init: %s", uv_strerror(rc));
  }
  l->cbL = lua_newthread(L);
  l->cbref = luaL_ref(L, LUA_REGISTRYINDEX);
  atomic_init(&l->done_head, NULL);
  atomic_init(&l->posting, 0);
  atomic_init(&l->spinning, 0);
  uv_async_init(&l->uv, &l->done_async, on_done);
  l->done_async.data = l;
  uv_unref((uv_handle_t *)&l->done_async); /* does not keep the loop alive */
  l->afterref = LUA_NOREF;
  *pl = l;
  return 1;
}

/* (on a cache line of its own: call threads read it while they spin) */
_Alignas(64) atomic_int rd__loop_cpu = -1;

int rd__cpu_slot(void) {
  int c = sched_getcpu();
  return c < 0 ? -1 : c % RD_CPU_SLOTS;
}

/* Spin for up to `us` microseconds before a blocking "once": watch the
 * done channel (no system call) and poll the loop without blocking now
 * and then, until a callback has run. Returns 1 if one ran. The first
 * PAUSE_NS only pause the CPU (an answer from another core comes within
 * that); after that each look yields the CPU, since the thread or process
 * we wait for may be waiting for this very core on a busy machine. While
 * only calls on call threads are awaited, the loop knows where those
 * threads run (rd__call_thread_on: running a call, or spinning to take
 * the next): it pauses while none is on its CPU, and yields at once
 * while one is. While a worker process's answer is awaited it
 * cannot know: after a spin that needed the yielding phase, it yields at
 * once for the next 32. (Until session 7 that guess was made for call
 * threads too: any hiccup of 20 µs made the next 32 hand-offs yield, a
 * system call at each look, on a machine whose threads ran on two CPUs;
 * with the epoll change below, the sequential relaxed layer went from
 * 6.1-6.3 to 5.5-5.7 µs p50, interleaved runs in a phase where a cache
 * line's round trip between the two CPUs took 0.5 µs.) */
#define PAUSE_NS 20000u

static int spin_once(rd_loop *l, double us) {
  unsigned long before = l->ncalls;
  atomic_fetch_add(&l->spinning, 1);
  uint64_t start = rd__mono_ns(), now = start;
  uint64_t until = start + (uint64_t)(us * 1e3);
  int got = 0;
  int guess = l->expected_io > 0; /* a worker process: where it runs is unknown */
  int apart = 1;                  /* what we wait for runs on another CPU */
  for (unsigned i = 1;; i++) {
    if (atomic_load(&l->done_head)) {
      on_done(&l->done_async);
      if (l->ncalls != before) { got = 1; break; }
    }
    /* Pausing only pays when what we wait for runs on another core. Where
     * this thread and the call threads run is looked at every 64th look. */
    if ((i & 63) == 1) {
      int me = guess ? -1 : rd__cpu_slot();
      if (me < 0) {
        apart = !l->skip_pause;
      } else {
        if (atomic_load_explicit(&rd__loop_cpu, memory_order_relaxed) != me)
          atomic_store_explicit(&rd__loop_cpu, me, memory_order_relaxed);
        apart = !rd__call_thread_on(me);
      }
    }
    int pausing = apart && now - start < PAUSE_NS;
    /* a worker's socket or a timer: ask epoll now and then. epoll_wait is
     * a system call (3 us on the 2-core VM): while yielding, only every
     * 8th look asks, so that a look first gives the CPU to the thread we
     * wait for (it saved ~1.7 us of a relaxed call's hand-off there).
     * While pausing for a call thread, never: the pause lasts PAUSE_NS at
     * most, and a timer or a socket can wait that long (asking every 64th
     * look was one epoll_wait per relaxed call when hand-offs were slow,
     * a system call in the middle of the hand-off). */
    /* (every other look while a worker process's answer is awaited: it
     * comes on a socket only epoll sees, and a yield is as dear) */
    unsigned every = pausing ? (guess ? 64u : 0u) : (guess ? 2u : 8u);
    if (every && (i & (every - 1)) == 0) {
      uv_run(&l->uv, UV_RUN_NOWAIT);
      if (l->ncalls != before) { got = 1; break; }
    }
    if (!pausing || (i & 63) == 0) {
      now = rd__mono_ns();
      if (now >= until) break;
    }
    if (pausing) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      sched_yield();
    }
  }
  atomic_fetch_sub(&l->spinning, 1);
  /* An item pushed while we were spinning sent no wake-up: whatever we
   * found, look once more now that posters will send one. */
  if (atomic_load(&l->done_head)) {
    on_done(&l->done_async);
    got = l->ncalls != before;
  }
  now = rd__mono_ns();
  if (now - start >= PAUSE_NS) l->skip_pause = 32;
  else if (l->skip_pause) l->skip_pause--;
  return got;
}

/* How long a blocking "once" spins on its own (no spin_us given): while
 * answers are awaited and have been coming back within AUTO_SPIN_MAX_US
 * on average, a few times that average, so a caller running the loop
 * itself (an asynchronous client) gets a quick answer as soon as a
 * synchronous one does. Slow answers (a strict worker's process, a
 * sleeping tool) are waited for asleep. */

static double auto_spin(const rd_loop *l) {
  if (l->expected <= 0 || l->answer_us <= 0 || l->answer_us > AUTO_SPIN_MAX_US) return 0;
  double us = 3 * l->answer_us + 20;
  return us > AUTO_SPIN_MAX_US ? AUTO_SPIN_MAX_US : us;
}

static int l_run(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  static const char *const modes[] = {"default", "once", "nowait", NULL};
  static const uv_run_mode m[] = {UV_RUN_DEFAULT, UV_RUN_ONCE, UV_RUN_NOWAIT};
  int i = luaL_checkoption(L, 2, "once", modes);
  double spin = lua_isnoneornil(L, 3) ? auto_spin(l) : luaL_checknumber(L, 3);
  l->depth++;
  int alive;
  if (i == 1 && spin > 0 && spin_once(l, spin))
    alive = uv_loop_alive(&l->uv);
  else
    alive = uv_run(&l->uv, m[i]);
  l->depth--;
  if (l->depth == 0 && l->deferred && l->afterref != LUA_NOREF) {
    l->deferred = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, l->afterref);
    lua_call(L, 0, 0); /* may close the loop: l is not used after it */
  }
  lua_pushboolean(L, alive != 0);
  return 1;
}

static int l_after_run(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, l->afterref);
  lua_pushvalue(L, 2);
  l->afterref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int l_defer(lua_State *L) {
  rd__loop_check(L, 1)->deferred = 1;
  return 0;
}

static int l_running(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  lua_pushboolean(L, l->depth > 0);
  return 1;
}

static int l_expect(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  rd__loop_expect(l);
  if (lua_toboolean(L, 2)) l->expected_io++;
  return 0;
}

static int l_answered(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  rd__loop_answered(l, luaL_optnumber(L, 2, -1));
  if (lua_toboolean(L, 3) && l->expected_io > 0) l->expected_io--;
  return 0;
}

static int l_now(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  lua_pushnumber(L, (double)uv_now(&l->uv));
  return 1;
}

/* ---- timers and signal watchers ------------------------------------------------ */

/* One struct for both: a libuv handle that calls a Lua function. */
typedef struct timer {
  rd_uvowner owner; /* first: see loop.h */
  union {
    uv_handle_t any;
    uv_timer_t timer;
    uv_signal_t signal;
  } h;
  rd_loop *loop;
  int fnref, udref;
  int closing;
} timer;

typedef struct timer_ud { timer *t; } timer_ud;

static void timer_closed(uv_handle_t *h) {
  timer *t = h->data;
  lua_State *L = t->loop->cbL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->udref);
  timer_ud *ud = lua_touserdata(L, -1);
  if (ud) ud->t = NULL;
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, t->udref);
  luaL_unref(L, LUA_REGISTRYINDEX, t->fnref);
  rd__freemem(t);
}

static void timer_close(timer *t) {
  if (t->closing) return;
  t->closing = 1;
  if (t->h.any.type == UV_TIMER) uv_timer_stop(&t->h.timer);
  else uv_signal_stop(&t->h.signal);
  uv_close(&t->h.any, timer_closed);
}

static void timer_close_all(rd_uvowner *o) { timer_close((timer *)o); }

static void timer_fired(uv_timer_t *h) {
  timer *t = h->data;
  if (t->closing) return;
  lua_State *L = t->loop->cbL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fnref);
  timer_close(t); /* one-shot: the function ref stays valid until closed */
  rd__loop_pcall(t->loop, 0);
}

static void signal_fired(uv_signal_t *h, int signo) {
  timer *t = h->data;
  if (t->closing) return;
  lua_State *L = t->loop->cbL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fnref);
  lua_pushinteger(L, signo);
  rd__loop_pcall(t->loop, 1);
}

/* A new handle struct for the function at stack index fn, with its
 * userdata pushed. */
static timer *handle_new(lua_State *L, rd_loop *l, int fn) {
  timer *t = rd__calloc(1, sizeof *t);
  if (!t) luaL_error(L, "out of memory");
  t->owner.close_all = timer_close_all;
  t->loop = l;
  lua_pushvalue(L, fn);
  t->fnref = luaL_ref(L, LUA_REGISTRYINDEX);
  timer_ud *ud = lua_newuserdata(L, sizeof *ud);
  ud->t = t;
  luaL_getmetatable(L, TIMER_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  t->udref = luaL_ref(L, LUA_REGISTRYINDEX);
  return t;
}

static int l_timer(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  double ms = luaL_checknumber(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (ms < 0) ms = 0;
  timer *t = handle_new(L, l, 3);
  uv_timer_init(&l->uv, &t->h.timer);
  t->h.any.data = t;
  uv_update_time(&l->uv); /* the cached clock may be stale: see l_lstate.c */
  uv_timer_start(&t->h.timer, timer_fired, (uint64_t)ms, 0);
  return 1;
}

static int l_signal(lua_State *L) {
  rd_loop *l = rd__loop_check(L, 1);
  int signo = (int)luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  timer *t = handle_new(L, l, 3);
  uv_signal_init(&l->uv, &t->h.signal);
  t->h.any.data = t;
  int rc = uv_signal_start(&t->h.signal, signal_fired, signo);
  if (rc != 0) {
    timer_close(t);
    return luaL_error(L, "signal %d: %s", signo, uv_strerror(rc));
  }
  uv_unref(&t->h.any);
  return 1;
}

static int l_timer_stop(lua_State *L) {
  timer_ud *ud = luaL_checkudata(L, 1, TIMER_MT);
  if (ud->t) timer_close(ud->t);
  return 0;
}

static int l_timer_unref(lua_State *L) {
  timer_ud *ud = luaL_checkudata(L, 1, TIMER_MT);
  if (ud->t && !ud->t->closing) uv_unref(&ud->t->h.any);
  return 0;
}

static int l_timer_active(lua_State *L) {
  timer_ud *ud = luaL_checkudata(L, 1, TIMER_MT);
  lua_pushboolean(L, ud->t && !ud->t->closing);
  return 1;
}

/* ---- closing ------------------------------------------------------------------- */

static void close_walk(uv_handle_t *h, void *arg) {
  rd_loop *l = arg;
  if (uv_is_closing(h)) return;
  if (h == (uv_handle_t *)&l->done_async) return; /* closed last */
  rd_uvowner *o = h->data;
  if (o && o->close_all) o->close_all(o);
  else uv_close(h, NULL);
}

/* How long closing waits for work still on the thread pool: a tool call
 * abandoned while blocked in C (levels relaxed and none) may never return. */
#define CLOSE_WAIT_NS (1000000000ull)

static void count_open(uv_handle_t *h, void *arg) {
  uv_loop_t *loop = h->loop;
  rd_loop *l = (rd_loop *)((char *)loop - offsetof(rd_loop, uv));
  if (h != (uv_handle_t *)&l->done_async && !uv_is_closing(h)) ++*(int *)arg;
}

static void loop_free(lua_State *L, rd_loop *l) {
  l->closed = 1;
  /* Let pending work and close callbacks run, then close what is left. */
  uv_run(&l->uv, UV_RUN_NOWAIT);
  uv_walk(&l->uv, close_walk, l);
  uint64_t until = rd__mono_ns() + CLOSE_WAIT_NS;
  int done_closed = 0;
  for (;;) {
    /* Close the done channel once only it is left (posts still arrive
     * while calls finish). */
    if (!done_closed) {
      int others = 0;
      uv_walk(&l->uv, count_open, &others);
      if (others == 0 && atomic_load(&l->posting) == 0) {
        on_done(&l->done_async);
        uv_close((uv_handle_t *)&l->done_async, NULL);
        done_closed = 1;
      }
    }
    if (uv_loop_close(&l->uv) != UV_EBUSY) break;
    if (rd__mono_ns() > until) {
      /* The loop (and the abandoned call's state) must outlive the thread
       * still using them: leave them allocated rather than free under it. */
      fprintf(stderr, "rubberduck: closing with a tool call still blocked in C "
                      "on a worker thread; its memory is left to the process exit\n");
      luaL_unref(L, LUA_REGISTRYINDEX, l->cbref);
      luaL_unref(L, LUA_REGISTRYINDEX, l->afterref);
      return;
    }
    uv_run(&l->uv, UV_RUN_NOWAIT);
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, l->cbref);
  luaL_unref(L, LUA_REGISTRYINDEX, l->afterref);
  rd__freemem(l);
}

static int l_close(lua_State *L) {
  rd_loop **pl = luaL_checkudata(L, 1, LOOP_MT);
  if (*pl && (*pl)->depth > 0)
    return luaL_error(L, "loop:close() from one of the loop's callbacks (while loop:run runs)");
  if (*pl) {
    rd_loop *l = *pl;
    *pl = NULL;
    loop_free(L, l);
  }
  return 0;
}

static int l_tostring(lua_State *L) {
  rd_loop **pl = luaL_checkudata(L, 1, LOOP_MT);
  lua_pushfstring(L, "rubberduck.loop (%s)", *pl ? "open" : "closed");
  return 1;
}

int rd__luaopen_loop(lua_State *L) {
  static const luaL_Reg loop_m[] = {
    {"run", l_run}, {"now", l_now}, {"timer", l_timer}, {"signal", l_signal},
    {"expect", l_expect}, {"answered", l_answered}, {"close", l_close},
    {"running", l_running}, {"after_run", l_after_run}, {"defer", l_defer},
    {"__gc", l_close}, {"__tostring", l_tostring}, {NULL, NULL},
  };
  static const luaL_Reg timer_m[] = {
    {"stop", l_timer_stop}, {"active", l_timer_active}, {"unref", l_timer_unref},
    {NULL, NULL},
  };
  rd__lua_class(L, TIMER_MT, timer_m, l_new);
  lua_pop(L, 1); /* timers are made by loop:timer(), not by a constructor */
  return rd__lua_class(L, LOOP_MT, loop_m, l_new);
}
