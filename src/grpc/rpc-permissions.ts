import type { Vector } from '../../gen/fstore/v1/values_pb.js';
import type { Permission } from '../domain/access.js';

/**
 * THE table of what every RPC needs (default deny: an RPC missing here is refused, and a test
 * fails when the contract has an RPC this table lacks). Per RPC:
 *  - `permission`: what the caller must hold; `null`: any authenticated caller (WhoAmI);
 *  - `project`: the project the call acts on, read from the request (a streaming call's first
 *    message); `undefined` from it means the call spans projects and filters its answer by what
 *    the caller may see (ListProjects, ListApiKeys), so holding the permission anywhere admits it;
 *  - `rows`: what the call costs in rows for rate limits (every message of a stream is charged);
 *  - `audit`: recorded in the audit log, with the object acted on and the rows it wrote.
 */

// Requests arrive as protobuf-es messages; the table reads a few fields by name.
type Fields = Record<string, unknown>;

export interface RpcAudit {
  /** The object acted on (a view, a key id...), from the request or the stream's first message. */
  readonly object: (request: Fields) => string;
  /** Rows written, from a response (summed over a response stream). */
  readonly rows?: (response: Fields) => number;
  /** The object as the response names it (a created key's id), when it has one. */
  readonly responseObject?: (response: Fields) => string;
}

export interface RpcPermission {
  readonly permission: Permission | null;
  readonly project: (request: Fields) => string | undefined;
  readonly rows?: (message: Fields) => number;
  readonly audit?: RpcAudit;
  /** A stream that holds an offline database connection or query while it lasts (capped per process and principal). */
  readonly offlineStream?: true;
}

const projectField = (request: Fields): string => String(request.project ?? '');
const nameField = (request: Fields): string => String(request.name ?? '');

/** A streaming call's first message: `{ message: { case, value } }` (header / query). */
function firstMessageOf(request: Fields, expected: string): Fields | undefined {
  const message = request.message as { case?: string; value?: Fields } | undefined;
  return message?.case === expected ? message.value : undefined;
}

/** Rows of a column-major map of entity vectors: the length of its first vector. */
function rowsOfEntities(entities: unknown): number {
  if (!entities || typeof entities !== 'object') return 0;
  for (const vector of Object.values(entities as Record<string, Vector>)) {
    const values = vector?.values;
    if (!values?.case) return 0;
    return values.case === 'listValues' ? values.value.rows.length : values.value.values.length;
  }
  return 0;
}

/** Rows of a chunk message of a client stream (`rows` case), 0 for a header or end message. */
function rowsOfChunk(request: Fields): number {
  const message = request.message as { case?: string; value?: Fields } | undefined;
  return message?.case === 'rows' ? rowsOfEntities(message.value?.entities) : 0;
}

const registryRead = (): RpcPermission => ({ permission: 'registry.read', project: projectField });
const registryWrite = (object: (request: Fields) => string): RpcPermission => ({
  permission: 'registry.write',
  project: projectField,
  audit: { object },
});
const applied = (field: string) => (request: Fields) =>
  String((request[field] as Fields | undefined)?.name ?? '');

