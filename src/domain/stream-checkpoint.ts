/**
 * The bytes of a stream checkpoint: window state, watermarks and the source positions they
 * reflect, written together so a restart resumes exactly where the state stands (DESIGN §4,
 * exactly-once results). The consumer decides the scope — one checkpoint per consumer, or one per
 * Kafka partition so a partition's state can move with it on a rebalance.
 *
 * msgpack, with the same settings as the online codec: integers beyond 32 bits stay doubles,
 * bigints (int64 values kept by `last`) stay bigints, floats keep all 64 bits, so a restored state
 * is bit for bit the one saved.
 */
import { Packr } from 'msgpackr';
import { FStoreError } from './errors.js';
import type { WatermarkSnapshot } from './watermarks.js';
import type { WindowStateSnapshot } from './window-aggregator.js';

export interface StreamCheckpoint {
  /** Where the source is to be read from after a restore, e.g. Kafka partition → next offset; opaque here. */
  readonly positions: Readonly<Record<string, string>>;
  readonly watermarks: WatermarkSnapshot;
  readonly windows: WindowStateSnapshot;
}

const checkpointFormat = 1;

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'bigint' });

export function encodeStreamCheckpoint(checkpoint: StreamCheckpoint): Uint8Array {
  return packr.pack({
    format: checkpointFormat,
    positions: checkpoint.positions,
    watermarks: checkpoint.watermarks,
    windows: checkpoint.windows,
  });
}

function dataLoss(problem: string, cause?: unknown): FStoreError {
  return new FStoreError('data_loss', `stream checkpoint: ${problem}`, { cause });
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);

/**
 * The inverse of `encodeStreamCheckpoint`. Checks the envelope and the positions; the window and
 * watermark snapshots are checked in depth when they are restored (createWindowAggregator,
 * createWatermarkTracker). Corrupt bytes throw a `data_loss` FStoreError.
 */
export function decodeStreamCheckpoint(bytes: Uint8Array): StreamCheckpoint {
  let decoded: unknown;
  try {
    decoded = packr.unpack(bytes);
  } catch (error) {
    throw dataLoss('the bytes are not msgpack', error);
  }
  if (!isRecord(decoded)) throw dataLoss('not a map');
  if (decoded.format !== checkpointFormat) throw dataLoss(`unknown format ${String(decoded.format)}`);
  const { positions, watermarks, windows } = decoded;
  if (!isRecord(positions) || !Object.values(positions).every((position) => typeof position === 'string'))
    throw dataLoss('positions is not a map of strings');
  if (!isRecord(watermarks) || !isRecord(windows)) throw dataLoss('watermarks or windows is missing');
  return {
    positions: positions as Record<string, string>,
    watermarks: watermarks as unknown as WatermarkSnapshot,
    windows: windows as unknown as WindowStateSnapshot,
  };
}
