/**
 * The event producer of bench/stream.ts, in a process of its own so it does not share the
 * consumer's event loop: JSON events {user_id, ts (epoch ms), amount} for `--entities` users,
 * keyed by user (Kafka's default partitioner keeps an entity on one partition), either as fast as
 * it can (`--rate 0`, a backlog) or at a steady rate with ts = now (freshness). Prints one JSON
 * line when done: {"events": n, "seconds": s}.
 *
 *   node --import tsx bench/stream-producer.ts --brokers 127.0.0.1:9192 --topic t --events 1000000
 *     [--entities 100000] [--rate 0] [--span-ms events/200] [--start-ms <epoch ms>]
 */
import { parseArgs } from 'node:util';
import { CompressionTypes, Kafka, logLevel, Partitioners } from 'kafkajs';

const { values: flags } = parseArgs({
  options: {
    brokers: { type: 'string' },
    topic: { type: 'string' },
    events: { type: 'string' },
    entities: { type: 'string' },
    rate: { type: 'string' },
    'span-ms': { type: 'string' },
    'start-ms': { type: 'string' },
  },
});
const events = Number(flags.events ?? 1_000_000);
const entities = Number(flags.entities ?? 100_000);
const rate = Number(flags.rate ?? 0);
// Default: the event time 200,000 events/s would cover (the target rate, as if produced live).
const spanMs = Number(flags['span-ms'] ?? Math.ceil(events / 200));
const startMs = Number(flags['start-ms'] ?? Date.now() - spanMs);
const batch = 5_000;

const kafka = new Kafka({
  clientId: 'fstore-bench-producer',
  brokers: (flags.brokers ?? '127.0.0.1:9192').split(','),
  logLevel: logLevel.ERROR,
});
// One send at a time: concurrent sends may land out of order, which would turn the backlog's
// order into disorder far beyond B.
const producer = kafka.producer({
  allowAutoTopicCreation: false,
  maxInFlightRequests: 1,
  createPartitioner: Partitioners.DefaultPartitioner,
});
await producer.connect();
// mulberry32: deterministic and spread over every user (a double-precision LCG is not).
let seed = 12_345;
const next = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
};
const started = performance.now();
for (let sent = 0; sent < events; sent += batch) {
  if (rate > 0) {
    const due = started + (sent / rate) * 1000;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  const messages = [];
  for (let index = sent; index < Math.min(events, sent + batch); index++) {
    const user = Math.floor(next() * entities);
    // Backlog: event times spread over the span in order, with up to 200 ms of disorder.
    const ts = rate > 0 ? Date.now() : Math.floor(startMs + (index / events) * spanMs - next() * 200);
    messages.push({
      key: String(user),
      value: JSON.stringify({ user_id: user, ts, amount: Math.round(next() * 10_000) / 100 }),
    });
  }
  await producer.send({
    topic: flags.topic as string,
    acks: 1,
    compression: CompressionTypes.None,
    messages,
  });
}
await producer.disconnect();
process.stdout.write(`${JSON.stringify({ events, seconds: (performance.now() - started) / 1000 })}\n`);
