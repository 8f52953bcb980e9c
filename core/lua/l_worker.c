/*
 * l_worker.c — core.zygote and core.worker: the engine's side of the
 * sandboxed worker processes (core/sandbox/worker.h, proto.h).
 *
 *   local z = core.zygote.new(loop, { path = P, lua_dir = D }, on_event)
 *       on_event("worker", w)            a ready worker (core.worker)
 *       on_event("exit", pid, code, sig) a worker process ended
 *       on_event("warning", text)        a kernel feature is missing
 *       on_event("zygote_exit", code, sig)
 *   local t = core.zygote.adopt(loop, w, on_event)
 *       the worker w (a strict tool's template, after its "ready") becomes
 *       a zygote: same events and methods; w is closed (its socket now
 *       carries control records); "zygote_exit" comes without arguments
 *       when its socket ends (its exit status comes from the zygote that
 *       forked it, as an "exit" event there)
 *   z:spawn(n)        ask for n more ready workers
 *   z:close()         the zygote kills its workers and exits
 *   w:eof() -> true once the worker's socket has ended (also while no
 *       on_frame function was set: ask before using an idle worker)
 *   w:pid(); w:send(json_text); w:on_frame(fn)   fn(text) per frame,
 *       fn(nil, "eof") when the worker's socket closes
 *   w:kill(signal_number); w:close()
 * Every callback runs on the loop (rd__loop_pcall).
 */
#include "rd.h"
#include "lua/bind.h"
#include "lua/loop.h"
#include "sandbox/proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define ZYGOTE_MT "rubberduck.zygote"
#define WORKER_MT "rubberduck.worker"

/* ---- workers ------------------------------------------------------------------------ */

typedef struct wk wk;
typedef struct wud { wk *w; } wud;

struct wk {
  rd_uvowner owner;      /* first: see loop.h */
  uv_pipe_t pipe;
  rd_loop *loop;
  wud *ud;
  int pid;
  int frameref;
  int closing, eof;
  rd_buf in;
  size_t in_used;        /* bytes of `in` delivered (during a delivery) */
};

static void wk_closed(uv_handle_t *h) {
  wk *w = h->data;
  if (w->ud) w->ud->w = NULL;
  luaL_unref(w->loop->cbL, LUA_REGISTRYINDEX, w->frameref);
  rd__buf_free(&w->in);
  rd__freemem(w);
}

static void wk_close(wk *w) {
  if (w->closing) return;
  w->closing = 1;
  uv_close((uv_handle_t *)&w->pipe, wk_closed);
}

static void wk_close_all(rd_uvowner *o) { wk_close((wk *)o); }

static void deliver(wk *w, const char *p, size_t n, const char *why) {
  if (w->frameref == LUA_NOREF || w->closing) return;
  lua_State *H = w->loop->cbL;
  lua_rawgeti(H, LUA_REGISTRYINDEX, w->frameref);
  if (p) {
    lua_pushlstring(H, p, n);
    rd__loop_pcall(w->loop, 1);
  } else {
    lua_pushnil(H);
    lua_pushstring(H, why);
    rd__loop_pcall(w->loop, 2);
  }
}

static void wk_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  wk *w = h->data;
  if (suggested < 65536) suggested = 65536;
  if (rd__buf_reserve(&w->in, suggested) != RD_OK) {
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  buf->base = w->in.data + w->in.len;
  buf->len = suggested;
}

static void wk_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  RD_UNUSED(buf);
  wk *w = s->data;
  if (n < 0) {
    uv_read_stop(s);
    w->eof = 1;
    deliver(w, NULL, 0, n == UV_EOF ? "eof" : uv_strerror((int)n));
    return;
  }
  w->in.len += (size_t)n;
  size_t off = 0;
  while (w->in.len - off >= 4 && !w->closing) {
    const unsigned char *h = (const unsigned char *)w->in.data + off;
    uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                   (uint32_t)h[3] << 24;
    if (len > RD_FRAME_MAX) {
      uv_read_stop(s);
      w->eof = 1;
      deliver(w, NULL, 0, "protocol error: frame too large");
      return;
    }
    if (w->in.len - off - 4 < len) break;
    w->in_used = off + 4 + len;
    deliver(w, w->in.data + off + 4, len, NULL);
    off += 4 + len;
  }
  if (off && !w->closing) {
    memmove(w->in.data, w->in.data + off, w->in.len - off);
    w->in.len -= off;
  }
  if (!w->closing) w->in_used = 0;
}

