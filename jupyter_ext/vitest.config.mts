// The unit tests of the sidebar's pure helpers: plain Node, no JupyterLab and no browser.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node'
  }
});
