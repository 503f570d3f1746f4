import { defineConfig } from 'vitest/config';

// Forks, not threads: later suites serialize providers through Node's CommonJS loader
// and spawn qemu-img; each test file gets its own process.
export default defineConfig({
  test: {
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/harness/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
