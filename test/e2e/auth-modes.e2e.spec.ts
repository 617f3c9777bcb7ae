import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { basic, clientsWith, oneEvent } from "../support/auth.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

const schemas: string[] = [];
const servers: SpawnedServer[] = [];

function pgEnv(): Record<string, string> {
  const schema = freshSchema("autho");
  schemas.push(schema);
  return { ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema, ORISUN_DATA_DIR: freshDataDir() };
}

async function start(env: Record<string, string>): Promise<SpawnedServer> {
  const server = await spawnServer(env);
  servers.push(server);
  return server;
}

async function codeOf(work: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await work;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  for (const schema of schemas) await dropSchema(schema);
});

describe("start-up modes", () => {
  it("refuses to start with authentication on and no admin, saying how to fix it", async () => {
    const error = await spawnServer({ ...pgEnv(), ORISUN_AUTH: "on" }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(error?.message).toMatch(/server exited with 1 before listening/);
    expect(error?.message).toContain("set ORISUN_ADMIN_PASSWORD");
  }, 60_000);

  it("turns authentication on for 0.0.0.0 unless told otherwise, with the admin from the environment", async () => {
    const server = await start({
      ...pgEnv(),
      ORISUN_HOST: "0.0.0.0",
      ORISUN_ADMIN_PASSWORD: "first-Admin-pw",
    });
    const transport = createGrpcTransport({ baseUrl: server.url });
    const anonymous = clientsWith(transport, undefined);
    expect(await codeOf(anonymous.admin.whoAmI({}))).toBe(Code.Unauthenticated);
    const admin = clientsWith(transport, basic("admin", "first-Admin-pw"));
    const me = await admin.admin.whoAmI({}, { headers: admin.headers });
    expect(me).toMatchObject({ user: "admin", admin: true, authEnabled: true });
    expect(server.output()).not.toContain("first-Admin-pw");
  }, 60_000);

  it("warns when authentication is turned off explicitly on 0.0.0.0, and lets everyone in", async () => {
    const server = await start({ ...pgEnv(), ORISUN_HOST: "0.0.0.0", ORISUN_AUTH: "off" });
    const c = clientsWith(createGrpcTransport({ baseUrl: server.url }), undefined);
    expect(await c.admin.whoAmI({})).toMatchObject({ user: "", admin: true, authEnabled: false });
    const warning = server
      .output()
      .split("\n")
      .find((line) => line.includes("ORISUN_AUTH=off on a network address"));
    expect(JSON.parse(warning ?? "{}")).toMatchObject({ level: 40, host: "0.0.0.0" });
  }, 60_000);

  it("keeps authentication off on the default 127.0.0.1 bind", async () => {
    const server = await start(pgEnv());
    const c = clientsWith(createGrpcTransport({ baseUrl: server.url }), undefined);
    expect(await c.admin.whoAmI({})).toMatchObject({ authEnabled: false, admin: true });
    expect(server.output()).not.toContain("ORISUN_AUTH=off");
  }, 60_000);
});

describe("brute force", () => {
  it("refuses guesses beyond 10 a minute, and lets the right password in again within a minute", async () => {
    const server = await start({
      ...pgEnv(),
      ORISUN_AUTH: "on",
      ORISUN_ADMIN_PASSWORD: "right-Admin-pw",
    });
    const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
    const guess = (password: string) => {
      const c = clientsWith(transport, basic("admin", password));
      return codeOf(c.admin.whoAmI({}, { headers: c.headers }));
    };
    const codes: (Code | "ok")[] = [];
    const started = Date.now();
    for (let i = 0; i < 30; i++) codes.push(await guess(`wrong-guess-${i}`));
    const lastFailure = Date.now();
    expect(codes.slice(0, 10)).toEqual(Array(10).fill(Code.Unauthenticated));
    expect(codes.slice(10)).toEqual(Array(20).fill(Code.ResourceExhausted));
    // Refused guesses cost nothing: 20 of them in far less than the ten that were checked.
    expect(lastFailure - started).toBeLessThan(60_000);
    // The right password is refused too while the name is locked...
    expect(await guess("right-Admin-pw")).toBe(Code.ResourceExhausted);
    // ...and works again within a minute of the failures stopping.
    let works: number | undefined;
    while (works === undefined && Date.now() - lastFailure < 70_000) {
      await new Promise((r) => setTimeout(r, 2_000));
      if ((await guess("right-Admin-pw")) === "ok") works = Date.now() - lastFailure;
    }
    expect(works).toBeDefined();
    expect(works).toBeLessThanOrEqual(62_000);
    const log = server.output();
    for (let i = 0; i < 30; i++) expect(log).not.toContain(`wrong-guess-${i}`);
    expect(log).not.toContain("right-Admin-pw");
    expect(log).toContain('"principal":"admin"');
  }, 120_000);

  it("counts guesses sent at once: 40 concurrent wrong passwords get 10 checked and 30 refused", async () => {
    const server = await start({
      ...pgEnv(),
      ORISUN_AUTH: "on",
      ORISUN_ADMIN_PASSWORD: "right-Admin-pw",
    });
    const transport = createGrpcTransport({ baseUrl: server.url });
    const codes = await Promise.all(
      Array.from({ length: 40 }, (_, i) => {
        const c = clientsWith(transport, basic("admin", `concurrent-guess-${i}`));
        return codeOf(c.admin.whoAmI({}, { headers: c.headers }));
      }),
    );
    const count = (code: Code) => codes.filter((c) => c === code).length;
    expect([count(Code.Unauthenticated), count(Code.ResourceExhausted)]).toEqual([10, 30]);
  }, 60_000);
});

describe("mutual TLS", () => {
  const dir = tempDir("orisun-mtls-");
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ca = (name: string) =>
    ssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.pem`,
    );
  const signed = (name: string, cn: string, by: string, ext: string[] = []) => {
    ssl(
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      `/CN=${cn}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
    );
    ssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${by}.pem`,
      "-CAkey",
      `${by}.key`,
      "-CAcreateserial",
      "-days",
      "1",
      "-out",
      `${name}.pem`,
      ...ext,
    );
  };
  const pem = (name: string) => readFileSync(join(dir, name));

  it("authenticates a verified client certificate as the user of its CN, and refuses another CA's", async () => {
    ca("ca");
    ca("other-ca");
    ssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "1",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      "-keyout",
      "server.key",
      "-out",
      "server.pem",
    );
    signed("alice", "alice", "ca");
    signed("mallory", "alice", "other-ca");
    const server = await start({
      ...pgEnv(),
      ORISUN_AUTH: "on",
      ORISUN_ADMIN_PASSWORD: "mtls-Admin-pw",
      ORISUN_TLS_CERT: join(dir, "server.pem"),
      ORISUN_TLS_KEY: join(dir, "server.key"),
      ORISUN_TLS_CLIENT_CA: join(dir, "ca.pem"),
    });
    const baseUrl = `https://127.0.0.1:${server.port}`;
    const serverCa = pem("server.pem");
    const admin = clientsWith(
      createGrpcTransport({ baseUrl, nodeOptions: { ca: serverCa } }),
      basic("admin", "mtls-Admin-pw"),
    );
    await admin.admin.createUser(
      {
        name: "alice",
        password: "alice-Secret-pw",
        grants: [{ boundary: "orders_*", access: "read" }],
      },
      { headers: admin.headers },
    );
    await admin.store.saveEvents(oneEvent("orders_m", "m1"), { headers: admin.headers });

    for (const transport of [
      createGrpcTransport({
        baseUrl,
        nodeOptions: { ca: serverCa, cert: pem("alice.pem"), key: pem("alice.key") },
      }),
      createConnectTransport({
        baseUrl,
        httpVersion: "1.1",
        nodeOptions: { ca: serverCa, cert: pem("alice.pem"), key: pem("alice.key") },
      }),
    ]) {
      const alice = clientsWith(transport, undefined);
      expect(await alice.admin.whoAmI({})).toMatchObject({
        user: "alice",
        admin: false,
        authEnabled: true,
      });
      expect((await alice.store.getEvents({ boundary: "orders_m" })).events).toHaveLength(1);
      expect(await codeOf(alice.store.saveEvents(oneEvent("orders_m", "m2")))).toBe(
        Code.PermissionDenied,
      );
    }

    // The same CN from another CA: refused at the handshake.
    const mallory = clientsWith(
      createGrpcTransport({
        baseUrl,
        nodeOptions: { ca: serverCa, cert: pem("mallory.pem"), key: pem("mallory.key") },
      }),
      undefined,
    );
    // The connection is cut right after the handshake: depending on timing the client reports
    // it as cancelled, aborted or unavailable; it never gets an answer.
    expect(await codeOf(mallory.admin.whoAmI({}))).not.toBe("ok");

    // The server logs the refusal after the handshake failed; the client may hear it first.
    await expect
      .poll(() => server.output(), { timeout: 5_000 })
      .toContain("client certificate refused");
    // No certificate and no header: not signed in. A password still works without a certificate.
    const none = clientsWith(
      createGrpcTransport({ baseUrl, nodeOptions: { ca: serverCa } }),
      undefined,
    );
    expect(await codeOf(none.admin.whoAmI({}))).toBe(Code.Unauthenticated);
    expect((await admin.admin.whoAmI({}, { headers: admin.headers })).user).toBe("admin");
    // Nothing was written by the refused append.
    expect(
      (await admin.store.getEvents({ boundary: "orders_m" }, { headers: admin.headers })).events,
    ).toHaveLength(1);
  }, 120_000);
});
