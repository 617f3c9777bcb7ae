import { execFileSync } from "node:child_process";

/** End-to-end tests spawn the built server (dist/), exactly as `npm start` runs it. */
export default function setup(): void {
  execFileSync("npx", ["tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });
}
