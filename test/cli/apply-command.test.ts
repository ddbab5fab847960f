import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AggregationFunction, StreamEncoding } from '../../gen/fstore/v1/registry_pb.js';
import { randomName } from '../support/environment.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { runCli } from './run-cli.js';

/** `fstore apply --file` against a real server and PostgreSQL registry. */
describe('fstore apply', () => {
  let server: TestServer;
  let directory: string;
  const project = randomName('p');

  const declarations = (extraAggregation = '') => `
kind: Entity
project: ${project}
spec: { name: user, joinKeys: [{ name: user_id, type: VALUE_TYPE_STRING }] }
---
kind: StreamAggregation
project: ${project}
spec:
  name: payment_stats
  topic: payments.v1
  encoding: STREAM_ENCODING_JSON
  entities: [user]
  keyFields: [user]
  eventTimeField: ts
  eventTimeUnit: EVENT_TIME_UNIT_EPOCH_MILLIS
  watermarkBound: 5s
  aggregations:
    - { name: payments_1h, function: AGGREGATION_FUNCTION_COUNT, windowSize: 3600s, slide: 60s }
${extraAggregation}
---
kind: FeatureSet
project: ${project}
spec: { name: fraud, features: ["payment_stats:payments_1h"] }
`;

  const apply = async (text: string) => {
    const file = join(directory, `${randomName('f')}.yaml`);
    await writeFile(file, text);
    return runCli(['apply', '--address', server.address, '--file', file]);
  };

  beforeAll(async () => {
    server = await startTestServer('memory');
    directory = await mkdtemp(join(tmpdir(), 'fstore-apply-'));
  });
  afterAll(async () => {
    await server?.stop();
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  it('applies every document in order and reports each outcome', async () => {
    const first = await apply(declarations());
    expect(first).toMatchObject({ code: 0 });
    expect(first.output).toContain('Entity user: created');
    expect(first.output).toContain('StreamAggregation payment_stats: created');
    expect(first.output).toContain('FeatureSet fraud: created');
    const { streamAggregation } = await server.registry.getStreamAggregation({
      project,
      name: 'payment_stats',
    });
    expect(streamAggregation?.encoding).toBe(StreamEncoding.JSON);
    expect(streamAggregation?.aggregations[0]).toMatchObject({
      name: 'payments_1h',
      function: AggregationFunction.COUNT,
      windowSize: { seconds: 3600n },
      slide: { seconds: 60n },
    });
    // The same file again changes nothing; a new aggregation updates the produced view.
    expect((await apply(declarations())).output).toContain('StreamAggregation payment_stats: unchanged');
    const updated = await apply(
      declarations(
        '    - { name: amount_5m, function: AGGREGATION_FUNCTION_SUM, field: amount, windowSize: 300s, slide: 60s }',
      ),
    );
    expect(updated.output).toContain('StreamAggregation payment_stats: updated');
    const view = await server.registry.getFeatureView({ project, name: 'payment_stats' });
    expect(view.featureView?.features.map((feature) => feature.name)).toEqual(['payments_1h', 'amount_5m']);
  });

  it('names the document and field of a bad declaration and applies nothing', async () => {
    const before = (await server.registry.listFeatureSets({ project })).featureSets.length;
    const badEnum = await apply(`${declarations()}---
kind: FeatureSet
project: ${project}
spec: { name: other, features: ["payment_stats:payments_1h"], colour: blue }
`);
    expect(badEnum).toMatchObject({ code: 1, output: expect.stringMatching(/document 4\.spec/) });
    expect((await server.registry.listFeatureSets({ project })).featureSets).toHaveLength(before);
    const badKind = await apply(`kind: Nothing\nproject: ${project}\nspec: {}\n`);
    expect(badKind).toMatchObject({ code: 1, output: expect.stringContaining('document 1.kind') });
    // Refused by the server: a slide that does not divide the window, with the field path.
    const refused = await apply(
      declarations().replace('windowSize: 3600s, slide: 60s', 'windowSize: 3600s, slide: 7s'),
    );
    expect(refused).toMatchObject({
      code: 1,
      output: expect.stringMatching(
        /document 2 \(StreamAggregation "payment_stats"\).*aggregations\[0\]\.slide.*before it were applied/,
      ),
    });
  });
});
