import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The version in Orisun's package.json, found by walking up from this file: the same code runs
 * from server/ (tests) and from dist/server/ (npm start, the image), at different depths.
 */
export function serverVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === "orisun" && typeof pkg.version === "string") return pkg.version;
    } catch {
      // No package.json here (or not ours): look in the parent.
    }
    const parent = dirname(dir);
    if (parent === dir)
      throw new Error("Orisun's package.json was not found above the server code");
    dir = parent;
  }
}
