import { describe, expect, it } from 'vitest';
import type { FeatureDefinition, FeatureViewDefinition, JoinKey } from '../../src/domain/model.js';
import {
  findIncompatibleChanges,
  isSameFeatureView,
  validateFeatureViewDefinition,
} from '../../src/domain/registry-rules.js';

const joinKeys: JoinKey[] = [{ name: 'user_id', type: 'string' }];

const view = (...features: FeatureDefinition[]): FeatureViewDefinition => ({
  name: 'v',
  entities: ['user'],
  features,
  ttlMs: 0,
  online: true,
  source: 'push',
  owner: '',
  description: '',
  tags: {},
});

const feature = (overrides: Partial<FeatureDefinition> = {}): FeatureDefinition => ({
  name: 'amount',
  type: 'double',
  description: '',
  tags: {},
  ...overrides,
});

const problemOf = (definition: FeatureViewDefinition): string | undefined => {
  try {
    validateFeatureViewDefinition(definition);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
};

describe('feature validation rules in the registry', () => {
  it('accepts bounds on numbers, timestamps and their lists, and required on any type', () => {
    for (const type of [
      'int64',
      'double',
      'float',
      'timestamp',
      'int64_list',
      'double_list',
      'float_list',
    ] as const)
      expect(problemOf(view(feature({ type, min: -1, max: 1 })))).toBeUndefined();
    for (const type of ['string', 'bool', 'bytes', 'string_list'] as const)
      expect(problemOf(view(feature({ type, required: true })))).toBeUndefined();
    expect(problemOf(view(feature({ min: 3, max: 3 })))).toBeUndefined();
  });

  it('refuses bounds on other types, non-finite bounds and min above max, naming the field', () => {
    expect(problemOf(view(feature(), feature({ name: 'b', type: 'bool', max: 1 })))).toBe(
      'feature_view.features[1].max: applies only to int64, double, float and timestamp features and their lists, not to bool',
    );
    expect(problemOf(view(feature({ min: Number.NaN })))).toBe(
      'feature_view.features[0].min: must be a finite number, got NaN',
    );
    expect(problemOf(view(feature({ max: Number.POSITIVE_INFINITY })))).toBe(
      'feature_view.features[0].max: must be a finite number, got Infinity',
    );
    expect(problemOf(view(feature({ min: 2, max: 1 })))).toBe(
      'feature_view.features[0].min: 2 is above the maximum 1',
    );
  });

  it('makes any rule change a new version, never an incompatible one', () => {
    const current = { ...view(feature({ min: 0 })), joinKeys };
    const changes = [
      view(feature({ min: 1 })),
      view(feature({ min: 0, max: 10 })),
      view(feature()),
      view(feature({ min: 0, required: true })),
    ];
    for (const next of changes) {
      expect(isSameFeatureView(current, next, joinKeys)).toBe(false);
      expect(findIncompatibleChanges(current, next, joinKeys)).toEqual([]);
    }
    // An absent `required` is the same as false.
    expect(isSameFeatureView(current, view(feature({ min: 0, required: false })), joinKeys)).toBe(true);
  });
});

describe('data-quality and drift rules in the registry', () => {
  it('accepts allowed values on strings and int64s, null-rate limits, PSI bands, freshness and a drift monitor', () => {
    expect(problemOf(view(feature({ type: 'string', allowedValues: ['a', 'b'] })))).toBeUndefined();
    expect(
      problemOf(view(feature({ type: 'int64', allowedValues: ['-3', '9223372036854775807'] }))),
    ).toBeUndefined();
    expect(
      problemOf(view(feature({ maxNullRate: 0 }), feature({ name: 'b', maxNullRate: 1 }))),
    ).toBeUndefined();
    expect(problemOf(view(feature({ psiWarn: 0.05, psiAlert: 0.05 })))).toBeUndefined();
    expect(
      problemOf({
        ...view(feature()),
        freshnessMs: 60_000,
        driftMonitor: { referenceProfile: 'jan-2026.v1', intervalMs: 1_000, windowMs: 86_400_000 },
      }),
    ).toBeUndefined();
  });

  it('refuses rules that cannot hold, naming the field', () => {
    const cases: [FeatureViewDefinition, string][] = [
      [
        view(feature({ allowedValues: ['1'] })),
        'feature_view.features[0].allowed_values: applies only to string and int64 features, not to double',
      ],
      [
        view(feature({ type: 'int64', allowedValues: ['1', '9223372036854775808'] })),
        'feature_view.features[0].allowed_values[1]: "9223372036854775808" is not an int64 in decimal',
      ],
      [
        view(feature({ type: 'string', allowedValues: ['a', 'a'] })),
        'feature_view.features[0].allowed_values[1]: duplicate name "a"',
      ],
      [
        view(feature({ maxNullRate: 1.5 })),
        'feature_view.features[0].max_null_rate: must be a fraction from 0 to 1, got 1.5',
      ],
      [view(feature({ psiWarn: 0 })), 'feature_view.features[0].psi_warn: must be a positive number, got 0'],
      [
        view(feature({ psiWarn: 0.3, psiAlert: 0.2 })),
        'feature_view.features[0].psi_warn: 0.3 is above psi_alert 0.2',
      ],
      [
        { ...view(feature()), freshnessMs: 0 },
        'feature_view.freshness: must be whole milliseconds from 1 to 3153600000000',
      ],
      [
        { ...view(feature()), driftMonitor: { referenceProfile: 'ref', intervalMs: 999, windowMs: 60_000 } },
        'feature_view.drift_monitor.interval: must be whole milliseconds from 1000 to 3153600000000',
      ],
      [
        { ...view(feature()), driftMonitor: { referenceProfile: '', intervalMs: 1000, windowMs: 60_000 } },
        'feature_view.drift_monitor.reference_profile: is required',
      ],
    ];
    for (const [definition, message] of cases) expect(problemOf(definition)).toBe(message);
  });

  it('makes a monitoring rule change a new, compatible version', () => {
    const current = { ...view(feature()), joinKeys };
    for (const next of [
      view(feature({ maxNullRate: 0.1 })),
      view(feature({ psiAlert: 0.5 })),
      { ...view(feature()), freshnessMs: 1_000 },
      { ...view(feature()), driftMonitor: { referenceProfile: 'r', intervalMs: 1_000, windowMs: 1_000 } },
    ]) {
      expect(isSameFeatureView(current, next, joinKeys)).toBe(false);
      expect(findIncompatibleChanges(current, next, joinKeys)).toEqual([]);
    }
  });
});
