// Turns the JSON files of one bench/run-security.sh run into its Markdown report.
//   node bench/security-report.mjs <results dir> > report.md
// The per-segment parsing follows bench/observability-report.mjs (same file names: <tag>-<cell>-max.json
// from k6, cpu-<tag>-<cell>-max.json from lib.sh's closed_loop), plus redis-<tag>-<cell>-max.json
// (rate-limiter script calls) and issuer.json (bench/jwt-issuer.ts's request counts).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const TARGET = 0.05; // each mode may cost at most 5 % of the req/s of `off`
// Cores used by other processes during a cell above which its figures are marked as disturbed
// (lib.sh waits for a quiet machine before each cell, but cannot stop others starting during it).
const DISTURBED_CORES = 0.2;

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node bench/security-report.mjs <results dir>\n');
  process.exit(2);
}
const load = (name) => {
  const file = join(dir, name);
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : undefined;
};
const meta = load('meta.json') ?? {};
const order = meta.order ?? [];
const modes = [...new Set(order)];
const segments = order.map((mode, index) => ({ mode, tag: `s${index + 1}-${mode}` }));
const cellName = (shape) => `b${shape.split('x')[0]}xf${shape.split('x')[1]}`;
const baseline = modes.includes('off') ? 'off' : modes[0];

const known = (values) => values.filter((value) => value !== undefined && Number.isFinite(value));
const mean = (values) => {
  const list = known(values);
  return list.length === 0 ? undefined : list.reduce((a, b) => a + b, 0) / list.length;
};
/** (max − min) ÷ mean of a mode's segments: how much the same configuration moved during the run. */
const spread = (values) => {
  const list = known(values);
  return list.length < 2 ? undefined : (Math.max(...list) - Math.min(...list)) / mean(list);
};
const n0 = (value) => (value === undefined ? 'n/a' : Math.round(value).toLocaleString('en-US'));
const ms = (value) => (value === undefined ? 'n/a' : value < 10 ? value.toFixed(2) : value.toFixed(1));
const pct = (value) => (value === undefined ? 'n/a' : `${(value * 100).toFixed(1)} %`);
const signed = (ratio) =>
  ratio === undefined ? 'n/a' : `${ratio >= 1 ? '+' : '−'}${(Math.abs(ratio - 1) * 100).toFixed(1)} %`;
const list = (values, format) => values.map(format).join(', ');

/** Per segment of `mode`, `pick(data, tag)` of the file `file(tag)` (undefined where it is missing). */
const perSegment = (mode, file, pick) =>
  segments
    .filter((segment) => segment.mode === mode)
    .map((segment) => {
      const data = load(file(segment.tag));
      return data === undefined ? undefined : pick(data, segment.tag);
    });

const modeText = {
  off: 'authentication off, no rate limits (the baseline)',
  keys: 'FSTORE_AUTH=on; every call sends `authorization: Bearer fsk_…` (API key checked against the in-memory key table: SHA-256 of the secret, constant-time compare)',
  jwt: 'FSTORE_AUTH=on with an OIDC issuer (bench/jwt-issuer.ts, RS256); every call sends the same JWT, so after the first call per process the principal comes from the per-token cache of verified tokens',
  ratelimit: `authentication off; FSTORE_RATE_LIMIT_REQUESTS_PER_SECOND and _ROWS_PER_SECOND = ${n0(meta.rateLimit)} per principal (far above what this machine serves: nothing is refused, only the mechanism is measured — per call a take from the process's leased stock, and leases from the shared token bucket in Redis by a Lua script, for the one principal \`anonymous\`)`,
  'keys-ratelimit': `API keys as in \`keys\` and rate limits as in \`ratelimit\` (${n0(meta.rateLimit)}/s), together`,
};

const out = [];
out.push(`# FStore serving overhead of authentication and rate limiting — ${meta.date ?? '?'}`);
out.push('');
out.push('```');
out.push(`command:  ${meta.command ?? '?'}`);
out.push(`machine:  ${meta.nproc ?? '?'} cores, ${meta.cpu ?? '?'}, ${meta.memory ?? '?'} RAM`);
out.push(`software: Node ${meta.node ?? '?'}, ${meta.redis ?? '?'}, ${meta.k6 ?? '?'}`);
out.push(
  `server:   fstore serve --processes ${meta.serverProcesses ?? '?'}, FSTORE_METRICS=off, no tracing; segments in order: ${order.join(', ')}`,
);
out.push(
  `load avg: ${meta.loadBefore ?? '?'} before, ${meta.loadAfter ?? '?'} after; waited ${meta.quietWaitSeconds ?? '?'} s for other processes to go quiet`,
);
out.push('```');
out.push('');
out.push('Modes (server environment per mode in meta.json):');
out.push('');
for (const mode of modes) out.push(`- **${mode}**: ${modeText[mode] ?? mode}.`);
out.push('');
out.push(
  `Closed loop: k6 ${meta.vus ?? '?'} VUs × ${meta.duration ?? '?'} per cell and segment, GetOnlineFeatures of project ` +
    `\`${meta.project ?? 'bench'}\`. req/s: OK calls per second, the mean over the segments of a mode (each segment in ` +
    'brackets). Latency: k6 `grpc_req_duration` of the measured calls, ms, mean of the segments. Server CPU per call: ' +
    'CPU seconds of the serving processes ÷ OK calls. Target: a mode keeps at least ' +
    `${((1 - TARGET) * 100).toFixed(0)} % of the req/s of \`${baseline}\`. Non-OK calls must be 0 in every segment ` +
    '(a call refused UNAUTHENTICATED measures nothing).',
);
out.push('');

