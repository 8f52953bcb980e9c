// spec/bench/validator/compare.js — runs both sides of the validator
// benchmark in interleaved rounds and prints the comparison table. Started
// by ./run (which sets LUA_PATH, LUA_CPATH and NODE_PATH):
//
//   node compare.js DIR NAME.LABEL...
//
// Two long-lived processes, `luajit bench.lua DIR serve IDS...` and
// `node --expose-gc bench_ajv.js DIR serve IDS...`, each with every schema
// compiled. For each row (case x mode, and the mixed row of each mode) the
// driver asks them for rounds of RD_BENCH_TIME seconds, one side at a time,
// never both at once, in the order lua ajv | ajv lua | lua ajv | ... so that
// a round of one side always sits next to a round of the other: a burst of
// load from another process lands on both sides, or shows up as an outlier
// round that the median discards. The side not being measured is stopped
// (SIGSTOP) so that its own background threads (node's GC and compiler
// threads) do not compete with the measured side. A row's first round on
// each side starts with its warm-up (RD_BENCH_WARMUP seconds, not timed).
//
// Per row it prints the median ops/s of each side, the ratio of the medians,
// and the median, minimum and maximum of the per-round ratios (round i of
// lua against round i of ajv, run back to back).
//
// Environment: RD_BENCH_TIME seconds per round (0.2), RD_BENCH_REPS rounds
// per side for a single-case row (7), RD_BENCH_MIXED_REPS rounds per side for
// a mixed row (25), RD_BENCH_RAW file to write every round to (TSV: mode,
// row, round, lua ops/s, ajv ops/s), LUAJIT and NODE; RD_BENCH_WARMUP,
// RD_BENCH_ALL_ERRORS and RD_BENCH_CLOCK are passed to both sides.
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const path = require("path");

const [dir, ...ids] = process.argv.slice(2);
if (!dir || ids.length === 0) {
  process.stderr.write("usage: compare.js DIR NAME.LABEL...\n");
  process.exit(2);
}
const num = (v, d) => (v === undefined || v === "" || isNaN(Number(v)) ? d : Number(v));
const ROUND = num(process.env.RD_BENCH_TIME, 0.2);
const REPS = Math.max(1, Math.floor(num(process.env.RD_BENCH_REPS, 7)));
const MIXED_REPS = Math.max(1, Math.floor(num(process.env.RD_BENCH_MIXED_REPS, 25)));

// A child speaking the serve protocol: one command line in, one line out.
function side(name, cmd, args) {
  const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
  const waiting = [];
  const lines = [];
  let buf = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (waiting.length) waiting.shift().resolve(line);
      else lines.push(line);
    }
  });
  child.on("exit", (code, sig) => {
    const err = new Error(`${name}: exited (${sig || code}) during the benchmark`);
    while (waiting.length) waiting.shift().reject(err);
  });
  const readLine = () =>
    lines.length ? Promise.resolve(lines.shift()) : new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  return {
    name,
    child,
    readLine,
    // One round: the side runs only while it is measured. In between it is
    // stopped (SIGSTOP), so that its background threads (V8's concurrent
    // GC and compiler threads) cannot take a core from the other side.
    async send(line) {
      child.kill("SIGCONT");
      child.stdin.write(line + "\n");
      const out = await readLine();
      child.kill("SIGSTOP");
      return out;
    },
    async rows() {
      child.stdin.write("rows\n");
      const out = [];
      for (;;) {
        const l = await readLine();
        if (l === "end") return out;
        out.push(l);
      }
    },
    quit() {
      child.kill("SIGCONT");
      child.stdin.write("quit\n");
      child.stdin.end();
    },
  };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length;
  return m % 2 ? s[(m - 1) / 2] : (s[m / 2 - 1] + s[m / 2]) / 2;
};

async function main() {
  const luajit = process.env.LUAJIT || "luajit";
  const node = process.env.NODE || process.execPath;
  const lua = side("lua", luajit, [path.join(__dirname, "bench.lua"), dir, "serve", ...ids]);
  const ajv = side("ajv", node, ["--expose-gc", path.join(__dirname, "bench_ajv.js"), dir, "serve", ...ids]);
  const rowsL = await lua.rows();
  const rowsA = await ajv.rows();
  lua.child.kill("SIGSTOP");
  ajv.child.kill("SIGSTOP");
  if (rowsL.join("\n") !== rowsA.join("\n")) throw new Error("the two sides list different rows");
  const raw = process.env.RD_BENCH_RAW ? fs.openSync(process.env.RD_BENCH_RAW, "w") : null;

  const fmt = (s, w) => String(s).padStart(w);
  console.log(
    `${"case".padEnd(32)} ${"mode".padEnd(9)} ${fmt("rubberduck/s", 12)} ${fmt("ajv/s", 10)} ${fmt("ratio", 6)} ${fmt("rounds", 6)}  per-round ratio: median (min-max)`
  );
  console.log(`${"----".padEnd(32)} ${"----".padEnd(9)} ${fmt("------------", 12)} ${fmt("-----", 10)} ${fmt("-----", 6)} ${fmt("------", 6)}  -------------------------------`);
  let lastMode = null;
  const summary = [];
  for (const row of rowsL) {
    const [mode, id] = row.split("\t");
    const reps = id === "mixed" ? MIXED_REPS : REPS;
    const l = [], a = [];
    for (let r = 0; r < reps; r++) {
      const cmd = `${mode} ${id} ${ROUND}`;
      if (r % 2 === 0) {
        l.push(Number(await lua.send(cmd)));
        a.push(Number(await ajv.send(cmd)));
      } else {
        a.push(Number(await ajv.send(cmd)));
        l.push(Number(await lua.send(cmd)));
      }
      if (raw) fs.writeSync(raw, `${mode}\t${id}\t${r + 1}\t${l[r]}\t${a[r]}\n`);
    }
    const ratios = l.map((x, i) => x / a[i]);
    const ml = median(l), ma = median(a);
    if (lastMode !== null && mode !== lastMode) console.log("");
    lastMode = mode;
    const label = id === "mixed" ? "MIXED (all pairs, one process)" : id;
    const mname = mode === "json" ? "json text" : mode;
    console.log(
      `${label.padEnd(32)} ${mname.padEnd(9)} ${fmt(ml.toFixed(0), 12)} ${fmt(ma.toFixed(0), 10)} ${fmt((ml / ma).toFixed(2), 6)} ${fmt(reps, 6)}  ` +
        `${median(ratios).toFixed(2)} (${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)})`
    );
    if (id === "mixed") {
      summary.push(
        `${mname}: ${(ml / ma).toFixed(2)} (median of the round ratios ${median(ratios).toFixed(2)}, ` +
          `rounds ${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}, ` +
          `${ratios.filter((x) => x > 1).length} of ${ratios.length} above 1)`
      );
    }
  }
  if (raw) fs.closeSync(raw);
  lua.quit();
  ajv.quit();
  console.log("");
  console.log(`MIXED ratio of medians: ${summary.join("; ")}`);
}

main().catch((e) => {
  process.stderr.write(`compare.js: ${e.message}\n`);
  process.exit(1);
});
