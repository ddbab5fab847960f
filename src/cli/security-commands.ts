import { timestampDate, timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { Command } from 'commander';
import { AdminService, type ApiKey, Role } from '../../gen/fstore/v1/admin_pb.js';
import { createKeyInDatabase } from '../app/security.js';
import { loadConfig } from '../config/config.js';
import { parseRoleBinding } from '../domain/access.js';
import type { ServiceClient } from '../grpc/client.js';
import { addConnectionOptions, type ConnectionFlags, runWithClient } from './connection.js';

/** `fstore keys create|list|revoke`, `fstore audit`, `fstore whoami`: AdminService from the shell. */

const roleNames: Record<number, string> = {
  [Role.READER]: 'reader',
  [Role.WRITER]: 'writer',
  [Role.ADMIN]: 'admin',
};
const roleOf = { reader: Role.READER, writer: Role.WRITER, admin: Role.ADMIN } as const;

const time = (value: { seconds: bigint; nanos: number } | undefined) =>
  value ? timestampDate(value as Parameters<typeof timestampDate>[0]).toISOString() : '-';

function describeKey(key: ApiKey): string {
  const bindings = key.bindings
    .map((binding) => `${roleNames[binding.role] ?? '?'}@${binding.project}`)
    .join(',');
  return [
    key.id,
    JSON.stringify(key.name),
    bindings,
    `created ${time(key.createdAt)} by ${key.createdBy}`,
    `expires ${time(key.expiresAt)}`,
    `last used ${time(key.lastUsedAt)}`,
    key.revokedAt ? `REVOKED ${time(key.revokedAt)}` : 'active',
  ].join('  ');
}

const run = (
  name: string,
  flags: ConnectionFlags,
  work: (client: ServiceClient<typeof AdminService>) => Promise<void>,
) => runWithClient(name, AdminService, flags, work);

/** A duration like 90d, 12h, 30m or 3600s, in milliseconds. */
function parseDuration(text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text.trim());
  if (!match) throw new Error(`--expires-in: "${text}" is not a duration such as 90d, 12h, 30m or 3600s`);
  const unit = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] as 's' | 'm' | 'h' | 'd'];
  return Number(match[1]) * unit;
}

