//! Reading PostgreSQL's node trees: lists and node tags, for the planner hook
//! (`crate::planner`) and the writer's look at partial-index predicates (`crate::insert::index`).

use pgrx::pg_sys;

/// The length of a `List` (0 for NIL).
pub unsafe fn list_len(l: *mut pg_sys::List) -> usize {
    if l.is_null() {
        0
    } else {
        (*l).length as usize
    }
}

/// Element `i` of a pointer `List`.
pub unsafe fn list_ptr<T>(l: *mut pg_sys::List, i: usize) -> *mut T {
    (*(*l).elements.add(i)).ptr_value as *mut T
}

/// A node's tag (`T_Invalid` for a null pointer).
pub unsafe fn tag(node: *mut pg_sys::Node) -> pg_sys::NodeTag {
    if node.is_null() {
        pg_sys::NodeTag::T_Invalid
    } else {
        (*node).type_
    }
}
