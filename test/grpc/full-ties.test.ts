import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IngestFeaturesRequestSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus, ValueType } from '../../gen/fstore/v1/values_pb.js';
import { randomName } from '../support/environment.js';
import { doubles, seededRandom, strings, valuesOf } from '../support/fixtures.js';
import { historicalRequests, retrieveHistorical } from '../support/historical.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * Full ties: rows of the same keys with equal event time AND equal created time. The rule: the
 * row written last wins (within one ingest a later row of the stream, across ingests the later
 * ingest). Checked end to end, on the same file ingested into separate views, for point-in-time
 * and range-mode historical retrieval, Materialize and ingest's write_online: every path must
 * answer the last written of the tied rows, every time.
 */

type IngestRequest = MessageInitShape<typeof IngestFeaturesRequestSchema>;

const base = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in microseconds
const second = 1_000_000;
const keyCount = 1_500;
const chunkRows = 1_000; // the server's maximum rows per chunk (FSTORE_MAX_BATCH_ROWS default)

interface Row {
  readonly user: string;
  readonly eventTime: number;
  readonly createdTime: number;
  /** Unique per row of every file: which row was chosen. */
  readonly value: number;
}

interface Tie {
  readonly user: string;
  readonly eventTime: number;
  readonly createdTime: number;
}

/**
 * Per key: a group of 2–5 fully tied rows, a row at the same event time recorded earlier (loses),
 * older rows, and for a third of the keys a newer row (so the tie is not always the latest row).
 * The rows are shuffled, so tied rows lie anywhere in the stream and across its chunks.
 */
function firstFile(): { rows: Row[]; ties: Tie[] } {
  const random = seededRandom(20_260_301);
  const integer = (below: number) => Math.floor(random() * below);
  const parts: Omit<Row, 'value'>[] = [];
  const ties: Tie[] = [];
  for (let key = 0; key < keyCount; key++) {
    const user = `user-${key}`;
    const eventTime = base + (100 + integer(400)) * second;
    const createdTime = base + 10_000 * second + integer(3) * second;
    ties.push({ user, eventTime, createdTime });
    const tied = 2 + integer(4);
    for (let copy = 0; copy < tied; copy++) parts.push({ user, eventTime, createdTime });
    parts.push({ user, eventTime, createdTime: createdTime - 1 });
    parts.push({ user, eventTime: eventTime - 1 - integer(50) * second, createdTime });
    if (key % 3 === 0) parts.push({ user, eventTime: eventTime + 1 + integer(50) * second, createdTime });
  }
  for (let index = parts.length - 1; index > 0; index--) {
    const other = integer(index + 1);
    [parts[index], parts[other]] = [parts[other] as Omit<Row, 'value'>, parts[index] as Omit<Row, 'value'>];
  }
  return { rows: parts.map((row, index) => ({ ...row, value: index })), ties };
}

/** A second file: for every other key, 2–3 rows tied with the first file's tied rows. */
function secondFile(ties: readonly Tie[]): Row[] {
  const random = seededRandom(20_260_302);
  const rows: Omit<Row, 'value'>[] = [];
  ties.forEach((tie, key) => {
    if (key % 2 === 1) return;
    const copies = 2 + Math.floor(random() * 2);
    for (let copy = 0; copy < copies; copy++) rows.push(tie);
  });
  // Interleaved, so one key's tied rows are not adjacent.
  const order = rows.map((_, index) => index).sort((a, b) => (a % 3) - (b % 3) || a - b);
  return order.map((index, position) => ({
    ...(rows[index] as Omit<Row, 'value'>),
    value: 1_000_000 + position,
  }));
}

const rowsByUser = new WeakMap<readonly Row[], Map<string, Row[]>>();

/**
 * The rule, brute force: same user, event time ≤ t; the greatest event time, then the greatest
 * created time, then the row written last (`written` lists the rows in the order they were written).
 */
function expected(written: readonly Row[], user: string, t: number): Row | undefined {
  let byUser = rowsByUser.get(written);
  if (!byUser) {
    byUser = new Map();
    for (const row of written) byUser.set(row.user, [...(byUser.get(row.user) ?? []), row]);
    rowsByUser.set(written, byUser);
  }
  let best: Row | undefined;
  for (const row of byUser.get(user) ?? []) {
    if (row.eventTime > t) continue;
    if (
      !best ||
      row.eventTime > best.eventTime ||
      (row.eventTime === best.eventTime && row.createdTime >= best.createdTime)
    )
      best = row;
  }
  return best;
}

