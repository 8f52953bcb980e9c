// spec/bench/validator/bench_ajv.js — the ajv 8 side of the validator
// benchmark, the mirror of bench.lua (same arguments, same output, same
// environment variables). Run through ./run, which puts ajv and ajv-formats
// on NODE_PATH and starts node with --expose-gc.
//
//   node --expose-gc bench_ajv.js DIR check|bench|serve NAME.LABEL...
//
// serve: one measurement round per command read from stdin (see bench.lua).
//
// ajv: Ajv2020 (draft 2020-12, like the schemas' $schema), ajv-formats in
// "full" mode, allErrors as RD_BENCH_ALL_ERRORS (default 1, the Lua
// validator's default), allowUnionTypes (the schemas use type arrays).
"use strict";

const fs = require("fs");
const path = require("path");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

const [dir, cmd, ...ids] = process.argv.slice(2);
if (!dir || (cmd !== "check" && cmd !== "bench" && cmd !== "serve") || ids.length === 0) {
  process.stderr.write("usage: bench_ajv.js DIR check|bench|serve NAME.LABEL...\n");
  process.exit(2);
}

const num = (v, d) => (v === undefined || v === "" || isNaN(Number(v)) ? d : Number(v));
const TIME = num(process.env.RD_BENCH_TIME, 0.5);
const WARMUP = num(process.env.RD_BENCH_WARMUP, 0.2);
const REPS = num(process.env.RD_BENCH_REPS, 3);
const ALL_ERRORS = (process.env.RD_BENCH_ALL_ERRORS || "1") !== "0";

const gc = typeof global.gc === "function" ? global.gc : () => {};
// RD_BENCH_CLOCK=wall (default): process.hrtime; cpu: the process's CPU time
// (user + system, every thread of node: its GC and compiler threads too);
// thread: the main thread's CPU time (its run time in
// /proc/thread-self/schedstat, in ns): what the main thread would take on an
// idle machine, where node's helper threads run on another core for free
function threadSeconds() {
  const t = fs.readFileSync("/proc/thread-self/schedstat", "latin1");
  return Number(t.slice(0, t.indexOf(" "))) / 1e9;
}
const now = process.env.RD_BENCH_CLOCK === "cpu"
  ? () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; }
  : process.env.RD_BENCH_CLOCK === "thread"
  ? threadSeconds
  : () => Number(process.hrtime.bigint()) / 1e9;

const ajv = new Ajv2020({ allErrors: ALL_ERRORS, allowUnionTypes: true });
addFormats(ajv, { mode: "full" });

const validators = new Map();
const cases = [];
for (const id of ids) {
  const name = id.split(".")[0];
  let v = validators.get(name);
  if (!v) {
    const schema = JSON.parse(fs.readFileSync(path.join(dir, "schemas", name + ".json"), "utf8"));
    v = ajv.compile(schema);
    validators.set(name, v);
  }
  const text = fs.readFileSync(path.join(dir, "instances", id + ".json"), "utf8");
  cases.push({ id, v, text, value: JSON.parse(text) });
}

if (cmd === "check") {
  for (const c of cases) {
    const ok = c.v(c.value);
    const n = ok ? 0 : c.v.errors.length;
    process.stdout.write(`${c.id}\t${ok ? "valid" : "invalid"}\t${n}\n`);
    if (process.env.RD_BENCH_VERBOSE && !ok) {
      for (const e of c.v.errors) {
        process.stderr.write(`  ajv ${c.id} ${e.instancePath} ${e.keyword}: ${e.message}\n`);
      }
    }
  }
  process.exit(0);
}

