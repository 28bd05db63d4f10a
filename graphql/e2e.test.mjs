// End-to-end: a real PostGraphile 4 server (server.mjs) over a database with a tracked, exposed
// table; node-postgres for setup and checks; tokens minted by the koherent CLI.
// Needs KOHERENT_TEST_HOST/PORT (scripts/test.sh) and KOHERENT_CLI.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { createServer } from "./server.mjs";
import { HOST, PORT, freshDatabase } from "./testdb.mjs";
import { KOHERENT_SCHEMA, koherentPgSettings } from "../clients/postgraphile/index.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = process.env.KOHERENT_CLI || path.join(here, "../target/release/koherent");
const KEY = path.join(here, "../tests/fixtures/test-key.private.jwk");
const DB = "koherent_gql_e2e";
const ROLE = "koherent_gql";

const mint = (tsk, extra = []) =>
  execFileSync(CLI, ["mint", "--key", KEY, "--tsk", tsk, "--cid", "agent-client-9", "--act-sub", "agent-7", ...extra])
    .toString().trim();

let server, url, admin;

async function sql(client, text, params) {
  return (await client.query(text, params)).rows;
}

async function gql(query, headers = {}) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ query }),
  });
  return res.json();
}

before(async () => {
  admin = await freshDatabase(DB, ROLE);
  const jwks = execFileSync(CLI, ["jwks", "--key", KEY]).toString();
  await admin.query(`
    CREATE EXTENSION koherent;
    CREATE SCHEMA stats;
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA stats;
    CREATE TABLE widget (id serial PRIMARY KEY, name text NOT NULL, qty integer NOT NULL DEFAULT 0);
    COMMENT ON TABLE widget IS 'A widget.';
    CREATE TABLE vault (id serial PRIMARY KEY, secret text);
    SELECT koherent.track('widget'), koherent.track('vault', require_task => true);
    SELECT koherent.expose('widget', '${ROLE}'), koherent.expose('vault', '${ROLE}');
    GRANT SELECT, INSERT, UPDATE, DELETE ON widget, vault TO ${ROLE};
    GRANT USAGE ON SEQUENCE widget_id_seq, vault_id_seq TO ${ROLE};
    -- no SELECT on koherent.task or the views: the exposed functions show what the role may see
  `);
  await admin.query("SELECT koherent.add_issuer_jwks('rekuest', $1::jsonb)", [jwks]);

  server = createServer({
    databaseUrl: `postgres://${ROLE}@${HOST}:${PORT}/${DB}`,
    schemas: ["public", "koherent_graphql"],
    graphiql: false,
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${server.address().port}/graphql`;
});

after(async () => {
  await new Promise((r) => server.close(r));
  await admin.end();
});

test("a mutation with a Rekuest-Task header is recorded as that task's change", async () => {
  const token = mint("gql-task-1");
  const created = await gql(
    `mutation { createWidget(input: { widget: { name: "bolt", qty: 5 } }) { widget { id name qty } } }`,
    { "Rekuest-Task": token },
  );
  assert.equal(created.errors, undefined, JSON.stringify(created.errors));
  const id = created.data.createWidget.widget.id;
  const updated = await gql(
    `mutation { updateWidgetById(input: { id: ${id}, widgetPatch: { qty: 4 } }) { widget { qty } } }`,
    { "Rekuest-Task": mint("gql-task-2") },
  );
  assert.equal(updated.errors, undefined, JSON.stringify(updated.errors));

  const res = await gql(`{
    widgetById(id: ${id}) {
      name
      provenance { nodes { kind date changedBy taskId agentClientId issuer
        task { taskId agentClientId }
        effectiveChanges { nodes { field oldValue newValue } } } }
    }
  }`);
  assert.equal(res.errors, undefined, JSON.stringify(res.errors));
  const dates = (await sql(admin, "SELECT to_json(date) AS d FROM koherent.provenance_entry ORDER BY history_id")).map((r) => r.d);
  assert.deepEqual(res.data, {
    widgetById: {
      name: "bolt",
      provenance: {
        nodes: [
          {
            kind: "CREATE", date: dates[0], changedBy: "agent-7", taskId: "gql-task-1",
            agentClientId: "agent-client-9", issuer: "rekuest",
            task: { taskId: "gql-task-1", agentClientId: "agent-client-9" },
            effectiveChanges: { nodes: [
              { field: "id", oldValue: null, newValue: id },
              { field: "name", oldValue: null, newValue: "bolt" },
              { field: "qty", oldValue: null, newValue: 5 },
            ] },
          },
          {
            kind: "UPDATE", date: dates[1], changedBy: "agent-7", taskId: "gql-task-2",
            agentClientId: "agent-client-9", issuer: "rekuest",
            task: { taskId: "gql-task-2", agentClientId: "agent-client-9" },
            effectiveChanges: { nodes: [{ field: "qty", oldValue: 5, newValue: 4 }] },
          },
        ],
      },
    },
  });
  console.log("real response:", JSON.stringify(res.data));
  const rows = await sql(admin, "SELECT db_role FROM koherent.provenance_entry");
  assert.deepEqual(rows.map((r) => r.db_role), [ROLE, ROLE]);
});

test("the provenance filter returns current rows with a matching entry", async () => {
  const tok = mint("gql-filter");
  for (const name of ["nut", "washer"]) {
    const r = await gql(`mutation { createWidget(input: { widget: { name: "${name}" } }) { widget { id } } }`,
      { "Rekuest-Task": tok });
    assert.equal(r.errors, undefined);
  }
  await gql(`mutation { createWidget(input: { widget: { name: "unattributed" } }) { widget { id } } }`);
  const res = await gql(`{
    a: widgetByProvenance(taskId: "gql-filter", kind: "CREATE") { nodes { name } }
    b: widgetByProvenance(taskId: "gql-filter", kind: "DELETE") { nodes { name } }
    c: widgetByProvenance(agentClientId: "agent-client-9", changedBy: "agent-7", issuer: "rekuest") { totalCount }
    d: widgetByProvenance(changedSince: "2000-01-01T00:00:00Z", changedBefore: "2001-01-01T00:00:00Z") { totalCount }
  }`);
  assert.equal(res.errors, undefined, JSON.stringify(res.errors));
  assert.deepEqual(res.data.a.nodes.map((n) => n.name).sort(), ["nut", "washer"]);
  assert.deepEqual(res.data.b.nodes, []);
  assert.equal(res.data.c.totalCount, 3);
  assert.equal(res.data.d.totalCount, 0);
});

test("the GraphQL role reads no token and no history but through the exposed functions", async () => {
  const created = await gql(`mutation { createWidget(input: { widget: { name: "tok" } }) { widget { id } } }`,
    { "Rekuest-Task": mint("gql-token") });
  assert.equal(created.errors, undefined, JSON.stringify(created.errors));
  const id = created.data.createWidget.widget.id;
  const res = await gql(`{ widgetById(id: ${id}) { provenance { nodes { taskId task { taskId token } } } } }`);
  assert.equal(res.errors, undefined, JSON.stringify(res.errors));
  assert.deepEqual(res.data.widgetById.provenance.nodes, [{ taskId: "gql-token", task: { taskId: "gql-token", token: null } }]);
  // the view and the task table are not readable (no root fields, no direct SQL)
  const root = await gql(`{ allProvenanceEntries { totalCount } }`);
  assert.ok(root.errors && /allProvenanceEntries/.test(root.errors[0].message), JSON.stringify(root));
  const c = new pg.Client({ host: HOST, port: PORT, user: ROLE, database: DB });
  await c.connect();
  for (const q of ["SELECT token FROM koherent.task", "SELECT * FROM koherent.provenance_entry"]) {
    await assert.rejects(c.query(q), (e) => e.code === "42501");
  }
  await c.end();
});

test("a forged token fails the mutation and writes nothing", async () => {
  const before = await sql(admin, "SELECT count(*)::int AS n FROM widget");
  const good = mint("gql-forged");
  const [h, p, s] = good.split(".");
  const forged = `${h}.${p}.${s.slice(0, -4)}AAAA`;
  const res = await gql(`mutation { createWidget(input: { widget: { name: "evil" } }) { widget { id } } }`,
    { "Rekuest-Task": forged });
  assert.equal(res.data.createWidget, null);
  assert.match(res.errors[0].message, /signature is invalid/);
  assert.equal(res.errors[0].errcode, "28000");
  const after = await sql(admin, "SELECT count(*)::int AS n FROM widget");
  assert.deepEqual(after, before);
  const t = await sql(admin, "SELECT count(*)::int AS n FROM koherent.task WHERE task_id = 'gql-forged'");
  assert.equal(t[0].n, 0);
});

test("a require_task table refuses a mutation without the header", async () => {
  const res = await gql(`mutation { createVault(input: { vault: { secret: "s" } }) { vault { id } } }`);
  assert.equal(res.errors[0].errcode, "28000");
  assert.match(res.errors[0].message, /requires a verified task/);
  const ok = await gql(`mutation { createVault(input: { vault: { secret: "s" } }) { vault { id } } }`,
    { "Rekuest-Task": mint("gql-vault") });
  assert.equal(ok.errors, undefined, JSON.stringify(ok.errors));
  const rows = await sql(admin, "SELECT task_id FROM koherent.provenance_entry WHERE table_name = 'vault'::regclass");
  assert.deepEqual(rows, [{ task_id: "gql-vault" }]);
});

test("provenance of many rows is a constant number of SQL statements", async () => {
  await admin.query("INSERT INTO widget (name) SELECT 'w' || g FROM generate_series(1, 120) g");
  await admin.query("UPDATE widget SET qty = qty + 1");
  const q = (n) => `{ allWidgets(first: ${n}, orderBy: ID_ASC) { nodes { id provenance { nodes { kind
      effectiveChanges { nodes { field oldValue newValue } } } } } } }`;
  const statements = async (n) => {
    await admin.query("SELECT stats.pg_stat_statements_reset()");
    const res = await gql(q(n));
    assert.equal(res.errors, undefined, JSON.stringify(res.errors));
    assert.equal(res.data.allWidgets.nodes.length, n);
    assert.ok(res.data.allWidgets.nodes.every((w) => w.provenance.nodes.length >= 2));
    const rows = await sql(admin,
      `SELECT coalesce(sum(calls), 0)::int AS n FROM stats.pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
        WHERE r.rolname = $1 AND s.query ILIKE '%widget%'`, [ROLE]);
    return rows[0].n;
  };
  const ten = await statements(10);
  const hundred = await statements(100);
  assert.ok(ten >= 1);
  assert.equal(hundred, ten);
});

test("widgetAsOf shows the table as it was at a moment (expose() creates widget_as_of)", async () => {
  const created = await gql(`mutation { createWidget(input: { widget: { name: "gear", qty: 1 } }) { widget { id } } }`,
    { "Rekuest-Task": mint("gql-asof") });
  assert.equal(created.errors, undefined, JSON.stringify(created.errors));
  const id = created.data.createWidget.widget.id;
  const [{ at }] = await sql(admin, "SELECT to_json(clock_timestamp()) AS at");
  const upd = await gql(`mutation { updateWidgetById(input: { id: ${id}, widgetPatch: { qty: 9, name: "cog" } }) { widget { qty } } }`,
    { "Rekuest-Task": mint("gql-asof-2") });
  assert.equal(upd.errors, undefined, JSON.stringify(upd.errors));
  const all = await gql(`{ widgetAsOf(at: "${at}") { nodes { id name qty } } }`);
  assert.equal(all.errors, undefined, JSON.stringify(all.errors));
  assert.deepEqual(all.data.widgetAsOf.nodes.filter((n) => n.id === id), [{ id, name: "gear", qty: 1 }]);
  const now = await gql(`{ widgetById(id: ${id}) { name qty } }`);
  assert.deepEqual(now.data.widgetById, { name: "cog", qty: 9 });
});

test("PostGraphile with its default options shows provenance (schemas public and koherent_graphql)", async () => {
  // an existing app adds the schema and pgSettings, nothing else: no includeExtensionResources
  const { postgraphile } = (await import("postgraphile")).default;
  const http = await import("node:http");
  const plain = http.createServer(postgraphile(`postgres://${ROLE}@${HOST}:${PORT}/${DB}`, ["public", KOHERENT_SCHEMA],
    { pgSettings: koherentPgSettings, disableQueryLog: true }));
  await new Promise((r) => plain.listen(0, "127.0.0.1", r));
  const ask = async (query, headers = {}) => (await fetch(`http://127.0.0.1:${plain.address().port}/graphql`, {
    method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify({ query }),
  })).json();
  try {
    const created = await ask(`mutation { createWidget(input: { widget: { name: "plain", qty: 2 } }) { widget { id } } }`,
      { "Rekuest-Task": mint("gql-defaults") });
    assert.equal(created.errors, undefined, JSON.stringify(created.errors));
    const id = created.data.createWidget.widget.id;
    const upd = await ask(`mutation { updateWidgetById(input: { id: ${id}, widgetPatch: { qty: 3 } }) { widget { qty } } }`);
    assert.equal(upd.errors, undefined, JSON.stringify(upd.errors));
    const res = await ask(`{ widgetById(id: ${id}) { provenance { nodes { kind taskId changedBy
      task { taskId agentClientId token } effectiveChanges { nodes { field oldValue newValue } } } } } }`);
    assert.equal(res.errors, undefined, JSON.stringify(res.errors));
    // (JSON as JSON text: PostGraphile's default, dynamicJson off)
    assert.deepEqual(res.data.widgetById.provenance.nodes, [
      { kind: "CREATE", taskId: "gql-defaults", changedBy: "agent-7",
        task: { taskId: "gql-defaults", agentClientId: "agent-client-9", token: null },
        effectiveChanges: { nodes: [
          { field: "id", oldValue: null, newValue: String(id) },
          { field: "name", oldValue: null, newValue: '"plain"' },
          { field: "qty", oldValue: null, newValue: "2" },
        ] } },
      { kind: "UPDATE", taskId: null, changedBy: null, task: null,
        effectiveChanges: { nodes: [{ field: "qty", oldValue: "2", newValue: "3" }] } },
    ]);
    // nothing of the extension itself became a field: no root field for koherent's view, tables or
    // functions, and the type is koherent_graphql's
    const schema = await ask(`{ __schema { queryType { fields { name } } mutationType { fields { name } } } }`);
    const names = [...schema.data.__schema.queryType.fields, ...schema.data.__schema.mutationType.fields].map((f) => f.name);
    assert.deepEqual(names.filter((n) => /provenance|task|seal|digest|ledger|issuer|revert|expose|track/i.test(n)).sort(),
      ["vaultByProvenance", "widgetByProvenance"]);
  } finally {
    await new Promise((r) => plain.close(r));
  }
});
