//! Kept plans of the as-of lookups: one key's history is a few index lookups, and parsing and
//! planning its statement again on every call cost more than running it (row_as_of: 1.3 ms per
//! call with the statement planned each time, measured; see bench/README.md). The SQL helpers
//! generate a statement for one history table and keep its plan per backend under a name that
//! changes whenever the text would (the table's config, column epochs and types). A kept plan is PostgreSQL's own cached plan (SPI_keepplan): invalidated and planned
//! again when a table it reads changes. Called only by koherent's SECURITY DEFINER helpers (the
//! function is REVOKEd from PUBLIC like every other).

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;

use crate::datum::FlatJsonb;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{KoherentError, OrRaise};

/// More distinct statements than this (tables looked up by one backend) and the cache starts over.
const MAX_KEPT: usize = 64;

thread_local! {
    static KEPT: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// `koherent._kept(name)`: whether a plan named `name` is kept.
pub fn is_kept(name: &str) -> bool {
    KEPT.with(|k| k.borrow().contains_key(name))
}

/// `koherent._keep(name, query)`: plans `query` (a read-only statement returning jsonb,
/// parameters $1 timestamptz, $2 boolean, $3 jsonb) and keeps the plan under `name`.
pub fn keep(name: &str, query: &str) {
    let types = [
        PgOid::from_untagged(pg_sys::TIMESTAMPTZOID),
        PgOid::from_untagged(pg_sys::BOOLOID),
        PgOid::from_untagged(pg_sys::JSONBOID),
    ];
    let plan = Spi::connect(|c| c.prepare(query, &types).map(|p| p.keep()))
        .map_err(|e| KoherentError::Internal(e.to_string()))
        .or_raise();
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= MAX_KEPT {
            k.clear();
        }
        k.insert(name.to_owned(), Rc::new(plan));
    });
}

/// `koherent._kept_lookup(name, at, at_too, key)`: the first column of the first row of the
/// plan kept under `name`, run with these parameters.
pub fn lookup(
    name: &str,
    at: TimestampWithTimeZone,
    at_too: bool,
    key: FlatJsonb,
) -> Option<FlatJsonb> {
    let Some(plan) = KEPT.with(|k| k.borrow().get(name).cloned()) else {
        KoherentError::Internal(format!("no plan is kept as {name}")).raise()
    };
    Spi::connect(|c| {
        let rows = c.select(&*plan, Some(1), &[at.into(), at_too.into(), key.into()])?;
        if rows.is_empty() {
            return Ok(None);
        }
        // (the image as stored, not through serde_json: see FlatJsonb)
        rows.first().get::<FlatJsonb>(1)
    })
    .map_err(|e| KoherentError::Internal(e.to_string()))
    .or_raise()
}
