import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DriftLevel, ProfileKind } from '../../gen/fstore/v1/monitoring_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { computeDrift } from '../../src/domain/profile/drift.js';
import {
  createCategoricalAccumulator,
  createNumericAccumulator,
  type FeatureProfile,
} from '../../src/domain/profile/feature-profile.js';
import type { DriftCheckSink } from '../../src/serving/drift-monitor.js';
import { randomName } from '../support/environment.js';
import {
  bools,
  doubles,
  failureOf,
  floats,
  int64s,
  lists,
  seededRandom,
  strings,
} from '../support/fixtures.js';
import { ingestRequests } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

const day = 86_400_000_000; // microseconds
const base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
const referenceRange = { startTime: BigInt(base), endTime: BigInt(base + day) };
const sameRange = { startTime: BigInt(base + day), endTime: BigInt(base + 2 * day) };
const shiftedRange = { startTime: BigInt(base + 2 * day), endTime: BigInt(base + 3 * day) };
const offline = (range: { startTime: bigint; endTime: bigint }) => ({
  source: { case: 'offline' as const, value: range },
});

interface Rows {
  users: string[];
  times: number[];
  amount: (number | null)[];
  country: string[];
  clicks: number[];
  active: boolean[];
}

function makeRows(
  seed: number,
  count: number,
  start: number,
  mean: number,
  countries: readonly [string, number][],
  nullEvery: number,
): Rows {
  const next = seededRandom(seed);
  const rows: Rows = { users: [], times: [], amount: [], country: [], clicks: [], active: [] };
  for (let index = 0; index < count; index++) {
    rows.users.push(`u${index % 500}`);
    rows.times.push(start + Math.floor((index * day) / count));
    const normal = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
    rows.amount.push(index % nullEvery === 0 ? null : Math.round((mean + 10 * normal) * 100) / 100);
    let pick = next();
    let country = countries[countries.length - 1]?.[0] as string;
    for (const [name, share] of countries) {
      if (pick < share) {
        country = name;
        break;
      }
      pick -= share;
    }
    rows.country.push(country);
    rows.clicks.push(Math.floor(next() * 20));
    rows.active.push(next() < 0.7);
  }
  return rows;
}

/** The rows as ingest messages, 1,000 rows per chunk (the server's batch limit). */
function ingestChunk(project: string, rows: Rows) {
  const count = rows.users.length;
  const chunks = [];
  for (let from = 0; from < count; from += 1000) {
    const to = Math.min(count, from + 1000);
    const amounts = rows.amount.slice(from, to);
    chunks.push({
      message: {
        case: 'rows' as const,
        value: {
          entities: { user_id: strings(...rows.users.slice(from, to)) },
          eventTimestamps: rows.times.slice(from, to).map(BigInt),
          features: [
            {
              name: 'amount',
              values: doubles(...amounts.map((value) => value ?? 0)),
              nullRows: amounts.flatMap((value, index) => (value === null ? [index] : [])),
            },
            { name: 'country', values: strings(...rows.country.slice(from, to)) },
            { name: 'clicks', values: int64s(...rows.clicks.slice(from, to)) },
            { name: 'active', values: bools(...rows.active.slice(from, to)) },
            { name: 'embedding', values: lists(...rows.users.slice(from, to).map(() => floats(0.5, 1.5))) },
          ],
        },
      },
    });
  }
  const [header, , end] = ingestRequests(project, 'payments', {}, count);
  return [header, ...chunks, end] as ReturnType<typeof ingestRequests>;
}

/** The domain's profiles of the same values, computed in this process. */
function numericProfile(values: readonly (number | null)[]): FeatureProfile {
  const accumulator = createNumericAccumulator();
  const present = values.filter((value): value is number => value !== null);
  accumulator.addValues(Float64Array.from(present), present.length);
  accumulator.addNulls(values.length - present.length);
  return accumulator.finish();
}

function categoricalProfile(values: readonly string[]): FeatureProfile {
  const accumulator = createCategoricalAccumulator();
  accumulator.addValues(values);
  return accumulator.finish();
}

const referenceMix: [string, number][] = [
  ['US', 0.5],
  ['DE', 0.3],
  ['FR', 0.2],
];
const shiftedMix: [string, number][] = [
  ['US', 0.2],
  ['DE', 0.3],
  ['FR', 0.5],
];

