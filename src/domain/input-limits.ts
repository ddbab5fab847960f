import { invalidArgument } from './errors.js';

/**
 * Limits of what clients may send, in one place: names, free text, tags, entity key values, and
 * the integers that end up in PostgreSQL columns. Every path that takes a value checks it here
 * (online and offline alike: a key valid online is valid offline), so bad input is refused with
 * INVALID_ARGUMENT naming the field and the limit, never by the database as INTERNAL. README
 * ("Limits") documents the same numbers.
 *
 * Sizes of text are bytes of UTF-8. NUL (U+0000) is refused in every string that PostgreSQL
 * stores or compares (its text and jsonb types cannot hold it); bytes values may hold any byte.
 */
export const inputLimits = {
  /** Names of projects, entities, join keys, views, features, sets, aggregations, profiles. */
  nameLength: 128,
  /** Descriptions of entities, views, features, feature sets, stream aggregations, profiles. */
  descriptionBytes: 16 * 1024,
  /** The owner of a view or stream aggregation. */
  ownerBytes: 1024,
  /** Tags of one view, feature or stream aggregation. */
  tagsPerObject: 64,
  tagKeyBytes: 128,
  tagValueBytes: 1024,
  /** One allowed value of a feature's validation rule. */
  allowedValueBytes: 1024,
  /** Event field names of stream aggregations (key, time and input fields). */
  eventFieldLength: 256,
  /** One string join-key value (int64 keys are 8 bytes). */
  entityKeyBytes: 1024,
  /** Versions of feature views and reference profiles: PostgreSQL `integer`. */
  maxVersion: 2_147_483_647,
  /**
   * The latest date a google.protobuf.Timestamp field may give (an API key's expiry): the end of
   * year 9999, the Timestamp's own range, well inside PostgreSQL's timestamptz and a Date's.
   */
  maxTimestampMs: Date.UTC(9999, 11, 31, 23, 59, 59, 999),
} as const;

const nul = '\u0000';

/** What is wrong with a string of at most `maxBytes` bytes of UTF-8 and no NUL; undefined if nothing. */
export function textProblem(value: string, maxBytes: number): string | undefined {
  // A UTF-16 code unit is at most 3 bytes of UTF-8: short strings need no count.
  if (value.length * 3 > maxBytes) {
    const bytes = Buffer.byteLength(value, 'utf8');
    if (bytes > maxBytes) return `is ${bytes} bytes, more than the limit of ${maxBytes} bytes`;
  }
  if (value.includes(nul)) return 'contains a NUL character';
  return undefined;
}

/** Throws INVALID_ARGUMENT naming `field` unless `value` is text of at most `maxBytes` without NUL. */
export function validateText(field: string, value: string, maxBytes: number): void {
  const problem = textProblem(value, maxBytes);
  if (problem) throw invalidArgument(field, problem);
}

/** `field["key"]`, the key quoted as JSON so that control characters show as escapes. */
const tagField = (field: string, key: string): string => `${field}[${JSON.stringify(key)}]`;

/** At most `tagsPerObject` tags; keys and values are text within their limits. */
export function validateTags(field: string, tags: Readonly<Record<string, string>>): void {
  const entries = Object.entries(tags);
  if (entries.length > inputLimits.tagsPerObject)
    throw invalidArgument(field, `${entries.length} tags, at most ${inputLimits.tagsPerObject}`);
  for (const [key, value] of entries) {
    const keyProblem = textProblem(key, inputLimits.tagKeyBytes);
    if (keyProblem)
      // A long key is not repeated in the message; a short one is, escaped.
      throw keyProblem.startsWith('is ')
        ? invalidArgument(field, `a key ${keyProblem}`)
        : invalidArgument(tagField(field, key), `the key ${keyProblem}`);
    validateText(tagField(field, key), value, inputLimits.tagValueBytes);
  }
}

/** The problem of a string join-key value, or undefined: the same rule on every path. */
export function keyValueProblem(value: string): string | undefined {
  return textProblem(value, inputLimits.entityKeyBytes);
}

/** A name used to look an object up: no NUL, not longer than a name can be; empty is allowed. */
export function validateLookupName(field: string, name: string): void {
  if (name.includes(nul)) throw invalidArgument(field, 'contains a NUL character');
  if (name.length > inputLimits.nameLength)
    throw invalidArgument(field, `is longer than ${inputLimits.nameLength} characters`);
}

/** A version asked for: 0 (the latest) or a whole number up to `maxVersion`. */
export function validateVersion(field: string, version: number): void {
  if (!Number.isInteger(version) || version < 0 || version > inputLimits.maxVersion)
    throw invalidArgument(
      field,
      `must be 0 (the latest) or a version from 1 to ${inputLimits.maxVersion}, got ${version}`,
    );
}

/**
 * Microseconds since the epoch that every store can hold: a safe integer (±285 years around
 * 1970, inside PostgreSQL's timestamptz range).
 */
export function validateMicros(field: string, micros: number): void {
  if (!Number.isSafeInteger(micros))
    throw invalidArgument(
      field,
      `is outside the representable range of microseconds since the epoch (±${Number.MAX_SAFE_INTEGER})`,
    );
}
