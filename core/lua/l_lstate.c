/*
 * l_lstate.c — core.lstate: tool states driven from the host state.
 *
 *   local st = core.lstate.new(loop, { max_memory = bytes, jit = false,
 *                                       lua_path = "lua/?.lua;...",
 *                                       boot = "rubberduck.toolstate" })
 *   st:call(fname, arg, limits)  -> true, r1, r2, stats
 *                                 | false, kind, message, stats
 *   st:start(fname, arg, limits, fn) -> true     (fn gets what call returns;
 *                                     fn may be a table with __call)
 *   st:execute(params, caller, id, attempt, deadline, cpu_ms, timeout_ms,
 *              max_output, fn) -> true   (the pipeline's call: see l_execute)
 *   st:stop("timeout" | "cancel")   ask a running call to stop
 *   st:on_notify(fn [, arg])   fn(kind, a, b, text) for ctx.log / ctx.progress;
 *                      with arg: fn(arg, kind, a, b, text)
 *   st:set_max_memory(bytes), st:heap(), st:busy(), st:close()
 *
 * `fname` names a function of the tool state's bootstrap module (`boot`,
 * by default lua/rubberduck/toolstate.lua; the policy loader uses
 * rubberduck.policystate), loaded when the state is made; `arg` is
 * plain data copied into the state; up to two results are copied back (the
 * second one is the tool's output: a copy failure there is `invalid_output`,
 * or `output_limit` past limits.max_output). limits = { cpu_ms, timeout_ms,
 * max_output, grace_ms }. `kind` is a breach kind (memory_limit, cpu_limit,
 * timeout, cancelled, sandbox_violation, output_limit), "invalid_output", or
 * "error" (the bootstrap raised). stats = { cpu_ms, peak_memory_bytes }.
 *
 * start() runs the call on a call thread (see "the call threads" below), so
 * the loop never waits on tool code. If the call has not returned grace_ms after its deadline (a
 * blocking C call at level `none`), fn gets a `timeout` at once and the state
 * is abandoned: it is freed when the thread returns, and the userdata is
 * closed (the caller makes a new state).
 */
#include "rd.h"
#include "json.h"
#include "lua/bind.h"
#include "lua/loop.h"
#include "sandbox/toolcore.h"
#include "sandbox/lstate.h"
#include "sandbox/xcopy.h"

#include <lualib.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LSTATE_MT "rubberduck.lstate"
#define DEFAULT_GRACE_MS 250

typedef struct note {
  struct note *next;
  char kind[16];
  double a, b;
  size_t len;
  char text[];
} note;

typedef struct lcore lcore;

/* lcore.given_up: a call on a thread is RUNNING until the thread finishes
 * it (FINISHED) or the loop gives up on it first (UP): whichever side
 * moves it from RUNNING decides whether the call counted in q_given_up. */
enum { GIVEN_RUNNING, GIVEN_UP, GIVEN_FINISHED };
typedef struct lud { lcore *c; } lud;

struct lcore {
  rd_uvowner owner;          /* first: see loop.h */
  lud *ud;                   /* the userdata while it lives, else NULL */
  rd_lstate *s;
  rd_loop *loop;
  int modref;                /* bootstrap module, in the tool state */
  int gcref;                 /* gc_full, in the tool state */
  rd_xcopy_memo memo;        /* the caller of the last call (arg.ctx.caller), kept in the state */
  /* st:execute (the pipeline's calls): */
  int execref;               /* the bootstrap's `execute_with`, in the tool state */
  int caller_href;           /* the host caller whose copy the state keeps, or LUA_NOREF */
  int caller_pending;        /* the host caller sent with the call in flight, or LUA_NOREF */
  int okref;                 /* the host's { status = "ok" }, or LUA_NOREF */
  int fast;                  /* the call in flight came from st:execute */
  /* st:execute's fast way (the caller the state keeps): the loop thread
   * packs the params and id into `pin` (rd__xpack) and never touches the
   * tool state; run() makes them there, and packs the output of a call
   * that went well into `pout`, which the loop makes in the host. Each
   * state's memory then stays in the cache of the CPU that runs its
   * calls: where the loop and the call threads run on CPUs that share
   * no cache, every line of the state the loop read or wrote in
   * st:execute was a miss on one side or the other. */
  rd_buf pin, pout;
  rd_buf caller_pk;          /* the caller the state keeps, packed: each
                              * fast call gets a fresh copy made from it */
  double attempt, deadline;  /* the rest of the packed call's arguments */
  int packed;                /* the call in flight: its arguments are in pin */
  int out_packed;            /* run() packed its output: pout_rc says how */
  int pout_rc;               /* RD_OK, or why the output could not be packed */
  int unpack_failed;         /* run() could not make the arguments */
  rd_error pout_err;
  int nargs;                 /* its arguments on the tool state's stack */
  uv_async_t async;
  uv_timer_t timer;
  struct lcore *qnext;       /* in the run queue of the call threads */
  pthread_t thread;          /* the call thread running it (while running) */
  rd_done done;              /* posted to the loop when run() returned */
  int cbref, notifyref;      /* in the host (loop->cbL) */
  int notifyarg;             /* on_notify's arg (LUA_NOREF: none) */
  int running, abandoned, ud_gone, closing, handles_open;
  int awaited;               /* counted in loop->expected (rd__loop_expect) */
  int given_up;              /* GIVEN_*: abandoned while on a thread? */
  uint64_t started_ns;       /* when start() handed the call over */
  uint64_t queued_ns;        /* when it entered the call threads' queue */
  uint64_t finished_ns;      /* when its thread was done with it */
  /* the call in flight */
  double cpu_ms;
  uint64_t deadline_ns;
  size_t max_output;
  int status;                /* lua_pcall result */
  size_t gc_next;            /* heap size (bytes) at which run() collects */
  rd_breach breach;
  double used_cpu;
  size_t peak;
  pthread_mutex_t qlock;
  note *qhead, *qtail;
  int queued_notes;          /* under qlock */
};


static lcore *check_open(lua_State *L, int idx) {
  lud *u = luaL_checkudata(L, idx, LSTATE_MT);
  if (!u->c) luaL_argerror(L, idx, "tool state is closed");
  return u->c;
}

/* ---- notifications from the tool state (any thread) ------------------------- */

/* Notes queued and not yet delivered: past this many, new ones are
 * dropped (the loop delivers them as fast as it can; a flood must not grow
 * the engine's memory without bound). */
#define MAX_QUEUED_NOTES 4096

static void on_note(void *ud, const char *kind, double a, double b,
                    const char *text, size_t len) {
  lcore *c = ud;
  pthread_mutex_lock(&c->qlock);
  int full = c->queued_notes >= MAX_QUEUED_NOTES;
  pthread_mutex_unlock(&c->qlock);
  if (full) return;
  note *n = rd__malloc(sizeof *n + len + 1);
  if (!n) return;
  n->next = NULL;
  snprintf(n->kind, sizeof n->kind, "%s", kind);
  n->a = a;
  n->b = b;
  n->len = len;
  memcpy(n->text, text, len);
  n->text[len] = '\0';
  pthread_mutex_lock(&c->qlock);
  if (c->qtail) c->qtail->next = n; else c->qhead = n;
  c->qtail = n;
  c->queued_notes++;
  pthread_mutex_unlock(&c->qlock);
  uv_async_send(&c->async);
}

