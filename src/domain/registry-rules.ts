import { FStoreError, invalidArgument } from './errors.js';
import { inputLimits, validateTags, validateText } from './input-limits.js';
import {
  type DriftMonitorDefinition,
  type EntityDefinition,
  type FeatureDefinition,
  type FeatureSetDefinition,
  type FeatureViewDefinition,
  featureViewSources,
  type JoinKey,
  keyTypes,
  type ValueType,
  valueTypes,
} from './model.js';

/**
 * Limits of the registry's objects; the proto comments document the same numbers. Text limits
 * (descriptions, owners, tags) are in `inputLimits`.
 */
export const registryLimits = {
  nameLength: inputLimits.nameLength,
  joinKeysPerEntity: 8,
  entitiesPerView: 4,
  featuresPerView: 1000,
  featuresPerSet: 1000,
  maxTtlMs: 100 * 365 * 24 * 3600 * 1000, // a century: beyond it a ttl is a typo
  allowedValues: 10_000,
  minMonitorMs: 1_000, // one second: a drift check is a scan of offline rows, not a hot loop
} as const;

const namePattern = /^[A-Za-z][A-Za-z0-9_]*$/;

export function validateName(field: string, name: string, pattern: RegExp = namePattern): void {
  if (name.length === 0) throw invalidArgument(field, 'is required');
  if (name.length > registryLimits.nameLength)
    throw invalidArgument(field, `is longer than ${registryLimits.nameLength} characters`);
  // Before the pattern, whose message would echo the name with its NUL.
  if (name.includes('\u0000')) throw invalidArgument(field, 'contains a NUL character');
  if (!pattern.test(name))
    throw invalidArgument(
      field,
      pattern === namePattern
        ? `"${name}" must start with a letter and hold only letters, digits and _`
        : `"${name}" must start with a letter or digit and hold only letters, digits and _ - .`,
    );
}

function assertUnique(field: string, names: readonly string[]): void {
  const seen = new Set<string>();
  for (const [index, name] of names.entries()) {
    if (seen.has(name)) throw invalidArgument(`${field}[${index}]`, `duplicate name "${name}"`);
    seen.add(name);
  }
}

export function validateEntityDefinition(entity: EntityDefinition, field = 'entity'): void {
  validateName(`${field}.name`, entity.name);
  if (entity.joinKeys.length === 0)
    throw invalidArgument(`${field}.join_keys`, 'at least one join key is required');
  if (entity.joinKeys.length > registryLimits.joinKeysPerEntity)
    throw invalidArgument(`${field}.join_keys`, `at most ${registryLimits.joinKeysPerEntity} join keys`);
  entity.joinKeys.forEach((key, index) => {
    validateName(`${field}.join_keys[${index}].name`, key.name);
    if (!keyTypes.includes(key.type))
      throw invalidArgument(
        `${field}.join_keys[${index}].type`,
        'must be VALUE_TYPE_STRING or VALUE_TYPE_INT64',
      );
  });
  assertUnique(
    `${field}.join_keys`,
    entity.joinKeys.map((key) => key.name),
  );
  validateText(`${field}.description`, entity.description ?? '', inputLimits.descriptionBytes);
}

/** The types whose features may have bounds (`min`, `max`): numbers, timestamps, their lists. */
const boundedValueTypes: readonly ValueType[] = [
  'int64',
  'double',
  'float',
  'timestamp',
  'int64_list',
  'double_list',
  'float_list',
];

