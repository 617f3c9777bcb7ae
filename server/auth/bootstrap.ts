import type { AuthConfig } from "../config.js";
import { hashSecret } from "./passwords.js";
import type { PrincipalsStore } from "./principals-store.js";

export class BootstrapError extends Error {
  override readonly name = "BootstrapError";
}

/**
 * With authentication on, the store needs an admin: ORISUN_ADMIN_USER and ORISUN_ADMIN_PASSWORD
 * make the first one. With an admin in the store the password is ignored, so that restarting
 * with it set never resets a password someone changed since.
 */
export async function bootstrapAdmin(
  principals: PrincipalsStore,
  auth: AuthConfig,
  info: (message: string) => void,
): Promise<void> {
  if (await principals.hasAdmin()) {
    if (auth.adminPassword !== undefined) {
      info("ORISUN_ADMIN_PASSWORD is not used: the store already has an admin");
    }
    return;
  }
  if (auth.adminPassword === undefined) {
    throw new BootstrapError(
      "authentication is on and the store has no admin: set ORISUN_ADMIN_PASSWORD (at least 8 characters) " +
        `to create the admin "${auth.adminUser}" (ORISUN_ADMIN_USER), or bind 127.0.0.1 ` +
        "(ORISUN_HOST) for a local server without authentication",
    );
  }
  const created = await principals.bootstrapAdmin(
    auth.adminUser,
    await hashSecret(auth.adminPassword),
  );
  if (created) info(`created the admin "${auth.adminUser}" from ORISUN_ADMIN_PASSWORD`);
}
