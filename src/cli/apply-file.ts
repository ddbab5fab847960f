import { readFile } from 'node:fs/promises';
import { type DescMessage, fromJson, type JsonValue } from '@bufbuild/protobuf';
import { parseAllDocuments } from 'yaml';
import {
  ApplyEntityRequestSchema,
  ApplyFeatureSetRequestSchema,
  ApplyFeatureViewRequestSchema,
  ApplyOutcome,
  ApplyStreamAggregationRequestSchema,
  type RegistryService,
} from '../../gen/fstore/v1/registry_pb.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import type { ServiceClient } from '../grpc/client.js';

/**
 * `fstore apply --file F`: registry objects declared in YAML, one document each:
 *
 *     kind: FeatureView          # Entity | FeatureView | FeatureSet | StreamAggregation
 *     project: shop
 *     force: false               # optional: record an incompatible change as a new version
 *     spec: { name: user_stats, entities: [user], ttl: 86400s, features: [...] }
 *
 * `spec` is the object's message in protobuf's JSON mapping (field names in lowerCamelCase or as
 * in the .proto, enums by name, durations as "60s"), so the YAML and the RPC never disagree.
 * Every document is parsed and checked before the first is applied; then they are applied in
 * file order, and the first refusal stops the run (the documents before it stay applied).
 */

const kinds = {
  Entity: { schema: ApplyEntityRequestSchema, field: 'entity', method: 'applyEntity' },
  FeatureView: { schema: ApplyFeatureViewRequestSchema, field: 'featureView', method: 'applyFeatureView' },
  FeatureSet: { schema: ApplyFeatureSetRequestSchema, field: 'featureSet', method: 'applyFeatureSet' },
  StreamAggregation: {
    schema: ApplyStreamAggregationRequestSchema,
    field: 'streamAggregation',
    method: 'applyStreamAggregation',
  },
} as const;

type Kind = keyof typeof kinds;

interface Declaration {
  readonly kind: Kind;
  readonly name: string;
  readonly request: unknown;
}

export interface AppliedDeclaration {
  readonly kind: Kind;
  readonly name: string;
  readonly outcome: 'created' | 'unchanged' | 'updated';
}

const outcomeNames: Record<number, AppliedDeclaration['outcome']> = {
  [ApplyOutcome.CREATED]: 'created',
  [ApplyOutcome.UNCHANGED]: 'unchanged',
  [ApplyOutcome.UPDATED]: 'updated',
};

/** Parses and checks every document of a YAML text; throws naming the document and field. */
export function parseDeclarations(text: string, file = 'file'): Declaration[] {
  const documents = parseAllDocuments(text);
  if (!Array.isArray(documents)) throw invalidArgument(file, 'is not a YAML stream of documents');
  const declarations: Declaration[] = [];
  documents.forEach((document, index) => {
    const at = `${file} document ${index + 1}`;
    if (document.errors.length > 0)
      throw invalidArgument(at, `is not valid YAML: ${document.errors[0]?.message}`);
    const content: unknown = document.toJS();
    if (content === null || content === undefined) return; // an empty document (e.g. a trailing ---)
    if (typeof content !== 'object' || Array.isArray(content))
      throw invalidArgument(at, 'must be a mapping with kind, project and spec');
    const { kind, project, spec, force, ...rest } = content as Record<string, unknown>;
    const extra = Object.keys(rest);
    if (extra.length > 0)
      throw invalidArgument(`${at}.${extra[0]}`, 'is not a known key (kind, project, force, spec)');
    if (typeof kind !== 'string' || !(kind in kinds))
      throw invalidArgument(
        `${at}.kind`,
        `must be one of ${Object.keys(kinds).join(', ')}, got ${JSON.stringify(kind)}`,
      );
    if (typeof project !== 'string' || project === '')
      throw invalidArgument(`${at}.project`, 'must name the project');
    if (force !== undefined && typeof force !== 'boolean')
      throw invalidArgument(`${at}.force`, 'must be true or false');
    if (typeof spec !== 'object' || spec === null || Array.isArray(spec))
      throw invalidArgument(`${at}.spec`, `must be a mapping: the ${kind} itself`);
    const { schema, field } = kinds[kind as Kind];
    let request: unknown;
    try {
      request = fromJson(
        schema as DescMessage,
        {
          project,
          [field]: spec,
          ...(force === undefined || kind === 'FeatureSet' ? {} : { force }),
        } as JsonValue,
      );
    } catch (error) {
      throw invalidArgument(`${at}.spec`, error instanceof Error ? error.message : String(error));
    }
    const name = (spec as { name?: unknown }).name;
    declarations.push({ kind: kind as Kind, name: typeof name === 'string' ? name : '', request });
  });
  if (declarations.length === 0) throw invalidArgument(file, 'declares nothing');
  return declarations;
}

/** Applies the declarations of a YAML file in order; see the module comment. */
export async function applyFile(
  registry: ServiceClient<typeof RegistryService>,
  file: string,
): Promise<AppliedDeclaration[]> {
  const declarations = parseDeclarations(await readFile(file, 'utf8'), file);
  const applied: AppliedDeclaration[] = [];
  for (const [index, declaration] of declarations.entries()) {
    const method = registry[kinds[declaration.kind].method] as (
      request: unknown,
    ) => Promise<{ outcome: number }>;
    try {
      const response = await method(declaration.request);
      applied.push({
        kind: declaration.kind,
        name: declaration.name,
        outcome: outcomeNames[response.outcome] ?? 'updated',
      });
    } catch (error) {
      const failure = FStoreError.from(error);
      throw new FStoreError(
        failure.code,
        `${file} document ${index + 1} (${declaration.kind} "${declaration.name}"): ${failure.message}${
          applied.length > 0 ? `; the ${applied.length} document(s) before it were applied` : ''
        }`,
      );
    }
  }
  return applied;
}
