import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The console: client-web/console → dist/console, served by the server at /console/.
// `npx vite --config client-web/vite.config.ts` serves it with reload; point it at a running
// server with ?server=http://127.0.0.1:50051 (that origin must be in ORISUN_CORS_ORIGINS).
export default defineConfig({
  root: fileURLToPath(new URL("./console", import.meta.url)),
  base: "/console/",
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("../dist/console", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
  },
  server: { fs: { allow: [fileURLToPath(new URL("..", import.meta.url))] } },
});
