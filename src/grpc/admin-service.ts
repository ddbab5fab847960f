import type { MessageInitShape } from '@bufbuild/protobuf';
import { type Timestamp, timestampDate, timestampFromDate } from '@bufbuild/protobuf/wkt';
import {
  AdminService,
  type ApiKeySchema,
  type AuditEventSchema,
  Role as ProtoRole,
  type RoleBindingSchema,
} from '../../gen/fstore/v1/admin_pb.js';
import type { Role, RoleBinding } from '../domain/access.js';
import { invalidArgument } from '../domain/errors.js';
import type { ApiKeyInfo } from '../ports/api-key-store.js';
import type { AuditEvent } from '../ports/audit-log.js';
import type { AccessAdmin } from '../serving/access-admin.js';
import type { ServiceHandlers } from './server.js';

export { AdminService };

/** AdminService over AccessAdmin: proto ↔ domain mapping only; the checks live in AccessAdmin. */

const rolesToProto: Record<Role, ProtoRole> = {
  reader: ProtoRole.READER,
  writer: ProtoRole.WRITER,
  admin: ProtoRole.ADMIN,
};

export function roleBindingToProto(binding: RoleBinding): MessageInitShape<typeof RoleBindingSchema> {
  return { role: rolesToProto[binding.role], project: binding.project };
}

function roleBindingFromProto(binding: { role: ProtoRole; project: string }, index: number): RoleBinding {
  const role = (Object.keys(rolesToProto) as Role[]).find((name) => rolesToProto[name] === binding.role);
  if (!role)
    throw invalidArgument(`bindings[${index}].role`, 'must be ROLE_READER, ROLE_WRITER or ROLE_ADMIN');
  if (binding.project === '')
    throw invalidArgument(`bindings[${index}].project`, 'a project name or "*" is required');
  return { role, project: binding.project };
}

const optionalTimestamp = (date: Date | undefined) => (date ? timestampFromDate(date) : undefined);

export function apiKeyToProto(key: ApiKeyInfo): MessageInitShape<typeof ApiKeySchema> {
  return {
    id: key.id,
    name: key.name,
    bindings: key.bindings.map(roleBindingToProto),
    createdAt: timestampFromDate(key.createdAt),
    expiresAt: optionalTimestamp(key.expiresAt),
    lastUsedAt: optionalTimestamp(key.lastUsedAt),
    revokedAt: optionalTimestamp(key.revokedAt),
    createdBy: key.createdBy,
  };
}

function auditEventToProto(event: AuditEvent): MessageInitShape<typeof AuditEventSchema> {
  return {
    id: BigInt(event.id),
    time: timestampFromDate(new Date(Math.floor(event.timeMicros / 1000))),
    principal: event.principal,
    rpc: event.rpc,
    project: event.project,
    object: event.object,
    outcome: event.outcome,
    rows: BigInt(event.rows),
    requestId: event.requestId,
  };
}

const micros = (timestamp: Timestamp | undefined): number | undefined =>
  timestamp ? Number(timestamp.seconds) * 1_000_000 + Math.floor(timestamp.nanos / 1000) : undefined;

export function createAdminServiceHandlers(admin: AccessAdmin): ServiceHandlers<typeof AdminService> {
  return {
    async createApiKey(request, context) {
      const created = await admin.createKey(context.principal, {
        name: request.name,
        bindings: request.bindings.map(roleBindingFromProto),
        expiresAt: request.expiresAt ? timestampDate(request.expiresAt) : undefined,
      });
      return { key: apiKeyToProto(created.info), secret: created.key };
    },
    async listApiKeys(request, context) {
      const keys = await admin.listKeys(context.principal, {
        project: request.project,
        includeRevoked: request.includeRevoked,
      });
      return { keys: keys.map(apiKeyToProto) };
    },
    async revokeApiKey(request, context) {
      return { key: apiKeyToProto(await admin.revokeKey(context.principal, request.id)) };
    },
    async listAuditEvents(request, context) {
      const startMicros = micros(request.startTime);
      const endMicros = micros(request.endTime);
      const events = await admin.listAudit(context.principal, {
        project: request.project,
        limit: request.limit === 0 ? 100 : request.limit,
        ...(request.principal ? { principal: request.principal } : {}),
        ...(request.rpc ? { rpc: request.rpc } : {}),
        ...(startMicros === undefined ? {} : { startMicros }),
        ...(endMicros === undefined ? {} : { endMicros }),
        ...(request.beforeId > 0n ? { beforeId: Number(request.beforeId) } : {}),
      });
      return { events: events.map(auditEventToProto) };
    },
    async whoAmI(_request, context) {
      return {
        principal: context.principal.id,
        method: context.principal.method,
        bindings: context.principal.bindings.map(roleBindingToProto),
      };
    },
  };
}
