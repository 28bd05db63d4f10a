// The SQL files are embedded with extension_sql_file!; rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=sql");
    println!("cargo:rerun-if-changed=build.rs");
}
