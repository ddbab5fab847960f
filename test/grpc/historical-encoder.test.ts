import { create, toBinary } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GetHistoricalFeaturesResponseSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import type { Column } from '../../src/domain/columns.js';
import { zeroValue } from '../../src/domain/columns.js';
import { type FeatureValue, type ValueType, valueTypes } from '../../src/domain/model.js';
import { encodeHistoricalResponse, historicalResponse } from '../../src/grpc/historical-mapping.js';
import type { HistoricalChunk, HistoricalFeatureColumn } from '../../src/serving/historical.js';

const micros = fc.integer({ min: -(2 ** 40), max: 2 ** 53 - 1 });

const scalar: Record<string, fc.Arbitrary<FeatureValue>> = {
  int64: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  double: fc.double(),
  float: fc.float().map(Math.fround),
  string: fc.string(),
  bool: fc.boolean(),
  bytes: fc.uint8Array({ maxLength: 8 }),
  timestamp: micros,
};

const arbitraryValue = (type: ValueType): fc.Arbitrary<FeatureValue> =>
  type.endsWith('_list')
    ? (fc.array(scalar[type.slice(0, -'_list'.length)] as fc.Arbitrary<FeatureValue>, {
        maxLength: 3,
      }) as fc.Arbitrary<FeatureValue>)
    : (scalar[type] as fc.Arbitrary<FeatureValue>);

const chunk = fc.integer({ min: 0, max: 12 }).chain((rows) => {
  const many = <T>(arbitrary: fc.Arbitrary<T>) => fc.array(arbitrary, { minLength: rows, maxLength: rows });
  const column = (type: ValueType, index: number): fc.Arbitrary<HistoricalFeatureColumn> =>
    fc
      .record({
        values: many(arbitraryValue(type)),
        statuses: many(fc.constantFrom(1, 2, 3, 4)),
        eventTimes: many(micros),
      })
      .map(({ values, statuses, eventTimes }) => ({
        reference: `v:f${index}`,
        type,
        values:
          type === 'double' || type === 'float'
            ? Float64Array.from(values as number[])
            : values.map((value) => value ?? zeroValue(type)),
        statuses: Uint8Array.from(statuses),
        eventTimes: Float64Array.from(eventTimes),
      }));
  return fc
    .record({
      firstRow: fc.nat(),
      users: many(fc.string()),
      merchants: many(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })),
      timestamps: many(micros),
      labels: many(fc.double()),
      types: fc.array(fc.constantFrom(...valueTypes), { maxLength: 5 }),
    })
    .chain(({ types, ...rest }) =>
      fc.tuple(fc.constant(rest), fc.tuple(...types.map((type, index) => column(type, index)))),
    )
    .map(
      ([rest, features]): HistoricalChunk => ({
        firstRow: rest.firstRow,
        keys: [
          { name: 'user_id', type: 'string', values: rest.users },
          { name: 'merchant_id', type: 'int64', values: rest.merchants },
        ],
        timestamps: Float64Array.from(rest.timestamps),
        carry: new Map<string, Column>([['label', { kind: 'double', values: rest.labels }]]),
        features,
      }),
    );
});

describe('encodeHistoricalResponse', () => {
  it('writes the same bytes as protobuf-es for every value type', () => {
    fc.assert(
      fc.property(chunk, (response) => {
        const expected = toBinary(
          GetHistoricalFeaturesResponseSchema,
          create(GetHistoricalFeaturesResponseSchema, historicalResponse(response)),
        );
        expect(Buffer.from(encodeHistoricalResponse(response).bytes).equals(Buffer.from(expected))).toBe(
          true,
        );
      }),
      { numRuns: 300 },
    );
  });
});
