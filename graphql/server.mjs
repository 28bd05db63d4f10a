// koherent's PostGraphile 4 demo server: a tiny config over clients/postgraphile, not a fork.
//
// The one koherent-specific line is pgSettings: the agent's `Rekuest-Task` header becomes the
// transaction-local setting `koherent.task_token` (PostGraphile applies pgSettings with
// set_config(..., true) at the start of every request's transaction). The extension verifies
// the token at the first tracked write; an invalid token fails that write, so the mutation
// fails and nothing is written.
//
//   DATABASE_URL=postgres://koherent_gql@127.0.0.1:5433/koherent_demo PORT=5678 node server.mjs
//
// Schemas: the application's schemas plus `koherent_graphql` (the types expose()'s functions
// return, and their computed columns; created by koherent.expose()).
// ignoreRBAC: false, so only what the connecting role was granted appears in the schema.

import http from "node:http";
import pg from "postgraphile";
import { KOHERENT_SCHEMA, koherentOptions, koherentPgSettings } from "../clients/postgraphile/index.mjs";

const { postgraphile } = pg;

export { koherentPgSettings };

export function createServer({
  databaseUrl = process.env.DATABASE_URL,
  schemas = (process.env.SCHEMAS || `public,${KOHERENT_SCHEMA}`).split(","),
  graphiql = true,
} = {}) {
  const middleware = postgraphile(databaseUrl, schemas, {
    graphiql,
    enhanceGraphiql: graphiql,
    dynamicJson: true,
    ignoreRBAC: false,
    disableQueryLog: true,
    // koherent: two options (clients/postgraphile, the module an existing app imports)
    ...koherentOptions,
    pgSettings: koherentPgSettings,
  });
  return http.createServer(middleware);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const port = Number(process.env.PORT || 5678);
  createServer().listen(port, "127.0.0.1", () => {
    console.log(`koherent GraphQL: http://127.0.0.1:${port}/graphql (GraphiQL: http://127.0.0.1:${port}/graphiql)`);
  });
}
