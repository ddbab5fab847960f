import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { FStoreError } from '../../src/domain/errors.js';
import { createClient } from '../../src/grpc/client.js';
import { bootstrapKey, keyMetadata } from '../support/security.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * Credentials never reach the log, even at the most verbose level with every call logged: valid
 * keys, refused keys and garbage tokens alike.
 */

const lines: string[] = [];
const sink = new Writable({
  write(chunk, _encoding, done) {
    lines.push(String(chunk));
    done();
  },
});

let server: TestServer;
let admin: { key: string; id: string };

beforeAll(async () => {
  server = await startTestServer(
    'redis',
    { auth: 'on', accessLog: 'all', logLevel: 'trace' },
    { logger: pino({ level: 'trace' }, sink) },
  );
  admin = await bootstrapKey(server);
});

afterAll(async () => {
  await server?.stop();
});

describe('logs and credentials', () => {
  it('logs calls with their principal outcome but never a key, a secret or a token', async () => {
    const wrongSecret = `${admin.key.slice(0, 21)}${'A'.repeat(43)}`;
    const garbageToken = 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.c2VjcmV0LXNpZ25hdHVyZQ';
    const credentials = [admin.key, wrongSecret, garbageToken, 'fsk_short'];
    for (const credential of credentials) {
      const client = createClient(RegistryService, server.address, { metadata: keyMetadata(credential) });
      try {
        await client.listProjects({});
      } catch (error) {
        expect(error).toBeInstanceOf(FStoreError);
        expect((error as FStoreError).code).toBe('unauthenticated');
      } finally {
        client.close();
      }
    }
    await server.stop();
    const log = lines.join('');
    // The calls were logged (so the check below looked at something).
    expect(log).toMatch(/"method":"fstore.v1.RegistryService\/ListProjects","code":"OK"/);
    expect(log).toMatch(/"code":"UNAUTHENTICATED"/);
    const secretOf = (key: string) => key.slice(key.lastIndexOf('_') + 1);
    for (const credential of credentials) expect(log).not.toContain(credential);
    expect(log).not.toContain(secretOf(admin.key));
    expect(log).not.toContain('c2VjcmV0LXNpZ25hdHVyZQ');
  });
});
