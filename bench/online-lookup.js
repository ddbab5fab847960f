// k6 load test of fstore.v1.FeatureService/GetOnlineFeatures (DESIGN §8).
//
//   bench/bin/k6 run -e BATCH=100 -e FEATURES=50 -e VUS=32 -e DURATION=20s bench/online-lookup.js
//   bench/bin/k6 run -e BATCH=1 -e FEATURES=10 -e RATE=2000 -e DURATION=20s bench/online-lookup.js
//
// Environment (all optional):
//   ADDR          server address                                  (default 127.0.0.1:6566)
//   PROJECT       registry project                                (default bench)
//   VIEW          feature view; default bench<FEATURES> as seeded by bench/seed.ts
//   FEATURES      features requested from the view: f0..f<n-1>   (default 10)
//   JOIN_KEY      join key name                                   (default user_id)
//   ID_PREFIX     entity ids are <ID_PREFIX><n>                    (default u)
//   ID_MIN/ID_MAX entity id range, inclusive/exclusive: every id in it must be seeded (default 0/100000)
//   BATCH         entity rows per request, distinct random ids    (default 1)
//   RATE          requests/s, open model (constant-arrival-rate); unset = closed loop with VUS
//   VUS           closed loop: concurrent virtual users; open model: pre-allocated VUs (default 32)
//   MAX_VUS       open model: most VUs k6 may add when the server lags (default 4 × VUS)
//   DURATION      measured duration                               (default 20s)
//   SAMPLE_EVERY  every n-th request of a VU parses the response and checks that no row is
//                 NOT_FOUND (and that every value is PRESENT); the others discard the response
//                 body, so k6 spends its CPU on load, not on JSON   (default 50; 1 = every request)
//   TIMEOUT       per-call deadline                               (default 2s)
//   SUMMARY_FILE  where handleSummary writes its JSON             (default bench/results/k6-summary.json)
//   CELL          a label copied into the JSON                    (default b<BATCH>xf<FEATURES>)
//   WARMUP_CALLS  calls each VU makes on its fresh connection before measuring (default 3): the
//                 first calls of a new HTTP/2 connection are slow (window growth, lazy setup) and,
//                 with 32 VUs, would otherwise be the p99 of an open-model run. They are tagged
//                 phase=warmup and left out of every reported figure.
//   PROTO_DIR     load fstore/v1/feature_service.proto from this directory instead of using server
//                 reflection (for bench/grpc-floor.ts, which serves none); a path relative to this script
//   AUTHORIZATION `authorization` metadata sent with every GetOnlineFeatures call, e.g.
//                 "Bearer fsk_…" or "Bearer <JWT>" (bench/run-security.sh); unset = none. Never printed.

import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Rate } from 'k6/metrics';
import grpc from 'k6/net/grpc';

const env = (name, fallback) => (__ENV[name] === undefined || __ENV[name] === '' ? fallback : __ENV[name]);
const int = (name, fallback) => {
  const value = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isFinite(value)) throw new Error(`${name} must be an integer, got ${__ENV[name]}`);
  return value;
};

const ADDR = env('ADDR', '127.0.0.1:6566');
const PROJECT = env('PROJECT', 'bench');
const FEATURES = int('FEATURES', 10);
const VIEW = env('VIEW', `bench${FEATURES}`);
const JOIN_KEY = env('JOIN_KEY', 'user_id');
const ID_PREFIX = env('ID_PREFIX', 'u');
const ID_MIN = int('ID_MIN', 0);
const ID_MAX = int('ID_MAX', 100000);
const BATCH = int('BATCH', 1);
const RATE = __ENV.RATE ? int('RATE', 0) : 0;
const VUS = int('VUS', 32);
const MAX_VUS = int('MAX_VUS', 4 * VUS);
const DURATION = env('DURATION', '20s');
const SAMPLE_EVERY = Math.max(1, int('SAMPLE_EVERY', 50));
const TIMEOUT = env('TIMEOUT', '2s');
const SUMMARY_FILE = env('SUMMARY_FILE', 'bench/results/k6-summary.json');
const CELL = env('CELL', `b${BATCH}xf${FEATURES}`);
const PROTO_DIR = env('PROTO_DIR', '');
const WARMUP_CALLS = Math.max(0, int('WARMUP_CALLS', 3));
const AUTHORIZATION = env('AUTHORIZATION', '');
// Spread into every call's params; empty without AUTHORIZATION, so such calls carry no metadata.
const AUTH_PARAMS = AUTHORIZATION ? { metadata: { authorization: AUTHORIZATION } } : {};
const MEASURED = 'grpc_req_duration{phase:measure}';
const METHOD = 'fstore.v1.FeatureService/GetOnlineFeatures';