export const rpcPermissions: Readonly<Record<string, RpcPermission>> = {
  'fstore.v1.FeatureService/GetOnlineFeatures': {
    permission: 'online.read',
    project: projectField,
    rows: (request) => rowsOfEntities(request.entities),
  },
  'fstore.v1.FeatureService/WriteOnlineFeatures': {
    permission: 'online.write',
    project: projectField,
    rows: (request) => rowsOfEntities(request.entities),
    audit: {
      object: (request) => String(request.featureView ?? ''),
      rows: (response) => Number(response.rowsWritten ?? 0),
    },
  },
  'fstore.v1.FeatureService/IngestFeatures': {
    offlineStream: true,
    permission: 'offline.ingest',
    project: (request) => String(firstMessageOf(request, 'header')?.project ?? ''),
    rows: rowsOfChunk,
    audit: {
      object: (request) => String(firstMessageOf(request, 'header')?.featureView ?? ''),
      rows: (response) => Number(response.rowsIngested ?? 0),
    },
  },
  'fstore.v1.FeatureService/Materialize': {
    offlineStream: true,
    permission: 'online.materialize',
    project: projectField,
    audit: {
      object: (request) => ((request.featureViews as string[] | undefined) ?? []).join(','),
      // Progress messages repeat running totals; a view's `done` message carries its final count.
      rows: (response) => (response.done ? Number(response.rowsWritten ?? 0) : 0),
    },
  },
  'fstore.v1.FeatureService/GetHistoricalFeatures': {
    offlineStream: true,
    permission: 'historical.read',
    project: (request) => String(firstMessageOf(request, 'query')?.project ?? ''),
    rows: rowsOfChunk,
  },

  'fstore.v1.RegistryService/ApplyEntity': registryWrite(applied('entity')),
  'fstore.v1.RegistryService/GetEntity': registryRead(),
  'fstore.v1.RegistryService/ListEntities': registryRead(),
  'fstore.v1.RegistryService/DeleteEntity': registryWrite(nameField),
  'fstore.v1.RegistryService/ApplyFeatureView': registryWrite(applied('featureView')),
  'fstore.v1.RegistryService/GetFeatureView': registryRead(),
  'fstore.v1.RegistryService/ListFeatureViews': registryRead(),
  'fstore.v1.RegistryService/ListFeatureViewVersions': registryRead(),
  'fstore.v1.RegistryService/DeleteFeatureView': registryWrite(nameField),
  'fstore.v1.RegistryService/ApplyFeatureSet': registryWrite(applied('featureSet')),
  'fstore.v1.RegistryService/GetFeatureSet': registryRead(),
  'fstore.v1.RegistryService/ListFeatureSets': registryRead(),
  'fstore.v1.RegistryService/DeleteFeatureSet': registryWrite(nameField),
  'fstore.v1.RegistryService/ApplyStreamAggregation': {
    permission: 'stream.write',
    project: projectField,
    audit: { object: applied('streamAggregation') },
  },
  'fstore.v1.RegistryService/GetStreamAggregation': registryRead(),
  'fstore.v1.RegistryService/ListStreamAggregations': registryRead(),
  'fstore.v1.RegistryService/DeleteStreamAggregation': {
    permission: 'stream.write',
    project: projectField,
    audit: { object: nameField },
  },
  'fstore.v1.RegistryService/ListProjects': { permission: 'registry.read', project: () => undefined },

  'fstore.v1.MonitoringService/ComputeProfile': { permission: 'monitoring.read', project: projectField },
  'fstore.v1.MonitoringService/SaveReferenceProfile': {
    permission: 'profiles.write',
    project: projectField,
    audit: { object: nameField },
  },
  'fstore.v1.MonitoringService/GetReferenceProfile': { permission: 'monitoring.read', project: projectField },
  'fstore.v1.MonitoringService/ListReferenceProfiles': {
    permission: 'monitoring.read',
    project: projectField,
  },
  'fstore.v1.MonitoringService/DeleteReferenceProfile': {
    permission: 'profiles.write',
    project: projectField,
    audit: { object: nameField },
  },
  'fstore.v1.MonitoringService/GetDriftReport': { permission: 'monitoring.read', project: projectField },
  'fstore.v1.MonitoringService/GetDataQualityReport': {
    permission: 'monitoring.read',
    project: projectField,
  },

  // Key management checks every project a key is bound to in the handler; the table admits
  // callers that administer some project.
  'fstore.v1.AdminService/CreateApiKey': {
    permission: 'keys.manage',
    project: () => undefined,
    // The new key's id (never its secret), so its creation and later use line up in the log.
    audit: {
      object: nameField,
      responseObject: (response) => String((response.key as Fields | undefined)?.id ?? ''),
    },
  },
  'fstore.v1.AdminService/ListApiKeys': { permission: 'keys.manage', project: () => undefined },
  'fstore.v1.AdminService/RevokeApiKey': {
    permission: 'keys.manage',
    project: () => undefined,
    audit: { object: (request) => String(request.id ?? '') },
  },
  'fstore.v1.AdminService/ListAuditEvents': {
    permission: 'audit.read',
    project: (request) => String(request.project ?? '') || '*',
  },
  'fstore.v1.AdminService/WhoAmI': { permission: null, project: () => undefined },
};