/** A feature's validation rules: bounds only on bounded types, finite, min ≤ max. */
function validateFeatureRules(feature: FeatureDefinition, field: string): void {
  if (feature.required !== undefined && typeof feature.required !== 'boolean')
    throw invalidArgument(`${field}.required`, 'must be true or false');
  for (const bound of ['min', 'max'] as const) {
    const value = feature[bound];
    if (value === undefined) continue;
    if (!boundedValueTypes.includes(feature.type))
      throw invalidArgument(
        `${field}.${bound}`,
        `applies only to int64, double, float and timestamp features and their lists, not to ${feature.type}`,
      );
    // Also keeps the definition storable: JSON has no NaN or Infinity.
    if (typeof value !== 'number' || !Number.isFinite(value))
      throw invalidArgument(`${field}.${bound}`, `must be a finite number, got ${String(value)}`);
  }
  if (feature.min !== undefined && feature.max !== undefined && feature.min > feature.max)
    throw invalidArgument(`${field}.min`, `${feature.min} is above the maximum ${feature.max}`);
  const allowed = feature.allowedValues ?? [];
  if (allowed.length > 0) {
    if (feature.type !== 'string' && feature.type !== 'int64')
      throw invalidArgument(
        `${field}.allowed_values`,
        `applies only to string and int64 features, not to ${feature.type}`,
      );
    if (allowed.length > registryLimits.allowedValues)
      throw invalidArgument(`${field}.allowed_values`, `at most ${registryLimits.allowedValues} values`);
    allowed.forEach((value, index) => {
      validateText(`${field}.allowed_values[${index}]`, value, inputLimits.allowedValueBytes);
    });
    if (feature.type === 'int64')
      allowed.forEach((value, index) => {
        if (!/^-?\d{1,19}$/.test(value) || BigInt(value) !== BigInt.asIntN(64, BigInt(value)))
          throw invalidArgument(`${field}.allowed_values[${index}]`, `"${value}" is not an int64 in decimal`);
      });
    assertUnique(`${field}.allowed_values`, allowed);
  }
  if (
    feature.maxNullRate !== undefined &&
    !(typeof feature.maxNullRate === 'number' && feature.maxNullRate >= 0 && feature.maxNullRate <= 1)
  )
    throw invalidArgument(
      `${field}.max_null_rate`,
      `must be a fraction from 0 to 1, got ${String(feature.maxNullRate)}`,
    );
  for (const band of ['psiWarn', 'psiAlert'] as const) {
    const value = feature[band];
    if (value !== undefined && !(typeof value === 'number' && Number.isFinite(value) && value > 0))
      throw invalidArgument(
        `${field}.${band === 'psiWarn' ? 'psi_warn' : 'psi_alert'}`,
        `must be a positive number, got ${String(value)}`,
      );
  }
  if (feature.psiWarn !== undefined && feature.psiAlert !== undefined && feature.psiWarn > feature.psiAlert)
    throw invalidArgument(`${field}.psi_warn`, `${feature.psiWarn} is above psi_alert ${feature.psiAlert}`);
}

const wholeMsUpTo = (value: number, max: number): boolean =>
  Number.isInteger(value) && value >= 0 && value <= max;

