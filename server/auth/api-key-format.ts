import { randomBytes } from "node:crypto";

/**
 * An API key is `osk_<id>_<secret>`: the id (16 hex digits) finds the key's row and may be shown
 * and logged; the secret (32 random bytes, base64url) is shown once, at creation, and only its
 * hash is stored.
 */
const KEY = /^osk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export function newApiKey(): { id: string; secret: string; token: string } {
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return { id, secret, token: `osk_${id}_${secret}` };
}

export function parseApiKey(token: string): { id: string; secret: string } | undefined {
  const match = KEY.exec(token);
  return match ? { id: match[1] as string, secret: match[2] as string } : undefined;
}

export const KEY_ID = /^[0-9a-f]{16}$/;
