import { describe, expect, it } from 'vitest';
import type { Column } from '../../src/domain/columns.js';
import {
  inputLimits,
  keyValueProblem,
  textProblem,
  validateLookupName,
  validateMicros,
  validateTags,
  validateVersion,
} from '../../src/domain/input-limits.js';
import type {
  EntityDefinition,
  FeatureDefinition,
  FeatureView,
  FeatureViewDefinition,
} from '../../src/domain/model.js';
import {
  registryLimits,
  validateEntityDefinition,
  validateFeatureSetDefinition,
  validateFeatureViewDefinition,
  validateName,
} from '../../src/domain/registry-rules.js';
import {
  type StreamAggregationDefinition,
  validateStreamAggregationDefinition,
} from '../../src/domain/stream-aggregation.js';
import type { ServedView } from '../../src/serving/registry-cache.js';
import { joinKeyColumns, type RowColumns, validateRows } from '../../src/serving/rows.js';

/** Free text, tags, keys and integers bound for PostgreSQL: the pure checks and their messages. */

const nul = 'a\u0000b';
const nulProblem = 'contains a NUL character';

const problemOf = (check: () => void): string | undefined => {
  try {
    check();
    return undefined;
  } catch (error) {
    expect((error as { code?: string }).code).toBe('invalid_argument');
    return (error as Error).message;
  }
};

const feature = (overrides: Partial<FeatureDefinition> = {}): FeatureDefinition => ({
  name: 'amount',
  type: 'double',
  description: '',
  tags: {},
  ...overrides,
});

const view = (overrides: Partial<FeatureViewDefinition> = {}): FeatureViewDefinition => ({
  name: 'v',
  entities: ['user'],
  features: [feature(), feature({ name: 'label', type: 'string' }), feature({ name: 'n', type: 'int64' })],
  ttlMs: 0,
  online: true,
  source: 'push',
  owner: '',
  description: '',
  tags: {},
  ...overrides,
});

const withFeature = (index: number, overrides: Partial<FeatureDefinition>): FeatureViewDefinition => {
  const features = [...view().features];
  features[index] = { ...(features[index] as FeatureDefinition), ...overrides };
  return view({ features });
};

const viewProblem = (definition: FeatureViewDefinition) =>
  problemOf(() => validateFeatureViewDefinition(definition));

describe('text limits', () => {
  it('counts bytes of UTF-8, not characters, and refuses NUL', () => {
    expect(textProblem('x'.repeat(10), 10)).toBeUndefined();
    expect(textProblem('x'.repeat(11), 10)).toBe('is 11 bytes, more than the limit of 10 bytes');
    expect(textProblem('é'.repeat(5), 10)).toBeUndefined();
    expect(textProblem('é'.repeat(6), 10)).toBe('is 12 bytes, more than the limit of 10 bytes');
    expect(textProblem('\u{1F600}'.repeat(3), 12)).toBeUndefined();
    expect(textProblem('\u{1F600}'.repeat(3), 11)).toBe('is 12 bytes, more than the limit of 11 bytes');
    expect(textProblem(nul, 10)).toBe(nulProblem);
    expect(textProblem('\u0000', 10)).toBe(nulProblem);
    expect(textProblem('', 0)).toBeUndefined();
  });

  it('keeps the limits in one place, the registry limits included', () => {
    expect(inputLimits).toMatchObject({
      nameLength: 128,
      descriptionBytes: 16_384,
      ownerBytes: 1024,
      tagsPerObject: 64,
      tagKeyBytes: 128,
      tagValueBytes: 1024,
      allowedValueBytes: 1024,
      entityKeyBytes: 1024,
      maxVersion: 2_147_483_647,
      maxTimestampMs: Date.parse('9999-12-31T23:59:59.999Z'),
    });
    expect(registryLimits.nameLength).toBe(inputLimits.nameLength);
  });

  it('checks tags: count, key and value sizes, NUL in keys and values', () => {
    const tags = (count: number) =>
      Object.fromEntries(Array.from({ length: count }, (_, index) => [`t${index}`, 'v']));
    expect(problemOf(() => validateTags('x.tags', tags(64)))).toBeUndefined();
    expect(problemOf(() => validateTags('x.tags', tags(65)))).toBe('x.tags: 65 tags, at most 64');
    expect(problemOf(() => validateTags('x.tags', { team: nul }))).toBe(`x.tags["team"]: ${nulProblem}`);
    expect(problemOf(() => validateTags('x.tags', { [nul]: 'v' }))).toBe(
      `x.tags["a\\u0000b"]: the key ${nulProblem}`,
    );
    expect(problemOf(() => validateTags('x.tags', { ['k'.repeat(129)]: 'v' }))).toBe(
      'x.tags: a key is 129 bytes, more than the limit of 128 bytes',
    );
    expect(problemOf(() => validateTags('x.tags', { team: 'v'.repeat(1025) }))).toBe(
      'x.tags["team"]: is 1025 bytes, more than the limit of 1024 bytes',
    );
    expect(problemOf(() => validateTags('x.tags', { ['k'.repeat(128)]: 'v'.repeat(1024) }))).toBeUndefined();
  });

  it('refuses NUL in names before their pattern, and names longer than the limit', () => {
    expect(problemOf(() => validateName('entity.name', nul))).toBe(`entity.name: ${nulProblem}`);
    expect(problemOf(() => validateName('entity.name', 'x'.repeat(129)))).toBe(
      'entity.name: is longer than 128 characters',
    );
    expect(problemOf(() => validateLookupName('name', nul))).toBe(`name: ${nulProblem}`);
    expect(problemOf(() => validateLookupName('name', 'x'.repeat(129)))).toBe(
      'name: is longer than 128 characters',
    );
    // A lookup name need not be well formed: it is simply not found.
    expect(problemOf(() => validateLookupName('name', ''))).toBeUndefined();
    expect(problemOf(() => validateLookupName('name', 'no such-name'))).toBeUndefined();
  });
});

