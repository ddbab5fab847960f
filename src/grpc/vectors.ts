import type { MessageInitShape } from '@bufbuild/protobuf';
import {
  FeatureStatus as ProtoFeatureStatus,
  ValueType as ProtoValueType,
  type Vector,
  type VectorSchema,
} from '../../gen/fstore/v1/values_pb.js';
import { type Column, listElementType } from '../domain/columns.js';
import type { FeatureStatus } from '../domain/feature-status.js';
import type { FeatureValue, ValueType } from '../domain/model.js';

/** Mapping between protobuf vectors / enums and the domain's columns and names. */

export function columnFromVector(vector: Vector | undefined): Column {
  const values = vector?.values;
  switch (values?.case) {
    case 'int64Values':
      return { kind: 'int64', values: values.value.values };
    case 'timestampValues':
      return { kind: 'timestamp', values: values.value.values };
    case 'doubleValues':
      return { kind: 'double', values: values.value.values };
    case 'floatValues':
      return { kind: 'float', values: values.value.values };
    case 'stringValues':
      return { kind: 'string', values: values.value.values };
    case 'boolValues':
      return { kind: 'bool', values: values.value.values };
    case 'bytesValues':
      return { kind: 'bytes', values: values.value.values };
    case 'listValues':
      return { kind: 'list', values: values.value.rows.map(columnFromVector) };
    default:
      return { kind: 'none', values: [] };
  }
}

export function columnsFromVectorMap(vectors: { [key: string]: Vector }): Map<string, Column> {
  const columns = new Map<string, Column>();
  for (const name of Object.keys(vectors)) columns.set(name, columnFromVector(vectors[name]));
  return columns;
}

type VectorInit = MessageInitShape<typeof VectorSchema>;

function scalarVector(type: ValueType, values: readonly unknown[]): VectorInit {
  switch (type) {
    case 'int64':
      return { values: { case: 'int64Values', value: { values: values as bigint[] } } };
    case 'timestamp':
      return {
        values: {
          case: 'timestampValues',
          value: { values: (values as number[]).map((micros) => BigInt(micros)) },
        },
      };
    case 'double':
      return { values: { case: 'doubleValues', value: { values: values as number[] } } };
    case 'float':
      return { values: { case: 'floatValues', value: { values: values as number[] } } };
    case 'string':
      return { values: { case: 'stringValues', value: { values: values as string[] } } };
    case 'bool':
      return { values: { case: 'boolValues', value: { values: values as boolean[] } } };
    case 'bytes':
      return { values: { case: 'bytesValues', value: { values: values as Uint8Array[] } } };
    default:
      throw new Error(`not a scalar type: ${type}`);
  }
}

/** A typed vector of `type` holding `values` (no nulls: callers substitute zero values). */
export function vectorFromValues(type: ValueType, values: readonly FeatureValue[]): VectorInit {
  const elementType = listElementType(type);
  if (!elementType) return scalarVector(type, values);
  return {
    values: {
      case: 'listValues',
      value: { rows: values.map((row) => scalarVector(elementType, (row ?? []) as readonly unknown[])) },
    },
  };
}

const valueTypeByProto = new Map<ProtoValueType, ValueType>([
  [ProtoValueType.INT64, 'int64'],
  [ProtoValueType.DOUBLE, 'double'],
  [ProtoValueType.FLOAT, 'float'],
  [ProtoValueType.STRING, 'string'],
  [ProtoValueType.BOOL, 'bool'],
  [ProtoValueType.BYTES, 'bytes'],
  [ProtoValueType.TIMESTAMP, 'timestamp'],
  [ProtoValueType.INT64_LIST, 'int64_list'],
  [ProtoValueType.DOUBLE_LIST, 'double_list'],
  [ProtoValueType.FLOAT_LIST, 'float_list'],
  [ProtoValueType.STRING_LIST, 'string_list'],
  [ProtoValueType.BOOL_LIST, 'bool_list'],
  [ProtoValueType.BYTES_LIST, 'bytes_list'],
]);
const protoByValueType = new Map([...valueTypeByProto].map(([proto, type]) => [type, proto]));

/** undefined for VALUE_TYPE_UNSPECIFIED and unknown numbers: the caller names the field. */
export function valueTypeFromProto(type: ProtoValueType): ValueType | undefined {
  return valueTypeByProto.get(type);
}

export function valueTypeToProto(type: ValueType): ProtoValueType {
  return protoByValueType.get(type) ?? ProtoValueType.UNSPECIFIED;
}

const statusToProto: Record<FeatureStatus, ProtoFeatureStatus> = {
  present: ProtoFeatureStatus.PRESENT,
  not_found: ProtoFeatureStatus.NOT_FOUND,
  null_value: ProtoFeatureStatus.NULL_VALUE,
  outside_max_age: ProtoFeatureStatus.OUTSIDE_MAX_AGE,
};

export function featureStatusToProto(status: FeatureStatus): ProtoFeatureStatus {
  return statusToProto[status];
}

/** A column back as the vector it came from (carried columns are echoed unchanged). */
export function vectorFromColumn(column: Column): VectorInit {
  switch (column.kind) {
    case 'int64':
      return { values: { case: 'int64Values', value: { values: column.values as bigint[] } } };
    case 'timestamp':
      return { values: { case: 'timestampValues', value: { values: column.values as bigint[] } } };
    case 'list':
      return { values: { case: 'listValues', value: { rows: column.values.map(vectorFromColumn) } } };
    case 'none':
      return {};
    default:
      return scalarVector(column.kind, column.values);
  }
}
