/**
 * A stand-in OpenTelemetry collector for bench/run-observability.sh: accepts OTLP/HTTP (JSON)
 * trace exports on loopback, answers 200 and counts what came (requests, bytes, spans) without
 * keeping it, so the benchmark can show that tracing was really on and how much it sent.
 *
 *   node --import tsx bench/otlp-sink.ts [--port 4318] [--stats-file sink.json]
 *
 * SIGTERM writes the counts to --stats-file (and stdout) and exits.
 */
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

const { values: flags } = parseArgs({
  options: { port: { type: 'string' }, 'stats-file': { type: 'string' } },
});
const port = Number(flags.port ?? 4318);
const counts = { requests: 0, bytes: 0, spans: 0, rejected: 0 };
const spanMarker = Buffer.from('"spanId"');

const server = createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on('data', (chunk: Buffer) => chunks.push(chunk));
  request.on('end', () => {
    if (request.method !== 'POST' || request.url !== '/v1/traces') {
      counts.rejected++;
      response.writeHead(404).end();
      return;
    }
    const body = Buffer.concat(chunks);
    counts.requests++;
    counts.bytes += body.length;
    // Every span has exactly one "spanId" key (a parent's is "parentSpanId").
    for (let at = body.indexOf(spanMarker); at !== -1; at = body.indexOf(spanMarker, at + 1)) counts.spans++;
    response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
});
server.listen(port, '127.0.0.1', () => console.log(`otlp-sink listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => {
  const text = JSON.stringify(counts);
  if (flags['stats-file']) writeFileSync(flags['stats-file'], text);
  console.log(text);
  process.exit(0);
});
