// Turns the JSON files of one bench/run-online.sh run into the Markdown report.
//   node bench/report.mjs <results dir> > report.md
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
if (!dir) {
  process.stderr.write('usage: node bench/report.mjs <results dir>\n');
  process.exit(2);
}
const load = (name) => {
  const file = join(dir, name);
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : undefined;
};
const meta = load('meta.json') ?? {};
const cells = meta.cells ?? [];
const rawProcesses = meta.rawProcesses ?? [1, 2];

const n0 = (value) =>
  value === undefined || Number.isNaN(value) ? 'n/a' : Math.round(value).toLocaleString('en-US');
const ms = (value) => (value === undefined ? 'n/a' : value < 10 ? value.toFixed(2) : value.toFixed(1));
const pct = (value) => (value === undefined ? 'n/a' : `${(value * 100).toFixed(value === 0 ? 0 : 3)} %`);
const ratio = (value) =>
  value === undefined || !Number.isFinite(value) ? 'n/a' : `${(value * 100).toFixed(0)} %`;
const cores = (cpu) =>
  cpu === undefined
    ? 'n/a'
    : [
        cpu.server_cpu_s,
        cpu.k6_cpu_s,
        cpu.redis_cpu_s,
        cpu.other_cpu_s,
        (cpu.irq_cpu_s ?? 0) + (cpu.steal_s ?? 0),
      ]
        .map((seconds) => (seconds === undefined ? '?' : (seconds / cpu.wall_s).toFixed(2)))
        .join(' / ');
const cpuPerRequest = (cpu, result) =>
  cpu === undefined || result === undefined || result.requests_ok === 0
    ? 'n/a'
    : Math.round((cpu.server_cpu_s * 1e6) / result.requests_ok).toLocaleString('en-US');
const bestRaw = (cell) =>
  rawProcesses
    .map((p) => load(`raw-${cell}-p${p}.json`))
    .filter(Boolean)
    .reduce((a, b) => (a && a.req_per_s >= b.req_per_s ? a : b), undefined);

const out = [];
out.push(`# FStore online lookup benchmark — ${meta.date ?? '?'}`);
out.push('');
out.push('```');
out.push(`command:  ${meta.command ?? '?'}`);
out.push(
  `machine:  ${meta.nproc ?? '?'} cores, ${meta.cpu ?? '?'}, ${meta.memory ?? '?'} RAM, kernel ${meta.kernel ?? '?'}`,
);
out.push(
  `software: Node ${meta.node ?? '?'}, ${meta.redis ?? '?'}, ${meta.postgres ?? '?'}, ${meta.k6 ?? '?'}`,
);
out.push(
  `server:   fstore serve --processes ${meta.serverProcesses ?? '?'} (Redis ${meta.redisUrl ?? '?'}, key prefix ${meta.keyPrefix ?? '?'}, schema ${meta.schema ?? '?'})`,
);
out.push(
  `data:     ${meta.rows ?? '?'} entities per view, views bench10 (10 doubles) and bench50 (50 doubles); random distinct ids per request`,
);
out.push(
  `load:     k6 closed loop ${meta.vus ?? '?'} VUs × ${meta.duration ?? '?'} per cell (floor: ${meta.floorDuration ?? '?'}); raw baseline ${meta.rawConcurrency ?? '?'} loops × ${meta.rawDuration ?? '?'} s`,
);
out.push(
  `load avg: ${meta.loadBefore ?? '?'} before, ${meta.loadAfter ?? '?'} after; waited ${meta.quietWaitSeconds ?? '?'} s for other processes to go quiet`,
);
out.push('```');
out.push('');

