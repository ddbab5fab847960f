/**
 * What the stream reset and stop tests read and change in PostgreSQL directly: the stream
 * checkpoints of an aggregation (with the next offset each holds) and a view's offline rows.
 */
import pg from 'pg';
import { decodeStreamCheckpoint } from '../../src/domain/stream-checkpoint.js';

async function withClient<T>(url: string, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

/** The stored checkpoints of an aggregation: partition → generation and the next offset to read. */
export function storedCheckpoints(
  url: string,
  schema: string,
  project: string,
  aggregation: string,
): Promise<Map<number, { generation: number; nextOffset: bigint }>> {
  return withClient(url, async (client) => {
    const result = await client.query<{ partition: number; generation: string; state: Buffer }>(
      `SELECT partition, generation::text, state FROM "${schema}".offline_stream_checkpoints
       WHERE project = $1 AND aggregation = $2`,
      [project, aggregation],
    );
    return new Map(
      result.rows.map((row) => {
        const checkpoint = decodeStreamCheckpoint(new Uint8Array(row.state));
        return [
          row.partition,
          {
            generation: Number(row.generation),
            nextOffset: BigInt(checkpoint.positions[String(row.partition)] ?? '-1'),
          },
        ];
      }),
    );
  });
}

/** Deletes every offline row of the view (what a recompute must write again); returns how many. */
export function deleteOfflineRows(url: string, schema: string, viewId: number): Promise<number> {
  return withClient(url, async (client) => {
    const result = await client.query(`DELETE FROM "${schema}".offline_view_${viewId}`);
    return result.rowCount ?? 0;
  });
}

/** How many offline rows the view holds (0 when its table does not exist yet). */
export function offlineRowCount(url: string, schema: string, viewId: number): Promise<number> {
  return withClient(url, async (client) => {
    const exists = await client.query(`SELECT to_regclass($1) IS NOT NULL AS present`, [
      `"${schema}".offline_view_${viewId}`,
    ]);
    if (!exists.rows[0]?.present) return 0;
    const result = await client.query<{ count: string }>(
      `SELECT count(*)::text AS count FROM "${schema}".offline_view_${viewId}`,
    );
    return Number(result.rows[0]?.count ?? 0);
  });
}