static void drain(lcore *c) {
  pthread_mutex_lock(&c->qlock);
  note *n = c->qhead;
  c->qhead = c->qtail = NULL;
  c->queued_notes = 0;
  pthread_mutex_unlock(&c->qlock);
  while (n) {
    note *next = n->next;
    if (c->notifyref != LUA_NOREF && !c->abandoned && !c->ud_gone) {
      lua_State *H = c->loop->cbL;
      lua_rawgeti(H, LUA_REGISTRYINDEX, c->notifyref);
      int has_arg = c->notifyarg != LUA_NOREF;
      if (has_arg) lua_rawgeti(H, LUA_REGISTRYINDEX, c->notifyarg);
      lua_pushstring(H, n->kind);
      lua_pushnumber(H, n->a);
      lua_pushnumber(H, n->b);
      lua_pushlstring(H, n->text, n->len);
      rd__loop_pcall(c->loop, 4 + has_arg);
    }
    rd__freemem(n);
    n = next;
  }
}

static void after_run(lcore *c);

static void on_async(uv_async_t *h) { drain(h->data); }

static void on_run_done(rd_done *d) {
  lcore *c = (lcore *)((char *)d - offsetof(lcore, done));
  after_run(c);
}

/* ---- the call threads ----------------------------------------------------------------
 * Calls run on threads of our own rather than libuv's pool: a call stuck
 * in C (abandoned at its deadline) keeps its thread, and libuv joins its
 * pool's threads at process exit, which would then never come. Ours are
 * detached: an idle one waits on the queue; when none is idle a new one
 * starts (up to MAX_THREADS), so stuck threads never starve the engine. */

#define MAX_THREADS 256
/* Tool code may recurse in C (gsub callbacks, sort comparators): give each
 * call thread the stack a main thread would have. Only address space. */
#define CALL_STACK (8u << 20)

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static lcore *q_head, *q_tail;
static int q_threads;   /* call threads alive */
static int q_idle;      /* of those, waiting for work (or spinning) */
static int q_spinning;  /* of the idle ones, spinning rather than asleep */
static int q_queued;    /* calls in the queue, not yet taken by a thread */
static int q_busy;      /* threads running a call */
static int q_given_up;  /* of those, calls abandoned at their deadline */
static pid_t q_pid;     /* the process the threads belong to */
static volatile int q_forked = 1; /* set in a fork child: check q_pid */
static pthread_once_t q_once = PTHREAD_ONCE_INIT;

static void q_atfork_child(void) { q_forked = 1; }
static void q_register(void) { pthread_atfork(NULL, NULL, q_atfork_child); }

static void run(lcore *c, double cpu_start_ms);
static int gc_full(lua_State *T);

/* After a call, a thread watches the queue this long before it sleeps:
 * a caller issuing calls one after another then finds it awake, and the
 * futex wake-up (tens of µs on a busy VM) is saved on both sides. */
#define SPIN_NS 200000u

/* The first PAUSE_NS of a spin only pause the CPU (the loop thread on
 * another core answers within that, with no system call at all); after
 * that each look gives the CPU to any other runnable thread (the loop
 * thread may be waiting for this very core on a busy machine). */
#define PAUSE_NS 20000u

/* Pausing only pays when the loop thread runs on another core: the loop
 * thread says where it runs (rd__loop_cpu, loop.h) when it queues a call
 * and while it spins; on this thread's CPU, each look yields. Where the
 * CPU is unknown, a guess: when the last wait needed the yielding phase,
 * the next 32 waits skip the pause (both threads are likely on one core,
 * where a pause only delays). skip_pause is per call thread (on its
 * stack: no thread-local storage in this dlopen'ed module, which
 * LeakSanitizer's tracer trips over). */
static inline void cpu_relax(uint64_t spun_ns, unsigned skip_pause, int me) {
  int pause = spun_ns < PAUSE_NS;
  if (pause) {
    int loop = atomic_load_explicit(&rd__loop_cpu, memory_order_relaxed);
    pause = me >= 0 && loop >= 0 ? me != loop : !skip_pause;
  }
  if (pause) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  } else {
    sched_yield();
  }
}

/* A call may be charged CPU time its thread used before it, up to this
 * much wall time's worth (a whole spin, or earlier calls): the thread's
 * CPU clock is a system call (about 3 µs on this VM), read when a spin
 * starts, right after the previous call's answer went out, not when the
 * next call is picked up, where the read would sit between the loop's
 * hand-off and the call; and a reading younger than this serves again
 * (calls taken one after another from a full queue read the clock once
 * per CPU_STALE_NS, not once each). Only a run long enough for the hook's
 * budget checks (or one given up at its deadline) uses that start; a short
 * run reports its wall time. */
#define CPU_STALE_NS SPIN_NS

/* A call thread's last reading of its CPU clock (on its stack). */
typedef struct cpu_reading {
  double ms;
  uint64_t at_ns; /* rd__mono_ns() when read; 0: never */
} cpu_reading;

static double cpu_reading_at(cpu_reading *r, uint64_t now_ns) {
  if (!r->at_ns || now_ns - r->at_ns > CPU_STALE_NS) {
    r->ms = rd__thread_cpu_ms();
    r->at_ns = now_ns;
  }
  return r->ms;
}

/* Each call thread's slot, on its own stack (the threads never end), in
 * a list under q_lock (added at its head, never removed): since when it
 * runs its call (0: idle), for the watchdog, which counts the calls that
 * have run for STUCK_NS; and the CPU it runs on while it runs or spins
 * (rd__cpu_slot; -1 asleep or unknown), which the loop thread reads,
 * without the lock, while it spins (rd__call_thread_on). The thread
 * writes it only when it changes: a write at every call would pull the
 * line from the spinning loop's cache each time. */
typedef struct q_slot {
  /* a cache line of its own: the loop reads it, the thread's stack
   * around it is the thread's alone */
  _Alignas(64) struct q_slot *next;
  uint64_t busy_ns;
  atomic_int cpu;
  char pad[64 - sizeof(void *) - sizeof(uint64_t) - sizeof(atomic_int)];
} q_slot;
static q_slot *q_slots;

static inline void note_cpu(q_slot *slot, int cpu) {
  if (atomic_load_explicit(&slot->cpu, memory_order_relaxed) != cpu)
    atomic_store_explicit(&slot->cpu, cpu, memory_order_relaxed);
}

int rd__call_thread_on(int cpu) {
  for (q_slot *s = __atomic_load_n(&q_slots, __ATOMIC_ACQUIRE); s;
       s = __atomic_load_n(&s->next, __ATOMIC_RELAXED))
    if (atomic_load_explicit(&s->cpu, memory_order_relaxed) == cpu) return 1;
  return 0;
}