if (BATCH < 1 || BATCH > ID_MAX - ID_MIN) throw new Error(`BATCH ${BATCH} must be in 1..${ID_MAX - ID_MIN}`);

const featureRefs = Array.from({ length: FEATURES }, (_, index) => `${VIEW}:f${index}`);

const scenario =
  RATE > 0
    ? {
        executor: 'constant-arrival-rate',
        rate: RATE,
        timeUnit: '1s',
        duration: DURATION,
        preAllocatedVUs: VUS,
        maxVUs: Math.max(VUS, MAX_VUS),
      }
    : { executor: 'constant-vus', vus: VUS, duration: DURATION };

export const options = {
  // The threshold only makes k6 keep the measured-calls submetric for handleSummary.
  thresholds: { [MEASURED]: ['max>=0'] },
  scenarios: { lookup: scenario },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
};

const lookups = new Counter('lookups'); // one per GetOnlineFeatures call that returned OK
const lookupErrors = new Rate('lookup_errors'); // share of calls that did not return OK
const notFoundRows = new Counter('not_found_rows'); // rows reported NOT_FOUND in sampled responses
const badSamples = new Rate('bad_samples'); // sampled responses with any non-PRESENT status
const errorCodes = {}; // per VU, for the first-error log line

const client = new grpc.Client();
if (PROTO_DIR) client.load([PROTO_DIR], 'fstore/v1/feature_service.proto');
let connected = false;
let iteration = 0;

/** BATCH distinct random ids in [ID_MIN, ID_MAX). */
function randomIds() {
  const span = ID_MAX - ID_MIN;
  const ids = new Array(BATCH);
  if (BATCH === 1) {
    ids[0] = ID_PREFIX + (ID_MIN + Math.floor(Math.random() * span));
    return ids;
  }
  const seen = new Set();
  let count = 0;
  while (count < BATCH) {
    const id = ID_MIN + Math.floor(Math.random() * span);
    if (seen.has(id)) continue;
    seen.add(id);
    ids[count++] = ID_PREFIX + id;
  }
  return ids;
}

/** Counts the rows of a parsed response that are not PRESENT, and the NOT_FOUND ones. */
function inspect(message) {
  let notFound = 0;
  let notPresent = 0;
  const columns = message?.features || [];
  for (const column of columns) {
    for (const status of column.statuses || []) {
      if (status === 'FEATURE_STATUS_NOT_FOUND' || status === 2) notFound++;
      if (status !== 'FEATURE_STATUS_PRESENT' && status !== 1) notPresent++;
    }
  }
  return { columns: columns.length, notFound, notPresent };
}

