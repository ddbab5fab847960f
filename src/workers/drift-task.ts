import { computeDrift, type DriftOptions, type DriftResult } from '../domain/profile/drift.js';
import { decodeProfile } from '../domain/profile/feature-profile.js';

/**
 * Drift measures of feature pairs (reference, current), run in a piscina worker: the KS statistic
 * walks both sketches' buckets and the PSI bins cut the reference's quantiles, per feature.
 * Profiles arrive encoded; results are plain numbers.
 */

export interface DriftTask {
  readonly pairs: readonly {
    readonly reference: Uint8Array;
    readonly current: Uint8Array;
    readonly options: DriftOptions;
  }[];
}

/** Per pair: the measures, or the error that stopped them (a message and a code). */
export type DriftTaskResult = (
  | { readonly ok: true; readonly drift: DriftResult }
  | { readonly ok: false; readonly code: string; readonly message: string }
)[];

export function runDriftTask(task: DriftTask): DriftTaskResult {
  return task.pairs.map(({ reference, current, options }) => {
    try {
      return { ok: true, drift: computeDrift(decodeProfile(reference), decodeProfile(current), options) };
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      return {
        ok: false,
        code: typeof code === 'string' ? code : 'internal',
        message: error instanceof Error ? error.message : String(error),
      };
    }
  });
}

export default runDriftTask;