/* With q_lock held: wait until the queue has a call. Spins (lock
 * released) for up to SPIN_NS after the thread's last call, then sleeps;
 * submit() signals only when no thread spins. Returns the thread's CPU
 * time (ms) read at most CPU_STALE_NS ago (cpu_reading_at): the start of
 * the call's CPU count. */
/* Idle threads that spin at once, at most: more would only take CPU from
 * the calls and from the loop (the others sleep on q_cond). */
#define MAX_SPINNERS 1

static double wait_for_work(int spin, unsigned *skip_pause, cpu_reading *cr, q_slot *slot) {
  if (q_head) return cpu_reading_at(cr, rd__mono_ns());
  q_idle++;
  if (spin && q_spinning < MAX_SPINNERS) {
    q_spinning++;
    pthread_mutex_unlock(&q_lock);
    uint64_t read_at = rd__mono_ns(), now = read_at;
    double cpu = cpu_reading_at(cr, read_at);
    uint64_t until = read_at + SPIN_NS;
    while (!__atomic_load_n(&q_head, __ATOMIC_ACQUIRE) && now < until) {
      int me = rd__cpu_slot();
      note_cpu(slot, me);
      cpu_relax(now - read_at, *skip_pause, me);
      now = rd__mono_ns();
    }
    if (now - read_at >= PAUSE_NS) *skip_pause = 32;
    else if (*skip_pause) (*skip_pause)--;
    cpu = cpu_reading_at(cr, now);
    pthread_mutex_lock(&q_lock);
    q_spinning--;
    if (q_head) {
      q_idle--;
      return cpu;
    }
  }
  if (!q_head) {
    note_cpu(slot, -1); /* asleep: no loop need yield to this thread */
    while (!q_head) pthread_cond_wait(&q_cond, &q_lock);
  }
  q_idle--;
  return cpu_reading_at(cr, rd__mono_ns());
}

/* Call threads (and the watchdog) run under SCHED_BATCH: a woken one
 * waits for the CPU it lands on to reschedule instead of preempting the
 * thread running there, most often the loop thread, which each preemption
 * costs a context switch in the middle of its work. They get the same
 * share of the CPU as before; only wake-up preemption goes. */
static void batch_self(void) {
#ifdef SCHED_BATCH
  struct sched_param sp = { 0 };
  (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
}

static void *call_thread(void *arg) {
  RD_UNUSED(arg);
  batch_self();
  int spin = 0; /* a new thread has its call queued already */
  unsigned skip_pause = 0;
  cpu_reading cr = { 0, 0 };
  q_slot slot = { NULL, 0, -1, {0} };
  pthread_mutex_lock(&q_lock);
  slot.next = q_slots;
  __atomic_store_n(&q_slots, &slot, __ATOMIC_RELEASE);
  for (;;) {
    double cpu_start = wait_for_work(spin, &skip_pause, &cr, &slot);
    spin = 1;
    lcore *c = q_head;
    __atomic_store_n(&q_head, c->qnext, __ATOMIC_RELEASE);
    if (!q_head) q_tail = NULL;
    q_queued--;
    q_busy++;
    slot.busy_ns = rd__mono_ns();
    note_cpu(&slot, rd__cpu_slot()); /* a loop spinning on this CPU yields to the call */
    pthread_mutex_unlock(&q_lock);
    run(c, cpu_start);
    c->finished_ns = rd__mono_ns();
    /* Finished: from now on the loop's on_overdue no longer counts the
     * call as given up (the exchange settles a race with it without the
     * lock). The post, the only message back, goes out before this thread
     * takes the lock again; after it the loop may free c at any time. */
    int given_up = __atomic_exchange_n(&c->given_up, GIVEN_FINISHED, __ATOMIC_ACQ_REL)
                   == GIVEN_UP;
    rd__loop_post(c->loop, &c->done);
    pthread_mutex_lock(&q_lock);
    slot.busy_ns = 0;
    q_busy--;
    if (given_up) q_given_up--;
  }
  return NULL;
}

/* How many calls run at once before a queued call waits for one of them:
 * as many as there are CPUs (at least 2). More threads than that only
 * share the CPUs, and each would cost a wake-up. A call that has run for
 * STUCK_NS (stuck in C, sleeping, or just long) no longer counts: while
 * calls wait, the watchdog below lets another thread run in its place, so
 * such calls never hold up the others for long. Calls that are merely
 * slow to be taken, because the CPUs are busy, get no more threads: those
 * would only share the same CPUs (and a closed loop of short calls under
 * load once grew to dozens of threads, each call dearer than the last). */
static int active_cap;
#define STUCK_NS 1000000u

static pthread_cond_t wd_cond = PTHREAD_COND_INITIALIZER;
static int wd_running;   /* the watchdog thread exists (in this process) */
static int wd_waiting;   /* it sleeps until a call is left queued */

static int start_thread(void) {
  pthread_t th;
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&at, CALL_STACK);
  int rc = pthread_create(&th, &at, call_thread, NULL);
  pthread_attr_destroy(&at);
  if (rc == 0) q_threads++;
  return rc;
}

/* With q_lock held: let queued calls run in the place of calls that have
 * run for STUCK_NS by `now`: wake sleeping threads or start new ones (up to
 * MAX_THREADS) until the calls running that are not stuck reach active_cap
 * or no call is left waiting. */
static void grow_for_queue(uint64_t now) {
  int stuck = 0;
  for (q_slot *s = q_slots; s; s = s->next)
    if (s->busy_ns && now - s->busy_ns >= STUCK_NS) stuck++;
  int want = q_queued - q_spinning;
  int room = active_cap + stuck - q_busy;
  if (want > room) want = room;
  int sleeping = q_idle - q_spinning;
  for (int i = 0; i < want && i < sleeping; i++) pthread_cond_signal(&q_cond);
  for (int i = sleeping; i < want && q_threads < MAX_THREADS; i++)
    if (start_thread() != 0) break;
}

/* The watchdog: while calls are queued, checks every STUCK_NS that the
 * oldest one was taken; if not, calls that have run for STUCK_NS make
 * room for queued ones (grow_for_queue). While calls run and none waits
 * it looks less and less often (up to every WD_MAX_NS); with no call at
 * all it sleeps. In both cases it is woken by the next call that is left
 * waiting in the queue (submit), and only by such a call: a call taken at
 * once costs the loop thread no wake-up of the watchdog. */
#define WD_MAX_NS 64000000u

