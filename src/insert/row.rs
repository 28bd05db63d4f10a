//! One row into a table of the extension, by column name, without SQL.

use pgrx::pg_sys;
use pgrx::PgTupleDesc;

use super::Sink;
use crate::catalog::{att_name, find_att};
use crate::error::KoherentError;

/// Insert one row into a table of the extension without SQL: no plan, no executor start and no
/// permission check (the caller is the extension, in its SECURITY DEFINER trigger). Values are
/// given by column name; a column not given is null, and a NOT NULL column not given is an
/// internal error. Index entries go through `ExecInsertIndexTuples`, which checks unique and
/// partial indexes.
pub unsafe fn insert_row(relid: pg_sys::Oid, columns: &[(&str, Option<pg_sys::Datum>)]) {
    let mut sink = Sink::open(
        pg_sys::table_open(relid, pg_sys::RowExclusiveLock as _),
        false,
    );
    let desc = PgTupleDesc::from_pg_unchecked((*sink.rel).rd_att);
    let mut values = vec![pg_sys::Datum::from(0usize); desc.len()];
    let mut nulls = vec![true; desc.len()];
    for &(name, value) in columns {
        let Some(i) = find_att(&desc, name) else {
            if value.is_none() {
                continue; // a column the table's (older) schema does not have, and no value
            }
            KoherentError::Internal(format!("column {name} is missing")).raise()
        };
        if let Some(v) = value {
            values[i] = v;
            nulls[i] = false;
        }
    }
    for (i, null) in nulls.iter().enumerate() {
        let a = desc.get(i).expect("in range");
        if *null && a.attnotnull && !a.attisdropped {
            KoherentError::Internal(format!("no value for NOT NULL column {}", att_name(a)))
                .raise();
        }
    }
    drop(desc);
    sink.push(&mut values, &mut nulls);
    sink.close();
}
