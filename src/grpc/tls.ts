import { createHash, createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { SecureServerOptions } from 'node:http2';
import {
  checkServerIdentity,
  createSecureContext,
  type PeerCertificate,
  type SecureContextOptions,
} from 'node:tls';
import { type ChannelCredentials, credentials, ServerCredentials } from '@grpc/grpc-js';
import { FStoreError } from '../domain/errors.js';

/**
 * TLS for FStore's ports: server credentials that reload their certificate files without a
 * restart (gRPC here, the metrics port through `watchTlsFiles`), client credentials for the CLI
 * and the TS client, and the names a verified client certificate binds to.
 */

export interface TlsFiles {
  /** PEM certificate chain of the server, leaf first. */
  readonly certFile: string;
  /** PEM private key (unencrypted) of that certificate. */
  readonly keyFile: string;
  /** PEM CA bundle: with it, client certificates are requested and verified against it. */
  readonly clientCaFile?: string;
  /**
   * With clientCaFile. Default 'optional': a client without a verified certificate still
   * connects (and may authenticate with a key or JWT); 'require' refuses it at the handshake.
   */
  readonly clientCertificate?: 'optional' | 'require';
  /** How often the files are checked for changes. Default 5_000. */
  readonly reloadIntervalMs?: number;
}

/** The parsed, mutually consistent content of a TlsFiles set. */
export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
}

export interface TlsReloadEvents {
  /** New files were loaded and are used for new connections. */
  reloaded?(material: TlsMaterial): void;
  /** Changed files were unusable (half written, cert and key not matching yet): the last good ones stay. */
  rejected?(error: FStoreError): void;
}

export interface TlsFileWatcher {
  /** The material read at start (valid: the start fails otherwise). */
  readonly initial: TlsMaterial;
  /** Stops checking the files. */
  close(): void;
}

export interface ReloadingServerCredentials {
  readonly credentials: ServerCredentials;
  /** Stops checking the files; connections keep the last loaded certificate. */
  close(): void;
}

export const defaultReloadIntervalMs = 5_000;

const fileLabels = {
  certFile: 'TLS certificate file',
  keyFile: 'TLS private key file',
  clientCaFile: 'TLS client CA file',
} as const;

interface PemBlock {
  readonly label: string;
  readonly text: string;
}

/** The PEM blocks of a file; a BEGIN without its END (a file caught half written) is an error. */
function pemBlocks(text: string): PemBlock[] | undefined {
  const blocks = [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g)].map((match) => ({
    label: match[1] ?? '',
    text: match[0],
  }));
  const begins = text.match(/-----BEGIN /g)?.length ?? 0;
  return blocks.length === 0 || begins !== blocks.length ? undefined : blocks;
}

function invalidFile(label: string, path: string, problem: string, cause?: unknown): FStoreError {
  return new FStoreError('invalid_argument', `${label} ${path}: ${problem}`, { cause });
}

function parseCertificates(label: string, path: string, data: Buffer): X509Certificate[] {
  const blocks = pemBlocks(data.toString('latin1'))?.filter((block) => block.label === 'CERTIFICATE');
  if (!blocks?.length)
    throw invalidFile(label, path, 'not a PEM certificate file (no complete CERTIFICATE block)');
  return blocks.map((block, index) => {
    try {
      return new X509Certificate(block.text);
    } catch (error) {
      throw invalidFile(
        label,
        path,
        `certificate ${index + 1} does not parse: ${(error as Error).message}`,
        error,
      );
    }
  });
}

function parsePrivateKey(path: string, data: Buffer): KeyObject {
  const blocks = pemBlocks(data.toString('latin1'))?.filter((block) => block.label.endsWith('PRIVATE KEY'));
  if (blocks?.length !== 1)
    throw invalidFile(
      fileLabels.keyFile,
      path,
      'not a PEM private key file (expected one complete PRIVATE KEY block)',
    );
  try {
    return createPrivateKey(blocks[0]!.text);
  } catch (error) {
    throw invalidFile(
      fileLabels.keyFile,
      path,
      `not a usable unencrypted private key: ${(error as Error).message}`,
      error,
    );
  }
}

interface RawFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | undefined;
}

async function readRaw(files: TlsFiles): Promise<RawFiles> {
  const read = (label: string, path: string) =>
    readFile(path).catch((error: unknown) => {
      throw invalidFile(label, path, `cannot read: ${(error as Error).message}`, error);
    });
  const [cert, key, ca] = await Promise.all([
    read(fileLabels.certFile, files.certFile),
    read(fileLabels.keyFile, files.keyFile),
    files.clientCaFile === undefined ? undefined : read(fileLabels.clientCaFile, files.clientCaFile),
  ]);
  return { cert, key, ca };
}

