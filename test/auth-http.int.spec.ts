import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningApp, startApp } from "../server/app.js";
import { loadConfig } from "../server/config.js";
import { basic, bearer, clientsWith } from "./support/auth.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "./support/databases.js";

const ORIGIN = "https://console.example";
const schema = freshSchema("authh");
let app: RunningApp;
let admin: ReturnType<typeof clientsWith>;

beforeAll(async () => {
  app = await startApp(
    loadConfig(
      {
        ORISUN_PORT: "0",
        ORISUN_PG_URL: PG_URL,
        ORISUN_PG_SCHEMA: schema,
        ORISUN_DATA_DIR: freshDataDir(),
        ORISUN_LOG_LEVEL: "silent",
        ORISUN_AUTH: "on",
        ORISUN_ADMIN_PASSWORD: "http-Admin-pw",
        ORISUN_CORS_ORIGINS: ORIGIN,
      },
      [],
    ),
  );
  admin = clientsWith(createGrpcTransport({ baseUrl: app.url }), basic("admin", "http-Admin-pw"));
}, 60_000);

afterAll(async () => {
  await app?.close();
  await dropSchema(schema);
});

describe("plain HTTP routes and browsers", () => {
  it("authorizeAdminRequest: 401 without or with wrong credentials, 403 for a non-admin, 200 for an admin", async () => {
    const client = { address: "10.1.2.3" };
    await admin.admin.createUser(
      { name: "viewer", password: "viewer-Secret-pw", grants: [{ boundary: "*", access: "read" }] },
      { headers: admin.headers },
    );
    const key = await admin.admin.createApiKey(
      { user: "admin", name: "scraper" },
      { headers: admin.headers },
    );
    const check = (header: string | undefined) =>
      app.authorization.authorizeAdminRequest(header, client);
    expect((await check(undefined)).status).toBe(401);
    expect((await check(basic("admin", "not-the-pw"))).status).toBe(401);
    const viewer = await check(basic("viewer", "viewer-Secret-pw"));
    expect(viewer.status).toBe(403);
    expect(viewer.message).toContain("admin");
    expect(await check(basic("admin", "http-Admin-pw"))).toEqual({ status: 200, message: "ok" });
    expect((await check(bearer(key.secret))).status).toBe(200);
  });

  it("lets a configured origin send credentials: preflight allows the authorization header", async () => {
    const preflight = await fetch(`${app.url}/orisun.v1.Admin/WhoAmI`, {
      method: "OPTIONS",
      headers: {
        origin: ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,connect-protocol-version",
      },
    });
    expect(preflight.status).toBeLessThan(300);
    expect(preflight.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(preflight.headers.get("access-control-allow-credentials")).toBe("true");
    expect(preflight.headers.get("access-control-allow-headers")?.toLowerCase()).toContain(
      "authorization",
    );
    const call = await fetch(`${app.url}/orisun.v1.Admin/WhoAmI`, {
      method: "POST",
      headers: {
        origin: ORIGIN,
        "content-type": "application/json",
        authorization: basic("admin", "http-Admin-pw"),
      },
      body: "{}",
    });
    expect(call.status).toBe(200);
    expect(call.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(await call.json()).toMatchObject({ user: "admin", admin: true, authEnabled: true });
    // Another origin gets no CORS grant.
    const other = await fetch(`${app.url}/orisun.v1.Admin/WhoAmI`, {
      method: "OPTIONS",
      headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
    });
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("needs no credentials for the health endpoints", async () => {
    expect((await fetch(`${app.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${app.url}/readyz`)).status).toBe(200);
  });
});
