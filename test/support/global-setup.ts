import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { deleteStreams, dropSchema, PG_URL } from "./databases.js";
import { schemaLedger } from "./temp.js";

/**
 * Makes the test database if it is missing, gives the run one temp folder, and builds dist/
 * (end-to-end tests spawn the built server and console, exactly as `npm start` runs it). The
 * teardown drops every schema the run made that a test left behind and removes the temp folder.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  await ensureDatabase(PG_URL);
  const root = mkdtempSync(join(tmpdir(), "orisun-test-run-"));
  project.provide("tempRoot", root);
  execFileSync("npm", ["run", "build", "--silent"], { stdio: "inherit" });
  return async () => {
    const ledger = schemaLedger(root);
    const schemas = existsSync(ledger) ? readFileSync(ledger, "utf8").split("\n") : [];
    const made = schemas.filter((s) => s !== "");
    for (const schema of await existingSchemas(made)) {
      await dropSchema(schema).catch(() => {});
    }
    // Tests that build publishers or pub/sub themselves name streams after a fresh schema name
    // that may never have become a schema.
    await deleteStreams(made);
    rmSync(root, { recursive: true, force: true });
  };
}

/** Creates the database that ORISUN_TEST_PG_URL (or the default) names, through `postgres`. */
async function ensureDatabase(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.slice(1));
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
    if (found.rowCount === 0) {
      await client
        .query(`CREATE DATABASE "${name.replace(/"/g, '""')}"`)
        .catch((error: { code?: string }) => {
          if (error.code !== "42P04") throw error; // another run made it meanwhile
        });
    }
  } finally {
    await client.end();
  }
}

/** The ones of `names` that still exist: most tests drop their own schemas. */
async function existingSchemas(names: readonly string[]): Promise<string[]> {
  if (names.length === 0) return [];
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    const found = await client.query<{ nspname: string }>(
      "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)",
      [names],
    );
    return found.rows.map((r) => r.nspname);
  } finally {
    await client.end();
  }
}
