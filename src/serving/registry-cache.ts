import { FStoreError } from '../domain/errors.js';
import type { FeatureSet, FeatureView } from '../domain/model.js';
import type { Registry, RegistrySnapshotData } from '../ports/registry.js';

/** A view as the serving path needs it: the current version plus how to read older rows. */
export interface ServedView {
  readonly current: FeatureView;
  /** Every version by number, to decode online rows written before a schema change. */
  readonly versions: ReadonlyMap<number, FeatureView>;
  /** Per version: feature name → index in that version's feature list. */
  readonly featureIndexes: ReadonlyMap<number, ReadonlyMap<string, number>>;
}

export interface ServedProject {
  readonly views: ReadonlyMap<string, ServedView>;
  readonly featureSets: ReadonlyMap<string, FeatureSet>;
}

export interface RegistryCacheLogger {
  info(object: object, message: string): void;
  warn(object: object, message: string): void;
}

/**
 * An in-memory copy of the registry for the serving path: lookups never touch PostgreSQL.
 * Kept fresh by the registry's change feed (LISTEN/NOTIFY): every change, made by any replica,
 * triggers one reload; reloads coalesce, and an older snapshot never replaces a newer one.
 */
export class RegistryCache {
  #projects: ReadonlyMap<string, ServedProject> = new Map();
  #revision = -1;
  #loading: Promise<void> | undefined;
  #reloadAgain = false;
  #stopWatching: (() => Promise<void>) | undefined;

  constructor(
    private readonly registry: Registry,
    private readonly logger: RegistryCacheLogger,
  ) {}

  get loaded(): boolean {
    return this.#revision >= 0;
  }

  get revision(): number {
    return this.#revision;
  }

  /** Loads the registry and follows its changes. Rejects if the first load fails. */
  async start(): Promise<void> {
    this.#stopWatching = await this.registry.watch(({ reconnected }) => {
      if (reconnected) this.logger.info({}, 'registry change feed restored; reloading');
      this.refresh().catch((error: unknown) => this.logger.warn({ err: error }, 'registry reload failed'));
    });
    await this.refresh();
  }

  async stop(): Promise<void> {
    await this.#stopWatching?.();
    this.#stopWatching = undefined;
  }

  /**
   * Reloads now. Calls made while a reload runs are answered by one more reload after it, so a
   * caller that changed the registry before calling sees its change when this resolves.
   */
  refresh(): Promise<void> {
    if (this.#loading) {
      this.#reloadAgain = true;
      return this.#loading.then(() => this.refresh());
    }
    this.#loading = (async () => {
      try {
        do {
          this.#reloadAgain = false;
          this.install(await this.registry.loadSnapshot());
        } while (this.#reloadAgain);
      } finally {
        this.#loading = undefined;
      }
    })();
    return this.#loading;
  }

  /** Installs a snapshot unless a newer one is already installed. */
  install(snapshot: RegistrySnapshotData): void {
    if (snapshot.revision < this.#revision) return;
    const projects = new Map<
      string,
      { views: Map<string, ServedView>; featureSets: Map<string, FeatureSet> }
    >();
    const projectOf = (name: string) => {
      let project = projects.get(name);
      if (!project) {
        project = { views: new Map(), featureSets: new Map() };
        projects.set(name, project);
      }
      return project;
    };
    const versionsByView = new Map<string, FeatureView[]>();
    for (const view of snapshot.featureViewVersions) {
      const id = `${view.project}\u0000${view.name}`;
      const list = versionsByView.get(id);
      if (list) list.push(view);
      else versionsByView.set(id, [view]);
    }
    for (const versions of versionsByView.values()) {
      versions.sort((a, b) => a.version - b.version);
      const current = versions[versions.length - 1] as FeatureView;
      projectOf(current.project).views.set(current.name, {
        current,
        versions: new Map(versions.map((view) => [view.version, view])),
        featureIndexes: new Map(
          versions.map((view) => [
            view.version,
            new Map(view.features.map((feature, index) => [feature.name, index])),
          ]),
        ),
      });
    }
    for (const featureSet of snapshot.featureSets)
      projectOf(featureSet.project).featureSets.set(featureSet.name, featureSet);
    this.#projects = projects;
    this.#revision = snapshot.revision;
  }

  /** The current version of every view of every project (none before the first load). */
  *views(): Generator<{ readonly project: string; readonly view: FeatureView }> {
    for (const [project, { views }] of this.#projects)
      for (const served of views.values()) yield { project, view: served.current };
  }

  /** The project's objects; NOT_FOUND when it has none. UNAVAILABLE before the first load. */
  project(name: string): ServedProject {
    if (!this.loaded) throw new FStoreError('unavailable', 'the registry is not loaded yet; retry shortly');
    const project = this.#projects.get(name);
    if (!project) throw new FStoreError('not_found', `project "${name}" does not exist`);
    return project;
  }
}