/** Checks each file, that the key belongs to the certificate, and that OpenSSL takes them. */
function validate(files: TlsFiles, raw: RawFiles): TlsMaterial {
  const [leaf] = parseCertificates(fileLabels.certFile, files.certFile, raw.cert);
  const key = parsePrivateKey(files.keyFile, raw.key);
  if (raw.ca !== undefined && files.clientCaFile !== undefined)
    parseCertificates(fileLabels.clientCaFile, files.clientCaFile, raw.ca);
  if (!leaf!.checkPrivateKey(key))
    throw invalidFile(
      fileLabels.keyFile,
      files.keyFile,
      `the key does not belong to the first certificate of ${files.certFile}`,
    );
  const material = { cert: raw.cert, key: raw.key, ca: raw.ca };
  try {
    createSecureContext(material);
  } catch (error) {
    throw invalidFile(
      fileLabels.certFile,
      files.certFile,
      `rejected by TLS: ${(error as Error).message}`,
      error,
    );
  }
  return material;
}

function digest(raw: RawFiles): string {
  const hash = createHash('sha256');
  for (const part of [raw.cert, raw.key, raw.ca ?? Buffer.alloc(0)]) {
    hash.update(String(part.length));
    hash.update(':');
    hash.update(part);
  }
  return hash.digest('hex');
}

function reloadIntervalOf(files: TlsFiles): number {
  const interval = files.reloadIntervalMs ?? defaultReloadIntervalMs;
  if (!Number.isFinite(interval) || interval <= 0)
    throw new FStoreError(
      'invalid_argument',
      `TLS reloadIntervalMs must be a positive number, got ${interval}`,
    );
  return interval;
}

/**
 * Reads and validates the files (throws FStoreError invalid_argument naming the file), then
 * polls them every reloadIntervalMs and calls `onChange` with each new valid set. Polling the
 * content, not watching inodes: a replacement by rename, an in-place rewrite and a Kubernetes
 * secret's symlink swap all show the same way. An unusable set (half written, a new cert with
 * the old key between two renames) is skipped and retried at the next check, so the last good
 * one keeps serving.
 */
export async function watchTlsFiles(
  files: TlsFiles,
  onChange: (material: TlsMaterial) => void,
  events: TlsReloadEvents = {},
): Promise<TlsFileWatcher> {
  const intervalMs = reloadIntervalOf(files);
  if (files.clientCertificate !== undefined && files.clientCaFile === undefined)
    throw new FStoreError(
      'invalid_argument',
      'TLS clientCertificate needs a clientCaFile to verify them against',
    );
  const raw = await readRaw(files);
  const initial = validate(files, raw);
  // What the last check saw, good or bad: an unchanged bad set is reported once, not every tick.
  let lastSeen = digest(raw);
  let closed = false;
  let timer: NodeJS.Timeout | undefined;

  const check = async () => {
    let seen: string;
    let error: FStoreError | undefined;
    let material: TlsMaterial | undefined;
    try {
      const current = await readRaw(files);
      seen = digest(current);
      if (seen !== lastSeen) material = validate(files, current);
    } catch (reason) {
      error = FStoreError.from(reason, 'invalid_argument');
      seen = `error:${error.message}`;
    }
    if (closed || seen === lastSeen) return;
    lastSeen = seen;
    if (error) {
      events.rejected?.(error);
      return;
    }
    if (!material) return;
    try {
      onChange(material);
      events.reloaded?.(material);
    } catch (reason) {
      events.rejected?.(FStoreError.from(reason, 'invalid_argument'));
    }
  };
  const schedule = () => {
    if (closed) return;
    timer = setTimeout(() => void check().finally(schedule), intervalMs);
    // Reloading alone never keeps the process alive.
    timer.unref();
  };
  schedule();
  return {
    initial,
    close: () => {
      closed = true;
      if (timer) clearTimeout(timer);
    },
  };
}

/** Whether and how a TLS server asks for client certificates. */
export function clientCertificateOptions(files: TlsFiles): {
  requestCert: boolean;
  rejectUnauthorized: boolean;
} {
  const requestCert = files.clientCaFile !== undefined;
  return { requestCert, rejectUnauthorized: requestCert && files.clientCertificate === 'require' };
}

/**
 * The secure context grpc-js gets at bind time and on each reload. The cipher override of
 * grpc-js (honoured as its createSsl does) goes here, not in the server options: Node's
 * setSecureContext resets the ciphers to the default when the new options have none.
 */
function contextOptions(material: TlsMaterial): SecureContextOptions {
  const ciphers = process.env.GRPC_SSL_CIPHER_SUITES;
  return {
    cert: material.cert,
    key: material.key,
    ...(material.ca === undefined ? {} : { ca: material.ca }),
    ...(ciphers ? { ciphers } : {}),
  };
}

