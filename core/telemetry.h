/*
 * telemetry.h — the event bus every layer emits into (see rubberduck.h for
 * rd_event). Subscribers are matched by name prefix ("" matches all,
 * "execution." matches "execution.start"). Emission is synchronous, on the
 * calling thread (the loop thread in the engine). Subscribing or
 * unsubscribing from inside a callback is allowed. A new subscriber receives
 * events from the next one on; a removed subscriber receives nothing more,
 * not even the rest of the event being delivered (its `ud` may be freed as
 * soon as rd__telemetry_unsubscribe returns).
 */
#ifndef RD_TELEMETRY_H
#define RD_TELEMETRY_H

#include "rd.h"

typedef struct rd_telemetry rd_telemetry;

/* A new, empty bus; owned by the caller, rd__telemetry_free() it. */
int rd__telemetry_new(rd_telemetry **out, rd_error *err);
void rd__telemetry_free(rd_telemetry *t);

/* Add a subscriber; the prefix is copied. *id (may be NULL) gets an id > 0.
 * Errors: RD_ENOMEM. */
int rd__telemetry_subscribe(rd_telemetry *t, const char *prefix, rd_event_cb cb,
                            void *ud, int *id, rd_error *err);
/* Remove subscriber `id` (unknown ids are ignored). Returns its `ud` (so
 * the caller can release it) or NULL. */
void *rd__telemetry_unsubscribe(rd_telemetry *t, int id);

/* Deliver `ev` to every matching subscriber; ev->time 0 is set to now.
 * Returns how many subscribers received it. */
int rd__telemetry_emit(rd_telemetry *t, rd_event *ev);

/* Number of events emitted since the bus was made. */
uint64_t rd__telemetry_count(const rd_telemetry *t);

/* 1 if an event named `name` would reach at least one live subscriber, else
 * 0. Lets a publisher skip building an event nobody listens to (the
 * pipeline emits several per execution). Borrows name; no errors. */
int rd__telemetry_wants(const rd_telemetry *t, const char *name);

/* Lua binding (l_telemetry.c): core.telemetry.new() -> bus, with
 * bus:emit(name, measurements, metadata), bus:subscribe(prefix, fn) -> id,
 * bus:unsubscribe(id), bus:count(), bus:pointer() (light userdata of the
 * rd_telemetry, for C subscribers), bus:close(). */

#endif