export function addSecurityCommands(program: Command): void {
  const keys = program.command('keys').description('API keys: create, list, revoke (needs admin)');
  addConnectionOptions(
    keys
      .command('create')
      .description('create an API key; the key is printed once and never stored')
      .requiredOption('--name <name>', 'who or what uses the key')
      .requiredOption(
        '--grant <role@project...>',
        'role bindings, e.g. reader@fraud writer@fraud admin@* (role: reader, writer, admin; project: a name or *)',
      )
      .option('--expires-in <duration>', 'e.g. 90d, 12h (default: never)')
      .option(
        '--bootstrap',
        'write the key straight into the database (FSTORE_POSTGRES_URL, FSTORE_POSTGRES_SCHEMA), no server or credential needed: for the first admin key',
      ),
  ).action(
    async (
      flags: ConnectionFlags & { name: string; grant: string[]; expiresIn?: string; bootstrap?: boolean },
    ) => {
      const bindingsOf = () =>
        flags.grant.map((text) => {
          const binding = parseRoleBinding(text);
          if (!binding)
            throw new Error(`--grant: "${text}" is not role@project (e.g. reader@fraud, admin@*)`);
          return binding;
        });
      const expiryOf = () =>
        flags.expiresIn === undefined ? undefined : new Date(Date.now() + parseDuration(flags.expiresIn));
      if (flags.bootstrap) {
        try {
          const created = await createKeyInDatabase(loadConfig(process.env), {
            name: flags.name,
            bindings: bindingsOf(),
            expiresAt: expiryOf(),
          });
          process.stdout.write(`${created.key}\n`);
          process.stderr.write(
            `created key ${created.id} in the database; store the key now: it is not shown again\n`,
          );
        } catch (error) {
          process.stderr.write(
            `fstore keys create: ${error instanceof Error ? error.message : String(error)}\n`,
          );
          process.exitCode = 1;
        }
        return;
      }
      await run('keys create', flags, async (client) => {
        const bindings = bindingsOf().map((binding) => ({
          role: roleOf[binding.role],
          project: binding.project,
        }));
        const expiry = expiryOf();
        const expiresAt = expiry === undefined ? undefined : timestampFromDate(expiry);
        const created = await client.createApiKey({ name: flags.name, bindings, expiresAt });
        process.stdout.write(`${created.secret}\n`);
        if (created.key)
          process.stderr.write(
            `created ${describeKey(created.key)}\nstore the key now: it is not shown again\n`,
          );
      });
    },
  );
  addConnectionOptions(
    keys
      .command('list')
      .description('list the API keys you administer (never their secrets)')
      .option('--project <project>', 'only keys bound to this project')
      .option('--all', 'include revoked keys', false),
  ).action((flags: ConnectionFlags & { project?: string; all: boolean }) =>
    run('keys list', flags, async (client) => {
      const response = await client.listApiKeys({ project: flags.project ?? '', includeRevoked: flags.all });
      for (const key of response.keys) process.stdout.write(`${describeKey(key)}\n`);
    }),
  );
  addConnectionOptions(
    keys
      .command('revoke')
      .description('revoke an API key by id; every server refuses it within about a second')
      .argument('<id>', 'the key id (the part after fsk_, before the second _)'),
  ).action((id: string, flags: ConnectionFlags) =>
    run('keys revoke', flags, async (client) => {
      const response = await client.revokeApiKey({ id });
      if (response.key) process.stdout.write(`${describeKey(response.key)}\n`);
    }),
  );

  addConnectionOptions(
    program
      .command('audit')
      .description('list the audit log, newest first (needs admin)')
      .option('--project <project>', 'only this project (default: all, which needs admin@*)')
      .option('--principal <id>', 'only this principal, e.g. key:abcd2345efgh')
      .option('--rpc <name>', 'only this RPC, e.g. IngestFeatures')
      .option('--since <time>', 'ISO 8601 time')
      .option('--until <time>', 'ISO 8601 time')
      .option('--limit <n>', 'most events', '100')
      .option('--json', 'one JSON object per line', false),
  ).action(
    (
      flags: ConnectionFlags & {
        project?: string;
        principal?: string;
        rpc?: string;
        since?: string;
        until?: string;
        limit: string;
        json: boolean;
      },
    ) =>
      run('audit', flags, async (client) => {
        const when = (text: string | undefined, name: string) => {
          if (text === undefined) return undefined;
          const date = new Date(text);
          if (Number.isNaN(date.getTime())) throw new Error(`--${name}: "${text}" is not an ISO 8601 time`);
          return timestampFromDate(date);
        };
        const limit = Number(flags.limit);
        if (!Number.isInteger(limit) || limit < 1)
          throw new Error(`--limit: "${flags.limit}" is not a positive integer`);
        const response = await client.listAuditEvents({
          project: flags.project ?? '',
          principal: flags.principal ?? '',
          rpc: flags.rpc ?? '',
          startTime: when(flags.since, 'since'),
          endTime: when(flags.until, 'until'),
          limit,
        });
        for (const event of response.events) {
          const row = {
            id: Number(event.id),
            time: time(event.time),
            principal: event.principal,
            rpc: event.rpc,
            project: event.project,
            object: event.object,
            outcome: event.outcome,
            rows: Number(event.rows),
            requestId: event.requestId,
          };
          process.stdout.write(
            flags.json
              ? `${JSON.stringify(row)}\n`
              : `${row.time}  ${row.principal}  ${row.rpc.split('/').pop()}  ${row.project}/${row.object}  ${row.outcome}  rows=${row.rows}  ${row.requestId}\n`,
          );
        }
      }),
  );

  addConnectionOptions(
    program.command('whoami').description('who the server takes you for, and your role bindings'),
  ).action((flags: ConnectionFlags) =>
    run('whoami', flags, async (client) => {
      const response = await client.whoAmI({});
      const bindings = response.bindings.map(
        (binding) => `${roleNames[binding.role] ?? '?'}@${binding.project}`,
      );
      process.stdout.write(
        `${response.principal} (${response.method})  ${bindings.join(' ') || 'no role bindings'}\n`,
      );
    }),
  );
}
