import { afterAll, describe, expect, it } from "vitest";
import { loadDeployment } from "../server/store/deployment.js";
import { dropSchema, freshSchema, openPostgresStore, storeTargets } from "./support/databases.js";

const used: string[] = [];
afterAll(async () => {
  for (const schema of used) await dropSchema(schema);
});

describe.each(storeTargets)("the deployment identity on $name", (target) => {
  it("is made once: the same on every read, a short base32 id and a 32-byte secret", async () => {
    const { store, cleanup } = await target.open();
    try {
      const [first, second] = await Promise.all([
        loadDeployment(store.database.db),
        loadDeployment(store.database.db),
      ]);
      expect(first.id).toMatch(/^[a-z2-7]{16}$/);
      expect(first.secret).toHaveLength(32);
      expect(second).toEqual(first);
      // Deleting the row (a copied database that must run next to its original) makes a new one.
      await store.database.db.deleteFrom("orisun_deployment").execute();
      const renewed = await loadDeployment(store.database.db);
      expect(renewed.id).not.toBe(first.id);
      expect(renewed.secret.equals(first.secret)).toBe(false);
    } finally {
      await cleanup();
    }
  });
});

describe("deployment identities on PostgreSQL", () => {
  it("are shared by every process on one schema (even starting at once) and differ between schemas", async () => {
    const [a, b] = [freshSchema("dep"), freshSchema("dep")];
    used.push(a, b);
    const stores = await Promise.all([a, a, a, b].map((schema) => openPostgresStore(schema, 1)));
    try {
      const ids = await Promise.all(stores.map((s) => loadDeployment(s.database.db)));
      expect(new Set(ids.slice(0, 3).map((d) => d.id)).size).toBe(1);
      expect(new Set(ids.slice(0, 3).map((d) => d.secret.toString("hex"))).size).toBe(1);
      expect(ids[3]?.id).not.toBe(ids[0]?.id);
    } finally {
      for (const store of stores) await store.close();
    }
  });
});
