import { type ParseArgsConfig, parseArgs } from "node:util";

/** A mistake in the command line: reported with the option and the rule, exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** What every command that talks to a server takes. */
export interface Connection {
  readonly url: string;
  /** The authorization header's value, or undefined without credentials. */
  readonly authorization: string | undefined;
}

export const CONNECTION_OPTIONS = {
  url: { type: "string" },
  user: { type: "string" },
  password: { type: "string" },
  "api-key": { type: "string" },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

const DEFAULT_URL = "http://127.0.0.1:50051";
const BOUNDARY = /^[a-z][a-z0-9_]{0,62}$/;

type Env = Readonly<Record<string, string | undefined>>;

/** parseArgs, strict, with its errors (unknown option, missing value) as UsageErrors. */
export function parse<T extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: T,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** --url / ORISUN_URL and the credentials, options first, then the environment. */
export function connection(
  values: {
    readonly url?: string | undefined;
    readonly user?: string | undefined;
    readonly password?: string | undefined;
    readonly "api-key"?: string | undefined;
  },
  env: Env,
): Connection {
  const raw = values.url ?? env.ORISUN_URL ?? DEFAULT_URL;
  const from = values.url === undefined && env.ORISUN_URL !== undefined ? "ORISUN_URL" : "--url";
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError(`${from}: must be an http:// or https:// URL, got "${raw}"`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`${from}: must be an http:// or https:// URL, got "${raw}"`);
  }
  if (url.pathname !== "/" || url.search !== "" || url.hash !== "") {
    throw new UsageError(`${from}: must name only the server (no path or query), got "${raw}"`);
  }
  const user = values.user ?? env.ORISUN_USER;
  const password = values.password ?? env.ORISUN_PASSWORD;
  const apiKey = values["api-key"] ?? env.ORISUN_API_KEY;
  // Options win over the environment as a pair: --api-key with ORISUN_USER set uses the key.
  const useKey =
    values["api-key"] !== undefined || (values.user === undefined && apiKey !== undefined);
  let authorization: string | undefined;
  if (useKey && apiKey !== undefined) {
    if (values.user !== undefined) {
      throw new UsageError("--api-key: give either --api-key or --user/--password, not both");
    }
    if (apiKey === "") throw new UsageError("--api-key (or ORISUN_API_KEY): must not be empty");
    authorization = `Bearer ${apiKey}`;
  } else if (user !== undefined) {
    if (password === undefined) {
      throw new UsageError("--password (or ORISUN_PASSWORD): required with --user");
    }
    if (user === "" || user.includes(":")) {
      throw new UsageError("--user (or ORISUN_USER): must be non-empty and contain no colon");
    }
    authorization = `Basic ${Buffer.from(`${user}:${password}`, "utf8").toString("base64")}`;
  } else if (values.password !== undefined) {
    throw new UsageError("--password: needs --user (or ORISUN_USER)");
  }
  return { url: url.origin, authorization };
}

export function boundaryOption(value: string | undefined): string | undefined {
  if (value !== undefined && !BOUNDARY.test(value)) {
    throw new UsageError(
      `--boundary: must match ${BOUNDARY.source} (lowercase letter first, then up to 62 of a-z 0-9 _), got "${value}"`,
    );
  }
  return value;
}

export function integerOption(
  name: string,
  value: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`--${name}: must be an integer from ${min} to ${max}, got "${value}"`);
  }
  return n;
}

export function noPositionals(command: string, positionals: readonly string[]): void {
  if (positionals.length > 0) {
    throw new UsageError(`${command}: takes no arguments besides options, got "${positionals[0]}"`);
  }
}
