// Turns the JSON files of one bench/run-observability.sh run into its Markdown report.
//   node bench/observability-report.mjs <results dir> > report.md
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node bench/observability-report.mjs <results dir>\n');
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

const mean = (values) => {
  const known = values.filter((value) => value !== undefined && Number.isFinite(value));
  return known.length === 0 ? undefined : known.reduce((a, b) => a + b, 0) / known.length;
};
const n0 = (value) => (value === undefined ? 'n/a' : Math.round(value).toLocaleString('en-US'));
const ms = (value) => (value === undefined ? 'n/a' : value < 10 ? value.toFixed(2) : value.toFixed(1));
const delta = (on, off) =>
  on === undefined || off === undefined || off === 0
    ? 'n/a'
    : `${on >= off ? '+' : '−'}${(Math.abs(on / off - 1) * 100).toFixed(1)} %`;

/** Per mode, the per-segment values of `pick` over the files named by `file(tag)`. */
function perMode(file, pick) {
  const result = {};
  for (const mode of modes)
    result[mode] = segments
      .filter((segment) => segment.mode === mode)
      .map((segment) => {
        const data = load(file(segment.tag));
        return data === undefined ? undefined : pick(data, segment.tag);
      });
  return result;
}
const list = (values, format) => values.map(format).join(', ');
const baseline = modes.includes('off') ? 'off' : modes[0];

const out = [];
out.push(`# FStore serving overhead of metrics + tracing — ${meta.date ?? '?'}`);
out.push('');
out.push('```');
out.push(`command:  ${meta.command ?? '?'}`);
out.push(`machine:  ${meta.nproc ?? '?'} cores, ${meta.cpu ?? '?'}, ${meta.memory ?? '?'} RAM`);
out.push(`software: Node ${meta.node ?? '?'}, ${meta.redis ?? '?'}, ${meta.k6 ?? '?'}`);
out.push(
  `server:   fstore serve --processes ${meta.serverProcesses ?? '?'}; segments in order: ${order.join(', ')}`,
);
out.push(
  `load avg: ${meta.loadBefore ?? '?'} before, ${meta.loadAfter ?? '?'} after; waited ${meta.quietWaitSeconds ?? '?'} s for other processes to go quiet`,
);
out.push('```');
out.push('');
out.push(
  `Closed loop: k6 ${meta.vus} VUs × ${meta.duration} per cell and segment; figures are the mean over ` +
    'the segments of a mode (each segment listed in brackets). Latency: k6 `grpc_req_duration`, ms. ' +
    'Server CPU per request: CPU seconds of the serving processes ÷ OK calls.',
);
out.push('');
const header = [
  'cell',
  ...modes.flatMap((mode) => [`${mode} req/s`, `${mode} p50 / p99 ms`, `${mode} CPU µs/req`]),
];
for (const mode of modes) if (mode !== baseline) header.push(`${mode} vs ${baseline}: req/s`, 'p99');
out.push(`| ${header.join(' | ')} |`);
out.push(`|${header.map((_, index) => (index === 0 ? '---' : '---:')).join('|')}|`);
for (const shape of meta.cells ?? []) {
  const cell = cellName(shape);
  const rps = perMode(
    (tag) => `${tag}-${cell}-max.json`,
    (data) => data.req_per_s,
  );
  const p50 = perMode(
    (tag) => `${tag}-${cell}-max.json`,
    (data) => data.latency_ms.p50,
  );
  const p99 = perMode(
    (tag) => `${tag}-${cell}-max.json`,
    (data) => data.latency_ms.p99,
  );
  const cpu = perMode(
    (tag) => `cpu-${tag}-${cell}-max.json`,
    (data, tag) => {
      const result = load(`${tag}-${cell}-max.json`);
      return result && result.requests_ok > 0 ? (data.server_cpu_s * 1e6) / result.requests_ok : undefined;
    },
  );
  const row = [cell];
  for (const mode of modes)
    row.push(
      `${n0(mean(rps[mode]))} (${list(rps[mode], n0)})`,
      `${ms(mean(p50[mode]))} / ${ms(mean(p99[mode]))} (p99 ${list(p99[mode], ms)})`,
      n0(mean(cpu[mode])),
    );
  for (const mode of modes)
    if (mode !== baseline)
      row.push(delta(mean(rps[mode]), mean(rps[baseline])), delta(mean(p99[mode]), mean(p99[baseline])));
  out.push(`| ${row.join(' | ')} |`);
}
out.push('');
out.push(
  `Open model: k6 \`constant-arrival-rate\` for ${meta.duration}, ${meta.openVus} pre-allocated VUs (up to 64).`,
);
out.push('');
const openHeader = ['scenario', ...modes.map((mode) => `${mode} p50 / p99 ms`), 'dropped calls'];
for (const mode of modes) if (mode !== baseline) openHeader.push(`${mode} vs ${baseline}: p99`);
out.push(`| ${openHeader.join(' | ')} |`);
out.push(`|${openHeader.map((_, index) => (index === 0 ? '---' : '---:')).join('|')}|`);
for (const scenario of meta.open ?? []) {
  const [shape, rate] = scenario.split('@');
  const file = (tag) => `${tag}-${cellName(shape)}-rate${rate}.json`;
  const p50 = perMode(file, (data) => data.latency_ms.p50);
  const p99 = perMode(file, (data) => data.latency_ms.p99);
  const dropped = perMode(file, (data) => data.dropped_iterations);
  const row = [`${cellName(shape)} at ${rate} req/s`];
  for (const mode of modes)
    row.push(`${ms(mean(p50[mode]))} / ${ms(mean(p99[mode]))} (p99 ${list(p99[mode], ms)})`);
  row.push(modes.map((mode) => `${mode} ${list(dropped[mode], n0)}`).join('; '));
  for (const mode of modes) if (mode !== baseline) row.push(delta(mean(p99[mode]), mean(p99[baseline])));
  out.push(`| ${row.join(' | ')} |`);
}
out.push('');

const sink = load('sink.json');
const scrapes = readdirSync(dir)
  .filter((name) => name.startsWith('scrapes-'))
  .flatMap((name) => readFileSync(join(dir, name), 'utf8').trim().split('\n').filter(Boolean))
  .map((line) => line.split(' ').map(Number));
const good = scrapes.filter(([code]) => code === 200);
out.push(
  `Tracing reached the collector: ${sink ? `${n0(sink.spans)} spans in ${n0(sink.requests)} OTLP/HTTP exports, ${n0(sink.bytes / 1e6)} MB` : 'no sink counts (sink.json missing)'}.`,
);
out.push(
  `Metrics were scraped: ${good.length} of ${scrapes.length} scrapes of /metrics answered 200` +
    (good.length > 0
      ? `, ${n0(mean(good.map(([, bytes]) => bytes)))} bytes each, slowest ${ms(Math.max(...good.map(([, , seconds]) => seconds * 1000)))} ms.`
      : '.'),
);
process.stdout.write(`${out.join('\n')}\n`);
