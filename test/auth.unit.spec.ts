import { describe, expect, it } from "vitest";
import { newApiKey, parseApiKey } from "../server/auth/api-key-format.js";
import { parseHeader } from "../server/auth/authenticator.js";
import { FailureLimiter } from "../server/auth/failure-limiter.js";
import {
  boundaryCovers,
  boundaryMatches,
  grantsAllow,
  subjectCovers,
  uncovered,
  validateGrants,
} from "../server/auth/grants.js";
import { hashSecret, verifySecret } from "../server/auth/passwords.js";
import { allows, effectivePermissions, type Principal } from "../server/auth/principal.js";
import { loadConfig } from "../server/config.js";
import { configError } from "./support/config.js";

describe("boundary patterns", () => {
  it("match a name, every boundary, or a prefix", () => {
    expect(boundaryMatches("orders", "orders")).toBe(true);
    expect(boundaryMatches("orders", "orders_eu")).toBe(false);
    expect(boundaryMatches("orders_*", "orders_eu")).toBe(true);
    expect(boundaryMatches("orders_*", "orders")).toBe(false);
    expect(boundaryMatches("*", "anything")).toBe(true);
  });

  it("cover narrower patterns only", () => {
    expect(boundaryCovers("*", "orders_*")).toBe(true);
    expect(boundaryCovers("orders_*", "orders_eu_*")).toBe(true);
    expect(boundaryCovers("orders_*", "orders_eu")).toBe(true);
    expect(boundaryCovers("orders_eu_*", "orders_*")).toBe(false);
    expect(boundaryCovers("orders", "orders_*")).toBe(false);
    expect(boundaryCovers("orders_*", "*")).toBe(false);
  });
});

describe("subject patterns (NATS syntax)", () => {
  it.each([
    ["orders.>", "orders.created", true],
    ["orders.>", "orders.eu.created", true],
    ["orders.>", "orders", false],
    ["orders.*", "orders.created", true],
    ["orders.*", "orders.eu.created", false],
    ["orders.*", "orders.>", false],
    ["orders.>", "orders.*", true],
    ["orders.>", "orders.>", true],
    ["orders.*.created", "orders.*.created", true],
    ["orders.eu.created", "orders.*.created", false],
    [">", "anything.at.all", true],
    ["*", "a.b", false],
    ["a.b", "a.b", true],
    ["a.b", "a.b.c", false],
  ])("%s covers %s: %s", (outer, inner, expected) => {
    expect(subjectCovers(outer, inner)).toBe(expected);
  });

  it("needs one grant covering every subject a subscription can match", () => {
    const grants = validateGrants([{ boundary: "", subject: "orders.*", access: "subscribe" }]);
    expect(grantsAllow(grants, { access: "subscribe", subject: "orders.created" })).toBe(true);
    expect(grantsAllow(grants, { access: "subscribe", subject: "orders.>" })).toBe(false);
    expect(grantsAllow(grants, { access: "publish", subject: "orders.created" })).toBe(false);
  });
});

describe("grant validation", () => {
  it("names the field and the rule", () => {
    expect(() => validateGrants([{ boundary: "Orders", subject: "", access: "read" }])).toThrow(
      /grants\[0\]\.boundary: must be a boundary name/,
    );
    expect(() => validateGrants([{ boundary: "o", subject: "a", access: "read" }])).toThrow(
      /grants\[0\]: set exactly one of boundary and subject/,
    );
    expect(() => validateGrants([{ boundary: "o", subject: "", access: "publish" }])).toThrow(
      /grants\[0\]\.access: must be read or append/,
    );
    expect(() => validateGrants([{ boundary: "", subject: "a.>.b", access: "publish" }])).toThrow(
      /grants\[0\]\.subject/,
    );
    expect(() => validateGrants([{ boundary: "ord*ers", subject: "", access: "read" }])).toThrow(
      /grants\[0\]\.boundary/,
    );
  });

  it("finds what a key would hold beyond its user", () => {
    const user = validateGrants([{ boundary: "orders_*", subject: "", access: "read" }]);
    const fine = validateGrants([{ boundary: "orders_eu", subject: "", access: "read" }]);
    const beyond = validateGrants([{ boundary: "orders_eu", subject: "", access: "append" }]);
    expect(uncovered(user, fine)).toBeUndefined();
    expect(uncovered(user, beyond)).toEqual({ boundary: "orders_eu", access: "append" });
  });
});

describe("a key never exceeds its user", () => {
  const user: Principal = {
    user: "u",
    userAdmin: false,
    userGrants: [{ boundary: "orders_*", access: "read" }],
    authEnabled: true,
  };
  it("is limited by its own grants and by its user's current ones", () => {
    const key: Principal = { ...user, keyId: "k", keyGrants: [{ boundary: "*", access: "read" }] };
    expect(allows(key, { access: "read", boundary: "orders_a" })).toBe(true);
    expect(allows(key, { access: "read", boundary: "users" })).toBe(false);
    expect(effectivePermissions(key).grants).toEqual([]);
    const adminKey: Principal = { ...key, userAdmin: true };
    expect(allows(adminKey, { access: "read", boundary: "users" })).toBe(true);
    expect(allows(adminKey, { access: "admin" })).toBe(false);
    expect(allows({ ...adminKey, keyGrants: [] }, { access: "admin" })).toBe(true);
  });
});

