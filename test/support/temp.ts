import { appendFileSync, mkdtempSync } from "node:fs";
import { join } from "node:path";
import { inject } from "vitest";

declare module "vitest" {
  export interface ProvidedContext {
    /** The run's own temp folder; the global teardown removes it with everything in it. */
    tempRoot: string;
  }
}

/** A new folder inside the run's temp folder, so that nothing a test makes outlives the run. */
export function tempDir(prefix: string): string {
  return mkdtempSync(join(inject("tempRoot"), prefix));
}

/** The file in which the run notes every schema it makes; the teardown drops what is left. */
export function schemaLedger(root: string): string {
  return join(root, "schemas.txt");
}

/** Notes a schema for the teardown, in case the test that made it dies before dropping it. */
export function noteSchema(schema: string): void {
  appendFileSync(schemaLedger(inject("tempRoot")), `${schema}\n`);
}