function ingestStream(project: string, featureView: string, rows: readonly Row[], writeOnline = false) {
  const requests: IngestRequest[] = [
    { message: { case: 'header', value: { project, featureView, writeOnline } } },
  ];
  for (let start = 0; start < rows.length; start += chunkRows) {
    const part = rows.slice(start, start + chunkRows);
    requests.push({
      message: {
        case: 'rows',
        value: {
          entities: { user_id: strings(...part.map((row) => row.user)) },
          eventTimestamps: part.map((row) => BigInt(row.eventTime)),
          createdTimestamps: part.map((row) => BigInt(row.createdTime)),
          features: [{ name: 'value', values: doubles(...part.map((row) => row.value)) }],
        },
      },
    });
  }
  requests.push({ message: { case: 'end', value: { rowCount: BigInt(rows.length) } } });
  return requests;
}

describe('full ties (equal keys, event time and created time): the row written last wins', () => {
  let server: TestServer;
  const project = randomName('p');
  const other = randomName('q');
  const { rows: first, ties } = firstFile();
  const later = secondFile(ties);
  const users = ties.map((tie) => tie.user);

  const readOnline = async (projectName: string, view: string) => {
    const response = await server.features.getOnlineFeatures({
      project: projectName,
      features: [`${view}:value`],
      entities: { user_id: strings(...users) },
    });
    return {
      values: valuesOf(response.features[0]),
      statuses: response.features[0]?.statuses,
      eventTimes: response.features[0]?.eventTimestamps,
    };
  };
  const onlineExpected = (written: readonly Row[]) => {
    const latest = users.map((user) => expected(written, user, Number.MAX_SAFE_INTEGER) as Row);
    return {
      values: latest.map((row) => row.value),
      statuses: latest.map(() => FeatureStatus.PRESENT),
      eventTimes: latest.map((row) => BigInt(row.eventTime)),
    };
  };
  const materialize = async (projectName: string, view: string) => {
    for await (const progress of server.features.materialize({
      project: projectName,
      featureViews: [view],
      startTime: BigInt(base),
      endTime: BigInt(base + 100_000 * second),
    }))
      if (progress.done) expect(progress.rowsRead).toBe(BigInt(keyCount));
  };
  /** Label times at each tie, just before it and just after it. */
  const probes = ties.flatMap((tie) => [
    { user: tie.user, time: tie.eventTime },
    { user: tie.user, time: tie.eventTime - 1 },
    { user: tie.user, time: tie.eventTime + 1 },
  ]);
  const pointInTime = async (projectName: string, views: readonly string[]) =>
    retrieveHistorical(
      server.features,
      historicalRequests({ project: projectName, features: views.map((view) => `${view}:value`) }, [
        {
          entities: { user_id: strings(...probes.map((probe) => probe.user)) },
          timestamps: probes.map((probe) => BigInt(probe.time)),
        },
      ]),
      { timeoutMs: 30_000 },
    );

  beforeAll(async () => {
    server = await startTestServer('redis', {
      maxBatchRows: keyCount, // online reads of every key at once
      historicalSegmentRows: 700, // many worker tasks per view
      historicalChunkRows: 5_000,
    });
    for (const name of [project, other]) {
      await server.registry.applyEntity({
        project: name,
        entity: { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] },
      });
      for (const view of ['a', 'b', 'w'])
        await server.registry.applyFeatureView({
          project: name,
          featureView: {
            name: view,
            entities: ['user'],
            online: true,
            features: [{ name: 'value', type: ValueType.DOUBLE }],
          },
        });
    }
    // The same file, twice into two views of one project and once into another project.
    await server.features.ingestFeatures(ingestStream(project, 'a', first), { timeoutMs: 30_000 });
    await server.features.ingestFeatures(ingestStream(project, 'b', first), { timeoutMs: 30_000 });
    await server.features.ingestFeatures(ingestStream(other, 'a', first), { timeoutMs: 30_000 });
    await server.features.ingestFeatures(ingestStream(project, 'w', first, true), { timeoutMs: 30_000 });
  }, 60_000);
  afterAll(async () => server?.stop());

  it('the data holds full ties that decide the answer', () => {
    const tiedGroups = new Map<string, number>();
    for (const row of first) {
      const key = `${row.user}|${row.eventTime}|${row.createdTime}`;
      tiedGroups.set(key, (tiedGroups.get(key) ?? 0) + 1);
    }
    expect([...tiedGroups.values()].filter((count) => count > 1).length).toBe(keyCount);
    // The last written of a tie is not always the last of its group in any other order.
    const chosen = ties.map((tie) => expected(first, tie.user, tie.eventTime) as Row);
    expect(chosen.every((row, key) => row.createdTime === ties[key]?.createdTime)).toBe(true);
  });

  it('GetHistoricalFeatures at the tie time answers the last written tied row, in every view', async () => {
    const want = probes.map((probe) => expected(first, probe.user, probe.time));
    for (const [projectName, views] of [
      [project, ['a', 'b']],
      [other, ['a']],
    ] as const) {
      const result = await pointInTime(projectName, views);
      for (const view of views) {
        const column = result.features[`${view}:value`];
        expect(column?.values, `${projectName} ${view}`).toEqual(want.map((row) => row?.value ?? 0));
        expect(column?.eventTimes).toEqual(want.map((row) => BigInt(row?.eventTime ?? 0)));
      }
    }
  });

  it('range mode answers the last written tied row at every (key, event time)', async () => {
    const result = await retrieveHistorical(
      server.features,
      [
        {
          message: {
            case: 'query',
            value: {
              project,
              features: ['a:value', 'b:value'],
              range: { startTime: BigInt(base), endTime: BigInt(base + 100_000 * second) },
            },
          },
        },
        { message: { case: 'end', value: { rowCount: 0n } } },
      ],
      { timeoutMs: 30_000 },
    );
    const keys = result.keys.user_id as string[];
    const want = keys.map((user, row) => expected(first, user, Number(result.timestamps[row])));
    expect(new Set(keys).size).toBe(keyCount);
    for (const view of ['a', 'b'])
      expect(result.features[`${view}:value`]?.values, view).toEqual(want.map((row) => row?.value));
  });

  it('Materialize writes the last written tied row online, in every view', async () => {
    await materialize(project, 'a');
    await materialize(project, 'b');
    await materialize(other, 'a');
    const want = onlineExpected(first);
    expect(await readOnline(project, 'a')).toEqual(want);
    expect(await readOnline(project, 'b')).toEqual(want);
    expect(await readOnline(other, 'a')).toEqual(want);
  });

  it("ingest's write_online writes the last written tied row", async () => {
    expect(await readOnline(project, 'w')).toEqual(onlineExpected(first));
  });

  it('a later ingest wins a full tie with an earlier one, in every path', async () => {
    await server.features.ingestFeatures(ingestStream(project, 'a', later), { timeoutMs: 30_000 });
    await server.features.ingestFeatures(ingestStream(project, 'w', later, true), { timeoutMs: 30_000 });
    const written = [...first, ...later];
    const want = probes.map((probe) => expected(written, probe.user, probe.time));
    // Half of the keys now answer a row of the second file at their tie.
    expect(want.filter((row) => (row?.value ?? 0) >= 1_000_000).length).toBeGreaterThan(keyCount / 2);
    const result = await pointInTime(project, ['a', 'b']);
    expect(result.features['a:value']?.values).toEqual(want.map((row) => row?.value ?? 0));
    // View b never saw the second file.
    expect(result.features['b:value']?.values).toEqual(
      probes.map((probe) => expected(first, probe.user, probe.time)?.value ?? 0),
    );
    await materialize(project, 'a');
    expect(await readOnline(project, 'a')).toEqual(onlineExpected(written));
    expect(await readOnline(project, 'w')).toEqual(onlineExpected(written));
  });

  it('answers the same on every repeat', async () => {
    const written = [...first, ...later];
    const want = probes.map((probe) => expected(written, probe.user, probe.time)?.value ?? 0);
    for (let repeat = 0; repeat < 3; repeat++)
      expect((await pointInTime(project, ['a'])).features['a:value']?.values).toEqual(want);
  });
});
