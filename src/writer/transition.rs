//! Reading a statement's transition tables, and comparing the values in them.

use pgrx::pg_sys;
use std::ffi::CStr;

/// A column whose old and new values are compared: its index and how its values are stored.
#[derive(Clone, Copy)]
pub struct ComparedColumn {
    /// 0-based attribute index in the source table's tuple descriptor.
    pub att: usize,
    pub byval: bool,
    pub len: i16,
}

/// Binary equality of two non-null values of one type (what `record_image_eq` compares).
pub unsafe fn same_image(a: pg_sys::Datum, b: pg_sys::Datum, c: &ComparedColumn) -> bool {
    if c.byval {
        return a == b;
    }
    if a == b {
        return true;
    }
    match c.len {
        -1 => {
            let (pa, pb) = (a.cast_mut_ptr::<pg_sys::varlena>(), b.cast_mut_ptr());
            if pg_sys::toast_raw_datum_size(a) != pg_sys::toast_raw_datum_size(b) {
                return false;
            }
            let (da, db) = (
                pg_sys::pg_detoast_datum_packed(pa),
                pg_sys::pg_detoast_datum_packed(pb),
            );
            let (la, lb) = (pgrx::varsize_any_exhdr(da), pgrx::varsize_any_exhdr(db));
            la == lb
                && std::slice::from_raw_parts(pgrx::vardata_any(da) as *const u8, la)
                    == std::slice::from_raw_parts(pgrx::vardata_any(db) as *const u8, lb)
        }
        -2 => CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr()),
        n => {
            let n = n as usize;
            std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), n)
                == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), n)
        }
    }
}

/// A reader over a transition table (its own read pointer, from the start).
pub struct TransitionReader {
    store: *mut pg_sys::Tuplestorestate,
    ptr: i32,
    pub slot: *mut pg_sys::TupleTableSlot,
}

impl TransitionReader {
    pub unsafe fn new(
        store: *mut pg_sys::Tuplestorestate,
        desc: pg_sys::TupleDesc,
    ) -> TransitionReader {
        let ptr = pg_sys::tuplestore_alloc_read_pointer(store, 0);
        pg_sys::tuplestore_select_read_pointer(store, ptr);
        pg_sys::tuplestore_rescan(store);
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
        TransitionReader { store, ptr, slot }
    }

    /// The next row, deformed (valid until the next call).
    pub unsafe fn next(&mut self) -> bool {
        pg_sys::tuplestore_select_read_pointer(self.store, self.ptr);
        if !pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot) {
            return false;
        }
        pg_sys::slot_getallattrs(self.slot);
        true
    }

    pub unsafe fn value(&self, att: usize) -> (pg_sys::Datum, bool) {
        (
            *(*self.slot).tts_values.add(att),
            *(*self.slot).tts_isnull.add(att),
        )
    }
}
