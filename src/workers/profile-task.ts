import { move, transferableSymbol, valueSymbol } from 'piscina';
import type { ValueType } from '../domain/model.js';
import {
  createCategoricalAccumulator,
  createNumericAccumulator,
  encodeProfile,
} from '../domain/profile/feature-profile.js';

/**
 * Feature profiles of one segment of offline rows, or of sampled served values, run in a piscina
 * worker (DESIGN §2). Offline rows arrive as the bytes PostgreSQL sent (binary COPY rows
 * `(event_time, <features>)`, a transferred buffer); the worker decodes each column straight
 * into its accumulator and counts the values that break the features' range and allowed-value
 * rules. Profiles go back encoded, one per column, to be merged with the other segments'.
 */

/** A profiled column: its type and the rules whose breaches are counted. */
export interface ProfileColumn {
  readonly type: ValueType;
  readonly min?: number;
  readonly max?: number;
  readonly allowedValues?: readonly string[];
}

export interface RowsProfileTask {
  readonly kind: 'rows';
  readonly bytes: Uint8Array;
  readonly rows: number;
  readonly columns: readonly ProfileColumn[];
}

export interface ValuesProfileTask {
  readonly kind: 'values';
  readonly columns: readonly (
    | { readonly kind: 'numeric'; readonly values: Float64Array; readonly nullCount: number }
    | { readonly kind: 'categorical'; readonly values: readonly string[]; readonly nullCount: number }
  )[];
}

export type ProfileTask = RowsProfileTask | ValuesProfileTask;

/** Per column: values below `min`, above `max`, not among the allowed values. */
export interface RuleBreaches {
  min: number;
  max: number;
  allowedValues: number;
}

export interface ProfileTaskResult {
  /** One encoded profile per column (src/domain/profile), in order. */
  readonly profiles: Uint8Array[];
  /** The newest event time of the rows, microseconds; -Infinity without rows (or for values). */
  readonly latestEventMicros: number;
  readonly breaches: RuleBreaches[];
}

// PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
const postgresEpochMicros = 946_684_800_000_000;
const twoTo32 = 4_294_967_296;
const textDecoder = new TextDecoder();

type Sink =
  | { readonly kind: 'numeric'; readonly buffer: Float64Array; length: number }
  | { readonly kind: 'categorical' };

function isNumeric(type: ValueType): boolean {
  return type === 'double' || type === 'float' || type === 'int64' || type === 'timestamp';
}

/** Encoded, in a buffer of its own: an encoder's output may be a view of its reused buffer, which must not be transferred. */
const ownedProfileBytes = (profile: Parameters<typeof encodeProfile>[0]): Uint8Array =>
  new Uint8Array(encodeProfile(profile));

function corrupt(message: string): Error {
  return new Error(`binary COPY output of a profile read: ${message}`);
}

