import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { isAllowed } from '../domain/access.js';
import { validateLookupName, validateVersion } from '../domain/input-limits.js';
import { validateName } from '../domain/registry-rules.js';
import type { Registry } from '../ports/registry.js';
import {
  applyOutcomeToProto,
  entityFromProto,
  entityToProto,
  featureSetFromProto,
  featureSetToProto,
  featureViewFromProto,
  featureViewToProto,
  streamAggregationFromProto,
  streamAggregationToProto,
} from './registry-mapping.js';
import type { ServiceHandlers } from './server.js';

/**
 * RegistryService over the Registry port. `afterChange` runs once a change is committed and
 * before the reply, so a caller that reads right after its own apply sees it on this replica.
 */
export function createRegistryServiceHandlers(
  registry: Registry,
  afterChange: () => Promise<void>,
): ServiceHandlers<typeof RegistryService> {
  const project = (name: string) => {
    validateName('project', name);
    return name;
  };
  /** The name of an object looked up or deleted: refused when no object could have it (NUL, too long). */
  const lookup = (name: string) => {
    validateLookupName('name', name);
    return name;
  };
  const changed = async <T>(result: T & { outcome?: string }): Promise<T> => {
    if (result.outcome !== 'unchanged') await afterChange();
    return result;
  };
  return {
    async applyEntity(request) {
      const result = await changed(
        await registry.applyEntity(project(request.project), entityFromProto(request.entity), {
          force: request.force,
        }),
      );
      return { entity: entityToProto(result.entity), outcome: applyOutcomeToProto(result.outcome) };
    },
    async getEntity(request) {
      return {
        entity: entityToProto(await registry.getEntity(project(request.project), lookup(request.name))),
      };
    },
    async listEntities(request) {
      return { entities: (await registry.listEntities(project(request.project))).map(entityToProto) };
    },
    async deleteEntity(request) {
      await registry.deleteEntity(project(request.project), lookup(request.name));
      await afterChange();
      return {};
    },

    async applyFeatureView(request) {
      const result = await changed(
        await registry.applyFeatureView(project(request.project), featureViewFromProto(request.featureView), {
          force: request.force,
        }),
      );
      return {
        featureView: featureViewToProto(result.featureView),
        outcome: applyOutcomeToProto(result.outcome),
      };
    },
    async getFeatureView(request) {
      validateVersion('version', request.version);
      const view = await registry.getFeatureView(
        project(request.project),
        lookup(request.name),
        request.version || undefined,
      );
      return { featureView: featureViewToProto(view) };
    },
    async listFeatureViews(request) {
      return {
        featureViews: (await registry.listFeatureViews(project(request.project))).map(featureViewToProto),
      };
    },
    async listFeatureViewVersions(request) {
      const versions = await registry.listFeatureViewVersions(project(request.project), lookup(request.name));
      return { versions: versions.map(featureViewToProto) };
    },
    async deleteFeatureView(request) {
      await registry.deleteFeatureView(project(request.project), lookup(request.name));
      await afterChange();
      return {};
    },

    async applyFeatureSet(request) {
      const result = await changed(
        await registry.applyFeatureSet(project(request.project), featureSetFromProto(request.featureSet)),
      );
      return {
        featureSet: featureSetToProto(result.featureSet),
        outcome: applyOutcomeToProto(result.outcome),
      };
    },
    async getFeatureSet(request) {
      return {
        featureSet: featureSetToProto(
          await registry.getFeatureSet(project(request.project), lookup(request.name)),
        ),
      };
    },
    async listFeatureSets(request) {
      return {
        featureSets: (await registry.listFeatureSets(project(request.project))).map(featureSetToProto),
      };
    },
    async deleteFeatureSet(request) {
      await registry.deleteFeatureSet(project(request.project), lookup(request.name));
      await afterChange();
      return {};
    },

    async applyStreamAggregation(request) {
      const result = await changed(
        await registry.applyStreamAggregation(
          project(request.project),
          streamAggregationFromProto(request.streamAggregation),
          { force: request.force },
        ),
      );
      return {
        streamAggregation: streamAggregationToProto(result.streamAggregation),
        featureView: featureViewToProto(result.featureView),
        outcome: applyOutcomeToProto(result.outcome),
      };
    },
    async getStreamAggregation(request) {
      const aggregation = await registry.getStreamAggregation(project(request.project), lookup(request.name));
      return { streamAggregation: streamAggregationToProto(aggregation) };
    },
    async listStreamAggregations(request) {
      const aggregations = await registry.listStreamAggregations(project(request.project));
      return { streamAggregations: aggregations.map(streamAggregationToProto) };
    },
    async deleteStreamAggregation(request) {
      await registry.deleteStreamAggregation(project(request.project), lookup(request.name));
      await afterChange();
      return {};
    },

    async listProjects(_request, context) {
      // Only the projects the caller may read: another tenant's project names are data too.
      const projects = await registry.listProjects();
      return { projects: projects.filter((name) => isAllowed(context.principal, 'registry.read', name)) };
    },
  };
}

export { RegistryService };
