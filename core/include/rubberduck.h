/*
 * rubberduck.h — the embedding API of RubberDuck, a Lua-scriptable tool
 * execution engine.
 *
 * Conventions (they hold for every function below unless it says otherwise):
 *  - Handles are opaque. Constructors return an int (RD_OK or an RD_E* code)
 *    and write the handle through an out parameter.
 *  - The last parameter of a function that can fail is an `rd_error *`
 *    (may be NULL). On failure it receives the code and a message; it is a
 *    fixed buffer, so filling it never allocates.
 *  - Strings passed in are borrowed for the duration of the call. Strings
 *    handed out are owned by the caller and released with rd_free().
 *  - An engine is not thread-safe: call it from one thread at a time (the
 *    thread that runs its event loop). Telemetry callbacks run on that thread.
 */
#ifndef RUBBERDUCK_H
#define RUBBERDUCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RD_VERSION_MAJOR 0
#define RD_VERSION_MINOR 1
#define RD_VERSION_PATCH 0
#define RD_VERSION_STRING "0.1.0"

/* ---- errors --------------------------------------------------------------
 * One table: code, name, message. RD_OK is 0, every error is negative. */
#define RD_ERRNO_MAP(XX)                                                     \
  XX(EINVAL,   "invalid_argument", "invalid argument")                      \
  XX(ENOMEM,   "out_of_memory",    "out of memory")                         \
  XX(EIO,      "io",               "input/output error")                    \
  XX(ENOENT,   "not_found",        "no such tool, file or key")             \
  XX(EDEFN,    "invalid_definition", "tool definition refused")             \
  XX(EJSON,    "invalid_json",     "invalid JSON")                          \
  XX(ELUA,     "lua",              "error in the engine's Lua code")        \
  XX(ECLOSED,  "closed",           "handle already closed")                 \
  XX(EBUSY,    "busy",             "resource busy")                         \
  XX(ELIMIT,   "limit",            "a limit was reached")                   \
  XX(ENOSYS,   "not_supported",    "not supported on this system")          \
  XX(EINTERNAL,"internal",         "internal error")                        \
  XX(EFULL,    "storage_full",     "storage full")                          \
  XX(ECORRUPT, "corrupt",          "stored data is corrupt")

typedef enum {
  RD_OK = 0,
#define RD__ERR_ENUM(code, name, msg) RD_##code,
  RD__ERR_FIRST = -100,
  RD_ERRNO_MAP(RD__ERR_ENUM)
#undef RD__ERR_ENUM
  RD__ERR_LAST
} rd_errno;

#define RD_ERROR_MSG_MAX 512

/* Error detail. Caller-allocated (usually on the stack); never freed. */
typedef struct rd_error {
  int code;                         /* RD_OK or an RD_E* code */
  char message[RD_ERROR_MSG_MAX];   /* NUL-terminated, "" when code == RD_OK */
} rd_error;

/* Short name of a code ("invalid_json"), or "unknown". Static storage. */
const char *rd_err_name(int code);
/* Default message of a code ("invalid JSON"), or "unknown error". Static. */
const char *rd_strerror(int code);
/* Fill `err` (may be NULL) with `code` and a printf-style message; returns
 * `code`, so `return rd_error_set(err, RD_EINVAL, "...")` reads well. */
