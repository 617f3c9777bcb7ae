import { execFileSync } from "node:child_process";

/** End-to-end tests spawn the built server and console (dist/), exactly as `npm start` runs it. */
export default function setup(): void {
  execFileSync("npm", ["run", "build", "--silent"], { stdio: "inherit" });
}
