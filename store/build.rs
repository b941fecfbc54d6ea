// `sqlx::migrate!` embeds the migrations at compile time; without this, a new migration
// file would not make cargo rebuild the crate that embeds them (sqlx's advice).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