static void *watchdog(void *arg) {
  RD_UNUSED(arg);
  batch_self();
  pthread_mutex_lock(&q_lock);
  uint64_t interval = STUCK_NS;
  for (;;) {
    if (!q_head && !q_busy) {
      wd_waiting = 1;
      while (!q_head) pthread_cond_wait(&wd_cond, &q_lock);
      interval = STUCK_NS;
    } else if (q_head) {
      interval = STUCK_NS;
      wd_waiting = 0;
    } else {
      interval = interval * 2 > WD_MAX_NS ? WD_MAX_NS : interval * 2;
      wd_waiting = 1;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + interval;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_cond_timedwait(&wd_cond, &q_lock, &ts);
    wd_waiting = 0;
    uint64_t now = rd__mono_ns();
    if (q_head && now - q_head->queued_ns >= STUCK_NS) grow_for_queue(now);
  }
  return NULL;
}

/* Queue a call; 0 or an errno value. The call is taken by a spinning
 * thread, else by a sleeping one (woken) or a new one while fewer than
 * active_cap run calls; otherwise it waits for a running call to end, and
 * the watchdog makes sure that wait is short. */
static int submit(lcore *c) {
  int rc = 0;
  c->done.fn = on_run_done;
  c->qnext = NULL;
  c->given_up = GIVEN_RUNNING;
  /* submit() is only called on loop threads. In a forked child (which has
   * none of the parent's threads, and may have inherited the lock held or
   * the condition with waiters) everything starts again. The atfork
   * handler only raises a flag (getpid() is a system call, microseconds on
   * a VM, too dear for every call); the pid decides, so a handler run in
   * the parent's memory (a vfork-style spawn; glibc runs none there) would
   * reset nothing. */
  pthread_once(&q_once, q_register);
  if (q_forked) {
    q_forked = 0;
    if (q_pid != getpid()) {
      q_pid = getpid();
      pthread_mutex_init(&q_lock, NULL);
      pthread_cond_init(&q_cond, NULL);
      pthread_cond_init(&wd_cond, NULL);
      q_head = q_tail = NULL;
      q_slots = NULL;
      q_threads = q_idle = q_queued = q_spinning = q_busy = q_given_up = 0;
      wd_running = wd_waiting = 0;
      long n = sysconf(_SC_NPROCESSORS_ONLN);
      active_cap = n < 2 ? 2 : n > 64 ? 64 : (int)n;
    }
  }
  c->queued_ns = rd__mono_ns();
  int me = rd__cpu_slot();
  if (me >= 0 && atomic_load_explicit(&rd__loop_cpu, memory_order_relaxed) != me)
    atomic_store_explicit(&rd__loop_cpu, me, memory_order_relaxed);
  pthread_mutex_lock(&q_lock);
  if (!wd_running) {
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, watchdog, NULL) == 0) wd_running = 1;
    pthread_attr_destroy(&at);
  }
  int busy = q_busy - q_given_up; /* a call stuck in C does not count */
  int waiting = q_queued + 1 - q_spinning; /* calls no spinner will take */
  if (waiting > 0 && busy < active_cap) {
    if (q_idle - q_spinning > 0) {
      pthread_cond_signal(&q_cond);
    } else if (q_threads < MAX_THREADS) {
      rc = start_thread();
      if (rc != 0 && q_threads > 0) rc = 0; /* an existing thread will get to it */
    }
  } else if (waiting > 0 && !wd_running && q_threads < MAX_THREADS) {
    /* no watchdog (it could not start): a thread per call, as a fallback */
    rc = start_thread();
    if (rc != 0 && q_threads > 0) rc = 0;
  }
  if (rc == 0) {
    if (q_tail) q_tail->qnext = c;
    else __atomic_store_n(&q_head, c, __ATOMIC_RELEASE);
    q_tail = c;
    q_queued++;
    /* a call no spinning thread takes: the watchdog must look soon */
    if (waiting > 0 && wd_waiting) pthread_cond_signal(&wd_cond);
  }
  pthread_mutex_unlock(&q_lock);
  return rc;
}

/* ---- lifetime ------------------------------------------------------------------ */

static void core_free(lcore *c) {
  drain(c);
  if (c->ud) c->ud->c = NULL;
  if (c->s) rd__lstate_free(c->s);
  rd__buf_free(&c->pin);
  rd__buf_free(&c->pout);
  rd__buf_free(&c->caller_pk);
  pthread_mutex_destroy(&c->qlock);
  rd__freemem(c);
}

static void handle_closed(uv_handle_t *h) {
  lcore *c = h->data;
  if (--c->handles_open == 0) core_free(c);
}

/* Close the handles; the core is freed when both are closed, or later by
 * after_run if a call is still on a thread. */
static void core_close(lcore *c) {
  if (c->closing) return;
  c->closing = 1;
  lua_State *H = c->loop->cbL;
  luaL_unref(H, LUA_REGISTRYINDEX, c->cbref);
  luaL_unref(H, LUA_REGISTRYINDEX, c->notifyref);
  luaL_unref(H, LUA_REGISTRYINDEX, c->notifyarg);
  luaL_unref(H, LUA_REGISTRYINDEX, c->caller_href);
  luaL_unref(H, LUA_REGISTRYINDEX, c->caller_pending);
  luaL_unref(H, LUA_REGISTRYINDEX, c->okref);
  c->cbref = c->notifyref = c->notifyarg = LUA_NOREF;
  c->caller_href = c->caller_pending = c->okref = LUA_NOREF;
  if (c->running) return; /* after_run finishes the job */
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->async, handle_closed);
  uv_close((uv_handle_t *)&c->timer, handle_closed);
}

static void close_all(rd_uvowner *o) {
  lcore *c = (lcore *)o;
  if (c->running) {
    /* The loop is going away with a call on a thread: stop it and wait. */
    rd__lstate_request_stop(c->s, RD_BREACH_CANCEL);
  }
  c->closing = 0;
  c->ud_gone = 1;
  core_close(c);
}