static wk *check_wk(lua_State *L, int idx) {
  wud *u = luaL_checkudata(L, idx, WORKER_MT);
  if (!u->w || u->w->closing) luaL_argerror(L, idx, "worker is closed");
  return u->w;
}

typedef struct wreq {
  uv_write_t req;
  size_t len;
  char data[];
} wreq;

static void wk_written(uv_write_t *r, int status) {
  RD_UNUSED(status); /* a dead worker shows as EOF on the read side */
  rd__freemem(r);
}

static int l_wk_send(lua_State *L) {
  wk *w = check_wk(L, 1);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  if (n > RD_FRAME_MAX) return luaL_argerror(L, 2, "message too large");
  unsigned char hd[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                         (unsigned char)(n >> 24)};
  /* Written at once when nothing is queued (the usual case: one system
   * call, no request, and no write callback, whose drain would re-arm the
   * socket in epoll: one more system call per frame); what the socket does
   * not take now is queued, in order, behind it. */
  size_t done = 0;
  if (uv_stream_get_write_queue_size((uv_stream_t *)&w->pipe) == 0) {
    uv_buf_t tb[2] = {uv_buf_init((char *)hd, 4), uv_buf_init((char *)p, (unsigned)n)};
    int k = uv_try_write((uv_stream_t *)&w->pipe, tb, 2);
    /* A failure (EPIPE: the worker died) is left to the queued write below,
     * as before: its end shows on the read side, after this call returns
     * (a caller is never answered from inside its own send). */
    if (k > 0) done = (size_t)k;
  }
  if (done == 4 + n) {
    lua_pushboolean(L, 1);
    return 1;
  }
  wreq *r = rd__malloc(sizeof *r + 4 + n - done);
  if (!r) return luaL_error(L, "out of memory");
  size_t hk = done < 4 ? 4 - done : 0; /* header bytes still to go */
  memcpy(r->data, hd + (4 - hk), hk);
  memcpy(r->data + hk, p + (done > 4 ? done - 4 : 0), n - (done > 4 ? done - 4 : 0));
  uv_buf_t b = uv_buf_init(r->data, (unsigned)(4 + n - done));
  int rc = uv_write(&r->req, (uv_stream_t *)&w->pipe, &b, 1, wk_written);
  if (rc != 0) {
    rd__freemem(r);
    lua_pushnil(L);
    lua_pushstring(L, uv_strerror(rc));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Has the worker's socket reached its end (the process is gone or going)?
 * An idle worker's end is not delivered to anyone: ask before using it. */
static int l_wk_eof(lua_State *L) {
  wk *w = check_wk(L, 1);
  lua_pushboolean(L, w->eof);
  return 1;
}

static int l_wk_on_frame(lua_State *L) {
  wk *w = check_wk(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_unref(L, LUA_REGISTRYINDEX, w->frameref);
  lua_pushvalue(L, 2);
  w->frameref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int l_wk_pid(lua_State *L) {
  wud *u = luaL_checkudata(L, 1, WORKER_MT);
  lua_pushinteger(L, u->w ? u->w->pid : 0);
  return 1;
}

/* CPU time (user + system, ms) the worker process has used, from
 * /proc/<pid>/stat; nil if it cannot be read. */
static int l_wk_cpu_ms(lua_State *L) {
  wud *u = luaL_checkudata(L, 1, WORKER_MT);
  if (!u->w || u->w->pid <= 0) return 0;
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", u->w->pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the command may hold spaces */
  if (!p) return 0;
  unsigned long long ut = 0, st = 0;
  /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
   * majflt cmajflt utime stime */
  if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return 0;
  long hz = sysconf(_SC_CLK_TCK);
  lua_pushnumber(L, (double)(ut + st) * 1000.0 / (double)(hz > 0 ? hz : 100));
  return 1;
}

static int l_wk_kill(lua_State *L) {
  wud *u = luaL_checkudata(L, 1, WORKER_MT);
  int sig = (int)luaL_optinteger(L, 2, SIGKILL);
  if (u->w && u->w->pid > 0) kill(u->w->pid, sig);
  return 0;
}

static int l_wk_close(lua_State *L) {
  wud *u = luaL_checkudata(L, 1, WORKER_MT);
  if (u->w) {
    wk *w = u->w;
    u->w = NULL;
    w->ud = NULL;
    wk_close(w);
  }
  return 0;
}

/* Push a worker userdata for socket `fd`. */
static void push_worker(lua_State *L, rd_loop *loop, int fd, int pid) {
  wud *u = lua_newuserdata(L, sizeof *u);
  u->w = NULL;
  luaL_getmetatable(L, WORKER_MT);
  lua_setmetatable(L, -2);
  wk *w = rd__calloc(1, sizeof *w);
  if (!w) {
    close(fd);
    return;
  }
  w->owner.close_all = wk_close_all;
  w->loop = loop;
  w->pid = pid;
  w->frameref = LUA_NOREF;
  uv_pipe_init(&loop->uv, &w->pipe, 0);
  w->pipe.data = w;
  if (uv_pipe_open(&w->pipe, fd) != 0) {
    close(fd);
    w->closing = 1;
    uv_close((uv_handle_t *)&w->pipe, wk_closed);
    return;
  }
  w->ud = u;
  u->w = w;
  uv_read_start((uv_stream_t *)&w->pipe, wk_alloc, wk_read);
}

/* ---- the zygote ------------------------------------------------------------------- */

typedef struct zg zg;
typedef struct zud { zg *z; } zud;

struct zg {
  rd_uvowner owner;      /* first: see loop.h */
  uv_process_t proc;
  uv_poll_t poll;
  rd_loop *loop;
  zud *ud;
  int fd;
  int evref;
  int open_handles, closing, exited;
  int adopted;           /* a template: no process handle of ours */
  int pid;
};

static void zg_handle_closed(uv_handle_t *h) {
  zg *z = h->data;
  if (--z->open_handles > 0) return;
  if (z->ud) z->ud->z = NULL;
  luaL_unref(z->loop->cbL, LUA_REGISTRYINDEX, z->evref);
  if (z->fd >= 0) close(z->fd);
  rd__freemem(z);
}

/* Closing the control socket tells the zygote to kill its workers and
 * exit; we wait for it here (it takes a moment), so no process outlives
 * the engine and none is left a zombie. */
static void zg_close(zg *z) {
  if (z->closing) return;
  z->closing = 1;
  uv_poll_stop(&z->poll);
  uv_close((uv_handle_t *)&z->poll, zg_handle_closed);
  shutdown(z->fd, SHUT_RDWR);
  if (z->adopted) return; /* not our child: its zygote reaps it */
  if (!z->exited) {
    int st;
    pid_t pid = z->proc.pid;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    z->exited = 1;
  }
  uv_close((uv_handle_t *)&z->proc, zg_handle_closed);
}

static void zg_close_all(rd_uvowner *o) { zg_close((zg *)o); }

static void zg_event_begin(zg *z, const char *name) {
  lua_State *H = z->loop->cbL;
  lua_rawgeti(H, LUA_REGISTRYINDEX, z->evref);
  lua_pushstring(H, name);
}

static void zg_exit(uv_process_t *p, int64_t status, int sig) {
  zg *z = p->data;
  if (z->closing) return; /* zg_close reaped it and closes the handle */
  z->exited = 1;
  zg_event_begin(z, "zygote_exit");
  lua_pushinteger(z->loop->cbL, (lua_Integer)status);
  lua_pushinteger(z->loop->cbL, sig);
  rd__loop_pcall(z->loop, 3);
  z->closing = 1;
  uv_poll_stop(&z->poll);
  uv_close((uv_handle_t *)&z->poll, zg_handle_closed);
  uv_close((uv_handle_t *)p, zg_handle_closed);
}

static void zg_readable(uv_poll_t *h, int status, int events) {
  RD_UNUSED(events);
  zg *z = h->data;
  if (status < 0) return;
  for (;;) {
    rd_zmsg m;
    struct iovec iov = {&m, sizeof m};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t r = recvmsg(z->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    /* a template's socket is a stream: the rest of a record cut short */
    size_t got = r > 0 ? (size_t)r : 0;
    while (r > 0 && got < sizeof m) {
      struct pollfd pf = {z->fd, POLLIN, 0};
      ssize_t k = recv(z->fd, (char *)&m + got, sizeof m - got, MSG_DONTWAIT);
      if (k > 0) got += (size_t)k;
      else if (k < 0 && (errno == EAGAIN || errno == EINTR)) (void)poll(&pf, 1, 100);
      else r = -1;
    }
    if (r <= 0) {
      /* the zygote died: zg_exit reports it. A callback above may have
       * closed z already (zg_close shuts the socket down: this EOF). */
      if (z->closing) return;
      uv_poll_stop(h);
      if (z->adopted && !z->closing) {
        zg_event_begin(z, "zygote_exit");
        rd__loop_pcall(z->loop, 1);
        zg_close(z);
      }
      return;
    }
    if (z->closing) continue;
    lua_State *H = z->loop->cbL;
    if (m.type == 'R') {
      int fd = -1;
      struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
      if (cm && cm->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(cm), sizeof fd);
      if (fd < 0) continue;
      zg_event_begin(z, "worker");
      push_worker(H, z->loop, fd, m.pid);
      rd__loop_pcall(z->loop, 2);
    } else if (m.type == 'X') {
      zg_event_begin(z, "exit");
      lua_pushinteger(H, m.pid);
      lua_pushinteger(H, WIFEXITED(m.status) ? WEXITSTATUS(m.status) : -1);
      lua_pushinteger(H, WIFSIGNALED(m.status) ? WTERMSIG(m.status) : 0);
      rd__loop_pcall(z->loop, 4);
    } else if (m.type == 'W') {
      m.text[sizeof m.text - 1] = '\0';
      zg_event_begin(z, "warning");
      lua_pushstring(H, m.text);
      rd__loop_pcall(z->loop, 2);
    }
  }
}

/* Watch the zygote's control socket on the loop (one more open handle);
 * events go to the function at stack index `ev`; z and its userdata u are
 * tied together. */
static void zg_watch(lua_State *L, zg *z, rd_loop *loop, int ev, zud *u) {
  uv_poll_init(&loop->uv, &z->poll, z->fd);
  z->poll.data = z;
  z->open_handles++;
  uv_poll_start(&z->poll, UV_READABLE, zg_readable);
  lua_pushvalue(L, ev);
  z->evref = luaL_ref(L, LUA_REGISTRYINDEX);
  z->ud = u;
  u->z = z;
}

static int l_zg_new(lua_State *L) {
  rd_loop *loop = rd__loop_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_getfield(L, 2, "path");
  const char *path = luaL_checkstring(L, -1);
  lua_getfield(L, 2, "lua_dir");
  const char *lua_dir = luaL_checkstring(L, -1);

  zud *u = lua_newuserdata(L, sizeof *u);
  u->z = NULL;
  luaL_getmetatable(L, ZYGOTE_MT);
  lua_setmetatable(L, -2);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return luaL_error(L, "socketpair: %s", strerror(errno));
  zg *z = rd__calloc(1, sizeof *z);
  if (!z) {
    close(sv[0]);
    close(sv[1]);
    return luaL_error(L, "out of memory");
  }
  z->owner.close_all = zg_close_all;
  z->loop = loop;
  z->fd = sv[0];
  char *args[] = {(char *)path, "--zygote", "--lua-dir", (char *)lua_dir, NULL};
  uv_stdio_container_t stdio[4];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_IGNORE;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = 2;
  stdio[3].flags = UV_INHERIT_FD;
  stdio[3].data.fd = sv[1];
  /* The zygote's environment: the engine's, with LD_BIND_NOW=1. Every
   * worker is a fork of it; lazily bound symbols would be resolved in each
   * one anew, each resolution writing a GOT page the fork shares (a
   * copy-on-write fault: tens of microseconds on some virtual machines). */
  extern char **environ;
  size_t ne = 0;
  while (environ[ne]) ne++;
  char **env = rd__calloc(ne + 2, sizeof *env);
  if (!env) {
    close(sv[0]);
    close(sv[1]);
    rd__freemem(z);
    return luaL_error(L, "out of memory");
  }
  size_t k = 0;
  for (size_t i = 0; i < ne; i++)
    if (strncmp(environ[i], "LD_BIND_NOW=", 12) != 0) env[k++] = environ[i];
  env[k++] = "LD_BIND_NOW=1";
  env[k] = NULL;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = path;
  o.args = args;
  o.env = env;
  o.stdio = stdio;
  o.stdio_count = 4;
  o.exit_cb = zg_exit;
  int rc = uv_spawn(&loop->uv, &z->proc, &o);
  rd__freemem(env);
  close(sv[1]);
  if (rc != 0) {
    close(sv[0]);
    rd__freemem(z);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start %s: %s", path, uv_strerror(rc));
    return 2;
  }
  z->proc.data = z;
  z->open_handles = 1;
  zg_watch(L, z, loop, 3, u);
  lua_pushvalue(L, -1);
  return 1;
}

static int l_zg_adopt(lua_State *L) {
  rd_loop *loop = rd__loop_check(L, 1);
  wud *wu = luaL_checkudata(L, 2, WORKER_MT);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  wk *w = wu->w;
  if (!w || w->closing || w->eof) return luaL_argerror(L, 2, "worker is closed");
  if (w->in.len != w->in_used) return luaL_argerror(L, 2, "worker has unread bytes");
  uv_os_fd_t ofd;
  if (uv_fileno((uv_handle_t *)&w->pipe, &ofd) != 0) return luaL_argerror(L, 2, "worker has no socket");
  zud *u = lua_newuserdata(L, sizeof *u);
  u->z = NULL;
  luaL_getmetatable(L, ZYGOTE_MT);
  lua_setmetatable(L, -2);
  zg *z = rd__calloc(1, sizeof *z);
  if (!z) return luaL_error(L, "out of memory");
  int fd = fcntl(ofd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) {
    rd__freemem(z);
    return luaL_error(L, "dup: %s", strerror(errno));
  }
  z->owner.close_all = zg_close_all;
  z->loop = loop;
  z->fd = fd;
  z->adopted = 1;
  z->exited = 1;
  z->pid = w->pid;
  /* the worker object is done with: its socket is the control socket now */
  wu->w = NULL;
  w->ud = NULL;
  wk_close(w);
  z->open_handles = 0;
  zg_watch(L, z, loop, 3, u);
  return 1;
}

static zg *check_zg(lua_State *L, int idx) {
  zud *u = luaL_checkudata(L, idx, ZYGOTE_MT);
  if (!u->z || u->z->closing) luaL_argerror(L, idx, "zygote is closed");
  return u->z;
}

static int l_zg_spawn(lua_State *L) {
  zg *z = check_zg(L, 1);
  int n = (int)luaL_optinteger(L, 2, 1);
  rd_zmsg m;
  memset(&m, 0, sizeof m);
  m.type = 'S';
  m.pid = n;
  ssize_t r = send(z->fd, &m, sizeof m, MSG_NOSIGNAL | MSG_DONTWAIT);
  lua_pushboolean(L, r == (ssize_t)sizeof m);
  return 1;
}

static int l_zg_pid(lua_State *L) {
  zg *z = check_zg(L, 1);
  lua_pushinteger(L, z->adopted ? z->pid : z->proc.pid);
  return 1;
}

static int l_zg_close(lua_State *L) {
  zud *u = luaL_checkudata(L, 1, ZYGOTE_MT);
  if (u->z) {
    zg *z = u->z;
    u->z = NULL;
    z->ud = NULL;
    zg_close(z);
  }
  return 0;
}

int rd__luaopen_worker(lua_State *L) {
  static const luaL_Reg wm[] = {
    {"send", l_wk_send}, {"on_frame", l_wk_on_frame}, {"pid", l_wk_pid}, {"eof", l_wk_eof},
    {"kill", l_wk_kill}, {"cpu_ms", l_wk_cpu_ms}, {"close", l_wk_close}, {"__gc", l_wk_close}, {NULL, NULL},
  };
  static const luaL_Reg zm[] = {
    {"spawn", l_zg_spawn}, {"pid", l_zg_pid}, {"close", l_zg_close},
    {"__gc", l_zg_close}, {NULL, NULL},
  };
  rd__lua_class(L, WORKER_MT, wm, l_zg_new);
  lua_pop(L, 1); /* workers come from the zygote */
  rd__lua_class(L, ZYGOTE_MT, zm, l_zg_new);
  lua_pushcfunction(L, l_zg_adopt);
  lua_setfield(L, -2, "adopt");
  return 1;
}
