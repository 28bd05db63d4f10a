// koherent for an existing PostGraphile 4 app: an import and two options.
//
//   import { koherentPgSettings, koherentOptions } from "koherent-postgraphile";
//   postgraphile(DATABASE_URL, ["public", "koherent"], {
//     ...yourOptions,
//     ...koherentOptions,
//     pgSettings: koherentPgSettings,            // or: (req) => ({ ...yours(req), ...koherentPgSettings(req) })
//   });
//
// pgSettings: the agent's `Rekuest-Task` header (name configurable) becomes the transaction-local
// setting `koherent.task_token`; PostGraphile applies pgSettings with set_config(..., true) at
// the start of every request's transaction, and the extension verifies the token at the first
// tracked write (an invalid token fails that write: the mutation fails, nothing is written).

export const KOHERENT_HEADER = "rekuest-task";

export function makeKoherentPgSettings(header = KOHERENT_HEADER) {
  const name = header.toLowerCase();
  return function koherentPgSettings(req) {
    const value = req.headers[name];
    const token = Array.isArray(value) ? value[0] : value;
    return token && String(token).trim() ? { "koherent.task_token": String(token).trim() } : {};
  };
}

export const koherentPgSettings = makeKoherentPgSettings();

// The options koherent's objects need: its view, types and functions belong to the extension,
// which PostGraphile skips unless includeExtensionResources is on; extendedErrors hands clients
// koherent's SQLSTATE, DETAIL (reason: ...) and HINT.
export const koherentOptions = Object.freeze({
  includeExtensionResources: true,
  setofFunctionsContainNulls: false,
  extendedErrors: ["errcode", "detail", "hint"],
});
