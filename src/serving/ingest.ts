import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { OfflineRowBatch, OfflineStore } from '../ports/offline-store.js';
import type { RegistryCache } from './registry-cache.js';
import { type RowColumns, validateRows } from './rows.js';

/** One message of an ingest stream: the header first, then chunks of rows. */
export type IngestMessage =
  | { readonly kind: 'header'; readonly project: string; readonly featureView: string }
  | { readonly kind: 'rows'; readonly rows: RowColumns }
  | { readonly kind: 'end'; readonly rowCount: bigint }
  | { readonly kind: 'empty' };

export interface IngestOptions {
  /** Most rows in one chunk (RESOURCE_EXHAUSTED above). */
  readonly maxBatchRows: number;
  /** Clock in microseconds since the epoch: the default created time of rows. */
  readonly nowMicros?: () => number;
}

/**
 * Bulk ingest into the offline store (DESIGN §4, issue 3): chunks are validated against the
 * view's current version as they arrive and streamed into one offline transaction, so a bad row
 * anywhere leaves nothing behind, and memory holds one chunk at a time. The transaction commits
 * only on the client's end message with the right row count: grpc-js ends a request stream the
 * same way whether the client finished or gave up, so the end of the stream alone proves nothing.
 */
export class IngestService {
  readonly #nowMicros: () => number;

  constructor(
    private readonly registry: RegistryCache,
    private readonly offline: OfflineStore,
    private readonly options: IngestOptions,
  ) {
    this.#nowMicros = options.nowMicros ?? (() => Date.now() * 1000);
  }

  async ingest(messages: AsyncIterable<IngestMessage>, signal?: AbortSignal): Promise<{ rows: number }> {
    const iterator = messages[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done)
      throw invalidArgument(
        'header',
        'the stream is empty: send a header naming the project and feature view first',
      );
    if (first.value.kind !== 'header')
      throw invalidArgument(
        'header',
        'the first message must be a header naming the project and feature view',
      );
    const { project: projectName, featureView } = first.value;
    const view = this.registry.project(projectName).views.get(featureView);
    if (!view)
      throw new FStoreError(
        'not_found',
        `header.feature_view: project "${projectName}" has no feature view "${featureView}"`,
      );
    await this.offline.ensureView(view.current);

    const { maxBatchRows } = this.options;
    const nowMicros = this.#nowMicros;
    async function* batches(): AsyncGenerator<OfflineRowBatch> {
      let firstRow = 0;
      for (let chunk = 0; ; chunk++) {
        const next = await iterator.next();
        if (signal?.aborted) throw signal.reason;
        if (next.done)
          throw new FStoreError(
            'cancelled',
            `the stream ended after ${firstRow} rows without its end message: nothing was stored`,
          );
        const message = next.value;
        if (message.kind === 'end') {
          if (message.rowCount !== BigInt(firstRow))
            throw invalidArgument(
              'end.row_count',
              `the client counted ${message.rowCount} rows, the server received ${firstRow}: nothing was stored`,
            );
          if (!(await iterator.next()).done)
            throw invalidArgument(`message ${chunk + 2}`, 'nothing may follow the end message');
          break;
        }
        if (message.kind !== 'rows')
          throw invalidArgument(
            `message ${chunk + 1}`,
            'after the header every message must be a chunk of rows or the end',
          );
        let validated: ReturnType<typeof validateRows>;
        try {
          validated = validateRows(view as NonNullable<typeof view>, message.rows, {
            maxBatchRows,
            positiveTimes: false,
          });
        } catch (error) {
          const reason = FStoreError.from(error);
          throw new FStoreError(
            reason.code,
            `rows chunk ${chunk} (stream rows from ${firstRow}): ${reason.message}`,
            {
              cause: error,
            },
          );
        }
        const created = nowMicros();
        yield {
          view: (view as NonNullable<typeof view>).current,
          keys: validated.keys,
          eventTimes: validated.eventTimes,
          createdTimes: validated.createdTimes ?? new Array<number>(validated.rowCount).fill(created),
          values: validated.values,
        };
        firstRow += validated.rowCount;
      }
      // Thrown inside the transaction, so an empty stream commits nothing either.
      if (firstRow === 0) throw invalidArgument('rows', 'the stream holds a header but no rows');
    }
    const result = await this.offline.writeRows(batches());
    return { rows: result.rows };
  }
}