describe('integers bound for PostgreSQL columns', () => {
  it('takes versions from 0 (the latest) to 2^31 - 1', () => {
    for (const version of [0, 1, 2_147_483_647])
      expect(problemOf(() => validateVersion('version', version))).toBeUndefined();
    for (const version of [-1, 2_147_483_648, 4_294_967_295, 1.5, Number.NaN])
      expect(problemOf(() => validateVersion('version', version))).toMatch(
        /^version: must be 0 \(the latest\) or a version from 1 to 2147483647, got /,
      );
  });

  it('takes microseconds that are safe integers', () => {
    expect(problemOf(() => validateMicros('start_time', Number.MAX_SAFE_INTEGER))).toBeUndefined();
    expect(problemOf(() => validateMicros('start_time', -Number.MAX_SAFE_INTEGER))).toBeUndefined();
    expect(problemOf(() => validateMicros('start_time', 2 ** 62))).toMatch(/^start_time: is outside/);
    expect(problemOf(() => validateMicros('end_time', Number.NaN))).toMatch(/^end_time: is outside/);
  });
});

describe('free text of registry objects', () => {
  const { descriptionBytes, ownerBytes, allowedValueBytes } = inputLimits;

  it('refuses NUL and oversize text in every field of a feature view, naming it', () => {
    expect(viewProblem(view())).toBeUndefined();
    expect(viewProblem(view({ description: nul }))).toBe(`feature_view.description: ${nulProblem}`);
    expect(viewProblem(view({ description: 'd'.repeat(descriptionBytes + 1) }))).toBe(
      `feature_view.description: is ${descriptionBytes + 1} bytes, more than the limit of ${descriptionBytes} bytes`,
    );
    expect(viewProblem(view({ description: 'd'.repeat(descriptionBytes) }))).toBeUndefined();
    expect(viewProblem(view({ owner: nul }))).toBe(`feature_view.owner: ${nulProblem}`);
    expect(viewProblem(view({ owner: 'o'.repeat(ownerBytes + 1) }))).toBe(
      `feature_view.owner: is ${ownerBytes + 1} bytes, more than the limit of ${ownerBytes} bytes`,
    );
    expect(viewProblem(view({ tags: { team: nul } }))).toBe(`feature_view.tags["team"]: ${nulProblem}`);
    expect(viewProblem(view({ entities: ['user', nul] }))).toBe(`feature_view.entities[1]: ${nulProblem}`);
    expect(viewProblem(withFeature(2, { description: nul }))).toBe(
      `feature_view.features[2].description: ${nulProblem}`,
    );
    expect(viewProblem(withFeature(2, { description: 'd'.repeat(descriptionBytes + 1) }))).toMatch(
      /^feature_view\.features\[2\]\.description: is 16385 bytes, more than the limit of 16384 bytes$/,
    );
    expect(viewProblem(withFeature(0, { tags: { unit: nul } }))).toBe(
      `feature_view.features[0].tags["unit"]: ${nulProblem}`,
    );
    expect(viewProblem(withFeature(1, { name: nul }))).toBe(`feature_view.features[1].name: ${nulProblem}`);
    expect(viewProblem(withFeature(1, { allowedValues: ['x', nul] }))).toBe(
      `feature_view.features[1].allowed_values[1]: ${nulProblem}`,
    );
    expect(viewProblem(withFeature(1, { allowedValues: ['x', 'v'.repeat(allowedValueBytes + 1)] }))).toBe(
      `feature_view.features[1].allowed_values[1]: is ${allowedValueBytes + 1} bytes, more than the limit of ${allowedValueBytes} bytes`,
    );
    expect(viewProblem(withFeature(2, { allowedValues: ['1', nul] }))).toBe(
      `feature_view.features[2].allowed_values[1]: ${nulProblem}`,
    );
    expect(
      viewProblem(view({ driftMonitor: { referenceProfile: nul, intervalMs: 60_000, windowMs: 60_000 } })),
    ).toBe(`feature_view.drift_monitor.reference_profile: ${nulProblem}`);
  });

  it('refuses NUL and oversize text in entities and feature sets', () => {
    const entity = (overrides: Partial<EntityDefinition>): EntityDefinition => ({
      name: 'user',
      joinKeys: [{ name: 'user_id', type: 'string' }],
      description: '',
      ...overrides,
    });
    const entityProblem = (definition: EntityDefinition) =>
      problemOf(() => validateEntityDefinition(definition));
    expect(entityProblem(entity({}))).toBeUndefined();
    expect(entityProblem(entity({ description: nul }))).toBe(`entity.description: ${nulProblem}`);
    expect(entityProblem(entity({ description: 'é'.repeat(descriptionBytes / 2 + 1) }))).toBe(
      `entity.description: is ${descriptionBytes + 2} bytes, more than the limit of ${descriptionBytes} bytes`,
    );
    expect(entityProblem(entity({ joinKeys: [{ name: nul, type: 'string' }] }))).toBe(
      `entity.join_keys[0].name: ${nulProblem}`,
    );

    const setProblem = (features: string[], description = '') =>
      problemOf(() => validateFeatureSetDefinition({ name: 's', features, description }));
    expect(setProblem(['v:a'])).toBeUndefined();
    expect(setProblem(['v:a'], nul)).toBe(`feature_set.description: ${nulProblem}`);
    expect(setProblem(['v:a'], 'd'.repeat(descriptionBytes + 1))).toMatch(
      /^feature_set\.description: is 16385 bytes, more than the limit of 16384 bytes$/,
    );
    expect(setProblem(['v:a', `v:${nul}`])).toBe(`feature_set.features[1]: ${nulProblem}`);
    expect(setProblem([`${nul}:a`])).toBe(`feature_set.features[0]: ${nulProblem}`);
  });

  it('refuses NUL in every text field of a stream aggregation', () => {
    const definition = (
      overrides: Partial<StreamAggregationDefinition> = {},
    ): StreamAggregationDefinition => ({
      name: 'clicks',
      topic: 'clicks',
      encoding: 'json',
      keyFields: ['user'],
      entities: ['user'],
      eventTimeField: 'ts',
      eventTimeUnit: 'epoch_millis',
      watermarkBoundMicros: 0,
      allowedLatenessMicros: 0,
      idleTimeoutMs: 60_000,
      emitFollowingEmptyWindow: false,
      aggregations: [
        { name: 'n', function: 'sum', field: 'amount', sizeMicros: 3_600_000_000, slideMicros: 300_000_000 },
      ],
      ttlMs: 0,
      online: true,
      owner: '',
      description: '',
      tags: {},
      ...overrides,
    });
    const problem = (overrides: Partial<StreamAggregationDefinition>) =>
      problemOf(() => validateStreamAggregationDefinition(definition(overrides)));
    expect(problem({})).toBeUndefined();
    expect(problem({ description: nul })).toBe(`stream_aggregation.description: ${nulProblem}`);
    expect(problem({ owner: nul })).toBe(`stream_aggregation.owner: ${nulProblem}`);
    expect(problem({ tags: { team: nul } })).toBe(`stream_aggregation.tags["team"]: ${nulProblem}`);
    expect(problem({ keyFields: [nul] })).toBe(`stream_aggregation.key_fields[0]: ${nulProblem}`);
    expect(problem({ eventTimeField: nul })).toBe(`stream_aggregation.event_time_field: ${nulProblem}`);
    expect(
      problem({
        aggregations: [
          { name: 'n', function: 'sum', field: nul, sizeMicros: 3_600_000_000, slideMicros: 300_000_000 },
        ],
      }),
    ).toBe(`stream_aggregation.aggregations[0].field: ${nulProblem}`);
    expect(problem({ description: 'd'.repeat(descriptionBytes + 1) })).toMatch(
      /^stream_aggregation\.description: is 16385 bytes, more than the limit of 16384 bytes$/,
    );
  });
});

