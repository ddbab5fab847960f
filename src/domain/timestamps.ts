/**
 * Text times: ISO 8601 with the fraction kept to the microsecond, or integer microseconds since
 * the epoch. Shared by the CLI's file readers and the stream tier's event decoder.
 */

const isoPattern = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:?\d{2})?$/;

/** Microseconds since the epoch of an ISO 8601 time, or undefined when `text` is not one. */
export function parseIsoMicros(text: string): number | undefined {
  const match = isoPattern.exec(text);
  if (!match) return undefined;
  const [, date, time, fraction = '', zone = 'Z'] = match;
  const millis = Date.parse(`${date}T${time}${zone}`);
  if (Number.isNaN(millis)) return undefined;
  return millis * 1000 + Number(fraction.padEnd(6, '0'));
}

/** Microseconds since the epoch from integer micros or ISO 8601 (fraction kept to the microsecond). */
export function parseTimestampMicros(text: string): number {
  if (/^-?\d+$/.test(text)) {
    const micros = Number(text);
    if (!Number.isSafeInteger(micros)) throw new Error('is outside the representable range');
    return micros;
  }
  if (!isoPattern.test(text)) throw new Error('is not integer microseconds or an ISO 8601 time');
  const micros = parseIsoMicros(text);
  if (micros === undefined) throw new Error('is not a valid time');
  return micros;
}
