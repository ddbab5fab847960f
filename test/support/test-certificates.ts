import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A throwaway PKI made with the `openssl` CLI (OpenSSL 3): EC P-256 keys, so a certificate
 * costs milliseconds. Every path is a PEM file in one temp dir; serials are random, so each
 * issued certificate differs from the last even with the same names.
 */

const run = promisify(execFile);

export interface CertificatePair {
  readonly cert: string;
  readonly key: string;
}

export interface IssueOptions {
  /** Subject CN. */
  readonly commonName?: string;
  readonly dns?: readonly string[];
  readonly ips?: readonly string[];
  readonly uris?: readonly string[];
  readonly emails?: readonly string[];
}

export interface TestCa {
  readonly caCert: string;
  readonly caKey: string;
  /** A server certificate; default CN localhost, SAN DNS:localhost and IP:127.0.0.1. */
  issueServerCert(options?: IssueOptions): Promise<CertificatePair>;
  /**
   * A client certificate with CN `name`; default SANs URI:spiffe://fstore.test/<name> and
   * DNS:<name>.clients.fstore.test.
   */
  clientCert(name: string, options?: Omit<IssueOptions, 'commonName'>): Promise<CertificatePair>;
}

export interface TestPki extends TestCa {
  readonly dir: string;
  /** From issueServerCert() at creation. */
  readonly serverCert: string;
  readonly serverKey: string;
  /** A second, unrelated CA: what it signs must not be trusted by anything trusting caCert. */
  readonly otherCa: TestCa;
  /** Deletes the dir if createTestPki made it. */
  remove(): Promise<void>;
}

// No distinguished-name prompts and no default extensions: each certificate gets exactly the
// extensions given on its command line (the stock config would make leaves CA:TRUE).
const minimalConfig = '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n';

let counter = 0;

async function createTestCa(dir: string, name: string, config: string): Promise<TestCa> {
  const prefix = name.toLowerCase().replace(/[^a-z0-9]+/g, '-');
  const caCert = join(dir, `${prefix}.crt`);
  const caKey = join(dir, `${prefix}.key`);
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await run('openssl', [
    'req',
    '-x509',
    '-new',
    '-config',
    config,
    ...newKey,
    '-keyout',
    caKey,
    '-out',
    caCert,
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const issue = async (
    kind: 'server' | 'client',
    commonName: string,
    options: IssueOptions,
  ): Promise<CertificatePair> => {
    counter += 1;
    const base = join(dir, `${prefix}-${kind}-${commonName.replace(/[^A-Za-z0-9]+/g, '-')}-${counter}`);
    const sans = [
      ...(options.dns ?? []).map((value) => `DNS:${value}`),
      ...(options.ips ?? []).map((value) => `IP:${value}`),
      ...(options.uris ?? []).map((value) => `URI:${value}`),
      ...(options.emails ?? []).map((value) => `email:${value}`),
    ];
    await run('openssl', [
      'req',
      '-x509',
      '-new',
      '-config',
      config,
      ...newKey,
      '-keyout',
      `${base}.key`,
      '-out',
      `${base}.crt`,
      '-days',
      '2',
      '-subj',
      `/CN=${commonName}`,
      '-CA',
      caCert,
      '-CAkey',
      caKey,
      '-addext',
      'basicConstraints=critical,CA:FALSE',
      '-addext',
      `extendedKeyUsage=${kind === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(sans.length ? ['-addext', `subjectAltName=${sans.join(',')}`] : []),
    ]);
    return { cert: `${base}.crt`, key: `${base}.key` };
  };
  return {
    caCert,
    caKey,
    issueServerCert: (options = {}) =>
      issue('server', options.commonName ?? 'localhost', {
        dns: ['localhost'],
        ips: ['127.0.0.1'],
        ...options,
      }),
    clientCert: (name, options = {}) =>
      issue('client', name, {
        uris: [`spiffe://fstore.test/${name}`],
        dns: [`${name}.clients.fstore.test`],
        ...options,
      }),
  };
}

/** A test CA with a server certificate, plus an unrelated CA, in `dir` (default: a new temp dir). */
export async function createTestPki(dir?: string): Promise<TestPki> {
  const owned = dir === undefined;
  const root = dir ?? (await mkdtemp(join(tmpdir(), 'fstore-pki-')));
  const config = join(root, 'openssl-minimal.cnf');
  await writeFile(config, minimalConfig);
  const [ca, otherCa] = await Promise.all([
    createTestCa(root, 'FStore Test CA', config),
    createTestCa(root, 'Other Test CA', config),
  ]);
  const server = await ca.issueServerCert();
  return {
    ...ca,
    dir: root,
    serverCert: server.cert,
    serverKey: server.key,
    otherCa,
    remove: async () => {
      if (owned) await rm(root, { recursive: true, force: true });
    },
  };
}