// Each loop is built with new Function for every case, so every case gets
// fresh code and its own type feedback (as bench.lua loads fresh bytecode).
const LOOPS = {
  single_decoded: `return function(n) { let bad = 0; for (let i = 0; i < n; i++) { if (!v(x)) bad++; } return bad; }`,
  single_json: `return function(n) { let bad = 0; for (let i = 0; i < n; i++) { if (!v(JSON.parse(x))) bad++; } return bad; }`,
  mixed_decoded: `return function(n) { let bad = 0; for (let i = 0; i < n; i++) { for (let k = 0; k < P; k++) { if (!vs[k](xs[k])) bad++; } } return bad; }`,
  mixed_json: `return function(n) { let bad = 0; for (let i = 0; i < n; i++) { for (let k = 0; k < P; k++) { if (!vs[k](JSON.parse(xs[k]))) bad++; } } return bad; }`,
};
const single = (kind, v, x) => new Function("v", "x", LOOPS[kind])(v, x);
const mixed = (kind, vs, xs) => new Function("vs", "xs", "P", LOOPS[kind])(vs, xs, vs.length);

let sink = 0;

// Warm-up: run for WARMUP seconds, and find a batch size of about 2 ms.
function warm(run) {
  let n = 1;
  const t0 = now();
  for (;;) {
    const b0 = now();
    sink += run(n);
    const dt = now() - b0;
    if (dt < 0.002) n *= 2;
    else if (now() - t0 >= WARMUP) break;
  }
  return n;
}

// One round: whole batches of n runs for at least `time` seconds, after a
// full GC; returns ops/s.
function round(run, n, per, time) {
  gc();
  let ops = 0, t = 0;
  const start = now();
  do {
    sink += run(n);
    ops += n * per;
    t = now();
  } while (t - start < time);
  return ops / (t - start);
}

function measure(run, per) {
  const n = warm(run);
  const results = [];
  for (let r = 0; r < REPS; r++) results.push(round(run, n, per, TIME));
  results.sort((a, b) => a - b);
  return results[Math.floor((REPS - 1) / 2)];
}

const emit = (id, mode, ops) => process.stdout.write(`${id}\t${mode}\t${ops.toFixed(0)}\n`);

// The rows, in the order both sides list them: per mode, every case, then
// the mixed row.
function makeRow(mode, idx) {
  if (idx < cases.length) {
    const c = cases[idx];
    const run = single(mode === "decoded" ? "single_decoded" : "single_json", c.v, mode === "decoded" ? c.value : c.text);
    return { run, per: 1 };
  }
  const vs = cases.map((c) => c.v);
  const xs = cases.map((c) => (mode === "decoded" ? c.value : c.text));
  return { run: mixed(mode === "decoded" ? "mixed_decoded" : "mixed_json", vs, xs), per: cases.length };
}
const rowId = (idx) => (idx < cases.length ? cases[idx].id : "mixed");

if (cmd === "serve") {
  const rows = new Map();
  let buf = "";
  const handle = (line) => {
    if (line === "quit") process.exit(0);
    if (line === "rows") {
      for (const m of ["decoded", "json"]) for (let i = 0; i <= cases.length; i++) process.stdout.write(`${m}\t${rowId(i)}\n`);
      process.stdout.write("end\n");
      return;
    }
    const [mode, id, secs] = line.split(/\s+/);
    let idx = -1;
    for (let i = 0; i <= cases.length; i++) if (rowId(i) === id) idx = i;
    if ((mode !== "decoded" && mode !== "json") || idx < 0 || !(Number(secs) > 0)) throw new Error("serve: bad command " + line);
    const key = mode + "\t" + id;
    let r = rows.get(key);
    if (!r) {
      r = makeRow(mode, idx);
      r.n = warm(r.run);
      rows.set(key, r);
    }
    process.stdout.write(`${round(r.run, r.n, r.per, Number(secs)).toFixed(0)}\n`);
  };
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line !== "") handle(line);
    }
  });
  process.stdin.on("end", () => process.exit(0));
} else {
  for (const mode of ["decoded", "json"]) {
    for (let i = 0; i <= cases.length; i++) {
      const { run, per } = makeRow(mode, i);
      emit(rowId(i), mode, measure(run, per));
    }
  }
  if (sink === -1) process.stderr.write("");
}