static int l_new(lua_State *L) {
  rd_loop *loop = rd__loop_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "max_memory");
  size_t max_memory = (size_t)luaL_optnumber(L, -1, 0);
  lua_getfield(L, 2, "jit");
  int jit = lua_toboolean(L, -1);
  lua_getfield(L, 2, "lua_path");
  const char *lua_path = luaL_checkstring(L, -1);
  lua_getfield(L, 2, "boot");
  const char *boot = luaL_optstring(L, -1, "rubberduck.toolstate");
  lud *u = lua_newuserdata(L, sizeof *u);
  u->c = NULL;
  luaL_getmetatable(L, LSTATE_MT);
  lua_setmetatable(L, -2);

  lcore *c = rd__calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "out of memory");
  rd_error err;
  rd_lstate_opts o = {0, jit, 0};
  if (rd__lstate_new(&c->s, &o, &err) != RD_OK) {
    rd__freemem(c);
    return luaL_error(L, "%s", err.message);
  }
  pthread_mutex_init(&c->qlock, NULL);
  c->owner.close_all = close_all;
  c->loop = loop;
  /* A tool's calls mostly come from one caller: its copy is kept in the
   * state and compared with the next call's caller (see xcopy.h). */
  c->memo.k1 = "ctx";
  c->memo.k2 = "caller";
  c->memo.ref = LUA_NOREF;
  /* What a call did to the JSON markers (shared by every array and
   * object of the state) must not reach the data of the next one. */
  c->memo.reset_markers = 1;
  c->cbref = c->notifyref = c->notifyarg = LUA_NOREF;
  c->execref = c->caller_href = c->caller_pending = c->okref = LUA_NOREF;
  uv_async_init(&loop->uv, &c->async, on_async);
  uv_timer_init(&loop->uv, &c->timer);
  c->async.data = c->timer.data = c;
  c->handles_open = 2;
  u->c = c;
  c->ud = u;

  /* Boot: the bootstrap module loads with the full libraries, then hides
   * them from tool code (lua/rubberduck/toolstate.lua). */
  lua_State *T = rd__lstate_L(c->s);
  lua_getglobal(T, "package");
  lua_pushstring(T, lua_path);
  lua_setfield(T, -2, "path");
  lua_pushliteral(T, "");
  lua_setfield(T, -2, "cpath");
  lua_pop(T, 1);
  rd__toolcore_preload(T, on_note, c);
  lua_getglobal(T, "require");
  lua_pushstring(T, boot);
  if (lua_pcall(T, 1, 1, 0) != 0) {
    lua_pushfstring(L, "cannot boot a tool state: %s", lua_tostring(T, -1));
    u->c = NULL;
    c->ud = NULL;
    c->ud_gone = 1;
    core_close(c);
    return lua_error(L);
  }
  if (lua_istable(T, -1)) {
    lua_pushliteral(T, "execute_with");
    lua_rawget(T, -2);
  } else {
    lua_pushnil(T);
  }
  c->execref = luaL_ref(T, LUA_REGISTRYINDEX); /* LUA_REFNIL if none */
  c->modref = luaL_ref(T, LUA_REGISTRYINDEX);
  /* made once: lua_cpcall would allocate a closure at every call */
  lua_pushcfunction(T, gc_full);
  c->gcref = luaL_ref(T, LUA_REGISTRYINDEX);
  /* The cap counts from here: the bootstrap is part of every state. The
   * collector runs only in calls from now on (see run). */
  rd__lstate_set_max_memory(c->s, max_memory);
  lua_gc(T, LUA_GCSTOP, 0);
  return 1;
}

/* ---- calls ------------------------------------------------------------------------ */

typedef struct limits {
  double cpu_ms, timeout_ms, grace_ms;
  size_t max_output;
} limits;

static void read_limits(lua_State *L, int idx, limits *lim) {
  lim->cpu_ms = lim->timeout_ms = 0;
  lim->grace_ms = DEFAULT_GRACE_MS;
  lim->max_output = 0;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "cpu_ms");
  lim->cpu_ms = luaL_optnumber(L, -1, 0);
  lua_getfield(L, idx, "timeout_ms");
  lim->timeout_ms = luaL_optnumber(L, -1, 0);
  lua_getfield(L, idx, "grace_ms");
  lim->grace_ms = luaL_optnumber(L, -1, DEFAULT_GRACE_MS);
  lua_getfield(L, idx, "max_output");
  lim->max_output = (size_t)luaL_optnumber(L, -1, 0);
  lua_pop(L, 4);
}

/* After the copy of a call into the tool state (with the cap lifted from
 * `cap`): the cap back; on failure the stack emptied. Returns rc. */
static int copied(lcore *c, size_t cap, int rc) {
  rd__lstate_set_max_memory(c->s, cap);
  if (rc != RD_OK) lua_settop(rd__lstate_L(c->s), 0);
  return rc;
}

/* The limits of the call about to start. */
static void arm(lcore *c, const limits *lim) {
  rd__lstate_clear_stop(c->s);
  c->cpu_ms = lim->cpu_ms;
  c->deadline_ns = lim->timeout_ms > 0
      ? rd__mono_ns() + (uint64_t)(lim->timeout_ms * 1e6) : 0;
  c->max_output = lim->max_output;
}

/* Push the bootstrap function `fname` and a copy of the host value at
 * `argidx` onto the tool state's stack. Raises in the host on misuse. */
static void prepare(lua_State *L, lcore *c, const char *fname, int argidx,
                    const limits *lim) {
  lua_State *T = rd__lstate_L(c->s);
  size_t cap = rd__lstate_set_max_memory(c->s, 0);
  lua_settop(T, 0);
  lua_rawgeti(T, LUA_REGISTRYINDEX, c->modref);
  lua_getfield(T, -1, fname);
  lua_remove(T, -2);
  if (!lua_isfunction(T, -1)) {
    lua_settop(T, 0);
    rd__lstate_set_max_memory(c->s, cap);
    luaL_error(L, "tool state has no function '%s'", fname);
  }
  /* (the state's collector is stopped: see run) */
  rd_error err;
  int rc = rd__xcopy_memo(L, argidx, T, NULL, &c->memo, NULL, &err);
  if (copied(c, cap, rc) != RD_OK) luaL_error(L, "argument %s", err.message);
  arm(c, lim);
}

/* A tool state's collector runs only on the call's thread, while the
 * call's limits are armed (a finalizer that loops is stopped like the
 * tool's own code); everywhere else it is stopped, so that the loop
 * thread's copies into and out of the state never step it (a step walks
 * the tool's heap, and may run its finalizers).
 *
 * LuaJIT keeps its pause in the threshold that stopping it overwrites:
 * restarted by LUA_GCRESTART, it steps at the next allocation, and a step
 * from the pause starts a cycle. Restarted that way for every call, the
 * collector never paused: half the call thread's instructions for a
 * trivial tool went to marking and sweeping the state's heap. The pause
 * is therefore kept here, as LuaJIT would: when the heap has grown to
 * gc_next, a full collection (protected: a finalizer's error, or a
 * limit's, is raised from inside it), and gc_next = twice what is left
 * (at least GC_MIN_GROWTH more, and at most half the way to the memory
 * cap, so that garbage never makes a call breach it). During the call the
 * collector runs incrementally from gc_next on, as LuaJIT's own pacing
 * would have it. */
#define GC_MIN_GROWTH ((size_t)128 * 1024)

static int gc_full(lua_State *T) {
  lua_gc(T, LUA_GCCOLLECT, 0);
  return 0;
}

