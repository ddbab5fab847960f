import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { credentials, loadPackageDefinition, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

/** Standard gRPC health and reflection clients, loaded from the protos their packages ship. */

const require = createRequire(import.meta.url);
const reflectionProto = join(
  dirname(require.resolve('@grpc/reflection/package.json')),
  'build/proto/grpc/reflection/v1/reflection.proto',
);
const protoOptions = { keepCase: true, enums: String, longs: String, defaults: true, oneofs: true };

function serviceAt(root: unknown, path: string[]): ServiceClientConstructor {
  return path.reduce((node, key) => (node as Record<string, unknown>)[key], root) as ServiceClientConstructor;
}

type Callback<T> = (error: Error | null, response: T) => void;
interface HealthClient {
  check(
    request: { service: string },
    options: { deadline: number },
    callback: Callback<{ status: string }>,
  ): void;
  close(): void;
}
interface ReflectionCall {
  on(event: 'data', listener: (response: Record<string, unknown>) => void): void;
  on(event: 'error', listener: (error: Error) => void): void;
  write(request: Record<string, string>): void;
  end(): void;
}
interface ReflectionClient {
  ServerReflectionInfo(options: { deadline: number }): ReflectionCall;
  close(): void;
}

export async function checkHealth(address: string, service = ''): Promise<string> {
  const Health = serviceAt(loadPackageDefinition(loadSync(healthProtoPath, protoOptions)), [
    'grpc',
    'health',
    'v1',
    'Health',
  ]);
  const client = new Health(address, credentials.createInsecure()) as unknown as HealthClient;
  try {
    return await new Promise((resolve, reject) =>
      client.check({ service }, { deadline: Date.now() + 2_000 }, (error, response) =>
        error ? reject(error) : resolve(response.status),
      ),
    );
  } finally {
    client.close();
  }
}

/** Asks the reflection service one question and returns its one answer. */
export async function reflect(
  address: string,
  request: Record<string, string>,
): Promise<Record<string, unknown>> {
  const Reflection = serviceAt(loadPackageDefinition(loadSync(reflectionProto, protoOptions)), [
    'grpc',
    'reflection',
    'v1',
    'ServerReflection',
  ]);
  const client = new Reflection(address, credentials.createInsecure()) as unknown as ReflectionClient;
  try {
    return await new Promise((resolve, reject) => {
      const call = client.ServerReflectionInfo({ deadline: Date.now() + 2_000 });
      call.on('data', (response) => {
        resolve(response);
        call.end();
      });
      call.on('error', reject);
      call.write(request);
    });
  } finally {
    client.close();
  }
}
