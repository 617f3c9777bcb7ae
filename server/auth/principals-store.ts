import { type Kysely, sql } from "kysely";
import { databaseError } from "../store/database-errors.js";
import { StoreError } from "../store/errors.js";
import type { Database } from "../store/schema.js";
import { AuthError } from "./auth-error.js";
import { type Grant, validateGrants } from "./grants.js";

export interface UserRecord {
  readonly name: string;
  readonly passwordHash: string;
  readonly admin: boolean;
  readonly grants: readonly Grant[];
  readonly createdAt: Date;
}

export interface KeyRecord {
  readonly id: string;
  readonly user: string;
  readonly name: string;
  readonly secretHash: string;
  /** Empty: all of its user's permissions, as they change. */
  readonly grants: readonly Grant[];
  readonly createdAt: Date;
}

/** The channel every process LISTENs on; the payload is the schema whose principals changed. */
export const PRINCIPALS_CHANNEL = "orisun_principals";

const UNIQUE_VIOLATION = "23505";
const FOREIGN_KEY_VIOLATION = "23503";

/**
 * Users and API keys in the store's own tables, so that every process on the database agrees.
 * Every change NOTIFYs `orisun_principals` in its transaction (delivered at commit, to every
 * process, see principal-signals.ts) and calls `changed` for this process at once.
 */