static size_t gc_total(lua_State *T) {
  return (size_t)lua_gc(T, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(T, LUA_GCCOUNTB, 0);
}

/* In run(), armed: collect if due, then let the collector run from
 * gc_next on. Returns a lua_pcall result (the error on top on failure). */
static int gc_resume(lcore *c, lua_State *T) {
  size_t heap = gc_total(T);
  if (heap >= c->gc_next) {
    if (!lua_checkstack(T, 1)) return LUA_ERRMEM;
    lua_rawgeti(T, LUA_REGISTRYINDEX, c->gcref);
    int rc = lua_pcall(T, 0, 0, 0);
    if (rc != 0) return rc;
    heap = gc_total(T);
    size_t grow = heap > GC_MIN_GROWTH ? heap : GC_MIN_GROWTH;
    size_t cap = rd__lstate_set_max_memory(c->s, 0);
    rd__lstate_set_max_memory(c->s, cap);
    if (cap && cap > heap && grow > (cap - heap) / 2) grow = (cap - heap) / 2;
    c->gc_next = heap + grow;
  }
  /* LUA_GCRESTART with -1 sets the threshold to total / 100 * pause: the
   * pause is set for gc_next, then put back (a cycle that ends during the
   * call sets the next threshold from it). */
  size_t pct = c->gc_next / (heap / 100 + 1) + 1;
  int pause = lua_gc(T, LUA_GCSETPAUSE, pct > 1000000 ? 1000000 : (int)pct);
  lua_gc(T, LUA_GCRESTART, -1);
  lua_gc(T, LUA_GCSETPAUSE, pause);
  return 0;
}

/* The packed call's arguments, made on T's stack: execute_with, params,
 * a fresh copy of the kept caller (made from caller_pk: the bootstrap
 * uses it as it is, `given`), id, attempt, deadline, given = true.
 * Outside the memory cap, as the slow way's copies. */
static int unpack_args(lcore *c, lua_State *T) {
  rd_error err;
  size_t cap = rd__lstate_set_max_memory(c->s, 0);
  lua_settop(T, 0);
  lua_rawgeti(T, LUA_REGISTRYINDEX, c->execref);
  int rc = rd__xunpack(T, c->pin.data, 2, 1, &err); /* params, id */
  if (rc == RD_OK) rc = rd__xunpack(T, c->caller_pk.data, 1, 0, &err);
  if (rc == RD_OK) {
    lua_insert(T, -2);
    lua_pushnumber(T, c->attempt);
    lua_pushnumber(T, c->deadline);
    lua_pushboolean(T, 1);
  } else {
    lua_settop(T, 0);
  }
  rd__lstate_set_max_memory(c->s, cap);
  return rc;
}

/* After a packed call: the output of one that went well (execute_with
 * answered true), packed with the output limit, for push_results. */
static void pack_output(lcore *c, lua_State *T) {
  c->out_packed = 0;
  if (c->breach != RD_BREACH_NONE || c->status != 0 || lua_type(T, -2) != LUA_TBOOLEAN ||
      !lua_toboolean(T, -2))
    return;
  c->pout.len = 0;
  rd_xcopy_opts oo = {0, c->max_output, 0};
  c->pout_rc = rd__xpack(T, -1, &c->pout, &oo, NULL, &c->pout_err);
  c->out_packed = 1;
  lua_settop(T, 0);
}

/* On the thread that runs the call (loop thread for call(), pool for start()). */
static void run(lcore *c, double cpu_start_ms) {
  lua_State *T = rd__lstate_L(c->s);
  c->thread = pthread_self();
  c->out_packed = c->unpack_failed = 0;
  if (c->packed && unpack_args(c, T) != RD_OK) {
    c->unpack_failed = 1;
    return;
  }
  rd__lstate_arm_at(c->s, c->cpu_ms, c->deadline_ns, cpu_start_ms);
  /* on failure the error is on top, as after a failed lua_pcall */
  c->status = gc_resume(c, T);
  if (c->status == 0) c->status = lua_pcall(T, c->nargs, 2, 0);
  lua_gc(T, LUA_GCSTOP, 0);
  c->breach = rd__lstate_disarm(c->s, &c->used_cpu, &c->peak);
  if (c->packed) pack_output(c, T);
}

static void push_stats(lua_State *L, lcore *c) {
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, c->used_cpu);
  lua_setfield(L, -2, "cpu_ms");
  lua_pushnumber(L, (double)c->peak);
  lua_setfield(L, -2, "peak_memory_bytes");
}

/* Error message of a failed pcall, read without running metamethods: a
 * string, or a table's raw `message` field. */
static void push_error_text(lua_State *L, lua_State *T) {
  if (lua_type(T, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(T, -1, &n);
    lua_pushlstring(L, s, n > 4096 ? 4096 : n);
  } else if (lua_type(T, -1) == LUA_TTABLE) {
    lua_pushliteral(T, "message");
    lua_rawget(T, -2);
    if (lua_type(T, -1) == LUA_TSTRING) lua_pushstring(L, lua_tostring(T, -1));
    else lua_pushliteral(L, "error object without a message");
    lua_pop(T, 1);
  } else {
    lua_pushfstring(L, "error object of type %s", lua_typename(T, lua_type(T, -1)));
  }
}

/* A result that could not be copied out: false, kind, message. */
static void push_copy_failure(lua_State *L, int rc, const rd_error *err) {
  lua_pushboolean(L, 0);
  if (rc == RD_ELIMIT && strstr(err->message, "larger than"))
    lua_pushliteral(L, "output_limit");
  else
    lua_pushliteral(L, "invalid_output");
  lua_pushstring(L, err->message);
}

/* After an st:execute call (run or not): the caller sent with it is the
 * one the state keeps if the bootstrap got to keep it (the call ran and
 * returned); otherwise no caller is known to the state, and the next call
 * sends its caller again. */
static void complete_caller(lua_State *L, lcore *c, int ran) {
  if (c->caller_pending == LUA_NOREF) return;
  if (ran) {
    c->caller_href = c->caller_pending;
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, c->caller_pending);
  }
  c->caller_pending = LUA_NOREF;
}

/* A packed call's buffers after use: kept for the next call, unless one
 * grew large (a big output). */
#define PACK_KEEP (64 * 1024)
static void trim_packed(lcore *c) {
  if (c->pin.cap > PACK_KEEP) rd__buf_free(&c->pin);
  if (c->pout.cap > PACK_KEEP) rd__buf_free(&c->pout);
}

/* Push the results of the finished call onto L: 4 values, as documented. */
static void push_results(lua_State *L, lcore *c) {
  if (c->unpack_failed) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "internal");
    lua_pushliteral(L, "no memory to make the call's arguments in the tool state");
    push_stats(L, c);
    trim_packed(c);
    return;
  }
  if (c->out_packed) {
    /* execute_with's "went well": the host's shared status table */
    if (c->pout_rc == RD_OK) {
      rd_error err;
      lua_pushboolean(L, 1);
      lua_rawgeti(L, LUA_REGISTRYINDEX, c->okref);
      if (rd__xunpack(L, c->pout.data, 1, 0, &err) != RD_OK) {
        lua_pop(L, 2);
        push_copy_failure(L, RD_ENOMEM, &err);
      }
    } else {
      push_copy_failure(L, c->pout_rc, &c->pout_err);
    }
    push_stats(L, c);
    trim_packed(c);
    return;
  }
  lua_State *T = rd__lstate_L(c->s);
  size_t cap = rd__lstate_set_max_memory(c->s, 0);
  if (c->fast && c->breach == RD_BREACH_NONE && c->status == 0 &&
      lua_type(T, -2) == LUA_TBOOLEAN && lua_toboolean(T, -2)) {
    /* execute_with's "went well": the host's shared status table */
    lua_pushboolean(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->okref);
    rd_error err;
    rd_xcopy_opts oo = {0, c->max_output, 0};
    int rc = rd__xcopy(T, -1, L, &oo, NULL, &err);
    if (rc != RD_OK) {
      lua_pop(L, 2);
      push_copy_failure(L, rc, &err);
    }
    push_stats(L, c);
    lua_settop(T, 0);
    rd__lstate_set_max_memory(c->s, cap);
    return;
  }
  if (c->breach != RD_BREACH_NONE) {
    const char *msg = rd__lstate_breach_message(c->s);
    lua_pushboolean(L, 0);
    lua_pushstring(L, rd__breach_kind(c->breach));
    if (msg) lua_pushstring(L, msg);
    else if (c->status != 0) push_error_text(L, T);
    else lua_pushstring(L, rd__breach_kind(c->breach));
  } else if (c->status != 0) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "error");
    push_error_text(L, T);
  } else {
    rd_error err;
    int base = lua_gettop(L);
    lua_pushboolean(L, 1);
    int rc = rd__xcopy(T, -2, L, NULL, NULL, &err);
    if (rc == RD_OK) {
      rd_xcopy_opts oo = {0, c->max_output, 0};
      rc = rd__xcopy(T, -1, L, &oo, NULL, &err);
    }
    if (rc != RD_OK) {
      lua_settop(L, base);
      push_copy_failure(L, rc, &err);
    }
  }
  push_stats(L, c);
  lua_settop(T, 0);
  rd__lstate_set_max_memory(c->s, cap);
}

