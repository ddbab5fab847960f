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
