/*
 * telemetry.c — the event bus. See telemetry.h.
 */
#include "telemetry.h"

#include <string.h>

typedef struct sub {
  int id;
  int dead;
  char *prefix;
  size_t plen;
  rd_event_cb cb;
  void *ud;
} sub;

struct rd_telemetry {
  sub *subs;
  size_t n, cap;
  int next_id;
  int emitting;      /* depth of nested emits: removal is deferred */
  int has_dead;
  uint64_t count;
};

int rd__telemetry_new(rd_telemetry **out, rd_error *err) {
  rd_telemetry *t = rd__calloc(1, sizeof *t);
  if (!t) return rd_error_set(err, RD_ENOMEM, "cannot allocate the telemetry bus");
  t->next_id = 1;
  *out = t;
  return RD_OK;
}

void rd__telemetry_free(rd_telemetry *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n; i++) rd__freemem(t->subs[i].prefix);
  rd__freemem(t->subs);
  rd__freemem(t);
}

int rd__telemetry_subscribe(rd_telemetry *t, const char *prefix, rd_event_cb cb,
                            void *ud, int *id, rd_error *err) {
  if (!cb) return rd_error_set(err, RD_EINVAL, "subscriber callback is NULL");
  if (!prefix) prefix = "";
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 8;
    sub *s = rd__realloc(t->subs, cap * sizeof *s);
    if (!s) return rd_error_set(err, RD_ENOMEM, "cannot add a subscriber");
    t->subs = s;
    t->cap = cap;
  }
  char *p = rd__strdup(prefix);
  if (!p) return rd_error_set(err, RD_ENOMEM, "cannot add a subscriber");
  sub *s = &t->subs[t->n++];
  s->id = t->next_id++;
  s->dead = 0;
  s->prefix = p;
  s->plen = strlen(p);
  s->cb = cb;
  s->ud = ud;
  if (id) *id = s->id;
  return RD_OK;
}

static void compact(rd_telemetry *t) {
  size_t j = 0;
  for (size_t i = 0; i < t->n; i++) {
    if (t->subs[i].dead) rd__freemem(t->subs[i].prefix);
    else t->subs[j++] = t->subs[i];
  }
  t->n = j;
  t->has_dead = 0;
}

void *rd__telemetry_unsubscribe(rd_telemetry *t, int id) {
  for (size_t i = 0; i < t->n; i++) {
    if (t->subs[i].id == id && !t->subs[i].dead) {
      void *ud = t->subs[i].ud;
      t->subs[i].dead = 1;
      t->has_dead = 1;
      if (!t->emitting) compact(t);
      return ud;
    }
  }
  return NULL;
}

int rd__telemetry_emit(rd_telemetry *t, rd_event *ev) {
  if (ev->time == 0) ev->time = rd__now();
  t->count++;
  t->emitting++;
  int delivered = 0;
  size_t n = t->n; /* subscribers added during delivery wait for the next */
  for (size_t i = 0; i < n; i++) {
    sub *s = &t->subs[i];
    if (s->dead) continue;
    if (s->plen && strncmp(ev->name, s->prefix, s->plen) != 0) continue;
    /* The array may move if a callback subscribes: copy what we call. */
    rd_event_cb cb = s->cb;
    void *ud = s->ud;
    cb(ev, ud);
    delivered++;
  }
  if (--t->emitting == 0 && t->has_dead) compact(t);
  return delivered;
}

uint64_t rd__telemetry_count(const rd_telemetry *t) { return t->count; }

int rd__telemetry_wants(const rd_telemetry *t, const char *name) {
  for (size_t i = 0; i < t->n; i++) {
    const sub *s = &t->subs[i];
    if (!s->dead && (!s->plen || strncmp(name, s->prefix, s->plen) == 0)) return 1;
  }
  return 0;
}

double rd_event_num(const rd_event *ev, const char *key, double dflt) {
  for (size_t i = 0; i < ev->n_measurements; i++)
    if (strcmp(ev->measurements[i].key, key) == 0) return ev->measurements[i].value;
  return dflt;
}

const char *rd_event_str(const rd_event *ev, const char *key, const char *dflt) {
  for (size_t i = 0; i < ev->n_metadata; i++)
    if (strcmp(ev->metadata[i].key, key) == 0) return ev->metadata[i].value;
  return dflt;
}