const header = [
  'cell',
  'mode',
  'req/s',
  `vs ${baseline}`,
  `≤ ${(TARGET * 100).toFixed(0)} % cost?`,
  'p50 / p99 ms',
  'server CPU µs/call',
  `CPU vs ${baseline}`,
  'non-OK calls per segment',
];
out.push(`| ${header.join(' | ')} |`);
out.push(`|${header.map((_, index) => (index < 2 ? '---' : '---:')).join('|')}|`);
const notes = [];
let failures = 0;
let invalid = 0;
let disturbed = 0;
const cpuRows = [];
for (const shape of meta.cells ?? []) {
  const cell = cellName(shape);
  const result = (tag) => `${tag}-${cell}-max.json`;
  const stats = {};
  for (const mode of modes) {
    const rps = perSegment(mode, result, (data) => data.req_per_s);
    const p50 = perSegment(mode, result, (data) => data.latency_ms.p50);
    const p99 = perSegment(mode, result, (data) => data.latency_ms.p99);
    const bad = perSegment(mode, result, (data) => data.requests - data.requests_ok);
    const notFound = perSegment(mode, result, (data) => data.not_found_rows_sampled);
    const cpu = perSegment(
      mode,
      (tag) => `cpu-${tag}-${cell}-max.json`,
      (data, tag) => {
        const k6 = load(result(tag));
        if (!k6 || !(k6.requests_ok > 0)) return undefined;
        return {
          server: (data.server_cpu_s * 1e6) / k6.requests_ok,
          k6: (data.k6_cpu_s * 1e6) / k6.requests_ok,
          redis: (data.redis_cpu_s * 1e6) / k6.requests_ok,
          other: data.other_cpu_s / data.wall_s,
          busy: (data.server_cpu_s + data.k6_cpu_s + data.redis_cpu_s) / data.wall_s,
        };
      },
    );
    const scripts = perSegment(
      mode,
      (tag) => `redis-${tag}-${cell}-max.json`,
      (data, tag) => {
        const cpuFile = load(`cpu-${tag}-${cell}-max.json`);
        return cpuFile ? data.script_calls / cpuFile.wall_s : undefined;
      },
    );
    const buckets = perSegment(
      mode,
      (tag) => `redis-${tag}-${cell}-max.json`,
      (data) => data.rate_limit_buckets ?? undefined,
    );
    stats[mode] = { rps, p50, p99, bad, notFound, cpu, scripts, buckets };
  }
  const base = stats[baseline];
  const baseRps = mean(base.rps);
  const baseCpu = mean(base.cpu.map((c) => c?.server));
  const baseBroken = base.bad.some((value) => value !== 0);
  const noise = spread(base.rps);
  const disturbedIn = (mode) => stats[mode].cpu.some((c) => c !== undefined && c.other > DISTURBED_CORES);
  for (const mode of modes) {
    const s = stats[mode];
    const rps = mean(s.rps);
    const cpu = mean(s.cpu.map((c) => c?.server));
    const broken = s.bad.some((value) => value !== 0) || baseBroken;
    let verdict = '—';
    if (mode !== baseline) {
      if (broken || rps === undefined || baseRps === undefined) {
        verdict = '**INVALID** (failed calls)';
        invalid++;
      } else if (rps >= (1 - TARGET) * baseRps) verdict = 'PASS';
      else {
        verdict = '**FAIL**';
        failures++;
      }
      if (!broken && noise !== undefined && rps !== undefined && baseRps !== undefined) {
        if (Math.abs(rps / baseRps - 1) <= noise) verdict += ' (within noise)';
      }
      if (!broken && (disturbedIn(mode) || disturbedIn(baseline))) {
        verdict += ' (disturbed)';
        disturbed++;
      }
    }
    out.push(
      `| ${[
        cell,
        mode,
        `${n0(rps)} (${list(s.rps, n0)})`,
        mode === baseline ? '—' : signed(rps === undefined || !baseRps ? undefined : rps / baseRps),
        verdict,
        `${ms(mean(s.p50))} / ${ms(mean(s.p99))}`,
        n0(cpu),
        mode === baseline ? '—' : signed(cpu === undefined || !baseCpu ? undefined : cpu / baseCpu),
        list(s.bad, (value) =>
          value === undefined ? 'no k6 result' : value === 0 ? '0' : `**${n0(value)}**`,
        ),
      ].join(' | ')} |`,
    );
    cpuRows.push([
      cell,
      mode,
      n0(mean(s.cpu.map((c) => c?.server))),
      n0(mean(s.cpu.map((c) => c?.k6))),
      n0(mean(s.cpu.map((c) => c?.redis))),
      (mean(s.cpu.map((c) => c?.busy)) ?? Number.NaN).toFixed(2),
      (mean(s.cpu.map((c) => c?.other)) ?? Number.NaN).toFixed(2),
      `${n0(mean(s.scripts))} (${list(s.scripts, n0)})`,
      known(s.buckets).length === 0
        ? '—'
        : list(s.buckets, (value) => (value === undefined ? 'n/a' : `${value} of 2`)),
    ]);
    const busy = segments
      .filter((segment) => segment.mode === mode)
      .map((segment, index) => ({ tag: segment.tag, other: s.cpu[index]?.other }))
      .filter((entry) => entry.other !== undefined && entry.other > DISTURBED_CORES);
    if (busy.length > 0)
      notes.push(
        `${cell} ${mode}: other processes used ${list(busy, (entry) => `${entry.other.toFixed(2)} cores in ${entry.tag}`)} ` +
          `(more than ${DISTURBED_CORES}): those figures are disturbed; run again on a quiet machine.`,
      );
    const notFound = known(s.notFound).reduce((a, b) => a + b, 0);
    if (notFound > 0)
      notes.push(`${cell} ${mode}: ${n0(notFound)} NOT_FOUND rows in sampled responses (seeding?).`);
  }
  notes.push(
    noise === undefined
      ? `${cell}: one \`${baseline}\` segment only: no estimate of the run's noise.`
      : `${cell}: the \`${baseline}\` segments differ by ${pct(noise)} of their mean (${list(base.rps, n0)} req/s): ` +
          'a mode whose difference from it is smaller is marked "within noise".',
  );
}
out.push('');
for (const note of notes) out.push(`- ${note}`);
out.push('');
out.push(
  'Where the CPU went, per OK call (µs) and in cores busy on average (out of ' +
    `${meta.nproc ?? '?'}): server = the serving processes, k6 = the load generator, redis = redis-server ` +
    '(shared with other users of the test Redis), others = every other process on the machine. Rate-limiter ' +
    'script calls: EVALSHA + EVAL served by that Redis per second during the cell (all its clients: other ' +
    "users of the test Redis show up in every mode). Rate-limit buckets: how many of the principal's two shared " +
    'buckets (`<prefix>rl:{<principal>}:req` / `:rows`, expiring ~2 s after the last lease) Redis held right after the cell.',
);
out.push('');
const cpuHeader = [
  'cell',
  'mode',
  'server µs/call',
  'k6 µs/call',
  'redis µs/call',
  'server+k6+redis cores',
  'others cores',
  'Redis script calls/s (segments)',
  'rate-limit buckets in Redis after the cell',
];
out.push(`| ${cpuHeader.join(' | ')} |`);
out.push(`|${cpuHeader.map((_, index) => (index < 2 ? '---' : '---:')).join('|')}|`);
for (const row of cpuRows) out.push(`| ${row.join(' | ')} |`);
out.push('');

