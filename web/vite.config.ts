import { defineConfig } from "vitest/config";

// Vitest 5 prints a failed test's errors with `Map.groupBy` (Node 21+);
// on Node 20, the image's, a failure would crash the report instead of
// saying what failed.
if (!("groupBy" in Map)) {
  Object.defineProperty(Map, "groupBy", {
    value<K, V>(items: Iterable<V>, key: (item: V, index: number) => K): Map<K, V[]> {
      const groups = new Map<K, V[]>();
      let index = 0;
      for (const item of items) {
        const k = key(item, index++);
        const group = groups.get(k);
        if (group) group.push(item);
        else groups.set(k, [item]);
      }
      return groups;
    },
  });
}

// Hashed assets under assets/ (the node serves them immutable), no inline
// scripts or styles (its Content-Security-Policy forbids them).
export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, assetsInlineLimit: 0, modulePreload: { polyfill: false }, target: "es2022" },
  test: { environment: "node", include: ["src/**/*.test.ts"] },
});
