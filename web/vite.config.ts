import { defineConfig } from "vitest/config";

// Hashed assets under assets/ (the node serves them immutable), no inline
// scripts or styles (its Content-Security-Policy forbids them).
export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, assetsInlineLimit: 0, modulePreload: { polyfill: false }, target: "es2022" },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