/**
 * Our own ServerCredentials rather than grpc-js's experimental certificate providers: in 1.14
 * `createCertificateProviderServerCredentials` swaps its CA and identity arguments, and its
 * file watcher reports "no certificate" (the server then drops every handshake) when a file
 * is briefly unreadable during a replacement. Here grpc-js gets the first context at bind time
 * and only ever a validated one afterwards.
 */
class ReloadingCredentials extends ServerCredentials {
  constructor(serverOptions: SecureServerOptions, context: SecureContextOptions) {
    super(serverOptions, context);
  }

  update(context: SecureContextOptions): void {
    this.updateSecureContextOptions(context);
  }

  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

/**
 * TLS server credentials for grpc-js from PEM files, reloaded on change (new connections get
 * the new certificate; open ones keep theirs). Throws FStoreError('invalid_argument', …) naming
 * the file when one is missing or not PEM.
 */
export async function createServerCredentials(
  files: TlsFiles,
  events: TlsReloadEvents = {},
): Promise<ReloadingServerCredentials> {
  let serverCredentials: ReloadingCredentials | undefined;
  const watcher = await watchTlsFiles(
    files,
    (material) => serverCredentials?.update(contextOptions(material)),
    events,
  );
  serverCredentials = new ReloadingCredentials(
    clientCertificateOptions(files),
    contextOptions(watcher.initial),
  );
  return { credentials: serverCredentials, close: () => watcher.close() };
}

export interface ClientTlsOptions {
  /** PEM CA bundle the server's certificate must chain to; default: the system's roots. */
  readonly caFile?: string;
  /** PEM client certificate chain, for mTLS; with keyFile. */
  readonly certFile?: string;
  /** PEM private key of certFile. */
  readonly keyFile?: string;
  /**
   * The name the server's certificate is checked against, when it differs from the host
   * dialled (an IP, a load balancer). Default: the host of the target.
   */
  readonly serverName?: string;
}

function readClientFile(label: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw invalidFile(label, path, `cannot read: ${(error as Error).message}`, error);
  }
}

/** grpc-js channel credentials for FStore clients (CLI, TS client): TLS with an optional CA and an optional client cert. */
export function createChannelCredentials(options: ClientTlsOptions): ChannelCredentials {
  if ((options.certFile === undefined) !== (options.keyFile === undefined))
    throw new FStoreError('invalid_argument', 'a TLS client certificate needs both certFile and keyFile');
  let ca: Buffer | null = null;
  if (options.caFile !== undefined) {
    ca = readClientFile('TLS CA file', options.caFile);
    parseCertificates('TLS CA file', options.caFile, ca);
  }
  let cert: Buffer | null = null;
  let key: Buffer | null = null;
  if (options.certFile !== undefined && options.keyFile !== undefined) {
    cert = readClientFile('TLS client certificate file', options.certFile);
    key = readClientFile('TLS client key file', options.keyFile);
    const [leaf] = parseCertificates('TLS client certificate file', options.certFile, cert);
    if (!leaf!.checkPrivateKey(parsePrivateKey(options.keyFile, key)))
      throw invalidFile(
        'TLS client key file',
        options.keyFile,
        `the key does not belong to the first certificate of ${options.certFile}`,
      );
  }
  const serverName = options.serverName;
  return credentials.createSsl(
    ca,
    key,
    cert,
    serverName === undefined
      ? {}
      : {
          checkServerIdentity: (_host: string, certificate: PeerCertificate) =>
            checkServerIdentity(serverName, certificate),
        },
  );
}

/** Splits Node's `subjectaltname` ("DNS:a, URI:b", values with separators JSON-quoted). */
function subjectAltNames(text: string): { type: string; value: string }[] {
  const names: { type: string; value: string }[] = [];
  for (const match of text.matchAll(/([A-Za-z][A-Za-z0-9 .]*?):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g)) {
    const raw = match[2] ?? '';
    let value = raw;
    if (raw.startsWith('"'))
      try {
        value = JSON.parse(raw) as string;
      } catch {
        continue;
      }
    names.push({ type: match[1] ?? '', value });
  }
  return names;
}

/** Names a verified client certificate can be bound by: `cert:<subject CN>` and `cert:<each DNS/URI/email SAN value>`, deduplicated. */
export function certificatePrincipalNames(certificate: PeerCertificate): string[] {
  const names = new Set<string>();
  // Node gives a repeated attribute as an array.
  const commonNames = certificate.subject?.CN as string | string[] | undefined;
  for (const commonName of [commonNames ?? []].flat()) if (commonName) names.add(`cert:${commonName}`);
  for (const { type, value } of subjectAltNames(certificate.subjectaltname ?? ''))
    if ((type === 'DNS' || type === 'URI' || type === 'email') && value) names.add(`cert:${value}`);
  return [...names];
}
