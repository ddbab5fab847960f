import type { PeerCertificate } from 'node:tls';
import { distinctBindings, type Principal, type RoleBinding } from '../domain/access.js';
import { FStoreError } from '../domain/errors.js';
import type { ApiKeyVerifier } from './api-key-verifier.js';
import { looksLikeApiKey } from './api-keys.js';

/**
 * Who is calling, from the call's metadata and transport, checked once per call:
 *  - `authorization: Bearer <credential>` or `x-api-key: <key>`: an API key (`fsk_…`) or a JWT;
 *  - else a client certificate verified by the TLS handshake (mTLS), when one is configured.
 * An explicit credential wins over the certificate, so a service with a certificate can still act
 * with a key of narrower rights. Messages say what is wrong, never any part of the credential.
 */

export interface MetadataReader {
  get(key: string): (string | Buffer)[];
}

export interface JwtCheck {
  verify(token: string): Promise<Principal>;
}

export interface CertificateCheck {
  /** The names a certificate may be bound by (`cert:<CN>`, `cert:<SAN>`...). */
  names(certificate: PeerCertificate): string[];
}

export interface AuthenticatorOptions {
  readonly apiKeys?: ApiKeyVerifier;
  readonly jwt?: JwtCheck;
  readonly certificates?: CertificateCheck;
  /** Bindings configured for a name (`cert:…`, `group:…`, `jwt:…`). */
  readonly lookupBindings: (name: string) => readonly RoleBinding[];
}

export interface Authenticator {
  authenticate(
    metadata: MetadataReader,
    peerCertificate: PeerCertificate | undefined,
  ): Principal | Promise<Principal>;
}

/** Longest credential looked at; anything longer is malformed (keys are 61 characters, JWTs a few KiB). */
const maxCredentialLength = 16 * 1024;

const unauthenticated = (message: string) => new FStoreError('unauthenticated', message);

function singleText(metadata: MetadataReader, key: string): string | undefined {
  const values = metadata.get(key);
  if (values.length === 0) return undefined;
  if (values.length > 1) throw unauthenticated(`several ${key} headers: send one credential`);
  const value = values[0];
  if (typeof value !== 'string') throw unauthenticated(`${key} header: malformed`);
  return value;
}

export function createAuthenticator(options: AuthenticatorOptions): Authenticator {
  const { apiKeys, jwt, certificates, lookupBindings } = options;
  const methods = [
    apiKeys ? 'an API key' : undefined,
    jwt ? 'a JWT' : undefined,
    certificates ? 'a client certificate' : undefined,
  ].filter(Boolean);

  const bearer = (credential: string): Principal | Promise<Principal> => {
    if (credential.length === 0 || credential.length > maxCredentialLength)
      throw unauthenticated('bearer credential: malformed');
    if (looksLikeApiKey(credential)) {
      if (!apiKeys) throw unauthenticated('API keys are not accepted by this server');
      return apiKeys.verify(credential);
    }
    if (!jwt)
      throw unauthenticated(
        'bearer credential: not an API key (fsk_…), and JWTs are not accepted by this server',
      );
    return jwt.verify(credential);
  };

  return {
    authenticate(metadata, peerCertificate) {
      const authorization = singleText(metadata, 'authorization');
      const apiKey = singleText(metadata, 'x-api-key');
      if (authorization !== undefined && apiKey !== undefined)
        throw unauthenticated('both authorization and x-api-key headers: send one credential');
      if (apiKey !== undefined) {
        if (!looksLikeApiKey(apiKey) || apiKey.length > maxCredentialLength)
          throw unauthenticated('x-api-key header: malformed (expected fsk_<id>_<secret>)');
        return bearer(apiKey);
      }
      if (authorization !== undefined) {
        const match = /^bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization.slice(0, maxCredentialLength + 16));
        if (!match) throw unauthenticated('authorization header: expected "Bearer <API key or JWT>"');
        return bearer(match[1] as string);
      }
      if (peerCertificate && certificates) {
        const names = certificates.names(peerCertificate);
        if (names.length === 0)
          throw unauthenticated('client certificate: it has no subject CN or SAN to bind');
        return {
          id: names[0] as string,
          method: 'certificate',
          bindings: distinctBindings(names.flatMap((name) => lookupBindings(name))),
        };
      }
      throw unauthenticated(
        `no credentials: this server needs ${methods.join(' or ')} (authorization: Bearer <credential>${
          certificates ? ', or a client certificate' : ''
        })`,
      );
    },
  };
}
