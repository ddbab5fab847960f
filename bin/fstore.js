#!/usr/bin/env node
// Runs the TypeScript sources through tsx, so `fstore` works from a checkout without a build step.
import { register } from 'tsx/esm/api';

// Loading the sources takes a second or two. A stop asked for meanwhile finds nothing open yet:
// end at once and cleanly (exit 0) instead of dying by the signal. src/cli/main.ts removes these
// handlers as soon as it runs, before a command installs its own.
const stopWhileLoading = () => process.exit(0);
process.on('SIGTERM', stopWhileLoading);
process.on('SIGINT', stopWhileLoading);

register();
await import('../src/cli/main.ts');