describe("the authorization header", () => {
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  it("reads Basic and Bearer, and nothing else", () => {
    expect(parseHeader(`Basic ${b64("alice:pa:ss word")}`)).toEqual({
      kind: "password",
      name: "alice",
      password: "pa:ss word",
    });
    expect(parseHeader(`basic ${b64("alice:x")}`)).toMatchObject({ name: "alice" });
    const { token, id, secret } = newApiKey();
    expect(parseHeader(`Bearer ${token}`)).toEqual({ kind: "key", id, secret });
    expect(parseApiKey(token)).toEqual({ id, secret });
    for (const bad of [
      "",
      "Basic",
      `Basic ${b64("nocolon")}`,
      `Basic ${b64(":x")}`,
      "Basic %%%",
      "Basic QQ",
      `Basic ${Buffer.from([0xff, 0x3a, 0x41]).toString("base64")}`,
      "Bearer osk_x_y",
      `Bearer ${token}x`,
      `Basic ${b64("a:b")}, Basic ${b64("c:d")}`,
      "Negotiate abc",
    ]) {
      expect(parseHeader(bad), bad).toBeUndefined();
    }
  });
});

describe("password hashes", () => {
  it("verify the right secret only, and never match without a stored hash", async () => {
    const hash = await hashSecret("correct horse");
    expect(hash).toMatch(/^scrypt\$32768\$8\$1\$/);
    expect(hash).not.toContain("correct horse");
    expect(await verifySecret("correct horse", hash)).toBe(true);
    expect(await verifySecret("correct horsf", hash)).toBe(false);
    expect(await verifySecret("correct horse", undefined)).toBe(false);
    expect(await verifySecret("x", "scrypt$1$1$1$AA==$AA==")).toBe(false);
    expect(await hashSecret("correct horse")).not.toBe(hash);
  });
});

describe("failed attempts", () => {
  it("refuse after 10 a minute per name or address, and forget them a minute later", () => {
    let now = 1_000_000;
    const limiter = new FailureLimiter(100, () => now);
    for (let i = 0; i < 10; i++) {
      expect(limiter.blocked(["name:a", "address:1"])).toBe(false);
      limiter.fail(["name:a", `address:${i}`]);
      now += 1_000;
    }
    expect(limiter.blocked(["name:a", "address:x"])).toBe(true);
    expect(limiter.blocked(["name:b", "address:5"])).toBe(false);
    now += 51_000; // the first failure is now a minute old
    expect(limiter.blocked(["name:a"])).toBe(false);
  });

  it("counts attempts still being verified, so that guesses sent at once cannot all pass", () => {
    const limiter = new FailureLimiter(100, () => 0);
    const started = Array.from({ length: 50 }, () => limiter.attempt(["name:a", "address:1"]));
    expect(started.filter((done) => done !== undefined)).toHaveLength(10);
    // Another name from the same address is blocked too; another address for another name is not.
    expect(limiter.attempt(["name:b", "address:1"])).toBeUndefined();
    const other = limiter.attempt(["name:b", "address:2"]);
    expect(other).toBeDefined();
    other?.();
    // Decided: a success frees its place, a failure keeps it (as a failure) for the window.
    for (const [i, done] of started.entries()) {
      done?.();
      if (done && i % 2 === 0) limiter.fail(["name:a", "address:1"]);
    }
    expect(started.filter((done) => done !== undefined).length).toBe(10);
    expect(limiter.blocked(["name:a"])).toBe(false); // 5 failures
    const more = Array.from({ length: 10 }, () => limiter.attempt(["name:a"]));
    expect(more.filter((done) => done !== undefined)).toHaveLength(5);
  });

  it("keeps at most `capacity` names and addresses", () => {
    const limiter = new FailureLimiter(3, () => 0);
    for (let i = 0; i < 10; i++) limiter.fail(["name:a"]);
    for (let i = 0; i < 3; i++) limiter.fail([`name:other${i}`]);
    expect(limiter.blocked(["name:a"])).toBe(false);
  });
});

describe("auth configuration", () => {
  it("is off on loopback and on elsewhere unless set", () => {
    expect(loadConfig({}, []).auth.enabled).toBe(false);
    expect(loadConfig({}, []).host).toBe("127.0.0.1");
    expect(loadConfig({ ORISUN_HOST: "0.0.0.0" }, []).auth).toMatchObject({
      enabled: true,
      explicitlyOffOnNetwork: false,
      adminUser: "admin",
    });
    expect(loadConfig({ ORISUN_HOST: "0.0.0.0", ORISUN_AUTH: "off" }, []).auth).toMatchObject({
      enabled: false,
      explicitlyOffOnNetwork: true,
    });
    expect(loadConfig({ ORISUN_HOST: "::1", ORISUN_AUTH: "on" }, []).auth.enabled).toBe(true);
  });

  it("names the variable and the rule, never the password", () => {
    const message = (env: Record<string, string>) => configError(env).message;
    expect(message({ ORISUN_AUTH: "yes" })).toContain("ORISUN_AUTH: must be on or off");
    expect(message({ ORISUN_ADMIN_PASSWORD: "short1" })).toBe(
      "ORISUN_ADMIN_PASSWORD: must have 8 to 1024 characters, got 6",
    );
    expect(message({ ORISUN_ADMIN_USER: "bad name" })).toContain("ORISUN_ADMIN_USER: must match");
    expect(message({ ORISUN_TLS_CLIENT_CA: "/x" })).toContain(
      "ORISUN_TLS_CLIENT_CA: needs ORISUN_TLS_CERT",
    );
    expect(message({ ORISUN_AUTH_CACHE_ENTRIES: "0" })).toContain("ORISUN_AUTH_CACHE_ENTRIES");
  });
});
