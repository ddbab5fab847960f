/**
 * Addresses of the real servers the tests use, started by `scripts/servers.sh start` (CI does it
 * in .ci/run). A missing variable fails the test with the fix, never skips it.
 */
export function requireEnvironment(name: string): string {
  const value = process.env[name];
  if (!value)
    throw new Error(
      `${name} is not set: start the test servers with "bash scripts/servers.sh start" and eval "$(bash scripts/servers.sh env)"`,
    );
  return value;
}

export const randomName = (prefix: string): string => `${prefix}_${Math.random().toString(36).slice(2, 10)}`;
