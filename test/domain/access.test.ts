import { describe, expect, it } from 'vitest';
import {
  assertAllowed,
  isAllowed,
  isAllowedAnywhere,
  type Principal,
  parseBindingTable,
  parseRoleBinding,
} from '../../src/domain/access.js';
import { FStoreError } from '../../src/domain/errors.js';

const principal = (...bindings: string[]): Principal => ({
  id: 'key:test',
  method: 'api_key',
  bindings: bindings.map((text) => {
    const binding = parseRoleBinding(text);
    if (!binding) throw new Error(text);
    return binding;
  }),
});

describe('roles and bindings', () => {
  it('denies by default: no binding, nothing allowed', () => {
    expect(isAllowed(principal(), 'online.read', 'fraud')).toBe(false);
    expect(isAllowedAnywhere(principal(), 'online.read')).toBe(false);
  });

  it('grants a role on its project only, and each role includes the one before', () => {
    const reader = principal('reader@fraud');
    expect(isAllowed(reader, 'online.read', 'fraud')).toBe(true);
    expect(isAllowed(reader, 'online.read', 'churn')).toBe(false);
    expect(isAllowed(reader, 'online.write', 'fraud')).toBe(false);
    const writer = principal('writer@fraud');
    expect(isAllowed(writer, 'online.read', 'fraud')).toBe(true);
    expect(isAllowed(writer, 'offline.ingest', 'fraud')).toBe(true);
    expect(isAllowed(writer, 'registry.write', 'fraud')).toBe(false);
    const admin = principal('admin@*');
    expect(isAllowed(admin, 'keys.manage', 'anything')).toBe(true);
    expect(isAllowed(principal('admin@fraud'), 'audit.read', '*')).toBe(false);
  });

  it('names the permission and the project when it refuses', () => {
    try {
      assertAllowed(principal('reader@fraud'), 'online.write', 'churn');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(FStoreError);
      expect((error as FStoreError).code).toBe('permission_denied');
      expect((error as FStoreError).message).toBe(
        'key:test lacks permission online.write on project "churn"',
      );
    }
  });

  it('parses role@project and nothing else', () => {
    expect(parseRoleBinding('reader@fraud')).toEqual({ role: 'reader', project: 'fraud' });
    expect(parseRoleBinding(' admin@* ')).toEqual({ role: 'admin', project: '*' });
    for (const text of ['reader', 'owner@fraud', 'reader@', 'reader@fr aud', '@fraud', 'reader@*x'])
      expect(parseRoleBinding(text)).toBeUndefined();
  });

  it('reads the FSTORE_AUTH_BINDINGS table and names a bad entry', () => {
    const table = parseBindingTable(
      'group:fraud-team=writer@fraud,reader@churn; cert:scorer.internal=reader@fraud;;',
    );
    expect(table.get('group:fraud-team')).toEqual([
      { role: 'writer', project: 'fraud' },
      { role: 'reader', project: 'churn' },
    ]);
    expect(table.get('cert:scorer.internal')).toEqual([{ role: 'reader', project: 'fraud' }]);
    expect(() => parseBindingTable('alice=reader@fraud')).toThrow(/"alice=reader@fraud"/);
    expect(() => parseBindingTable('jwt:alice=boss@fraud')).toThrow(/"boss@fraud" is not role@project/);
  });
});
