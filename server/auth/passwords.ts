import { randomBytes, type ScryptOptions, scrypt, timingSafeEqual } from "node:crypto";

/**
 * Slow salted hashes of passwords and API key secrets, with node:crypto's scrypt. Stored as
 * `scrypt$N$r$p$salt$hash` (base64), so that the cost can be raised later without losing the
 * hashes made before. N=2^15, r=8: about 32 MiB and tens of milliseconds a verification, which the
 * credential cache pays once per credential and process.
 */
const COST = { N: 32_768, r: 8, p: 1 } as const;
const KEY_BYTES = 32;
const SALT_BYTES = 16;

function derive(secret: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((done, fail) =>
    scrypt(
      secret.normalize("NFC"),
      salt,
      KEY_BYTES,
      // Room for the cost above (128 * N * r bytes) and a little more.
      { ...options, maxmem: 128 * (options.N ?? 0) * (options.r ?? 0) + 1024 * 1024 },
      (error, key) => (error ? fail(error) : done(key)),
    ),
  );
}

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(SALT_BYTES);
  const key = await derive(secret, salt, COST);
  return `scrypt$${COST.N}$${COST.r}$${COST.p}$${salt.toString("base64")}$${key.toString("base64")}`;
}

/**
 * True when `secret` hashes to `stored`, compared in constant time. With `stored` undefined (no
 * such user or key) it does the same work against a throwaway hash, so that timing does not tell
 * an unknown name from a wrong password.
 */
export async function verifySecret(secret: string, stored: string | undefined): Promise<boolean> {
  const parts = (stored ?? (await decoy())).split("$");
  const [scheme, n, r, p, salt, hash] = parts;
  if (parts.length !== 6 || scheme !== "scrypt" || !salt || !hash) return false;
  const expected = Buffer.from(hash, "base64");
  if (expected.length !== KEY_BYTES) return false;
  const key = await derive(secret, Buffer.from(salt, "base64"), {
    N: Number(n),
    r: Number(r),
    p: Number(p),
  });
  return timingSafeEqual(key, expected) && stored !== undefined;
}

let decoyHash: Promise<string> | undefined;
/** Made at start-up (see Authenticator), so that the first unknown name costs what later ones do. */
export function decoy(): Promise<string> {
  decoyHash ??= hashSecret(randomBytes(16).toString("hex"));
  return decoyHash;
}
