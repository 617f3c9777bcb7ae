import type { ColumnType, Generated } from "kysely";

/** int8 columns: read as decimal strings (both drivers are set up so), written as strings. */
export type Int8 = ColumnType<string, string, string>;

export interface EventsTable {
  boundary: string;
  commit_position: Int8;
  prepare_position: Int8;
  event_id: string;
  event_type: string;
  /** Each tag encoded by encodeTag(): a set, so `@>` answers "has all these tags" from a GIN index. */
  tags: string[];
  data: string;
  metadata: string | null;
  date_created: Generated<Date>;
}

export interface BoundariesTable {
  name: string;
  /** The last commit_position and prepare_position handed out; the row lock serialises appends. */
  last_commit: Int8;
  last_prepare: Int8;
  /** What the JetStream publisher had published when it last let the boundary go. */
  published_commit: ColumnType<string, string | undefined, string>;
  published_prepare: ColumnType<string, string | undefined, string>;
  /** Events in the boundary, advanced with the head. */
  event_count: ColumnType<string, string | undefined, string>;
  created_at: Generated<Date>;
}

/** One row: see deployment.ts. */
export interface DeploymentTable {
  singleton: Generated<boolean>;
  id: string;
  /** 32 random bytes as hex. */
  secret: string;
  created_at: Generated<Date>;
}

/** A user (server/auth/): `grants` is a JSON list of grants, read and written whole. */
export interface UsersTable {
  name: string;
  password_hash: string;
  admin: boolean;
  grants: string;
  created_at: Generated<Date>;
}

/** An API key of a user; only the hash of its secret is kept. Empty `grants`: all its user's. */
export interface ApiKeysTable {
  id: string;
  user_name: string;
  name: string;
  secret_hash: string;
  grants: string;
  created_at: Generated<Date>;
}

export interface Database {
  orisun_events: EventsTable;
  orisun_boundaries: BoundariesTable;
  orisun_deployment: DeploymentTable;
  orisun_users: UsersTable;
  orisun_api_keys: ApiKeysTable;
}

/** A tag as one array element: JSON keeps any key/value pair unambiguous. */
export function encodeTag(tag: { key: string; value: string }): string {
  return JSON.stringify([tag.key, tag.value]);
}

export function decodeTag(encoded: string): { key: string; value: string } {
  const [key, value] = JSON.parse(encoded) as [string, string];
  return { key, value };
}

/**
 * SQL for a timestamptz column as epoch milliseconds (int8, truncated as a Date holds it): the
 * form reads and the append statement return dates in, so that no date is parsed.
 */
export function epochMillisSql(column: string): string {
  return `(extract(epoch FROM date_trunc('milliseconds', ${column})) * 1000)::int8`;
}
