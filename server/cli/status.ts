import { toJson } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Transport } from "@connectrpc/connect";
import { Admin, ListBoundariesResponseSchema } from "../../gen/orisun/v1/admin_pb.js";
import type { Connection } from "./options.js";

const HEALTH_TIMEOUT_MS = 5_000;

/**
 * Asks /readyz, which answers 200 only while the server can reach its store. True when serving;
 * the reason is printed either way.
 */
export async function health(connection: Connection): Promise<boolean> {
  const headers: Record<string, string> = {};
  if (connection.authorization !== undefined) headers.authorization = connection.authorization;
  try {
    const response = await fetch(`${connection.url}/readyz`, {
      headers,
      signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS),
    });
    const body = (await response.text()).slice(0, 200);
    const serving = response.status === 200;
    process.stdout.write(`${serving ? "SERVING" : "NOT_SERVING"} (${response.status} ${body})\n`);
    return serving;
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code;
    process.stdout.write(`NOT_SERVING (${connection.url}: ${cause ?? (error as Error).message})\n`);
    return false;
  }
}

/** The boundaries as a table, or with `json` as ListBoundariesResponse in protobuf JSON. */
export async function boundaries(via: Transport, json: boolean): Promise<void> {
  const response = await createClient(Admin, via).listBoundaries({});
  if (json) {
    process.stdout.write(`${JSON.stringify(toJson(ListBoundariesResponseSchema, response))}\n`);
    return;
  }
  const rows = [
    ["BOUNDARY", "EVENTS", "HEAD", "CREATED"],
    ...response.boundaries.map((b) => [
      b.name,
      String(b.eventCount),
      `${b.head?.commitPosition ?? 0}/${b.head?.preparePosition ?? 0}`,
      b.createdAt ? timestampDate(b.createdAt).toISOString() : "",
    ]),
  ];
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  for (const row of rows) {
    process.stdout.write(
      `${row
        .map((cell, i) => cell.padEnd(widths[i] ?? 0))
        .join("  ")
        .trimEnd()}\n`,
    );
  }
}
