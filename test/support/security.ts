import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { Metadata } from '@grpc/grpc-js';
import { AdminService, Role } from '../../gen/fstore/v1/admin_pb.js';
import { createKeyInDatabase } from '../../src/app/security.js';
import type { RoleBinding } from '../../src/domain/access.js';
import { FStoreError } from '../../src/domain/errors.js';
import { bearerMetadata, createClient, type ServiceClient } from '../../src/grpc/client.js';
import type { TestServer } from './serving-harness.js';

/** API keys and credentials for tests of a server started with `{ auth: 'on' }`. */

export type AdminClient = ServiceClient<typeof AdminService>;

export const protoRoles = { reader: Role.READER, writer: Role.WRITER, admin: Role.ADMIN } as const;

/** `authorization: Bearer <key>`. */
export const keyMetadata = (key: string): Metadata => bearerMetadata(key);

/** `x-api-key: <key>`. */
export function apiKeyHeaderMetadata(key: string): Metadata {
  const metadata = new Metadata();
  metadata.add('x-api-key', key);
  return metadata;
}

/** Metadata with the given entries, added in order (repeats kept: `add`, not `set`). */
export function metadataOf(entries: readonly [string, string | Buffer][]): Metadata {
  const metadata = new Metadata();
  for (const [key, value] of entries) metadata.add(key, value);
  return metadata;
}

/** An AdminService client acting with `key`. */
export const adminClientFor = (server: { address: string }, key: string): AdminClient =>
  createClient(AdminService, server.address, { metadata: keyMetadata(key) });

/**
 * Waits until the server accepts `key` (WhoAmI answers): a key written straight into the database
 * reaches the server's copy of the key table through the change feed, a moment later.
 */
export async function waitForKey(
  server: { address: string },
  key: string,
  timeoutMs = 10_000,
): Promise<void> {
  const client = adminClientFor(server, key);
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      try {
        await client.whoAmI({}, { timeoutMs: 2_000 });
        return;
      } catch (error) {
        const code = error instanceof FStoreError ? error.code : 'unknown';
        if (code !== 'unauthenticated' || Date.now() > deadline) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  } finally {
    client.close();
  }
}

/**
 * The first admin key of the test server's schema, written straight into its database as
 * `fstore keys create --bootstrap` does (admin on every project unless told otherwise), once the
 * server accepts it.
 */
export async function bootstrapKey(
  server: TestServer,
  bindings: readonly RoleBinding[] = [{ role: 'admin', project: '*' }],
  name = 'test bootstrap',
): Promise<{ key: string; id: string }> {
  const created = await createKeyInDatabase(server.config, { name, bindings, expiresAt: undefined });
  await waitForKey(server, created.key);
  return created;
}

/** Creates a key through AdminService (as the caller of `admin`). */
export async function createKey(
  admin: AdminClient,
  name: string,
  bindings: readonly RoleBinding[],
  expiresAt?: Date,
): Promise<{ key: string; id: string }> {
  const response = await admin.createApiKey({
    name,
    bindings: bindings.map((binding) => ({ role: protoRoles[binding.role], project: binding.project })),
    ...(expiresAt ? { expiresAt: timestampFromDate(expiresAt) } : {}),
  });
  return { key: response.secret, id: response.key?.id ?? '' };
}

export interface HeaderInjector {
  /** host:port to point a client at; everything is relayed to the target. */
  readonly address: string;
  close(): Promise<void>;
}

const http2Preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

function hpackInteger(value: number, prefixBits: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([value]);
  const bytes = [max];
  let rest = value - max;
  while (rest >= 128) {
    bytes.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** An HPACK "literal header field without indexing, new name" (no Huffman): leaves the dynamic table alone. */
function hpackLiteral(name: string, value: string): Buffer {
  const nameBytes = Buffer.from(name, 'latin1');
  const valueBytes = Buffer.from(value, 'latin1');
  return Buffer.concat([
    Buffer.from([0]),
    hpackInteger(nameBytes.length, 7),
    nameBytes,
    hpackInteger(valueBytes.length, 7),
    valueBytes,
  ]);
}

/**
 * A TCP relay to `target` (plaintext HTTP/2) that appends `extra` header fields to every request
 * header block a client sends — after the client's own, so a field the client sent too arrives
 * twice. grpc-js clients refuse to send two `authorization` values themselves; this is how a
 * test presents the server with what a misbehaving client or proxy could send.
 */
export async function startHeaderInjector(
  target: string,
  extra: readonly [string, string][],
): Promise<HeaderInjector> {
  const fields = Buffer.concat(extra.map(([name, value]) => hpackLiteral(name, value)));
  const separator = target.lastIndexOf(':');
  const host = target.slice(0, separator);
  const port = Number(target.slice(separator + 1));
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(port, host);
    sockets.add(client);
    sockets.add(upstream);
    upstream.pipe(client);
    let pending = Buffer.alloc(0);
    let prefaceSeen = false;
    client.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      if (!prefaceSeen) {
        if (pending.length < http2Preface.length) return;
        upstream.write(pending.subarray(0, http2Preface.length));
        pending = pending.subarray(http2Preface.length);
        prefaceSeen = true;
      }
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        const type = pending[3] as number;
        const flags = pending[4] as number;
        let frame = pending.subarray(0, 9 + length);
        pending = pending.subarray(9 + length);
        // A header block ends in a HEADERS (1) or CONTINUATION (9) frame flagged END_HEADERS (4);
        // fields appended there come after the client's own. Padded frames (8) are left alone.
        const endsBlock = (type === 1 || type === 9) && (flags & 0x4) !== 0 && !(type === 1 && flags & 0x8);
        if (endsBlock) {
          const payload = Buffer.concat([frame.subarray(9), fields]);
          const header = Buffer.from(frame.subarray(0, 9));
          header.writeUIntBE(payload.length, 0, 3);
          frame = Buffer.concat([header, payload]);
        }
        upstream.write(frame);
      }
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as AddressInfo;
  return {
    address: `127.0.0.1:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The secret part of a well-formed key `fsk_<id>_<secret>`. */
export function secretOf(key: string): string {
  const match = /^fsk_[a-z2-7]{12}_(.+)$/.exec(key);
  if (!match) throw new Error('not a well-formed API key');
  return match[1] as string;
}

/**
 * Whether `text` contains any part of `secret`: a run of 8 of its characters (the whole of it when
 * shorter), so neither the secret nor a prefix, suffix or slice of it leaks.
 */
export function containsPartOf(text: string, secret: string, window = 8): boolean {
  if (secret.length === 0) return false;
  if (secret.length <= window) return text.includes(secret);
  for (let start = 0; start + window <= secret.length; start++)
    if (text.includes(secret.slice(start, start + window))) return true;
  return false;
}
