import { randomBytes } from "node:crypto";
import type { Kysely } from "kysely";
import { databaseError } from "./database-errors.js";
import type { Database } from "./schema.js";

/**
 * Who this store is, for everything it shares with other deployments on one NATS server: the id
 * names its streams and subjects, the secret signs its live messages. Both are made once, on the
 * first start, and kept in the store's own table, so every process of the deployment (and only
 * processes that can read its database) shares them, and two databases, or two schemas of one,
 * never do.
 */
export interface Deployment {
  /** 16 characters of lower-case base32 (80 random bits): short enough for NATS names. */
  readonly id: string;
  /** 32 random bytes. */
  readonly secret: Buffer;
}

/**
 * Reads the deployment's identity, making it on the first start. Concurrent first starts all end
 * with the one row that won. Deleting the row gives the store a new identity at the next start
 * (for a copy of a database that must run next to its original).
 */
export async function loadDeployment(db: Kysely<Database>): Promise<Deployment> {
  try {
    await db
      .insertInto("orisun_deployment")
      .values({ id: base32(randomBytes(10)), secret: randomBytes(32).toString("hex") })
      .onConflict((c) => c.column("singleton").doNothing())
      .execute();
    const row = await db
      .selectFrom("orisun_deployment")
      .select(["id", "secret"])
      .executeTakeFirstOrThrow();
    return { id: row.id, secret: Buffer.from(row.secret, "hex") };
  } catch (error) {
    throw databaseError(error);
  }
}

const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

/** RFC 4648 base32 in lower case, without padding: 5 bytes make 8 characters. */
function base32(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}