export function runRowsProfileTask(task: RowsProfileTask): ProfileTaskResult {
  const { bytes, rows, columns } = task;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const numeric = columns.map((column) => isNumeric(column.type));
  const numericAccumulators = columns.map((_, index) =>
    numeric[index] ? createNumericAccumulator() : undefined,
  );
  const categoricalAccumulators = columns.map((_, index) =>
    numeric[index] ? undefined : createCategoricalAccumulator(),
  );
  // Numeric values are gathered per column and handed over in one call: the accumulator's loop
  // over a Float64Array is the fast path.
  const sinks: Sink[] = columns.map((_, index) =>
    numeric[index] ? { kind: 'numeric', buffer: new Float64Array(rows), length: 0 } : { kind: 'categorical' },
  );
  const nulls = new Float64Array(columns.length);
  const breaches: RuleBreaches[] = columns.map(() => ({ min: 0, max: 0, allowedValues: 0 }));
  // float values are float32: bounds are compared rounded the same way, as on ingest.
  const low = columns.map((column) =>
    column.min === undefined ? -Infinity : column.type === 'float' ? Math.fround(column.min) : column.min,
  );
  const high = columns.map((column) =>
    column.max === undefined ? Infinity : column.type === 'float' ? Math.fround(column.max) : column.max,
  );
  const allowed = columns.map((column) =>
    column.allowedValues && column.allowedValues.length > 0 ? new Set(column.allowedValues) : undefined,
  );
  const fieldCount = columns.length + 1;
  let latest = -Infinity;
  let at = 0;
  for (let row = 0; row < rows; row++) {
    if (view.getInt16(at) !== fieldCount)
      throw corrupt(`row ${row} has ${view.getInt16(at)} fields, expected ${fieldCount}`);
    if (view.getInt32(at + 2) !== 8) throw corrupt(`row ${row}: the event time is null`);
    const eventMicros = view.getInt32(at + 6) * twoTo32 + view.getUint32(at + 10) + postgresEpochMicros;
    if (eventMicros > latest) latest = eventMicros;
    at += 14;
    for (let column = 0; column < columns.length; column++) {
      const size = view.getInt32(at);
      at += 4;
      if (size < 0) {
        nulls[column] = (nulls[column] as number) + 1;
        continue;
      }
      const type = (columns[column] as ProfileColumn).type;
      const sink = sinks[column] as Sink;
      if (sink.kind === 'numeric') {
        let value: number;
        if (type === 'double') value = view.getFloat64(at);
        else if (type === 'float') value = view.getFloat32(at);
        else if (type === 'int64') {
          value = view.getInt32(at) * twoTo32 + view.getUint32(at + 4);
          const set = allowed[column];
          if (set && !set.has(view.getBigInt64(at).toString()))
            (breaches[column] as RuleBreaches).allowedValues += 1;
        } else value = view.getInt32(at) * twoTo32 + view.getUint32(at + 4) + postgresEpochMicros;
        sink.buffer[sink.length++] = value;
        if (value < (low[column] as number)) (breaches[column] as RuleBreaches).min += 1;
        else if (value > (high[column] as number)) (breaches[column] as RuleBreaches).max += 1;
      } else {
        const text =
          type === 'bool'
            ? bytes[at] !== 0
              ? 'true'
              : 'false'
            : textDecoder.decode(bytes.subarray(at, at + size));
        categoricalAccumulators[column]?.addValue(text);
        const set = allowed[column];
        if (set && !set.has(text)) (breaches[column] as RuleBreaches).allowedValues += 1;
      }
      at += size;
    }
  }
  if (at !== bytes.byteLength) throw corrupt(`${bytes.byteLength - at} bytes after the last row`);
  const profiles = columns.map((_, column) => {
    const sink = sinks[column] as Sink;
    const nullCount = nulls[column] as number;
    if (sink.kind === 'numeric') {
      const accumulator = numericAccumulators[column] as ReturnType<typeof createNumericAccumulator>;
      accumulator.addValues(sink.buffer, sink.length);
      accumulator.addNulls(nullCount);
      return ownedProfileBytes(accumulator.finish());
    }
    const accumulator = categoricalAccumulators[column] as ReturnType<typeof createCategoricalAccumulator>;
    accumulator.addNulls(nullCount);
    return ownedProfileBytes(accumulator.finish());
  });
  return { profiles, latestEventMicros: latest, breaches };
}

export function runValuesProfileTask(task: ValuesProfileTask): ProfileTaskResult {
  const profiles = task.columns.map((column) => {
    if (column.kind === 'numeric') {
      const accumulator = createNumericAccumulator();
      accumulator.addValues(column.values, column.values.length);
      accumulator.addNulls(column.nullCount);
      return ownedProfileBytes(accumulator.finish());
    }
    const accumulator = createCategoricalAccumulator();
    accumulator.addValues(column.values);
    accumulator.addNulls(column.nullCount);
    return ownedProfileBytes(accumulator.finish());
  });
  return {
    profiles,
    latestEventMicros: -Infinity,
    breaches: task.columns.map(() => ({ min: 0, max: 0, allowedValues: 0 })),
  };
}

export function runProfileTask(task: ProfileTask): ProfileTaskResult {
  return task.kind === 'rows' ? runRowsProfileTask(task) : runValuesProfileTask(task);
}

export default function profileTask(task: ProfileTask) {
  const result = runProfileTask(task);
  return move({
    get [transferableSymbol]() {
      return result.profiles.map((profile) => profile.buffer as ArrayBuffer);
    },
    get [valueSymbol]() {
      return result;
    },
  } as unknown as ArrayBuffer);
}