int rd_error_set(rd_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Reset `err` (may be NULL) to RD_OK. */
void rd_error_clear(rd_error *err);

/* Release memory handed out by this API (strings from rd_engine_execute...). */
void rd_free(void *p);

/* ---- execution ids ------------------------------------------------------
 * ULIDs: 26 characters of Crockford base32, 48-bit millisecond time then 80
 * random bits; monotonic within one process (ids made in the same
 * millisecond increase). Thread-safe. */
#define RD_ULID_LEN 26
/* Write a new ULID and a NUL into out[RD_ULID_LEN + 1]. Returns RD_OK. */
int rd_ulid_new(char out[RD_ULID_LEN + 1]);
/* Milliseconds since the epoch encoded in `ulid`, or -1 if it is not 26
 * characters of Crockford base32 (upper case) or its time exceeds 48 bits. */
int64_t rd_ulid_time_ms(const char *ulid);

/* ---- telemetry ----------------------------------------------------------
 * Named events with numeric measurements and string metadata. Every layer
 * emits into the engine's bus; subscribers in C (below) and Lua
 * (engine:subscribe) receive them synchronously, on the loop thread. */
typedef struct rd_kv_num { const char *key; double value; } rd_kv_num;
typedef struct rd_kv_str { const char *key; const char *value; } rd_kv_str;

/* An event. Everything in it is borrowed for the duration of the callback. */
typedef struct rd_event {
  const char *name;                /* "execution.stop", "tool.loaded", ... */
  double time;                     /* seconds since the epoch */
  size_t n_measurements;
  const rd_kv_num *measurements;
  size_t n_metadata;
  const rd_kv_str *metadata;
} rd_event;

/* Subscriber callback. Must not close the engine. Nothing a subscriber does
 * (returning, raising in Lua) stops the event from reaching the others,
 * except unsubscribing one of them, which takes effect at once. */
typedef void (*rd_event_cb)(const rd_event *ev, void *ud);

/* Value of a measurement / metadata key of `ev`, or the default. */
double rd_event_num(const rd_event *ev, const char *key, double dflt);
const char *rd_event_str(const rd_event *ev, const char *key, const char *dflt);

/* ---- the engine ----------------------------------------------------------- */
typedef struct rd_engine rd_engine;

typedef struct rd_engine_config {
  const char *data_dir;   /* NULL: "./.rduck" */
  const char *tools_dir;  /* NULL: no tools loaded at open */
  const char *lua_dir;    /* NULL: found next to the binary / install prefix */
  const char *policy;     /* NULL: no policy file (callers hold what they state) */
  const char *audience;   /* NULL: none; else tokens for another audience are refused */
  int max_running;        /* 0: default (32) executions at once */
  int max_queue;          /* 0: default (1024) waiting executions; < 0: no queue */
} rd_engine_config;

/* Open an engine: its event loop, host Lua state, telemetry bus; loads the
 * tools of cfg->tools_dir (a tool that fails to load is reported through
 * telemetry as "tool.load_failed" and skipped). On success *out is owned by
 * the caller; release it with rd_engine_close(). Errors: RD_EINVAL (out is
 * NULL), RD_EIO (cfg->tools_dir is not a readable directory, or the policy
 * file is refused: the message names file, path and reason), RD_ELUA (the
 * engine's Lua modules failed: message has the traceback), RD_ENOMEM. */
int rd_engine_open(rd_engine **out, const rd_engine_config *cfg, rd_error *err);

/* Close the engine and free everything it owns: calls still in flight are
 * cancelled (rd_engine_drain first to let them finish) and every worker
 * process is gone when it returns. NULL is a no-op. */
void rd_engine_close(rd_engine *e);

/* Run one call through the pipeline and wait for it.
 *  name         a tool name, borrowed
 *  params_json  a JSON object (NULL or "" means {}), borrowed
 *  caller_json  a JSON object {"principal":..,"roles":[..],"capabilities":[..]}
 *               or NULL for an anonymous caller, borrowed
 *  out_envelope receives the result envelope as JSON (owned by the caller,
 *               release with rd_free()); it is set whenever RD_OK is returned,
 *               also when the call ended in an error *envelope*.
 *  status       if not NULL, receives 1 when the envelope's status is "ok",
 *               0 when it is "error".
 * Returns RD_OK when an envelope was produced; an RD_E* code only when the
 * request itself could not be formed (RD_EJSON for malformed params_json).
 */
int rd_engine_execute(rd_engine *e, const char *name, const char *params_json,
                      const char *caller_json, char **out_envelope, int *status,
                      rd_error *err);

/* ---- asynchronous calls ----------------------------------------------------
 * rd_engine_execute is rd_engine_submit plus running the loop until the
 * call is done. Submitted calls make progress only while the embedder runs
 * the engine's loop (rd_engine_run or rd_engine_drain), on the thread that
 * opened the engine; the callbacks run there, never inside rd_engine_submit.
 */

/* The call is done: `envelope_json` (borrowed: valid during the callback
 * only) is its result envelope; ok is 1 when its status is "ok". */
typedef void (*rd_done_cb)(const char *execution_id, const char *envelope_json,
                           int ok, void *ud);
/* The tool reported progress (ctx.progress(done, total, message)); message
 * is borrowed for the callback, "" when the tool gave none. */
typedef void (*rd_progress_cb)(const char *execution_id, double done,
                               double total, const char *message, void *ud);

typedef struct rd_submit_opts {
  rd_done_cb on_done;         /* may be NULL */
  rd_progress_cb on_progress; /* may be NULL */
  void *ud;                   /* passed to both callbacks */
  double deadline_ms;         /* > 0: overall deadline from now, over all attempts */
  int retries;                /* >= 0: override execution.retries; < 0: the tool's */
} rd_submit_opts;

#define RD_ID_SIZE 27 /* a ULID and its NUL */

/* Submit a call; returns at once. Arguments as for rd_engine_execute; opts
 * may be NULL. On RD_OK the execution id is written to id_out (may be NULL)
 * and on_done will be called exactly once, also when the call ends in an
 * error envelope (not_found, overloaded, cancelled, ...). Errors: RD_EINVAL,
 * RD_EJSON (malformed params_json/caller_json: no call was made, no
 * callback will come), RD_ECLOSED, RD_ELUA. */
int rd_engine_submit(rd_engine *e, const char *name, const char *params_json,
                     const char *caller_json, const rd_submit_opts *opts,
                     char id_out[RD_ID_SIZE], rd_error *err);

/* Cancel a call at whatever stage it is (queued, validating, running —
 * its worker is killed —, waiting for a retry). Its envelope says
 * "cancelled". Returns RD_OK, or RD_ENOENT when no call with that id is in
 * flight (unknown, or already done). */
int rd_engine_cancel(rd_engine *e, const char *execution_id);

/* The stage of a call in flight: "queued", "validating", "authorizing",
 * "starting", "running", "retry_wait"; NULL when no such call is in flight.
 * The string is static. */
const char *rd_engine_stage(rd_engine *e, const char *execution_id);

typedef enum { RD_RUN_DEFAULT = 0, RD_RUN_ONCE = 1, RD_RUN_NOWAIT = 2 } rd_run_mode;

/* Run the engine's loop: DEFAULT until no call is in flight (the calls
 * the callbacks submit included), ONCE waits for one event, NOWAIT polls.
 * The callbacks run each time one of its loop runs returns. Returns the
 * number of calls still in flight, or -1 on an engine error (reported on
 * stderr). */
int rd_engine_run(rd_engine *e, rd_run_mode mode);

/* Run the loop until every call in flight is done or timeout_ms passed
 * (< 0: no limit). Returns the number of calls still in flight; those are
 * cancelled by rd_engine_close. */
int rd_engine_drain(rd_engine *e, double timeout_ms);

/* The loaded tools as a JSON array of normalized definitions (the shape of
 * schemas/tool.schema.json). Owned by the caller; rd_free() it. */
int rd_engine_tools_json(rd_engine *e, char **out_json, rd_error *err);

/* Load (or reload) every tool of `dir`. Returns RD_OK when all loaded,
 * RD_EDEFN when at least one was refused (its message names the first). */
int rd_engine_load_tools(rd_engine *e, const char *dir, rd_error *err);

/* Subscribe `cb` to events whose name starts with `prefix` ("" for all).
 * Writes a subscription id to *id (may be NULL) for rd_engine_unsubscribe. */
int rd_engine_subscribe(rd_engine *e, const char *prefix, rd_event_cb cb,
                        void *ud, int *id, rd_error *err);
/* Remove a subscription; unknown ids are ignored. */
void rd_engine_unsubscribe(rd_engine *e, int id);

#ifdef __cplusplus
}
#endif
#endif /* RUBBERDUCK_H */
