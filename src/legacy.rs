//! Entry points of earlier releases' install scripts (0.1.0 to 0.3.0 declare these C symbols;
//! an upgrade starts by creating an old version with the current library). 0.4.0's SQL does not
//! use them: the upgrade script replaces each by its 0.4.0 form.

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::context;
use crate::datum::FlatJsonb;
use crate::error::{KoherentError, OrRaise};

#[pg_extern(sql = false)]
fn set_task_with_args(token: &str, args: Option<JsonB>) -> FlatJsonb {
    context::set_task(token, Some(args))
}

#[pg_extern(sql = false)]
fn set_context(metadata: JsonB) {
    context::set_context(metadata)
}

#[pg_extern(sql = false)]
fn canonical_args(args: JsonB) -> String {
    koherent_token::canonical_json(&args.0)
}

#[pg_extern(sql = false)]
fn args_hash(args: Option<JsonB>) -> String {
    koherent_token::args_hash(args.as_ref().map(|a| &a.0))
}

#[pg_extern(sql = false)]
fn _parse_jwks(jwks: JsonB) -> TableIterator<'static, (name!(kid, String), name!(x, Vec<u8>))> {
    let keys = koherent_token::keys::parse_jwks(&jwks.0)
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::new(
        keys.into_iter()
            .map(|(kid, k)| (kid, k.as_bytes().to_vec())),
    )
}

#[pg_extern(sql = false)]
fn _parse_public_key(
    public_key: &str,
) -> TableIterator<'static, (name!(kid, Option<String>), name!(x, Vec<u8>))> {
    let (kid, key) = koherent_token::keys::parse_public_key(public_key)
        .map_err(KoherentError::from)
        .or_raise();
    TableIterator::once((kid, key.as_bytes().to_vec()))
}