static int l_call(lua_State *L) {
  lcore *c = check_open(L, 1);
  const char *fname = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  limits lim;
  read_limits(L, 4, &lim);
  if (c->running) return luaL_error(L, "tool state is busy");
  prepare(L, c, fname, 3, &lim);
  c->fast = 0;
  c->packed = 0;
  c->nargs = 1;
  c->running = 1;
  /* No reading of the thread's CPU clock (a system call, microseconds on
   * a VM) on the way in: the budget's first check reads it (lstate.h). */
  run(c, -1);
  c->running = 0;
  push_results(L, c);
  return 4;
}

/* The loop no longer awaits this call's answer (it came, or was given up:
 * us < 0). */
static void answered(lcore *c, double us) {
  if (!c->awaited) return;
  c->awaited = 0;
  rd__loop_answered(c->loop, us);
}

static void after_run(lcore *c) {
  c->running = 0;
  /* The call's own time, up to its end on the thread: not when the loop
   * noticed, or a loop that did not spin would learn that answers are
   * slow and go on not spinning. */
  answered(c, (double)(c->finished_ns - c->started_ns) / 1e3);
  uv_timer_stop(&c->timer);
  drain(c);
  if (c->abandoned || c->ud_gone) {
    /* Nobody waits for this result any more. */
    c->closing = 0;
    c->ud_gone = 1;
    core_close(c);
    return;
  }
  lua_State *H = c->loop->cbL;
  complete_caller(H, c, c->status == 0 && c->breach == RD_BREACH_NONE);
  int ref = c->cbref;
  c->cbref = LUA_NOREF;
  lua_rawgeti(H, LUA_REGISTRYINDEX, ref);
  luaL_unref(H, LUA_REGISTRYINDEX, ref);
  push_results(H, c);
  rd__loop_pcall(c->loop, 4);
}

