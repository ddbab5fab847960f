import {
  allProjects,
  assertAllowed,
  distinctBindings,
  isAllowed,
  type Principal,
  type RoleBinding,
} from '../domain/access.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import { inputLimits, validateMicros, validateText } from '../domain/input-limits.js';
import { validateName } from '../domain/registry-rules.js';
import type { ApiKeyInfo, ApiKeyStore } from '../ports/api-key-store.js';
import type { AuditEvent, AuditFilter, AuditLog } from '../ports/audit-log.js';
import { maxAuditListLimit } from '../ports/audit-log.js';
import { generateApiKey } from '../security/api-keys.js';

/**
 * API keys and the audit log, as their RPCs and `fstore keys` / `fstore audit` use them. A caller
 * administers a key when it holds `keys.manage` on every project the key is bound to (on all
 * projects for a `*` binding): a project admin cannot mint a key for someone else's project, nor
 * see or revoke one.
 */

export interface CreatedApiKey {
  readonly info: ApiKeyInfo;
  /** The whole key: returned this once, never stored. */
  readonly key: string;
}

const maxNameLength = 200;
const maxFilterBytes = 512;
const keyIdPattern = /^[a-z2-7]{12}$/;

export class AccessAdmin {
  constructor(
    private readonly keys: ApiKeyStore,
    private readonly audit: AuditLog | undefined,
    /** Runs after this process changed a key, so its own next call sees the change. */
    private readonly afterKeyChange: () => Promise<void> = async () => {},
  ) {}

  private administers(principal: Principal, bindings: readonly RoleBinding[]): boolean {
    return bindings.every((binding) => isAllowed(principal, 'keys.manage', binding.project));
  }

  async createKey(
    principal: Principal,
    request: { name: string; bindings: readonly RoleBinding[]; expiresAt: Date | undefined },
  ): Promise<CreatedApiKey> {
    const name = request.name.trim();
    if (name.length === 0 || name.length > maxNameLength)
      throw invalidArgument('name', `must be 1 to ${maxNameLength} characters`);
    validateText('name', name, maxNameLength);
    if (request.bindings.length === 0) throw invalidArgument('bindings', 'at least one binding is required');
    request.bindings.forEach((binding, index) => {
      if (binding.project !== allProjects) validateName(`bindings[${index}].project`, binding.project);
    });
    // NaN (a date no Date can hold) fails this too.
    if (request.expiresAt !== undefined && !(request.expiresAt.getTime() <= inputLimits.maxTimestampMs))
      throw invalidArgument('expires_at', 'must be before 10000-01-01T00:00:00Z');
    if (request.expiresAt !== undefined && request.expiresAt.getTime() <= Date.now())
      throw invalidArgument('expires_at', 'must be in the future');
    const bindings = distinctBindings(request.bindings);
    for (const binding of bindings) assertAllowed(principal, 'keys.manage', binding.project);
    const generated = generateApiKey();
    const info = await this.keys.create({
      id: generated.id,
      name,
      secretHash: generated.secretHash,
      bindings,
      createdBy: principal.id,
      expiresAt: request.expiresAt,
    });
    await this.afterKeyChange();
    return { info, key: generated.key };
  }

  async listKeys(
    principal: Principal,
    request: { project: string; includeRevoked: boolean },
  ): Promise<ApiKeyInfo[]> {
    if (request.project !== '') validateName('project', request.project);
    const keys = await this.keys.list({ includeRevoked: request.includeRevoked });
    return keys.filter(
      (key) =>
        this.administers(principal, key.bindings) &&
        (request.project === '' ||
          key.bindings.some(
            (binding) => binding.project === request.project || binding.project === allProjects,
          )),
    );
  }

  async revokeKey(principal: Principal, id: string): Promise<ApiKeyInfo> {
    if (id.startsWith('fsk_')) throw invalidArgument('id', 'give the key id, not the key itself');
    if (!keyIdPattern.test(id))
      throw new FStoreError('not_found', `API key ${JSON.stringify(id.slice(0, 64))} does not exist`);
    const key = await this.keys.get(id).catch((error: unknown) => {
      throw error instanceof FStoreError && error.code === 'not_found'
        ? new FStoreError('not_found', `API key ${JSON.stringify(id)} does not exist`)
        : error;
    });
    if (!this.administers(principal, key.bindings))
      throw new FStoreError(
        'permission_denied',
        // Not the key's bindings: they would name projects the caller may not see.
        `${principal.id} lacks permission keys.manage on every project of key ${id}`,
      );
    const revoked = await this.keys.revoke(id);
    await this.afterKeyChange();
    return revoked;
  }

  async listAudit(
    principal: Principal,
    filter: Omit<AuditFilter, 'projects'> & { project: string },
  ): Promise<AuditEvent[]> {
    if (!this.audit) throw new FStoreError('unimplemented', 'this server keeps no audit log');
    if (filter.project !== '') validateName('project', filter.project);
    if (filter.principal !== undefined) validateText('principal', filter.principal, maxFilterBytes);
    if (filter.rpc !== undefined) validateText('rpc', filter.rpc, maxFilterBytes);
    assertAllowed(principal, 'audit.read', filter.project === '' ? allProjects : filter.project);
    if (!Number.isInteger(filter.limit) || filter.limit < 1 || filter.limit > maxAuditListLimit)
      throw invalidArgument('limit', `must be 1 to ${maxAuditListLimit}`);
    // Compared with PostgreSQL timestamptz and bigint columns: unsafe integers cannot be.
    if (filter.startMicros !== undefined) validateMicros('start_time', filter.startMicros);
    if (filter.endMicros !== undefined) validateMicros('end_time', filter.endMicros);
    if (filter.beforeId !== undefined && !(Number.isSafeInteger(filter.beforeId) && filter.beforeId > 0))
      throw invalidArgument('before_id', `must be an event id from 1 to ${Number.MAX_SAFE_INTEGER}`);
    const { project, ...rest } = filter;
    return this.audit.list({ ...rest, ...(project === '' ? {} : { projects: [project] }) });
  }
}