const view = (rules: { maxAmount?: number; amountPsi?: { psiWarn: number; psiAlert: number } }) => ({
  name: 'payments',
  entities: ['user'],
  online: true,
  // Old data: the view's rows are from January; a generous ttl keeps them servable.
  ttl: { seconds: 100n * 365n * 86_400n },
  freshness: { seconds: 3600n },
  features: [
    {
      name: 'amount',
      type: ValueType.DOUBLE,
      min: 0,
      maxNullRate: 0.01,
      ...(rules.maxAmount !== undefined ? { max: rules.maxAmount } : {}),
      ...rules.amountPsi,
    },
    { name: 'country', type: ValueType.STRING, allowedValues: ['US', 'DE', 'FR'] },
    { name: 'clicks', type: ValueType.INT64 },
    { name: 'active', type: ValueType.BOOL },
    { name: 'embedding', type: ValueType.FLOAT_LIST },
  ],
});

/** MonitoringService end to end: real gRPC, PostgreSQL, Redis and the worker pool. */
describe('MonitoringService', () => {
  let server: TestServer;
  const project = randomName('p');
  const reference = makeRows(1, 3000, base, 100, referenceMix, 50);
  const same = makeRows(2, 2000, base + day, 100, referenceMix, 50);
  const shifted = makeRows(3, 2500, base + 2 * day, 108, shiftedMix, 50);
  const checks: Parameters<DriftCheckSink['recordDrift']>[0][] = [];
  const alerts: Parameters<DriftCheckSink['recordAlert']>[0][] = [];
  const violations: Parameters<DriftCheckSink['recordViolations']>[0][] = [];

  beforeAll(async () => {
    server = await startTestServer(
      'redis',
      // Small segments: a profile merges dozens of worker results.
      { profileSegmentRows: 97, servedSampleRate: 1, driftMonitorTickMs: 200 },
      {
        hooks: {
          driftSink: {
            recordDrift: (sample) => checks.push(sample),
            recordAlert: (alert) => alerts.push(alert),
            recordViolations: (found) => violations.push(found),
            observeCheck: () => {},
            setLastEventAge: () => {},
          },
        },
      },
    );
    await server.registry.applyEntity({
      project,
      entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
    });
    await server.registry.applyFeatureView({ project, featureView: view({}) });
    for (const rows of [reference, same, shifted])
      await server.features.ingestFeatures(ingestChunk(project, rows));
  });

  afterAll(async () => {
    await server?.stop();
  });

  it('profiles offline rows exactly where exact figures exist, quantiles within the sketch accuracy', async () => {
    const response = await server.monitoring.computeProfile({
      project,
      featureView: 'payments',
      source: offline(referenceRange),
      options: { quantiles: [0.1, 0.5, 0.9] },
    });
    expect(response.rows).toBe(3000n);
    expect(response.latestEventTime).toBe(BigInt(Math.max(...reference.times)));
    // Every profileable feature, the list feature left out.
    expect(response.profiles.map((profile) => profile.feature)).toEqual([
      'amount',
      'country',
      'clicks',
      'active',
    ]);
    const amount = response.profiles[0];
    const present = reference.amount.filter((value): value is number => value !== null).sort((a, b) => a - b);
    expect(amount?.kind).toBe(ProfileKind.NUMERIC);
    expect(amount?.count).toBe(BigInt(present.length));
    expect(amount?.nullCount).toBe(BigInt(3000 - present.length));
    expect(amount?.min).toBe(present[0]);
    expect(amount?.max).toBe(present[present.length - 1]);
    const mean = present.reduce((sum, value) => sum + value, 0) / present.length;
    expect(amount?.mean).toBeCloseTo(mean, 9);
    const variance = present.reduce((sum, value) => sum + (value - mean) ** 2, 0) / present.length;
    expect(amount?.std).toBeCloseTo(Math.sqrt(variance), 9);
    for (const quantile of amount?.quantiles ?? []) {
      const exact = present[
        Math.min(present.length - 1, Math.floor(quantile.q * (present.length - 1)))
      ] as number;
      expect(Math.abs(quantile.value - exact) / exact).toBeLessThan(0.02);
    }
    const country = response.profiles[1];
    expect(country?.kind).toBe(ProfileKind.CATEGORICAL);
    expect(country?.distinctCount).toBe(3n);
    expect(country?.distinctExact).toBe(true);
    const counted = new Map<string, number>();
    for (const value of reference.country) counted.set(value, (counted.get(value) ?? 0) + 1);
    for (const category of country?.topK ?? [])
      expect(category.count).toBe(BigInt(counted.get(category.value) ?? -1));
    const active = response.profiles[3];
    expect(active?.topK.find((category) => category.value === 'true')?.count).toBe(
      BigInt(reference.active.filter(Boolean).length),
    );
  });

  it('reports drift equal to the domain computation over the same values, and the bands', async () => {
    const report = async (range: typeof sameRange) =>
      server.monitoring.getDriftReport({
        project,
        featureView: 'payments',
        features: ['amount', 'country'],
        reference: offline(referenceRange),
        current: offline(range),
      });
    const stable = await report(sameRange);
    expect(stable.level).toBe(DriftLevel.OK);
    const drifted = await report(shiftedRange);
    expect(drifted.level).toBe(DriftLevel.ALERT);
    const [amount, country] = drifted.features;
    const expected = computeDrift(numericProfile(reference.amount), numericProfile(shifted.amount), {
      psiWarn: 0.1,
      psiAlert: 0.25,
    });
    expect(amount?.psi).toBeCloseTo(expected.psi, 9);
    expect(amount?.kolmogorovSmirnov?.statistic).toBeCloseTo(expected.ks?.statistic as number, 9);
    expect(amount?.kolmogorovSmirnov?.pValue).toBeLessThan(1e-6);
    expect(amount?.jensenShannonDistance).toBeCloseTo(expected.jensenShannon, 9);
    expect(amount?.level).toBe(DriftLevel.ALERT);
    const expectedCountry = computeDrift(
      categoricalProfile(reference.country),
      categoricalProfile(shifted.country),
      {},
    );
    expect(country?.chiSquare?.statistic).toBeCloseTo(expectedCountry.chiSquare?.statistic as number, 6);
    expect(country?.chiSquare?.degreesOfFreedom).toBe(2);
    expect(country?.chiSquare?.pValue).toBeLessThan(1e-6);
    expect(stable.features[0]?.psi).toBeLessThan(0.1);
    expect(stable.features[0]?.kolmogorovSmirnov?.pValue).toBeGreaterThan(0.001);
    // Bands given in the request override the defaults.
    const strict = await server.monitoring.getDriftReport({
      project,
      featureView: 'payments',
      features: ['amount'],
      reference: offline(referenceRange),
      current: offline(sameRange),
      options: { psiWarn: 1e-9, psiAlert: 1 },
    });
    expect(strict.features[0]?.level).toBe(DriftLevel.WARN);
  });

  it('saves reference profiles as versions and compares against them', async () => {
    const first = await server.monitoring.saveReferenceProfile({
      project,
      name: 'jan-baseline',
      featureView: 'payments',
      features: ['amount', 'country'],
      source: offline(referenceRange),
      description: 'first day of January',
    });
    expect(first.profile?.version).toBe(1);
    expect(first.profile?.rows).toBe(3000n);
    const second = await server.monitoring.saveReferenceProfile({
      project,
      name: 'jan-baseline',
      featureView: 'payments',
      source: offline(referenceRange),
    });
    expect(second.profile?.version).toBe(2);
    const listed = await server.monitoring.listReferenceProfiles({ project });
    expect(listed.profiles.map((profile) => [profile.name, profile.version])).toEqual([['jan-baseline', 2]]);
    const got = await server.monitoring.getReferenceProfile({ project, name: 'jan-baseline', version: 1 });
    expect(got.profile?.profiles.map((profile) => profile.feature)).toEqual(['amount', 'country']);
    expect(got.profile?.description).toBe('first day of January');

    const saved = await server.monitoring.getDriftReport({
      project,
      featureView: 'payments',
      reference: { source: { case: 'saved', value: { name: 'jan-baseline', version: 1 } } },
      current: offline(shiftedRange),
    });
    const fromRange = await server.monitoring.getDriftReport({
      project,
      featureView: 'payments',
      features: ['amount', 'country'],
      reference: offline(referenceRange),
      current: offline(shiftedRange),
    });
    // A saved profile is the same profile: the same measures.
    expect(saved.features.map((feature) => [feature.feature, feature.psi])).toEqual(
      fromRange.features.map((feature) => [feature.feature, feature.psi]),
    );

    await server.monitoring.deleteReferenceProfile({ project, name: 'jan-baseline' });
    expect(
      (await failureOf(server.monitoring.getReferenceProfile({ project, name: 'jan-baseline' }))).code,
    ).toBe('not_found');
  });

  it('profiles the values it served', async () => {
    for await (const _ of server.features.materialize({
      project,
      featureViews: ['payments'],
      startTime: BigInt(base),
      endTime: BigInt(base + 3 * day),
    })) {
      // progress messages
    }
    const users = ['u1', 'u2', 'u3', 'nobody'];
    const response = await server.features.getOnlineFeatures({
      project,
      features: ['payments:amount', 'payments:country'],
      entities: { user_id: strings(...users) },
    });
    const statuses = response.features[0]?.statuses ?? [];
    // Sampling happens after the response left: give it its turn of the event loop.
    await new Promise((resolve) => setTimeout(resolve, 50));
    const profile = await server.monitoring.computeProfile({
      project,
      featureView: 'payments',
      features: ['amount', 'country'],
      source: { source: { case: 'served', value: {} } },
    });
    const presentAmounts = statuses.filter((status) => status === 1).length;
    expect(presentAmounts).toBeGreaterThan(0);
    const served = profile.profiles[0];
    expect(Number((served?.count ?? 0n) + (served?.nullCount ?? 0n))).toBe(
      statuses.filter((status) => status === 1 || status === 3).length,
    );
    expect(profile.profiles[1]?.count).toBe(
      BigInt(response.features[1]?.statuses.filter((status) => status === 1).length ?? -1),
    );
  });

  it('judges the data-quality rules on stored rows', async () => {
    // Tightened after the rows were stored: the report finds the rows the new rule would refuse.
    await server.registry.applyFeatureView({ project, featureView: view({ maxAmount: 110 }) });
    const report = await server.monitoring.getDataQualityReport({
      project,
      featureView: 'payments',
      range: shiftedRange,
    });
    const above = shifted.amount.filter((value) => value !== null && value > 110).length;
    expect(above).toBeGreaterThan(0);
    const byRule = new Map(
      report.violations.map((violation) => [`${violation.feature}:${violation.rule}`, violation]),
    );
    expect(byRule.get('amount:max')?.violations).toBe(BigInt(above));
    // 1 in 50 amounts is null: above the 1 % allowed.
    expect(byRule.get('amount:max_null_rate')?.detail).toMatch(/null rate 0\.02 is above 0\.01/);
    // January's rows are older than the view's one-hour freshness.
    expect(byRule.get(':freshness')?.detail).toMatch(/the newest event is .* old, more than 60 min/);
    expect(byRule.has('country:allowed_values')).toBe(false);
    expect(report.rows).toBe(2500n);
  });

  it('refuses rows outside the allowed values on ingest, naming row and feature, storing nothing', async () => {
    const rows = makeRows(4, 3, base + 5 * day, 100, referenceMix, 1000);
    rows.amount = [50, 50, 50];
    rows.country[2] = 'XX';
    const failure = await failureOf(server.features.ingestFeatures(ingestChunk(project, rows)));
    expect(failure.code).toBe('invalid_argument');
    expect(failure.message).toMatch(
      /rows\[2\]\.features\["country"\].*"XX" is not one of the feature's allowed values/,
    );
    const profile = await server.monitoring.computeProfile({
      project,
      featureView: 'payments',
      features: ['amount'],
      source: offline({ startTime: BigInt(base + 5 * day), endTime: BigInt(base + 6 * day) }),
    });
    expect(profile.rows).toBe(0n);
  });

  it('answers bad requests with the right status and the field', async () => {
    const request = { project, featureView: 'payments', source: offline(referenceRange) };
    const cases: [Promise<unknown>, string, RegExp][] = [
      [
        server.monitoring.computeProfile({ ...request, featureView: 'nope' }),
        'not_found',
        /feature view "nope"/,
      ],
      [
        server.monitoring.computeProfile({ ...request, features: ['nope'] }),
        'not_found',
        /features\[0\].*no feature "nope"/,
      ],
      [
        server.monitoring.computeProfile({ ...request, features: ['embedding'] }),
        'invalid_argument',
        /float_list, which cannot be profiled/,
      ],
      [server.monitoring.computeProfile({ project, featureView: 'payments' }), 'invalid_argument', /source/],
      [
        server.monitoring.computeProfile({ ...request, source: offline({ startTime: 10n, endTime: 10n }) }),
        'invalid_argument',
        /source\.offline.*not before/,
      ],
      [
        server.monitoring.getDriftReport({
          ...request,
          reference: offline(referenceRange),
          current: offline({ startTime: 1n, endTime: 2n }),
        }),
        'failed_precondition',
        /amount.*no non-null values/,
      ],
      [
        server.monitoring.getDriftReport({
          ...request,
          reference: offline(referenceRange),
          current: offline(sameRange),
          options: { bins: 1 },
        }),
        'invalid_argument',
        /bins/,
      ],
      [
        server.monitoring.getDriftReport({
          ...request,
          reference: offline(referenceRange),
          current: offline(sameRange),
          options: { bins: 101 },
        }),
        'invalid_argument',
        /bins/,
      ],
      [
        server.monitoring.getDriftReport({
          ...request,
          reference: { source: { case: 'served', value: {} } },
          current: offline(sameRange),
        }),
        'invalid_argument',
        /reference\.served/,
      ],
      [
        server.monitoring.getDriftReport({
          ...request,
          reference: { source: { case: 'saved', value: { name: 'missing' } } },
          current: offline(sameRange),
        }),
        'not_found',
        /reference profile "missing"/,
      ],
      [server.monitoring.saveReferenceProfile({ ...request, name: 'bad name!' }), 'invalid_argument', /name/],
      [server.monitoring.deleteReferenceProfile({ project, name: 'missing' }), 'not_found', /missing/],
    ];
    // Every call's failure is taken at once, so none is left unhandled while an earlier one is checked.
    const failures = cases.map(([call, code, message]) => [failureOf(call), code, message] as const);
    for (const [pending, code, message] of failures) {
      const failure = await pending;
      expect({ code: failure.code, message: failure.message }).toMatchObject({
        code,
        message: expect.stringMatching(message),
      });
    }
  });

  it('refuses to compare a numeric reference with categorical current data', async () => {
    await server.monitoring.saveReferenceProfile({
      project,
      name: 'typed',
      featureView: 'payments',
      features: ['clicks'],
      source: offline(referenceRange),
    });
    const changed = view({});
    changed.features = changed.features.map((feature) =>
      feature.name === 'clicks' ? { name: 'clicks', type: ValueType.STRING } : feature,
    );
    await server.registry.applyFeatureView({ project, featureView: changed, force: true });
    await server.features.ingestFeatures(
      ingestRequests(
        project,
        'payments',
        {
          entities: { user_id: strings('u1') },
          eventTimestamps: [BigInt(base + 7 * day)],
          features: [
            { name: 'amount', values: doubles(1) },
            { name: 'country', values: strings('US') },
            { name: 'clicks', values: strings('many') },
            { name: 'active', values: bools(true) },
            { name: 'embedding', values: lists(floats(1)) },
          ],
        },
        1,
      ),
    );
    const failure = await failureOf(
      server.monitoring.getDriftReport({
        project,
        featureView: 'payments',
        reference: { source: { case: 'saved', value: { name: 'typed' } } },
        current: offline({ startTime: BigInt(base + 7 * day), endTime: BigInt(base + 8 * day) }),
      }),
    );
    expect(failure.code).toBe('failed_precondition');
    expect(failure.message).toMatch(/clicks.*numeric.*categorical|clicks.*categorical.*numeric/);
    await server.registry.applyFeatureView({ project, featureView: view({ maxAmount: 110 }), force: true });
  });

  it('runs the scheduled drift check, exporting figures and an alert when PSI crosses a band', async () => {
    await server.monitoring.saveReferenceProfile({
      project,
      name: 'baseline',
      featureView: 'payments',
      features: ['amount', 'country'],
      source: offline(referenceRange),
    });
    await server.registry.applyFeatureView({
      project,
      featureView: {
        // amount's own PSI bands: a third of the window is shifted, a PSI of about 0.09.
        ...view({ maxAmount: 110, amountPsi: { psiWarn: 0.02, psiAlert: 0.05 } }),
        // The window reaches back over every row since January: reference and shifted data mixed.
        driftMonitor: {
          referenceProfile: 'baseline',
          interval: { seconds: 1n },
          window: { seconds: 400n * 86_400n },
        },
      },
    });
    const deadline = Date.now() + 20_000;
    // A check records drift first, then the data-quality violations of the same rows.
    while (
      Date.now() < deadline &&
      !violations.some((found) => found.project === project && found.rule === 'freshness')
    )
      await new Promise((resolve) => setTimeout(resolve, 100));
    const amount = checks.find((check) => check.project === project && check.feature === 'amount');
    expect(amount?.psi).toBeGreaterThan(0);
    expect(checks.find((check) => check.feature === 'country')?.chiSquarePValue).toBeLessThan(1e-6);
    expect(amount?.psi).toBeGreaterThanOrEqual(0.05);
    expect(amount?.level).toBe('alert');
    expect(alerts).toContainEqual({ project, view: 'payments', feature: 'amount', level: 'alert' });
    // country keeps the default bands (0.1 / 0.25): its PSI of about 0.06 raises nothing.
    expect(alerts.some((alert) => alert.feature === 'country')).toBe(false);
    expect(
      violations.find((found) => found.feature === 'amount' && found.rule === 'max')?.count,
    ).toBeGreaterThan(0);
    expect(violations.find((found) => found.rule === 'freshness')?.count).toBe(1);
  });
});
