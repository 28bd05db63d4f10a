// End-to-end: organizations through a real PostGraphile 4 server. The application's own
// authentication (here: a bearer key the server maps to a user) gives koherent.organization and
// koherent.app_user through pgSettings (clients/postgraphile's makeKoherentPgSettings); the
// README's row-level-security policy on koherent.transaction_auth_context keeps each
// organization's history to itself in the provenance field, its task and its effective changes.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { HOST, PORT, freshDatabase } from "./testdb.mjs";
import { KOHERENT_SCHEMA, koherentOptions, makeKoherentPgSettings } from "../clients/postgraphile/index.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = process.env.KOHERENT_CLI || path.join(here, "../target/release/koherent");
const KEY = path.join(here, "../tests/fixtures/test-key.private.jwk");
const DB = "koherent_gql_orgs";
const ROLE = "koherent_gql_orgs";

// the application's users (its own authentication: a key per user, never a client's claim)
const USERS = { "key-ana": { org: "acme", email: "ana@acme" }, "key-gus": { org: "globex", email: "gus@globex" } };

const mint = (tsk, rcb = "user-1") => execFileSync(CLI, ["mint", "--key", KEY, "--tsk", tsk, "--rcb", rcb]).toString().trim();

let server, url, admin;

async function gql(query, key, token) {
  const headers = { "content-type": "application/json", authorization: `Bearer ${key}` };
  if (token) headers["rekuest-task"] = token;
  const res = await fetch(url, { method: "POST", headers, body: JSON.stringify({ query }) });
  return res.json();
}

before(async () => {
  admin = await freshDatabase(DB, ROLE);
  await admin.query(`
    CREATE EXTENSION koherent;
    CREATE TABLE gadget (id integer PRIMARY KEY, name text NOT NULL, qty integer NOT NULL DEFAULT 0);
    SELECT koherent.track('gadget'), koherent.expose('gadget', '${ROLE}');
    GRANT SELECT, INSERT, UPDATE ON gadget TO ${ROLE};
    -- the README's policy, and SELECT on the contexts for the role it binds
    ALTER TABLE koherent.transaction_auth_context ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own_organization ON koherent.transaction_auth_context FOR SELECT
        USING (organization = current_setting('koherent.organization', true));
    GRANT SELECT ON koherent.transaction_auth_context TO ${ROLE};
    -- a local user resolver: the task's assigner (rcb) as the application's user row
    CREATE TABLE people (id integer PRIMARY KEY, sub text UNIQUE);
    INSERT INTO people VALUES (41, 'user-1');
    CREATE FUNCTION find_person(issuer text, sub text) RETURNS jsonb
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
        SELECT jsonb_build_object('table', 'people', 'id', p.id) FROM public.people p WHERE p.sub = find_person.sub
    $$;
    SELECT koherent.set_user_resolver('public.find_person(text, text)');
  `);
  await admin.query("SELECT koherent.add_issuer_jwks('rekuest', $1::jsonb)",
    [execFileSync(CLI, ["jwks", "--key", KEY]).toString()]);
  const user = (req) => USERS[(req.headers.authorization || "").replace(/^Bearer /, "")];
  const { postgraphile } = (await import("postgraphile")).default;
  server = http.createServer(postgraphile(`postgres://${ROLE}@${HOST}:${PORT}/${DB}`, ["public", KOHERENT_SCHEMA], {
    ...koherentOptions,
    disableQueryLog: true,
    pgSettings: makeKoherentPgSettings(undefined, {
      organization: (req) => user(req)?.org, appUser: (req) => user(req)?.email }),
  }));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${server.address().port}/graphql`;
});

after(async () => {
  await new Promise((r) => server.close(r));
  await admin.end();
});

test("each organization sees its own history of a shared row, and a task stays in its organization", async () => {
  const made = await gql(`mutation { createGadget(input: { gadget: { id: 1, name: "shared", qty: 1 } }) { gadget { id } } }`,
    "key-ana", mint("acme-run"));
  assert.equal(made.errors, undefined, JSON.stringify(made.errors));
  const upd = await gql(`mutation { updateGadgetById(input: { id: 1, gadgetPatch: { qty: 2 } }) { gadget { qty } } }`,
    "key-gus", mint("globex-run", "someone-else"));
  assert.equal(upd.errors, undefined, JSON.stringify(upd.errors));
  // acme's task presented by globex's user: refused, nothing written
  const stolen = await gql(`mutation { updateGadgetById(input: { id: 1, gadgetPatch: { qty: 99 } }) { gadget { qty } } }`,
    "key-gus", mint("acme-run"));
  assert.equal(stolen.errors?.[0]?.errcode, "28000", JSON.stringify(stolen));
  assert.equal(stolen.errors[0].detail, "reason: organization_mismatch");
  assert.equal((await admin.query("SELECT qty FROM gadget")).rows[0].qty, 2);

  const ask = `{ gadgetById(id: 1) { qty provenance { nodes { kind taskId task { taskId organization assignerUser assignerSub }
    effectiveChanges { nodes { field newValue } } } } } }`;
  const ana = await gql(ask, "key-ana");
  assert.equal(ana.errors, undefined, JSON.stringify(ana.errors));
  assert.deepEqual(ana.data.gadgetById, { qty: 2, provenance: { nodes: [
    { kind: "CREATE", taskId: "acme-run",
      task: { taskId: "acme-run", organization: "acme", assignerUser: '{"id":41,"table":"people"}', assignerSub: "user-1" },
      effectiveChanges: { nodes: [{ field: "id", newValue: "1" }, { field: "name", newValue: '"shared"' },
                                  { field: "qty", newValue: "1" }] } }] } });
  const gus = await gql(ask, "key-gus");
  assert.deepEqual(gus.data.gadgetById, { qty: 2, provenance: { nodes: [
    { kind: "UPDATE", taskId: "globex-run",
      task: { taskId: "globex-run", organization: "globex", assignerUser: null, assignerSub: "someone-else" },
      effectiveChanges: { nodes: [{ field: "qty", newValue: "2" }] } }] } });
  // nobody's request: no organization, no history
  const anon = await gql(ask, "no-such-key");
  assert.deepEqual(anon.data.gadgetById.provenance.nodes, []);
  // what the contexts recorded: each write's organization and the application's user
  assert.deepEqual((await admin.query(
    "SELECT task_id, organization, app_user FROM koherent.transaction_auth_context ORDER BY created_at")).rows, [
    { task_id: "acme-run", organization: "acme", app_user: "ana@acme" },
    { task_id: "globex-run", organization: "globex", app_user: "gus@globex" }]);
});