const issuer = load('issuer.json');
if (modes.includes('jwt'))
  out.push(
    issuer
      ? `JWT issuer (${issuer.issuer}, audience \`${meta.jwtAudience}\`): ${issuer.discovery} discovery and ${issuer.jwks} JWKS requests in the whole run ` +
          `(${segments.filter((segment) => segment.mode === 'jwt').length} jwt segments × ${meta.serverProcesses} processes: keys are fetched once per process, not per call).`
      : 'JWT issuer: no request counts (issuer.json missing).',
  );
if (meta.apiKeyId)
  out.push(
    `API key: \`${meta.apiKeyId}\` (reader@${meta.project}), created with \`fstore keys create --bootstrap\` for this run and revoked at its end.`,
  );
out.push('');
out.push(
  invalid > 0
    ? `**Result: INVALID** — calls failed in ${invalid} mode × cell comparison(s); fix that and run again.`
    : failures > 0
      ? `**Result: ${failures} mode × cell comparison(s) cost more than ${(TARGET * 100).toFixed(0)} % of the req/s of \`${baseline}\`.**`
      : `**Result: every mode × cell within ${(TARGET * 100).toFixed(0)} % of the req/s of \`${baseline}\`.**`,
);
if (invalid === 0 && disturbed > 0)
  out.push(
    '',
    `**But ${disturbed} comparison(s) are marked disturbed: other processes used the machine during them (see the notes). Not figures of record.**`,
  );
process.stdout.write(`${out.join('\n')}\n`);
