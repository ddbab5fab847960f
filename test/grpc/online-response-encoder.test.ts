import { create, toBinary } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GetOnlineFeaturesResponseSchema } from '../../gen/fstore/v1/feature_service_pb.js';
import { zeroValue } from '../../src/domain/columns.js';
import type { FeatureStatus } from '../../src/domain/feature-status.js';
import { type FeatureValue, type ValueType, valueTypes } from '../../src/domain/model.js';
import { encodeOnlineResponse, onlineResponseInit } from '../../src/grpc/online-response-encoder.js';
import type { OnlineFeatureColumn, OnlineReadResult } from '../../src/serving/online-features.js';

const statuses: FeatureStatus[] = ['present', 'not_found', 'null_value', 'outside_max_age'];

const scalar: Record<string, fc.Arbitrary<FeatureValue>> = {
  int64: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  double: fc.double(),
  float: fc.float().map(Math.fround),
  string: fc.string(),
  bool: fc.boolean(),
  bytes: fc.uint8Array({ maxLength: 8 }),
  timestamp: fc.integer({ min: -(2 ** 40), max: 2 ** 52 }),
};

const arbitraryValue = (type: ValueType): fc.Arbitrary<FeatureValue> => {
  if (type.endsWith('_list')) {
    const element = scalar[type.slice(0, -'_list'.length)] as fc.Arbitrary<FeatureValue>;
    return fc.array(element, { maxLength: 4 }) as fc.Arbitrary<FeatureValue>;
  }
  return scalar[type] as fc.Arbitrary<FeatureValue>;
};

const result = fc.integer({ min: 1, max: 20 }).chain((rows) =>
  fc
    .record({
      views: fc.array(
        fc.array(fc.integer({ min: -(2 ** 40), max: 2 ** 53 - 1 }), { minLength: rows, maxLength: rows }),
        {
          minLength: 1,
          maxLength: 3,
        },
      ),
      types: fc.array(fc.constantFrom(...valueTypes), { minLength: 1, maxLength: 6 }),
      requestTimeMicros: fc.integer({ min: 0, max: 2 ** 53 - 1 }),
    })
    .chain(({ views, types, requestTimeMicros }) =>
      fc
        .tuple(
          ...types.map((type, index) =>
            fc.record({
              values: fc.array(fc.option(arbitraryValue(type), { nil: null }), {
                minLength: rows,
                maxLength: rows,
              }),
              statuses: fc.array(fc.constantFrom(...statuses), { minLength: rows, maxLength: rows }),
              view: fc.constant(views[index % views.length] as number[]),
              type: fc.constant(type),
              reference: fc.constant(`view${index % views.length}:f${index}`),
            }),
          ),
        )
        .map(
          (columns): OnlineReadResult => ({
            requestTimeMicros,
            columns: columns.map(
              (column): OnlineFeatureColumn => ({
                reference: column.reference,
                type: column.type,
                values: column.values.map((value) => value ?? zeroValue(column.type)),
                statuses: column.statuses,
                eventTimes: column.view,
              }),
            ),
          }),
        ),
    ),
);

describe('encodeOnlineResponse', () => {
  it('writes the same bytes as protobuf-es for every value type', () => {
    fc.assert(
      fc.property(result, (response) => {
        const expected = toBinary(
          GetOnlineFeaturesResponseSchema,
          create(GetOnlineFeaturesResponseSchema, onlineResponseInit(response)),
        );
        expect(Buffer.from(encodeOnlineResponse(response)).equals(Buffer.from(expected))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});