export function validateFeatureViewDefinition(view: FeatureViewDefinition, field = 'feature_view'): void {
  validateName(`${field}.name`, view.name);
  if (view.entities.length === 0)
    throw invalidArgument(`${field}.entities`, 'at least one entity is required');
  if (view.entities.length > registryLimits.entitiesPerView)
    throw invalidArgument(`${field}.entities`, `at most ${registryLimits.entitiesPerView} entities`);
  for (const [index, name] of view.entities.entries()) validateName(`${field}.entities[${index}]`, name);
  assertUnique(`${field}.entities`, view.entities);
  if (view.features.length === 0)
    throw invalidArgument(`${field}.features`, 'at least one feature is required');
  if (view.features.length > registryLimits.featuresPerView)
    throw invalidArgument(`${field}.features`, `at most ${registryLimits.featuresPerView} features`);
  view.features.forEach((feature, index) => {
    validateName(`${field}.features[${index}].name`, feature.name);
    if (!valueTypes.includes(feature.type))
      throw invalidArgument(`${field}.features[${index}].type`, 'a value type is required');
    validateText(
      `${field}.features[${index}].description`,
      feature.description ?? '',
      inputLimits.descriptionBytes,
    );
    validateTags(`${field}.features[${index}].tags`, feature.tags ?? {});
    validateFeatureRules(feature, `${field}.features[${index}]`);
  });
  assertUnique(
    `${field}.features`,
    view.features.map((feature) => feature.name),
  );
  if (!Number.isInteger(view.ttlMs) || view.ttlMs < 0 || view.ttlMs > registryLimits.maxTtlMs)
    throw invalidArgument(`${field}.ttl`, `must be whole milliseconds from 0 to ${registryLimits.maxTtlMs}`);
  if (!featureViewSources.includes(view.source)) throw invalidArgument(`${field}.source`, 'unknown source');
  validateText(`${field}.owner`, view.owner ?? '', inputLimits.ownerBytes);
  validateText(`${field}.description`, view.description ?? '', inputLimits.descriptionBytes);
  validateTags(`${field}.tags`, view.tags ?? {});
  if (
    view.freshnessMs !== undefined &&
    !(wholeMsUpTo(view.freshnessMs, registryLimits.maxTtlMs) && view.freshnessMs > 0)
  )
    throw invalidArgument(
      `${field}.freshness`,
      `must be whole milliseconds from 1 to ${registryLimits.maxTtlMs}`,
    );
  const monitor = view.driftMonitor;
  if (monitor) {
    validateName(`${field}.drift_monitor.reference_profile`, monitor.referenceProfile, profileNamePattern);
    for (const [key, name] of [
      ['intervalMs', 'interval'],
      ['windowMs', 'window'],
    ] as const)
      if (!wholeMsUpTo(monitor[key], registryLimits.maxTtlMs) || monitor[key] < registryLimits.minMonitorMs)
        throw invalidArgument(
          `${field}.drift_monitor.${name}`,
          `must be whole milliseconds from ${registryLimits.minMonitorMs} to ${registryLimits.maxTtlMs}`,
        );
  }
}

/** Names of reference profiles: like other names, plus - and . (versions such as "2026-q4.v1"). */
export const profileNamePattern = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** Join keys of a view's entities, in order; fails when two entities share a join-key name. */
export function resolveViewJoinKeys(
  view: FeatureViewDefinition,
  entitiesByName: ReadonlyMap<string, EntityDefinition>,
  field = 'feature_view',
): JoinKey[] {
  const joinKeys: JoinKey[] = [];
  const seen = new Set<string>();
  view.entities.forEach((entityName, index) => {
    const entity = entitiesByName.get(entityName);
    if (!entity)
      throw new FStoreError('not_found', `${field}.entities[${index}]: unknown entity "${entityName}"`);
    for (const key of entity.joinKeys) {
      if (seen.has(key.name))
        throw invalidArgument(
          `${field}.entities[${index}]`,
          `join key "${key.name}" of entity "${entityName}" is also a join key of another entity of the view`,
        );
      seen.add(key.name);
      joinKeys.push(key);
    }
  });
  return joinKeys;
}

const sameJoinKeys = (a: readonly JoinKey[], b: readonly JoinKey[]): boolean =>
  a.length === b.length &&
  a.every((key, index) => key.name === b[index]?.name && key.type === b[index]?.type);