export default function () {
  if (!connected) {
    client.connect(ADDR, { plaintext: true, reflect: !PROTO_DIR, timeout: '10s' });
    connected = true;
    for (let call = 0; call < WARMUP_CALLS; call++) {
      client.invoke(
        METHOD,
        {
          project: PROJECT,
          features: featureRefs,
          entities: { [JOIN_KEY]: { stringValues: { values: randomIds() } } },
        },
        { timeout: TIMEOUT, discardResponseMessage: true, tags: { phase: 'warmup' }, ...AUTH_PARAMS },
      );
    }
  }
  iteration++;
  const sample = iteration % SAMPLE_EVERY === 1 || SAMPLE_EVERY === 1;
  const request = {
    project: PROJECT,
    features: featureRefs,
    entities: { [JOIN_KEY]: { stringValues: { values: randomIds() } } },
  };
  const response = client.invoke(METHOD, request, {
    timeout: TIMEOUT,
    discardResponseMessage: !sample,
    tags: { phase: 'measure' },
    ...AUTH_PARAMS,
  });
  const ok = response.status === grpc.StatusOK;
  lookupErrors.add(!ok);
  if (ok) lookups.add(1);
  else {
    const code = response.status;
    if (!errorCodes[code]) {
      errorCodes[code] = true;
      console.error(
        `VU ${exec.vu.idInTest}: ${METHOD} failed with status ${code}: ${JSON.stringify(response.error)}`,
      );
    }
  }
  check(response, { 'status is OK': () => ok });
  if (sample && ok) {
    const seen = inspect(response.message);
    notFoundRows.add(seen.notFound);
    badSamples.add(seen.notPresent > 0 || seen.columns !== FEATURES);
    check(seen, {
      'no NOT_FOUND row (sampled)': (s) => s.notFound === 0,
      'one column per feature (sampled)': (s) => s.columns === FEATURES,
    });
  }
}

function metric(data, name, stat, fallback = 0) {
  const m = data.metrics[name];
  return m && m.values && m.values[stat] !== undefined ? m.values[stat] : fallback;
}

export function handleSummary(data) {
  const durationS = data.state.testRunDurationMs / 1000;
  const okCount = metric(data, 'lookups', 'count');
  const failRate = metric(data, 'lookup_errors', 'rate');
  const callCount = metric(data, 'lookup_errors', 'passes') + metric(data, 'lookup_errors', 'fails');
  const summary = {
    cell: CELL,
    mode: RATE > 0 ? `constant-arrival-rate ${RATE}/s` : `closed loop, ${VUS} VUs`,
    batch: BATCH,
    features: FEATURES,
    view: VIEW,
    duration_s: durationS,
    requests: callCount,
    requests_ok: okCount,
    // OK calls per second over the whole run (for the open model: what was achieved, not asked).
    req_per_s: okCount / durationS,
    values_per_s: (okCount * BATCH * FEATURES) / durationS,
    error_rate: failRate,
    dropped_iterations: metric(data, 'dropped_iterations', 'count'),
    not_found_rows_sampled: metric(data, 'not_found_rows', 'count'),
    bad_sample_rate: metric(data, 'bad_samples', 'rate'),
    // grpc_req_duration of the measured calls (not the per-connection warm-up), milliseconds
    latency_ms: {
      avg: metric(data, MEASURED, 'avg'),
      p50: metric(data, MEASURED, 'med'),
      p90: metric(data, MEASURED, 'p(90)'),
      p95: metric(data, MEASURED, 'p(95)'),
      p99: metric(data, MEASURED, 'p(99)'),
      p999: metric(data, MEASURED, 'p(99.9)'),
      max: metric(data, MEASURED, 'max'),
    },
    vus_max: metric(data, 'vus_max', 'value'),
  };
  const line =
    `[k6] ${CELL} ${summary.mode}: ${summary.req_per_s.toFixed(0)} req/s ok, ` +
    `p50 ${summary.latency_ms.p50.toFixed(2)} ms, p95 ${summary.latency_ms.p95.toFixed(2)} ms, ` +
    `p99 ${summary.latency_ms.p99.toFixed(2)} ms, errors ${(failRate * 100).toFixed(3)} %, ` +
    `dropped ${summary.dropped_iterations}, NOT_FOUND rows sampled ${summary.not_found_rows_sampled}\n`;
  return {
    stdout: line,
    [SUMMARY_FILE]: JSON.stringify(summary, null, 2),
  };
}
