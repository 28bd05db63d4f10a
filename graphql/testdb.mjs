// The end-to-end tests' database: made fresh (dropped first), the audience set, a login role for
// PostGraphile; returns a superuser client connected to it. Used by e2e.test.mjs and
// organizations.test.mjs.
import pg from "pg";

export const HOST = process.env.KOHERENT_TEST_HOST || "127.0.0.1";
export const PORT = Number(process.env.KOHERENT_TEST_PORT || 5498);

export async function freshDatabase(db, role) {
  const root = new pg.Client({ host: HOST, port: PORT, user: "postgres", database: "postgres" });
  await root.connect();
  try {
    await root.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await root.query(`CREATE DATABASE ${db}`);
    await root.query(`ALTER DATABASE ${db} SET koherent.audience = 'koherent'`);
    if ((await root.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role])).rows.length === 0)
      await root.query(`CREATE ROLE ${role} LOGIN`);
  } finally {
    await root.end();
  }
  const admin = new pg.Client({ host: HOST, port: PORT, user: "postgres", database: db });
  await admin.connect();
  return admin;
}
