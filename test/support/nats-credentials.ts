import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { nkeys } from "@nats-io/transport-node";

type KeyPair = ReturnType<typeof nkeys.createUser>;

/**
 * A minimal NATS decentralised-auth setup, made the way `nsc` makes one: an operator, a system
 * account, an account with JetStream enabled and one user of it. Writes `server.conf` (for
 * `nats-server -c`) and `user.creds` (what ORISUN_NATS_CREDS points at) into `dir`.
 */
export function writeJwtSetup(dir: string): { config: string; creds: string } {
  const operator = nkeys.createOperator();
  const system = nkeys.createAccount();
  const account = nkeys.createAccount();
  const user = nkeys.createUser();
  const unlimited = -1;
  const operatorJwt = jwt(operator, operator, { type: "operator", version: 2 });
  const systemJwt = jwt(operator, system, { type: "account", version: 2 });
  const accountJwt = jwt(operator, account, {
    limits: {
      subs: unlimited,
      data: unlimited,
      payload: unlimited,
      imports: unlimited,
      exports: unlimited,
      wildcards: true,
      conn: unlimited,
      leaf: unlimited,
      mem_storage: unlimited,
      disk_storage: unlimited,
      streams: unlimited,
      consumer: unlimited,
    },
    type: "account",
    version: 2,
  });
  const userJwt = jwt(account, user, {
    pub: {},
    sub: {},
    subs: unlimited,
    data: unlimited,
    payload: unlimited,
    type: "user",
    version: 2,
  });
  const config = join(dir, "server.conf");
  writeFileSync(
    config,
    [
      `operator: ${operatorJwt}`,
      `system_account: ${system.getPublicKey()}`,
      "resolver: MEMORY",
      "resolver_preload: {",
      `  ${system.getPublicKey()}: ${systemJwt}`,
      `  ${account.getPublicKey()}: ${accountJwt}`,
      "}",
      "",
    ].join("\n"),
  );
  const creds = join(dir, "user.creds");
  writeFileSync(
    creds,
    [
      "-----BEGIN NATS USER JWT-----",
      userJwt,
      "------END NATS USER JWT------",
      "",
      "-----BEGIN USER NKEY SEED-----",
      new TextDecoder().decode(user.getSeed()),
      "------END USER NKEY SEED------",
      "",
    ].join("\n"),
  );
  return { config, creds };
}

/** A NATS JWT: `subject`'s claims signed by `issuer`'s key (ed25519). */
function jwt(issuer: KeyPair, subject: KeyPair, nats: object): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const header = part({ typ: "JWT", alg: "ed25519-nkey" });
  const claims = part({
    jti: randomBytes(16).toString("hex").toUpperCase(),
    iat: Math.floor(Date.now() / 1000),
    iss: issuer.getPublicKey(),
    sub: subject.getPublicKey(),
    name: "orisun-test",
    nats,
  });
  const signature = Buffer.from(issuer.sign(Buffer.from(`${header}.${claims}`))).toString(
    "base64url",
  );
  return `${header}.${claims}.${signature}`;
}
