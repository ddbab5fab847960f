/** The registry's objects as the core sees them: plain data, no protobuf, no I/O. */

export const valueTypes = [
  'int64',
  'double',
  'float',
  'string',
  'bool',
  'bytes',
  'timestamp',
  'int64_list',
  'double_list',
  'float_list',
  'string_list',
  'bool_list',
  'bytes_list',
] as const;
export type ValueType = (typeof valueTypes)[number];

export const keyTypes = ['string', 'int64'] as const;
export type KeyType = (typeof keyTypes)[number];

export const featureViewSources = ['batch', 'push', 'stream'] as const;
export type FeatureViewSource = (typeof featureViewSources)[number];

/**
 * A feature value. int64 is a bigint; timestamp is microseconds since the epoch (a number, exact
 * up to the year 2255); float is a number rounded to float32; lists are arrays of the element.
 */
export type ScalarValue = number | bigint | string | boolean | Uint8Array;
export type FeatureValue = ScalarValue | readonly ScalarValue[] | null;

/** A join-key value: string keys are strings, int64 keys are bigints. */
export type KeyValue = string | bigint;

export interface JoinKey {
  readonly name: string;
  readonly type: KeyType;
}

export interface EntityDefinition {
  readonly name: string;
  readonly joinKeys: readonly JoinKey[];
  readonly description: string;
}

export interface Entity extends EntityDefinition {
  readonly updatedAt: Date;
}

export interface FeatureDefinition {
  readonly name: string;
  readonly type: ValueType;
  readonly description: string;
  readonly tags: Readonly<Record<string, string>>;
  // Validation rules, checked on every row written (ingest, online writes); absent: no rule.
  /** Nulls are refused. */
  readonly required?: boolean;
  /**
   * Inclusive bounds of int64, double, float and timestamp (microseconds) features, checked on
   * every element of their lists; NaN is refused when either is set.
   */
  readonly min?: number;
  readonly max?: number;
  /** Allowed values of a string or int64 feature (int64 as decimal text); absent or empty: any. */
  readonly allowedValues?: readonly string[];
  // Monitoring rules: they judge stored data, they refuse nothing.
  /** Most nulls among a checked range's values, a fraction in [0, 1]. */
  readonly maxNullRate?: number;
  /** PSI bands of this feature's drift (defaults 0.1 and 0.25). */
  readonly psiWarn?: number;
  readonly psiAlert?: number;
}

/** A scheduled drift check of a view against a saved reference profile. */
export interface DriftMonitorDefinition {
  /** The reference profile's name; its latest version is used. */
  readonly referenceProfile: string;
  readonly intervalMs: number;
  /** How far back from the check's time the current data reaches. */
  readonly windowMs: number;
}

export interface FeatureViewDefinition {
  readonly name: string;
  /** Entity names, in key order. */
  readonly entities: readonly string[];
  readonly features: readonly FeatureDefinition[];
  /** Max age in milliseconds; 0 means values never age out. */
  readonly ttlMs: number;
  readonly online: boolean;
  readonly source: FeatureViewSource;
  readonly owner: string;
  readonly description: string;
  readonly tags: Readonly<Record<string, string>>;
  /** Monitoring rule: the newest event should be at most this old (milliseconds); absent: no rule. */
  readonly freshnessMs?: number;
  readonly driftMonitor?: DriftMonitorDefinition;
}

/** One recorded version of a feature view. */
export interface FeatureView extends FeatureViewDefinition {
  /** Stable across versions; names the view in online keys so keys stay short. */
  readonly id: number;
  readonly project: string;
  readonly version: number;
  readonly createdAt: Date;
  /** The join keys of `entities`, in order, as they were when this version was applied. */
  readonly joinKeys: readonly JoinKey[];
}

export interface FeatureSetDefinition {
  readonly name: string;
  /** "view:feature" references. */
  readonly features: readonly string[];
  readonly description: string;
}

export interface FeatureSet extends FeatureSetDefinition {
  readonly updatedAt: Date;
}

export type ApplyOutcome = 'created' | 'unchanged' | 'updated';

export const microsPerMilli = 1000;
