import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { ValueType } from '../domain/model.js';
import { parseFeatureReference } from '../domain/registry-rules.js';
import type { ServedProject, ServedView } from './registry-cache.js';

export const maxFeaturesPerRequest = 1_000;

export interface RequestedFeature {
  /** As requested: "view:feature". */
  readonly reference: string;
  readonly name: string;
  readonly type: ValueType;
  /** Position in the request's (or feature set's) list: the output column. */
  readonly output: number;
}

export interface RequestedView {
  readonly view: ServedView;
  readonly features: RequestedFeature[];
}

export interface FeatureSelection {
  readonly project: string;
  readonly features: readonly string[];
  readonly featureSet: string;
}

/**
 * The features a read asks for (a list of "view:feature" references or a feature set), resolved
 * against the current versions and grouped by view in first-use order. One piece of code for
 * online and historical reads; `online` requires every view to be served online.
 */
export function resolveFeatures(
  project: ServedProject,
  selection: FeatureSelection,
  options: { readonly online: boolean; readonly field?: string },
): { references: readonly string[]; views: Map<string, RequestedView> } {
  const prefix = options.field ? `${options.field}.` : '';
  const references = requestedReferences(project, selection, prefix);
  const views = new Map<string, RequestedView>();
  references.forEach((reference, output) => {
    const field = selection.featureSet
      ? `${prefix}feature_set "${selection.featureSet}" features[${output}]`
      : `${prefix}features[${output}]`;
    const parsed = parseFeatureReference(field, reference);
    let requested = views.get(parsed.view);
    if (!requested) {
      const view = project.views.get(parsed.view);
      if (!view)
        throw new FStoreError(
          'not_found',
          `${field}: project "${selection.project}" has no feature view "${parsed.view}"`,
        );
      if (options.online && !view.current.online)
        throw new FStoreError(
          'failed_precondition',
          `${field}: feature view "${parsed.view}" is not served online`,
        );
      requested = { view, features: [] };
      views.set(parsed.view, requested);
    }
    const { current } = requested.view;
    const index = requested.view.featureIndexes.get(current.version)?.get(parsed.feature);
    if (index === undefined)
      throw new FStoreError(
        'not_found',
        `${field}: feature view "${parsed.view}" has no feature "${parsed.feature}"`,
      );
    requested.features.push({
      reference,
      name: parsed.feature,
      type: current.features[index]?.type as ValueType,
      output,
    });
  });
  return { references, views };
}

function requestedReferences(
  project: ServedProject,
  selection: FeatureSelection,
  prefix: string,
): readonly string[] {
  if (selection.featureSet && selection.features.length > 0)
    throw invalidArgument(`${prefix}features`, 'give either features or feature_set, not both');
  if (selection.featureSet) {
    const featureSet = project.featureSets.get(selection.featureSet);
    if (!featureSet)
      throw new FStoreError(
        'not_found',
        `${prefix}feature_set: project "${selection.project}" has no feature set "${selection.featureSet}"`,
      );
    return featureSet.features;
  }
  if (selection.features.length === 0)
    throw invalidArgument(`${prefix}features`, 'name at least one feature, or a feature_set');
  if (selection.features.length > maxFeaturesPerRequest)
    throw new FStoreError(
      'resource_exhausted',
      `${prefix}features: ${selection.features.length} references, at most ${maxFeaturesPerRequest} per request`,
    );
  const seen = new Set<string>();
  selection.features.forEach((reference, index) => {
    if (seen.has(reference))
      throw invalidArgument(`${prefix}features[${index}]`, `"${reference}" is requested twice`);
    seen.add(reference);
  });
  return selection.features;
}
