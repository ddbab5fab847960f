/**
 * Waits until a `fstore serve` answers grpc.health.v1 Check with SERVING, on several fresh
 * connections in a row (with --processes N each connection lands on one of N processes, so
 * one SERVING answer does not mean every process is ready).
 *
 *   node --import tsx bench/wait-healthy.ts [address=127.0.0.1:6566] [timeoutSeconds=60] [needed=6]
 *
 * Exit 0 when healthy, 1 on timeout (printing the last answer or error).
 */
import { credentials, makeGenericClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

const address = process.argv[2] ?? '127.0.0.1:6566';
const timeoutS = Number(process.argv[3] ?? 60);
const needed = Number(process.argv[4] ?? 6);

const HealthClient = makeGenericClientConstructor(healthService, 'grpc.health.v1.Health');

function checkOnce(): Promise<string> {
  const client = new HealthClient(address, credentials.createInsecure());
  return new Promise<string>((resolve) => {
    (client as unknown as { check: (...args: unknown[]) => void }).check(
      { service: '' },
      { deadline: Date.now() + 1_000 },
      (error: ServiceError | null, response?: { status: string }) => {
        client.close();
        resolve(error ? `error: ${error.details || error.message}` : String(response?.status));
      },
    );
  });
}

const deadline = Date.now() + timeoutS * 1000;
let streak = 0;
let last = '(no answer yet)';
while (Date.now() < deadline) {
  last = await checkOnce();
  streak = last === 'SERVING' ? streak + 1 : 0;
  if (streak >= needed) {
    process.stdout.write(`[wait-healthy] ${address} is SERVING\n`);
    process.exit(0);
  }
  await new Promise((resolve) => setTimeout(resolve, streak > 0 ? 50 : 250));
}
process.stderr.write(`[wait-healthy] ${address} not SERVING after ${timeoutS} s; last answer: ${last}\n`);
process.exit(1);
