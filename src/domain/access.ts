import { FStoreError } from './errors.js';

/**
 * Who may do what (default deny). A principal holds role bindings; a role is a set of
 * permissions; a binding grants its role on one project or on every project ("*"). Nothing is
 * allowed that no binding grants.
 */

export const roles = ['reader', 'writer', 'admin'] as const;
export type Role = (typeof roles)[number];

/** Every permission an RPC can need (src/grpc/rpc-permissions.ts maps each RPC to one). */
export const permissions = [
  'online.read',
  'historical.read',
  'registry.read',
  'monitoring.read',
  'online.write',
  'offline.ingest',
  'online.materialize',
  'registry.write',
  'stream.write',
  'profiles.write',
  'keys.manage',
  'audit.read',
] as const;
export type Permission = (typeof permissions)[number];

const readerPermissions: readonly Permission[] = [
  'online.read',
  'historical.read',
  'registry.read',
  'monitoring.read',
];
const writerPermissions: readonly Permission[] = [
  ...readerPermissions,
  'online.write',
  'offline.ingest',
  'online.materialize',
];

/** Each role includes the one before it. */
export const rolePermissions: Readonly<Record<Role, ReadonlySet<Permission>>> = {
  reader: new Set(readerPermissions),
  writer: new Set(writerPermissions),
  admin: new Set(permissions),
};

/** "*" binds a role on every project. */
export const allProjects = '*';

export interface RoleBinding {
  readonly role: Role;
  /** A project name, or "*". */
  readonly project: string;
}

export type AuthenticationMethod = 'api_key' | 'jwt' | 'certificate' | 'none';

export interface Principal {
  /** `key:<id>`, `jwt:<subject>`, `cert:<subject>`, `anonymous`: logged and audited. */
  readonly id: string;
  readonly method: AuthenticationMethod;
  readonly bindings: readonly RoleBinding[];
}

/** With authentication off every caller is this one: everything on every project (loopback only by default). */
export const anonymousPrincipal: Principal = {
  id: 'anonymous',
  method: 'none',
  bindings: [{ role: 'admin', project: allProjects }],
};

/** Whether some binding of `principal` grants `permission` on `project` ("*": on every project). */
export function isAllowed(principal: Principal, permission: Permission, project: string): boolean {
  for (const binding of principal.bindings) {
    if (binding.project !== allProjects && binding.project !== project) continue;
    if (rolePermissions[binding.role].has(permission)) return true;
  }
  return false;
}

/** Throws PERMISSION_DENIED naming the permission and the project (never any data). */
export function assertAllowed(principal: Principal, permission: Permission, project: string): void {
  if (!isAllowed(principal, permission, project))
    throw new FStoreError(
      'permission_denied',
      project === allProjects
        ? `${principal.id} lacks permission ${permission} on all projects`
        : `${principal.id} lacks permission ${permission} on project "${project}"`,
    );
}

/** Whether `principal` has `permission` on some project (for calls that then filter by project). */
export function isAllowedAnywhere(principal: Principal, permission: Permission): boolean {
  return principal.bindings.some((binding) => rolePermissions[binding.role].has(permission));
}

const bindingPattern = /^(reader|writer|admin)@(\*|[A-Za-z0-9][A-Za-z0-9_.-]*)$/;

/**
 * A binding written as `role@project` (`admin@*` for every project), as in JWT claims, the
 * `FSTORE_AUTH_BINDINGS` setting and `fstore keys create --grant`. Undefined when `text` is not one.
 */
export function parseRoleBinding(text: string): RoleBinding | undefined {
  const match = bindingPattern.exec(text.trim());
  if (!match) return undefined;
  return { role: match[1] as Role, project: match[2] as string };
}

export const formatRoleBinding = (binding: RoleBinding): string => `${binding.role}@${binding.project}`;

/** The bindings without repeats, in first-seen order. */
export function distinctBindings(bindings: Iterable<RoleBinding>): RoleBinding[] {
  const seen = new Map<string, RoleBinding>();
  for (const binding of bindings) seen.set(formatRoleBinding(binding), binding);
  return [...seen.values()];
}

/**
 * The `FSTORE_AUTH_BINDINGS` table: `name=binding[,binding...]` entries separated by `;`, where a
 * name is `group:<JWT roles-claim value>`, `jwt:<subject>` or `cert:<certificate CN or SAN>` and a
 * binding is `role@project`. Throws a message naming the bad entry.
 */
export function parseBindingTable(text: string): Map<string, RoleBinding[]> {
  const table = new Map<string, RoleBinding[]>();
  for (const entry of text.split(';')) {
    if (entry.trim() === '') continue;
    const separator = entry.lastIndexOf('=');
    const name = entry.slice(0, separator).trim();
    if (separator <= 0 || !/^(group|jwt|cert):.+/.test(name))
      throw new FStoreError(
        'invalid_argument',
        `binding entry ${JSON.stringify(entry.trim())}: expected group:<name>|jwt:<subject>|cert:<name>=role@project[,role@project...]`,
      );
    const bindings = entry
      .slice(separator + 1)
      .split(',')
      .map((text) => {
        const binding = parseRoleBinding(text);
        if (!binding)
          throw new FStoreError(
            'invalid_argument',
            `binding entry ${JSON.stringify(entry.trim())}: ${JSON.stringify(text.trim())} is not role@project (role: ${roles.join(', ')}; project: a name or *)`,
          );
        return binding;
      });
    table.set(name, distinctBindings([...(table.get(name) ?? []), ...bindings]));
  }
  return table;
}
