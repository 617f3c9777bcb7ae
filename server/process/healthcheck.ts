/**
 * The container's HEALTHCHECK: asks this container's server for /readyz and exits 0 when it
 * answers 200, 1 otherwise (within 4 s). Node only, since the image has no curl or wget. It
 * reads the server's own settings, so a changed port, bind address or TLS needs no other edit;
 * with TLS the certificate is not verified (the name is 127.0.0.1, not the certificate's).
 */
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";

const env = process.env;
const bound = env.ORISUN_HOST;
const host = !bound || bound === "0.0.0.0" || bound === "::" ? "127.0.0.1" : bound;
const tls = Boolean(env.ORISUN_TLS_CERT);
const request = tls ? httpsRequest : httpRequest;

const probe = request(
  {
    host,
    port: Number(env.ORISUN_PORT || 50051),
    path: "/readyz",
    timeout: 4_000,
    ...(tls ? { rejectUnauthorized: false } : {}),
  },
  (response) => {
    response.resume();
    process.exitCode = response.statusCode === 200 ? 0 : 1;
  },
);
probe.on("timeout", () => probe.destroy(new Error("no answer within 4 s")));
probe.on("error", (error) => {
  console.error(`orisun healthcheck: ${error.message}`);
  process.exitCode = 1;
});
probe.end();
