import type {
  ApplyOutcome,
  Entity,
  EntityDefinition,
  FeatureSet,
  FeatureSetDefinition,
  FeatureView,
  FeatureViewDefinition,
} from '../domain/model.js';
import type { StreamAggregation, StreamAggregationDefinition } from '../domain/stream-aggregation.js';

/**
 * The registry port: persistent definitions, versioned views. Validation and compatibility rules
 * live in the domain (`src/domain/registry-rules.ts`); implementations call them inside their
 * transaction so concurrent applies cannot interleave.
 *
 * Errors are FStoreError: 'not_found' for unknown objects, 'failed_precondition' for refused
 * changes, 'invalid_argument' for malformed definitions, 'unavailable' when the database is down.
 */
export interface Registry {
  applyEntity(
    project: string,
    entity: EntityDefinition,
    options: { force: boolean },
  ): Promise<{ entity: Entity; outcome: ApplyOutcome }>;
  getEntity(project: string, name: string): Promise<Entity>;
  listEntities(project: string): Promise<Entity[]>;
  deleteEntity(project: string, name: string): Promise<void>;

  applyFeatureView(
    project: string,
    view: FeatureViewDefinition,
    options: { force: boolean },
  ): Promise<{ featureView: FeatureView; outcome: ApplyOutcome }>;
  /** `version` 0 or absent: the current version. */
  getFeatureView(project: string, name: string, version?: number): Promise<FeatureView>;
  listFeatureViews(project: string): Promise<FeatureView[]>;
  /** Oldest first. */
  listFeatureViewVersions(project: string, name: string): Promise<FeatureView[]>;
  deleteFeatureView(project: string, name: string): Promise<void>;

  applyFeatureSet(
    project: string,
    featureSet: FeatureSetDefinition,
  ): Promise<{ featureSet: FeatureSet; outcome: ApplyOutcome }>;
  getFeatureSet(project: string, name: string): Promise<FeatureSet>;
  listFeatureSets(project: string): Promise<FeatureSet[]>;
  deleteFeatureSet(project: string, name: string): Promise<void>;

  /**
   * Stores the definition and applies the feature view it produces (`producedFeatureView`) with
   * `applyFeatureView`'s rules, in one transaction. `outcome` is 'unchanged' only when neither the
   * definition nor the view changed.
   */
  applyStreamAggregation(
    project: string,
    streamAggregation: StreamAggregationDefinition,
    options: { force: boolean },
  ): Promise<{ streamAggregation: StreamAggregation; featureView: FeatureView; outcome: ApplyOutcome }>;
  getStreamAggregation(project: string, name: string): Promise<StreamAggregation>;
  listStreamAggregations(project: string): Promise<StreamAggregation[]>;
  /** Deletes the definition and its produced view, under `deleteFeatureView`'s rules. */
  deleteStreamAggregation(project: string, name: string): Promise<void>;

  listProjects(): Promise<string[]>;

  /** Everything the serving path needs, read in one consistent snapshot. */
  loadSnapshot(): Promise<RegistrySnapshotData>;
  /**
   * Calls `listener` after any change committed by any process (PostgreSQL LISTEN/NOTIFY), and
   * with `reconnected: true` after the change feed was lost and restored (changes may have been
   * missed: reload everything). Returns a function that stops listening.
   */
  watch(listener: (event: { reconnected: boolean }) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export interface RegistrySnapshotData {
  /** Every version of every view, all projects. */
  readonly featureViewVersions: readonly FeatureView[];
  readonly featureSets: readonly (FeatureSet & { readonly project: string })[];
  /** A number that grows with every change; lets caches ignore stale reloads. */
  readonly revision: number;
}
