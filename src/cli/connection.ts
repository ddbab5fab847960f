import type { DescService } from '@bufbuild/protobuf';
import { type Command, Option } from 'commander';
import { configDefaults } from '../config/config.js';
import { bearerMetadata, type ClientOptions, createClient, type ServiceClient } from '../grpc/client.js';
import { createChannelCredentials } from '../grpc/tls.js';

/**
 * How every client command reaches the server: address, TLS, and a credential. Secrets are best
 * passed through the environment (FSTORE_API_KEY, FSTORE_TOKEN) rather than flags, which other
 * users of the machine can see in the process list.
 */

export interface ConnectionFlags {
  readonly address: string;
  readonly apiKey?: string;
  readonly token?: string;
  readonly tls?: boolean;
  readonly tlsCa?: string;
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  readonly tlsServerName?: string;
}

/** Adds the credential and TLS options to every command of `program` that has `--address`. */
export function addConnectionOptionsToClients(program: Command): void {
  for (const command of program.commands)
    if (command.options.some((option) => option.long === '--address')) addCredentialOptions(command);
    else addConnectionOptionsToClients(command);
}

export function addConnectionOptions(command: Command): Command {
  return addCredentialOptions(
    command.addOption(
      new Option('--address <host:port>', 'fstore server').default(`localhost:${configDefaults.grpcPort}`),
    ),
  );
}

function addCredentialOptions(command: Command): Command {
  return command
    .addOption(new Option('--api-key <key>', 'API key fsk_… (or FSTORE_API_KEY)').env('FSTORE_API_KEY'))
    .addOption(new Option('--token <jwt>', 'OpenID Connect JWT (or FSTORE_TOKEN)').env('FSTORE_TOKEN'))
    .addOption(new Option('--tls', 'connect with TLS (implied by the other --tls-* options)'))
    .addOption(
      new Option(
        '--tls-ca <file>',
        'PEM CA the server certificate must chain to (or FSTORE_CLIENT_TLS_CA_FILE)',
      ).env('FSTORE_CLIENT_TLS_CA_FILE'),
    )
    .addOption(
      new Option('--tls-cert <file>', 'PEM client certificate for mTLS (or FSTORE_CLIENT_TLS_CERT_FILE)').env(
        'FSTORE_CLIENT_TLS_CERT_FILE',
      ),
    )
    .addOption(
      new Option('--tls-key <file>', 'PEM key of --tls-cert (or FSTORE_CLIENT_TLS_KEY_FILE)').env(
        'FSTORE_CLIENT_TLS_KEY_FILE',
      ),
    )
    .addOption(new Option('--tls-server-name <name>', 'name to check the server certificate against'));
}

export function clientOptionsOf(flags: ConnectionFlags): ClientOptions {
  if (flags.apiKey && flags.token) throw new Error('give --api-key or --token, not both');
  const credential = flags.apiKey || flags.token;
  const tls = flags.tls || flags.tlsCa || flags.tlsCert || flags.tlsKey || flags.tlsServerName;
  return {
    ...(credential ? { metadata: bearerMetadata(credential) } : {}),
    ...(tls
      ? {
          credentials: createChannelCredentials({
            ...(flags.tlsCa ? { caFile: flags.tlsCa } : {}),
            ...(flags.tlsCert ? { certFile: flags.tlsCert } : {}),
            ...(flags.tlsKey ? { keyFile: flags.tlsKey } : {}),
            ...(flags.tlsServerName ? { serverName: flags.tlsServerName } : {}),
          }),
        }
      : {}),
  };
}

export const connect = <S extends DescService>(service: S, flags: ConnectionFlags): ServiceClient<S> =>
  createClient(service, flags.address, clientOptionsOf(flags));

/**
 * Runs one client command: connects to `service`, runs `work`, closes the client. A failure is
 * printed as `fstore <name>: <message>` and sets exit code 1.
 */
export async function runWithClient<S extends DescService>(
  name: string,
  service: S,
  flags: ConnectionFlags,
  work: (client: ServiceClient<S>) => Promise<void>,
): Promise<void> {
  let client: ServiceClient<S> | undefined;
  try {
    client = connect(service, flags);
    await work(client);
  } catch (error) {
    process.stderr.write(`fstore ${name}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  } finally {
    client?.close();
  }
}
