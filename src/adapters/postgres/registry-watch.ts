import type { Notification } from 'pg';
import pg from 'pg';
import type { PostgresOptions } from './options.js';
import { createClientConfig, translateDatabaseError, withTimeout } from './pool.js';

/** The channel every registry change is announced on, in the change's own transaction. */
export const registryChannel = 'fstore_registry';
/** The channel API key changes (creation, revocation) are announced on. */
export const apiKeyChannel = 'fstore_api_keys';

/**
 * The notification payload: `<schema>:<revision>`. The schema lets several FStore installations
 * (or test runs) share one database without waking each other's watchers.
 */
export const registryNotificationPayload = (schema: string, revision: number): string =>
  `${schema}:${revision}`;

export type RegistryChangeListener = (event: { reconnected: boolean }) => void;

/**
 * Listens on `channel` on a dedicated connection (never a pooled one: LISTEN belongs to a session). When the
 * connection fails it reconnects with exponential backoff until stopped, then reports
 * `reconnected: true`, since notifications sent meanwhile are lost.
 * Resolves once the first connection attempt is over; when that attempt fails the watch keeps
 * trying in the background and reports `reconnected: true` when it succeeds.
 */
export async function watchRegistryChanges(
  options: PostgresOptions,
  listener: RegistryChangeListener,
  channel: string = registryChannel,
): Promise<() => Promise<void>> {
  let stopped = false;
  let client: pg.Client | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let heartbeatTimer: NodeJS.Timeout | undefined;
  let delay = options.watchReconnectInitialDelayMs;
  let everConnected = false;

  const notify = (reconnected: boolean) => {
    try {
      listener({ reconnected });
    } catch (error) {
      // A faulty listener must not take the change feed down with it.
      options.logger?.warn({ err: error }, 'registry watch listener threw');
    }
  };

  const onNotification = (message: Notification) => {
    if (message.channel !== channel) return;
    const schema = message.payload?.slice(0, message.payload.lastIndexOf(':'));
    if (schema === options.schema) notify(false);
  };

  // Ends one connection without waiting on a server that may be gone.
  const discard = async (current: pg.Client) => {
    current.removeAllListeners('notification');
    await withTimeout(current.end(), options.closeTimeoutMs).catch(() => undefined);
  };

  const connectionLost = (current: pg.Client, error: unknown) => {
    if (current !== client) return; // an older connection, already replaced
    client = undefined;
    clearInterval(heartbeatTimer);
    if (stopped) return;
    options.logger?.warn(
      { err: translateDatabaseError(error) },
      'registry change feed (PostgreSQL LISTEN) lost its connection; reconnecting',
    );
    void discard(current);
    scheduleConnect();
  };

  const scheduleConnect = () => {
    if (stopped) return;
    // Jitter keeps many serving processes from reconnecting in lockstep after a restart.
    const wait = delay / 2 + Math.random() * (delay / 2);
    delay = Math.min(delay * 2, options.watchReconnectMaxDelayMs);
    retryTimer = setTimeout(() => void connect(), wait);
  };

  const connect = async (): Promise<void> => {
    if (stopped) return;
    const current = new pg.Client(createClientConfig(options));
    // Both fire when the server goes away; the first one wins, `connectionLost` ignores the rest.
    current.on('error', (error) => connectionLost(current, error));
    current.on('end', () => connectionLost(current, new Error('Connection terminated')));
    current.on('notification', onNotification);
    client = current;
    try {
      await current.connect();
      await current.query(`LISTEN ${channel}`);
    } catch (error) {
      connectionLost(current, error);
      return;
    }
    if (stopped || client !== current) {
      await discard(current);
      return;
    }
    delay = options.watchReconnectInitialDelayMs;
    heartbeatTimer = setInterval(() => {
      // A connection cut without a FIN (a dead host, a dropped NAT entry) only shows when used.
      withTimeout(current.query('SELECT 1'), options.connectTimeoutMs).catch((error: unknown) =>
        connectionLost(current, error),
      );
    }, options.watchHeartbeatMs);
    heartbeatTimer.unref();
    const reconnected = everConnected;
    everConnected = true;
    if (reconnected) notify(true);
  };

  await connect();
  if (!everConnected) everConnected = true; // the first success after a failed start is a reconnection

  return async () => {
    if (stopped) return;
    stopped = true;
    clearTimeout(retryTimer);
    clearInterval(heartbeatTimer);
    const current = client;
    client = undefined;
    if (current) await discard(current);
  };
}