export class PrincipalsStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly changed: () => void,
  ) {}

  async getUser(name: string): Promise<UserRecord | undefined> {
    const row = await this.run(() =>
      this.db
        .selectFrom("orisun_users")
        .select([
          "name",
          "password_hash",
          "admin",
          sql<string>`grants::text`.as("grants"),
          "created_at",
        ])
        .where("name", "=", name)
        .executeTakeFirst(),
    );
    return row && toUser(row);
  }

  async listUsers(): Promise<UserRecord[]> {
    const rows = await this.run(() =>
      this.db
        .selectFrom("orisun_users")
        .select([
          "name",
          "password_hash",
          "admin",
          sql<string>`grants::text`.as("grants"),
          "created_at",
        ])
        .orderBy("name")
        .execute(),
    );
    return rows.map(toUser);
  }

  /** A key with its user; undefined when either is gone. */
  async getKey(id: string): Promise<{ key: KeyRecord; user: UserRecord } | undefined> {
    const row = await this.run(() =>
      this.db
        .selectFrom("orisun_api_keys as k")
        .innerJoin("orisun_users as u", "u.name", "k.user_name")
        .select([
          "k.id",
          "k.user_name",
          "k.name as key_name",
          "k.secret_hash",
          sql<string>`k.grants::text`.as("key_grants"),
          "k.created_at as key_created_at",
          "u.name",
          "u.password_hash",
          "u.admin",
          sql<string>`u.grants::text`.as("grants"),
          "u.created_at",
        ])
        .where("k.id", "=", id)
        .executeTakeFirst(),
    );
    if (!row) return undefined;
    return {
      key: toKey({
        id: row.id,
        user_name: row.user_name,
        name: row.key_name,
        secret_hash: row.secret_hash,
        grants: row.key_grants,
        created_at: row.key_created_at,
      }),
      user: toUser(row),
    };
  }

  async listKeys(user: string | undefined): Promise<KeyRecord[]> {
    const rows = await this.run(() => {
      let query = this.db
        .selectFrom("orisun_api_keys")
        .select([
          "id",
          "user_name",
          "name",
          "secret_hash",
          sql<string>`grants::text`.as("grants"),
          "created_at",
        ]);
      if (user !== undefined) query = query.where("user_name", "=", user);
      return query.orderBy("user_name").orderBy("created_at").orderBy("id").execute();
    });
    return rows.map(toKey);
  }

  async createUser(user: {
    name: string;
    passwordHash: string;
    admin: boolean;
    grants: readonly Grant[];
  }): Promise<UserRecord> {
    const row = await this.change(async (trx) =>
      trx
        .insertInto("orisun_users")
        .values({
          name: user.name,
          password_hash: user.passwordHash,
          admin: user.admin,
          grants: sql<string>`${JSON.stringify(user.grants)}::jsonb`,
        })
        .returning([
          "name",
          "password_hash",
          "admin",
          sql<string>`grants::text`.as("grants"),
          "created_at",
        ])
        .executeTakeFirstOrThrow(),
    ).catch((error: unknown) => {
      if (sqlState(error) === UNIQUE_VIOLATION) {
        throw new StoreError(
          "already_exists",
          `user ${JSON.stringify(user.name)} already exists`,
          "name",
        );
      }
      throw error;
    });
    return toUser(row);
  }

  /** Deletes the user and (by the foreign key) its API keys; never the last admin. */
  async deleteUser(name: string): Promise<void> {
    await this.change(async (trx) => {
      const user = await trx
        .selectFrom("orisun_users")
        .select("admin")
        .where("name", "=", name)
        .forUpdate()
        .executeTakeFirst();
      if (!user) throw new StoreError("not_found", `no user ${JSON.stringify(name)}`, "name");
      if (user.admin) {
        const { n } = await trx
          .selectFrom("orisun_users")
          .select(sql<string>`count(*)`.as("n"))
          .where("admin", "=", true)
          .executeTakeFirstOrThrow();
        if (Number(n) <= 1) {
          throw new AuthError(
            "failed_precondition",
            `name: ${JSON.stringify(name)} is the last admin; create another admin first`,
          );
        }
      }
      await trx.deleteFrom("orisun_users").where("name", "=", name).execute();
    });
  }

  async setPassword(name: string, passwordHash: string): Promise<void> {
    await this.change(async (trx) => {
      const result = await trx
        .updateTable("orisun_users")
        .set({ password_hash: passwordHash })
        .where("name", "=", name)
        .executeTakeFirst();
      if (result.numUpdatedRows === 0n) {
        throw new StoreError("not_found", `no user ${JSON.stringify(name)}`, "name");
      }
    });
  }

  async createKey(key: {
    id: string;
    user: string;
    name: string;
    secretHash: string;
    grants: readonly Grant[];
  }): Promise<KeyRecord> {
    const row = await this.change(async (trx) =>
      trx
        .insertInto("orisun_api_keys")
        .values({
          id: key.id,
          user_name: key.user,
          name: key.name,
          secret_hash: key.secretHash,
          grants: sql<string>`${JSON.stringify(key.grants)}::jsonb`,
        })
        .returning([
          "id",
          "user_name",
          "name",
          "secret_hash",
          sql<string>`grants::text`.as("grants"),
          "created_at",
        ])
        .executeTakeFirstOrThrow(),
    ).catch((error: unknown) => {
      if (sqlState(error) === FOREIGN_KEY_VIOLATION) {
        throw new StoreError("not_found", `no user ${JSON.stringify(key.user)}`, "user");
      }
      throw error;
    });
    return toKey(row);
  }

  async revokeKey(id: string): Promise<void> {
    await this.change(async (trx) => {
      const result = await trx
        .deleteFrom("orisun_api_keys")
        .where("id", "=", id)
        .executeTakeFirst();
      if (result.numDeletedRows === 0n) {
        throw new StoreError("not_found", `no API key ${JSON.stringify(id)}`, "id");
      }
    });
  }

  /**
   * Creates (or, if it exists, makes admin with this password) the user `name` when the store has
   * no admin; false when it has one. Serialised across processes that start at once.
   */
  async bootstrapAdmin(name: string, passwordHash: string): Promise<boolean> {
    return this.change(async (trx) => {
      await sql`SELECT pg_advisory_xact_lock(hashtext('orisun_principals:' || current_schema()))`.execute(
        trx,
      );
      const admin = await trx
        .selectFrom("orisun_users")
        .select("name")
        .where("admin", "=", true)
        .limit(1)
        .executeTakeFirst();
      if (admin) return false;
      await trx
        .insertInto("orisun_users")
        .values({
          name,
          password_hash: passwordHash,
          admin: true,
          grants: sql<string>`'[]'::jsonb`,
        })
        .onConflict((oc) =>
          oc.column("name").doUpdateSet({ password_hash: passwordHash, admin: true }),
        )
        .execute();
      return true;
    });
  }

  async hasAdmin(): Promise<boolean> {
    const row = await this.run(() =>
      this.db
        .selectFrom("orisun_users")
        .select("name")
        .where("admin", "=", true)
        .limit(1)
        .executeTakeFirst(),
    );
    return row !== undefined;
  }

  /** A change in one transaction, announced to every process at commit and to this one after. */
  private async change<T>(work: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
    const result = await this.run(() =>
      this.db.transaction().execute(async (trx) => {
        const value = await work(trx);
        await sql`SELECT pg_notify(${PRINCIPALS_CHANNEL}, current_schema())`.execute(trx);
        return value;
      }),
    );
    this.changed();
    return result;
  }

  private async run<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (error instanceof StoreError || error instanceof AuthError) throw error;
      if (sqlState(error) === UNIQUE_VIOLATION || sqlState(error) === FOREIGN_KEY_VIOLATION) {
        throw error;
      }
      throw databaseError(error);
    }
  }
}

function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

function parseGrants(json: string): Grant[] {
  const list = JSON.parse(json) as { boundary?: string; subject?: string; access?: string }[];
  return validateGrants(
    list.map((g) => ({
      boundary: g.boundary ?? "",
      subject: g.subject ?? "",
      access: g.access ?? "",
    })),
  );
}

function toUser(row: {
  name: string;
  password_hash: string;
  admin: boolean;
  grants: string;
  created_at: Date;
}): UserRecord {
  return {
    name: row.name,
    passwordHash: row.password_hash,
    admin: row.admin,
    grants: parseGrants(row.grants),
    createdAt: new Date(row.created_at),
  };
}

function toKey(row: {
  id: string;
  user_name: string;
  name: string;
  secret_hash: string;
  grants: string;
  created_at: Date;
}): KeyRecord {
  return {
    id: row.id,
    user: row.user_name,
    name: row.name,
    secretHash: row.secret_hash,
    grants: parseGrants(row.grants),
    createdAt: new Date(row.created_at),
  };
}
