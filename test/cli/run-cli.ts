import { spawn } from 'node:child_process';
import { join } from 'node:path';

const binary = join(import.meta.dirname, '../../bin/fstore.js');

/** Runs `fstore <args>` as a child process; resolves with its exit code and stdout + stderr. */
export function runCli(args: readonly string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    let output = '';
    const child = spawn(process.execPath, [binary, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (data) => {
      output += data;
    });
    child.stderr.on('data', (data) => {
      output += data;
    });
    child.once('exit', (code) => resolve({ code, output }));
  });
}
