import type { ValueType } from '../domain/model.js';
import type { OnlineReadResult } from './online-features.js';

/**
 * A uniform sample of the values GetOnlineFeatures served, per (project, feature), for drift
 * reports of "what the models actually saw". A read is sampled with probability `rate`; its
 * columns are copied into the reservoirs on a later turn of the event loop (setImmediate), so
 * the response leaves first and an unsampled read costs one Math.random(). Each reservoir keeps
 * at most `capacity` values (Vitter's algorithm R over every value offered since start) and
 * counts nulls apart.
 */

export interface ServedSampleOptions {
  /** Fraction of reads sampled, 0 (off) to 1. */
  readonly rate: number;
  /** Most values kept per feature. */
  readonly capacity: number;
  /** Random numbers in [0, 1); tests pin it. */
  readonly random?: () => number;
}

export type SampledValues =
  | { readonly kind: 'numeric'; readonly values: Float64Array; readonly nullCount: number }
  | { readonly kind: 'categorical'; readonly values: readonly string[]; readonly nullCount: number };

const numericTypes: ReadonlySet<ValueType> = new Set(['int64', 'double', 'float', 'timestamp']);
const categoricalTypes: ReadonlySet<ValueType> = new Set(['string', 'bool']);

/** Whether values of `type` can be profiled, and how; undefined: they cannot (lists, bytes). */
export function profileKindOf(type: ValueType): 'numeric' | 'categorical' | undefined {
  if (numericTypes.has(type)) return 'numeric';
  if (categoricalTypes.has(type)) return 'categorical';
  return undefined;
}

interface Reservoir {
  readonly type: ValueType;
  readonly numeric: Float64Array | undefined;
  readonly categorical: string[] | undefined;
  /** Values kept (≤ capacity). */
  size: number;
  /** Non-null values offered so far. */
  seen: number;
  nullCount: number;
}

export class ServedValueSampler {
  readonly #rate: number;
  readonly #capacity: number;
  readonly #random: () => number;
  // project → "view:feature" → reservoir
  readonly #reservoirs = new Map<string, Map<string, Reservoir>>();

  constructor(options: ServedSampleOptions) {
    if (!(options.rate >= 0 && options.rate <= 1))
      throw new Error(`sample rate ${options.rate} is not in [0, 1]`);
    this.#rate = options.rate;
    this.#capacity = options.capacity;
    this.#random = options.random ?? Math.random;
  }

  get enabled(): boolean {
    return this.#rate > 0;
  }

  /** Called for every served read; samples it with probability `rate`, off the response's path. */
  offer(project: string, result: OnlineReadResult): void {
    if (this.#rate === 0 || this.#random() >= this.#rate) return;
    setImmediate(() => this.record(project, result));
  }

  /** Adds every present or null value of the read to the reservoirs (NOT_FOUND and stale values are not served values). */
  record(project: string, result: OnlineReadResult): void {
    let byFeature = this.#reservoirs.get(project);
    if (!byFeature) {
      byFeature = new Map();
      this.#reservoirs.set(project, byFeature);
    }
    for (const column of result.columns) {
      const kind = profileKindOf(column.type);
      if (!kind) continue;
      let reservoir = byFeature.get(column.reference);
      if (!reservoir || reservoir.type !== column.type) {
        reservoir = {
          type: column.type,
          numeric: kind === 'numeric' ? new Float64Array(this.#capacity) : undefined,
          categorical: kind === 'categorical' ? [] : undefined,
          size: 0,
          seen: 0,
          nullCount: 0,
        };
        byFeature.set(column.reference, reservoir);
      }
      const { values, statuses } = column;
      for (let row = 0; row < values.length; row++) {
        const status = statuses[row];
        if (status === 'null_value') reservoir.nullCount += 1;
        else if (status === 'present') this.#add(reservoir, values[row]);
      }
    }
  }

  #add(reservoir: Reservoir, value: unknown): void {
    reservoir.seen += 1;
    let slot = reservoir.size;
    if (slot >= this.#capacity) {
      slot = Math.floor(this.#random() * reservoir.seen);
      if (slot >= this.#capacity) return;
    } else reservoir.size += 1;
    if (reservoir.numeric) reservoir.numeric[slot] = Number(value);
    else (reservoir.categorical as string[])[slot] = String(value);
  }

  /** A copy of the sample of one feature ("view:feature"); undefined when nothing was sampled. */
  sample(project: string, reference: string): SampledValues | undefined {
    const reservoir = this.#reservoirs.get(project)?.get(reference);
    if (!reservoir) return undefined;
    return reservoir.numeric
      ? {
          kind: 'numeric',
          values: reservoir.numeric.slice(0, reservoir.size),
          nullCount: reservoir.nullCount,
        }
      : {
          kind: 'categorical',
          values: (reservoir.categorical as string[]).slice(0, reservoir.size),
          nullCount: reservoir.nullCount,
        };
  }
}