describe('entity key values and string feature values, on every write and read path', () => {
  const current: FeatureView = {
    ...view({
      features: [
        feature({ name: 'name', type: 'string' }),
        feature({ name: 'tags', type: 'string_list' }),
        feature({ name: 'blob', type: 'bytes' }),
      ],
    }),
    id: 1,
    project: 'p',
    version: 1,
    createdAt: new Date(0),
    joinKeys: [
      { name: 'user_id', type: 'string' },
      { name: 'shop_id', type: 'int64' },
    ],
  };
  const served: ServedView = {
    current,
    versions: new Map([[1, current]]),
    featureIndexes: new Map([[1, new Map(current.features.map((item, index) => [item.name, index]))]]),
  };
  const strings = (...values: string[]): Column => ({ kind: 'string', values });
  const rows = (userIds: string[], names?: string[], tags?: string[][]): RowColumns => ({
    entities: new Map<string, Column>([
      ['user_id', strings(...userIds)],
      ['shop_id', { kind: 'int64', values: userIds.map(() => 1n) }],
    ]),
    features: [
      { name: 'name', values: strings(...(names ?? userIds.map(() => 'n'))), nullRows: [] },
      {
        name: 'tags',
        values: { kind: 'list', values: (tags ?? userIds.map(() => ['t'])).map((row) => strings(...row)) },
        nullRows: [],
      },
      {
        name: 'blob',
        values: { kind: 'bytes', values: userIds.map(() => new Uint8Array([0, 0, 0])) },
        nullRows: [],
      },
    ],
    eventTimes: userIds.map(() => 1_700_000_000_000_000n),
  });
  const rowsProblem = (columns: RowColumns, firstRow = 0) =>
    problemOf(() => validateRows(served, columns, { maxBatchRows: 100, positiveTimes: true, firstRow }));
  const { entityKeyBytes } = inputLimits;

  it('one rule for a key value: no NUL, at most 1 KiB of UTF-8', () => {
    expect(keyValueProblem('k'.repeat(entityKeyBytes))).toBeUndefined();
    expect(keyValueProblem('k'.repeat(entityKeyBytes + 1))).toBe(
      `is ${entityKeyBytes + 1} bytes, more than the limit of ${entityKeyBytes} bytes`,
    );
    expect(keyValueProblem(nul)).toBe(nulProblem);
  });

  it('refuses a bad key in writes and ingest chunks, naming the row of the stream', () => {
    expect(rowsProblem(rows(['u1', 'k'.repeat(entityKeyBytes)]))).toBeUndefined();
    expect(rowsProblem(rows(['u1', nul]))).toBe(`rows[1].entities["user_id"]: ${nulProblem}`);
    expect(rowsProblem(rows(['u1', nul]), 1000)).toBe(`rows[1001].entities["user_id"]: ${nulProblem}`);
    expect(rowsProblem(rows(['é'.repeat(entityKeyBytes / 2 + 1)]))).toBe(
      `rows[0].entities["user_id"]: is ${entityKeyBytes + 2} bytes, more than the limit of ${entityKeyBytes} bytes`,
    );
  });

  it('refuses the same keys in reads (joinKeyColumns), with the same message', () => {
    const entities = rows(['u1', nul]).entities;
    expect(problemOf(() => joinKeyColumns(current, entities))).toBe(
      `rows[1].entities["user_id"]: ${nulProblem}`,
    );
    const long = rows(['k'.repeat(entityKeyBytes + 1)]).entities;
    expect(problemOf(() => joinKeyColumns(current, long))).toBe(
      `rows[0].entities["user_id"]: is ${entityKeyBytes + 1} bytes, more than the limit of ${entityKeyBytes} bytes`,
    );
    expect(problemOf(() => joinKeyColumns(current, rows(['u1', 'u2']).entities))).toBeUndefined();
  });

  it('refuses NUL in string values and string list elements, not in bytes', () => {
    expect(rowsProblem(rows(['u1', 'u2'], ['x', nul]))).toBe(`rows[1].features["name"]: ${nulProblem}`);
    expect(rowsProblem(rows(['u1', 'u2'], ['x', nul]), 10)).toBe(`rows[11].features["name"]: ${nulProblem}`);
    expect(rowsProblem(rows(['u1', 'u2'], undefined, [['t'], ['t', 'u', nul]]))).toBe(
      `rows[1].features["tags"][2]: ${nulProblem}`,
    );
    expect(rowsProblem(rows(['u1', 'u2'], ['x', 'y'], [['t'], []]))).toBeUndefined();
  });
});