function canonicalTags(tags: Readonly<Record<string, string>>): string {
  return JSON.stringify(Object.entries(tags).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

const sameDriftMonitor = (a?: DriftMonitorDefinition, b?: DriftMonitorDefinition): boolean =>
  a === undefined || b === undefined
    ? a === b
    : a.referenceProfile === b.referenceProfile && a.intervalMs === b.intervalMs && a.windowMs === b.windowMs;

/** Whether applying `next` over `current` changes anything at all. */
export function isSameFeatureView(
  current: FeatureViewDefinition & { readonly joinKeys: readonly JoinKey[] },
  next: FeatureViewDefinition,
  nextJoinKeys: readonly JoinKey[],
): boolean {
  return (
    current.entities.join('\u0000') === next.entities.join('\u0000') &&
    sameJoinKeys(current.joinKeys, nextJoinKeys) &&
    current.features.length === next.features.length &&
    current.features.every((feature, index) => {
      const other = next.features[index];
      return (
        other !== undefined &&
        feature.name === other.name &&
        feature.type === other.type &&
        feature.description === other.description &&
        canonicalTags(feature.tags) === canonicalTags(other.tags) &&
        (feature.required ?? false) === (other.required ?? false) &&
        feature.min === other.min &&
        feature.max === other.max &&
        (feature.allowedValues ?? []).join('\u0000') === (other.allowedValues ?? []).join('\u0000') &&
        feature.maxNullRate === other.maxNullRate &&
        feature.psiWarn === other.psiWarn &&
        feature.psiAlert === other.psiAlert
      );
    }) &&
    current.ttlMs === next.ttlMs &&
    current.online === next.online &&
    current.source === next.source &&
    current.owner === next.owner &&
    current.description === next.description &&
    canonicalTags(current.tags) === canonicalTags(next.tags) &&
    current.freshnessMs === next.freshnessMs &&
    sameDriftMonitor(current.driftMonitor, next.driftMonitor)
  );
}

/**
 * The reasons `next` cannot replace `current` without breaking readers of stored values: a
 * removed feature, a changed feature type, changed entities or join keys. Empty when compatible
 * (added features, reordered features, ttl and metadata changes). Validation rules may change
 * either way, tighter included: they judge rows as they are written, and rows already stored
 * stay readable whatever the new rules say.
 */
export function findIncompatibleChanges(
  current: FeatureViewDefinition & { readonly joinKeys: readonly JoinKey[] },
  next: FeatureViewDefinition,
  nextJoinKeys: readonly JoinKey[],
): string[] {
  const reasons: string[] = [];
  if (!sameJoinKeys(current.joinKeys, nextJoinKeys))
    reasons.push(
      `join keys change from (${current.joinKeys.map((k) => `${k.name} ${k.type}`).join(', ')}) to (${nextJoinKeys
        .map((k) => `${k.name} ${k.type}`)
        .join(', ')})`,
    );
  const nextByName = new Map(next.features.map((feature) => [feature.name, feature]));
  for (const feature of current.features) {
    const replacement = nextByName.get(feature.name);
    if (!replacement) reasons.push(`feature "${feature.name}" is removed`);
    else if (replacement.type !== feature.type)
      reasons.push(`feature "${feature.name}" changes type from ${feature.type} to ${replacement.type}`);
  }
  return reasons;
}

export function isSameEntity(current: EntityDefinition, next: EntityDefinition): boolean {
  return current.description === next.description && sameJoinKeys(current.joinKeys, next.joinKeys);
}

export function isSameEntityKeys(current: EntityDefinition, next: EntityDefinition): boolean {
  return sameJoinKeys(current.joinKeys, next.joinKeys);
}

export interface FeatureReference {
  readonly view: string;
  readonly feature: string;
}

export function parseFeatureReference(field: string, reference: string): FeatureReference {
  const separator = reference.indexOf(':');
  if (separator <= 0 || separator !== reference.lastIndexOf(':') || separator === reference.length - 1)
    throw invalidArgument(field, `"${reference}" is not a "view:feature" reference`);
  return { view: reference.slice(0, separator), feature: reference.slice(separator + 1) };
}

export function validateFeatureSetDefinition(featureSet: FeatureSetDefinition, field = 'feature_set'): void {
  validateName(`${field}.name`, featureSet.name);
  if (featureSet.features.length === 0)
    throw invalidArgument(`${field}.features`, 'at least one feature is required');
  if (featureSet.features.length > registryLimits.featuresPerSet)
    throw invalidArgument(`${field}.features`, `at most ${registryLimits.featuresPerSet} features`);
  for (const [index, reference] of featureSet.features.entries()) {
    // Longer than two names and a colon, a reference cannot name anything.
    validateText(`${field}.features[${index}]`, reference, 2 * inputLimits.nameLength + 1);
    parseFeatureReference(`${field}.features[${index}]`, reference);
  }
  assertUnique(`${field}.features`, featureSet.features);
  validateText(`${field}.description`, featureSet.description ?? '', inputLimits.descriptionBytes);
}
