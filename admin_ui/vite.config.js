import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// Served by `snackbase serve` at /_/ under a strict CSP (no inline scripts, no eval, no other hosts).
export default defineConfig({
  base: "/_/",
  plugins: [
    svelte({
      // Editors copy their props into local drafts on purpose (each screen is re-mounted per item).
      onwarn(warning, handler) {
        if (warning.code !== "state_referenced_locally") handler(warning);
      },
    }),
  ],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2020",
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
    assetsInlineLimit: 0,
  },
  server: {
    proxy: { "/api": "http://127.0.0.1:8000", "/health": "http://127.0.0.1:8000" },
  },
});