static void on_overdue(uv_timer_t *t) {
  lcore *c = t->data;
  if (!c->running || c->abandoned) return;
  /* The hook did not get the code to stop: it is in a blocking C call.
   * Answer now; free the state when the thread comes back. */
  c->abandoned = 1;
  answered(c, -1);
  pthread_mutex_lock(&q_lock);
  int running = GIVEN_RUNNING;
  if (__atomic_compare_exchange_n(&c->given_up, &running, GIVEN_UP, 0,
                                  __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    q_given_up++; /* the thread has not finished: it is stuck */
  pthread_mutex_unlock(&q_lock);
  rd__lstate_request_stop(c->s, RD_BREACH_TIMEOUT);
  /* Busy in C (a pattern match) or blocked (a sleeping C call)? The
   * thread's CPU clock tells: past the CPU budget it is cpu_limit. */
  double used = -1;
  clockid_t cid;
  struct timespec ts;
  if (pthread_getcpuclockid(c->thread, &cid) == 0 && clock_gettime(cid, &ts) == 0)
    used = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6 - rd__lstate_cpu_start(c->s);
  int cpu = c->cpu_ms > 0 && used >= c->cpu_ms;
  lua_State *H = c->loop->cbL;
  int ref = c->cbref;
  c->cbref = LUA_NOREF;
  lua_rawgeti(H, LUA_REGISTRYINDEX, ref);
  luaL_unref(H, LUA_REGISTRYINDEX, ref);
  lua_pushboolean(H, 0);
  if (cpu) {
    lua_pushliteral(H, "cpu_limit");
    lua_pushliteral(H, "CPU budget spent in C code the instruction hook cannot "
                       "see (a pattern match); the call's state was discarded");
  } else {
    lua_pushliteral(H, "timeout");
    lua_pushliteral(H, "deadline passed and the tool did not stop (blocked "
                       "outside Lua); its state was discarded");
  }
  lua_createtable(H, 0, 1);
  if (used >= 0) {
    lua_pushnumber(H, used);
    lua_setfield(H, -2, "cpu_ms");
  }
  rd__loop_pcall(c->loop, 4);
}

/* Hand the prepared call to a call thread; fn (at fnidx) gets its
 * results. Returns what start/execute return. */
static int launch(lua_State *L, lcore *c, const limits *lim, int fnidx);

static int l_start(lua_State *L) {
  lcore *c = check_open(L, 1);
  const char *fname = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  limits lim;
  read_limits(L, 4, &lim);
  rd__lua_checkcallable(L, 5);
  if (c->running) return luaL_error(L, "tool state is busy");
  prepare(L, c, fname, 3, &lim);
  c->fast = 0;
  c->packed = 0;
  c->nargs = 1;
  return launch(L, c, &lim, 5);
}

/* Is the value at idx of L the one L's registry holds at ref? */
static int host_is(lua_State *L, int idx, int ref) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  int same = lua_rawequal(L, idx, -1);
  lua_pop(L, 1);
  return same;
}

/* st:execute(params, caller, id, attempt, deadline, cpu_ms, timeout_ms,
 *            max_output, fn)
 * The pipeline's call: the bootstrap's execute_with(params, caller, id,
 * attempt, deadline) builds ctx in the tool state, on the call thread.
 * The caller table is copied only when it is not the host table the state
 * already has a copy of (the bootstrap keeps that copy where tool code
 * cannot reach it and gives each call a fresh copy of it): then nil goes
 * in its place. The host table is held by reference, so "the same table"
 * means the same object, never a new one at a recycled address; the
 * engine never changes a normalized caller. fn gets what start's fn gets,
 * except that a call that went well gives the host one shared table
 * { status = "ok" } (read only). */
static int l_execute(lua_State *L) {
  lcore *c = check_open(L, 1);
  luaL_checkany(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TSTRING);
  double attempt = luaL_checknumber(L, 5), deadline = luaL_checknumber(L, 6);
  limits lim;
  lim.cpu_ms = luaL_optnumber(L, 7, 0);
  lim.timeout_ms = luaL_optnumber(L, 8, 0);
  lim.max_output = (size_t)luaL_optnumber(L, 9, 0);
  lim.grace_ms = DEFAULT_GRACE_MS;
  rd__lua_checkcallable(L, 10);
  if (c->running) return luaL_error(L, "tool state is busy");
  if (c->execref == LUA_REFNIL || c->execref == LUA_NOREF)
    return luaL_error(L, "tool state has no function 'execute_with'");
  if (c->okref == LUA_NOREF) {
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "ok");
    lua_setfield(L, -2, "status");
    c->okref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rd_error err;
  const char *what = "params";
  int same = c->caller_href != LUA_NOREF && host_is(L, 3, c->caller_href);
  c->packed = same;
  if (same) {
    /* the fast way: packed here, made in the state by run() */
    c->pin.len = 0;
    int rc = rd__xpack(L, 2, &c->pin, NULL, NULL, &err);
    if (rc == RD_OK) {
      what = "id";
      rc = rd__xpack(L, 4, &c->pin, NULL, NULL, &err);
    }
    if (rc != RD_OK) return luaL_error(L, "%s: %s", what, err.message);
    c->attempt = attempt;
    c->deadline = deadline;
    arm(c, &lim);
    c->fast = 1;
    c->nargs = 6;
    return launch(L, c, &lim, 10);
  }
  lua_State *T = rd__lstate_L(c->s);
  size_t cap = rd__lstate_set_max_memory(c->s, 0);
  lua_settop(T, 0);
  lua_rawgeti(T, LUA_REGISTRYINDEX, c->execref);
  /* (the state's collector is stopped: see run) */
  /* no kept copy: only the markers put back, as before every call */
  rd_xcopy_memo reset = { NULL, NULL, LUA_NOREF, 0, 1 };
  int rc = rd__xcopy_memo(L, 2, T, NULL, &reset, NULL, &err);
  if (rc == RD_OK) {
    what = "caller";
    rc = rd__xcopy(L, 3, T, NULL, NULL, &err);
    /* and packed, for the fast calls once the state keeps it */
    c->caller_pk.len = 0;
    if (rc == RD_OK) rc = rd__xpack(L, 3, &c->caller_pk, NULL, NULL, &err);
  }
  if (rc == RD_OK) {
    what = "id";
    rc = rd__xcopy(L, 4, T, NULL, NULL, &err);
  }
  if (rc == RD_OK) {
    lua_pushnumber(T, attempt);
    lua_pushnumber(T, deadline);
  }
  if (copied(c, cap, rc) != RD_OK) return luaL_error(L, "%s: %s", what, err.message);
  /* The state's kept copy is this caller's only once the call has run
   * (complete_caller): until then no caller is known to it. */
  luaL_unref(L, LUA_REGISTRYINDEX, c->caller_href);
  c->caller_href = LUA_NOREF;
  lua_pushvalue(L, 3);
  c->caller_pending = luaL_ref(L, LUA_REGISTRYINDEX);
  arm(c, &lim);
  c->fast = 1;
  c->nargs = 5;
  return launch(L, c, &lim, 10);
}

static int launch(lua_State *L, lcore *c, const limits *lim, int fnidx) {
  lua_pushvalue(L, fnidx);
  c->cbref = luaL_ref(L, LUA_REGISTRYINDEX);
  int rc = submit(c);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, c->cbref);
    c->cbref = LUA_NOREF;
    lua_settop(rd__lstate_L(c->s), 0);
    complete_caller(L, c, 0);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start a call thread: %s", strerror(rc));
    return 2;
  }
  c->running = 1;
  c->awaited = 1;
  c->started_ns = rd__mono_ns();
  rd__loop_expect(c->loop);
  /* The loop's clock is cached: the host may not have run the loop for a
   * while (a synchronous caller), so refresh it or the timer fires early. */
  uv_update_time(&c->loop->uv);
  if (lim->timeout_ms > 0)
    uv_timer_start(&c->timer, on_overdue,
                   (uint64_t)(lim->timeout_ms + lim->grace_ms), 0);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_stop(lua_State *L) {
  lcore *c = check_open(L, 1);
  static const char *const whys[] = {"timeout", "cancel", NULL};
  int i = luaL_checkoption(L, 2, "cancel", whys);
  if (c->running) rd__lstate_request_stop(c->s, i == 0 ? RD_BREACH_TIMEOUT : RD_BREACH_CANCEL);
  lua_pushboolean(L, c->running);
  return 1;
}

static int l_on_notify(lua_State *L) {
  lcore *c = check_open(L, 1);
  lua_State *H = c->loop->cbL;
  if (c->notifyref != LUA_NOREF) luaL_unref(H, LUA_REGISTRYINDEX, c->notifyref);
  if (c->notifyarg != LUA_NOREF) luaL_unref(H, LUA_REGISTRYINDEX, c->notifyarg);
  c->notifyref = c->notifyarg = LUA_NOREF;
  if (!lua_isnoneornil(L, 2)) {
    rd__lua_checkcallable(L, 2);
    lua_pushvalue(L, 2);
    c->notifyref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (!lua_isnoneornil(L, 3)) {
      lua_pushvalue(L, 3);
      c->notifyarg = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  return 0;
}

static int l_set_max_memory(lua_State *L) {
  lcore *c = check_open(L, 1);
  rd__lstate_set_max_memory(c->s, (size_t)luaL_checknumber(L, 2));
  return 0;
}

static int l_heap(lua_State *L) {
  lcore *c = check_open(L, 1);
  lua_pushnumber(L, (double)rd__lstate_heap(c->s));
  return 1;
}

static int l_busy(lua_State *L) {
  lcore *c = check_open(L, 1);
  lua_pushboolean(L, c->running);
  return 1;
}

static int l_usable(lua_State *L) {
  lud *u = luaL_checkudata(L, 1, LSTATE_MT);
  lua_pushboolean(L, u->c && !u->c->abandoned && !u->c->closing);
  return 1;
}

static int l_close(lua_State *L) {
  lud *u = luaL_checkudata(L, 1, LSTATE_MT);
  lcore *c = u->c;
  if (!c) return 0;
  u->c = NULL;
  c->ud = NULL;
  if (c->closing) return 0;
  if (c->running) {
    rd__lstate_request_stop(c->s, RD_BREACH_CANCEL);
    c->ud_gone = 1;
    luaL_unref(L, LUA_REGISTRYINDEX, c->notifyref);
    luaL_unref(L, LUA_REGISTRYINDEX, c->notifyarg);
    c->notifyref = c->notifyarg = LUA_NOREF;
    return 0; /* after_run frees it */
  }
  c->ud_gone = 1;
  core_close(c);
  return 0;
}

int rd__luaopen_lstate(lua_State *L) {
  static const luaL_Reg m[] = {
    {"call", l_call}, {"start", l_start}, {"stop", l_stop},
    {"on_notify", l_on_notify}, {"execute", l_execute}, {"set_max_memory", l_set_max_memory},
    {"heap", l_heap}, {"busy", l_busy}, {"usable", l_usable},
    {"close", l_close}, {"__gc", l_close}, {NULL, NULL},
  };
  return rd__lua_class(L, LSTATE_MT, m, l_new);
}