out.push('## Max throughput (closed loop): service vs gRPC floor vs raw Redis');
out.push('');
out.push(
  `- **service**: k6 \`constant-vus\`, ${meta.vus} VUs against \`fstore serve --processes ${meta.serverProcesses}\`; ` +
    'latency = k6 `grpc_req_duration` (client side), ms.',
);
out.push(
  '- **floor**: the same k6 load against `bench/grpc-floor.ts` (grpc-js, same process count, answers a cached ' +
    'response of the same shape: no Redis, no registry, no validation): what gRPC + k6 alone cost here.',
);
out.push(
  `- **raw**: \`bench/raw-baseline.ts\`, ioredis MGET of the same keys + \`decodeOnlineRow\` of every value, ` +
    `${meta.rawConcurrency} loops over ${rawProcesses.join(' or ')} process(es); service/raw uses the better one.`,
);
out.push('');
const rawHeads = rawProcesses.map((p) => `raw req/s ${p}p`);
out.push(
  `| cell | service req/s | values/s | p50 | p95 | p99 | errors | floor req/s | service / floor | ${rawHeads.join(' | ')} | raw p50 / p99 | service / raw |`,
);
out.push(
  `|---|---:|---:|---:|---:|---:|---:|---:|---:|${rawProcesses.map(() => '---:|').join('')}---:|---:|`,
);
const overhead = [];
for (const cell of cells) {
  const service = load(`k6-${cell}-max.json`);
  const floor = load(`floor-${cell}.json`);
  const raws = rawProcesses.map((p) => load(`raw-${cell}-p${p}.json`));
  const best = bestRaw(cell);
  const r = service && best && best.req_per_s > 0 ? service.req_per_s / best.req_per_s : undefined;
  overhead.push({ cell, ratio: r });
  out.push(
    `| ${cell} | ${n0(service?.req_per_s)} | ${n0(service?.values_per_s)} | ${ms(service?.latency_ms.p50)} | ` +
      `${ms(service?.latency_ms.p95)} | ${ms(service?.latency_ms.p99)} | ${pct(service?.error_rate)} | ` +
      `${n0(floor?.req_per_s)} | ${ratio(service && floor ? service.req_per_s / floor.req_per_s : undefined)} | ` +
      `${raws.map((raw) => n0(raw?.req_per_s)).join(' | ')} | ` +
      `${best ? `${ms(best.latency_ms.p50)} / ${ms(best.latency_ms.p99)}` : 'n/a'} | ${ratio(r)} |`,
  );
}
out.push('');
out.push(
  '`cell` = b<batch rows>xf<features>; values/s = req/s × batch × features. Raw latency is one MGET + decode, measured in-process.',
);
out.push('');

out.push('## Where the CPU went during the closed-loop runs');
out.push('');
out.push(
  `CPU cores busy on average (CPU seconds ÷ wall seconds; the machine has ${meta.nproc ?? '?'}): serving processes / k6 / redis-server / ` +
    "every other process on the machine (other users' included) / interrupts + hypervisor steal. " +
    'CPU µs per request = server CPU ÷ OK requests.',
);
out.push('');
out.push(
  '| cell | service: server / k6 / redis / other / irq+steal | service: server CPU µs/req | floor: server / k6 / redis / other / irq+steal | floor: server CPU µs/req |',
);
out.push('|---|---:|---:|---:|---:|');
for (const cell of cells) {
  const serviceCpu = load(`cpu-k6-${cell}-max.json`);
  const floorCpu = load(`cpu-floor-${cell}.json`);
  out.push(
    `| ${cell} | ${cores(serviceCpu)} | ${cpuPerRequest(serviceCpu, load(`k6-${cell}-max.json`))} | ` +
      `${cores(floorCpu)} | ${cpuPerRequest(floorCpu, load(`floor-${cell}.json`))} |`,
  );
}
out.push('');

out.push('## Latency targets (open model, constant arrival rate)');
out.push('');
out.push(
  'The same open-model load against the service and against the gRPC floor (no FStore code at all): ' +
    'the floor row is the best p99 any grpc-js server reaches here with k6 on the same cores.',
);
out.push('');
out.push(
  '| server | scenario | target | asked req/s | achieved req/s | p50 | p95 | p99 | p99.9 | max | dropped | errors | met? |',
);
out.push('|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
for (const scenario of meta.latencyScenarios ?? []) {
  const result = load(scenario.file);
  const met =
    result === undefined
      ? 'n/a'
      : result.latency_ms.p99 <= scenario.p99TargetMs &&
          result.error_rate === 0 &&
          result.dropped_iterations === 0
        ? 'yes'
        : 'no';
  out.push(
    `| ${scenario.target ?? 'service'} | ${scenario.cell} @ ${scenario.rate}/s | p99 ≤ ${scenario.p99TargetMs} ms | ${n0(scenario.rate)} | ${n0(result?.req_per_s)} | ` +
      `${ms(result?.latency_ms.p50)} | ${ms(result?.latency_ms.p95)} | ${ms(result?.latency_ms.p99)} | ${ms(result?.latency_ms.p999)} | ` +
      `${ms(result?.latency_ms.max)} | ${n0(result?.dropped_iterations)} | ${pct(result?.error_rate)} | ${met} |`,
  );
}
out.push('');

out.push('## Serving overhead target: service throughput ≥ 50 % of raw');
out.push('');
out.push('| cell | service / raw | met? |');
out.push('|---|---:|---|');
for (const { cell, ratio: r } of overhead)
  out.push(
    `| ${cell} | ${ratio(r)} | ${r === undefined || !Number.isFinite(r) ? 'n/a' : r >= 0.5 ? 'yes' : 'no'} |`,
  );
out.push('');

const bad = cells
  .map((cell) => ({ cell, result: load(`k6-${cell}-max.json`) }))
  .filter(({ result }) => result && (result.not_found_rows_sampled > 0 || result.bad_sample_rate > 0));
if (bad.length > 0) {
  out.push(
    `**Data check failed**: sampled responses with NOT_FOUND or non-PRESENT rows in ${bad.map((b) => b.cell).join(', ')}.`,
  );
  out.push('');
}
process.stdout.write(`${out.join('\n')}\n`);
